// Herald's admin console in real headless Chromium: no data without logging in, a wrong password,
// the login, live numbers changing while a WebSocket client publishes, the publish form reaching a
// WebSocket client, a CSRF-less post refused, disconnecting a user from the console, and logout.
// The WebSocket clients are plain WebSockets in a second page of the same browser (Herald's JSON
// protocol). Uses tests/browser's node_modules (playwright-core); the server's log and the pages'
// consoles go to <target>/admin-test.log.
//
//   tests/admin/run.sh      (or: HERALD_BIN=... CHROMIUM=... node --test tests/admin/admin_test.mjs)
//   ADMIN_SCREENSHOT=docs/admin.png tests/admin/run.sh   also saves a screenshot of the console

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
// One set of browser-test packages for every Chromium suite: tests/browser's.
const require = createRequire(path.join(REPO, "tests/browser/package.json"));
const { chromium } = require("playwright-core");

const TARGET = process.env.CARGO_TARGET_DIR || path.join(REPO, "target");
const BIN = process.env.HERALD_BIN || path.join(TARGET, "debug", "herald");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SECRET = "admin-test-secret-admin-test-secret-admin";
const PASSWORD = "admin-browser-test-password";
const WAIT = 15_000;

let dir, logs = "", herald, publicBase, adminBase, browser, console_, clients;

