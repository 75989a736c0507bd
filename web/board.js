// The Backchannel board (DESIGN §9): plain JavaScript, no framework, no build, against the
// server's JSON view of its RPCs (POST /api/<service>/<Method>, proto3 JSON). The token
// lives in sessionStorage and travels only in the Authorization header.
'use strict';

const TOKEN_KEY = 'backchannel.token';
const CODES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
  'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED',
  'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'];
const HTTP_CODES = { 400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 501: 12, 503: 14, 504: 4 };
const EVENT_TYPES = ['MESSAGE_SENT', 'MESSAGE_ACCEPTED', 'MESSAGE_FORWARDED', 'MESSAGE_DELIVERED',
  'MESSAGE_DECLINED', 'MESSAGE_ACKNOWLEDGED', 'MESSAGE_REJECTED', 'MESSAGE_WITHDRAWN',
  'MESSAGE_ANSWERED', 'MESSAGE_EXPIRED', 'CHANNEL_OPENED', 'CHANNEL_SUSPENDED', 'CHANNEL_RESUMED',
  'CHANNEL_CLOSED'];
const IN_FLIGHT = new Set(['SUBMITTED', 'IN_TRANSIT', 'DELIVERED', 'ACKNOWLEDGED']);
/** How many recent log positions the feed replays when the board opens. */
const FEED_BACKLOG = 200;
/** The most feed items kept on the page. */
const FEED_MAX = 2000;
/** Seconds between the server's heartbeats on a quiet stream. */
const HEARTBEAT_SECONDS = 5;
/** A stream silent for this long is taken as dead and reopened. */
const STALL_MS = 3 * HEARTBEAT_SECONDS * 1000;

const $ = (sel) => document.querySelector(sel);
/** An element with attributes (`text` its text, `style` CSSOM properties, `on*` listeners) and children. */
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k === 'style') Object.assign(e.style, v); // CSSOM, which the CSP allows
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}

/** A refusal from the server: its gRPC code name, message and ErrorInfo reason. */
class ApiError extends Error {
  constructor(code, message, reason) { super(message); this.code = CODES[code] || `CODE_${code}`; this.reason = reason || ''; }
  get text() { return `${this.code}${this.reason ? ' ' + this.reason : ''} — ${this.message}`; }
}
function apiError(status, body, fallback) {
  const info = (body && body.details || []).find((d) => /ErrorInfo$/.test(d['@type'] || ''));
  const code = body && typeof body.code === 'number' ? body.code : (HTTP_CODES[status] ?? 2);
  return new ApiError(code, (body && body.message) || fallback || `HTTP ${status}`, info && info.reason);
}

const state = {
  token: '', me: null, channels: new Map(), messages: new Map(), lastSeq: null,
  feed: new Map(), selected: null, view: 'routes', stream: null, statsTimer: null,
};

