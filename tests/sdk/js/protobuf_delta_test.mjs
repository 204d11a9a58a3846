// Delta compression (`delta: 'fossil'`) with centrifuge-js 5.x's Protobuf build: patches travel as
// raw bytes in `Publication.data` with `delta` set, the SDK applies them to the bytes it holds, and
// every publication is rebuilt — also next to a JSON delta subscriber of the same channel, and
// after a reconnect with recovery. Wire bytes are counted on the WebSocket itself.
//
// Run: node --test protobuf_delta_test.mjs   (from tests/sdk/js, after `npm ci`)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Centrifuge } from 'centrifuge/build/protobuf';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import WebSocket from 'ws';
import { Herald, uniqueChannel } from './herald.mjs';

const WAIT = 5000;
const TEST_TIMEOUT = 60000;

const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

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

/** A `ws` WebSocket class counting the bytes of the frames it receives in `counter.bytes`. */
function countingWebSocket(counter) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      this.on('message', (data) => {
        counter.bytes += data.byteLength; // an ArrayBuffer: the SDK sets binaryType
      });
    }
  };
}

async function withHerald(body) {
  const herald = new Herald();
  await herald.start();
  const clients = [];
  const connect = async (user, { json = false, counter = { bytes: 0 } } = {}) => {
    const Client = json ? JsonCentrifuge : Centrifuge;
    const client = new Client(herald.wsUrl, {
      websocket: countingWebSocket(counter),
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
  const subscribe = async (client, channel, options) => {
    const sub = client.newSubscription(channel, options);
    const subscribed = once(sub, 'subscribed');
    sub.subscribe();
    await subscribed;
    return sub;
  };
  try {
    await body({ herald, connect, subscribe });
  } catch (err) {
    err.message += `\n--- herald server output ---\n${herald.log()}`;
    throw err;
  } finally {
    for (const client of clients) client.disconnect();
    await herald.stop();
  }
}

test('protobuf: the SDK rebuilds every publication from raw fossil patches', { timeout: TEST_TIMEOUT },
  () => withHerald(async ({ herald, connect, subscribe }) => {
    const channel = uniqueChannel('doc', 'delta');
    const deltaWire = { bytes: 0 };
    const plainWire = { bytes: 0 };
    const proto = await subscribe(await connect('alice', { counter: deltaWire }), channel, { delta: 'fossil' });
    assert.equal(proto._delta_negotiated, true, 'the Protobuf subscribe reply negotiated delta');
    const json = await subscribe(await connect('bob', { json: true }), channel, { delta: 'fossil' });
    assert.equal(json._delta_negotiated, true);
    const plain = await subscribe(await connect('carol', { counter: plainWire }), channel, {});
    // Only publications from here on.
    deltaWire.bytes = 0;
    plainWire.bytes = 0;

    const docs = Array.from({ length: 25 }, (_, i) => documentOf(i + 1));
    const received = [proto, json, plain].map((sub) => publications(sub, docs.length));
    for (const doc of docs) await herald.publish(channel, doc);
    const [protoGot, jsonGot, plainGot] = await Promise.all(received);
    assert.ok(protoGot.every((ctx) => ctx.data instanceof Uint8Array), 'protobuf data is bytes');
    assert.deepEqual(protoGot.map((ctx) => decode(ctx.data)), docs);
    assert.deepEqual(protoGot.map((ctx) => ctx.offset), docs.map((_, i) => i + 1));
    assert.deepEqual(jsonGot.map((ctx) => ctx.data), docs, 'the JSON delta subscriber too');
    assert.deepEqual(plainGot.map((ctx) => decode(ctx.data)), docs, 'and the plain Protobuf one');

    for (const sub of [proto, json]) {
      const stats = sub.deltaStats();
      assert.equal(stats.numFullPayloads, 1, JSON.stringify(stats));
      assert.equal(stats.numDeltaPayloads, docs.length - 1, JSON.stringify(stats));
      assert.ok(stats.bytesReceived * 4 < stats.bytesDecoded, `patches are small: ${JSON.stringify(stats)}`);
    }
    assert.equal(plain.deltaStats().numDeltaPayloads, 0);
    // On the wire: the delta subscriber received far fewer bytes than the plain one.
    assert.ok(deltaWire.bytes > 0 && deltaWire.bytes * 3 < plainWire.bytes,
      `delta ${deltaWire.bytes} bytes, plain ${plainWire.bytes} bytes`);
  }));

test('protobuf: after a reconnect with recovery the SDK keeps rebuilding publications', { timeout: TEST_TIMEOUT },
  () => withHerald(async ({ herald, connect, subscribe }) => {
    const channel = uniqueChannel('doc', 'delta');
    const client = await connect('alice');
    const sub = await subscribe(client, channel, { delta: 'fossil' });

    const first = publications(sub, 3);
    for (let v = 1; v <= 3; v++) await herald.publish(channel, documentOf(v, 2));
    assert.deepEqual((await first).map((ctx) => decode(ctx.data)), [1, 2, 3].map((v) => documentOf(v, 2)));

    // Missed while disconnected: recovered whole in the subscribe reply, then live patches
    // continue against the last of them.
    client.disconnect();
    for (let v = 4; v <= 6; v++) await herald.publish(channel, documentOf(v, 2));
    const later = publications(sub, 6);
    const resubscribed = once(sub, 'subscribed');
    client.connect();
    const ctx = await resubscribed;
    assert.equal(ctx.recovered, true, JSON.stringify(ctx));
    for (let v = 7; v <= 9; v++) await herald.publish(channel, documentOf(v, 2));
    const got = await later;
    assert.deepEqual(got.map((c) => decode(c.data)), [4, 5, 6, 7, 8, 9].map((v) => documentOf(v, 2)));
    assert.deepEqual(got.map((c) => c.offset), [4, 5, 6, 7, 8, 9]);
    const stats = sub.deltaStats();
    assert.equal(stats.numDeltaPayloads, 5, JSON.stringify(stats));
    assert.equal(stats.numFullPayloads, 4, JSON.stringify(stats));
  }));
