//! The Protobuf client protocol end to end through a real WebSocket client: negotiation, every
//! command, pushes, pings, and hostile binary input, with JSON clients on the same channels.

mod support;

use serde_json::json;
use std::time::Duration;
use support::protobuf::{self as pb, wire, Ask, Command, PbClient};
use support::*;

fn channel_command(channel: &str, make: impl FnOnce(wire::ChannelRequest) -> Command) -> Command {
    make(wire::ChannelRequest {
        channel: channel.into(),
    })
}

#[tokio::test]
async fn the_subprotocol_is_echoed_and_the_query_also_selects_protobuf() {
    let server = TestServer::start().await;
    for ask in [Ask::Subprotocol, Ask::Query] {
        let mut client = PbClient::open(&server, ask).await;
        let expected = matches!(ask, Ask::Subprotocol).then(|| "centrifuge-protobuf".to_string());
        assert_eq!(client.subprotocol, expected, "{ask:?}");
        let reply = client.call(pb::connect(&token("alice"))).await;
        let connect = reply.connect.expect("connect result");
        assert!(!connect.client.is_empty());
        assert!(connect.ping > 0 && connect.pong);
    }
    // A JSON client offering centrifuge-json gets it back and keeps speaking JSON.
    let mut json_client = Client::open_with_headers(
        &server.ws_url(),
        &[("Sec-WebSocket-Protocol", "centrifuge-json")],
    )
    .await;
    json_client.connect(&token("bob")).await;
    json_client.assert_alive().await;
}

