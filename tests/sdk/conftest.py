"""Fixtures for Herald's SDK compatibility tests.

Every test gets its own Herald process: a fresh temporary directory with a generated
herald.toml, a free port on 127.0.0.1, and `HERALD_BIN serve --config <file>` started as a
subprocess. The fixture waits until GET /health answers 200 (20 s at most, then the test fails
with the server's output) and stops the server at teardown.

Environment:
    HERALD_BIN  path of the server binary (default: <repo>/target/debug/herald).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import jwt
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "herald"

HMAC_SECRET = "sdk-test-hmac-secret-0123456789abcdef"
API_KEY = "sdk-test-api-key"

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

# Settings shared by the top-level namespace and the "chat" namespace.
CHANNEL_OPTIONS: Dict[str, Any] = {
    "presence": True,
    "join_leave": True,
    "history_size": 100,
    "history_ttl": "300s",
    "force_recovery": True,
    "allow_subscribe_for_client": True,
    "allow_publish_for_subscriber": True,
    "allow_presence_for_subscriber": True,
    "allow_history_for_subscriber": True,
}


def herald_bin() -> Path:
    return Path(os.environ.get("HERALD_BIN") or DEFAULT_BIN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_table(name: str, table: Dict[str, Any], header: str = "[{}]") -> List[str]:
    lines = [header.format(name)]
    for key, value in table.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return lines


def render_config(port: int, overrides: Optional[Dict[str, Any]] = None) -> str:
    """The herald.toml of one test server.

    `overrides` maps dotted keys to values, e.g. {"client.ping_interval": "1s"},
    {"channel.without_namespace.history_size": 10} or {"channel.namespaces.chat.presence": False};
    a value of None removes the key.
    """
    http = {"listen": f"127.0.0.1:{port}"}
    client = {"ping_interval": "25s", "pong_timeout": "8s"}
    token = {"hmac_secret": HMAC_SECRET}
    api = {"key": API_KEY}
    without_ns = dict(CHANNEL_OPTIONS)
    chat = {"name": "chat", **CHANNEL_OPTIONS}
    proxy: Dict[str, Any] = {}  # backend hooks (docs/hooks.md), written only when set
    tables = {
        "proxy": proxy,
        "http": http,
        "client": client,
        "client.token": token,
        "api": api,
        "channel.without_namespace": without_ns,
        "channel.namespaces.chat": chat,
    }
    for dotted, value in (overrides or {}).items():
        prefix, _, key = dotted.rpartition(".")
        if prefix not in tables:
            raise KeyError(f"unknown config table in override {dotted!r}")
        table = tables[prefix]
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    lines: List[str] = []
    lines += _toml_table("http", http) + [""]
    lines += _toml_table("client", client) + [""]
    lines += _toml_table("client.token", token) + [""]
    lines += _toml_table("api", api) + [""]
    lines += _toml_table("channel.without_namespace", without_ns) + [""]
    lines += _toml_table("channel.namespaces", chat, header="[[{}]]") + [""]
    if proxy:
        lines += _toml_table("proxy", proxy) + [""]
    return "\n".join(lines)


# urllib must not go through a proxy from the environment: the server is on loopback.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HeraldServer:
    """One running Herald process and helpers to talk to it."""

    def __init__(self, workdir: Path, overrides: Optional[Dict[str, Any]] = None):
        self.workdir = workdir
        self.overrides = overrides or {}
        self.port = 0
        self.config_path = workdir / "herald.toml"
        self.log_path = workdir / "herald.log"
        self.proc: Optional[subprocess.Popen] = None
        self.secret = HMAC_SECRET
        self.api_key = API_KEY
        self._stopping = False

    # -- addresses ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    # -- process -----------------------------------------------------------------------------

    def start(self) -> None:
        binary = herald_bin()
        if not binary.is_file() or not os.access(binary, os.X_OK):
            pytest.fail(
                f"Herald binary not found or not executable: {binary}\n"
                "Build it first (cargo build -p herald) or point HERALD_BIN at it.",
                pytrace=False,
            )
        last_error = ""
        for _ in range(3):  # a freshly picked port can be taken by someone else meanwhile
            self.port = free_port()
            self.config_path.write_text(render_config(self.port, self.overrides))
            log = open(self.log_path, "wb")
            try:
                self.proc = subprocess.Popen(
                    [str(binary), "serve", "--config", str(self.config_path)],
                    cwd=self.workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                log.close()
            outcome = self._wait_healthy()
            if outcome == "ok":
                return
            last_error = outcome
            out = self.log_text()
            if self.proc.poll() is not None and "in use" in out.lower():
                continue
            break
        self.stop()
        pytest.fail(
            f"Herald did not become healthy: {last_error}\n"
            f"command: {binary} serve --config {self.config_path}\n"
            f"--- herald.toml ---\n{self.config_path.read_text()}\n"
            f"--- server output ---\n{self.log_tail()}",
            pytrace=False,
        )

    def _wait_healthy(self) -> str:
        assert self.proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return f"server exited with code {code} before /health answered 200"
            try:
                with _NO_PROXY_OPENER.open(self.base_url + "/health", timeout=1) as resp:
                    if resp.status == 200:
                        return "ok"
                    last = f"/health answered {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"/health answered {e.code}"
            except (urllib.error.URLError, OSError) as e:
                last = f"/health: {e}"
            time.sleep(0.05)
        return f"timeout after {STARTUP_TIMEOUT:.0f}s ({last})"

    def exited_unexpectedly(self) -> Optional[int]:
        if self.proc is None or self._stopping:
            return None
        return self.proc.poll()

    def stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            pass

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, max_chars: int = 8000) -> str:
        text = self.log_text()
        if len(text) > max_chars:
            text = "...\n" + text[-max_chars:]
        return text or "(no output)"

    # -- tokens ------------------------------------------------------------------------------

    def token(self, user: str, exp_in: int = 3600, **claims: Any) -> str:
        """HS256 connection token: {"sub": user, "exp": now + exp_in, **claims}."""
        payload = {"sub": user, "exp": int(time.time()) + exp_in, **claims}
        return jwt.encode(payload, self.secret, algorithm="HS256")

    # -- server HTTP API ---------------------------------------------------------------------

    def api_request(self, method: str, params: Any = None, raw_body: Optional[bytes] = None,
                    api_key: Optional[str] = None) -> Dict[str, Any]:
        """POST /api/<method>; returns the decoded JSON reply ({"result": ..} or {"error": ..})."""
        body = raw_body if raw_body is not None else json.dumps(params or {}).encode()
        req = urllib.request.Request(
            f"{self.base_url}/api/{method}",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-API-Key": self.api_key if api_key is None else api_key,
            },
        )
        try:
            with _NO_PROXY_OPENER.open(req, timeout=10) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            payload = e.read()
            raise AssertionError(
                f"API {method} answered HTTP {e.code}: {payload[:500]!r}"
            ) from None
        assert status == 200, f"API {method} answered HTTP {status}: {payload[:500]!r}"
        try:
            return json.loads(payload)
        except ValueError:
            raise AssertionError(f"API {method} answered non-JSON: {payload[:500]!r}") from None

    def api_result(self, method: str, params: Any = None, raw_body: Optional[bytes] = None) -> Any:
        reply = self.api_request(method, params, raw_body=raw_body)
        assert not reply.get("error"), f"API {method} {params!r} failed: {reply['error']!r}"
        assert "result" in reply, f"API {method} reply has no result: {reply!r}"
        return reply["result"]

    async def api(self, method: str, params: Any = None, raw_body: Optional[bytes] = None) -> Any:
        """api_result() off the event loop, so the SDK keeps reading its socket meanwhile."""
        return await asyncio.to_thread(self.api_result, method, params, raw_body)

    async def publish(self, channel: str, data: Any) -> Any:
        return await self.api("publish", {"channel": channel, "data": data})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def channel_name():
    """Factory of unique channel names: channel_name("news") or channel_name("room", ns="chat")."""

    def make(prefix: str = "ch", ns: Optional[str] = None) -> str:
        name = unique(prefix)
        return f"{ns}:{name}" if ns else name

    return make


@pytest.fixture
def herald(request):
    """A fresh Herald server for this test.

    Config overrides: @pytest.mark.herald_config({"client.ping_interval": "1s", ...}).
    """
    overrides: Dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("herald_config"))):
        for arg in marker.args:
            overrides.update(arg)
    workdir = Path(tempfile.mkdtemp(prefix="herald-sdk-"))
    server = HeraldServer(workdir, overrides)
    request.node._herald_servers = getattr(request.node, "_herald_servers", []) + [server]
    try:
        server.start()
        yield server
        code = server.exited_unexpectedly()
        if code is not None:
            pytest.fail(
                f"Herald exited during the test with code {code}\n"
                f"--- server output ---\n{server.log_tail()}",
                pytrace=False,
            )
    finally:
        server.stop()
        if os.environ.get("HERALD_SDK_KEEP_TMP"):
            print(f"kept Herald work dir {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server output to the report of a failed test."""
    report = yield
    if report.failed and report.when == "call":
        for server in getattr(item, "_herald_servers", []):
            report.sections.append((f"herald server output (port {server.port})", server.log_tail()))
    return report
