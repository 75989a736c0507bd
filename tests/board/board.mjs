// Drives the board in headless Chromium for tests/board.rs. The Rust side
// runs the real server and is "another client": this script prints
// `NEED <what> [args…]` on stdout and reads one `DONE [answer]` line per
// request from stdin, so every move of a message comes over real gRPC while
// the page is open. Every wait has a deadline; none is a fixed sleep.
// Exit status 0 when every check passed.
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { WAIT, check, run, step, watch } from './harness.mjs';

const { BOARD_URL, BOARD_TOKEN, BOARD_CHANNEL, BOARD_ASIDE, BOARD_SCREENSHOTS } = process.env;

const answers = [];
let waiting = null;
createInterface({ input: process.stdin }).on('line', (line) => {
  if (waiting) { const w = waiting; waiting = null; w(line); } else answers.push(line);
});
/** Asks the Rust side to do something over gRPC; its answer. */
async function need(...what) {
  console.log(`NEED ${what.join(' ')}`);
  const line = answers.length ? answers.shift() : await new Promise((r) => { waiting = r; });
  if (!line.startsWith('DONE')) throw new Error(`NEED ${what.join(' ')}: ${line}`);
  return line.slice(5);
}

await run(BOARD_SCREENSHOTS, 'failure', async ({ browser, problems }) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  // The wrong token and the outage are refused on purpose (see watch).
  watch(page, problems);
  const shot = (name) => page.screenshot({ path: join(BOARD_SCREENSHOTS, `${name}.png`), fullPage: true });
  const chip = (id) => page.locator(`#channels .msg[data-message-id="${id}"]`);

  await page.goto(BOARD_URL);
  await page.locator('#signin').waitFor();
  await shot('signin');

  // A wrong token is refused, plainly, and not kept.
  await page.fill('#token', 'not-a-token-of-this-server');
  await page.press('#token', 'Enter');
  const refusal = page.locator('#signin-error');
  await refusal.waitFor();
  const refusalText = await refusal.textContent();
  check(refusalText.startsWith('That token was refused: UNAUTHENTICATED'), `refusal says why: ${refusalText}`);
  check(await page.evaluate(() => sessionStorage.length) === 0, 'a refused token is not stored');
  check(await page.locator('#board').isHidden(), 'nothing is shown to a refused token');
  await shot('signin-refused');
  step('a wrong token is refused with a clear message');

  // Sign in as iran: its channel is drawn as its route, the other is absent.
  await page.fill('#token', BOARD_TOKEN);
  await page.click('#signin-button');
  await page.locator('#whoami', { hasText: 'iran' }).waitFor();
  await page.locator('#live[data-state="live"]').waitFor();
  check(!page.url().includes(BOARD_TOKEN), 'the token is not in the URL');
  check(await page.evaluate(() => sessionStorage.getItem('backchannel.token')) === BOARD_TOKEN, 'the token is in session storage');
  const route = await page.locator(`.channel[data-channel-id="${BOARD_CHANNEL}"] .stop`).evaluateAll((s) => s.map((e) => e.dataset.party));
  check(route.join(' ') === 'iran france japan united-states', `route drawn: ${route}`);
  check(await page.locator(`.channel[data-channel-id="${BOARD_ASIDE}"]`).count() === 0, 'a channel iran is not on is absent');
  check(await page.locator('.channel').count() === 1, 'only the visible channel is drawn');
  // Marks this document: a reload would lose it.
  await page.evaluate(() => { window.boardTestMark = 'same document'; });
  step('signed in as iran; only its channel is drawn');

  // Another client sends and moves a message; it moves on the route live.
  const id = await need('send');
  await chip(id).and(page.locator('[data-at="france"][data-hold="waiting"][data-direction="forward"]')).waitFor();
  await need('move', 'france', 'accept', id, '8');
  await chip(id).and(page.locator('[data-at="france"][data-hold="held"]')).waitFor();
  await shot('routes');
  await need('move', 'france', 'forward', id, '5');
  await chip(id).and(page.locator('[data-at="japan"][data-hold="waiting"][data-hop="1"]')).waitFor();
  await need('move', 'japan', 'forward', id, '4');
  await chip(id).and(page.locator('[data-at="united-states"][data-hold="delivered"][data-state="DELIVERED"]')).waitFor();
  step('the message moved iran → france (waiting, held) → japan → united-states without a reload');

  // Its timeline, opened with the keyboard: each hop's holder and duration.
  await chip(id).focus();
  await page.keyboard.press('Enter');
  await page.locator('#timeline:not([hidden]) .hop[data-hop="1"]').waitFor();
  const hops = await page.locator('#timeline .hop').evaluateAll((hs) => hs.map((h) => ({
    hop: h.dataset.hop, holder: h.querySelector('.hop-holder').textContent, duration: h.querySelector('.hop-duration').textContent,
  })));
  check(hops.length === 2, `two hops: ${JSON.stringify(hops)}`);
  check(hops[0].holder === 'france' && hops[0].duration.startsWith('waited 2m00s · held 3m00s · handed on'), `france's hop: ${JSON.stringify(hops[0])}`);
  check(hops[1].holder === 'japan' && hops[1].duration.startsWith('waited 1m00s · held 0.0s · handed on'), `japan's hop: ${JSON.stringify(hops[1])}`);
  check(await page.locator('#timeline .events tbody tr').count() === 4, 'four events: sent, accepted, forwarded, delivered');
  check(await page.locator('#timeline .events tbody tr td time').count() === 8, 'each event has its occur and record time');
  check(await page.locator('#timeline .deadline').count() === 1, 'the respond_by deadline is marked');
  check(await page.locator('#timeline .bar.waiting').count() === 2 && await page.locator('#timeline .bar.held').count() === 2, 'waiting and held bars');
  // The recipient answers: the reply appears in the thread, live, and
  // travels the route reversed.
  const reply = await need('reply', id);
  await page.locator(`#timeline .thread [data-message-id="${reply}"]`).waitFor();
  await shot('timeline');
  await page.click('#timeline-close');
  await chip(reply).and(page.locator('[data-at="japan"][data-hold="waiting"][data-direction="reverse"]')).waitFor();
  await chip(id).waitFor({ state: 'detached' });
  step('timeline: holders, durations, occur/record times, deadline, the reply; the reply travels reversed');

  // The feed, filtered.
  await page.click('.tab[data-view="feed"]');
  await page.locator(`#feed-list [data-sequence]`).first().waitFor();
  await page.selectOption('#feed-type', 'MESSAGE_SENT');
  const types = await page.locator('#feed-list .event:not([hidden])').evaluateAll((l) => l.map((e) => e.dataset.type));
  check(types.length >= 2 && types.every((t) => t === 'MESSAGE_SENT'), `type filter: ${types}`);
  await page.selectOption('#feed-type', '');

  // A disconnect: the server restarts on the same address, and events are
  // written while the page cannot reach it (its Subscribe requests are
  // refused until the events are in), then more once it is back.
  await page.route('**/backchannel.v1.MessageService/Subscribe', (r) => r.abort('connectionrefused'));
  await need('restart-and-write');
  await page.locator('#live[data-state="reconnecting"]').waitFor();
  await shot('feed-reconnecting');
  await page.unroute('**/backchannel.v1.MessageService/Subscribe');
  await page.locator('#live[data-state="live"]').waitFor({ timeout: 20000 });
  await need('write');
  const visible = (await need('events')).split(',').map(Number);
  await page.waitForFunction((n) => document.querySelectorAll('#feed-list [data-sequence]').length >= n, visible.length);
  const seen = await page.locator('#feed-list [data-sequence]').evaluateAll((l) => l.map((e) => Number(e.dataset.sequence)));
  const sorted = [...seen].sort((a, b) => a - b);
  check(new Set(seen).size === seen.length, `no event twice in the feed: ${sorted}`);
  check(sorted.join(',') === visible.join(','), `the feed holds exactly the visible events:\n feed ${sorted}\n want ${visible}`);
  check(await page.evaluate(() => window.boardTestMark) === 'same document', 'the page was never reloaded');
  await page.selectOption('#feed-channel', BOARD_CHANNEL);
  await shot('feed');
  step(`after the restart the feed resumed: ${visible.length} events, each once, none missing`);

  // Statistics: the charts, with the figures GetRelayStats gives over gRPC.
  await page.click('.tab[data-view="stats"]');
  const want = JSON.parse(await need('stats'));
  const carried = page.locator('#stats-body .group[data-party="france"] .meter[data-key="carried"] .mvalue').first();
  await carried.waitFor();
  check(await carried.textContent() === String(want.franceCarried), `france carried ${want.franceCarried}`);
  await shot('stats');
  step('statistics shown as charts');

  // The checkpoint, verified here; then again after the log grew, with the
  // consistency proof from the one this browser kept.
  await page.click('.tab[data-view="checkpoint"]');
  let size = await need('checkpoint');
  await page.locator('#checkpoint-verdict').waitFor();
  check(await page.locator('#checkpoint-verdict').getAttribute('data-verified') === 'true',
    `the checkpoint verified: ${await page.locator('#checkpoint-body .checks').textContent()}`);
  check(await page.locator('#tree-size').textContent() === size, `tree size ${size}`);
  await need('write');
  size = await need('checkpoint');
  await page.click('#checkpoint-refresh');
  await page.locator('#tree-size', { hasText: new RegExp(`^${size}$`) }).waitFor();
  await page.locator('[data-check="consistency"].ok').waitFor();
  await shot('checkpoint');
  // A note altered on the way is not verified.
  await page.route('**/backchannel.v1.AuditService/GetCheckpoint', async (r) => {
    const res = await r.fetch();
    const cp = await res.json();
    cp.note = cp.note.replace(/\n(\d+)\n/, (_, n) => `\n${Number(n) + 1}\n`);
    cp.treeSize = String(Number(cp.treeSize) + 1);
    await r.fulfill({ response: res, json: cp });
  });
  await page.click('#checkpoint-refresh');
  await page.locator('#checkpoint-verdict[data-verified="false"]').waitFor();
  await page.unroute('**/backchannel.v1.AuditService/GetCheckpoint');
  step('checkpoint verified (signature, consistency); an altered note is refused');

  // The phone layout, then sign out.
  await page.click('.tab[data-view="routes"]');
  await page.setViewportSize({ width: 390, height: 844 });
  await chip(reply).waitFor();
  await shot('routes-phone');
  await page.click('#signout');
  await page.locator('#signin').waitFor();
  check(await page.evaluate(() => sessionStorage.length) === 0, 'sign out forgets the token');
  step('phone layout; signed out');
});
process.stdin.destroy();
