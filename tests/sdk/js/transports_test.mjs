// Herald's non-WebSocket transports against the unmodified centrifuge-js 5.8.0: bidirectional
// emulation over HTTP streaming (`http_stream`) and SSE (`sse`), the client's later commands POSTed
// to /emulation. Node 20 has fetch and ReadableStream; SSE takes the `eventsource` package.
//
// Run: node --test transports_test.mjs   (from tests/sdk/js, after `npm ci`)
// The cross-node tests run two Herald processes on Redis (127.0.0.1:6379), a prefix of their own.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Centrifuge } from 'centrifuge';
import { EventSource } from 'eventsource';
import { Herald, uniqueChannel } from './herald.mjs';

const WAIT = 5000; // ms to wait for any single event
const TEST_TIMEOUT = 60000;
const TRANSPORTS = ['http_stream', 'sse'];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Every event `names` of `emitter`, buffered so none is missed before it is awaited. */
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
    pending(name) {
      return buffers.get(name).length;
    },
  };
}

/** A centrifuge-js client on `transport` to `streamHerald`, its commands to `emulationHerald`. */
function makeClient(transport, streamHerald, emulationHerald, user, options = {}) {
  const client = new Centrifuge(
    [{ transport, endpoint: `${streamHerald.baseUrl}/connection/${transport}` }],
    {
      token: streamHerald.token(user),
      eventsource: EventSource,
      emulationEndpoint: `${emulationHerald.baseUrl}/emulation`,
      timeout: WAIT,
      minReconnectDelay: 100,
      maxReconnectDelay: 1000,
      ...options,
    },
  );
  const events = record(client, `${transport}[${user}]`, ['connecting', 'connected', 'disconnected', 'error']);
  return { client, events };
}

function subscribe(client, channel, label) {
  const sub = client.newSubscription(channel);
  const events = record(sub, `${label} sub ${channel}`, ['subscribed', 'subscribing', 'unsubscribed', 'publication', 'error']);
  sub.subscribe();
  return { sub, events };
}

/** Runs `body` with the given Herald processes; their output is added to a failure. */
function withHeralds(heralds, body) {
  return async () => {
    const clients = [];
    try {
      for (const h of heralds) await h.start();
      await body({ clients });
    } catch (e) {
      const logs = heralds.map((h, i) => `--- herald ${i} output ---\n${h.log()}`).join('\n');
      e.message += `\n${logs}`;
      throw e;
    } finally {
      for (const c of clients) c.disconnect();
      for (const h of heralds) await h.stop();
    }
  };
}

