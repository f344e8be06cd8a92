'use strict';
// The bench's Node.js peer (bench/run.sh, peer "node"): a relay speaking Relay's client protocol
// (DESIGN.md section 3) in one Node.js process with the `ws` package, written plainly the way a
// Node developer would: per-user hub objects with longest-prefix routing to in-process handlers
// that answer like plugins/lua/echo.lua and session.lua.
//
//   - upgrade on /ws?user_id=U (insecure auth); no user_id -> missing_user_id error, close 1008;
//     more than MAX_CONNECTIONS_PER_USER -> max_connections_reached, close 1008;
//   - on join the user's hub (created on first use, kept for HUB_INACTIVITY_MS after the last
//     connection leaves, like Relay's user_hub_inactivity_timeout) sends
//     {"topic":"welcome","data":{"user_id":U,"client_count":N,"plugins":{...}}};
//   - per text frame: JSON.parse -> invalid_json; not an object -> unknown_command; nesting over
//     100 levels -> invalid_json; no non-empty string "type" -> unknown_command; no prefix ->
//     plugin_not_found "No plugin found for command: T"; else the plugin's handler gets the
//     topic (type minus prefix) and the client's object plus conn (Relay's conn_pid);
//   - the echo handler replies JSON.stringify({type:"echo_pong",data,request_id}), the key order
//     Relay's json.encode gives ("type" first, then sorted; nested keys keep the client's order);
//   - frames over 64 KiB close with 1009 (ws maxPayload); a client with more than 1 MiB unsent
//     gets slow_consumer and is closed.
// What a Node relay would add on top (separate plugin processes, queues between them, metrics) is
// left out, so this is a lower bound for the cost of a Node.js relay.
//
// Usage: node server.js PORT [HOST]   (HOST defaults to 127.0.0.1). Prints "listening HOST:PORT".
// GET /healthz answers 200.

const http = require('http');
const { WebSocketServer } = require('ws');

const MAX_CONNECTIONS_PER_USER = 1000;
const HUB_INACTIVITY_MS = 7200 * 1000;
const MAX_MESSAGE_BYTES = 65536;
const MAX_OUTBOUND_BYTES = 1 << 20;
const MAX_JSON_DEPTH = 100;

const port = Number(process.argv[2] || process.env.PORT);
const host = process.argv[3] || '127.0.0.1';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js PORT [HOST]');
  process.exit(2);
}

// ---- errors, as Relay words them: {"topic":"error","data":{"error":..,"message":..,"request_id":..}}

const MESSAGES = {
  missing_user_id: 'User ID is required for connection',
  max_connections_reached: 'Maximum connection limit reached',
  invalid_json: 'Failed to decode JSON message',
  unknown_command: 'Message type is required',
  slow_consumer: 'Outbound queue full: client does not read',
};

function errorFrame(code, message, msg) {
  const data = { error: code, message: message || MESSAGES[code] };
  if (msg && typeof msg === 'object' && msg.request_id !== undefined) data.request_id = msg.request_id;
  return JSON.stringify({ topic: 'error', data });
}

function send(ws, frame) {
  if (ws.readyState !== ws.OPEN) return;
  if (ws.bufferedAmount + frame.length > MAX_OUTBOUND_BYTES) {
    ws.close(1008, 'slow_consumer');
    return;
  }
  ws.send(frame);
}

// ---- plugins: in-process handlers, one state object per user -------------------------------

const echoPlugin = {
  prefix: 'echo_',
  id: 'app:echo_plugin',
  start: () => null,
  handle(state, topic, payload) {
    if (payload.conn) {
      send(payload.conn, JSON.stringify({
        type: 'echo_pong',
        data: payload.data,
        request_id: payload.request_id,
      }));
    }
  },
};

const sessionPlugin = {
  prefix: 'session_',
  id: 'app:session_plugin',
  start: () => ({ status: 'active' }),
  handle(state, topic, payload) {
    if (topic === 'get_state' && payload.conn) {
      send(payload.conn, JSON.stringify({ type: 'session_state', data: { status: state.status } }));
    }
  },
};

