// Starts a Herald server for one test, like tests/sdk/conftest.py does for the Python suite:
// a fresh temp dir with a generated herald.toml, a free port on 127.0.0.1, and
// `HERALD_BIN serve --config <file>`; waits for GET /health == 200 (20 s at most).
//
// HERALD_BIN: path of the server binary (default: <repo>/target/debug/herald).

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { accessSync, constants, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(here, '..', '..', '..');
export const HERALD_BIN = process.env.HERALD_BIN || join(REPO_ROOT, 'target', 'debug', 'herald');

export const HMAC_SECRET = 'sdk-test-hmac-secret-0123456789abcdef';
export const API_KEY = 'sdk-test-api-key';
const STARTUP_TIMEOUT_MS = 20000;
const STOP_TIMEOUT_MS = 5000;

const channelOptions = `presence = true
join_leave = true
history_size = 100
history_ttl = "300s"
force_recovery = true
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_presence_for_subscriber = true
allow_history_for_subscriber = true
`;

export function renderConfig(port, extra = '') {
  return `[http]
listen = "127.0.0.1:${port}"

[client]
ping_interval = "25s"
pong_timeout = "8s"

[client.token]
hmac_secret = "${HMAC_SECRET}"

[api]
key = "${API_KEY}"

[channel.without_namespace]
${channelOptions}
[[channel.namespaces]]
name = "chat"
${channelOptions}
[[channel.namespaces]]
name = "delta"
allowed_delta_types = ["fossil"]
${channelOptions}${extra ? `\n${extra}\n` : ''}`;
}

function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** HS256 JWT with {"sub": user, "exp": now + expIn, ...claims} (e.g. claims {channel} for a
 * subscription token). */
export function makeToken(user, { expIn = 3600, secret = HMAC_SECRET, claims = {} } = {}) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: user, exp: Math.floor(Date.now() / 1000) + expIn, ...claims });
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

/** A unique channel name: uniqueChannel('news') or uniqueChannel('room', 'chat'). */
export function uniqueChannel(prefix = 'ch', ns = null) {
  const name = `${prefix}-${randomBytes(5).toString('hex')}`;
  return ns ? `${ns}:${name}` : name;
}

export class Herald {
  /** `extraConfig`: TOML appended to the generated config (e.g. a `[broker]` table). */
  constructor({ extraConfig = '' } = {}) {
    this.extraConfig = extraConfig;
    this.dir = mkdtempSync(join(tmpdir(), 'herald-sdk-js-'));
    this.configPath = join(this.dir, 'herald.toml');
    this.logPath = join(this.dir, 'herald.log');
    this.port = 0;
    this.proc = null;
    this.exit = null; // {code, signal} once the process ended
    this.stopping = false;
  }

  get baseUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/connection/websocket`;
  }

  log(maxChars = 8000) {
    let text = '';
    try {
      text = readFileSync(this.logPath, 'utf8');
    } catch {
      // no log yet
    }
    if (text.length > maxChars) text = '...\n' + text.slice(-maxChars);
    return text || '(no output)';
  }

  async start() {
    try {
      accessSync(HERALD_BIN, constants.X_OK);
    } catch {
      throw new Error(`Herald binary not found or not executable: ${HERALD_BIN}\n` +
        'Build it first (cargo build -p herald) or point HERALD_BIN at it.');
    }
    let lastError = '';
    for (let attempt = 0; attempt < 3; attempt++) {
      this.port = await freePort();
      writeFileSync(this.configPath, renderConfig(this.port, this.extraConfig));
      const fd = openSync(this.logPath, 'w');
      this.exit = null;
      try {
        this.proc = spawn(HERALD_BIN, ['serve', '--config', this.configPath], {
          cwd: this.dir,
          stdio: ['ignore', fd, fd],
        });
      } finally {
        closeSync(fd);
      }
      this.proc.on('exit', (code, signal) => {
        this.exit = { code, signal };
      });
      this.proc.on('error', (err) => {
        this.exit = { code: null, signal: null, error: err };
      });
      lastError = await this._waitHealthy();
      if (lastError === 'ok') return this;
      if (this.exit && /in use/i.test(this.log())) continue;
      break;
    }
    await this.stop();
    throw new Error(`Herald did not become healthy: ${lastError}\n` +
      `command: ${HERALD_BIN} serve --config ${this.configPath}\n` +
      `--- herald.toml ---\n${renderConfig(this.port, this.extraConfig)}\n--- server output ---\n${this.log()}`);
  }

  async _waitHealthy() {
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    let last = 'no answer';
    while (Date.now() < deadline) {
      if (this.exit) {
        return `server exited (${JSON.stringify(this.exit)}) before /health answered 200`;
      }
      try {
        const resp = await fetch(`${this.baseUrl}/health`, { signal: AbortSignal.timeout(1000) });
        await resp.arrayBuffer();
        if (resp.status === 200) return 'ok';
        last = `/health answered ${resp.status}`;
      } catch (e) {
        last = `/health: ${e.cause?.code || e.message}`;
      }
      await sleep(50);
    }
    return `timeout after ${STARTUP_TIMEOUT_MS / 1000}s (${last})`;
  }

  /** Exit status if the server died on its own (not stopped by us), else null. */
  exitedUnexpectedly() {
    return !this.stopping && this.exit ? this.exit : null;
  }

  async stop({ keepDir = !!process.env.HERALD_SDK_KEEP_TMP } = {}) {
    this.stopping = true;
    const proc = this.proc;
    if (proc && !this.exit) {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    if (!keepDir) rmSync(this.dir, { recursive: true, force: true });
  }

  token(user, opts) {
    return makeToken(user, opts);
  }

  /** POST /api/<method>; returns the decoded JSON reply ({result} or {error}). */
  async apiRequest(method, params = {}, { rawBody = null } = {}) {
    const resp = await fetch(`${this.baseUrl}/api/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
      body: rawBody ?? JSON.stringify(params),
      signal: AbortSignal.timeout(10000),
    });
    const text = await resp.text();
    if (resp.status !== 200) {
      throw new Error(`API ${method} answered HTTP ${resp.status}: ${text.slice(0, 500)}`);
    }
    try {
      return JSON.parse(text);
    } catch {
      throw new Error(`API ${method} answered non-JSON: ${text.slice(0, 500)}`);
    }
  }

  /** The result of an API call; throws on an error reply. */
  async api(method, params = {}, opts) {
    const reply = await this.apiRequest(method, params, opts);
    if (reply.error) {
      throw new Error(`API ${method} ${JSON.stringify(params)} failed: ${JSON.stringify(reply.error)}`);
    }
    if (!('result' in reply)) throw new Error(`API ${method} reply has no result: ${JSON.stringify(reply)}`);
    return reply.result;
  }

  publish(channel, data) {
    return this.api('publish', { channel, data });
  }
}
