"""Tokens that expire every few seconds, refreshed by centrifuge-python itself.

The SDK arms its refresh timers from the `ttl` of the connect, subscribe, refresh and sub_refresh
replies, so these tests hold only if Herald sends `expires`/`ttl` the way Centrifugo does, and
keeps a connection (and a subscription) whose refresh lands at or just after the token's `exp`
(`client.expired_close_delay`, `client.expired_sub_close_delay`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, List, Tuple

import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    SubscriptionEventHandler,
    SubscriptionState,
)

TOKEN_LIFETIME = 5  # seconds a connection or subscription token lives
RUN_FOR = 60  # seconds the connection is watched
WAIT = 5.0


class Counted(ClientEventHandler, SubscriptionEventHandler):
    """Records every event of a client or a subscription: (seconds since start, name, context)."""

    def __init__(self, label: str):
        self.label = label
        self.t0 = time.monotonic()
        self.log: List[Tuple[float, str, Any]] = []
        self.publications: List[Any] = []

    def _record(self, name: str, ctx: Any) -> None:
        self.log.append((time.monotonic() - self.t0, name, ctx))

    def count(self, name: str) -> int:
        return sum(1 for _, n, _ in self.log if n == name)

    def of(self, name: str) -> List[Any]:
        return [ctx for _, n, ctx in self.log if n == name]

    def history(self) -> str:
        return "\n".join(f"  {self.label} +{t:.2f}s {n}: {c!r}" for t, n, c in self.log) or "  (none)"

    async def wait_for(self, name: str, count: int, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while self.count(name) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.label}: fewer than {count} {name!r} events:\n{self.history()}")
            await asyncio.sleep(0.02)

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
        self.publications.append(ctx.pub)


def client_for(herald, events: Counted, **options: Any) -> Client:
    return Client(
        herald.ws_url,
        events=events,
        timeout=WAIT,
        min_reconnect_delay=0.1,
        max_reconnect_delay=1.0,
        proxy=None,  # the server is on loopback
        **options,
    )


async def test_tokens_expiring_every_5s_are_refreshed_for_a_minute_without_a_disconnect(
    herald, channel_name
):
    user = "refresher"
    channel = channel_name("refreshed")
    refreshes = {"connection": 0, "subscription": 0}

    async def connection_token() -> str:
        refreshes["connection"] += 1
        return herald.token(user, exp_in=TOKEN_LIFETIME)

    async def subscription_token(name: str) -> str:
        assert name == channel
        refreshes["subscription"] += 1
        return herald.token(user, exp_in=TOKEN_LIFETIME, channel=channel)

    client_events = Counted("client")
    sub_events = Counted("sub")
    # Initial tokens are given up front: every get_token call is a refresh.
    client = client_for(
        herald, client_events,
        token=herald.token(user, exp_in=TOKEN_LIFETIME),
        get_token=connection_token,
    )
    sub = client.new_subscription(
        channel, events=sub_events,
        token=herald.token(user, exp_in=TOKEN_LIFETIME, channel=channel),
        get_token=subscription_token,
    )
    try:
        await client.connect()
        await sub.subscribe()
        await sub_events.wait_for("subscribed", 1)
        client_id = client.client_id

        started = time.monotonic()
        for n in range(RUN_FOR):
            await herald.publish(channel, {"n": n})
            await asyncio.sleep(max(0.0, started + n + 1 - time.monotonic()))
        await sub_events.wait_for("publication", RUN_FOR)

        everything = client_events.history() + "\n" + sub_events.history()
        # One connect, one subscribe, and nothing since: no close, no reconnect, no resubscribe.
        assert client_events.count("connecting") == 1, everything
        assert client_events.count("connected") == 1, everything
        assert client_events.count("disconnected") == 0, everything
        assert client_events.count("error") == 0, everything
        assert sub_events.count("subscribing") == 1, everything
        assert sub_events.count("subscribed") == 1, everything
        assert sub_events.count("unsubscribed") == 0, everything
        assert sub_events.count("error") == 0, everything
        assert client.state == ClientState.CONNECTED
        assert sub.state == SubscriptionState.SUBSCRIBED
        assert client.client_id == client_id
        # A token every ~5 s for a minute: about 12 of each, so at least 10.
        assert refreshes["connection"] >= 10, refreshes
        assert refreshes["subscription"] >= 10, refreshes
        # Every publication arrived once, in order, with consecutive offsets.
        assert [p.data for p in sub_events.publications] == [{"n": n} for n in range(RUN_FOR)]
        offsets = [p.offset for p in sub_events.publications]
        assert offsets == list(range(offsets[0], offsets[0] + RUN_FOR)), offsets
    finally:
        await asyncio.wait_for(client.disconnect(), WAIT)


@pytest.mark.herald_config({"client.expired_close_delay": "1s", "client.expired_sub_close_delay": "1s"})
async def test_tokens_the_sdk_cannot_refresh_end_the_connection_and_the_subscription(herald, channel_name):
    """The other side: when get_token fails, the server does close, so the minute above is kept
    open by the refreshes and not by a server that never looks at `exp`."""
    user = "stuck"
    channel = channel_name("stuck")

    async def failing_token(*_: Any) -> str:
        raise RuntimeError("token service down")

    # The connection token expires; the subscription's never would on its own.
    client_events = Counted("client")
    client = client_for(herald, client_events, token=herald.token(user, exp_in=2), get_token=failing_token)
    try:
        await client.connect()
        await client_events.wait_for("connecting", 2, timeout=8)
        reconnect = client_events.of("connecting")[1]
        assert reconnect.code == 3005, client_events.history()
        assert client_events.count("error") >= 1, client_events.history()
    finally:
        await asyncio.wait_for(client.disconnect(), WAIT)

    # The subscription token expires on a connection that lives on.
    client_events = Counted("client")
    sub_events = Counted("sub")
    client = client_for(herald, client_events, token=herald.token(user))
    sub = client.new_subscription(
        channel, events=sub_events,
        token=herald.token(user, exp_in=2, channel=channel),
        get_token=failing_token,
    )
    try:
        await client.connect()
        await sub.subscribe()
        await sub_events.wait_for("subscribing", 2, timeout=8)
        resubscribe = sub_events.of("subscribing")[1]
        assert resubscribe.code == 2501, sub_events.history()
        assert client_events.count("connecting") == 1, client_events.history()
        assert client.state == ClientState.CONNECTED
    finally:
        await asyncio.wait_for(client.disconnect(), WAIT)
