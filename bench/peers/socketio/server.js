// Broadcast peer for herald-bench: the socket.io server a Node.js user would write.
// Every line of a POST /publish body (a JSON object) is emitted as event "msg" to every client.
// A client emitting "pub" with an object publishes it the same way.
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.env.PORT || 8200);
const host = process.env.HOST || '127.0.0.1';

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let count = 0;
      for (const line of Buffer.concat(chunks).toString('utf8').split('\n')) {
        if (line.length === 0) continue;
        try {
          io.emit('msg', JSON.parse(line));
          count += 1;
        } catch (e) {
          // A malformed line is skipped; the count tells the publisher.
        }
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ published: count }));
    });
    return;
  }
  // socket.io's engine answers /socket.io/ itself and passes only other paths here.
  res.writeHead(req.url === '/health' ? 200 : 404);
  res.end();
});

// WebSocket transport only, no compression: the same wire work as the other servers.
const io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false });
io.on('connection', (socket) => {
  socket.on('pub', (msg) => io.emit('msg', msg));
});

server.listen(port, host, () => console.log(`socket.io peer listening on ${host}:${port}`));
