// The Pusher Channels HTTP API of Herald against the official Pusher Node.js server SDK
// (`pusher` on npm, unmodified): what a Laravel backend does with BROADCAST_DRIVER=pusher.
// Events it triggers reach centrifuge-js subscribers of the app's namespace; channel queries
// and user termination see those subscribers; a wrong secret, an unknown app and bad input are
// refused with the status Pusher answers.
//
// Run: node --test pusher_http_test.mjs   (from tests/sdk/js, after `npm ci`)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Pusher from 'pusher';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { Herald } from './herald.mjs';

const WAIT = 5000;
const APP = { appId: '42', key: 'herald-app-key', secret: 'herald-app-secret' };

const extraConfig = `[[channel.namespaces]]
name = "shop"
presence = true
allow_subscribe_for_client = true
allow_presence_for_subscriber = true

[[pusher.apps]]
id = "${APP.appId}"
key = "${APP.key}"
secret = "${APP.secret}"
namespace = "shop"`;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The official SDK pointed at Herald (plain HTTP on its port), with `secret` if given. */
function sdk(herald, overrides = {}) {
  return new Pusher({ ...APP, host: '127.0.0.1', port: String(herald.port), useTLS: false, ...overrides });
}

/** A connected centrifuge-js client of `user`; `publications` collects every publication. */
async function subscriber(herald, user, channel) {
  const client = new Centrifuge(herald.wsUrl, { websocket: WebSocket, token: herald.token(user), timeout: WAIT });
  const publications = [];
  const disconnects = [];
  client.on('disconnected', (ctx) => disconnects.push(ctx));
  const sub = client.newSubscription(channel);
  sub.on('publication', (ctx) => publications.push(ctx));
  const subscribed = new Promise((resolve, reject) => {
    sub.once('subscribed', resolve);
    sub.once('error', (ctx) => reject(new Error(`subscribe ${channel}: ${JSON.stringify(ctx)}`)));
  });
  client.connect();
  sub.subscribe();
  await subscribed;
  return { client, publications, disconnects };
}

async function until(check, what) {
  const deadline = Date.now() + WAIT;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${WAIT} ms`);
    await sleep(20);
  }
}

/** The SDK's rejection for a refused request: its HTTP status and body. */
async function refusal(promise) {
  try {
    await promise;
  } catch (e) {
    return { status: e.status, body: e.body };
  }
  assert.fail('the request was accepted');
}

async function withHerald(body) {
  const herald = new Herald({ extraConfig });
  await herald.start();
  const clients = [];
  try {
    await body(herald, clients);
  } finally {
    for (const c of clients) c.client.disconnect();
    await herald.stop();
  }
}

test('trigger and triggerBatch reach centrifuge-js subscribers of the app namespace', { timeout: 60000 }, async () => {
  await withHerald(async (herald, clients) => {
    const orders = await subscriber(herald, 'alice', 'shop:orders');
    const invoices = await subscriber(herald, 'bob', 'shop:invoices');
    clients.push(orders, invoices);
    const pusher = sdk(herald);

    const response = await pusher.trigger('orders', 'order.created', { id: 7, total: '9.50' });
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), {});
    await until(() => orders.publications.length === 1, 'the triggered event');
    assert.deepEqual(orders.publications[0].data, { id: 7, total: '9.50' });
    assert.equal(orders.publications[0].tags.event, 'order.created');

    // Text that is not JSON arrives as a string.
    await pusher.trigger(['orders', 'invoices'], 'note', 'plain text');
    await until(() => orders.publications.length === 2 && invoices.publications.length === 1, 'the note');
    assert.equal(orders.publications[1].data, 'plain text');
    assert.equal(invoices.publications[0].data, 'plain text');

    const batch = await pusher.triggerBatch([
      { channel: 'orders', name: 'order.paid', data: { id: 7 } },
      { channel: 'invoices', name: 'invoice.sent', data: { id: 70 } },
      { channel: 'orders', name: 'order.shipped', data: { id: 7 } },
    ]);
    assert.equal(batch.status, 200);
    await until(() => orders.publications.length === 4 && invoices.publications.length === 2, 'the batch');
    assert.deepEqual(orders.publications.slice(2).map((p) => p.tags.event), ['order.paid', 'order.shipped']);
    assert.deepEqual(invoices.publications[1].data, { id: 70 });

    // info=subscription_count answers with the channel's subscribers.
    const counted = await pusher.trigger('orders', 'ping', {}, { info: 'subscription_count' });
    assert.deepEqual(await counted.json(), { channels: { orders: { subscription_count: 1 } } });
  });
});

test('channel queries and terminating a user see the centrifuge-js connections', { timeout: 60000 }, async () => {
  await withHerald(async (herald, clients) => {
    // Alice twice, Bob once, in one presence channel; Carol in a public channel.
    const alice1 = await subscriber(herald, 'alice', 'shop:presence-room');
    const alice2 = await subscriber(herald, 'alice', 'shop:presence-room');
    const bob = await subscriber(herald, 'bob', 'shop:presence-room');
    const carol = await subscriber(herald, 'carol', 'shop:lobby');
    clients.push(alice1, alice2, bob, carol);
    const pusher = sdk(herald);

    const all = await (await pusher.get({ path: '/channels' })).json();
    assert.deepEqual(Object.keys(all.channels).sort(), ['lobby', 'presence-room']);

    const presence = await pusher.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } });
    assert.deepEqual(await presence.json(), { channels: { 'presence-room': { user_count: 2 } } });

    const room = await pusher.get({ path: '/channels/presence-room', params: { info: 'user_count,subscription_count' } });
    assert.deepEqual(await room.json(), { occupied: true, user_count: 2, subscription_count: 3 });
    const empty = await pusher.get({ path: '/channels/nobody-here' });
    assert.deepEqual(await empty.json(), { occupied: false });

    const users = await (await pusher.get({ path: '/channels/presence-room/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);

    const terminated = await pusher.terminateUserConnections('alice');
    assert.equal(terminated.status, 200);
    await until(() => alice1.disconnects.length === 1 && alice2.disconnects.length === 1, "alice's connections closed");
    await sleep(300);
    assert.equal(bob.disconnects.length, 0, 'bob stays connected');
    assert.equal(carol.disconnects.length, 0, 'carol stays connected');
  });
});

test('a wrong secret, an unknown app and refused input get the status Pusher answers', { timeout: 60000 }, async () => {
  await withHerald(async (herald) => {
    const forged = await refusal(sdk(herald, { secret: 'not-the-secret' }).trigger('orders', 'e', {}));
    assert.equal(forged.status, 401);
    assert.match(forged.body, /auth_signature/);

    const unknown = await refusal(sdk(herald, { appId: '7' }).trigger('orders', 'e', {}));
    assert.equal(unknown.status, 404);
    assert.match(unknown.body, /app id "7"/);

    const pusher = sdk(herald);
    const badInfo = await refusal(pusher.get({ path: '/channels', params: { info: 'user_count' } }));
    assert.equal(badInfo.status, 400);
    assert.match(badInfo.body, /filter_by_prefix=presence-/);

    const notPresence = await refusal(pusher.get({ path: '/channels/lobby/users' }));
    assert.equal(notPresence.status, 400);
    assert.match(notPresence.body, /not a presence channel/);

    // Past the SDK's own checks: eleven events in one batch.
    const tooMany = Array.from({ length: 11 }, (_, i) => ({ channel: 'orders', name: 'e', data: String(i) }));
    const batch = await refusal(pusher.triggerBatch(tooMany));
    assert.equal(batch.status, 400);
    assert.match(batch.body, /batch has 11 entries, at most 10/);
  });
});
