// The Pusher Channels WebSocket protocol (version 7, `/app/<key>`) of Herald against the
// unmodified npm clients of a Laravel front end: pusher-js 8.6.0, and laravel-echo 2.5.0 with
// pusher-js as its broadcaster (handed over in the `Pusher` option: Node has no window.Pusher).
// An auth server in the test signs channel authorizations and user sign-ins with the official
// `pusher` server SDK, as a Laravel backend's /broadcasting/auth does; pusher-js reaches it with
// its own 'ajax' auth transport (the XMLHttpRequest its Node build bundles), no custom handler.
//
// Proven: public, private, private-encrypted, presence and cache channels receive events
// triggered through the Pusher HTTP API (also leaving out the socket_id it names) and the
// Centrifugo server API; refused authorizations (by the auth endpoint, a forged signature, no
// signature) reach the channel's pusher:subscription_error; presence members are users, not
// connections; client events reach the other subscribers only, carry the sender's user_id on
// presence channels, and are refused on a connection that stays open when the app disallows them
// or past 10 a second (4301); sign-in, events sent to a user, and terminating a user's
// connections; an unknown app key is refused with 4001 and pusher-js stops reconnecting; Laravel
// Echo's channel / private / join API with whispers and its error callback.
//
// Run: HERALD_BIN=<herald> node --test pusher_ws_test.mjs   (from tests/sdk/js, after `npm ci`)
// PUSHER_JS_LOG=1 prints pusher-js's own log, with every event it sends and receives.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import Pusher from 'pusher';
import PusherJS from 'pusher-js';
import Echo from 'laravel-echo';
import WebSocket from 'ws';
import { Herald } from './herald.mjs';

const WAIT = 5000;
const APP = { appId: '42', key: 'herald-app-key', secret: 'herald-app-secret' };
const QUIET = { appId: '43', key: 'quiet-app-key', secret: 'quiet-app-secret' };
// Encrypted channels: the app server derives each channel's key from this; Herald never sees it.
const MASTER_KEY = Buffer.alloc(32, 7).toString('base64');

const extraConfig = `[[channel.namespaces]]
name = "shop"
presence = true
join_leave = true
history_size = 10
history_ttl = "300s"
allow_subscribe_for_client = true

[[pusher.apps]]
id = "${APP.appId}"
key = "${APP.key}"
secret = "${APP.secret}"
namespace = "shop"
client_events = true

[[pusher.apps]]
id = "${QUIET.appId}"
key = "${QUIET.key}"
secret = "${QUIET.secret}"
namespace = "shop"`;