function token(user) {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

async function startHerald() {
  const config = path.join(dir, "herald.toml");
  writeFileSync(config, `
[http]
listen = "127.0.0.1:0"
internal_listen = "127.0.0.1:0"
shutdown_timeout = "2s"
[client.token]
hmac_secret = "${SECRET}"
[api]
key = "admin-test-api-key"
[admin]
password = "${PASSWORD}"
secret = "${SECRET}"
[[channel.namespaces]]
name = "chat"
presence = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
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
    const ws = own.match(/websocket: ws:\/\/([0-9.:]+)\//);
    const internal = own.match(/metrics: http:\/\/([0-9.:]+)\/metrics/);
    if (ws && internal) return { proc, publicBase: `http://${ws[1]}`, adminBase: `http://${internal[1]}` };
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`Herald did not start:\n${own}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until `check` (async) returns a truthy value; returns it. */
async function eventually(what, check, wait = WAIT) {
  const deadline = Date.now() + wait;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${wait} ms (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Opens a WebSocket client in the clients page: connects as `user` and subscribes to `channel`. */
async function wsClient(user, channel) {
  await clients.evaluate(({ url, name, token, channel }) => new Promise((resolve, reject) => {
    window.ws = window.ws || {};
    const c = { got: [], closed: null, id: 0 };
    const socket = new WebSocket(url);
    c.send = (command) => socket.send(JSON.stringify({ id: ++c.id, ...command }));
    socket.onopen = () => { c.send({ connect: { token } }); c.send({ subscribe: { channel } }); };
    socket.onmessage = (event) => {
      for (const line of String(event.data).split("\n").filter(Boolean)) {
        const message = JSON.parse(line);
        if (message.error) reject(new Error(JSON.stringify(message.error)));
        if (message.subscribe) resolve();
        if (message.push && message.push.pub) c.got.push(message.push.pub.data);
      }
    };
    socket.onclose = (event) => { c.closed = event.code; reject(new Error(`closed ${event.code}`)); };
    window.ws[name] = c;
  }), { url: publicBase.replace("http", "ws") + "/connection/websocket", name: user, token: token(user), channel });
}

const text = (selector) => console_.locator(selector).textContent();

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "herald-admin-test-"));
  ({ publicBase, adminBase } = herald = await startHerald());
  const profile = path.join(dir, "chromium-profile");
  mkdirSync(profile);
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 1000 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  console_ = browser.pages()[0] || await browser.newPage();
  clients = await browser.newPage();
  for (const [name, page] of [["console", console_], ["clients", clients]]) {
    page.on("console", (m) => { logs += `\n[${name} console] ${m.text()}`; });
    page.on("pageerror", (e) => { logs += `\n[${name} error] ${e.message}`; });
  }
  await clients.goto(`${publicBase}/`);
});

after(async () => {
  if (browser) await browser.close();
  mkdirSync(TARGET, { recursive: true });
  writeFileSync(path.join(TARGET, "admin-test.log"), logs);
  if (herald) {
    herald.proc.kill("SIGTERM");
    await new Promise((r) => { herald.proc.once("exit", r); setTimeout(r, 5000); });
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the console: login, live numbers, publish form, CSRF, disconnect, logout", async () => {
  // Nothing without credentials: the JSON endpoints answer 401, the page is the login form.
  for (const endpoint of ["overview", "channels", "connections?user=bob", "devices"]) {
    const res = await fetch(`${adminBase}/admin/api/${endpoint}`);
    assert.equal(res.status, 401, endpoint);
  }
  assert.equal((await fetch(`${publicBase}/admin`)).status, 404, "not on the public listener");
  await console_.goto(`${adminBase}/admin`);
  await console_.fill("#password", "not-the-password");
  await console_.click("#login-submit");
  assert.match(await text("#login-error"), /Wrong password/);
  assert.equal(await console_.locator("#stat-clients").count(), 0);

  await console_.fill("#password", PASSWORD);
  await console_.click("#login-submit");
  await eventually("the overview shows 0 connections", async () => (await text("#stat-clients")) === "0");

  // Live numbers: a client that publishes ten times a second.
  await wsClient("bob", "chat:room");
  await clients.evaluate(() => {
    let n = 0;
    window.publisher = setInterval(() => window.ws.bob.send({ publish: { channel: "chat:room", data: { n: ++n } } }), 100);
  });
  await eventually("the overview counts bob", async () => (await text("#stat-clients")) === "1");
  await eventually("publications per second above 0", async () => Number(await text("#stat-publications")) > 0);
  await eventually("deliveries per second above 0", async () => Number(await text("#stat-deliveries")) > 0);
  const points = await console_.locator("#chart-publications polyline").getAttribute("points");
  assert.ok(points && points.split(" ").length >= 1, `chart drawn: ${points}`);
  await clients.evaluate(() => clearInterval(window.publisher));
  await eventually("publications per second back to 0", async () => (await text("#stat-publications")) === "0.0");

  // Channel search shows the subscriber count and presence.
  await console_.fill("#channel-query", "room");
  await console_.click("#channel-search button");
  await eventually("chat:room listed", async () => (await text("#channels tbody")).includes("chat:room"));
  assert.match(await text("#channels tbody"), /1 clients, 1 users/);

  // The publish form reaches a WebSocket client.
  await wsClient("carol", "chat:room");
  await console_.fill("#publish-channel", "chat:room");
  await console_.fill("#publish-data", '{"from": "the admin form"}');
  await console_.click("#publish-submit");
  await eventually("carol got the form's publication", () =>
    clients.evaluate(() => window.ws.carol.got.some((d) => d && d.from === "the admin form")));
  await eventually("the form says it published", async () => /published/.test(await text("#publish-result")));

  // A post without the CSRF token is refused, even from the console's own page and session.
  const refused = await console_.evaluate(async () => (await fetch("/admin/api/publish", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ channel: "chat:room", data: { from: "forged" } }),
  })).status);
  assert.equal(refused, 403);

  // Disconnect carol from her connection list.
  await console_.fill("#user-id", "carol");
  await console_.click("#user-submit");
  await eventually("carol's connection listed", async () => (await text("#connections tbody")).includes("chat:room"));
  if (process.env.ADMIN_SCREENSHOT) {
    await console_.screenshot({ path: path.resolve(REPO, process.env.ADMIN_SCREENSHOT), fullPage: true });
  }
  await console_.click("#connections tbody button");
  const code = await eventually("carol disconnected", () => clients.evaluate(() => window.ws.carol.closed));
  assert.ok(code >= 3000, `close code ${code}`);
  assert.equal(await clients.evaluate(() => window.ws.bob.closed), null, "bob stays");
  assert.equal(await clients.evaluate(() => window.ws.carol.got.some((d) => d && d.from === "forged")), false);

  // Logout ends the session in this browser.
  await console_.click("#logout");
  await console_.waitForSelector("#login-form");
  const after = await console_.evaluate(async () => (await fetch("/admin/api/overview")).status);
  assert.equal(after, 401);
});
