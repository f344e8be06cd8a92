// Drives the console page (edge/console.html) in headless Chromium with playwright-core;
// started by tests/browser/run.py, which owns the node and restarts it when this prints
// "step restart", and starts a 2-node cluster when it prints "step cluster" (answering with a
// JSON line: each node's console and API URL, the API key).   env: RELAY_BASE (http://127.0.0.1:PORT), RELAY_JS_DEPS, CHROMIUM, OUT_DIR
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import readline from 'node:readline';

const { chromium } = createRequire(process.env.RELAY_JS_DEPS + '/')('playwright-core');
const BASE = process.env.RELAY_BASE, OUT = process.env.OUT_DIR;
const say = (s) => console.log(s);
const stdin = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((r) => stdin.once('line', r));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1300, height: 1100 } });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('console', (m) => { if (m.type() === 'error' && !/WebSocket|ERR_CONNECTION_REFUSED/.test(m.text())) problems.push('console: ' + m.text()); });
  const shot = async (name) => {
    const p = path.join(OUT, name);
    await page.screenshot({ path: p, fullPage: true });
    say('screenshot ' + p);
  };
  const card = (n) => page.locator(`[data-conn="${n}"]`);
  const T = { timeout: 10000 };

  await page.goto(BASE + '/');
  // the page opens one connection (alice) by itself: welcomed, plugins as a table
  await card(1).locator('.badge.ready').waitFor(T);
  const rows = await card(1).locator('table.plugins tbody tr').allInnerTexts();
  assert.ok(rows.some((r) => /echo_\s+running|echo_\s+pending/.test(r)), `plugin rows: ${rows}`);
  assert.ok(rows.some((r) => /session_\s+running/.test(r)), `plugin rows: ${rows}`);
  say('ok welcome, plugin table: ' + rows.join(' | ').replace(/\s+/g, ' '));

  // the prefilled example is a request the shipped echo plugin answers; the reply is pretty-printed
  await card(1).locator('button.send').click();
  await card(1).locator('pre.in', { hasText: '"type": "echo_pong"' }).waitFor(T);
  await card(1).locator('pre.sys', { hasText: 'request echo_ping answered in' }).waitFor(T);
  const reply = await card(1).locator('pre.in', { hasText: 'echo_pong' }).innerText();
  assert.match(reply, /\n {2}"data": \{\n {4}"hello": "world"/, 'reply not pretty-printed: ' + reply);
  say('ok request answered and pretty-printed');

  // an error: no plugin for the type; the error frame and the failed request are highlighted
  await card(1).locator('textarea').fill('{"type":"nope_x","data":{}}');
  await card(1).locator('button.send').click();
  const err = card(1).locator('pre.err', { hasText: 'plugin_not_found' }).first();
  await err.waitFor(T);
  const bg = await err.evaluate((e) => getComputedStyle(e).backgroundColor);
  assert.equal(bg, 'rgb(253, 232, 232)', 'error frame not highlighted');
  await card(1).locator('pre.err', { hasText: 'request nope_x failed: plugin_not_found' }).waitFor(T);
  assert.equal(await card(1).locator('pre.in', { hasText: 'plugin_not_found' }).count(), 0);
  say('ok error frame highlighted');

  // several connections at once: bob, and alice again (her welcome counts two clients)
  await page.fill('#uid', 'bob');
  await page.click('#add');
  await card(2).locator('.badge.ready').waitFor(T);
  await page.fill('#uid', 'alice');
  await page.click('#add');
  await card(3).locator('.badge.ready').waitFor(T);
  await card(3).locator('.muted', { hasText: 'client_count 2' }).waitFor(T);
  say('ok three connections');

  // the node's read-only view
  await page.locator('#metrics td', { hasText: /^relay_connections$/ }).waitFor(T);
  await page.locator('#health', { hasText: '/healthz 200' }).waitFor(T);
  const openRow = page.locator('#metrics tr')
    .filter({ has: page.locator('td', { hasText: /^relay_connections$/ }) });
  await openRow.filter({ has: page.locator('td', { hasText: /^3$/ }) }).waitFor(T); // refreshed every 2 s
  const open = await openRow.innerText();
  say('ok node view: ' + open.replace(/\s+/g, ' '));
  await shot('console.png');
  await card(1).screenshot({ path: path.join(OUT, 'console-connection.png') }); // docs/console.png

  // the node restarts: every card goes to waiting, then is welcomed again on a new socket
  say('step restart');
  await nextLine();
  for (const n of [1, 2, 3]) {
    await card(n).locator('pre.sys', { hasText: /closed 1001 going away; reconnecting in \d+ ms/ }).waitFor(T);
    await card(n).locator('.badge.ready').waitFor({ timeout: 20000 });
    await card(n).locator('.muted', { hasText: 'welcome #2' }).waitFor(T);
  }
  await card(1).locator('textarea').fill('{"type":"echo_again","data":{"after":"restart"}}');
  await card(1).locator('button.send').click();
  await card(1).locator('pre.sys', { hasText: 'request echo_again answered' }).waitFor(T);
  say('ok all connections reconnected after the restart');
  await shot('console-reconnected.png');

  // the cluster view: n1's console reads the cluster through n1's API (its origin is allowed)
  say('step cluster');
  const cl = JSON.parse(await nextLine());
  const quiet = /WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource|CORS policy/;
  const openPage = async (base) => {
    const p = await browser.newPage({ viewport: { width: 1300, height: 1000 } });
    p.on('pageerror', (e) => problems.push('page error: ' + e.message));
    p.on('console', (m) => { if (m.type() === 'error' && !quiet.test(m.text())) problems.push('console: ' + m.text()); });
    await p.goto(base + '/');
    await p.locator('[data-conn="1"] .badge.ready').waitFor(T); // alice
    return p;
  };
  const p1 = await openPage(cl.n1.base);            // alice's hub: n1
  await p1.fill('#uid', 'bob');
  await p1.click('#add');
  await p1.locator('[data-conn="2"] .badge.ready').waitFor(T);
  const p2 = await openPage(cl.n2.base);            // alice again, on n2
  await p2.fill('#uid', 'carol');
  await p2.click('#add');
  await p2.locator('[data-conn="2"] .badge.ready').waitFor(T);
  // a wrong key is refused, and the page says so
  await p1.fill('#api-url', cl.n1.api);
  await p1.fill('#api-key', 'not-the-key-at-all-000');
  await p1.click('#cl-load');
  await p1.locator('#cl-status.err', { hasText: '401 unauthorized' }).waitFor(T);
  await p1.fill('#api-key', cl.key);
  await p1.click('#cl-load');
  const nodeRow = (id) => p1.locator(`#cl-view table.cl-nodes tr[data-node="${id}"]`);
  const userRow = (id) => p1.locator(`#cl-view table.cl-users tr[data-user="${id}"]`);
  await nodeRow('n2').waitFor(T);
  const cells = async (loc) => (await loc.locator('td').allInnerTexts()).map((t) => t.trim());
  const n1 = await cells(nodeRow('n1')), n2 = await cells(nodeRow('n2'));
  assert.deepEqual([n1[0], n1[1], n1[4], n1[5]], ['n1 (answering)', 'alive', '2', '2'], 'n1 row: ' + n1);
  assert.deepEqual([n2[0], n2[1], n2[4], n2[5]], ['n2', 'alive', '2', '1'], 'n2 row: ' + n2);
  const alice = await cells(userRow('alice')), carol = await cells(userRow('carol'));
  assert.equal(alice[1], 'n1', 'alice hub node: ' + alice);
  assert.match(alice[2], /^n1\./, 'alice hub pid: ' + alice);
  assert.equal(alice[3], 'n1: 1, n2: 1', 'alice connections: ' + alice);
  assert.match(alice[4], /session_ running/, 'alice plugins: ' + alice);
  assert.equal(carol[1], 'n2', 'carol hub node: ' + carol);
  assert.equal(carol[3], 'n2: 1', 'carol connections: ' + carol);
  assert.equal(await userRow('bob').count(), 1);
  assert.equal(await p1.locator('#cl-view table.cl-users tbody tr').count(), 3);
  const running = p1.locator('#cl-view table.cl-users span.st-running').first();
  assert.equal(await running.evaluate((e) => getComputedStyle(e).color), 'rgb(0, 102, 51)');
  say('ok cluster view: nodes ' + [n1, n2].map((r) => r.join(' ')).join(' | '));
  say('ok cluster view: users ' + [alice, carol].map((r) => r.join(' ')).join(' | '));
  await p1.screenshot({ path: path.join(OUT, 'console-cluster.png'), fullPage: true });
  await p1.locator('#cluster').screenshot({ path: path.join(OUT, 'console-cluster-view.png') });
  say('screenshot ' + path.join(OUT, 'console-cluster.png'));
  // n2's page is not in n1's api.cors_origins: the browser keeps n1's answers from it
  await p2.fill('#api-url', cl.n1.api);
  await p2.fill('#api-key', cl.key);
  await p2.click('#cl-load');
  await p2.locator('#cl-status.err', { hasText: 'api.cors_origins' }).waitFor(T);
  assert.equal(await p2.locator('#cl-view table').count(), 0);
  say('ok another origin is refused by CORS');

  assert.deepEqual(problems, []);
  say('PASS console');
} finally {
  stdin.close();
  await browser.close();
}
