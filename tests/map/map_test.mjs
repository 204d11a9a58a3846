// Herald's live map in real headless Chromium: the real `herald` binary on loopback port 0, the
// page at /map#token=…, positions fed over the JSON-lines device protocol; checks the device list,
// the drawn trail (debug counts and canvas pixels), the tile fallback and the track replay.
// The servers' logs and the page's errors go to <target>/map-test.log, a screenshot to
// <target>/map-test.png.
//
//   HERALD_BIN=target/debug/herald CHROMIUM=/usr/bin/chromium node --test map_test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import net from "node:net";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const TARGET = process.env.CARGO_TARGET_DIR || path.join(REPO, "target");
const BIN = process.env.HERALD_BIN || path.join(TARGET, "debug", "herald");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const DEVICE = "map-test-7";
const POINTS = 12;
const WAIT = 30_000;

const servers = [];
let dir, logs = "", base, jsonlAddr, token, otherToken, browser, page;

/** Resolves with the first capture of `pattern` in a server's log (`read()`). */
function fromLog(pattern, read) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${pattern} in the log:\n${read()}`)), WAIT);
    const check = () => {
      const m = read().match(pattern);
      if (m) { clearTimeout(timer); resolve(m[1]); } else setTimeout(check, 50);
    };
    check();
  });
}

async function eventually(what, check) {
  const deadline = Date.now() + WAIT;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A loopback port that was free a moment ago and is closed now. */
async function closedPort() {
  const probe = net.createServer();
  await new Promise((r) => probe.listen(0, "127.0.0.1", r));
  const { port } = probe.address();
  await new Promise((r) => probe.close(r));
  return port;
}

/** Starts `herald serve` with a config whose tiles come from `tileUrl`; resolves with its process
 * and addresses once it logged them. */
async function startHerald(name, tileUrl) {
  const config = path.join(dir, `${name}.toml`);
  writeFileSync(config, `
[http]
listen = "127.0.0.1:0"
shutdown_timeout = "2s"
[client.token]
hmac_secret = "map-test-secret-map-test-secret-map-test"
[api]
key = "map-test-api-key"
[devices]
enabled = true
spool_dir = "${path.join(dir, name, "spool")}"
store = "sqlite:${path.join(dir, name, "herald.db")}"
fsync = "never"
[devices.listen]
gt06 = ""
h02 = ""
teltonika = ""
osmand = ""
jsonl = "127.0.0.1:0"
[map]
tile_url = "${tileUrl}"
[[channel.namespaces]]
name = "devices"
history_size = 100
history_ttl = "5m"
`);
  const proc = spawn(BIN, ["serve", "-c", config], {
    env: { ...process.env, RUST_LOG: "info", HERALD_CONFIG: "" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  servers.push(proc);
  let own = "";
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", (chunk) => { own += chunk; logs += chunk; });
  const wsAt = await fromLog(/websocket: ws:\/\/([0-9.:]+)\//, () => own);
  const jsonlAt = await fromLog(/protocol="jsonl" addr=([0-9.:]+)/, () => own);
  return { proc, config, base: "http://" + wsAt, jsonl: jsonlAt };
}

before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "herald-map-test-"));
  // A loopback port nobody listens on any more: every tile fails, so the page must fall back.
  const main = await startHerald("main", `http://127.0.0.1:${await closedPort()}/{z}/{x}/{y}.png`);
  base = main.base;
  jsonlAddr = main.jsonl;
  token = execFileSync(BIN, ["token", "-c", main.config, "--user", "map-test", "--channels", "devices:fleet"],
    { encoding: "utf8" }).trim();
  otherToken = execFileSync(BIN, ["token", "-c", main.config, "--user", "nobody"], { encoding: "utf8" }).trim();

  const profile = path.join(dir, "chromium-profile");
  mkdirSync(profile);
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1200, height: 760 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  page = browser.pages()[0] || await browser.newPage();
  page.on("pageerror", (e) => { logs += `\n[page error] ${e.message}`; });
});

