"""The server API through `cent`, Centrifugo's official Python API client, unchanged: single
calls and a batch whose replies `cent` reads the way Centrifugo answers them."""

from cent import (
    BatchRequest,
    Client,
    HistoryRequest,
    InfoRequest,
    PresenceStatsRequest,
    PublishRequest,
)

from conftest import API_KEY


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
