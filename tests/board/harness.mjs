// What the board's browser tests share: Chromium launched as this machine
// needs it, the checks, a watch on the page's console, and the frame that
// screenshots a failure and closes the browser.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.BOARD_CHROMIUM || '/usr/bin/chromium';
/** How long any one thing may take to appear on the page. */
export const WAIT = 15000;

export const step = (what) => console.log(`ok: ${what}`);
export function check(cond, what) { if (!cond) throw new Error(`check failed: ${what}`); }

/**
 * Collects the page's console errors and exceptions into `problems`.
 * Refused requests (a wrong token, an outage) are logged by Chromium as
 * "Failed to load resource", on purpose; any other error (a CSP violation,
 * an exception) fails the test.
 */
export function watch(page, problems) {
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
}

/**
 * Runs `body({ browser, problems })` in a fresh headless Chromium, then
 * checks that the page logged no error. On a failure it screenshots every
 * page to `<dir>/<failure>.png` and sets exit status 1.
 */
export async function run(dir, failure, body) {
  mkdirSync(dir, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--headless', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const problems = [];
  try {
    await body({ browser, problems });
    check(problems.length === 0, `no console errors:\n${problems.join('\n')}`);
  } catch (e) {
    console.error(e.stack || String(e));
    for (const p of browser.contexts().flatMap((c) => c.pages())) {
      await p.screenshot({ path: join(dir, `${failure}.png`), fullPage: true }).catch(() => {});
    }
    if (problems.length) console.error(problems.join('\n'));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}