// Longest prefix first, so the first match is the longest.
const PLUGINS = [sessionPlugin, echoPlugin].sort((a, b) => b.prefix.length - a.prefix.length);

// ---- user hubs -------------------------------------------------------------------------------

class Hub {
  constructor(userId) {
    this.userId = userId;
    this.conns = new Set();
    this.plugins = PLUGINS.map((def) => ({ def, status: 'running', state: def.start() }));
    this.gcTimer = null;
  }

  join(ws) {
    if (this.gcTimer) {
      clearTimeout(this.gcTimer);
      this.gcTimer = null;
    }
    this.conns.add(ws);
    const plugins = {};
    for (const p of this.plugins) plugins[p.def.prefix] = { status: p.status, process_id: p.def.id };
    send(ws, JSON.stringify({
      topic: 'welcome',
      data: { user_id: this.userId, client_count: this.conns.size, plugins },
    }));
  }

  leave(ws) {
    this.conns.delete(ws);
    if (this.conns.size === 0) {
      this.gcTimer = setTimeout(() => hubs.delete(this.userId), HUB_INACTIVITY_MS);
      this.gcTimer.unref();
    }
  }

  route(ws, raw) {
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch (e) {
      send(ws, errorFrame('invalid_json'));
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
      send(ws, errorFrame('unknown_command', 'Message must be a JSON object'));
      return;
    }
    if (!depthOk(msg, MAX_JSON_DEPTH)) {
      send(ws, errorFrame('invalid_json', 'JSON nests deeper than 100 levels', msg));
      return;
    }
    const type = msg.type;
    if (typeof type !== 'string' || type === '') {
      send(ws, errorFrame('unknown_command', null, msg));
      return;
    }
    for (const p of this.plugins) {
      if (type.startsWith(p.def.prefix)) {
        msg.conn = ws;
        p.def.handle(p.state, type.slice(p.def.prefix.length), msg);
        return;
      }
    }
    send(ws, errorFrame('plugin_not_found', 'No plugin found for command: ' + type.slice(0, 200), msg));
  }
}

function depthOk(v, left) {
  if (v === null || typeof v !== 'object') return true;
  if (left === 0) return false;
  for (const k in v) if (!depthOk(v[k], left - 1)) return false;
  return true;
}

const hubs = new Map();

// ---- the server --------------------------------------------------------------------------------

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  res.writeHead(404);
  res.end();
});

const wss = new WebSocketServer({
  server,
  path: '/ws',               // ws compares the path without the query string
  perMessageDeflate: false,  // Relay does not compress either
  clientTracking: false,
  maxPayload: MAX_MESSAGE_BYTES,
});

wss.on('connection', (ws, req) => {
  ws.on('error', () => {}); // a client reset must not take the server down
  const q = req.url.indexOf('?');
  const userId = q < 0 ? null : new URLSearchParams(req.url.slice(q + 1)).get('user_id');
  if (!userId) {
    send(ws, errorFrame('missing_user_id'));
    ws.close(1008, 'missing_user_id');
    return;
  }
  let hub = hubs.get(userId);
  if (!hub) {
    hub = new Hub(userId);
    hubs.set(userId, hub);
  }
  if (hub.conns.size >= MAX_CONNECTIONS_PER_USER) {
    send(ws, errorFrame('max_connections_reached'));
    ws.close(1008, 'max_connections_reached');
    return;
  }
  hub.join(ws);
  ws.on('message', (raw) => hub.route(ws, raw.toString('utf8')));
  ws.on('close', () => hub.leave(ws));
});

server.listen(port, host, () => console.log(`listening ${host}:${port}`));
server.on('error', (e) => {
  console.error(`server error: ${e.message}`);
  process.exit(1);
});

// No graceful drain: the bench stops the server once its clients are gone.
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