after(async () => {
  if (browser) await browser.close();
  mkdirSync(TARGET, { recursive: true });
  writeFileSync(path.join(TARGET, "map-test.log"), logs);
  for (const proc of servers) {
    proc.kill("SIGTERM");
    await new Promise((r) => { proc.once("exit", r); setTimeout(r, 5000); });
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Sends positions as JSON lines over one TCP connection, like a device would. */
function feed(lines, at = jsonlAddr) {
  const split = at.lastIndexOf(":");
  const [host, port] = [at.slice(0, split), Number(at.slice(split + 1))];
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, host, () => {
      socket.end(lines.map((l) => JSON.stringify(l)).join("\n") + "\n");
    });
    socket.on("error", reject);
    socket.on("close", resolve);
  });
}

async function track(tok) {
  const q = new URLSearchParams({ device: DEVICE, from: "0", to: String(Date.now() + 1000), limit: "1000" });
  const res = await fetch(`${base}/map/api/track?${q}`, { headers: { Authorization: `Bearer ${tok}` } });
  return { status: res.status, body: await res.json() };
}

test("the map shows live positions, trails, the tile fallback and a replayed track", async () => {
  await page.goto(`${base}/map#token=${token}`);
  await page.waitForFunction(() => window.heraldMap && window.heraldMap.connection() === "live", null, { timeout: WAIT });
  assert.equal(await page.evaluate(() => location.hash), "", "the token is removed from the address bar");

  const start = Date.now() - 10 * 60_000;
  const positions = Array.from({ length: POINTS }, (_, i) => ({
    id: DEVICE,
    time: new Date(start + i * 20_000).toISOString(),
    lat: 52.5 + i * 0.001,
    lon: 13.4 + i * 0.0015,
    speed: 30 + i,
  }));
  await feed(positions);

  // The device list and the live trail.
  await page.locator(`#list li[data-device="${DEVICE}"]`).waitFor({ timeout: WAIT });
  await page.waitForFunction((id) => {
    const d = window.heraldMap.devices().find((x) => x.id === id);
    return d && d.trailPoints === 12;
  }, DEVICE, { timeout: WAIT });
  // The protocol comes from the device listing, fetched again when an unknown device appears.
  await page.waitForFunction((id) => window.heraldMap.devices().find((x) => x.id === id)?.protocol === "jsonl",
    DEVICE, { timeout: WAIT });
  await page.waitForTimeout(1100); // the list's texts are refreshed every second
  const row = await page.locator(`#list li[data-device="${DEVICE}"]`).innerText();
  assert.match(row, /41 km\/h/, row);
  assert.match(row, /jsonl/, row);

  // The trail's pixels: the overlay canvas holds only trails and markers, so exact colour
  // matches are the trail (or the marker at its last point, which the midpoint check avoids).
  await page.waitForTimeout(300);
  const pixels = await page.evaluate((id) => {
    const map = window.heraldMap;
    const d = map.devices().find((x) => x.id === id);
    const trail = map.trail(id);
    const hex = d.color;
    const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    const canvas = document.getElementById("overlay");
    const dpr = canvas.width / canvas.clientWidth;
    const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const is = (x, y) => {
      const i = (Math.round(y) * canvas.width + Math.round(x)) * 4;
      return data[i] === want[0] && data[i + 1] === want[1] && data[i + 2] === want[2] && data[i + 3] === 255;
    };
    let total = 0;
    for (let y = 0; y < canvas.height; y++) for (let x = 0; x < canvas.width; x++) if (is(x, y)) total++;
    // Midpoints of early segments, far from the marker at the end of the trail.
    const onLine = [1, 2, 3].map((k) => {
      const [x0, y0] = map.project(trail[k][0], trail[k][1]);
      const [x1, y1] = map.project(trail[k + 1][0], trail[k + 1][1]);
      const [mx, my] = [(x0 + x1) / 2 * dpr, (y0 + y1) / 2 * dpr];
      for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) if (is(mx + dx, my + dy)) return true;
      return false;
    });
    return { total, onLine, hex };
  }, DEVICE);
  assert.deepEqual(pixels.onLine, [true, true, true], JSON.stringify(pixels));
  assert.ok(pixels.total > 200, `trail colour ${pixels.hex} covers ${pixels.total} pixels`);

  // Tiles cannot load: a plain grid and a note.
  await page.waitForFunction(() => window.heraldMap.tiles().unavailable, null, { timeout: WAIT });
  assert.equal(await page.locator("#tiles-note").innerText(), "tiles unavailable");
  assert.ok((await page.evaluate(() => window.heraldMap.tiles())).failed > 0);

  // Replay: wait until the database writer has the positions, then click the device.
  await eventually("the stored track", async () => (await track(token)).body.positions?.length === POINTS);
  await page.locator(`#list li[data-device="${DEVICE}"]`).click();
  await page.waitForFunction(() => window.heraldMap.replay()?.state === "done", null, { timeout: WAIT });
  const replay = await page.evaluate(() => window.heraldMap.replay());
  assert.equal(replay.device, DEVICE);
  assert.equal(replay.points, POINTS);
  assert.match(await page.locator("#replay-info").innerText(), /^12 positions/);

  await page.waitForTimeout(1000);
  mkdirSync(TARGET, { recursive: true });
  const shot = path.join(TARGET, "map-test.png");
  await page.screenshot({ path: shot });
  console.log(`screenshot: ${shot}`);
});

