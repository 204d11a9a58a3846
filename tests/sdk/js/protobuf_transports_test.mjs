// Herald's HTTP-streaming transport in Protobuf against centrifuge-js 5.8.0's protobuf build: the
// connect command POSTed as length-delimited Protobuf (Content-Type application/octet-stream), the
// response read as length-delimited Replies, later commands POSTed to /emulation as a Protobuf
// EmulationRequest. Payloads travel as bytes: Herald requires JSON bytes (docs/protocol.md), so the
// test encodes and decodes JSON text. SSE stays JSON-only (it is text).
//
// Run: node --test protobuf_transports_test.mjs   (from tests/sdk/js, after `npm ci`)
// The cross-node test runs two Herald processes on Redis (127.0.0.1:6379), a prefix of their own.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Centrifuge } from 'centrifuge/build/protobuf';
import { Herald, uniqueChannel } from './herald.mjs';

const WAIT = 5000;
const TEST_TIMEOUT = 60000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const encode = (value) => new TextEncoder().encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

/** Queues an emitter's events `names` so none is missed before it is awaited. */
function record(emitter, label, names) {
  const seen = [];
  const buffers = new Map(names.map((n) => [n, []]));
  const waiters = new Map(names.map((n) => [n, []]));
  for (const name of names) {
    emitter.on(name, (ctx) => {
      seen.push(`${name}: ${JSON.stringify(ctx)}`);
      const waiter = waiters.get(name).shift();
      if (waiter) waiter(ctx);
      else buffers.get(name).push(ctx);
    });
  }
  return {
    next(name, timeout = WAIT) {
      const buffered = buffers.get(name);
      if (buffered.length > 0) return Promise.resolve(buffered.shift());
      return new Promise((resolve, reject) => {
        const onEvent = (ctx) => { clearTimeout(timer); resolve(ctx); };
        const timer = setTimeout(() => {
          const list = waiters.get(name);
          list.splice(list.indexOf(onEvent), 1);
          reject(new Error(`${label}: no '${name}' within ${timeout}ms; events:\n  ${seen.join('\n  ')}`));
        }, timeout);
        waiters.get(name).push(onEvent);
      });
    },
  };
}

/** A protobuf centrifuge-js client streaming from `streamHerald`, its commands to `emulationHerald`. */
function makeClient(streamHerald, emulationHerald, user) {
  const client = new Centrifuge(
    [{ transport: 'http_stream', endpoint: `${streamHerald.baseUrl}/connection/http_stream` }],
    {
      token: streamHerald.token(user),
      emulationEndpoint: `${emulationHerald.baseUrl}/emulation`,
      timeout: WAIT,
      minReconnectDelay: 100,
      maxReconnectDelay: 1000,
    },
  );
  const events = record(client, `http_stream protobuf [${user}]`, ['connecting', 'connected', 'disconnected', 'error']);
  return { client, events };
}

function subscribe(client, channel, label) {
  const sub = client.newSubscription(channel);
  const events = record(sub, `${label} sub ${channel}`, ['subscribed', 'subscribing', 'unsubscribed', 'publication', 'error']);
  sub.subscribe();
  return { sub, events };
}

function withHeralds(heralds, body) {
  return async () => {
    const clients = [];
    try {
      for (const h of heralds) await h.start();
      await body({ clients });
    } catch (e) {
      e.message += `\n${heralds.map((h, i) => `--- herald ${i} output ---\n${h.log()}`).join('\n')}`;
      throw e;
    } finally {
      for (const c of clients) c.disconnect();
      for (const h of heralds) await h.stop();
    }
  };
}

test('http_stream protobuf: connect, subscribe, publications, history', { timeout: TEST_TIMEOUT },
  (() => {
    const herald = new Herald();
    return withHeralds([herald], async ({ clients }) => {
      const channel = uniqueChannel('room', 'chat');
      const alice = makeClient(herald, herald, 'alice');
      const bob = makeClient(herald, herald, 'bob');
      clients.push(alice.client, bob.client);
      alice.client.connect();
      bob.client.connect();
      const connected = await alice.events.next('connected');
      assert.equal(connected.transport, 'http_stream');
      assert.ok(connected.client, 'the connect reply carries a client id');
      await bob.events.next('connected');

      const a = subscribe(alice.client, channel, 'alice');
      const b = subscribe(bob.client, channel, 'bob');
      await a.events.next('subscribed');
      await b.events.next('subscribed');

      // A server API publication reaches both streams as a length-delimited push.
      await herald.publish(channel, { from: 'api' });
      const [ga, gb] = [await a.events.next('publication'), await b.events.next('publication')];
      assert.deepEqual([decode(ga.data), decode(gb.data)], [{ from: 'api' }, { from: 'api' }]);

      // A client publication goes through /emulation as a Protobuf EmulationRequest.
      await a.sub.publish(encode({ from: 'alice' }));
      const fromAlice = await b.events.next('publication');
      assert.deepEqual(decode(fromAlice.data), { from: 'alice' });
      assert.equal(fromAlice.info?.user, 'alice');
      await a.events.next('publication');

      const presence = await a.sub.presence();
      assert.deepEqual(Object.values(presence.clients).map((c) => c.user).sort(), ['alice', 'bob']);
      const history = await b.sub.history({ limit: 10 });
      assert.deepEqual(history.publications.map((p) => decode(p.data)), [{ from: 'api' }, { from: 'alice' }]);

      // An error reply comes back on the stream too (no RPC hook: method not found).
      await assert.rejects(alice.client.rpc('nothing', encode({})), (e) => e.code > 0);

      // The server ends the connection with a Protobuf disconnect push the SDK reads.
      await herald.api('disconnect', { user: 'bob', disconnect: { code: 4501, reason: 'go away' } });
      const gone = await bob.events.next('disconnected');
      assert.equal(gone.code, 4501, JSON.stringify(gone));
    });
  })());

test('http_stream protobuf: stream on one node, /emulation on another (Redis)', { timeout: TEST_TIMEOUT },
  (() => {
    const broker = `[broker]\nkind = "redis"\nprefix = "herald-sdk-js-pb-${randomBytes(6).toString('hex')}"\n`;
    const a = new Herald({ extraConfig: broker });
    const b = new Herald({ extraConfig: broker });
    return withHeralds([a, b], async ({ clients }) => {
      const deadline = Date.now() + WAIT;
      while ((await b.api('info', {})).nodes.length < 2) {
        assert.ok(Date.now() < deadline, 'the nodes never met');
        await sleep(100);
      }
      const channel = uniqueChannel('xnode', 'chat');
      const viaB = makeClient(a, b, 'dave');
      clients.push(viaB.client);
      viaB.client.connect();
      await viaB.events.next('connected');
      const remote = subscribe(viaB.client, channel, 'dave');
      await remote.events.next('subscribed');
      await b.publish(channel, { n: 1 });
      assert.deepEqual(decode((await remote.events.next('publication')).data), { n: 1 });
      await remote.sub.publish(encode({ from: 'dave' }));
      assert.deepEqual(decode((await remote.events.next('publication')).data), { from: 'dave' });
      const history = await remote.sub.history({ limit: 10 });
      assert.deepEqual(history.publications.map((p) => decode(p.data)), [{ n: 1 }, { from: 'dave' }]);
    });
  })());
