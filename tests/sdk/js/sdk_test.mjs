// Herald against the official Centrifugo JavaScript SDK (centrifuge-js 5.x) on Node.js.
//
// Run: node --test sdk_test.mjs   (from tests/sdk/js, after `npm ci`)
// Each test starts its own Herald process (see herald.mjs; HERALD_BIN selects the binary).
// Node 20 has no global WebSocket: the `ws` package is passed to the SDK as `websocket`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { Herald, uniqueChannel } from './herald.mjs';

const WAIT = 5000; // ms to wait for any single event
const TEST_TIMEOUT = 60000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Buffers every event of an emitter per name, so none is missed before it is awaited. */
class Events {
  constructor(emitter, label, names) {
    this.label = label;
    this.t0 = Date.now();
    this.log = [];
    this.buffers = new Map();
    this.waiters = new Map();
    for (const name of names) {
      this.buffers.set(name, []);
      this.waiters.set(name, []);
      emitter.on(name, (ctx) => {
        this.log.push([Date.now() - this.t0, name, ctx]);
        const waiter = this.waiters.get(name).shift();
        if (waiter) waiter(ctx);
        else this.buffers.get(name).push(ctx);
      });
    }
  }

  history() {
    if (this.log.length === 0) return `  (${this.label}: no events)`;
    return this.log
      .map(([t, name, ctx]) => `  ${this.label} +${t}ms ${name}: ${safeJson(ctx)}`)
      .join('\n');
  }

  count(name) {
    return this.log.filter(([, n]) => n === name).length;
  }

  next(name, timeout = WAIT) {
    const buffered = this.buffers.get(name);
    if (buffered.length > 0) return Promise.resolve(buffered.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const list = this.waiters.get(name);
        const i = list.indexOf(onEvent);
        if (i >= 0) list.splice(i, 1);
        reject(new Error(`${this.label}: no '${name}' event within ${timeout}ms; events so far:\n${this.history()}`));
      }, timeout);
      const onEvent = (ctx) => {
        clearTimeout(timer);
        resolve(ctx);
      };
      this.waiters.get(name).push(onEvent);
    });
  }

  async take(name, count, timeout = WAIT) {
    const out = [];
    for (let i = 0; i < count; i++) out.push(await this.next(name, timeout));
    return out;
  }

  async expectNone(name, within = 500) {
    await sleep(within);
    const buffered = this.buffers.get(name);
    if (buffered.length > 0) {
      throw new Error(`${this.label}: unexpected '${name}' event ${safeJson(buffered[0])}; events:\n${this.history()}`);
    }
  }
}

