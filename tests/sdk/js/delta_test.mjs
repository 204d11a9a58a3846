// Delta compression (`delta: 'fossil'`) with the official centrifuge-js 5.x: Herald's fossil
// patches applied by the SDK's own implementation rebuild every publication, the wire carries
// patches (not whole documents), and a reconnect with recovery keeps rebuilding correctly.
//
// Run: node --test delta_test.mjs   (from tests/sdk/js, after `npm ci`)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { Herald, uniqueChannel } from './herald.mjs';

const WAIT = 5000;
const TEST_TIMEOUT = 60000;

/** A document of similar fields, some changed per version (non-ASCII included). */
function documentOf(version, seed = 1) {
  const doc = { version, title: `Rapport n°${seed} — état ✓` };
  for (let i = 0; i < 40; i++) {
    doc[`field_${i}`] = (i * 7 + seed) % 11 === version % 11 ? `changed in ${version} ü€` : `steady value ${i}`;
  }
  doc.list = Array.from({ length: 30 }, (_, i) => (i === version % 30 ? version : i));
  return doc;
}

/** Waits for `count` publications of `sub`, in order. */
function publications(sub, count) {
  const got = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${got.length}/${count} publications within ${WAIT}ms`)), WAIT);
    const onPub = (ctx) => {
      got.push(ctx);
      if (got.length === count) {
        clearTimeout(timer);
        sub.off('publication', onPub);
        resolve(got);
      }
    };
    sub.on('publication', onPub);
  });
}

function once(emitter, name) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${name}' within ${WAIT}ms`)), WAIT);
    emitter.once(name, (ctx) => {
      clearTimeout(timer);
      resolve(ctx);
    });
  });
}

async function withHerald(body) {
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
    const connected = once(client, 'connected');
    client.connect();
    await connected;
    return client;
  };
  try {
    await body({ herald, connect });
  } catch (err) {
    err.message += `\n--- herald server output ---\n${herald.log()}`;
    throw err;
  } finally {
    for (const client of clients) client.disconnect();
    await herald.stop();
  }
}

