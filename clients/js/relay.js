// relay.js: a small client for Relay's WebSocket protocol (docs/protocol.md, README.md here).
//
// One ES module, no build step. Browsers use their WebSocket; Node >= 18 uses the global one when
// there is one (Node 22, or 20 with --experimental-websocket), else the `ws` package, or whatever
// constructor is passed as options.WebSocket.
//
//   import { RelayClient } from './relay.js';
//   const c = new RelayClient('ws://127.0.0.1:8080/ws', { userId: 'alice' });   // or { token }
//   const welcome = await c.connect();
//   const reply = await c.request('echo_ping', { n: 1 }, { timeout: 5000 });
//   c.on('custom_topic', (data, frame) => { ... });
//   c.close();

/** Close codes after which the client does not reconnect: the node would refuse again (policy:
 *  missing_user_id, max_connections_reached, slow_consumer). */
export const NO_RETRY_CLOSE_CODES = new Set([1008]);
/** Close codes meaning "try again later" (unavailable): the next attempt waits retryLaterDelay. */
export const RETRY_LATER_CLOSE_CODES = new Set([1013]);

/** Close code the client uses when a node accepts the socket but sends no welcome in time. */
export const WELCOME_TIMEOUT_CLOSE = 4000;

/** An error frame, a timeout or a lost connection; `code` is the protocol's error code
 *  (`plugin_not_found`, ...) or one of the client's own: `timeout`, `disconnected`, `closed`. */
export class RelayError extends Error {
  constructor(code, message, frame = null) {
    super(message || code);
    this.name = 'RelayError';
    this.code = code;
    this.frame = frame;
  }
}

const DEFAULTS = {
  token: null,             // JWT (jwt mode), a string or a function returning one (or a promise)
  userId: null,            // user id (insecure mode only)
  WebSocket: null,         // a WebSocket constructor; default: global, else the `ws` package
  reconnect: true,         // reconnect after a close the client did not ask for
  minDelay: 250,           // ms, first backoff step
  maxDelay: 15000,         // ms, backoff cap
  retryLaterDelay: 10000,  // ms, at least this long after a 1013 close
  maxAttempts: Infinity,   // connection attempts in a row without a welcome before giving up
  welcomeTimeout: 10000,   // ms from opening the socket to the welcome frame
  requestTimeout: 10000,   // ms, default for request()
  random: Math.random,     // jitter source (tests pass a fixed one)
};

let instances = 0;

/**
 * One logical connection to a Relay node, kept up across drops.
 *
 * States: idle -> connecting -> open (socket up, no welcome yet) -> ready (welcomed); after a drop
 * `waiting` (a reconnect is scheduled) and again `connecting`; terminal: `closed` (close() was
 * called) or `failed` (a no-retry close code, or maxAttempts reached).
 *
 * Frames: every frame goes to the `'*'` listeners, as parsed JSON (or the raw string when it is
 * not JSON). A frame that answers a pending request() settles its promise and goes to no topic
 * listener; any other frame goes to the listeners of its `topic` (hub and system frames:
 * `{"topic","data"}`) or, for frames a plugin wrote itself, its `type`.
 */