if (process.env.PUSHER_JS_LOG) PusherJS.log = (message) => console.error(`[pusher-js] ${message}`);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, what) {
  const deadline = Date.now() + WAIT;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${WAIT} ms`);
    await sleep(20);
  }
}

/** The official server SDK pointed at Herald's Pusher HTTP API. */
function sdk(herald, app = APP, overrides = {}) {
  return new Pusher({ ...app, host: '127.0.0.1', port: String(herald.port), useTLS: false, ...overrides });
}

/**
 * The app server's auth endpoints, signing with the `pusher` SDK. pusher-js posts
 * `socket_id`, `channel_name` and the `params` its options name: `user` (and `name`, the user
 * info) says who asks, `app` which app signs, `mode` how to answer: `sign` (default), `refuse`
 * (403), `forge` (signed with a wrong secret), `empty` (`{"auth": ""}`).
 */
async function startAuthServer() {
  const signers = {};
  for (const app of [APP, QUIET]) {
    signers[app.appId] = {
      sign: new Pusher({ ...app, encryptionMasterKeyBase64: MASTER_KEY }),
      forge: new Pusher({ ...app, secret: 'not-the-app-secret', encryptionMasterKeyBase64: MASTER_KEY }),
    };
  }
  const requests = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      body += chunk;
    });
    req.on('end', () => {
      const reply = (status, value) => {
        const text = typeof value === 'string' ? value : JSON.stringify(value);
        res.writeHead(status, { 'Content-Type': typeof value === 'string' ? 'text/plain' : 'application/json' });
        res.end(text);
      };
      const params = Object.fromEntries(new URLSearchParams(body));
      requests.push({ path: req.url, ...params });
      const { socket_id: socketId, channel_name: channel, user, app = APP.appId, mode = 'sign' } = params;
      if (mode === 'refuse') return reply(403, 'not allowed');
      const signer = signers[app]?.[mode === 'forge' ? 'forge' : 'sign'];
      if (!signer || !user) return reply(400, `no app ${app} or no user`);
      const userInfo = { name: params.name || user };
      try {
        if (req.method === 'POST' && req.url === '/pusher/auth') {
          if (mode === 'empty') return reply(200, { auth: '' });
          const member = channel.startsWith('presence-') ? { user_id: user, user_info: userInfo } : undefined;
          return reply(200, signer.authorizeChannel(socketId, channel, member));
        }
        if (req.method === 'POST' && req.url === '/pusher/user-auth') {
          return reply(200, signer.authenticateUser(socketId, { id: user, user_info: userInfo }));
        }
        return reply(404, `no endpoint ${req.method} ${req.url}`);
      } catch (e) {
        return reply(500, String(e?.message ?? e));
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function clientOptions(herald) {
  return {
    wsHost: '127.0.0.1',
    wsPort: herald.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
  };
}

/**
 * A pusher-js client (connecting at once) of `user`, with what its connection reports:
 * `errors` (connection 'error' events), `states` ({previous, current}), `socketIds` (one per
 * connection it opened).
 */
function client(ctx, { user = 'alice', name, app = APP, mode } = {}) {
  const params = { user, name: name ?? user[0].toUpperCase() + user.slice(1), app: app.appId };
  if (mode) params.mode = mode;
  const pusher = new PusherJS(app.key, {
    ...clientOptions(ctx.herald),
    channelAuthorization: { endpoint: `${ctx.auth.url}/pusher/auth`, transport: 'ajax', params },
    userAuthentication: { endpoint: `${ctx.auth.url}/pusher/user-auth`, transport: 'ajax', params },
  });
  const c = { user, pusher, errors: [], states: [], socketIds: [] };
  const sockets = [];
  pusher.connection.bind('error', (e) => c.errors.push(e));
  pusher.connection.bind('state_change', (s) => c.states.push(s));
  pusher.connection.bind('connected', (d) => {
    c.socketIds.push(d?.socket_id);
    sockets.push(pusher.connection.connection?.transport?.socket);
  });
  ctx.closers.push(() => {
    pusher.disconnect();
    // When the server closes with a 4000-4099 code, pusher-js closes the already closed
    // faye-websocket client once more, which arms a 30 s close timer nothing clears: it only
    // holds the process open, so clear it.
    for (const socket of sockets) if (socket?.readyState === 3) clearTimeout(socket._closeTimer);
  });
  return c;
}

async function connected(...clients) {
  for (const c of clients) {
    await until(() => c.pusher.connection.state === 'connected', `${c.user} connected (state ${c.pusher.connection.state}, errors ${JSON.stringify(c.errors)})`);
  }
}

/** Subscribes and waits for pusher:subscription_succeeded; `events` collects what the channel emits. */
async function subscribe(c, name) {
  const channel = c.pusher.subscribe(name);
  const events = [];
  channel.bind_global((event, data) => events.push({ event, data }));
  await until(
    () => channel.subscribed || events.some((e) => e.event === 'pusher:subscription_error'),
    `${c.user} subscribing to ${name}`,
  );
  const error = events.find((e) => e.event === 'pusher:subscription_error');
  if (error) throw new Error(`${c.user} subscribing to ${name}: ${JSON.stringify(error.data)}`);
  return { channel, events };
}

/** Subscribes expecting a refusal; returns the pusher:subscription_error data. */
async function subscriptionError(c, name) {
  const channel = c.pusher.subscribe(name);
  const events = [];
  channel.bind_global((event, data) => events.push({ event, data }));
  await until(
    () => channel.subscribed || events.some((e) => e.event === 'pusher:subscription_error'),
    `${c.user} refused ${name}`,
  );
  assert.equal(channel.subscribed, false, `${c.user} must not be subscribed to ${name}`);
  return { channel, events, error: events.find((e) => e.event === 'pusher:subscription_error').data };
}

const named = (events, name) => events.filter((e) => e.event === name).map((e) => e.data);

/** The code of a connection 'error' event: pusher-js wraps a pusher:error / close code as
 * {type: 'PusherError', data: {code}} or, when refusing a handshake, inside {type: 'WebSocketError', error}. */
function errorCode(e) {
  return e?.data?.code ?? e?.error?.data?.code;
}

async function withHerald(body) {
  const herald = new Herald({ extraConfig });
  await herald.start();
  const auth = await startAuthServer();
  const ctx = { herald, auth, closers: [] };
  try {
    await body(ctx);
  } catch (e) {
    e.message += `\n--- herald output ---\n${herald.log(4000)}`;
    throw e;
  } finally {
    for (const close of ctx.closers) {
      try {
        close();
      } catch {
        // already closed
      }
    }
    await herald.stop();
    await auth.close();
  }
}

test('public channels get events from the Pusher HTTP API and the Centrifugo API', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const alice = client(ctx, { user: 'alice' });
    const bob = client(ctx, { user: 'bob' });
    await connected(alice, bob);
    // connection_established: a "<digits>.<digits>" socket id and the 120 s activity timeout.
    assert.match(alice.pusher.connection.socket_id, /^\d+\.\d+$/);
    assert.notEqual(alice.pusher.connection.socket_id, bob.pusher.connection.socket_id);
    assert.equal(alice.pusher.connection.activityTimeout, 120000);

    const a = await subscribe(alice, 'orders');
    const b = await subscribe(bob, 'orders');
    assert.deepEqual(named(a.events, 'pusher:subscription_succeeded'), [{}]);
    const api = sdk(ctx.herald);

    const created = [];
    a.channel.bind('order.created', (data) => created.push(data));
    await api.trigger('orders', 'order.created', { id: 7 });
    await until(() => created.length === 1 && named(b.events, 'order.created').length === 1, 'order.created');
    assert.deepEqual(created[0], { id: 7 });
    assert.deepEqual(named(b.events, 'order.created')[0], { id: 7 });

    // Text that is not JSON arrives as that text.
    await api.trigger('orders', 'note', 'plain text');
    await until(() => named(a.events, 'note').length === 1, 'the note');
    assert.equal(named(a.events, 'note')[0], 'plain text');

    // The Centrifugo server API: the `event` tag names the event, none makes it `message`.
    await ctx.herald.api('publish', { channel: 'shop:orders', data: { id: 8 }, tags: { event: 'order.updated' } });
    await ctx.herald.api('publish', { channel: 'shop:orders', data: { id: 9 } });
    await until(() => named(a.events, 'message').length === 1 && named(b.events, 'message').length === 1, 'the untagged publication');
    assert.deepEqual(named(a.events, 'order.updated'), [{ id: 8 }]);
    assert.deepEqual(named(a.events, 'message'), [{ id: 9 }]);

    // The subscribers are counted, and a trigger naming alice's socket_id leaves her out.
    const info = await api.get({ path: '/channels/orders', params: { info: 'subscription_count' } });
    assert.deepEqual(await info.json(), { occupied: true, subscription_count: 2 });
    await api.trigger('orders', 'order.paid', { id: 7 }, { socket_id: alice.pusher.connection.socket_id });
    await until(() => named(b.events, 'order.paid').length === 1, 'order.paid to bob');
    await sleep(300);
    assert.deepEqual(named(a.events, 'order.paid'), [], 'the socket_id named in the trigger is left out');

    // After unsubscribing, alice gets nothing more.
    alice.pusher.unsubscribe('orders');
    await sleep(200);
    await api.trigger('orders', 'order.shipped', { id: 7 });
    await until(() => named(b.events, 'order.shipped').length === 1, 'order.shipped to bob');
    await sleep(300);
    assert.deepEqual(named(a.events, 'order.shipped'), []);
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  });
});

test('private channels: a valid authorization subscribes, refused and forged ones do not', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const alice = client(ctx, { user: 'alice' });
    const refused = client(ctx, { user: 'bob', mode: 'refuse' });
    const forged = client(ctx, { user: 'carol', mode: 'forge' });
    const empty = client(ctx, { user: 'dave', mode: 'empty' });
    await connected(alice, refused, forged, empty);

    const a = await subscribe(alice, 'private-orders');
    const asked = ctx.auth.requests.filter((r) => r.path === '/pusher/auth' && r.user === 'alice');
    assert.deepEqual(asked.map((r) => [r.socket_id, r.channel_name]), [[alice.pusher.connection.socket_id, 'private-orders']]);

    // The auth endpoint answers 403: pusher-js reports it itself, nothing reaches Herald.
    const r = await subscriptionError(refused, 'private-orders');
    assert.equal(r.error.type, 'AuthError');
    assert.equal(r.error.status, 403);
    assert.match(r.error.error, /received status: 403/);

    // Signed with a wrong secret, or no signature at all: Herald refuses the subscription.
    const f = await subscriptionError(forged, 'private-orders');
    assert.equal(f.error.type, 'AuthError');
    assert.equal(f.error.status, 401);
    assert.ok(typeof f.error.error === 'string' && f.error.error.length > 0, JSON.stringify(f.error));
    const e = await subscriptionError(empty, 'private-orders');
    assert.equal(e.error.type, 'AuthError');
    assert.equal(e.error.status, 401);

    const api = sdk(ctx.herald);
    await api.trigger('private-orders', 'order.paid', { id: 7 });
    await ctx.herald.api('publish', { channel: 'shop:private-orders', data: { id: 8 }, tags: { event: 'order.refunded' } });
    await until(() => named(a.events, 'order.refunded').length === 1, 'the events on private-orders');
    assert.deepEqual(named(a.events, 'order.paid'), [{ id: 7 }]);
    assert.deepEqual(named(a.events, 'order.refunded'), [{ id: 8 }]);
    await sleep(300);
    for (const refusal of [r, f, e]) {
      assert.deepEqual(named(refusal.events, 'order.paid'), [], 'a refused client gets no events');
    }
    const info = await api.get({ path: '/channels/private-orders', params: { info: 'subscription_count' } });
    assert.deepEqual(await info.json(), { occupied: true, subscription_count: 1 });

    // A refused subscription leaves the connection open.
    for (const c of [forged, empty]) {
      assert.equal(c.pusher.connection.state, 'connected');
      assert.equal(c.socketIds.length, 1, `${c.user} kept its connection`);
    }
  });
});

test('private-encrypted channels: the shared secret from the auth endpoint decrypts what the SDK encrypts', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const alice = client(ctx, { user: 'alice' });
    const forged = client(ctx, { user: 'carol', mode: 'forge' });
    await connected(alice, forged);
    const a = await subscribe(alice, 'private-encrypted-vault');
    const f = await subscriptionError(forged, 'private-encrypted-vault');
    assert.equal(f.error.status, 401);

    const api = sdk(ctx.herald, APP, { encryptionMasterKeyBase64: MASTER_KEY });
    await api.trigger('private-encrypted-vault', 'secret', { code: 42 });
    await until(() => named(a.events, 'secret').length === 1, 'the decrypted event');
    assert.deepEqual(named(a.events, 'secret'), [{ code: 42 }]);
  });
});

test('presence channels list users once, however many connections they have', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const alice1 = client(ctx, { user: 'alice' });
    const alice2 = client(ctx, { user: 'alice' });
    const bob = client(ctx, { user: 'bob' });
    await connected(alice1, alice2, bob);

    const a1 = await subscribe(alice1, 'presence-room');
    assert.equal(a1.channel.members.count, 1);
    assert.deepEqual(a1.channel.members.me, { id: 'alice', info: { name: 'Alice' } });

    const b = await subscribe(bob, 'presence-room');
    assert.equal(b.channel.members.count, 2);
    assert.deepEqual(b.channel.members.get('alice'), { id: 'alice', info: { name: 'Alice' } });
    assert.deepEqual(b.channel.members.me, { id: 'bob', info: { name: 'Bob' } });
    await until(() => named(a1.events, 'pusher:member_added').length === 1, 'bob added for alice');
    assert.deepEqual(named(a1.events, 'pusher:member_added'), [{ id: 'bob', info: { name: 'Bob' } }]);
    assert.equal(a1.channel.members.count, 2);

    // Alice's second connection: one member still, nobody is told she joined again.
    const a2 = await subscribe(alice2, 'presence-room');
    assert.equal(a2.channel.members.count, 2);
    const ids = [];
    a2.channel.members.each((m) => ids.push(m.id));
    assert.deepEqual(ids.sort(), ['alice', 'bob']);
    await sleep(400);
    assert.deepEqual(named(b.events, 'pusher:member_added'), [], 'alice joining twice is one member');
    const users = await (await sdk(ctx.herald).get({ path: '/channels/presence-room/users' })).json();
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['alice', 'bob']);

    // Her first connection leaves: she is still there. Her last one leaves: she is removed.
    alice1.pusher.disconnect();
    await sleep(500);
    assert.deepEqual(named(b.events, 'pusher:member_removed'), [], 'alice still has a connection');
    alice2.pusher.unsubscribe('presence-room');
    await until(() => named(b.events, 'pusher:member_removed').length === 1, 'alice removed for bob');
    assert.deepEqual(named(b.events, 'pusher:member_removed'), [{ id: 'alice', info: { name: 'Alice' } }]);
    assert.equal(b.channel.members.count, 1);
    assert.deepEqual([...alice1.errors, ...alice2.errors, ...bob.errors], []);
  });
});

test('client events reach the other subscribers, with the user_id on presence channels', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const alice = client(ctx, { user: 'alice' });
    const bob = client(ctx, { user: 'bob' });
    await connected(alice, bob);

    const ap = await subscribe(alice, 'private-chat');
    const bp = await subscribe(bob, 'private-chat');
    assert.equal(ap.channel.trigger('client-typing', { typing: true }), true);
    await until(() => named(bp.events, 'client-typing').length === 1, 'client-typing on private-chat');
    assert.deepEqual(named(bp.events, 'client-typing'), [{ typing: true }]);

    const metadata = [];
    const apr = await subscribe(alice, 'presence-chat');
    const bpr = await subscribe(bob, 'presence-chat');
    bpr.channel.bind('client-typing', (data, meta) => metadata.push({ data, meta }));
    bpr.channel.trigger('client-typing', 'bob types');
    apr.channel.bind('client-typing', (data, meta) => metadata.push({ data, meta, to: 'alice' }));
    apr.channel.trigger('client-typing', { typing: false });
    await until(() => metadata.length === 2, 'client-typing on presence-chat');
    await sleep(300);
    // Each gets the other's event, never its own, with the sender's user_id.
    assert.deepEqual(metadata.sort((x, y) => String(x.to).localeCompare(String(y.to))), [
      { data: 'bob types', meta: { user_id: 'bob' }, to: 'alice' },
      { data: { typing: false }, meta: { user_id: 'alice' } },
    ]);
    assert.deepEqual(named(ap.events, 'client-typing'), [], 'the sender does not get its own event');

    // Public channels take no client events: an error, the connection stays.
    const apub = await subscribe(alice, 'lobby');
    const bpub = await subscribe(bob, 'lobby');
    apub.channel.trigger('client-wave', {});
    await until(() => alice.errors.length === 1, 'the refusal of a client event on a public channel');
    assert.equal(alice.errors[0].type, 'PusherError');
    assert.ok(alice.errors[0].data?.message, JSON.stringify(alice.errors[0]));
    await sleep(300);
    assert.deepEqual(named(bpub.events, 'client-wave'), []);
    assert.equal(alice.pusher.connection.state, 'connected');
    assert.equal(alice.socketIds.length, 1);
    assert.deepEqual(bob.errors, []);
  });
});

test('client events are refused when the app does not allow them, and past 10 a second', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    // App 43 leaves client_events off.
    const quietA = client(ctx, { user: 'alice', app: QUIET });
    const quietB = client(ctx, { user: 'bob', app: QUIET });
    await connected(quietA, quietB);
    await subscribe(quietA, 'private-quiet');
    const qb = await subscribe(quietB, 'private-quiet');
    quietA.pusher.channel('private-quiet').trigger('client-typing', { typing: true });
    await until(() => quietA.errors.length === 1, 'the refusal by an app without client events');
    assert.equal(quietA.errors[0].type, 'PusherError');
    assert.ok(quietA.errors[0].data?.message, JSON.stringify(quietA.errors[0]));
    await sleep(300);
    assert.deepEqual(named(qb.events, 'client-typing'), []);
    assert.equal(quietA.pusher.connection.state, 'connected');
    assert.equal(quietA.socketIds.length, 1);

    // App 42: fifteen at once, the excess refused with 4301 on an open connection.
    const alice = client(ctx, { user: 'alice' });
    const bob = client(ctx, { user: 'bob' });
    await connected(alice, bob);
    const a = await subscribe(alice, 'private-burst');
    const b = await subscribe(bob, 'private-burst');
    for (let i = 0; i < 15; i++) a.channel.trigger('client-burst', { i });
    const limited = () => alice.errors.filter((e) => errorCode(e) === 4301).length;
    await until(() => named(b.events, 'client-burst').length + limited() === 15, 'every event delivered or refused');
    const delivered = named(b.events, 'client-burst');
    assert.ok(delivered.length >= 1 && delivered.length <= 10, `delivered ${delivered.length} of 15`);
    assert.ok(limited() >= 5, `${limited()} refused with 4301`);
    assert.deepEqual(delivered.map((d) => d.i), [...delivered.keys()], 'the first ones pass, in order');
    assert.equal(alice.errors.length, limited(), JSON.stringify(alice.errors));
    await sleep(1100);
    a.channel.trigger('client-burst', { i: 'later' });
    await until(() => named(b.events, 'client-burst').some((d) => d.i === 'later'), 'a client event a second later');
    assert.equal(alice.pusher.connection.state, 'connected');
    assert.equal(alice.socketIds.length, 1, 'the connection stayed open');
  });
});

test('cache channels replay their last event to a new subscriber, or say cache_miss', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const api = sdk(ctx.herald);
    await api.trigger('cache-prices', 'price', { v: 1 });
    await api.trigger('cache-prices', 'price', { v: 2 });
    await ctx.herald.api('publish', { channel: 'shop:private-cache-doc', data: { rev: 3 }, tags: { event: 'doc.saved' } });
    await api.trigger('presence-cache-room', 'topic', { text: 'hello' });

    const alice = client(ctx, { user: 'alice' });
    await connected(alice);
    const hit = await subscribe(alice, 'cache-prices');
    await until(() => named(hit.events, 'price').length === 1, 'the cached price');
    await sleep(300);
    assert.deepEqual(hit.events.map((e) => e.event), ['pusher:subscription_succeeded', 'price'], 'only the last event, right after subscription_succeeded');
    assert.deepEqual(named(hit.events, 'price'), [{ v: 2 }]);
    await api.trigger('cache-prices', 'price', { v: 3 });
    await until(() => named(hit.events, 'price').length === 2, 'a live price after the cached one');
    assert.deepEqual(named(hit.events, 'price')[1], { v: 3 });

    const priv = await subscribe(alice, 'private-cache-doc');
    await until(() => named(priv.events, 'doc.saved').length === 1, 'the cached doc.saved');
    assert.deepEqual(named(priv.events, 'doc.saved'), [{ rev: 3 }]);
    const pres = await subscribe(alice, 'presence-cache-room');
    await until(() => named(pres.events, 'topic').length === 1, 'the cached topic');
    assert.deepEqual(named(pres.events, 'topic'), [{ text: 'hello' }]);
    assert.equal(pres.channel.members.count, 1);

    const miss = await subscribe(alice, 'cache-empty');
    await until(() => miss.events.some((e) => e.event === 'pusher:cache_miss'), 'pusher:cache_miss');
    await sleep(300);
    assert.deepEqual(miss.events.map((e) => e.event), ['pusher:subscription_succeeded', 'pusher:cache_miss']);
    assert.deepEqual(alice.errors, []);
  });
});

test('signin, events sent to the user, and terminating the user closes its connection', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const alice = client(ctx, { user: 'alice' });
    const bob = client(ctx, { user: 'bob' });
    await connected(alice, bob);
    const notices = { alice: [], bob: [] };
    alice.pusher.user.bind('notice', (data) => notices.alice.push(data));
    bob.pusher.user.bind('notice', (data) => notices.bob.push(data));
    const firstSocket = alice.pusher.connection.socket_id;
    alice.pusher.signin();
    bob.pusher.signin();

    await until(() => alice.pusher.user.user_data?.id === 'alice' && bob.pusher.user.user_data?.id === 'bob', 'pusher:signin_success');
    assert.deepEqual(alice.pusher.user.user_data, { id: 'alice', user_info: { name: 'Alice' } });
    const signins = ctx.auth.requests.filter((r) => r.path === '/pusher/user-auth' && r.user === 'alice');
    assert.deepEqual(signins.map((r) => r.socket_id), [firstSocket]);
    // pusher-js then subscribes to #server-to-user-alice; events sent to alice arrive there.
    await until(() => alice.pusher.user.serverToUserChannel?.subscribed === true, 'the #server-to-user-alice subscription');
    await until(() => bob.pusher.user.serverToUserChannel?.subscribed === true, 'the #server-to-user-bob subscription');
    const api = sdk(ctx.herald);
    await api.sendToUser('alice', 'notice', { text: 'for alice' });
    await until(() => notices.alice.length === 1, 'the event sent to alice');
    assert.deepEqual(notices.alice, [{ text: 'for alice' }]);

    const states = alice.states.length;
    const terminated = await api.terminateUserConnections('alice');
    assert.equal(terminated.status, 200);
    await until(
      () => alice.states.slice(states).some((s) => s.previous === 'connected' && s.current !== 'connected'),
      "alice's connection closed",
    );
    // pusher-js may reconnect; if it does, it is a new socket.
    await sleep(1500);
    if (alice.pusher.connection.state === 'connected') {
      assert.notEqual(alice.pusher.connection.socket_id, firstSocket);
    }
    assert.equal(bob.pusher.connection.state, 'connected', 'bob stays connected');
    assert.equal(bob.socketIds.length, 1);
    assert.deepEqual(notices.bob, []);
  });
});

test('an unknown app key is refused with 4001 and pusher-js stops reconnecting', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const stranger = client(ctx, { user: 'eve', app: { appId: '99', key: 'no-such-key', secret: 'x' } });
    await until(() => stranger.errors.some((e) => errorCode(e) === 4001), `error 4001 (errors: ${JSON.stringify(stranger.errors)})`);
    await until(() => ['disconnected', 'failed'].includes(stranger.pusher.connection.state), 'pusher-js giving up');
    await sleep(2500); // pusher-js retries after 1 s when it means to
    assert.ok(['disconnected', 'failed'].includes(stranger.pusher.connection.state), stranger.pusher.connection.state);
    // pusher-js was connecting from its constructor on: one refusal, then no attempt more.
    assert.deepEqual(stranger.states.map((s) => s.current), ['disconnected']);
    assert.deepEqual(stranger.socketIds, []);

    // On the wire: pusher:error with code 4001, then a close with code 4001.
    const ws = new WebSocket(`ws://127.0.0.1:${ctx.herald.port}/app/no-such-key?protocol=7&client=js&version=8.6.0&flash=false`);
    const frames = [];
    ws.on('message', (data) => frames.push(JSON.parse(String(data))));
    const code = await new Promise((resolve) => {
      const timer = setTimeout(() => {
        ws.terminate();
        resolve(null);
      }, WAIT);
      ws.on('close', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    assert.equal(frames[0]?.event, 'pusher:error', JSON.stringify(frames));
    assert.equal(frames[0].data.code, 4001);
    assert.equal(code, 4001);
  });
});

