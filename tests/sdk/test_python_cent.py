"""The server API through `cent`, Centrifugo's official Python API client, unchanged: every method
Herald implements, called through cent's typed client, whose replies cent parses into its pydantic
models — a reply shaped differently from Centrifugo's fails to parse (CentDecodeError). A
centrifuge-python client is connected meanwhile, so the methods act on a real connection."""

from __future__ import annotations

import asyncio
import time
from typing import Any, List, Tuple

import pytest
from cent import (
    BatchRequest,
    BroadcastRequest,
    BroadcastResult,
    ChannelsRequest,
    ChannelsResult,
    Client,
    Disconnect,
    DisconnectRequest,
    DisconnectResult,
    HistoryRemoveRequest,
    HistoryRemoveResult,
    HistoryRequest,
    HistoryResult,
    InfoRequest,
    InfoResult,
    PresenceRequest,
    PresenceResult,
    PresenceStatsRequest,
    PresenceStatsResult,
    PublishRequest,
    PublishResult,
    ConnectionsRequest,
    ConnectionsResult,
    RefreshRequest,
    RefreshResult,
    StreamPosition,
    SubscribeRequest,
    SubscribeResult,
    UnsubscribeRequest,
    UnsubscribeResult,
    UpdateUserStatusRequest,
)
from cent.exceptions import CentApiResponseError, CentTransportError
import centrifuge

from conftest import API_KEY

WAIT = 5.0


def test_cent_publish_batch_history_and_info(herald, channel_name):
    client = Client(herald.base_url + "/api", API_KEY)
    channel = channel_name("cent")

    first = client.publish(PublishRequest(channel=channel, data={"n": 1}))
    assert first.offset == 1 and first.epoch

    batch = client.batch(
        BatchRequest(
            requests=[
                PublishRequest(channel=channel, data={"n": 2}),
                PublishRequest(channel=channel, data={"n": 3}),
                PresenceStatsRequest(channel=channel),
            ]
        )
    )
    assert [reply.offset for reply in batch.replies[:2]] == [2, 3]
    assert all(reply.epoch == first.epoch for reply in batch.replies[:2])
    assert batch.replies[2].num_clients == 0

    history = client.history(HistoryRequest(channel=channel, limit=-1))
    assert [p.data for p in history.publications] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert [p.offset for p in history.publications] == [1, 2, 3]

    info = client.info(InfoRequest())
    assert len(info.nodes) == 1


class Events(centrifuge.ClientEventHandler):
    """The connected SDK client's events (server-side subscriptions arrive at the client)."""

    def __init__(self) -> None:
        self.log: List[Tuple[str, Any]] = []

    def of(self, name: str) -> List[Any]:
        return [ctx for n, ctx in self.log if n == name]

    async def wait_for(self, name: str, count: int = 1) -> List[Any]:
        deadline = time.monotonic() + WAIT
        while len(self.of(name)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} {name!r} events: {self.log!r}"
            await asyncio.sleep(0.02)
        return self.of(name)

    async def on_connected(self, ctx):
        self.log.append(("connected", ctx))

    async def on_connecting(self, ctx):
        self.log.append(("connecting", ctx))

    async def on_disconnected(self, ctx):
        self.log.append(("disconnected", ctx))

    async def on_subscribed(self, ctx):
        self.log.append(("subscribed", ctx))

    async def on_unsubscribed(self, ctx):
        self.log.append(("unsubscribed", ctx))

    async def on_publication(self, ctx):
        self.log.append(("publication", ctx))