#[tokio::test]
async fn publications_reach_protobuf_and_json_subscribers_alike() {
    let server = TestServer::start().await;
    let mut proto = PbClient::connected(&server, "alice").await;
    let mut json_client = server.client("bob").await;
    let sub = proto.subscribe("chat:mixed").await;
    assert!(sub.recoverable, "the chat namespace forces recovery");
    json_client.subscribe("chat:mixed").await;

    server
        .api_ok(
            "publish",
            json!({"channel": "chat:mixed", "data": {"n": 1}}),
        )
        .await;
    let publication = proto.publication("chat:mixed").await;
    assert_eq!(publication.data, br#"{"n":1}"#);
    assert_eq!(publication.offset, 1);
    assert_eq!(json_client.publication("chat:mixed").await["data"]["n"], 1);

    // A client publish over Protobuf: JSON bytes in, the same value out to both.
    let reply = proto
        .call(pb::publish("chat:mixed", br#"{"from":"proto"}"#))
        .await;
    assert!(reply.publish.is_some(), "{:?}", reply.error);
    let publication = proto.publication("chat:mixed").await;
    assert_eq!(publication.data, br#"{"from":"proto"}"#);
    let info = publication.info.expect("client publications carry info");
    assert_eq!(info.user, "alice");
    assert_eq!(
        json_client.publication("chat:mixed").await["data"]["from"],
        "proto"
    );
}

#[tokio::test]
async fn history_presence_and_stats() {
    let server = TestServer::start().await;
    let mut proto = PbClient::connected(&server, "alice").await;
    proto.subscribe("chat:h").await;
    for n in 1..=3 {
        server
            .api_ok("publish", json!({"channel": "chat:h", "data": n}))
            .await;
    }
    let reply = proto
        .call(Command {
            history: Some(wire::HistoryRequest {
                channel: "chat:h".into(),
                limit: -1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let history = reply.history.expect("history result");
    let data: Vec<&[u8]> = history
        .publications
        .iter()
        .map(|p| p.data.as_slice())
        .collect();
    assert_eq!(data, [b"1", b"2", b"3"]);
    assert_eq!(history.offset, 3);
    assert!(!history.epoch.is_empty());

    let reply = proto
        .call(channel_command("chat:h", |r| Command {
            presence: Some(r),
            ..Default::default()
        }))
        .await;
    let presence = reply.presence.expect("presence result").presence;
    assert_eq!(presence.len(), 1);
    assert_eq!(presence[&proto.client_id].user, "alice");

    let reply = proto
        .call(channel_command("chat:h", |r| Command {
            presence_stats: Some(r),
            ..Default::default()
        }))
        .await;
    let stats = reply.presence_stats.expect("presence stats result");
    assert_eq!((stats.num_clients, stats.num_users), (1, 1));

    let reply = proto
        .call(channel_command("chat:h", |r| Command {
            unsubscribe: Some(r),
            ..Default::default()
        }))
        .await;
    assert!(reply.unsubscribe.is_some());
}

#[tokio::test]
async fn recovery_join_leave_and_positioning() {
    let server = TestServer::start().await;
    let mut proto = PbClient::connected(&server, "alice").await;
    let sub = proto.subscribe("chat:r").await;
    server
        .api_ok("publish", json!({"channel": "chat:r", "data": 1}))
        .await;
    assert_eq!(proto.publication("chat:r").await.offset, 1);
    drop(proto);
    for n in 2..=4 {
        server
            .api_ok("publish", json!({"channel": "chat:r", "data": n}))
            .await;
    }
    let mut again = PbClient::connected(&server, "alice").await;
    let reply = again
        .call(Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "chat:r".into(),
                recover: true,
                offset: 1,
                epoch: sub.epoch.clone(),
                join_leave: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let result = reply.subscribe.expect("subscribe result");
    assert!(result.recovered && result.was_recovering);
    let recovered: Vec<u64> = result.publications.iter().map(|p| p.offset).collect();
    assert_eq!(recovered, [2, 3, 4]);

    // Join and leave pushes for the subscriber that asked for them.
    let mut bob = PbClient::connected(&server, "bob").await;
    bob.subscribe("chat:r").await;
    // (The test config forces join/leave everywhere, so alice also sees her own joins.)
    let from_bob = |info: &Option<wire::ClientInfo>| info.as_ref().is_some_and(|i| i.user == "bob");
    loop {
        let push = again.push().await;
        if push.channel == "chat:r" && push.join.is_some_and(|j| from_bob(&j.info)) {
            break;
        }
    }
    drop(bob);
    loop {
        let push = again.push().await;
        if push.channel == "chat:r" && push.leave.is_some_and(|l| from_bob(&l.info)) {
            break;
        }
    }
}

#[tokio::test]
async fn server_side_subscribe_unsubscribe_message_and_disconnect() {
    let server = TestServer::start().await;
    let mut proto = PbClient::connected(&server, "alice").await;
    server
        .api_ok(
            "subscribe",
            json!({"user": "alice", "channel": "chat:news"}),
        )
        .await;
    loop {
        let push = proto.push().await;
        if push.channel == "chat:news" && push.subscribe.is_some() {
            break;
        }
    }
    server
        .api_ok("publish", json!({"channel": "chat:news", "data": "x"}))
        .await;
    assert_eq!(proto.publication("chat:news").await.data, br#""x""#);
    server
        .api_ok(
            "unsubscribe",
            json!({"user": "alice", "channel": "chat:news"}),
        )
        .await;
    let unsubscribe = loop {
        if let Some(u) = proto.push().await.unsubscribe {
            break u;
        }
    };
    assert_eq!(unsubscribe.code, 2000);
    // The personal channel (`#alice`) of the connect.
    server
        .api_ok("publish", json!({"channel": "#alice", "data": "hi"}))
        .await;
    assert_eq!(proto.publication("#alice").await.data, br#""hi""#);
    server
        .api_ok(
            "disconnect",
            json!({"user": "alice", "disconnect": {"code": 4501, "reason": "banned"}}),
        )
        .await;
    assert_eq!(proto.closed().await, Closed::Code(4501, "banned".into()));
}

#[tokio::test]
async fn pings_need_pongs_and_a_pong_keeps_the_connection() {
    let server = TestServer::with(|c| {
        c.client.ping_interval = Duration::from_secs(1);
        c.client.pong_timeout = Duration::from_secs(1);
    })
    .await;
    let mut proto = PbClient::connected(&server, "alice").await;
    proto.auto_pong = false;
    // The server's ping is an empty Reply; answered with an empty Command.
    async fn ping_from(proto: &mut PbClient) {
        while proto.next().await != wire::Reply::default() {}
    }
    ping_from(&mut proto).await;
    proto.send_binary(vec![0]).await;
    ping_from(&mut proto).await;
    let reply = proto.call(pb::ping()).await;
    assert!(reply.ping.is_some());
    // No pong now: the server gives up.
    match proto.closed().await {
        Closed::Code(code, _) => assert_eq!(code, 3012, "no pong"),
        Closed::Abrupt => panic!("expected a close frame"),
    }
}

#[tokio::test]
async fn refresh_sub_refresh_rpc_and_send() {
    let server = TestServer::start().await;
    let mut proto = PbClient::open(&server, Ask::Subprotocol).await;
    let expiring = token_with(json!({"sub": "alice", "exp": now() + 60}));
    let connect = proto.call(pb::connect(&expiring)).await.connect.unwrap();
    assert!(connect.expires && connect.ttl > 0);
    let reply = proto
        .call(Command {
            refresh: Some(wire::RefreshRequest {
                token: token_with(json!({"sub": "alice", "exp": now() + 600})),
            }),
            ..Default::default()
        })
        .await;
    let refresh = reply.refresh.expect("refresh result");
    assert!(refresh.expires && refresh.ttl > 60, "{refresh:?}");
    // A channel that needs a subscription token, then its sub_refresh.
    let sub_token =
        |exp: i64| token_with(json!({"sub": "alice", "channel": "locked:t", "exp": exp}));
    let reply = proto
        .call(Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: "locked:t".into(),
                token: sub_token(now() + 60),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let subscribed = reply.subscribe.expect("subscribe with a token");
    assert!(subscribed.expires && subscribed.ttl > 0);
    let reply = proto
        .call(Command {
            sub_refresh: Some(wire::SubRefreshRequest {
                channel: "locked:t".into(),
                token: sub_token(now() + 600),
            }),
            ..Default::default()
        })
        .await;
    let refreshed = reply.sub_refresh.expect("sub_refresh result");
    assert!(refreshed.expires && refreshed.ttl > 60, "{refreshed:?}");
    // Without an RPC proxy: not available (108).
    let reply = proto
        .call(Command {
            rpc: Some(wire::RpcRequest {
                data: b"{}".to_vec(),
                method: "sum".into(),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(reply.error.expect("rpc error").code, 108);
    // Send has no reply; the connection goes on.
    proto
        .send(&[Command {
            send: Some(wire::SendRequest {
                data: b"1".to_vec(),
            }),
            ..Default::default()
        }])
        .await;
    assert!(proto.call(pb::ping()).await.ping.is_some());
}

#[tokio::test]
async fn data_that_is_not_json_is_a_bad_request_naming_the_field() {
    let server = TestServer::start().await;
    let mut proto = PbClient::connected(&server, "alice").await;
    proto.subscribe("chat:bin").await;
    let reply = proto.call(pb::publish("chat:bin", b"\xff\x00raw")).await;
    let error = reply.error.expect("an error reply");
    assert_eq!(error.code, 107);
    assert!(error.message.contains("data"), "{}", error.message);
    // The connection stays, and nothing was published.
    let reply = proto
        .call(Command {
            history: Some(wire::HistoryRequest {
                channel: "chat:bin".into(),
                limit: -1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    assert!(reply.history.expect("history").publications.is_empty());
}

#[tokio::test]
async fn several_commands_per_frame_and_replies_merged_into_one_frame() {
    let server = TestServer::start().await;
    let mut proto = PbClient::connected(&server, "alice").await;
    let commands: Vec<Command> = (10..15).map(|id| Command { id, ..pb::ping() }).collect();
    proto.send(&commands).await;
    for id in 10..15 {
        assert!(proto.reply(id).await.ping.is_some());
    }
}

/// A connection that sends `payload` after connecting must be closed with `expected`; a bystander
/// on the same server keeps working.
async fn closes_after(server: &TestServer, payload: tokio_websockets::Message, expected: u16) {
    use futures_util::SinkExt;
    let mut honest = PbClient::connected(server, "honest").await;
    let mut attacker = PbClient::connected(server, "attacker").await;
    attacker.ws.send(payload).await.expect("send");
    match attacker.closed().await {
        Closed::Code(code, reason) => assert_eq!(code, expected, "{reason}"),
        Closed::Abrupt => panic!("expected close code {expected}"),
    }
    assert!(honest.call(pb::ping()).await.ping.is_some());
}

#[tokio::test]
async fn hostile_binary_frames_close_with_clear_codes() {
    use tokio_websockets::Message;
    let server = TestServer::with(|c| {
        c.client.max_commands_per_frame = 5;
        c.client.max_message_size = 4096;
    })
    .await;
    let binary = |bytes: Vec<u8>| Message::binary(bytes::Bytes::from(bytes));
    // Garbage: a field of wire type 7 inside a well-framed message.
    closes_after(&server, binary(vec![2, 0x0f, 0]), 3501).await;
    // A length prefix declaring 1 GiB with three bytes behind it.
    closes_after(
        &server,
        binary(vec![0x80, 0x80, 0x80, 0x80, 0x04, 1, 2, 3]),
        3501,
    )
    .await;
    // A varint that never ends.
    closes_after(&server, binary(vec![0xff; 16]), 3501).await;
    // Six commands where five are allowed (five pass).
    closes_after(&server, binary(pb::frame(&vec![pb::ping(); 6])), 3501).await;
    // A text frame on a Protobuf connection.
    closes_after(&server, Message::text("{\"id\":1,\"ping\":{}}"), 1003).await;
    // Bigger than client.max_message_size.
    closes_after(&server, binary(vec![0; 8192]), 1009).await;
    let mut ok = PbClient::connected(&server, "alice").await;
    ok.send(&vec![
        Command {
            id: 1,
            ..pb::ping()
        };
        5
    ])
    .await;
    assert!(ok.reply(1).await.ping.is_some());
}

#[tokio::test]
async fn commands_before_connect_and_rate_limits_apply_to_protobuf() {
    let server = TestServer::with(|c| {
        c.client.command_rate = 1;
        c.client.command_burst = 2;
    })
    .await;
    // The first command must be connect.
    let mut early = PbClient::open(&server, Ask::Subprotocol).await;
    early
        .send(&[Command {
            id: 1,
            ..pb::ping()
        }])
        .await;
    assert!(matches!(early.closed().await, Closed::Code(3501, _)));

    let mut proto = PbClient::connected(&server, "alice").await;
    let mut limited = false;
    for _ in 0..5 {
        let reply = proto.call(pb::ping()).await;
        if let Some(error) = reply.error {
            assert_eq!(error.code, 111);
            assert!(error.temporary);
            limited = true;
        }
    }
    assert!(limited, "the command rate applies");
}

#[tokio::test]
async fn windowed_channels_deliver_merged_publications_to_protobuf_and_json() {
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_millis(200),
            ..open_namespace("win")
        });
    })
    .await;
    let mut proto = PbClient::connected(&server, "alice").await;
    let mut json_client = server.client("bob").await;
    proto.subscribe("win:a").await;
    json_client.subscribe("win:a").await;
    for n in 1..=5 {
        server
            .api_ok("publish", json!({"channel": "win:a", "data": n}))
            .await;
    }
    for n in 1..=5u64 {
        let publication = proto.publication("win:a").await;
        assert_eq!(publication.offset, n);
        assert_eq!(publication.data, n.to_string().as_bytes());
        assert_eq!(json_client.publication("win:a").await["data"], n);
    }
}

#[tokio::test]
async fn a_slow_protobuf_consumer_is_closed_by_the_outbox_bound_and_others_get_everything() {
    const SIZE: usize = 10_000;
    let server = TestServer::with(|c| c.client.max_outbox_bytes = 64 * 1024).await;
    let node = server.node().clone();
    let mut slow = PbClient::connected(&server, "slow").await;
    slow.subscribe("chat:firehose").await;
    socket2::SockRef::from(slow.tcp())
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut healthy = PbClient::connected(&server, "healthy").await;
    healthy.subscribe("chat:firehose").await;
    let payload =
        serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(SIZE))).unwrap();
    let mut published = 0u64;
    while node.metrics.outbox_drops.get() == 0 {
        assert!(
            published < 3000,
            "no overflow after {published} publications"
        );
        for _ in 0..4 {
            node.publish(
                "chat:firehose",
                payload.clone(),
                None,
                Default::default(),
                "test",
            )
            .await
            .unwrap();
            published += 1;
        }
        // The healthy client reads along, so only the one that does not read overflows.
        for _ in 0..4 {
            let publication = healthy.publication("chat:firehose").await;
            assert_eq!(publication.data.len(), SIZE + 2);
        }
    }
    assert!(
        eventually(WAIT, || node.hub.num_clients() == 1).await,
        "the slow client is gone"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_disconnects_total{reason=\"slow\"}"),
        1.0
    );
    assert!(healthy.call(pb::ping()).await.ping.is_some());
}
