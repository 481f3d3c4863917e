'use strict';
// The Node.js peer of bench/memory: a WebSocket server on the ws package
// that keeps every connection open and answers each connection's first
// message with one small binary message, so a client completes the same
// exchange as Parley's Hello/Welcome. It holds no other per-connection state.
//
//   node ws_server.js PORT      (0 picks a free port)
//
// Prints "listening <port> ws/<version> node/<version>" once it accepts
// connections. When started with --expose-gc it collects garbage once
// connections stop arriving, so the measured memory is what the connections
// keep, not garbage a later collection would have freed. SIGTERM and SIGINT end it with status 0.

const { WebSocketServer } = require('ws');
const wsVersion = require('ws/package.json').version;

const port = parseInt(process.argv[2] || '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error('usage: node ws_server.js PORT');
  process.exit(2);
}

// About the size of a Parley Welcome frame (principal, session id, limits).
const welcome = Buffer.alloc(80, 0x2e);
welcome.write('welcome', 0, 'latin1');

let gcTimer = null;
function scheduleGc() {
  if (typeof global.gc !== 'function') return;
  if (gcTimer) clearTimeout(gcTimer);
  gcTimer = setTimeout(() => {
    gcTimer = null;
    global.gc();
  }, 300);
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  backlog: 4096,
  perMessageDeflate: false,
  clientTracking: true,
  maxPayload: 1024 * 1024,
});

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  ws.once('message', () => {
    ws.send(welcome, { binary: true });
    scheduleGc();
  });
});

wss.on('error', (err) => {
  console.error(`ws_server: ${err.message}`);
  process.exit(1);
});

wss.on('listening', () => {
  console.log(`listening ${wss.address().port} ws/${wsVersion} node/${process.version}`);
});

function stop() {
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