async function call(method, body = {}, signal) {
  const service = { WhoAmI: 'PartyService', ListChannels: 'ChannelService', GetCheckpoint: 'AuditService',
    GetConsistencyProof: 'AuditService' }[method] || 'MessageService';
  const r = await fetch(`/api/backchannel.v1.${service}/${method}`, {
    method: 'POST', signal, cache: 'no-store',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${state.token}` },
    body: JSON.stringify(body),
  });
  if (method === 'Subscribe' && r.ok) return r;
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : {}; } catch { /* not JSON: said below */ }
  if (!r.ok) throw apiError(r.status, json, text.slice(0, 200));
  if (json === null) throw new ApiError(2, `the server answered ${method} with something that is not JSON`);
  return json;
}

/** Every page of a listing: `key` names the repeated field. */
async function listAll(method, req, key, maxPages = 20) {
  const out = [];
  let head, token = '';
  for (let page = 0; page < maxPages && (page === 0 || token); page++) {
    const r = await call(method, { ...req, pageSize: 1000, pageToken: token });
    out.push(...(r[key] || []));
    head ??= Number(r.headSequence || 0); // every page repeats the first page's head
    token = r.nextPageToken || '';
  }
  return { items: out, head };
}

// ---- time -------------------------------------------------------------------
const ms = (t) => (t ? Date.parse(t) : NaN);
function fmtDur(d) {
  if (!Number.isFinite(d)) return '—';
  const neg = d < 0 ? '−' : '';
  let s = Math.abs(d) / 1000;
  if (s < 60) return `${neg}${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  s = Math.floor(s % 60);
  if (h >= 24) return `${neg}${Math.floor(h / 24)}d${h % 24}h`;
  return h ? `${neg}${h}h${String(m).padStart(2, '0')}m` : `${neg}${m}m${String(s).padStart(2, '0')}s`;
}
/** A proto3 JSON Duration ("12.5s") in milliseconds. */
const durMs = (d) => (d ? parseFloat(d) * 1000 : NaN);
const fmtTime = (t) => (t ? new Date(ms(t)).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' }) : '—');
const timeEl = (t) => el('time', { datetime: t || '', text: fmtTime(t) });
// When an event happened as reported; when it was recorded is its title.
const occurred = (ev) => el('time', { datetime: ev.occurTime || '', text: fmtTime(ev.occurTime), title: `recorded ${fmtTime(ev.recordTime)}` });
/** Makes `e` a focusable button that `f` answers (click, Enter, Space). */
function activates(e, f) {
  Object.assign(e, { tabIndex: 0, onclick: f });
  e.setAttribute('role', 'button');
  e.addEventListener('keydown', (k) => { if (k.key === 'Enter' || k.key === ' ') { k.preventDefault(); f(); } });
  return e;
}

// ---- sign-in ----------------------------------------------------------------
async function signIn(token, fromStorage) {
  state.token = token;
  const err = $('#signin-error');
  try {
    state.me = await call('WhoAmI');
  } catch (e) {
    state.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    err.textContent = e instanceof ApiError ? `That token was refused: ${e.text}` : `The server could not be reached: ${e.message}`;
    err.hidden = false;
    if (!fromStorage) $('#token').focus();
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  err.hidden = true;
  $('#token').value = '';
  const me = state.me, who = me.admin ? 'admin' : me.partyId;
  $('#whoami').textContent = `${who}${me.readOnly ? ' (read-only)' : ''}`;
  $('#whoami').dataset.party = who;
  $('#signin').hidden = true;
  $('#who').hidden = $('#board').hidden = false;
  await load();
}

function signOut(message) {
  if (state.stream) state.stream.abort();
  state.stream = null;
  clearInterval(state.statsTimer);
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: '', me: null, lastSeq: null, selected: null });
  state.channels.clear(); state.messages.clear(); state.feed.clear();
  for (const id of ['#channels', '#feed-list', '#stats-body', '#checkpoint-body', '#timeline-body']) $(id).replaceChildren();
  $('#board').hidden = $('#who').hidden = true;
  $('#signin').hidden = false;
  Object.assign($('#signin-error'), { hidden: !message, textContent: message || '' });
  $('#token').focus();
}

async function load() {
  // The messages in flight only: the board draws nothing else.
  const [channels, ...inFlight] = await Promise.all([listAll('ListChannels', {}, 'channels'),
    ...[...IN_FLIGHT].map((st) => listAll('ListMessages', { state: st }, 'messages'))]);
  for (const c of channels.items) state.channels.set(c.id, c);
  for (const m of inFlight.flatMap((l) => l.items)) state.messages.set(m.id, m);
  renderChannels();
  fillChannelFilter();
  show(state.view);
  // The feed opens on the recent past. Its replay overlaps what was just
  // listed (from the lowest listing head on), and versions keep the newer.
  subscribe(Math.max(0, Math.min(...inFlight.map((l) => l.head)) - FEED_BACKLOG));
}

// ---- routes -----------------------------------------------------------------
/** Where a message in flight is now: the party and how it is there. */
function position(m) {
  const st = m.state || 'STATE_UNSPECIFIED';
  if (!IN_FLIGHT.has(st)) return null;
  if (st === 'DELIVERED' || st === 'ACKNOWLEDGED') return { at: m.recipient, hold: 'delivered' };
  const i = (m.hops || []).findIndex((h) => h.state !== 'FORWARDED');
  if (i < 0) return { at: m.recipient, hold: 'delivered' };
  return { at: m.hops[i].mediator, hop: i, hold: m.hops[i].state === 'ACCEPTED' ? 'held' : 'waiting' };
}
const HOLD_MARK = { waiting: 'waiting', held: 'held', delivered: 'arrived' };

function renderChannels() {
  const box = $('#channels');
  const list = [...state.channels.values()].sort((a, b) => (a.displayName || '').localeCompare(b.displayName || ''));
  box.replaceChildren(...list.map((c) => {
    const stops = [c.parties[0], ...(c.mediators || []), c.parties[1]];
    return el('article', { class: 'channel', 'data-channel-id': c.id, 'data-state': c.state, 'aria-label': `Channel ${c.displayName}` },
      el('h3', {}, c.displayName, ' ', el('span', { class: `badge state-${c.state}`, text: c.state })),
      el('ol', { class: 'route', 'aria-label': stops.join(' → ') }, stops.map((p, i) => el('li', {
        class: `stop ${i === 0 || i === stops.length - 1 ? 'principal' : 'mediator'}`, 'data-party': p,
      }, el('span', { class: 'party', text: p }), el('ul', { class: 'tray', 'aria-label': `messages at ${p}` })))));
  }));
  $('#no-channels').hidden = list.length > 0;
  for (const m of state.messages.values()) placeMessage(m);
}

/** Puts (or moves, or removes) a message's chip at the party that has it now. */
function placeMessage(m) {
  let chip = document.querySelector(`#channels .msg[data-message-id="${CSS.escape(m.id)}"]`);
  const pos = position(m);
  const tray = pos && document.querySelector(
    `#channels .channel[data-channel-id="${CSS.escape(m.channelId)}"] .stop[data-party="${CSS.escape(pos.at)}"] .tray`);
  if (!tray) { if (chip) chip.remove(); return; }
  const c = state.channels.get(m.channelId);
  const reverse = c && m.sender === c.parties[1];
  const label = `${m.subject}, from ${m.sender} to ${m.recipient}: ${m.state}` +
    `${pos.hold === 'delivered' ? '' : ` (${pos.hold} at ${pos.at})`}`;
  const kids = [el('span', { class: 'mark', 'aria-hidden': 'true', text: reverse ? '←' : '→' }),
    el('span', { class: 'subject', text: m.subject }), el('span', { class: 'hold', text: HOLD_MARK[pos.hold] })];
  chip ??= activates(el('li', { class: 'msg', 'data-message-id': m.id }), () => openTimeline(m.id));
  chip.replaceChildren(...kids);
  Object.assign(chip.dataset, { at: pos.at, hold: pos.hold, state: m.state, direction: reverse ? 'reverse' : 'forward',
    hop: pos.hop === undefined ? '' : String(pos.hop), version: m.version });
  chip.setAttribute('aria-label', label);
  chip.title = label;
  if (chip.parentElement !== tray) {
    const focused = document.activeElement === chip;
    tray.append(chip);
    if (focused) chip.focus();
  }
}

// ---- the live stream --------------------------------------------------------
function setLive(s, text) { $('#live').dataset.state = s; $('#live').textContent = text || s; }

/** Follows Subscribe from `after`, resuming from the last sequence seen after any drop. */
async function subscribe(after) {
  state.lastSeq = after;
  const ctl = new AbortController();
  state.stream = ctl;
  let delay = 500;
  setLive('connecting', 'connecting…');
  while (state.stream === ctl) {
    let stall;
    try {
      const res = await call('Subscribe', { startAfter: String(state.lastSeq), heartbeatSeconds: HEARTBEAT_SECONDS }, ctl.signal);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      const arm = () => { clearTimeout(stall); stall = setTimeout(() => reader.cancel('stalled'), STALL_MS); };
      arm();
      for (let buf = '', cut; ;) {
        const { value, done } = await reader.read();
        if (done) break;
        arm();
        buf += value;
        for (; (cut = buf.indexOf('\n\n')) >= 0; buf = buf.slice(cut + 2)) if (onSse(buf.slice(0, cut))) delay = 500;
      }
      throw new ApiError(14, 'the stream ended');
    } catch (e) {
      if (state.stream !== ctl) return;
      if (e instanceof ApiError && (e.code === 'UNAUTHENTICATED' || e.code === 'PERMISSION_DENIED')) {
        signOut(`That token was refused: ${e.text}`);
        return;
      }
      if (e instanceof ApiError && e.code === 'OUT_OF_RANGE') { // behind what this page saw: another record
        signOut(`The server's record is behind what this page saw (${e.text}); sign in again.`);
        return;
      }
      setLive('reconnecting', `reconnecting… (${e instanceof ApiError ? e.code : 'connection lost'})`);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    } finally { clearTimeout(stall); }
  }
}

/** Handles one server-sent event; true when it was data (the stream works). */
function onSse(chunk) {
  let kind = 'message';
  const data = [];
  for (const line of chunk.split('\n')) {
    if (line.startsWith('event:')) kind = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (!data.length) return false;
  const json = JSON.parse(data.join('\n'));
  if (kind === 'error') throw apiError(0, json);
  if (json.heartbeat) { // every matching event up to its head has been sent
    state.lastSeq = Math.max(state.lastSeq, Number(json.heartbeat.headSequence || 0));
    setLive('live', 'live');
  } else if (json.event) onEvent(json.event);
  return true;
}

function onEvent(ev) {
  const seq = Number(ev.sequence);
  if (seq <= state.lastSeq) return; // already seen (the server sends none twice; this makes sure)
  state.lastSeq = seq;
  // A replay may bring an older version than the listing had: keep the newer.
  const newer = (map, v) => !map.has(v.id) || Number(map.get(v.id).version) < Number(v.version);
  if (ev.channel && newer(state.channels, ev.channel)) {
    state.channels.set(ev.channel.id, ev.channel);
    renderChannels();
    fillChannelFilter();
  }
  const m = ev.message;
  if (m && newer(state.messages, m)) { state.messages.set(m.id, m); placeMessage(m); }
  if (m && state.selected && (state.selected === m.id || state.selectedThread === m.threadId)) openTimeline(state.selected, true);
  addFeed(ev);
  if (state.view === 'stats') scheduleStats();
}

// ---- feed -------------------------------------------------------------------
function addFeed(ev) {
  const seq = Number(ev.sequence);
  if (state.feed.has(seq)) return;
  const subject = ev.message ? ev.message.subject : ev.channel ? ev.channel.displayName : '';
  const channel = state.channels.get(ev.channelId);
  const li = el('li', { class: 'event', 'data-sequence': seq, 'data-type': ev.type, 'data-channel-id': ev.channelId,
    'data-message-id': ev.messageId || null },
  el('span', { class: 'seq', text: `#${seq}` }), occurred(ev), el('span', { class: 'type', text: ev.type }),
  el('span', { class: 'actor', text: ev.actor }), el('span', { class: 'what', text: subject }),
  el('span', { class: 'chan', text: channel ? channel.displayName : '' }), ev.note ? el('span', { class: 'note', text: `“${ev.note}”` }) : null);
  if (ev.messageId) activates(li, () => openTimeline(ev.messageId));
  state.feed.set(seq, li);
  filterOne(li);
  $('#feed-list').prepend(li);
  if (state.feed.size > FEED_MAX) { const oldest = state.feed.keys().next().value; state.feed.get(oldest).remove(); state.feed.delete(oldest); }
  countFeed();
}
function filterOne(li) {
  const t = $('#feed-type').value, c = $('#feed-channel').value;
  li.hidden = (t && li.dataset.type !== t) || (c && li.dataset.channelId !== c);
}
const countFeed = () => { $('#feed-count').textContent = `${[...state.feed.values()].filter((li) => !li.hidden).length} of ${state.feed.size} events`; };
function fillChannelFilter() {
  const sel = $('#feed-channel');
  const keep = sel.value;
  sel.replaceChildren(el('option', { value: '', text: 'all channels' }),
    ...[...state.channels.values()].map((c) => el('option', { value: c.id, text: c.displayName })));
  sel.value = state.channels.has(keep) ? keep : '';
}

// ---- timeline ---------------------------------------------------------------
async function openTimeline(id, quiet) {
  state.selected = id;
  if (!quiet) show('timeline');
  const body = $('#timeline-body');
  let m, events, thread;
  try {
    m = await call('GetMessage', { messageId: id });
    state.selectedThread = m.threadId;
    [events, thread] = await Promise.all([listAll('ListEvents', { messageId: id }, 'events'),
      listAll('ListMessages', { threadId: m.threadId || id }, 'messages')]);
  } catch (e) {
    body.replaceChildren(el('p', { class: 'error', role: 'alert', text: `Could not load the message: ${e.text || e.message}` }));
    return;
  }
  if (state.selected !== id) return;
  // A part the message has not (a body, a deadline) is null: not a node.
  body.replaceChildren(...timeline(m, events.items, thread.items).filter(Boolean));
  if (!quiet) $('#timeline-title').focus();
}

function timeline(m, events, thread) {
  const now = Date.now();
  const start = ms(m.sendTime || m.createTime);
  const inFlight = IN_FLIGHT.has(m.state);
  // The axis is of occur times; the record times are in the table below.
  const times = [start, ms(m.respondBy), inFlight ? now : NaN, ...events.map((e) => ms(e.occurTime))].filter(Number.isFinite);
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1000);
  const pct = (t) => `${(100 * (t - t0)) / (t1 - t0)}%`;
  const bar = (cls, a, b, title) => el('span', { class: `bar ${cls}`, title,
    style: { left: pct(a), width: `max(2px, ${(100 * (b - a)) / (t1 - t0)}%)` } });
  const fin = Number.isFinite;
  let arrival = start;
  const rows = (m.hops || []).map((h, i) => {
    const acc = ms(h.acceptTime), fwd = ms(h.forwardTime), st = h.state || 'PENDING', parts = [], bars = [];
    const span = (cls, a, b, word, sofar) => {
      parts.push(`${word} ${fmtDur(b - a)}${sofar ? ' so far' : ''}`);
      bars.push(bar(cls, a, b, `${cls}: ${h.mediator}`));
    };
    if (!fin(arrival)) parts.push('not reached yet');
    else if (st !== 'CANCELLED') {
      if (fin(acc)) span('waiting', arrival, acc, 'waited');
      else if (st === 'PENDING' && inFlight) span('waiting', arrival, now, 'waited', true);
      if (fin(acc) && fin(fwd)) span('held', acc, fwd, 'held');
      else if (fin(acc) && st === 'ACCEPTED' && inFlight) span('held', acc, now, 'held', true);
      if (fin(fwd)) { parts.push(`handed on ${fmtTime(h.forwardTime)}`); bars.push(bar('handed', fwd, fwd, `handed on: ${h.mediator}`)); }
    }
    if (st === 'DECLINED' || st === 'CANCELLED') parts.push(st.toLowerCase());
    arrival = fwd;
    return el('li', { class: 'hop', 'data-hop': i, 'data-mediator': h.mediator, 'data-state': st },
      el('div', { class: 'hop-label' }, el('strong', { class: 'hop-holder', text: h.mediator }),
        el('span', { class: 'badge', text: st }), el('span', { class: 'hop-duration', text: parts.join(' · ') }),
        h.note ? el('q', { class: 'note', text: h.note }) : null),
      el('div', { class: 'track', 'aria-hidden': 'true' }, bars));
  });
  const axis = el('div', { class: 'axis', 'aria-hidden': 'true' },
    el('span', { class: 'tick start', text: fmtTime(new Date(t0).toISOString()) }),
    el('span', { class: 'tick end', text: fmtTime(new Date(t1).toISOString()) }));
  let deadline = null;
  if (m.respondBy) {
    axis.append(el('span', { class: 'deadline', title: `respond by ${fmtTime(m.respondBy)}`, style: { left: pct(ms(m.respondBy)) } }));
    deadline = el('p', { class: 'deadline-text', 'data-respond-by': m.respondBy },
      '⚑ Respond by ', timeEl(m.respondBy),
      ms(m.respondBy) < now ? ' (passed)' : ` (in ${fmtDur(ms(m.respondBy) - now)})`);
  }
  const replies = thread.filter((r) => r.id !== m.id).sort((a, b) => ms(a.createTime) - ms(b.createTime));
  return [
    el('h3', { class: 'subject', 'data-message-id': m.id }, m.subject, ' ', el('span', { class: 'badge', text: m.state })),
    el('p', {}, `${m.sender} → ${(m.hops || []).map((h) => h.mediator).join(' → ')} → ${m.recipient}`,
      ' · sent ', timeEl(m.sendTime || m.createTime), m.inReplyTo ? ' · a reply' : ''),
    m.body ? el('blockquote', { class: 'body', text: m.body }) : null,
    deadline,
    el('div', { class: 'chart' }, axis, el('ol', { class: 'hops', 'aria-label': 'Hops' }, rows)),
    el('p', { class: 'legend', 'aria-hidden': 'true' }, el('span', { class: 'key waiting' }), ' waiting ',
      el('span', { class: 'key held' }), ' held ', el('span', { class: 'key handed' }), ' handed on'),
    el('h4', { text: 'Events (occur time: when it happened, as reported; record time: when the server recorded it)' }),
    el('div', { class: 'scroll' }, el('table', { class: 'events' },
      el('thead', {}, el('tr', {}, ['#', 'type', 'actor', 'occurred', 'recorded', 'note'].map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, events.map((e) => el('tr', { 'data-sequence': e.sequence },
        el('td', { text: e.sequence }), el('td', { text: e.type }), el('td', { text: e.actor }),
        el('td', {}, timeEl(e.occurTime)), el('td', {}, timeEl(e.recordTime)), el('td', { text: e.note || '' })))))),
    el('h4', { text: `Thread: ${replies.length ? `${replies.length} other message${replies.length > 1 ? 's' : ''}` : 'no replies yet'}` }),
    el('ul', { class: 'thread' }, replies.map((r) => el('li', {},
      el('button', { type: 'button', class: 'link', 'data-message-id': r.id, onclick: () => openTimeline(r.id) },
        `${r.subject} — ${r.sender} → ${r.recipient}, ${r.state}`), ' ', timeEl(r.sendTime || r.createTime)))),
  ];
}

// ---- statistics -------------------------------------------------------------
function scheduleStats() {
  if (state.statsTimer) return;
  state.statsTimer = setTimeout(() => { state.statsTimer = null; loadStats(); }, 2000);
}

async function loadStats() {
  const body = $('#stats-body');
  const s = await call('GetRelayStats', {}).catch((e) => {
    body.replaceChildren(el('p', { class: 'error', 'data-code': e.code || '', text: `Statistics could not be loaded: ${e.text || e.message}` }));
  });
  if (!s) return;
  const meds = s.mediators || [], prins = s.principals || [], dl = s.deadlines || {};
  const n = (v) => Number(v || 0);
  const countChart = (title, rows, keys) => {
    const max = Math.max(1, ...rows.flatMap((r) => keys.map((k) => n(r[k]))));
    return el('figure', { class: 'stat' }, el('figcaption', { text: title }),
      rows.length ? rows.map((r) => el('div', { class: 'group', 'data-party': r.partyId }, el('strong', { text: r.partyId }),
        keys.map((k) => meter(k, n(r[k]), max, String(n(r[k])))))) : el('p', { class: 'hint', text: 'none' }));
  };
  const durChart = (title, rows, keys) => {
    const vals = rows.flatMap((r) => keys.flatMap((k) => [durMs((r[k] || {}).p50), durMs((r[k] || {}).p90)]));
    const max = Math.max(1, ...vals.filter(Number.isFinite));
    return el('figure', { class: 'stat' }, el('figcaption', { text: title }),
      rows.map((r) => el('div', { class: 'group', 'data-party': r.partyId }, el('strong', { text: r.partyId }),
        keys.flatMap((k) => ['p50', 'p90'].map((p) => {
          const d = r[k] || {}, v = durMs(d[p]);
          return meter(`${k.replace('Time', '')} ${p}`, Number.isFinite(v) ? v : 0, max,
            n(d.count) ? `${fmtDur(v)} (of ${n(d.count)})` : 'no data', k);
        })))));
  };
  body.replaceChildren(
    el('p', {}, `${n(s.messages)} messages counted, up to log position ${n(s.headSequence)}.`),
    el('div', { class: 'stats-grid' },
      countChart('Mediators: hops', meds, ['carried', 'declined', 'holding', 'waiting']),
      durChart('Mediators: pickup (arrival → accept) and hold (accept → forward)', meds, ['pickupTime', 'holdTime']),
      countChart('Principals', prins, ['sent', 'received', 'answered', 'rejected']),
      durChart('Principals: response (delivery → answer)', prins, ['responseTime']),
      countChart('Deadlines', [{ partyId: 'respond_by', ...dl }], ['open', 'met', 'expired'])));
}

function meter(label, value, max, text, kind) {
  const fill = el('span', { class: `fill k-${kind || label}`, style: { width: `${Math.max(0, (100 * value) / max)}%` } });
  return el('div', { class: 'meter', 'data-key': label },
    el('span', { class: 'mlabel', text: label }), el('span', { class: 'track', 'aria-hidden': 'true' }, fill),
    el('span', { class: 'mvalue', text }));
}

// ---- checkpoint -------------------------------------------------------------
const enc = new TextEncoder();
const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const cat = (...parts) => { const o = new Uint8Array(parts.reduce((n, p) => n + p.length, 0)); let i = 0; for (const p of parts) { o.set(p, i); i += p.length; } return o; };
const sha256 = async (...parts) => new Uint8Array(await crypto.subtle.digest('SHA-256', cat(...parts)));
const node = (l, r) => sha256(Uint8Array.of(1), l, r);

/** Checks the note's Ed25519 signature against the verifier key (C2SP signed-note). */
async function verifyNote(cp) {
  const [, name, idHex, keyB64] = (cp.verifierKey || '').match(/^([^+]+)\+([^+]*)\+(.*)$/) || []; // base64 may hold '+'
  const key = b64(keyB64 || '');
  if (!name || !/^[0-9a-f]{8}$/.test(idHex || '') || key.length !== 33 || key[0] !== 1) throw new Error('the verifier key is malformed');
  const id = (await sha256(enc.encode(name), Uint8Array.of(10), key)).slice(0, 4);
  if (!eq(id, Uint8Array.from(idHex.match(/../g), (h) => parseInt(h, 16)))) throw new Error('the verifier key id does not match its key');
  const note = cp.note || '';
  const split = note.indexOf('\n\n');
  if (split < 0) throw new Error('the note has no signature block');
  const text = note.slice(0, split + 1);
  const [origin, size, root] = text.split('\n');
  if (origin !== cp.origin || size !== String(cp.treeSize || 0) || root !== cp.rootHash) throw new Error('the note does not say what the checkpoint says');
  const pub = await crypto.subtle.importKey('raw', key.slice(1), { name: 'Ed25519' }, false, ['verify']);
  for (const line of note.slice(split + 2).split('\n')) {
    const m = line.match(/^— (\S+) (\S+)$/);
    if (!m || m[1] !== name) continue;
    const sig = b64(m[2]);
    if (sig.length !== 68 || !eq(sig.slice(0, 4), id)) continue;
    if (await crypto.subtle.verify({ name: 'Ed25519' }, pub, sig.slice(4), enc.encode(text))) return name;
    throw new Error('the signature does not verify');
  }
  throw new Error(`no signature by ${name}`);
}

/** RFC 9162 §2.1.4.2: does `proof` show the tree of size n2 extends the one of size n1? */
async function consistent(n1, root1, n2, root2, proof) {
  if (n1 === n2) return proof.length === 0 && eq(root1, root2);
  if (n1 === 0) return true;
  if ((n1 & (n1 - 1)) === 0) proof = [root1, ...proof];
  if (!proof.length) return false;
  let fn = n1 - 1, sn = n2 - 1;
  while (fn & 1) { fn >>= 1; sn >>= 1; }
  let fr = proof[0], sr = proof[0];
  for (const c of proof.slice(1)) {
    if (sn === 0) return false;
    if ((fn & 1) || fn === sn) {
      fr = await node(c, fr); sr = await node(c, sr);
      while (!(fn & 1) && fn !== 0) { fn >>= 1; sn >>= 1; }
    } else {
      sr = await node(sr, c);
    }
    fn >>= 1; sn >>= 1;
  }
  return sn === 0 && eq(fr, root1) && eq(sr, root2);
}

async function loadCheckpoint() {
  const body = $('#checkpoint-body');
  const row = (check, ok, text) => el('li', { class: ok ? 'ok' : ok === false ? 'bad' : 'info', 'data-check': check },
    el('span', { 'aria-hidden': 'true', text: ok ? '✔ ' : ok === false ? '✘ ' : '• ' }), text);
  const cp = await call('GetCheckpoint', { treeSize: '0' }).catch((e) => {
    body.replaceChildren(el('p', { class: 'error', text: `The checkpoint could not be loaded: ${e.text || e.message}` }));
  });
  if (!cp) return;
  const size = Number(cp.treeSize || 0);
  const checks = [];
  let verified = false;
  try {
    const name = await verifyNote(cp);
    verified = true;
    checks.push(row('signature', true, `The note's Ed25519 signature verifies against the key ${name} the server publishes (checked here, with WebCrypto).`));
  } catch (e) {
    checks.push(row('signature', false, `Not verified: ${e.message}.`));
  }
  const store = `backchannel.checkpoint.${cp.origin}`;
  const prev = JSON.parse(localStorage.getItem(store) || 'null');
  const keep = () => localStorage.setItem(store, JSON.stringify({ size, rootHash: cp.rootHash, verifierKey: cp.verifierKey }));
  if (verified && prev && prev.verifierKey !== cp.verifierKey) {
    // Trust on first use: a new key is news, not replaced silently.
    checks.push(row('consistency', false, `This log now signs with another key than the ${prev.verifierKey} this browser saw before.`));
  } else if (verified && prev) {
    try {
      let ok = size >= prev.size;
      if (ok && size > prev.size) {
        const p = await call('GetConsistencyProof', { firstSize: String(prev.size), secondSize: String(size) });
        ok = await consistent(prev.size, b64(prev.rootHash), size, b64(cp.rootHash || ''), (p.hashes || []).map(b64));
      } else if (ok) ok = prev.rootHash === cp.rootHash;
      checks.push(row('consistency', ok, ok
        ? `Consistent with the checkpoint this browser saw before (size ${prev.size}): the log only grew (RFC 9162 proof checked here).`
        : size < prev.size ? `The log is smaller than the ${prev.size} events this browser saw: the server is behind or its history was rewritten.`
          : `NOT consistent with the checkpoint of size ${prev.size} this browser saw: the history forked or was rewritten.`));
      if (ok) keep();
    } catch (e) {
      checks.push(row('consistency', false, `The consistency proof could not be checked: ${e.text || e.message}`));
    }
  } else if (verified) {
    checks.push(row('consistency', null, 'First checkpoint this browser sees from this log: kept, so the next check can prove the log only grew.'));
    keep();
  }
  checks.push(row('scope', null, 'Not checked here: that each event is included (run `backchannel audit` for that).'));
  body.replaceChildren(
    el('dl', { class: 'facts' },
      el('dt', { text: 'Tree size' }), el('dd', { id: 'tree-size', 'data-verified': String(verified), text: String(size) }),
      el('dt', { text: 'Origin' }), el('dd', { text: cp.origin }),
      el('dt', { text: 'Root hash' }), el('dd', { class: 'mono', text: cp.rootHash || '' }),
      el('dt', { text: 'Verifier key' }), el('dd', { class: 'mono', text: cp.verifierKey })),
    el('p', { id: 'checkpoint-verdict', class: verified ? 'ok' : 'bad', 'data-verified': String(verified),
      text: verified ? `Verified: ${size} events, signed by the log's key.` : 'NOT verified.' }),
    el('ul', { class: 'checks' }, checks),
    el('pre', { class: 'note' }, cp.note));
}

// ---- views and start --------------------------------------------------------
function show(view) {
  state.view = view;
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== view;
  for (const t of document.querySelectorAll('.tab')) {
    t.setAttribute('aria-current', t.dataset.view === (view === 'timeline' ? 'routes' : view) ? 'page' : 'false');
  }
  if (view === 'stats') loadStats();
  if (view === 'checkpoint') loadCheckpoint();
  if (view !== 'timeline') state.selected = null;
}

document.addEventListener('DOMContentLoaded', () => {
  $('#feed-type').append(...EVENT_TYPES.map((t) => el('option', { value: t, text: t })));
  $('#feed-type').onchange = $('#feed-channel').onchange = () => { for (const li of state.feed.values()) filterOne(li); countFeed(); };
  for (const t of document.querySelectorAll('.tab')) t.onclick = () => show(t.dataset.view);
  $('#timeline-close').onclick = () => show('routes');
  $('#timeline-title').tabIndex = -1;
  $('#stats-refresh').onclick = loadStats;
  $('#checkpoint-refresh').onclick = loadCheckpoint;
  $('#signout').onclick = () => signOut('');
  $('#signin-form').onsubmit = (e) => { e.preventDefault(); const t = $('#token').value.trim(); if (t) signIn(t, false); };
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved, true); else $('#token').focus();
});
