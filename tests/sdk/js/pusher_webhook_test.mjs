// Pusher webhooks of Herald checked by the official `pusher` server SDK (unmodified), as a
// Laravel or Node backend checks them: every request passes `pusher.webhook(req).isValid()` with
// the app's key and secret (and fails with another secret), and its events are what pusher-js
// clients did: channel_occupied / channel_vacated, member_added / member_removed (once per
// user), client_event (with socket_id and user_id) and cache_miss.
//
// Run: HERALD_BIN=<herald> node --test pusher_webhook_test.mjs   (from tests/sdk/js, after `npm ci`)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import Pusher from 'pusher';
import PusherJS from 'pusher-js';
import { Herald } from './herald.mjs';

const WAIT = 5000;
const APP = { appId: '42', key: 'hook-app-key', secret: 'hook-app-secret' };

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(check, what) {
  const deadline = Date.now() + WAIT;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${WAIT} ms`);
    await sleep(20);
  }
}

/** An app backend's webhook endpoint: keeps every request as the SDK's WebHook sees it. */
async function startReceiver() {
  const received = [];
  const server = createServer((req, res) => {
    let rawBody = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      rawBody += chunk;
    });
    req.on('end', () => {
      received.push({ headers: req.headers, rawBody });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}/pusher/webhook`,
    received,
    close: () =>
      new Promise((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** A pusher-js client of `user`, signing its own channel authorizations with the server SDK. */
function client(herald, user, closers) {
  const signer = new Pusher(APP);
  const pusher = new PusherJS(APP.key, {
    wsHost: '127.0.0.1',
    wsPort: herald.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'mt1',
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const member = channelName.startsWith('presence-') ? { user_id: user, user_info: { name: user } } : undefined;
        callback(null, signer.authorizeChannel(socketId, channelName, member));
      },
    },
  });
  closers.push(() => pusher.disconnect());
  return pusher;
}

async function subscribed(pusher, name) {
  const channel = pusher.subscribe(name);
  await until(() => channel.subscribed, `subscribing to ${name}`);
  return channel;
}

test('webhooks are signed as Pusher signs them and tell what the clients did', async () => {
  const receiver = await startReceiver();
  const herald = new Herald({
    extraConfig: `[[channel.namespaces]]
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
webhook_url = "${receiver.url}"
webhook_events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event", "cache_miss"]`,
  });
  await herald.start();
  const closers = [];
  const sdk = new Pusher(APP);
  const impostor = new Pusher({ ...APP, secret: 'not-the-secret' });
  /** Every event received so far, each request checked by the SDK first. */
  const events = () =>
    receiver.received.flatMap((request) => {
      const hook = sdk.webhook(request);
      assert.ok(hook.isValid(), `valid signature: ${JSON.stringify(request.headers)}`);
      assert.equal(impostor.webhook(request).isValid(), false, 'another secret does not verify it');
      assert.ok(hook.getTime() instanceof Date);
      return hook.getEvents();
    });
  const named = (name) => events().filter((e) => e.name === name);
  const waitFor = async (name, count = 1) => {
    await until(() => named(name).length >= count, `${count} × ${name} (got ${JSON.stringify(events())})`);
    return named(name);
  };
  try {
    const alice = client(herald, 'alice', closers);
    const alice2 = client(herald, 'alice', closers);
    const bob = client(herald, 'bob', closers);
    await subscribed(alice, 'presence-room');
    assert.deepEqual((await waitFor('channel_occupied'))[0], { name: 'channel_occupied', channel: 'presence-room' });
    assert.equal((await waitFor('member_added'))[0].user_id, 'alice');
    await subscribed(alice2, 'presence-room');
    const bobRoom = await subscribed(bob, 'presence-room');
    assert.deepEqual(
      (await waitFor('member_added', 2)).map((e) => e.user_id),
      ['alice', 'bob'],
      'alice\'s second connection is no new member',
    );

    assert.ok(bobRoom.trigger('client-typing', { on: true }));
    const [event] = await waitFor('client_event');
    assert.equal(event.channel, 'presence-room');
    assert.equal(event.event, 'client-typing');
    assert.deepEqual(JSON.parse(event.data), { on: true });
    assert.equal(event.socket_id, bob.connection.socket_id);
    assert.equal(event.user_id, 'bob');

    const cache = alice.subscribe('cache-prices');
    let missed = false;
    cache.bind('pusher:cache_miss', () => {
      missed = true;
    });
    await until(() => missed, 'the client hears of the cache miss');
    assert.equal((await waitFor('cache_miss'))[0].channel, 'cache-prices');

    bob.unsubscribe('presence-room');
    assert.equal((await waitFor('member_removed'))[0].user_id, 'bob');
    alice2.disconnect();
    await sleep(300);
    assert.equal(named('member_removed').length, 1, 'alice still has a connection');
    alice.disconnect();
    assert.deepEqual(
      (await waitFor('member_removed', 2)).map((e) => e.user_id),
      ['bob', 'alice'],
    );
    const vacated = (await waitFor('channel_vacated', 2)).map((e) => e.channel).sort();
    assert.deepEqual(vacated, ['cache-prices', 'presence-room']);
  } catch (e) {
    e.message += `\n--- herald output ---\n${herald.log(4000)}`;
    throw e;
  } finally {
    for (const close of closers) close();
    await herald.stop();
    await receiver.close();
  }
});
