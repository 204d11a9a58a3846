// Herald's streaming transports in real headless Chromium: a page served by a static server of
// this test (another origin than Herald's: every request is cross-origin, so Herald's CORS answer
// is what lets it through) loads centrifuge-js's browser build (node_modules/centrifuge/dist) and
// connects over `sse` and over `http_stream`, and a plain EventSource reads `/connection/uni_sse`.
// A page of an origin not in `http.allowed_origins` is refused.
// The servers' logs and the page's console go to <target>/browser-test.log.
//
//   HERALD_BIN=target/debug/herald CHROMIUM=/usr/bin/chromium node --test transports_test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, writeFileSync, rmSync, mkdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(REPO, "target");
const BIN = process.env.HERALD_BIN || path.join(TARGET, "debug", "herald");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SECRET = "browser-test-secret-browser-test-secret";
const API_KEY = "browser-test-api-key";
const WAIT = 15_000;

let dir, logs = "", herald, base, pageOrigin, foreignOrigin, browser, page;
const statics = [];

/** An HS256 connection token for `user` with extra claims. */
function token(user, claims = {}) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** A static server on a loopback port of its own: the page, and centrifuge-js's browser build. */
async function staticServer() {
  const centrifuge = readFileSync(path.join(HERE, "node_modules/centrifuge/dist/centrifuge.js"));
  const html = '<!doctype html><meta charset="utf-8"><title>herald transports</title><script src="/centrifuge.js"></script>';
  const server = http.createServer((req, res) => {
    if (req.url === "/centrifuge.js") {
      res.writeHead(200, { "Content-Type": "text/javascript" }).end(centrifuge);
    } else if (req.url === "/") {
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" }).end(html);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  statics.push(server);
  return `http://127.0.0.1:${server.address().port}`;
}

/** Starts `herald serve` allowing `origin`; resolves with its base URL once it logged it. */
async function startHerald(origin) {
  const config = path.join(dir, "herald.toml");
  writeFileSync(config, `
[http]
listen = "127.0.0.1:0"
shutdown_timeout = "2s"
allowed_origins = ["${origin}"]
[client.token]
hmac_secret = "${SECRET}"
[api]
key = "${API_KEY}"
[[channel.namespaces]]
name = "chat"
history_size = 10
history_ttl = "5m"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
`);
  const proc = spawn(BIN, ["serve", "-c", config], {
    env: { ...process.env, RUST_LOG: "info", HERALD_CONFIG: "" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let own = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (chunk) => { own += chunk; logs += chunk; });
  const deadline = Date.now() + WAIT;
  for (;;) {
    const m = own.match(/websocket: ws:\/\/([0-9.:]+)\//);
    if (m) return { proc, base: `http://${m[1]}` };
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`Herald did not start:\n${own}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function publish(channel, data) {
  const res = await fetch(`${base}/api/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-API-Key": API_KEY },
    body: JSON.stringify({ channel, data }),
  });
  const reply = await res.json();
  assert.ok(reply.result, `publish: ${JSON.stringify(reply)}`);
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "herald-browser-test-"));
  pageOrigin = await staticServer();
  foreignOrigin = await staticServer();
  herald = await startHerald(pageOrigin);
  base = herald.base;
  const profile = path.join(dir, "chromium-profile");
  mkdirSync(profile);
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  page = browser.pages()[0] || await browser.newPage();
  page.on("console", (m) => { logs += `\n[page console] ${m.text()}`; });
  page.on("pageerror", (e) => { logs += `\n[page error] ${e.message}`; });
  await page.goto(`${pageOrigin}/`);
  assert.equal(await page.evaluate(() => typeof Centrifuge), "function", "centrifuge-js's browser build loaded");
});

after(async () => {
  if (browser) await browser.close();
  mkdirSync(TARGET, { recursive: true });
  writeFileSync(path.join(TARGET, "browser-test.log"), logs);
  for (const s of statics) s.close();
  if (herald) {
    herald.proc.kill("SIGTERM");
    await new Promise((r) => { herald.proc.once("exit", r); setTimeout(r, 5000); });
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

for (const transport of ["sse", "http_stream"]) {
  test(`centrifuge-js in Chromium over ${transport}: connect, subscribe, publications both ways`, async () => {
    const channel = `chat:browser-${randomBytes(4).toString("hex")}`;
    // Connects and subscribes in the page; publications are collected in window.got[transport].
    const connected = await page.evaluate(({ base, transport, token, channel, wait }) => new Promise((resolve, reject) => {
      const client = new Centrifuge([{ transport, endpoint: `${base}/connection/${transport}` }], {
        token, emulationEndpoint: `${base}/emulation`, timeout: 5000,
      });
      window.clients = { ...(window.clients || {}), [transport]: client };
      window.got = { ...(window.got || {}), [transport]: [] };
      let transportName = "";
      const timer = setTimeout(() => reject(new Error(`not subscribed within ${wait}ms`)), wait);
      client.on("connected", (ctx) => { transportName = ctx.transport; });
      client.on("disconnected", (ctx) => reject(new Error(`disconnected: ${JSON.stringify(ctx)}`)));
      const sub = client.newSubscription(channel);
      window.subs = { ...(window.subs || {}), [transport]: sub };
      sub.on("publication", (ctx) => window.got[transport].push(ctx.data));
      sub.on("subscribed", () => { clearTimeout(timer); resolve(transportName); });
      sub.on("error", (ctx) => reject(new Error(`subscription error: ${JSON.stringify(ctx)}`)));
      sub.subscribe();
      client.connect();
    }), { base, transport, token: token(`browser-${transport}`), channel, wait: WAIT });
    assert.equal(connected, transport);

    await publish(channel, { from: "api" });
    // A client publication: a cross-origin POST to /emulation with a JSON body (preflighted).
    await page.evaluate((t) => window.subs[t].publish({ from: "page" }), transport);
    await page.waitForFunction((t) => window.got[t].length >= 2, transport, { timeout: WAIT });
    assert.deepEqual(await page.evaluate((t) => window.got[t], transport), [{ from: "api" }, { from: "page" }]);
    await page.evaluate((t) => window.clients[t].disconnect(), transport);
  });
}

test("a plain EventSource in Chromium on /connection/uni_sse gets the connect push and publications", async () => {
  const channel = `chat:uni-${randomBytes(4).toString("hex")}`;
  const url = `${base}/connection/uni_sse?cf_connect=${encodeURIComponent(JSON.stringify({ token: token("uni", { channels: [channel] }) }))}`;
  await page.evaluate((url) => {
    window.uni = [];
    window.uniSource = new EventSource(url);
    window.uniSource.onmessage = (e) => window.uni.push(JSON.parse(e.data));
  }, url);
  await page.waitForFunction(() => window.uni.some((m) => m.connect), null, { timeout: WAIT });
  const connect = await page.evaluate(() => window.uni.find((m) => m.connect).connect);
  assert.ok(connect.client, JSON.stringify(connect));
  assert.ok(connect.subs && connect.subs[channel], `server-side subscription: ${JSON.stringify(connect)}`);
  await publish(channel, { n: 1 });
  await page.waitForFunction((ch) => window.uni.some((m) => m.channel === ch && m.pub), channel, { timeout: WAIT });
  const pub = await page.evaluate((ch) => window.uni.find((m) => m.channel === ch && m.pub).pub, channel);
  assert.deepEqual(pub.data, { n: 1 });
  await page.evaluate(() => window.uniSource.close());
});

test("a page of an origin not in http.allowed_origins is refused", async () => {
  const other = await browser.newPage();
  try {
    await other.goto(`${foreignOrigin}/`);
    const outcome = await other.evaluate(async (base) => {
      try {
        const res = await fetch(`${base}/connection/uni_http_stream`, {
          method: "POST", body: "{}", headers: { "Content-Type": "application/json" },
        });
        return `answered ${res.status}`;
      } catch (e) {
        return `refused: ${e.name}`;
      }
    }, base);
    assert.equal(outcome, "refused: TypeError");
  } finally {
    await other.close();
  }
});
