'use strict';
// Optional bench peer "node-echo" (bench/run.sh, BENCH_PEERS): a plain Node.js `ws` echo server
// doing, in one process, what Relay's echo path does in spirit (see plugins/lua/echo.lua):
//   - on upgrade to /ws?user_id=U: send {"topic":"welcome","data":{"user_id":U,...}} (relay-bench
//     waits for a first frame); no user_id -> {"topic":"error",...} and close, like insecure auth;
//   - per text frame: JSON.parse, require an object with a string "type" starting "echo_" (the
//     plugin's command prefix), reply {"type":"echo_pong","request_id":..,"data":..} with
//     JSON.stringify; anything else gets an error frame shaped and named like Relay's.
// No per-user hub, no routing table, no limits: less than server.js (the "node" peer) does.
//
// Usage: node echo.js PORT [HOST]   (HOST defaults to 127.0.0.1). Prints "listening HOST:PORT".

const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || process.env.PORT);
const host = process.argv[3] || '127.0.0.1';
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node server.js PORT [HOST]');
  process.exit(2);
}

const wss = new WebSocketServer({
  host,
  port,
  path: '/ws',               // ws compares the path without the query string
  perMessageDeflate: false,  // relay-bench negotiates no extension; Relay does not compress either
  clientTracking: false,
});

// Relay's error shape: {"topic":"error","data":{"error":code,"message":..,"request_id":..}}.
function errorFrame(code, message, msg) {
  const data = { error: code, message };
  if (msg && typeof msg === 'object' && msg.request_id !== undefined) data.request_id = msg.request_id;
  return JSON.stringify({ topic: 'error', data });
}

wss.on('connection', (ws, req) => {
  ws.on('error', () => {}); // a client reset must not take the server down
  const q = req.url.indexOf('?');
  const userId = q < 0 ? null : new URLSearchParams(req.url.slice(q + 1)).get('user_id');
  if (!userId) {
    ws.send(errorFrame('missing_user_id', 'User ID is required for connection'));
    ws.close(1008, 'missing user_id');
    return;
  }
  ws.send(JSON.stringify({ topic: 'welcome', data: { user_id: userId, client_count: 1 } }));

  ws.on('message', (raw, isBinary) => {
    if (isBinary) {
      ws.send(errorFrame('invalid_json', 'Failed to decode JSON message'));
      return;
    }
    let msg;
    try {
      msg = JSON.parse(raw.toString('utf8'));
    } catch (e) {
      ws.send(errorFrame('invalid_json', 'Failed to decode JSON message'));
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.type !== 'string') {
      ws.send(errorFrame('unknown_command', 'Message type is required', msg));
      return;
    }
    if (!msg.type.startsWith('echo_')) {
      ws.send(errorFrame('plugin_not_found', 'No plugin found for command', msg));
      return;
    }
    ws.send(JSON.stringify({ type: 'echo_pong', request_id: msg.request_id, data: msg.data }));
  });
});

wss.on('listening', () => console.log(`listening ${host}:${port}`));
wss.on('error', (e) => {
  console.error(`server error: ${e.message}`);
  process.exit(1);
});

// No graceful drain: the bench stops the server once its clients are gone.
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