for (const transport of TRANSPORTS) {
  test(`${transport}: connect, subscribe, publications, presence, history`, { timeout: TEST_TIMEOUT },
    (() => {
      const herald = new Herald();
      return withHeralds([herald], async ({ clients }) => {
        const channel = uniqueChannel('room', 'chat');
        const alice = makeClient(transport, herald, herald, 'alice');
        const bob = makeClient(transport, herald, herald, 'bob');
        clients.push(alice.client, bob.client);
        alice.client.connect();
        bob.client.connect();
        const connected = await alice.events.next('connected');
        assert.equal(connected.transport, transport);
        await bob.events.next('connected');

        const a = subscribe(alice.client, channel, 'alice');
        const b = subscribe(bob.client, channel, 'bob');
        const subscribed = await a.events.next('subscribed');
        assert.equal(subscribed.recoverable, true, 'force_recovery makes the subscription recoverable');
        await b.events.next('subscribed');

        // A server API publication reaches both streams.
        await herald.publish(channel, { from: 'api' });
        const [ga, gb] = [await a.events.next('publication'), await b.events.next('publication')];
        assert.deepEqual([ga.data, gb.data], [{ from: 'api' }, { from: 'api' }]);
        assert.ok(ga.offset > 0);

        // A client publication goes through /emulation and reaches the other client with its info.
        await a.sub.publish({ from: 'alice' });
        const fromAlice = await b.events.next('publication');
        assert.deepEqual(fromAlice.data, { from: 'alice' });
        assert.equal(fromAlice.info?.user, 'alice');
        assert.equal(fromAlice.offset, ga.offset + 1);
        await a.events.next('publication');

        const presence = await a.sub.presence();
        const users = Object.values(presence.clients).map((c) => c.user).sort();
        assert.deepEqual(users, ['alice', 'bob']);
        const stats = await b.sub.presenceStats();
        assert.deepEqual([stats.numClients, stats.numUsers], [2, 2]);

        const history = await b.sub.history({ limit: 10 });
        assert.deepEqual(history.publications.map((p) => p.data), [{ from: 'api' }, { from: 'alice' }]);

        // An error reply comes back on the stream too (no RPC hook: method not found).
        await assert.rejects(alice.client.rpc('nothing', {}), (e) => e.code > 0);

        // The unsubscribe goes over /emulation too: the server drops alice from the channel.
        a.sub.unsubscribe();
        await a.events.next('unsubscribed');
        const deadline = Date.now() + WAIT;
        for (;;) {
          const { presence: left } = await herald.api('presence', { channel });
          if (Object.values(left).map((c) => c.user).join() === 'bob') break;
          assert.ok(Date.now() < deadline, `alice still in the channel: ${JSON.stringify(left)}`);
          await sleep(50);
        }
      });
    })());

  test(`${transport}: recovery after a reconnect`, { timeout: TEST_TIMEOUT },
    (() => {
      const herald = new Herald();
      return withHeralds([herald], async ({ clients }) => {
        const channel = uniqueChannel('feed', 'chat');
        // Reconnects no sooner than 1.5 s: the publications below are missed, not live.
        const { client, events } = makeClient(transport, herald, herald, 'carol',
          { minReconnectDelay: 1500, maxReconnectDelay: 2000 });
        clients.push(client);
        client.connect();
        await events.next('connecting'); // the first connect's
        await events.next('connected');
        const s = subscribe(client, channel, 'carol');
        const first = await s.events.next('subscribed');
        const epoch = first.streamPosition.epoch;
        await herald.publish(channel, { seq: 0 });
        const live = await s.events.next('publication');

        // The server closes the stream with a reconnect code; the SDK reconnects on its own.
        const { presence: info } = await herald.api('presence', { channel });
        const clientId = Object.keys(info)[0];
        await herald.api('disconnect', { user: 'carol', client: clientId, disconnect: { code: 4000, reason: 'test reconnect' } });
        const connecting = await events.next('connecting');
        assert.equal(connecting.code, 4000, `reconnecting for the server's code: ${JSON.stringify(connecting)}`);
        for (const seq of [1, 2, 3]) await herald.publish(channel, { seq });

        await events.next('connected');
        const second = await s.events.next('subscribed');
        assert.equal(second.wasRecovering, true);
        assert.equal(second.recovered, true, `missed publications were in history: ${JSON.stringify(second)}`);
        assert.equal(second.streamPosition.epoch, epoch);
        const missed = [];
        for (let i = 0; i < 3; i++) missed.push(await s.events.next('publication'));
        assert.deepEqual(missed.map((p) => p.data), [{ seq: 1 }, { seq: 2 }, { seq: 3 }]);
        assert.deepEqual(missed.map((p) => p.offset), [1, 2, 3].map((i) => live.offset + i));
      });
    })());

  // The stream lands on node A; centrifuge-js sends its commands to node B's /emulation, which
  // hands them to A through the broker.
  test(`${transport}: stream on one node, /emulation on another (Redis)`, { timeout: TEST_TIMEOUT },
    (() => {
      const broker = `[broker]\nkind = "redis"\nprefix = "herald-sdk-js-${randomBytes(6).toString('hex')}"\n`;
      const a = new Herald({ extraConfig: broker });
      const b = new Herald({ extraConfig: broker });
      return withHeralds([a, b], async ({ clients }) => {
        // B sends only to nodes it knows: wait until A has announced itself.
        const deadline = Date.now() + WAIT;
        while ((await b.api('info', {})).nodes.length < 2) {
          assert.ok(Date.now() < deadline, 'the nodes never met');
          await sleep(100);
        }
        const channel = uniqueChannel('xnode', 'chat');
        const viaB = makeClient(transport, a, b, 'dave');
        const local = makeClient(transport, b, b, 'erin');
        clients.push(viaB.client, local.client);
        viaB.client.connect();
        local.client.connect();
        await viaB.events.next('connected');
        await local.events.next('connected');

        const remote = subscribe(viaB.client, channel, 'dave');
        const near = subscribe(local.client, channel, 'erin');
        await remote.events.next('subscribed');
        await near.events.next('subscribed');

        await b.publish(channel, { n: 1 });
        assert.deepEqual((await remote.events.next('publication')).data, { n: 1 });
        assert.deepEqual((await near.events.next('publication')).data, { n: 1 });

        await remote.sub.publish({ from: 'dave' });
        const got = await near.events.next('publication');
        assert.deepEqual([got.data, got.info?.user], [{ from: 'dave' }, 'dave']);

        const presence = await remote.sub.presence();
        assert.deepEqual(Object.values(presence.clients).map((c) => c.user).sort(), ['dave', 'erin']);
        const history = await remote.sub.history({ limit: 10 });
        assert.deepEqual(history.publications.map((p) => p.data), [{ n: 1 }, { from: 'dave' }]);
        // The connection is A's: B's /emulation made no second one (the registry is refreshed
        // every node_announce_interval, so the counts may take a moment).
        let nodes = [];
        const until = Date.now() + 2 * WAIT;
        for (;;) {
          ({ nodes } = await a.api('info', {}));
          if (nodes.every((n) => n.num_clients === 1)) break;
          assert.ok(Date.now() < until, `one client per node: ${JSON.stringify(nodes)}`);
          await sleep(200);
        }
      });
    })());
}