/** A Laravel Echo over pusher-js, authorizing through `authEndpoint` as Laravel apps do. */
function echo(ctx, user, mode) {
  const params = { user, name: user[0].toUpperCase() + user.slice(1) };
  if (mode) params.mode = mode;
  const e = new Echo({
    broadcaster: 'pusher',
    key: APP.key,
    Pusher: PusherJS,
    ...clientOptions(ctx.herald),
    authEndpoint: `${ctx.auth.url}/pusher/auth`,
    auth: { headers: {}, params },
  });
  ctx.closers.push(() => e.disconnect());
  return e;
}

/** Waits for an Echo channel's subscribed() callback; its error() callback fails the wait. */
function subscribed(channel, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: not subscribed within ${WAIT} ms`)), WAIT);
    channel.subscribed(() => {
      clearTimeout(timer);
      resolve();
    });
    channel.error((e) => {
      clearTimeout(timer);
      reject(new Error(`${what}: ${JSON.stringify(e)}`));
    });
  });
}

test('laravel-echo: listen, private channels with whispers, presence here/joining/leaving, errors', { timeout: 60000 }, async () => {
  await withHerald(async (ctx) => {
    const alice = echo(ctx, 'alice');
    const bob = echo(ctx, 'bob');
    const api = sdk(ctx.herald);

    // Echo.channel(): '.name' listens to the raw event name, 'Name' to App\Events\Name.
    const created = { alice: [], bob: [] };
    const shipped = [];
    const ordersA = alice.channel('orders').listen('.order.created', (d) => created.alice.push(d)).listen('OrderShipped', (d) => shipped.push(d));
    const ordersB = bob.channel('orders').listen('.order.created', (d) => created.bob.push(d));
    await Promise.all([subscribed(ordersA, 'orders for alice'), subscribed(ordersB, 'orders for bob')]);
    await api.trigger('orders', 'order.created', { id: 7 });
    await api.trigger('orders', 'App\\Events\\OrderShipped', { id: 7, carrier: 'ups' });
    await until(() => created.alice.length === 1 && created.bob.length === 1 && shipped.length === 1, 'Echo listeners on orders');
    assert.deepEqual(created.alice, [{ id: 7 }]);
    assert.deepEqual(shipped, [{ id: 7, carrier: 'ups' }]);
    // broadcast(...)->toOthers(): Laravel passes the X-Socket-ID Echo reports.
    assert.match(alice.socketId(), /^\d+\.\d+$/);
    await api.trigger('orders', 'order.created', { id: 8 }, { socket_id: alice.socketId() });
    await until(() => created.bob.length === 2, 'the event for the others');
    await sleep(300);
    assert.equal(created.alice.length, 1);

    // Echo.private(): events, and whispers between the two.
    const messages = [];
    const whispersA = [];
    const whispersB = [];
    const chatA = alice.private('chat.1').listen('.message.sent', (d) => messages.push(d)).listenForWhisper('typing', (d) => whispersA.push(d));
    const chatB = bob.private('chat.1').listenForWhisper('typing', (d) => whispersB.push(d));
    await Promise.all([subscribed(chatA, 'private-chat.1 for alice'), subscribed(chatB, 'private-chat.1 for bob')]);
    await api.trigger('private-chat.1', 'message.sent', { body: 'hi' });
    await until(() => messages.length === 1, 'message.sent on private-chat.1');
    assert.deepEqual(messages, [{ body: 'hi' }]);
    chatB.whisper('typing', { name: 'Bob' });
    await until(() => whispersA.length === 1, "bob's whisper");
    assert.deepEqual(whispersA, [{ name: 'Bob' }]);
    await sleep(300);
    assert.deepEqual(whispersB, [], 'a whisper does not come back to its sender');

    // Echo.join(): here / joining / leaving with the user info the auth endpoint signed.
    const here = { alice: [], bob: [] };
    const joining = [];
    const leaving = [];
    alice.join('room.1').here((users) => here.alice.push(users)).joining((u) => joining.push(u)).leaving((u) => leaving.push(u));
    await until(() => here.alice.length === 1, 'here() for alice');
    assert.deepEqual(here.alice[0], [{ name: 'Alice' }]);
    bob.join('room.1').here((users) => here.bob.push(users));
    await until(() => here.bob.length === 1 && joining.length === 1, 'here() for bob and joining() for alice');
    assert.deepEqual(here.bob[0].map((u) => u.name).sort(), ['Alice', 'Bob']);
    assert.deepEqual(joining, [{ name: 'Bob' }]);
    bob.leave('room.1');
    await until(() => leaving.length === 1, 'leaving() for alice');
    assert.deepEqual(leaving, [{ name: 'Bob' }]);

    // error(): a forged authorization refused by Herald.
    const mallory = echo(ctx, 'mallory', 'forge');
    const errors = [];
    mallory.private('chat.1').error((e) => errors.push(e));
    await until(() => errors.length === 1, 'error() on a forged authorization');
    assert.equal(errors[0].type, 'AuthError');
    assert.equal(errors[0].status, 401);
    chatA.whisper('typing', { name: 'Alice' });
    await until(() => whispersB.length === 1, "alice's whisper");
    assert.equal(alice.connectionStatus(), 'connected');
  });
});
