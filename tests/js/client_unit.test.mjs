// Unit tests of clients/js/relay.js against a scripted fake WebSocket: the close-code policy
// (1008 final, 1013 later, 1000/1001/1006 back off and retry), the backoff bounds, request matching
// and timeouts. Run: node --test tests/js/client_unit.test.mjs (no packages needed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RelayClient, RelayError } from '../../clients/js/relay.js';

/** A fake socket: records sends; the test plays the server with deliver() and drop(). */
class FakeSocket {
  static made = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeSocket.made.push(this);
    queueMicrotask(() => this.onopen?.({}));
  }
  send(s) { this.sent.push(JSON.parse(s)); }
  close(code = 1000, reason = '') { this.closed = { code, reason }; queueMicrotask(() => this.onclose?.({ code, reason })); }
  deliver(obj) { this.onmessage?.({ data: typeof obj === 'string' ? obj : JSON.stringify(obj) }); }
  drop(code, reason = '') { this.onclose?.({ code, reason }); }
}

const WELCOME = { topic: 'welcome', data: { user_id: 'alice', client_count: 1, plugins: {} } };
const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

function client(opts = {}) {
  FakeSocket.made = [];
  return new RelayClient('ws://relay.test/ws', {
    WebSocket: FakeSocket, userId: 'alice', minDelay: 20, maxDelay: 80, retryLaterDelay: 200,
    random: () => 0.5, ...opts,
  });
}

function states(c) {
  const seen = [];
  c.onState((s) => seen.push(s));
  return seen;
}

test('connect sends user_id and token in the query, resolves on welcome', async () => {
  const c = client({ token: () => 'T.K.N' });
  const p = c.connect();
  await tick();
  const ws = FakeSocket.made[0];
  assert.match(ws.url, /user_id=alice/);
  assert.match(ws.url, /x-auth-token=T.K.N/);
  ws.deliver(WELCOME);
  assert.deepEqual(await p, WELCOME.data);
  assert.equal(c.state, 'ready');
  c.close();
});

test('request is matched by request_id, top level or in an error frame', async () => {
  const c = client();
  const p = c.connect();
  await tick();
  const ws = FakeSocket.made[0];
  ws.deliver(WELCOME);
  await p;
  const r1 = c.request('echo_a', { n: 1 });
  const r2 = c.request('nope_b', {});
  const [m1, m2] = ws.sent;
  assert.equal(m1.type, 'echo_a');
  assert.notEqual(m1.request_id, m2.request_id);
  const seenTopics = [];
  c.on('echo_pong', (d) => seenTopics.push(d));
  ws.deliver({ topic: 'error', data: { error: 'plugin_not_found', message: 'no', request_id: m2.request_id } });
  ws.deliver({ type: 'echo_pong', request_id: m1.request_id, data: { n: 1 } });
  assert.deepEqual((await r1).data, { n: 1 });
  await assert.rejects(r2, (e) => e instanceof RelayError && e.code === 'plugin_not_found');
  assert.deepEqual(seenTopics, [], 'a frame that answers a request goes to no topic listener');
  c.close();
});

test('request times out; a late answer then goes to the topic listeners', async () => {
  const c = client();
  c.connect();
  await tick();
  const ws = FakeSocket.made[0];
  ws.deliver(WELCOME);
  const late = [];
  c.on('late', (d) => late.push(d));
  const t0 = Date.now();
  await assert.rejects(c.request('silent_x', null, { timeout: 50 }), (e) => e.code === 'timeout');
  assert.ok(Date.now() - t0 >= 45);
  ws.deliver({ topic: 'late', data: { request_id: ws.sent[0].request_id } });
  assert.equal(late.length, 1);
  c.close();
});