/** Raw WebSocket client: the frames as the server sent them. */
async function rawSubscriber(herald, channel, delta) {
  const ws = new WebSocket(herald.wsUrl);
  const frames = [];
  ws.on('message', (data) => frames.push(data.toString()));
  await once(ws, 'open');
  const sub = { channel };
  if (delta) sub.delta = 'fossil';
  ws.send(`${JSON.stringify({ id: 1, connect: { token: herald.token('raw') } })}\n${JSON.stringify({ id: 2, subscribe: sub })}`);
  const deadline = Date.now() + WAIT;
  while (!frames.some((f) => f.includes('"id":2')) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
  return { ws, frames };
}

function pubsOf(frames) {
  return frames.flatMap((f) => f.split('\n')).filter((l) => l.trim())
    .map((l) => JSON.parse(l)).filter((m) => m.push?.pub).map((m) => m.push.pub);
}

test('centrifuge-js rebuilds every publication from Herald\'s fossil patches', { timeout: TEST_TIMEOUT },
  () => withHerald(async ({ herald, connect }) => {
    const channel = uniqueChannel('doc', 'delta');
    const client = await connect('alice');
    const sub = client.newSubscription(channel, { delta: 'fossil' });
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    assert.equal(sub._delta_negotiated, true, 'the subscribe reply negotiated delta');
    const raw = await rawSubscriber(herald, channel, true);
    const plain = await rawSubscriber(herald, channel, false);

    const docs = Array.from({ length: 25 }, (_, i) => documentOf(i + 1));
    const received = publications(sub, docs.length);
    for (const doc of docs) await herald.publish(channel, doc);
    const got = await received;
    assert.deepEqual(got.map((ctx) => ctx.data), docs);
    assert.deepEqual(got.map((ctx) => ctx.offset), docs.map((_, i) => i + 1));

    const stats = sub.deltaStats();
    assert.equal(stats.numFullPayloads, 1, JSON.stringify(stats));
    assert.equal(stats.numDeltaPayloads, docs.length - 1, JSON.stringify(stats));
    assert.ok(stats.bytesReceived * 4 < stats.bytesDecoded, `patches are small: ${JSON.stringify(stats)}`);

    // On the wire: the raw delta subscriber gets patches (delta: true, data a string), far fewer
    // bytes than the ordinary subscriber of the same channel.
    const deadline = Date.now() + WAIT;
    while ((pubsOf(raw.frames).length < docs.length || pubsOf(plain.frames).length < docs.length) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const rawPubs = pubsOf(raw.frames);
    assert.equal(rawPubs.length, docs.length);
    assert.ok(rawPubs.every((p) => typeof p.data === 'string'));
    assert.equal(rawPubs.filter((p) => p.delta === true).length, docs.length - 1);
    const bytes = (frames) => frames.reduce((n, f) => n + Buffer.byteLength(f), 0);
    assert.ok(bytes(raw.frames) * 3 < bytes(plain.frames),
      `delta frames ${bytes(raw.frames)} bytes, plain ${bytes(plain.frames)} bytes`);
    raw.ws.close();
    plain.ws.close();
  }));

test('after a reconnect with recovery the SDK keeps rebuilding publications', { timeout: TEST_TIMEOUT },
  () => withHerald(async ({ herald, connect }) => {
    const channel = uniqueChannel('doc', 'delta');
    const client = await connect('alice');
    const sub = client.newSubscription(channel, { delta: 'fossil' });
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;

    const first = publications(sub, 3);
    for (let v = 1; v <= 3; v++) await herald.publish(channel, documentOf(v, 2));
    assert.deepEqual((await first).map((ctx) => ctx.data), [1, 2, 3].map((v) => documentOf(v, 2)));

    // Missed while disconnected: recovered in the subscribe reply, then live patches continue.
    client.disconnect();
    for (let v = 4; v <= 6; v++) await herald.publish(channel, documentOf(v, 2));
    const later = publications(sub, 6);
    const resubscribed = once(sub, 'subscribed');
    client.connect();
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true, JSON.stringify(ctx));
    for (let v = 7; v <= 9; v++) await herald.publish(channel, documentOf(v, 2));
    const got = await later;
    assert.deepEqual(got.map((c) => c.data), [4, 5, 6, 7, 8, 9].map((v) => documentOf(v, 2)));
    assert.deepEqual(got.map((c) => c.offset), [4, 5, 6, 7, 8, 9]);
    // 2 and 3 were patches; 4..6 come whole in the reply (Herald sends a recovery whole) and
    // 7..9 are patches, the first against 6.
    const stats = sub.deltaStats();
    assert.equal(stats.numDeltaPayloads, 5, JSON.stringify(stats));
    assert.equal(stats.numFullPayloads, 4, JSON.stringify(stats));
  }));

test('a channel that does not allow delta answers without it, and publications stay plain', { timeout: TEST_TIMEOUT },
  () => withHerald(async ({ herald, connect }) => {
    const channel = uniqueChannel('doc', 'chat');
    const client = await connect('alice');
    const sub = client.newSubscription(channel, { delta: 'fossil' });
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    assert.equal(sub._delta_negotiated, false);
    const received = publications(sub, 2);
    await herald.publish(channel, documentOf(1));
    await herald.publish(channel, documentOf(2));
    assert.deepEqual((await received).map((ctx) => ctx.data), [documentOf(1), documentOf(2)]);
    assert.equal(sub.deltaStats().numDeltaPayloads, 0);
  }));

test('random edits of text with quotes, escapes and any Unicode are rebuilt by the SDK', { timeout: TEST_TIMEOUT },
  () => withHerald(async ({ herald, connect }) => {
    const channel = uniqueChannel('fuzz', 'delta');
    const client = await connect('alice');
    const sub = client.newSubscription(channel, { delta: 'fossil' });
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    // Deterministic, so a failure reproduces.
    let state = 0x2545f491;
    const rand = (n) => {
      state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
      return (state >>> 0) % n;
    };
    const pieces = ['a', 'é', '€', '𝄞', '"', '\\', '\n', '\u2028', ' ', 'xyz', '{}', '日本'];
    let text = Array.from({ length: 300 }, () => pieces[rand(pieces.length)]).join('');
    const docs = [];
    for (let i = 0; i < 60; i++) {
      const chars = [...text];
      for (let e = rand(4) + 1; e > 0; e--) {
        const at = rand(chars.length + 1);
        if (rand(2)) chars.splice(at, 0, pieces[rand(pieces.length)]);
        else chars.splice(at, rand(5));
      }
      text = chars.join('');
      docs.push({ i, text, tail: [i, text.length] });
    }
    const received = publications(sub, docs.length);
    for (const doc of docs) await herald.publish(channel, doc);
    assert.deepEqual((await received).map((ctx) => ctx.data), docs);
    assert.ok(sub.deltaStats().numDeltaPayloads > docs.length / 2, JSON.stringify(sub.deltaStats()));
  }));
