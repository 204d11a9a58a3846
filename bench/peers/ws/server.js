// Broadcast peer for herald-bench: the plain `ws` server a Node.js user would write.
// Every line of a POST /publish body is sent as one text frame to every connected client.
// A WebSocket client that sends a text frame starting with "pub:" publishes the rest the same way.
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.env.PORT || 8100);
const host = process.env.HOST || '127.0.0.1';

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const lines = Buffer.concat(chunks).toString('utf8').split('\n').filter((l) => l.length > 0);
      for (const line of lines) broadcast(line);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ published: lines.length }));
    });
    return;
  }
  res.writeHead(req.url === '/health' ? 200 : 404);
  res.end();
});

// perMessageDeflate off: it is off by default in ws, and herald-bench does not negotiate it.
const wss = new WebSocketServer({ server, perMessageDeflate: false });

function broadcast(text) {
  for (const client of wss.clients) {
    if (client.readyState === WebSocket.OPEN) client.send(text);
  }
}

wss.on('connection', (socket) => {
  socket.on('message', (data, isBinary) => {
    const text = isBinary ? '' : data.toString();
    if (text.startsWith('pub:')) broadcast(text.slice(4));
  });
  socket.on('error', () => {});
});

server.listen(port, host, () => console.log(`ws peer listening on ${host}:${port}`));
