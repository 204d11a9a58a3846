// Tokens that expire every few seconds, refreshed by centrifuge-js itself (client and
// subscription `getToken`) for a minute: no disconnect, no reconnect, no resubscribe, and every
// publication of that minute arrives in order. centrifuge-js arms its refresh timers from the
// `ttl` of the connect, subscribe, refresh and sub_refresh replies, so this holds only if Herald
// sends `expires`/`ttl` as Centrifugo does and keeps what is refreshed at the token's `exp`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { Herald, uniqueChannel } from './herald.mjs';

const TOKEN_LIFETIME = 5; // seconds a connection or subscription token lives
const RUN_FOR = 60; // seconds the connection is watched
const WAIT = 5000;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Every event of an emitter, in order: [ms since start, name, context]. */
function record(emitter, names) {
  const t0 = Date.now();
  const log = [];
  for (const name of names) emitter.on(name, (ctx) => log.push([Date.now() - t0, name, ctx]));
  return {
    log,
    count: (name) => log.filter(([, n]) => n === name).length,
    of: (name) => log.filter(([, n]) => n === name).map(([, , ctx]) => ctx),
    history: (label) => log.map(([t, n, c]) => `  ${label} +${t}ms ${n}: ${JSON.stringify(c)}`).join('\n'),
  };
}

async function until(check, what, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout}ms`);
    await sleep(20);
  }
}

test('tokens expiring every 5 s are refreshed for a minute without a disconnect', { timeout: 120000 }, async () => {
  const herald = new Herald();
  await herald.start();
  const user = 'refresher';
  const channel = uniqueChannel('refreshed');
  const refreshes = { connection: 0, subscription: 0 };
  const connectionToken = () => herald.token(user, { expIn: TOKEN_LIFETIME });
  const subscriptionToken = () => herald.token(user, { expIn: TOKEN_LIFETIME, claims: { channel } });

  // Initial tokens are given up front: every getToken call is a refresh.
  const client = new Centrifuge(herald.wsUrl, {
    websocket: WebSocket,
    token: connectionToken(),
    getToken: async () => {
      refreshes.connection += 1;
      return connectionToken();
    },
    timeout: WAIT,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
  });
  const clientEvents = record(client, ['state', 'connecting', 'connected', 'disconnected', 'error']);
  const sub = client.newSubscription(channel, {
    token: subscriptionToken(),
    getToken: async (ctx) => {
      assert.equal(ctx.channel, channel);
      refreshes.subscription += 1;
      return subscriptionToken();
    },
  });
  const subEvents = record(sub, ['state', 'subscribing', 'subscribed', 'unsubscribed', 'error', 'publication']);
  const everything = () => `${clientEvents.history('client')}\n${subEvents.history('sub')}`;

  let failure = null;
  try {
    client.connect();
    sub.subscribe();
    await until(() => subEvents.count('subscribed') === 1, 'subscribed');
    const clientId = clientEvents.of('connected')[0].client;

    const started = Date.now();
    for (let n = 0; n < RUN_FOR; n++) {
      await herald.publish(channel, { n });
      await sleep(Math.max(0, started + (n + 1) * 1000 - Date.now()));
    }
    await until(() => subEvents.count('publication') === RUN_FOR, `${RUN_FOR} publications`);

    // One connect, one subscribe, and nothing since: no close, no reconnect, no resubscribe.
    assert.equal(clientEvents.count('connecting'), 1, everything());
    assert.equal(clientEvents.count('connected'), 1, everything());
    assert.equal(clientEvents.count('disconnected'), 0, everything());
    assert.equal(clientEvents.count('error'), 0, everything());
    assert.deepEqual(clientEvents.of('state').map((s) => s.newState), ['connecting', 'connected'], everything());
    assert.equal(subEvents.count('subscribing'), 1, everything());
    assert.equal(subEvents.count('subscribed'), 1, everything());
    assert.equal(subEvents.count('unsubscribed'), 0, everything());
    assert.equal(subEvents.count('error'), 0, everything());
    assert.deepEqual(subEvents.of('state').map((s) => s.newState), ['subscribing', 'subscribed'], everything());
    assert.equal(client.state, Centrifuge.State.Connected);
    assert.equal(sub.state, Centrifuge.SubscriptionState.Subscribed);
    // The SDK takes the client id of a refresh reply that carries one: it must stay the same.
    assert.equal(client._client, clientId);
    // A token every ~5 s for a minute: about 12 of each, so at least 10.
    assert.ok(refreshes.connection >= 10, JSON.stringify(refreshes));
    assert.ok(refreshes.subscription >= 10, JSON.stringify(refreshes));
    // Every publication arrived once, in order, with consecutive offsets.
    const pubs = subEvents.of('publication');
    assert.deepEqual(pubs.map((p) => p.data), Array.from({ length: RUN_FOR }, (_, n) => ({ n })));
    const offsets = pubs.map((p) => p.offset);
    assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i), `offsets: ${offsets}`);
  } catch (err) {
    failure = err;
  }
  client.disconnect();
  const died = herald.exitedUnexpectedly();
  const log = herald.log();
  await herald.stop();
  if (!failure && died) failure = new Error(`Herald exited during the test: ${JSON.stringify(died)}`);
  if (failure) {
    if (failure instanceof Error) failure.message += `\n--- herald server output ---\n${log}`;
    throw failure;
  }
});
