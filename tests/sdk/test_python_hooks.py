"""Backend hooks with the official Python SDK, unchanged: a client without a token is
authenticated by the backend from its handshake cookie, subscribes and publishes through the
backend's checks (publications rewritten), and calls rpc methods the backend answers.

The backend is a small HTTP server in this process, speaking Centrifugo's proxy format.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List

import pytest
from centrifuge import Client, ClientState, ReplyError

from conftest import HeraldServer, free_port
from test_python_sdk import WAIT, ClientEvents, subscribe


class Backend(BaseHTTPRequestHandler):
    """Answers /connect, /subscribe, /publish and /rpc; records what it was asked."""

    calls: List[Dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        Backend.calls.append({"path": self.path, "body": body, "cookie": self.headers.get("Cookie")})
        answer = self.answer(self.path, body)
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def answer(self, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
        if path == "/connect":
            cookie = self.headers.get("Cookie") or ""
            if not cookie.startswith("session="):
                return {"disconnect": {"code": 4501, "reason": "login required"}}
            user = cookie[len("session="):]
            return {"result": {"user": user, "data": {"hello": user}, "info": {"name": user.title()}}}
        if path == "/subscribe":
            return {"result": {}}
        if path == "/publish":
            return {"result": {"data": {"text": body["data"]["text"].upper(), "by": body["user"]}}}
        if path == "/rpc":
            if body["method"] == "sum":
                return {"result": {"data": {"sum": sum(body["data"])}}}
            return {"error": {"code": 1004, "message": "unknown method"}}
        return {"result": {}}

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def hooked():
    """A backend on a free port and a Herald whose hooks point at it."""
    Backend.calls = []
    backend = ThreadingHTTPServer(("127.0.0.1", free_port()), Backend)
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{backend.server_address[1]}"
    server = HeraldServer(
        Path(tempfile.mkdtemp(prefix="herald-sdk-hooks-")),
        {
            "http.allowed_origins": ["https://im.example"],  # cookies are forwarded
            "proxy.connect_endpoint": f"{base}/connect",
            "proxy.subscribe_endpoint": f"{base}/subscribe",
            "proxy.publish_endpoint": f"{base}/publish",
            "proxy.rpc_endpoint": f"{base}/rpc",
            "channel.namespaces.chat.proxy_subscribe": True,
            "channel.namespaces.chat.proxy_publish": True,
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        backend.shutdown()


async def test_sdk_with_backend_hooks(hooked):
    events = ClientEvents("client[alice]")
    client = Client(
        hooked.ws_url,
        events=events,
        token="",
        headers={"Cookie": "session=alice"},
        timeout=WAIT,
        proxy=None,
    )
    try:
        await client.connect()
        connected = await events.next("connected")
        assert connected.data == {"hello": "alice"}
        assert client.state == ClientState.CONNECTED

        sub, sub_events, _ = await subscribe(client, "chat:room")
        await sub.publish({"text": "hi there"})
        publication = await sub_events.next("publication")
        assert publication.pub.data == {"text": "HI THERE", "by": "alice"}
        assert publication.pub.info.user == "alice"

        reply = await client.rpc("sum", [1, 2, 3])
        assert reply.data == {"sum": 6}
        with pytest.raises(ReplyError) as raised:
            await client.rpc("nope", None)
        assert raised.value.code == 1004
        assert raised.value.message == "unknown method"
        assert client.state == ClientState.CONNECTED

        paths = [c["path"] for c in Backend.calls]
        assert paths[0] == "/connect" and Backend.calls[0]["cookie"] == "session=alice"
        assert "/subscribe" in paths and "/publish" in paths
    finally:
        await asyncio.wait_for(client.disconnect(), WAIT)
