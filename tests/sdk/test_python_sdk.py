"""Herald against the official Centrifugo Python SDK (centrifuge-python).

Every test starts its own Herald (see conftest.py) and drives it with the SDK's real Client,
over the JSON protocol at /connection/websocket, and with the server HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, List, Optional, Tuple

import jwt
import pytest
import websockets
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ReplyError,
    StreamPosition,
    Subscription,
    SubscriptionEventHandler,
    SubscriptionState,
)

WAIT = 5.0  # seconds to wait for any single event


# --------------------------------------------------------------------------------------------
# Event recording
# --------------------------------------------------------------------------------------------


class _Recorder:
    """Puts every SDK event into a queue of its own and into one log (shown on timeouts)."""

    names: Tuple[str, ...] = ()

    def __init__(self, label: str):
        self.label = label
        self.log: List[Tuple[float, str, Any]] = []
        self.queues = {name: asyncio.Queue() for name in self.names}
        self._t0 = time.monotonic()

    def _record(self, name: str, ctx: Any) -> None:
        self.log.append((time.monotonic() - self._t0, name, ctx))
        self.queues[name].put_nowait(ctx)

    def history(self) -> str:
        if not self.log:
            return f"  ({self.label}: no events)"
        return "\n".join(f"  {self.label} +{t:.3f}s {name}: {ctx!r}" for t, name, ctx in self.log)

    async def next(self, name: str, timeout: float = WAIT) -> Any:
        try:
            return await asyncio.wait_for(self.queues[name].get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"{self.label}: no {name!r} event within {timeout}s; events so far:\n{self.history()}"
            ) from None

    async def take(self, name: str, count: int, timeout: float = WAIT) -> List[Any]:
        return [await self.next(name, timeout) for _ in range(count)]

    async def expect_none(self, name: str, within: float = 0.5) -> None:
        try:
            ctx = await asyncio.wait_for(self.queues[name].get(), within)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"{self.label}: unexpected {name!r} event {ctx!r}; events:\n{self.history()}")

    def count(self, name: str) -> int:
        return sum(1 for _, n, _ in self.log if n == name)


class ClientEvents(_Recorder, ClientEventHandler):
    names = (
        "connecting", "connected", "disconnected", "error",
        # server-side subscriptions
        "subscribing", "subscribed", "unsubscribed", "publication", "join", "leave",
    )

    async def on_connecting(self, ctx):
        self._record("connecting", ctx)

    async def on_connected(self, ctx):
        self._record("connected", ctx)

    async def on_disconnected(self, ctx):
        self._record("disconnected", ctx)

    async def on_error(self, ctx):
        self._record("error", ctx)

    async def on_subscribing(self, ctx):
        self._record("subscribing", ctx)

    async def on_subscribed(self, ctx):
        self._record("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        self._record("unsubscribed", ctx)

    async def on_publication(self, ctx):
        self._record("publication", ctx)

    async def on_join(self, ctx):
        self._record("join", ctx)

    async def on_leave(self, ctx):
        self._record("leave", ctx)


class SubEvents(_Recorder, SubscriptionEventHandler):
    names = ("subscribing", "subscribed", "unsubscribed", "publication", "join", "leave", "error")

    async def on_subscribing(self, ctx):
        self._record("subscribing", ctx)

    async def on_subscribed(self, ctx):
        self._record("subscribed", ctx)

    async def on_unsubscribed(self, ctx):
        self._record("unsubscribed", ctx)

    async def on_publication(self, ctx):
        self._record("publication", ctx)

    async def on_join(self, ctx):
        self._record("join", ctx)

    async def on_leave(self, ctx):
        self._record("leave", ctx)

    async def on_error(self, ctx):
        self._record("error", ctx)


# --------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def sdk(herald):
    """Factory of connected SDK clients; all are disconnected at teardown.

    `await sdk("alice")` -> (client, ClientEvents) once the client is connected.
    """
    clients: List[Client] = []

    async def make(user: str = "user", *, token: Optional[str] = None, connect: bool = True,
                   **options: Any) -> Tuple[Client, ClientEvents]:
        events = ClientEvents(f"client[{user}]")
        options.setdefault("timeout", WAIT)
        options.setdefault("min_reconnect_delay", 0.1)
        options.setdefault("max_reconnect_delay", 1.0)
        client = Client(
            herald.ws_url,
            events=events,
            token=herald.token(user) if token is None else token,
            proxy=None,  # never through a proxy from the environment: the server is on loopback
            **options,
        )
        clients.append(client)
        if connect:
            await client.connect()
            await events.next("connected")
            assert client.state == ClientState.CONNECTED
        return client, events

    yield make
    for client in clients:
        try:
            await asyncio.wait_for(client.disconnect(), WAIT)
        except Exception:  # noqa: BLE001 - teardown must reach every client
            pass


async def subscribe(client: Client, channel: str, **options: Any) -> Tuple[Subscription, SubEvents, Any]:
    """Subscribe and wait for the subscribed event; returns (sub, events, SubscribedContext)."""
    events = SubEvents(f"sub[{channel}]")
    sub = client.new_subscription(channel, events=events, **options)
    await sub.subscribe()
    ctx = await events.next("subscribed")
    assert sub.state == SubscriptionState.SUBSCRIBED
    assert ctx.channel == channel
    return sub, events, ctx


async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Retry an async check until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: condition not met within {timeout}s (last: {last!r})")
        await asyncio.sleep(0.05)


def assert_consecutive(offsets: List[int], first: Optional[int] = None) -> None:
    assert all(isinstance(o, int) and o > 0 for o in offsets), f"offsets must be positive: {offsets}"
    start = offsets[0] if first is None else first
    assert offsets == list(range(start, start + len(offsets))), f"offsets not consecutive: {offsets}"


# --------------------------------------------------------------------------------------------
# (a) API publish reaches a subscriber
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", [None, "chat"], ids=["top-level", "chat-namespace"])
async def test_api_publication_reaches_subscriber(herald, sdk, channel_name, ns):
    channel = channel_name("news", ns=ns)
    client, events = await sdk("alice")
    assert client.client_id, "connect reply must carry a client id"
    sub, sub_events, _ = await subscribe(client, channel)

    payloads = [
        {"text": "hello", "n": 1, "nested": {"list": [1, "two", None, True, 2.5]}},
        {"unicode": "héllo ✓ \u2028 \"quoted\" \\ back\nslash"},
        "a plain string",
        42,
        [1, 2, 3],
    ]
    for data in payloads:
        await herald.publish(channel, data)

    got = await sub_events.take("publication", len(payloads))
    assert [ctx.pub.data for ctx in got] == payloads
    # History is on for the channel, so every publication carries its stream offset.
    assert_consecutive([ctx.pub.offset for ctx in got])
    # Publications from the server API have no publisher client info.
    assert all(ctx.pub.info is None for ctx in got)
    await sub_events.expect_none("publication", 0.3)
    assert events.count("connecting") == 1, events.history()  # only the initial connect()


async def test_pretty_printed_api_body_and_bursts_keep_the_json_protocol_intact(herald, sdk, channel_name):
    """The JSON protocol is newline-delimited: a reply frame may hold several replies separated
    by '\\n', and both SDKs split frames on '\\n' before parsing. So `data` received pretty-printed
    (with newlines between tokens) must not be forwarded verbatim, and a burst of publications
    (likely coalesced into one frame) must still parse and arrive in order."""
    channel = channel_name("pretty")
    client, events = await sdk("alice")
    _, sub_events, _ = await subscribe(client, channel)

    data = {"multi": "line", "list": [1, 2, {"deep": True}], "s": "keeps\nescaped newline"}
    body = json.dumps({"channel": channel, "data": data}, indent=2).encode()
    assert b"\n" in body
    await herald.api("publish", raw_body=body)
    ctx = await sub_events.next("publication")
    assert ctx.pub.data == data

    burst = [{"i": i, "pad": "x" * (i % 7)} for i in range(50)]
    for d in burst:
        await herald.publish(channel, d)
    got = await sub_events.take("publication", len(burst))
    assert [c.pub.data for c in got] == burst
    assert_consecutive([c.pub.offset for c in got])

    assert client.state == ClientState.CONNECTED
    assert events.count("connecting") == 1, f"client reconnected:\n{events.history()}"
    assert events.count("error") == 0, events.history()


# --------------------------------------------------------------------------------------------
# (b) presence and presence_stats
# --------------------------------------------------------------------------------------------


async def test_presence_and_presence_stats(herald, sdk, channel_name):
    channel = channel_name("room", ns="chat")
    alice, _ = await sdk("alice")
    bob1, _ = await sdk("bob")
    bob2, _ = await sdk("bob")
    alice_sub, _, _ = await subscribe(alice, channel)
    _, _, _ = await subscribe(bob1, channel)
    bob2_sub, _, _ = await subscribe(bob2, channel)

    ids = {alice.client_id: "alice", bob1.client_id: "bob", bob2.client_id: "bob"}
    assert len(ids) == 3, "client ids must be unique per connection"

    presence = await alice_sub.presence()
    assert set(presence.clients) == set(ids)
    for client_id, info in presence.clients.items():
        assert info.client == client_id
        assert info.user == ids[client_id]

    stats = await alice_sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (3, 2)

    # The same through the Client-level methods.
    presence = await bob1.presence(channel)
    assert set(presence.clients) == set(ids)

    # Unsubscribing removes the connection from presence.
    await bob2_sub.unsubscribe()

    async def two_left():
        s = await alice_sub.presence_stats()
        return (s.num_clients, s.num_users) == (2, 2)

    await eventually(two_left, "presence_stats after unsubscribe")
    presence = await alice_sub.presence()
    assert set(presence.clients) == {alice.client_id, bob1.client_id}

    # Disconnecting removes it too.
    await bob1.disconnect()

    async def one_left():
        s = await alice_sub.presence_stats()
        return (s.num_clients, s.num_users) == (1, 1)

    await eventually(one_left, "presence_stats after disconnect")


async def test_join_and_leave_events(herald, sdk, channel_name):
    channel = channel_name("lobby")
    alice, _ = await sdk("alice")
    bob, _ = await sdk("bob")
    _, alice_events, _ = await subscribe(alice, channel, join_leave=True)
    bob_sub, _, _ = await subscribe(bob, channel, join_leave=True)

    # Every subscriber, the joining one included, receives join events: skip alice's own.
    join = await alice_events.next("join")
    while join.info.user == "alice":
        join = await alice_events.next("join")
    assert (join.info.user, join.info.client) == ("bob", bob.client_id)

    await bob_sub.unsubscribe()
    leave = await alice_events.next("leave")
    assert (leave.info.user, leave.info.client) == ("bob", bob.client_id)


# --------------------------------------------------------------------------------------------
# (c) history
# --------------------------------------------------------------------------------------------


async def test_history_returns_publications_with_offsets_and_epoch(herald, sdk, channel_name):
    channel = channel_name("hist", ns="chat")
    client, _ = await sdk("alice")
    sub, sub_events, subscribed = await subscribe(client, channel)

    api_results = [await herald.publish(channel, {"i": i}) for i in range(1, 4)]
    live = await sub_events.take("publication", 3)

    history = await sub.history(limit=10)
    assert [p.data for p in history.publications] == [{"i": 1}, {"i": 2}, {"i": 3}]
    offsets = [p.offset for p in history.publications]
    assert_consecutive(offsets)
    assert offsets == [ctx.pub.offset for ctx in live], "history and live offsets must agree"
    assert isinstance(history.epoch, str) and history.epoch, "history must report the stream epoch"
    assert history.offset == offsets[-1], "history offset is the stream top"

    # force_recovery makes the subscription recoverable, so it reported a position of the same stream.
    assert subscribed.stream_position is not None
    assert subscribed.stream_position.epoch == history.epoch

    # The API publish result reports the same position when it carries one.
    for result, offset in zip(api_results, offsets):
        if isinstance(result, dict) and "offset" in result:
            assert result["offset"] == offset
            assert result.get("epoch", history.epoch) == history.epoch

    # The Client-level method gives the same answer.
    again = await client.history(channel, limit=10)
    assert [p.data for p in again.publications] == [p.data for p in history.publications]
    assert (again.offset, again.epoch) == (history.offset, history.epoch)


async def test_history_limit_since_and_reverse(herald, sdk, channel_name):
    channel = channel_name("hist-opts")
    client, _ = await sdk("alice")
    sub, sub_events, _ = await subscribe(client, channel)
    for i in range(1, 6):
        await herald.publish(channel, {"i": i})
    await sub_events.take("publication", 5)

    full = await sub.history(limit=-1)  # -1: no limit
    assert [p.data["i"] for p in full.publications] == [1, 2, 3, 4, 5]
    epoch, top = full.epoch, full.offset
    first = full.publications[0].offset

    # limit 0 (the SDK's default): only the stream position, no publications (Centrifugo semantics).
    position_only = await sub.history()
    assert position_only.publications == []
    assert (position_only.offset, position_only.epoch) == (top, epoch)

    limited = await sub.history(limit=2)
    assert [p.data["i"] for p in limited.publications] == [1, 2]
    assert (limited.offset, limited.epoch) == (top, epoch)

    newest_first = await sub.history(limit=2, reverse=True)
    assert [p.data["i"] for p in newest_first.publications] == [5, 4]

    since = await sub.history(limit=10, since=StreamPosition(offset=first + 2, epoch=epoch))
    assert [p.data["i"] for p in since.publications] == [4, 5]


# --------------------------------------------------------------------------------------------
# (d) recovery
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("requested", [True, False], ids=["recoverable-requested", "force-recovery"])
async def test_recovery_after_reconnect(herald, sdk, channel_name, requested):
    channel = channel_name("feed", ns="chat")
    client, events = await sdk("alice")
    options = {"recoverable": True} if requested else {}
    sub, sub_events, first = await subscribe(client, channel, **options)

    assert first.recoverable is True, "force_recovery (or recoverable: true) must make the reply recoverable"
    assert first.stream_position is not None and first.stream_position.epoch
    assert (first.was_recovering, first.recovered) == (False, False)
    epoch = first.stream_position.epoch

    # One live publication first: the SDK takes its offset as the position to recover from.
    await herald.publish(channel, {"seq": 0})
    live = (await sub_events.next("publication")).pub
    assert live.offset > 0

    await client.disconnect()
    await events.next("disconnected")
    # The SDK keeps the subscription and resubscribes it, with recover/offset/epoch, on connect.
    assert sub.state == SubscriptionState.SUBSCRIBING

    for seq in (1, 2, 3):
        await herald.publish(channel, {"seq": seq})

    await client.connect()
    await events.next("connected")
    second = await sub_events.next("subscribed")
    assert second.was_recovering is True, "the resubscribe asked for recovery"
    assert second.recovered is True, f"all missed publications were in history: {second!r}"
    assert second.recoverable is True
    assert second.stream_position is not None and second.stream_position.epoch == epoch

    missed = await sub_events.take("publication", 3)
    assert [ctx.pub.data for ctx in missed] == [{"seq": 1}, {"seq": 2}, {"seq": 3}]
    assert_consecutive([ctx.pub.offset for ctx in missed], first=live.offset + 1)
    await sub_events.expect_none("publication", 0.3)  # nothing twice

    # Live delivery goes on after the recovery.
    await herald.publish(channel, {"seq": 4})
    after = (await sub_events.next("publication")).pub
    assert (after.data, after.offset) == ({"seq": 4}, live.offset + 4)


@pytest.mark.herald_config({"channel.without_namespace.history_size": 2})
async def test_recovery_reports_failure_when_history_lost_publications(herald, sdk, channel_name):
    channel = channel_name("short-history")
    client, events = await sdk("alice")
    sub, sub_events, _ = await subscribe(client, channel)
    await herald.publish(channel, {"seq": 0})
    await sub_events.next("publication")

    await client.disconnect()
    await events.next("disconnected")
    for seq in range(1, 6):  # 5 missed, history keeps 2
        await herald.publish(channel, {"seq": seq})

    await client.connect()
    second = await sub_events.next("subscribed")
    assert second.was_recovering is True
    assert second.recovered is False, "publications 1..3 are gone: the server must not claim recovery"
    assert sub.state == SubscriptionState.SUBSCRIBED


# --------------------------------------------------------------------------------------------
# (e) client publish
# --------------------------------------------------------------------------------------------


async def test_client_publish_reaches_other_clients(herald, sdk, channel_name):
    channel = channel_name("talk", ns="chat")
    alice, _ = await sdk("alice")
    bob, _ = await sdk("bob")
    alice_sub, alice_events, _ = await subscribe(alice, channel)
    _, bob_events, _ = await subscribe(bob, channel)

    await alice_sub.publish({"from": "alice", "text": "hi bob"})
    got = (await bob_events.next("publication")).pub
    assert got.data == {"from": "alice", "text": "hi bob"}
    assert got.offset > 0
    # A publication from a client carries the publisher's info.
    assert got.info is not None, "client publications carry the publisher's ClientInfo"
    assert (got.info.user, got.info.client) == ("alice", alice.client_id)

    # The publisher is a subscriber too and gets its own publication.
    own = (await alice_events.next("publication")).pub
    assert (own.data, own.offset) == (got.data, got.offset)

    # Client-level publish to the same channel.
    await bob.publish(channel, "from bob")
    assert (await alice_events.next("publication")).pub.data == "from bob"
    assert (await bob_events.next("publication")).pub.data == "from bob"


# --------------------------------------------------------------------------------------------
# (f) server-side personal channel
# --------------------------------------------------------------------------------------------


async def test_personal_channel_server_side_subscription(herald, sdk):
    alice, alice_events = await sdk("alice")
    bob, bob_events = await sdk("bob")

    # The connect reply's `subs` lists the personal channel: the SDK emits a server-side subscribed event.
    sub_ctx = await alice_events.next("subscribed")
    assert sub_ctx.channel == "#alice"
    assert (await bob_events.next("subscribed")).channel == "#bob"

    await herald.publish("#alice", {"note": "for alice only"})
    pub_ctx = await alice_events.next("publication")
    assert pub_ctx.channel == "#alice"
    assert pub_ctx.pub.data == {"note": "for alice only"}
    await bob_events.expect_none("publication", 0.3)

    await herald.publish("#bob", {"note": "for bob"})
    pub_ctx = await bob_events.next("publication")
    assert (pub_ctx.channel, pub_ctx.pub.data) == ("#bob", {"note": "for bob"})
    await alice_events.expect_none("publication", 0.3)


# --------------------------------------------------------------------------------------------
# (g) RPC without a proxy: "not available"
# --------------------------------------------------------------------------------------------


async def test_rpc_is_not_available(herald, sdk):
    client, events = await sdk("alice")
    with pytest.raises(ReplyError) as raised:
        await client.rpc("get_profile", {"id": 1})
    assert raised.value.code == 108
    assert raised.value.message == "not available"
    assert raised.value.temporary is False

    # An error reply leaves the connection up and usable.
    assert client.state == ClientState.CONNECTED
    with pytest.raises(ReplyError) as raised:
        await client.rpc("", None)
    assert raised.value.code == 108
    assert client.state == ClientState.CONNECTED
    assert events.count("connecting") == 1, events.history()


# --------------------------------------------------------------------------------------------
# Connection tokens, ping/pong
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["not-a-jwt", "wrong-secret"])
async def test_invalid_token_disconnects_without_reconnect(herald, sdk, token):
    if token == "wrong-secret":
        token = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 3600}, "not-the-secret", algorithm="HS256")
    client, events = await sdk("mallory", token=token, connect=False)
    await client.connect()
    ctx = await events.next("disconnected")
    # Centrifugo closes with 3500 "invalid token"; an error reply 101 "unauthorized" is terminal too.
    assert ctx.code in (3500, 101), f"unexpected disconnect {ctx!r}"
    assert client.state == ClientState.DISCONNECTED
    await events.expect_none("connected", 0.5)
    assert events.count("connecting") == 1, f"the SDK must not reconnect:\n{events.history()}"


async def test_expired_token_is_refreshed_through_get_token(herald, sdk):
    calls = []

    async def get_token() -> str:
        calls.append(time.monotonic())
        return herald.token("alice")

    client, events = await sdk("alice", token=herald.token("alice", exp_in=-60), get_token=get_token,
                               connect=False)
    await client.connect()
    await events.next("connected")
    # Error 109 "token expired" makes the SDK fetch a new token and connect again.
    assert len(calls) == 1, events.history()
    errors = [ctx for _, name, ctx in events.log if name == "error"]
    assert any(getattr(e.error, "code", None) == 109 for e in errors), events.history()


@pytest.mark.herald_config({"client.ping_interval": "1s", "client.pong_timeout": "800ms"})
async def test_ping_pong_keeps_connection_alive(herald, sdk, channel_name, monkeypatch):
    """Two keepalives run at once: the protocol's ({} from the server, {} back from the SDK) and
    the `websockets` library's own WebSocket Ping control frames (every 20 s by default, the SDK
    doesn't change it; the connection is closed when no Pong frame comes within 20 s). Here the
    latter is sped up to every 0.5 s."""
    real_connect = websockets.connect

    def connect_with_fast_ws_pings(*args, **kwargs):
        kwargs.update(ping_interval=0.5, ping_timeout=2.0)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(websockets, "connect", connect_with_fast_ws_pings)
    channel = channel_name("keepalive")
    # The SDK reconnects when no ping arrives within ping + max_server_ping_delay seconds.
    client, events = await sdk("alice", max_server_ping_delay=1.0)
    assert client._ping_interval == 1, "connect reply must carry ping: 1 (seconds)"
    assert client._send_pong is True, "connect reply must carry pong: true"
    _, sub_events, _ = await subscribe(client, channel)

    await asyncio.sleep(4.5)  # several ping/pong rounds
    assert client.state == ClientState.CONNECTED
    assert events.count("connecting") == 1, f"connection was lost:\n{events.history()}"
    assert sub_events.count("subscribing") == 1, sub_events.history()
    await herald.publish(channel, {"still": "here"})
    assert (await sub_events.next("publication")).pub.data == {"still": "here"}


# --------------------------------------------------------------------------------------------
# storm control: a conflated channel's snapshot reaches the application through the real SDK
# --------------------------------------------------------------------------------------------


@pytest.mark.herald_config({"channel.namespaces.chat.conflation_key": "/sym", "channel.namespaces.chat.batch_window": "200ms"})
async def test_conflated_channel_snapshot_and_windowed_updates(herald, sdk, channel_name):
    channel = channel_name("quotes", ns="chat")
    for sym, px in [("A", 1), ("B", 1), ("A", 2)]:
        await herald.publish(channel, {"sym": sym, "px": px})
    client, _ = await sdk("alice")
    _, events, subscribed = await subscribe(client, channel)
    snapshot = await events.take("publication", 2)
    assert [ctx.pub.data for ctx in snapshot] == [{"sym": "B", "px": 1}, {"sym": "A", "px": 2}]
    # Updates within one window are conflated: A's latest value only.
    for sym, px in [("A", 3), ("A", 4), ("B", 2)]:
        await herald.publish(channel, {"sym": sym, "px": px})
    live = []
    while len(live) < 2 or live[-1] != {"sym": "B", "px": 2}:
        live.append((await events.next("publication")).pub.data)
        assert len(live) <= 3, f"superseded values delivered: {live}"
    assert {"sym": "A", "px": 4} in live and {"sym": "A", "px": 3} not in live[1:], live