export class RelayClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.state = 'idle';
    this.welcome = null;          // the data of the latest welcome frame
    this.welcomes = 0;            // welcome frames seen (a re-welcome after failover counts too)
    this.lastError = null;        // the latest error frame's data that answered no request
    this.lastClose = null;        // {code, reason} of the latest socket close
    this._closeError = null;      // the error frame that came on the current socket, if any
    this.attempt = 0;             // failed attempts since the last welcome
    this._ws = null;
    this._timer = null;           // reconnect or welcome timeout
    this._listeners = new Map();  // topic -> Set(fn)
    this._stateListeners = new Set();
    this._waiters = [];           // ready() promises: {resolve, reject}
    this._pending = new Map();    // request_id -> {resolve, reject, timer}
    this._seq = 0;
    this._idPrefix = `r${(++instances).toString(36)}${Math.floor(this.options.random() * 1e9).toString(36)}`;
  }

  /** Starts connecting (once); resolves with the first welcome's data, rejects if it fails. */
  connect() {
    if (this.state === 'idle') this._open();
    return this.ready();
  }

  /** Resolves with the welcome data when the client is (or becomes) ready; rejects when it ends
   *  in `closed`/`failed`, or after `timeout` ms when one is given. */
  ready(timeout) {
    if (this.state === 'ready') return Promise.resolve(this.welcome);
    if (this.state === 'closed' || this.state === 'failed') return Promise.reject(this._endError());
    const p = new Promise((resolve, reject) => {
      const w = { resolve, reject, timer: null };
      if (timeout !== undefined) {
        w.timer = setTimeout(() => {
          this._waiters = this._waiters.filter((x) => x !== w);
          reject(new RelayError('timeout', `not ready within ${timeout} ms`));
        }, timeout);
      }
      this._waiters.push(w);
    });
    p.catch(() => {}); // a caller that ignores connect()'s promise gets no unhandled rejection
    return p;
  }

  /** Listens to frames of one topic (or '*' for all); returns a function that stops it. */
  on(topic, fn) {
    if (!this._listeners.has(topic)) this._listeners.set(topic, new Set());
    this._listeners.get(topic).add(fn);
    return () => this.off(topic, fn);
  }

  off(topic, fn) {
    this._listeners.get(topic)?.delete(fn);
  }

  /** Listens to state changes: fn({state, code, reason, delay, attempt, rewelcome}). */
  onState(fn) {
    this._stateListeners.add(fn);
    return () => this._stateListeners.delete(fn);
  }

  /**
   * Sends {type, data, request_id, ...fields} and resolves with the frame that carries the same
   * request_id (at its top level, or in its data). Rejects with a RelayError: the error frame's
   * code for an error frame with that request_id, `timeout` after `timeout` ms (waiting for the
   * connection counts), `disconnected` when the socket closes first (the message may or may not
   * have been handled), `closed`/`failed` when the client has ended.
   */
  async request(type, data, { timeout = this.options.requestTimeout, fields = {} } = {}) {
    const deadline = Date.now() + timeout;
    if (this.state !== 'ready') {
      if (this.state === 'idle') this._open();
      await this.ready(timeout);
    }
    const id = `${this._idPrefix}-${++this._seq}`;
    const msg = { ...fields, type, request_id: id };
    if (data !== undefined) msg.data = data;
    return new Promise((resolve, reject) => {
      const left = Math.max(0, deadline - Date.now());
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new RelayError('timeout', `no answer to ${type} (${id}) within ${timeout} ms`));
      }, left);
      this._pending.set(id, { resolve, reject, timer });
      try {
        this._ws.send(JSON.stringify(msg));
      } catch (e) {
        this._settle(id, null, new RelayError('disconnected', `cannot send: ${e.message}`));
      }
    });
  }

  /** Sends {type, data, ...fields} without waiting for anything. Returns false when not ready. */
  send(type, data, fields = {}) {
    const msg = { ...fields, type };
    if (data !== undefined) msg.data = data;
    return this.sendRaw(JSON.stringify(msg));
  }

  /** Sends one text frame as is (a string) or JSON-encoded. Returns false when not ready. */
  sendRaw(frame) {
    if (this.state !== 'ready' && this.state !== 'open') return false;
    this._ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
    return true;
  }

  /** Closes for good: no reconnect; pending requests reject with `closed`. */
  close(code = 1000, reason = '') {
    if (this.state === 'closed') return;
    clearTimeout(this._timer);
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try { ws.close(code, reason); } catch { /* already closing */ }
    }
    this._failPending(new RelayError('closed', 'client closed'));
    this._setState('closed', { code, reason });
  }

  // -- internals ------------------------------------------------------------------------------

  async _open() {
    this._setState('connecting', { attempt: this.attempt });
    this._closeError = null;
    let url, Ctor;
    try {
      Ctor = this.options.WebSocket || globalThis.WebSocket || (await import('ws')).default;
      url = await this._url();
    } catch (e) {
      this._fail(new RelayError('failed', `cannot connect: ${e.message}`));
      return;
    }
    if (this.state !== 'connecting') return; // closed meanwhile
    let ws;
    try {
      ws = new Ctor(url);
    } catch (e) {
      this._fail(new RelayError('failed', `cannot connect to ${url}: ${e.message}`));
      return;
    }
    this._ws = ws;
    this._timer = setTimeout(() => {
      // accepted but never welcomed (a stuck node): drop it and try again
      if (this._ws === ws) ws.close(WELCOME_TIMEOUT_CLOSE, 'no welcome');
    }, this.options.welcomeTimeout);
    ws.onopen = () => this._setState('open');
    ws.onmessage = (e) => this._onFrame(typeof e.data === 'string' ? e.data : String(e.data));
    ws.onerror = () => {}; // a close event follows
    ws.onclose = (e) => this._onClose(ws, e.code, e.reason || '');
  }

  async _url() {
    let base = this.url;
    if (base.startsWith('/') && globalThis.location) {
      base = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + base;
    }
    const u = new URL(base);
    const token = typeof this.options.token === 'function' ? await this.options.token() : this.options.token;
    if (token) u.searchParams.set('x-auth-token', token);
    if (this.options.userId != null) u.searchParams.set('user_id', this.options.userId);
    return u.toString();
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }

  _onFrame(text) {
    let frame = text;
    try { frame = JSON.parse(text); } catch { /* not JSON: passed on as the string */ }
    this._emit('*', frame, frame);
    if (frame === null || typeof frame !== 'object') return;
    const topic = typeof frame.topic === 'string' ? frame.topic : frame.type;
    if (topic === 'welcome' && frame.data && typeof frame.data === 'object') {
      const rewelcome = this.state === 'ready';
      clearTimeout(this._timer);
      this.welcome = frame.data;
      this.welcomes++;
      this.attempt = 0;
      this._setState('ready', { rewelcome });
      for (const w of this._waiters.splice(0)) { clearTimeout(w.timer); w.resolve(frame.data); }
      this._emit('welcome', frame.data, frame);
      return;
    }
    const rid = frame.request_id ?? (frame.data && typeof frame.data === 'object' ? frame.data.request_id : undefined);
    if (rid !== undefined && this._pending.has(rid)) {
      if (topic === 'error') {
        const d = frame.data || {};
        this._settle(rid, null, new RelayError(d.error || 'error', d.message, frame));
      } else {
        this._settle(rid, frame, null);
      }
      return;
    }
    if (topic === 'error') this.lastError = this._closeError = frame.data;
    if (topic !== undefined) this._emit(topic, frame.data, frame);
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._detach(ws);
    this._ws = null;
    clearTimeout(this._timer);
    this.lastClose = { code, reason };
    this._failPending(new RelayError('disconnected', `connection closed (${code}${reason ? ' ' + reason : ''})`));
    const o = this.options;
    if (!o.reconnect || NO_RETRY_CLOSE_CODES.has(code)) {
      // the error frame sent before the close names the cause (missing_user_id, ...)
      const e = this._closeError;
      const err = new RelayError(e?.error || 'failed', `closed with ${code}${reason ? ' ' + reason : ''}` +
        (e?.message ? `: ${e.message}` : ''));
      this._fail(err, { code, reason });
      return;
    }
    this.attempt++;
    if (this.attempt > o.maxAttempts) {
      this._fail(new RelayError('failed', `no welcome after ${o.maxAttempts} attempts`), { code, reason });
      return;
    }
    const delay = this._delay(code);
    this._setState('waiting', { code, reason, delay, attempt: this.attempt });
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** Exponential backoff with equal jitter: [base/2, base), base = minDelay * 2^(attempt-1)
   *  capped at maxDelay; after a retry-later close, base is at least retryLaterDelay. */
  _delay(code) {
    const o = this.options;
    let base = Math.min(o.maxDelay, o.minDelay * 2 ** Math.max(0, this.attempt - 1));
    if (RETRY_LATER_CLOSE_CODES.has(code)) base = Math.max(base, o.retryLaterDelay);
    return Math.round(base / 2 + (o.random() * base) / 2);
  }

  _fail(err, info = {}) {
    clearTimeout(this._timer);
    this._failPending(err);
    this._endErr = err;
    this._setState('failed', { ...info, error: err });
  }

  _endError() {
    return this.state === 'failed' ? this._endErr : new RelayError('closed', 'client closed');
  }

  _settle(id, frame, err) {
    const p = this._pending.get(id);
    if (!p) return;
    this._pending.delete(id);
    clearTimeout(p.timer);
    if (err) p.reject(err); else p.resolve(frame);
  }

  _failPending(err) {
    for (const id of [...this._pending.keys()]) this._settle(id, null, err);
  }

  _setState(state, info = {}) {
    this.state = state;
    if (state === 'closed' || state === 'failed') {
      const err = this._endError();
      for (const w of this._waiters.splice(0)) { clearTimeout(w.timer); w.reject(err); }
    }
    for (const fn of this._stateListeners) this._call(fn, { state, ...info });
  }

  _emit(topic, data, frame) {
    for (const fn of this._listeners.get(topic) || []) this._call(fn, data, frame);
  }

  _call(fn, ...args) {
    try { fn(...args); } catch (e) { console.error('relay client listener:', e); }
  }
}