async def test_cent_every_method_herald_implements(herald, channel_name):
    """publish, broadcast, subscribe, unsubscribe, disconnect, presence, presence_stats, history,
    history_remove, channels, connections, info and batch, each answering cent's typed result."""
    api = Client(herald.base_url + "/api", API_KEY)

    async def call(method: str, request: Any) -> Any:
        # Off the event loop: the SDK client keeps reading its socket meanwhile.
        return await asyncio.to_thread(getattr(api, method), request)

    channel = channel_name("cent-all", ns="chat")
    other = channel_name("cent-other", ns="chat")
    events = Events()
    sdk = centrifuge.Client(herald.ws_url, events=events, token=herald.token("alice"), proxy=None,
                            timeout=WAIT)
    try:
        await sdk.connect()
        await events.wait_for("connected")
        client_id = sdk.client_id

        subscribed = await call("subscribe", SubscribeRequest(user="alice", channel=channel))
        assert isinstance(subscribed, SubscribeResult)
        pushed = [ctx.channel for ctx in await events.wait_for("subscribed", 2)]
        assert channel in pushed, pushed  # besides the personal channel "#alice"

        presence = await call("presence", PresenceRequest(channel=channel))
        assert isinstance(presence, PresenceResult)
        assert list(presence.presence) == [client_id]
        assert presence.presence[client_id].client == client_id
        assert presence.presence[client_id].user == "alice"
        empty = await call("presence", PresenceRequest(channel=other))
        assert empty.presence == {}

        stats = await call("presence_stats", PresenceStatsRequest(channel=channel))
        assert isinstance(stats, PresenceStatsResult)
        assert (stats.num_clients, stats.num_users) == (1, 1)

        published = await call("publish", PublishRequest(channel=channel, data={"n": 1},
                                                         tags={"kind": "first"}))
        assert isinstance(published, PublishResult)
        assert published.offset == 1 and published.epoch
        got = await events.wait_for("publication")
        assert (got[0].channel, got[0].pub.data) == (channel, {"n": 1})

        broadcast = await call("broadcast", BroadcastRequest(
            channels=[channel, other, "nowhere:x"], data={"n": 2}))
        assert isinstance(broadcast, BroadcastResult)
        ok, ok_other, failed = broadcast.responses
        assert (ok.result.offset, ok.result.epoch, ok.error) == (2, published.epoch, None)
        assert ok_other.result.offset == 1
        assert failed.result is None and failed.error.code == 102

        history = await call("history", HistoryRequest(channel=channel, limit=-1))
        assert isinstance(history, HistoryResult)
        assert [(p.offset, p.data) for p in history.publications] == [(1, {"n": 1}), (2, {"n": 2})]
        assert history.publications[0].tags == {"kind": "first"}
        assert (history.offset, history.epoch) == (2, published.epoch)
        since = await call("history", HistoryRequest(
            channel=channel, limit=-1, since=StreamPosition(offset=1, epoch=published.epoch)))
        assert [p.offset for p in since.publications] == [2]
        newest = await call("history", HistoryRequest(channel=channel, limit=1, reverse=True))
        assert [p.offset for p in newest.publications] == [2]

        channels = await call("channels", ChannelsRequest(pattern="chat:cent-all-*"))
        assert isinstance(channels, ChannelsResult)
        assert list(channels.channels) == [channel]
        assert channels.channels[channel].num_clients == 1

        connections = await call("connections", ConnectionsRequest(user="alice", expression=""))
        assert isinstance(connections, ConnectionsResult)
        assert list(connections.connections) == [client_id]
        mine = connections.connections[client_id]
        assert (mine.transport, mine.protocol, mine.user) == ("websocket", "json", "alice")
        assert channel in mine.state.channels and "#alice" in mine.state.channels

        info = await call("info", InfoRequest())
        assert isinstance(info, InfoResult)
        (node,) = info.nodes
        assert node.uid and node.name and node.version
        assert (node.num_clients, node.num_users) == (1, 1)
        assert node.num_channels >= 2 and node.num_subs >= 2  # channel and "#alice"

        unsubscribed = await call("unsubscribe", UnsubscribeRequest(user="alice", channel=channel))
        assert isinstance(unsubscribed, UnsubscribeResult)
        gone = await events.wait_for("unsubscribed")
        assert gone[0].channel == channel

        removed = await call("history_remove", HistoryRemoveRequest(channel=channel))
        assert isinstance(removed, HistoryRemoveResult)
        after = await call("history", HistoryRequest(channel=channel, limit=-1))
        assert after.publications == [] and after.offset == 0

        # A method error is cent's CentApiResponseError with Herald's code.
        with pytest.raises(CentApiResponseError) as refused:
            await call("publish", PublishRequest(channel="nowhere:x", data=1))
        assert refused.value.code == 102

        dropped = await call("disconnect", DisconnectRequest(
            user="alice", disconnect=Disconnect(code=4501, reason="bye")))
        assert isinstance(dropped, DisconnectResult)
        closed = await events.wait_for("disconnected")
        assert (closed[0].code, closed[0].reason) == (4501, "bye")
    finally:
        await asyncio.wait_for(sdk.disconnect(), WAIT)


