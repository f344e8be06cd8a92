// Drives clients/js/relay.js against real nodes, one scenario per run; started and watched by
// tests/integration/test_js_client.py, which owns the nodes (and restarts or stops them when this
// script prints a "step" line).
//
//   node tests/js/client_scenarios.mjs SCENARIO        env: RELAY_URL, RELAY_WS (ws package dir or "global")
//
// Prints "step NAME" lines for the driver, "ok WHAT" lines, and exits 0 when the scenario passed
// (a failure throws: exit 1 with the stack).
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { RelayClient } from '../../clients/js/relay.js';

const URL_ = process.env.RELAY_URL;
const WS = process.env.RELAY_WS === 'global' ? globalThis.WebSocket
  : createRequire(process.env.RELAY_WS + '/')('ws');
assert.ok(URL_, 'RELAY_URL is not set');
assert.ok(WS, `no WebSocket (RELAY_WS=${process.env.RELAY_WS})`);

const say = (s) => console.log(s);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function client(opts = {}) {
  const c = new RelayClient(URL_, { WebSocket: WS, userId: 'alice', minDelay: 100, maxDelay: 1000, ...opts });
  c.states = [];
  c.onState((s) => c.states.push(s));
  return c;
}

async function until(pred, ms, what) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(20);
  }
}

const connects = (c) => c.states.filter((s) => s.state === 'connecting').length;

const scenarios = {
  // request/response by request_id, error rejection, timeout, topic events, a burst in parallel
  async basic() {
    const c = client();
    const w = await c.connect();
    assert.equal(w.user_id, 'alice');
    assert.equal(w.plugins.echo_.status === 'running' || w.plugins.echo_.status === 'pending', true);
    say('ok welcome ' + JSON.stringify(w));

    const r = await c.request('echo_ping', { n: 1 });
    assert.equal(r.type, 'echo_pong');
    assert.deepEqual(r.data, { n: 1 });
    say('ok request -> ' + JSON.stringify(r));

    const e = await c.request('nope_x', {}).then(() => null, (x) => x);
    assert.ok(e, 'a request to no plugin resolved');
    assert.equal(e.code, 'plugin_not_found');
    assert.equal(e.frame.topic, 'error');
    say('ok error rejects: ' + e.code);

    const t0 = Date.now();
    const t = await c.request('silent_x', {}, { timeout: 300 }).then(() => null, (x) => x);
    assert.equal(t?.code, 'timeout');
    assert.ok(Date.now() - t0 >= 290 && Date.now() - t0 < 2000, `timeout after ${Date.now() - t0} ms`);
    say('ok timeout after ' + (Date.now() - t0) + ' ms');

    const news = [];
    c.on('news', (d) => news.push(d));
    c.send('push_go', { n: 7 });
    await until(() => news.length === 1, 3000, 'news event');
    assert.deepEqual(news[0], { n: 7 });
    say('ok topic event news ' + JSON.stringify(news[0]));

    const errors = [];
    c.on('error', (d) => errors.push(d));
    c.sendRaw('{not json');
    await until(() => errors.length === 1, 3000, 'invalid_json error event');
    assert.equal(errors[0].error, 'invalid_json');
    say('ok error event ' + errors[0].error);

    const many = await Promise.all(Array.from({ length: 50 }, (_, i) => c.request('echo_n', { i })));
    assert.deepEqual(many.map((m) => m.data.i), Array.from({ length: 50 }, (_, i) => i));
    say('ok 50 parallel requests matched');
    c.close();
    assert.equal(c.state, 'closed');
  },

  // the node is stopped (1001) and started again on the same port: the client backs off,
  // reconnects, gets a new welcome; a request pending at the drop rejects with `disconnected`
  async restart() {
    const c = client();
    await c.connect();
    const pending = c.request('silent_wait', {}, { timeout: 20000 }).then(() => null, (x) => x);
    say('step welcomed');
    const e = await pending;
    assert.equal(e?.code, 'disconnected');
    assert.equal(c.lastClose.code, 1001);
    say('ok pending request rejected: ' + e.message);
    await c.ready(15000);
    assert.equal(c.welcomes, 2);
    const waits = c.states.filter((s) => s.state === 'waiting');
    assert.ok(waits.length >= 1 && waits[0].code === 1001, JSON.stringify(waits));
    say(`ok re-welcomed after ${connects(c) - 1} reconnect attempt(s), delays ${waits.map((s) => s.delay)}`);
    const r = await c.request('echo_after', { again: true });
    assert.deepEqual(r.data, { again: true });
    say('ok request after reconnect');
    c.close();
  },

  // no user_id: missing_user_id then close 1008; the client must not retry
  async policy() {
    const c = client({ userId: null });
    const e = await c.connect().then(() => null, (x) => x);
    assert.equal(e?.code, 'missing_user_id');
    assert.equal(c.state, 'failed');
    assert.equal(c.lastClose.code, 1008);
    await sleep(800); // several backoff steps (100 ms first)
    assert.equal(connects(c), 1, `connection attempts: ${connects(c)}`);
    say('ok 1008 not retried: ' + e.message);
  },

  // cluster: this client's hub is on another node, which leaves (SIGTERM): a new welcome comes on
  // the same socket, without a reconnect, and requests work after it
  async failover() {
    const c = client();
    const w = await c.connect();
    assert.equal(w.client_count, 2, 'the test joined alice on the other node first');
    say('step welcomed');
    await until(() => c.welcomes === 2, 10000, 're-welcome');
    assert.equal(connects(c), 1, 'the client reconnected instead of staying on its socket');
    assert.equal(c.states.at(-1).rewelcome, true);
    say('ok re-welcomed on the same socket: ' + JSON.stringify(c.welcome));
    const r = await c.request('echo_after', { moved: true });
    assert.deepEqual(r.data, { moved: true });
    say('ok request after failover');
    c.close();
  },
};

const name = process.argv[2];
assert.ok(scenarios[name], `unknown scenario ${name}`);
await scenarios[name]();
say('PASS ' + name);
process.exit(0);
