// Checks the board after examples/biarritz.sh, for tests/board_biarritz.rs:
// signs in with BOARD_TOKEN and compares every view with BOARD_STORY, what
// the Rust side read over gRPC (channels, events, the story's messages,
// GetRelayStats, the checkpoint's tree size). Screenshots of each view go
// to BOARD_SCREENSHOTS/biarritz-*.png, and the overture's timeline, one
// viewport, also to BOARD_README_SHOT when that is set. Every wait has a
// deadline; none is a fixed sleep. Exit status 0 when every check passed.
import { join } from 'node:path';
import { WAIT, check, run, step, watch } from './harness.mjs';

const { BOARD_URL, BOARD_TOKEN, BOARD_STORY, BOARD_SCREENSHOTS, BOARD_README_SHOT } = process.env;
const story = JSON.parse(BOARD_STORY);

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

await run(BOARD_SCREENSHOTS, 'biarritz-failure', async ({ browser, problems }) => {
  // The README's picture is one 1280×800 viewport, at one device pixel.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1,
    timezoneId: 'UTC', locale: 'en-GB' });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  watch(page, problems);
  const shot = (name) => page.screenshot({ path: join(BOARD_SCREENSHOTS, `biarritz-${name}.png`), fullPage: true, type: 'png' });

  await page.goto(BOARD_URL);
  await page.locator('#signin').waitFor();
  await page.fill('#token', BOARD_TOKEN);
  await page.click('#signin-button');
  await page.locator('#whoami', { hasText: 'admin' }).waitFor();
  await page.locator('#live[data-state="live"]').waitFor();
  check(!page.url().includes(BOARD_TOKEN), 'the token is not in the URL');

  // Routes: both channels, each on its route. The story left nothing in
  // flight (answered, declined, withdrawn, expired), so no message sits
  // on a route.
  check(story.channels.length === 2, `two channels in the record: ${JSON.stringify(story.channels)}`);
  for (const c of story.channels) {
    const box = page.locator(`.channel[data-channel-id="${c.id}"]`);
    await box.waitFor();
    check((await box.locator('h3').textContent()).startsWith(c.name), `channel ${c.id} is named ${c.name}`);
    const stops = await box.locator('.stop').evaluateAll((s) => s.map((e) => e.dataset.party));
    check(same(stops, c.route), `${c.name}: route ${stops}, not ${c.route}`);
  }
  const routes = Object.fromEntries(story.channels.map((c) => [c.name, c.route.join(' ')]));
  check(routes['The Élysée channel'] === 'iran france united-states', `the Élysée channel runs via france: ${JSON.stringify(routes)}`);
  check(routes['The Tokyo channel'] === 'iran japan united-states', `the Tokyo channel runs via japan: ${JSON.stringify(routes)}`);
  check(await page.locator('.channel').count() === 2, 'two channels drawn');
  check(await page.locator('#channels .msg').count() === 0, 'no message in flight at the end of the story');
  await shot('routes');
  step('routes: the Élysée channel via france and the Tokyo channel via japan, nothing left in flight');

  // The feed: every event of the story, once, in order.
  await page.click('.tab[data-view="feed"]');
  const want = story.events.map((e) => e.sequence);
  await page.waitForFunction((n) => document.querySelectorAll('#feed-list [data-sequence]').length >= n, want.length);
  const feed = await page.locator('#feed-list [data-sequence]').evaluateAll((l) => l.map((e) => ({
    sequence: Number(e.dataset.sequence), type: e.dataset.type, messageId: e.dataset.messageId || '' })));
  check(same(feed.map((e) => e.sequence), [...want].reverse()), `the feed, newest first, holds every event:\n feed ${feed.map((e) => e.sequence)}\n want ${want}`);
  for (const e of story.events) {
    const f = feed.find((x) => x.sequence === e.sequence);
    check(f.type === e.type && f.messageId === e.messageId, `event ${e.sequence}: ${JSON.stringify(f)}, not ${JSON.stringify(e)}`);
  }
  const types = new Set(feed.map((e) => e.type));
  for (const t of ['CHANNEL_OPENED', 'MESSAGE_SENT', 'MESSAGE_ACCEPTED', 'MESSAGE_DELIVERED', 'MESSAGE_ACKNOWLEDGED',
    'MESSAGE_ANSWERED', 'MESSAGE_DECLINED', 'MESSAGE_WITHDRAWN', 'MESSAGE_EXPIRED']) check(types.has(t), `the feed has a ${t}`);
  check((await page.locator('#feed-count').textContent()) === `${want.length} of ${want.length} events`, 'the count says all of them');
  await shot('feed');
  step(`feed: all ${want.length} events, once each`);

  // A message's timeline, opened from the feed: the overture, carried by
  // France, with the rest of its thread; then the preconditions from it.
  const m = story.messages;
  await page.click(`#feed-list [data-type="MESSAGE_SENT"][data-message-id="${m.overture}"]`);
  await page.locator(`#timeline:not([hidden]) h3.subject[data-message-id="${m.overture}"]`).waitFor();
  const hops = await page.locator('#timeline .hop').evaluateAll((l) => l.map((h) => `${h.dataset.mediator} ${h.dataset.state}`));
  check(same(hops, ['france FORWARDED']), `the overture's hop: ${hops}`);
  const mine = story.events.filter((e) => e.messageId === m.overture).length;
  check(await page.locator('#timeline .events tbody tr').count() === mine, `the overture's ${mine} events`);
  check(!(await page.locator('#timeline-body').evaluate((b) => [...b.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim()))),
    'no stray text among the timeline\'s parts (a missing deadline is no "null")');
  for (const id of [m.answer, m.preconditions]) await page.locator(`#timeline .thread [data-message-id="${id}"]`).waitFor();
  // The README's picture: this timeline, 2019's dates and the whole
  // thread, in one viewport (the feed's dense text makes too big a PNG).
  if (BOARD_README_SHOT) await page.screenshot({ path: BOARD_README_SHOT, type: 'png' });
  await shot('timeline');
  await page.click(`#timeline .thread [data-message-id="${m.preconditions}"]`);
  await page.locator(`#timeline h3.subject[data-message-id="${m.preconditions}"]`).waitFor();
  check((await page.locator('#timeline h3.subject .badge').textContent()) === 'EXPIRED', 'the preconditions expired');
  check((await page.locator('#timeline .deadline-text').textContent()).includes('(passed)'), 'their deadline is marked passed');
  await shot('timeline-preconditions');
  step('timeline: the overture via france with its thread; the preconditions expired, deadline passed');

  // Statistics: france and japan (and the principals) as GetRelayStats
  // counts them.
  await page.click('.tab[data-view="stats"]');
  const value = (party, key) => page.locator(`#stats-body .group[data-party="${party}"] .meter[data-key="${key}"] .mvalue`).first();
  await value('france', 'carried').waitFor();
  const st = story.stats;
  for (const party of ['france', 'japan']) {
    check(st.mediators[party], `GetRelayStats counts ${party}`);
    for (const [key, n] of Object.entries(st.mediators[party])) {
      check(await value(party, key).textContent() === String(n), `${party} ${key}: ${n}`);
    }
  }
  for (const [party, counts] of Object.entries(st.principals)) {
    for (const [key, n] of Object.entries(counts)) check(await value(party, key).textContent() === String(n), `${party} ${key}: ${n}`);
  }
  for (const [key, n] of Object.entries(st.deadlines)) check(await value('respond_by', key).textContent() === String(n), `deadlines ${key}: ${n}`);
  check((await page.locator('#stats-body > p').first().textContent()).startsWith(`${st.messages} messages counted`), `${st.messages} messages`);
  await shot('stats');
  step(`statistics: france carried ${st.mediators.france.carried}, japan declined ${st.mediators.japan.declined}`);

  // The checkpoint, verified in the browser, over the whole story.
  await page.click('.tab[data-view="checkpoint"]');
  await page.locator('#checkpoint-verdict').waitFor();
  check(await page.locator('#checkpoint-verdict').getAttribute('data-verified') === 'true',
    `the checkpoint verified: ${await page.locator('#checkpoint-body .checks').textContent()}`);
  check(await page.locator('#tree-size').textContent() === story.treeSize, `tree size ${story.treeSize}`);
  await shot('checkpoint');
  step(`checkpoint: ${story.treeSize} events, verified`);
});