test('1008 is final: no reconnect, connect() rejects with the error frame code', async () => {
  const c = client();
  const seen = states(c);
  const p = c.connect();
  await tick();
  FakeSocket.made[0].deliver({ topic: 'error', data: { error: 'missing_user_id', message: 'User ID is required' } });
  FakeSocket.made[0].drop(1008, 'missing_user_id');
  await assert.rejects(p, (e) => e.code === 'missing_user_id');
  await tick(150);
  assert.equal(FakeSocket.made.length, 1);
  assert.equal(c.state, 'failed');
  assert.deepEqual(seen.map((s) => s.state), ['connecting', 'open', 'failed']);
  await assert.rejects(c.request('echo_x'), (e) => e.code === 'missing_user_id');
});

test('1001, 1006 and 1000 reconnect with growing, capped delays; a welcome resets them', async () => {
  const c = client();
  const seen = states(c);
  c.connect();
  await tick();
  FakeSocket.made[0].deliver(WELCOME);
  for (const code of [1001, 1006, 1006, 1006, 1000]) {
    FakeSocket.made.at(-1).drop(code);
    await tick(100);
  }
  const delays = seen.filter((s) => s.state === 'waiting').map((s) => s.delay);
  // random() = 0.5: delay = 3/4 of base; base = 20, 40, 80, 80 (cap), 80
  assert.deepEqual(delays, [15, 30, 60, 60, 60]);
  assert.equal(FakeSocket.made.length, 6);
  FakeSocket.made.at(-1).deliver(WELCOME);
  FakeSocket.made.at(-1).drop(1001);
  assert.equal(seen.at(-1).delay, 15, 'the welcome reset the backoff');
  c.close();
  await tick(50);
  assert.equal(FakeSocket.made.length, 6, 'close() cancels the scheduled reconnect');
});

test('1013 waits at least retryLaterDelay', async () => {
  const c = client();
  const seen = states(c);
  c.connect();
  await tick();
  FakeSocket.made[0].drop(1013, 'unavailable');
  const w = seen.find((s) => s.state === 'waiting');
  assert.equal(w.code, 1013);
  assert.ok(w.delay >= 100 && w.delay <= 200, `delay ${w.delay}`);
  await tick(80);
  assert.equal(FakeSocket.made.length, 1, 'not retried before the longer delay');
  await tick(150);
  assert.equal(FakeSocket.made.length, 2);
  c.close();
});

test('jitter spreads delays over [base/2, base)', () => {
  const lo = client({ random: () => 0 }), hi = client({ random: () => 0.999 });
  lo.attempt = hi.attempt = 3; // base 80
  assert.equal(lo._delay(1006), 40);
  assert.equal(hi._delay(1006), 80);
});

test('a re-welcome on the same socket is reported, pending requests survive it', async () => {
  const c = client();
  const seen = states(c);
  c.connect();
  await tick();
  const ws = FakeSocket.made[0];
  ws.deliver(WELCOME);
  const r = c.request('echo_x', 1);
  ws.deliver({ topic: 'welcome', data: { ...WELCOME.data, client_count: 2 } });
  assert.equal(c.welcomes, 2);
  assert.equal(c.welcome.client_count, 2);
  assert.equal(seen.at(-1).rewelcome, true);
  ws.deliver({ type: 'echo_pong', request_id: ws.sent[0].request_id });
  await r;
  c.close();
});

test('a drop rejects pending requests with disconnected', async () => {
  const c = client();
  c.connect();
  await tick();
  FakeSocket.made[0].deliver(WELCOME);
  const r = c.request('slow_x', null, { timeout: 5000 });
  FakeSocket.made[0].drop(1006);
  await assert.rejects(r, (e) => e.code === 'disconnected');
  c.close();
});

test('no welcome in time: the socket is closed and retried', async () => {
  const c = client({ welcomeTimeout: 30 });
  c.connect();
  await tick(60);
  assert.equal(FakeSocket.made[0].closed.code, 4000);
  await tick(60);
  assert.ok(FakeSocket.made.length >= 2);
  c.close();
});
