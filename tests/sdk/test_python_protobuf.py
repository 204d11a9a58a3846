"""Herald against centrifuge-python's Protobuf protocol (`Client(use_protobuf=True)`): binary
WebSocket frames of length-delimited Protobuf messages, negotiated with the `centrifuge-protobuf`
subprotocol. Payloads are bytes on this protocol; Herald requires them to be JSON text
(docs/protocol.md), so the tests encode and decode JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from centrifuge import ClientState, ReplyError, SubscriptionState

# The JSON suite's recorders and fixtures, reused: only the protocol differs.
from test_python_sdk import assert_consecutive, sdk, subscribe  # noqa: F401 - `sdk` is a fixture


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def decode(data: bytes) -> Any:
    assert isinstance(data, bytes), f"protobuf data must arrive as bytes, got {type(data)}"
    return json.loads(data)


async def test_api_and_client_publications(herald, sdk, channel_name):
    channel = channel_name("news", ns="chat")
    client, _ = await sdk("alice", use_protobuf=True)
    sub, events, _ = await subscribe(client, channel)

    payloads = [{"text": "héllo", "list": [1, "two", None]}, "a string", 42]
    for data in payloads:
        await herald.publish(channel, data)
    got = await events.take("publication", len(payloads))
    assert [decode(ctx.pub.data) for ctx in got] == payloads
    assert_consecutive([ctx.pub.offset for ctx in got], first=1)

    await sub.publish(encode({"from": "python"}))
    own = (await events.next("publication")).pub
    assert decode(own.data) == {"from": "python"}
    assert own.info is not None and own.info.user == "alice"

    # Bytes that are not JSON: 107 naming the field, and the connection stays.
    with pytest.raises(ReplyError) as raised:
        await sub.publish(b"\xff\x00\x01")
    assert raised.value.code == 107
    assert "data" in raised.value.message
    assert client.state == ClientState.CONNECTED


async def test_history_presence_and_stats(herald, sdk, channel_name):
    channel = channel_name("hist", ns="chat")
    client, _ = await sdk("alice", use_protobuf=True)
    sub, _, subscribed = await subscribe(client, channel)
    assert subscribed.recoverable is True

    for i in (1, 2, 3):
        await herald.publish(channel, {"i": i})
    history = await sub.history(limit=10)
    assert [decode(p.data) for p in history.publications] == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert [p.offset for p in history.publications] == [1, 2, 3]
    assert history.offset == 3
    assert history.epoch == subscribed.stream_position.epoch
    newest = await sub.history(limit=1, reverse=True)
    assert [decode(p.data) for p in newest.publications] == [{"i": 3}]

    presence = await sub.presence()
    assert set(presence.clients) == {client.client_id}
    assert presence.clients[client.client_id].user == "alice"
    stats = await sub.presence_stats()
    assert (stats.num_clients, stats.num_users) == (1, 1)


async def test_recovery_after_reconnect(herald, sdk, channel_name):
    channel = channel_name("feed", ns="chat")
    client, events = await sdk("alice", use_protobuf=True)
    sub, sub_events, first = await subscribe(client, channel)
    await herald.publish(channel, {"seq": 0})
    live = (await sub_events.next("publication")).pub

    await client.disconnect()
    await events.next("disconnected")
    assert sub.state == SubscriptionState.SUBSCRIBING
    for seq in (1, 2, 3):
        await herald.publish(channel, {"seq": seq})
    await client.connect()
    await events.next("connected")
    second = await sub_events.next("subscribed")
    assert (second.was_recovering, second.recovered) == (True, True)
    assert second.stream_position.epoch == first.stream_position.epoch
    missed = await sub_events.take("publication", 3)
    assert [decode(ctx.pub.data) for ctx in missed] == [{"seq": 1}, {"seq": 2}, {"seq": 3}]
    assert_consecutive([ctx.pub.offset for ctx in missed], first=live.offset + 1)


async def test_protobuf_and_json_clients_share_a_channel(herald, sdk, channel_name):
    channel = channel_name("mixed", ns="chat")
    proto, _ = await sdk("alice", use_protobuf=True)
    text, _ = await sdk("bob")
    proto_sub, proto_events, _ = await subscribe(proto, channel)
    text_sub, text_events, _ = await subscribe(text, channel)

    await proto_sub.publish(encode({"from": "protobuf"}))
    assert decode((await proto_events.next("publication")).pub.data) == {"from": "protobuf"}
    assert (await text_events.next("publication")).pub.data == {"from": "protobuf"}

    await text_sub.publish({"from": "json"})
    assert decode((await proto_events.next("publication")).pub.data) == {"from": "json"}
    assert (await text_events.next("publication")).pub.data == {"from": "json"}