test("the page reconnects after a server disconnect, and stops when told not to", async () => {
  const api = (body) => fetch(`${base}/api/disconnect`, {
    method: "POST", headers: { "X-API-Key": "map-test-api-key" }, body: JSON.stringify(body),
  }).then((r) => r.json());
  const before = await page.evaluate(() => window.heraldMap.connects());
  assert.deepEqual(await api({ user: "map-test", disconnect: { code: 3005, reason: "go away briefly" } }), { result: {} });
  await page.waitForFunction((n) => window.heraldMap.connects() > n && window.heraldMap.connection() === "live",
    before, { timeout: WAIT });
  // Live again: a new position extends the trail.
  await feed([{ id: DEVICE, time: new Date().toISOString(), lat: 52.52, lon: 13.43 }]);
  await page.waitForFunction((id) => window.heraldMap.devices().find((x) => x.id === id)?.trailPoints === 13,
    DEVICE, { timeout: WAIT });
  // The API's default disconnect says "do not reconnect".
  assert.deepEqual(await api({ user: "map-test" }), { result: {} });
  await page.waitForFunction(() => window.heraldMap.connection() === "stopped", null, { timeout: WAIT });
  assert.match(await page.locator("#status").innerText(), /not reconnecting/);
});

test("the data endpoints refuse a missing token and a user who may not see the fleet", async () => {
  const none = await fetch(`${base}/map/api/devices`);
  assert.equal(none.status, 401);
  assert.equal((await none.json()).error.code, 101);
  const denied = await track(otherToken);
  assert.equal(denied.status, 403, JSON.stringify(denied.body));
});

test("a token the server refuses asks for another one in the page", async () => {
  const fresh = await browser.newPage();
  try {
    await fresh.goto(`${base}/map#token=${otherToken}`);
    await fresh.locator("#token-form").waitFor({ state: "visible", timeout: WAIT });
    assert.match(await fresh.locator("#token-reason").innerText(), /may not subscribe/);
  } finally {
    await fresh.close();
  }
});

test("tiles from a reachable tile server are drawn and no fallback note is shown", async () => {
  // A tile server on loopback answering every tile with a small PNG.
  const png = Buffer.from("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", "base64");
  let requests = 0;
  const tileServer = http.createServer((req, res) => {
    requests++;
    res.writeHead(200, { "Content-Type": "image/png" });
    res.end(png);
  });
  await new Promise((r) => tileServer.listen(0, "127.0.0.1", r));
  const other = await startHerald("tiles", `http://127.0.0.1:${tileServer.address().port}/{z}/{x}/{y}.png`);
  const tileToken = execFileSync(BIN, ["token", "-c", other.config, "--user", "map-test", "--channels", "devices:fleet"],
    { encoding: "utf8" }).trim();
  const fresh = await browser.newPage();
  try {
    await fresh.goto(`${other.base}/map#token=${tileToken}`);
    await feed([{ id: "tile-test", lat: 48.85, lon: 2.35 }], other.jsonl);
    await fresh.waitForFunction(() => window.heraldMap && window.heraldMap.tiles().loaded > 0, null, { timeout: WAIT });
    assert.equal(await fresh.locator("#tiles-note").isVisible(), false);
    assert.equal((await fresh.evaluate(() => window.heraldMap.tiles())).failed, 0);
    assert.ok(requests > 0);
  } finally {
    await fresh.close();
    tileServer.close();
  }
});
