// Herald against centrifuge-js 5.x's Protobuf build on Node.js: binary WebSocket frames of
// length-delimited Protobuf messages, `centrifuge-protobuf` subprotocol (node's `ws` fails the
// handshake unless the server echoes it). Payloads travel as bytes: Herald requires JSON bytes
// (docs/protocol.md), so the test encodes and decodes JSON text.
//
// Run: node --test protobuf_test.mjs   (from tests/sdk/js, after `npm ci`)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge/build/protobuf';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { Herald, uniqueChannel } from './herald.mjs';

const WAIT = 5000;
const TEST_TIMEOUT = 60000;

const encode = (value) => new TextEncoder().encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

/** Queues an emitter's `name` events so none is missed before it is awaited. */
function queue(emitter, name) {
  const buffered = [];
  const waiting = [];
  emitter.on(name, (ctx) => (waiting.length ? waiting.shift()(ctx) : buffered.push(ctx)));
  return {
    next(timeout = WAIT) {
      if (buffered.length) return Promise.resolve(buffered.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no '${name}' event within ${timeout}ms`)), timeout);
        waiting.push((ctx) => {
          clearTimeout(timer);
          resolve(ctx);
        });
      });
    },
  };
}

/** Runs `body` against a fresh Herald; clients are disconnected and the server stopped after. */
function withHerald(body) {
  return async () => {
    const herald = new Herald();
    await herald.start();
    const clients = [];
    const connect = async (user) => {
      const client = new Centrifuge(herald.wsUrl, {
        websocket: WebSocket,
        token: herald.token(user),
        timeout: WAIT,
        minReconnectDelay: 100,
        maxReconnectDelay: 1000,
      });
      clients.push(client);
      const connected = queue(client, 'connected');
      const disconnected = queue(client, 'disconnected');
      client.connect();
      const ctx = await connected.next();
      assert.ok(ctx.client, 'connect reply carries a client id');
      return { client, connected, disconnected, clientId: ctx.client };
    };
    const subscribe = async (client, channel, options = {}) => {
      const sub = client.newSubscription(channel, options);
      const events = {
        subscribed: queue(sub, 'subscribed'),
        publication: queue(sub, 'publication'),
        join: queue(sub, 'join'),
      };
      sub.subscribe();
      const ctx = await events.subscribed.next();
      return { sub, events, ctx };
    };
    const log = () => herald.log();
    try {
      await body({ herald, connect, subscribe });
    } catch (err) {
      if (err instanceof Error) err.message += `\n--- herald server output ---\n${log()}`;
      throw err;
    } finally {
      for (const client of clients) client.disconnect();
      await herald.stop();
    }
  };
}

test('protobuf: API and client publications, with publisher info', { timeout: TEST_TIMEOUT },
  withHerald(async ({ herald, connect, subscribe }) => {
    const channel = uniqueChannel('news', 'chat');
    const { client } = await connect('alice');
    const { sub, events } = await subscribe(client, channel);

    const payloads = [{ text: 'hello', list: [1, 'two', null] }, 'a string', 42];
    for (const data of payloads) await herald.publish(channel, data);
    const got = [];
    for (let i = 0; i < payloads.length; i++) got.push(await events.publication.next());
    assert.ok(got.every((ctx) => ctx.data instanceof Uint8Array), 'protobuf data is bytes');
    assert.deepEqual(got.map((ctx) => decode(ctx.data)), payloads);
    assert.deepEqual(got.map((ctx) => ctx.offset), [1, 2, 3]);

    await sub.publish(encode({ from: 'js' }));
    const own = await events.publication.next();
    assert.deepEqual(decode(own.data), { from: 'js' });
    assert.equal(own.info.user, 'alice');

    // Bytes that are not JSON: refused with 107, naming the field; the client stays connected.
    await assert.rejects(sub.publish(new Uint8Array([0xff, 0x00, 0x01])), (err) => {
      assert.equal(err.code, 107);
      assert.match(err.message, /data/);
      return true;
    });
    assert.equal(client.state, Centrifuge.State.Connected);
  }));

test('protobuf: history, presence and presence stats', { timeout: TEST_TIMEOUT },
  withHerald(async ({ herald, connect, subscribe }) => {
    const channel = uniqueChannel('hist', 'chat');
    const { client, clientId } = await connect('alice');
    const { sub, ctx } = await subscribe(client, channel);
    assert.equal(ctx.recoverable, true);

    for (let i = 1; i <= 3; i++) await herald.publish(channel, { i });
    const history = await sub.history({ limit: 10 });
    assert.deepEqual(history.publications.map((p) => decode(p.data)), [{ i: 1 }, { i: 2 }, { i: 3 }]);
    assert.deepEqual(history.publications.map((p) => p.offset), [1, 2, 3]);
    assert.equal(history.offset, 3);
    assert.equal(history.epoch, ctx.streamPosition.epoch);
    const newest = await sub.history({ limit: 1, reverse: true });
    assert.deepEqual(newest.publications.map((p) => decode(p.data)), [{ i: 3 }]);

    const presence = await sub.presence();
    assert.deepEqual(Object.keys(presence.clients), [clientId]);
    assert.equal(presence.clients[clientId].user, 'alice');
    const stats = await sub.presenceStats();
    assert.deepEqual([stats.numClients, stats.numUsers], [1, 1]);
  }));

test('protobuf: recovery after reconnect', { timeout: TEST_TIMEOUT },
  withHerald(async ({ herald, connect, subscribe }) => {
    const channel = uniqueChannel('feed', 'chat');
    const { client, connected, disconnected } = await connect('alice');
    const { events } = await subscribe(client, channel);
    await herald.publish(channel, { seq: 0 });
    assert.deepEqual(decode((await events.publication.next()).data), { seq: 0 });

    client.disconnect();
    await disconnected.next();
    for (const seq of [1, 2, 3]) await herald.publish(channel, { seq });
    client.connect();
    await connected.next();
    const again = await events.subscribed.next();
    assert.equal(again.wasRecovering, true);
    assert.equal(again.recovered, true);
    const missed = [];
    for (let i = 0; i < 3; i++) missed.push(await events.publication.next());
    assert.deepEqual(missed.map((ctx) => decode(ctx.data)), [{ seq: 1 }, { seq: 2 }, { seq: 3 }]);
    assert.deepEqual(missed.map((ctx) => ctx.offset), [2, 3, 4]);
  }));

test('protobuf and JSON clients share a channel', { timeout: TEST_TIMEOUT },
  withHerald(async ({ herald, connect, subscribe }) => {
    const channel = uniqueChannel('mixed', 'chat');
    const { client: proto } = await connect('alice');
    const { events: protoEvents, sub: protoSub } = await subscribe(proto, channel);
    // The JSON build of the same SDK, on the same server.
    const json = new JsonCentrifuge(herald.wsUrl, {
      websocket: WebSocket,
      token: herald.token('bob'),
      timeout: WAIT,
    });
    try {
      const jsonConnected = queue(json, 'connected');
      json.connect();
      await jsonConnected.next();
      const jsonSub = json.newSubscription(channel);
      const jsonSubscribed = queue(jsonSub, 'subscribed');
      const jsonPublications = queue(jsonSub, 'publication');
      jsonSub.subscribe();
      await jsonSubscribed.next();

      await protoSub.publish(encode({ from: 'protobuf' }));
      assert.deepEqual(decode((await protoEvents.publication.next()).data), { from: 'protobuf' });
      assert.deepEqual((await jsonPublications.next()).data, { from: 'protobuf' });

      await jsonSub.publish({ from: 'json' });
      assert.deepEqual(decode((await protoEvents.publication.next()).data), { from: 'json' });
      assert.deepEqual((await jsonPublications.next()).data, { from: 'json' });
    } finally {
      json.disconnect();
    }
  }));