def test_cent_batch_of_every_method(herald, channel_name):
    """A batch carrying one command of each method; cent parses every reply into the result type
    of its command."""
    api = Client(herald.base_url + "/api", API_KEY)
    channel = channel_name("cent-batch", ns="chat")
    requests = [
        PublishRequest(channel=channel, data={"n": 1}),
        BroadcastRequest(channels=[channel], data={"n": 2}),
        SubscribeRequest(user="nobody", channel=channel),
        UnsubscribeRequest(user="nobody", channel=channel),
        DisconnectRequest(user="nobody"),
        PresenceRequest(channel=channel),
        PresenceStatsRequest(channel=channel),
        HistoryRequest(channel=channel, limit=-1),
        ChannelsRequest(),
        InfoRequest(),
        HistoryRemoveRequest(channel=channel),
        HistoryRequest(channel=channel),
    ]
    for parallel in (False, True):
        replies = api.batch(BatchRequest(requests=requests, parallel=parallel)).replies
        assert [type(r) for r in replies] == [r.__returning__ for r in requests]
        if parallel:
            continue  # the commands' effects may happen in any order
        assert replies[0].offset == 1
        assert replies[1].responses[0].result.offset == 2
        assert replies[5].presence == {}
        assert (replies[6].num_clients, replies[6].num_users) == (0, 0)
        assert [p.data for p in replies[7].publications] == [{"n": 1}, {"n": 2}]
        assert channel not in replies[8].channels  # nobody is subscribed
        assert len(replies[9].nodes) == 1
        assert replies[11].publications == [] and replies[11].offset == 0


@pytest.mark.herald_config({"client.expired_close_delay": "0s"})
async def test_cent_refresh_extends_or_expires_a_connection(herald):
    """`refresh` through cent: a backend that manages expiry itself extends a connection whose
    token the SDK cannot renew, then ends it as expired (3005)."""
    api = Client(herald.base_url + "/api", API_KEY)
    events = Events()

    async def no_token():
        # A failure the SDK retries: it keeps the connection, which the server alone can extend.
        raise RuntimeError("the token service is down")

    sdk = centrifuge.Client(herald.ws_url, events=events, token=herald.token("alice", exp_in=2),
                            get_token=no_token, proxy=None, timeout=WAIT)
    try:
        await sdk.connect()
        await events.wait_for("connected")
        extended = await asyncio.to_thread(api.refresh, RefreshRequest(
            user="alice", client=sdk.client_id, expire_at=int(time.time()) + 3600))
        assert isinstance(extended, RefreshResult)
        await asyncio.sleep(3.5)  # past the token's expiry
        assert events.of("disconnected") == [], events.log
        assert len(events.of("connecting")) == 1, events.log  # the first connect only
        expired = await asyncio.to_thread(api.refresh, RefreshRequest(user="alice", expired=True))
        assert isinstance(expired, RefreshResult)
        # 3005 tells the SDK to get a new token and reconnect.
        reconnecting = (await events.wait_for("connecting", 2))[1]
        assert reconnecting.code == 3005, events.log
    finally:
        await asyncio.wait_for(sdk.disconnect(), WAIT)


def test_cent_methods_herald_lacks_answer_404(herald):
    """Centrifugo's PRO methods are not implemented: cent gets HTTP 404, a clear transport error,
    rather than a reply it would misread."""
    api = Client(herald.base_url + "/api", API_KEY)
    with pytest.raises(CentTransportError) as missing:
        api.update_user_status(UpdateUserStatusRequest(users=["alice"]))
    assert missing.value.status_code == 404