function safeJson(value) {
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

function assertConsecutive(offsets, first = offsets[0]) {
  assert.ok(offsets.every((o) => Number.isInteger(o) && o > 0), `offsets must be positive: ${offsets}`);
  assert.deepEqual(offsets, offsets.map((_, i) => first + i), `offsets not consecutive: ${offsets}`);
}

/**
 * Runs `body` with a fresh Herald. The server output is appended to the error of a failing
 * test; clients are disconnected and the server is stopped afterwards.
 */
function withHerald(body) {
  return async () => {
    const herald = new Herald();
    await herald.start();
    const clients = [];

    const connect = async (user = 'user', options = {}) => {
      const client = new Centrifuge(herald.wsUrl, {
        websocket: WebSocket,
        token: herald.token(user),
        timeout: WAIT,
        minReconnectDelay: 100,
        maxReconnectDelay: 1000,
        ...options,
      });
      const events = new Events(client, `client[${user}]`, [
        'connecting', 'connected', 'disconnected', 'error',
        // server-side subscriptions
        'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave',
      ]);
      clients.push(client);
      client.connect();
      const connected = await events.next('connected');
      assert.ok(connected.client, 'connect reply must carry a client id');
      assert.equal(connected.transport, 'websocket');
      assert.equal(client.state, Centrifuge.State.Connected);
      return { client, events, clientId: connected.client };
    };

    const subscribe = async (client, channel, options = {}) => {
      const sub = client.newSubscription(channel, options);
      const events = new Events(sub, `sub[${channel}]`, [
        'subscribing', 'subscribed', 'unsubscribed', 'publication', 'join', 'leave', 'error',
      ]);
      sub.subscribe();
      const ctx = await events.next('subscribed');
      assert.equal(sub.state, Centrifuge.SubscriptionState.Subscribed);
      assert.equal(ctx.channel, channel);
      return { sub, events, ctx };
    };

    let failure = null;
    try {
      await body({ herald, connect, subscribe });
    } catch (err) {
      failure = err;
    }
    for (const client of clients) {
      try {
        client.disconnect();
      } catch {
        // teardown reaches every client
      }
    }
    const died = herald.exitedUnexpectedly();
    const log = herald.log(); // before stop(), which removes the work dir
    await herald.stop();
    if (!failure && died) {
      failure = new Error(`Herald exited during the test: ${JSON.stringify(died)}`);
    }
    if (failure) {
      if (failure instanceof Error) {
        failure.message += `\n--- herald server output (port ${herald.port}) ---\n${log}`;
      }
      throw failure;
    }
  };
}

// (a) A publication sent through the server API reaches a subscriber.
for (const ns of [null, 'chat']) {
  test(`API publication reaches a subscriber (${ns ? 'chat namespace' : 'top-level'})`, { timeout: TEST_TIMEOUT },
    withHerald(async ({ herald, connect, subscribe }) => {
      const channel = uniqueChannel('news', ns);
      const { client, events } = await connect('alice');
      const { events: subEvents } = await subscribe(client, channel);

      const payloads = [
        { text: 'hello', n: 1, nested: { list: [1, 'two', null, true, 2.5] } },
        { unicode: 'héllo ✓ \u2028 "quoted" \\ back\nslash' },
        'a plain string',
        42,
        [1, 2, 3],
      ];
      for (const data of payloads) await herald.publish(channel, data);

      const got = await subEvents.take('publication', payloads.length);
      assert.deepEqual(got.map((ctx) => ctx.data), payloads);
      assert.ok(got.every((ctx) => ctx.channel === channel));
      // History is on for the channel: every publication carries its stream offset.
      assertConsecutive(got.map((ctx) => ctx.offset));
      // Server API publications carry no publisher info.
      assert.ok(got.every((ctx) => ctx.info === undefined), 'API publications have no info');
      await subEvents.expectNone('publication', 300);
      assert.equal(events.count('connecting'), 1, events.history());
    }));
}

// (c) History returns the publications with their offsets and the stream epoch.
test('history returns publications with offsets and epoch', { timeout: TEST_TIMEOUT },
  withHerald(async ({ herald, connect, subscribe }) => {
    const channel = uniqueChannel('hist', 'chat');
    const { client } = await connect('alice');
    const { sub, events: subEvents, ctx: subscribed } = await subscribe(client, channel);

    for (let i = 1; i <= 3; i++) await herald.publish(channel, { i });
    const live = await subEvents.take('publication', 3);

    const history = await sub.history({ limit: 10 });
    assert.deepEqual(history.publications.map((p) => p.data), [{ i: 1 }, { i: 2 }, { i: 3 }]);
    const offsets = history.publications.map((p) => p.offset);
    assertConsecutive(offsets);
    assert.deepEqual(offsets, live.map((ctx) => ctx.offset), 'history and live offsets must agree');
    assert.equal(typeof history.epoch, 'string');
    assert.ok(history.epoch.length > 0, 'history must report the stream epoch');
    assert.equal(history.offset, offsets[2], 'history offset is the stream top');

    // force_recovery makes the subscription recoverable: its position is of the same stream.
    assert.ok(subscribed.recoverable, 'subscribe reply must be recoverable (force_recovery)');
    assert.equal(subscribed.streamPosition.epoch, history.epoch);

    // limit 0: only the stream position (Centrifugo semantics).
    const positionOnly = await sub.history({ limit: 0 });
    assert.deepEqual(positionOnly.publications, []);
    assert.deepEqual([positionOnly.offset, positionOnly.epoch], [history.offset, history.epoch]);

    const newestFirst = await client.history(channel, { limit: 2, reverse: true });
    assert.deepEqual(newestFirst.publications.map((p) => p.data), [{ i: 3 }, { i: 2 }]);

    const since = await sub.history({ limit: 10, since: { offset: offsets[0], epoch: history.epoch } });
    assert.deepEqual(since.publications.map((p) => p.data), [{ i: 2 }, { i: 3 }]);
  }));

// (d) Recovery: publications missed while disconnected come with the resubscribe, in order.
for (const requested of [true, false]) {
  test(`recovery after reconnect (${requested ? 'recoverable requested' : 'force_recovery'})`, { timeout: TEST_TIMEOUT },
    withHerald(async ({ herald, connect, subscribe }) => {
      const channel = uniqueChannel('feed', 'chat');
      const { client, events } = await connect('alice');
      const { sub, events: subEvents, ctx: first } = await subscribe(client, channel,
        requested ? { recoverable: true } : {});

      assert.equal(first.recoverable, true, 'force_recovery (or recoverable: true) must make the reply recoverable');
      assert.ok(first.streamPosition && first.streamPosition.epoch, `stream position expected: ${safeJson(first)}`);
      assert.deepEqual([first.wasRecovering, first.recovered], [false, false]);
      const epoch = first.streamPosition.epoch;

      // One live publication: the SDK recovers from its offset.
      await herald.publish(channel, { seq: 0 });
      const live = await subEvents.next('publication');
      assert.ok(live.offset > 0);

      client.disconnect();
      await events.next('disconnected');
      // The SDK keeps the subscription and resubscribes it with recover/offset/epoch on connect.
      assert.equal(sub.state, Centrifuge.SubscriptionState.Subscribing);

      for (const seq of [1, 2, 3]) await herald.publish(channel, { seq });

      client.connect();
      await events.next('connected');
      const second = await subEvents.next('subscribed');
      assert.equal(second.wasRecovering, true, 'the resubscribe asked for recovery');
      assert.equal(second.recovered, true, `all missed publications were in history: ${safeJson(second)}`);
      assert.equal(second.hasRecoveredPublications, true);
      assert.equal(second.recoverable, true);
      assert.equal(second.streamPosition.epoch, epoch);

      const missed = await subEvents.take('publication', 3);
      assert.deepEqual(missed.map((ctx) => ctx.data), [{ seq: 1 }, { seq: 2 }, { seq: 3 }]);
      assertConsecutive(missed.map((ctx) => ctx.offset), live.offset + 1);
      await subEvents.expectNone('publication', 300);

      await herald.publish(channel, { seq: 4 });
      const after = await subEvents.next('publication');
      assert.deepEqual([after.data, after.offset], [{ seq: 4 }, live.offset + 4]);
    }));
}

// (e) A publication from one client reaches the others, with the publisher's info.
test('client publish reaches other clients', { timeout: TEST_TIMEOUT },
  withHerald(async ({ connect, subscribe }) => {
    const channel = uniqueChannel('talk', 'chat');
    const alice = await connect('alice');
    const bob = await connect('bob');
    const { sub: aliceSub, events: aliceEvents } = await subscribe(alice.client, channel);
    const { events: bobEvents } = await subscribe(bob.client, channel);

    await aliceSub.publish({ from: 'alice' });
    const got = await bobEvents.next('publication');
    assert.deepEqual(got.data, { from: 'alice' });
    assert.ok(got.offset > 0);
    assert.ok(got.info, 'client publications carry the publisher info');
    assert.deepEqual([got.info.user, got.info.client], ['alice', alice.clientId]);
    const own = await aliceEvents.next('publication');
    assert.deepEqual([own.data, own.offset], [got.data, got.offset]);
  }));

// (f) The personal channel "#<user>" is a server-side subscription.
test('personal channel is delivered through the server-side subscription', { timeout: TEST_TIMEOUT },
  withHerald(async ({ herald, connect }) => {
    const alice = await connect('alice');
    const bob = await connect('bob');
    const subscribed = await alice.events.next('subscribed');
    assert.equal(subscribed.channel, '#alice');
    assert.equal((await bob.events.next('subscribed')).channel, '#bob');

    await herald.publish('#alice', { note: 'for alice only' });
    const pub = await alice.events.next('publication');
    assert.equal(pub.channel, '#alice');
    assert.deepEqual(pub.data, { note: 'for alice only' });
    await bob.events.expectNone('publication', 300);
  }));

// (g) RPC without an RPC proxy answers error 108 "not available".
test('rpc is not available', { timeout: TEST_TIMEOUT },
  withHerald(async ({ connect }) => {
    const { client, events } = await connect('alice');
    await assert.rejects(client.rpc('get_profile', { id: 1 }), (err) => {
      assert.equal(err.code, 108);
      assert.equal(err.message, 'not available');
      assert.equal(err.temporary, false);
      return true;
    });
    assert.equal(client.state, Centrifuge.State.Connected);
    assert.equal(events.count('connecting'), 1, events.history());
  }));
