//! Several in-process nodes sharing one real Redis (`HERALD_TEST_REDIS`, default 127.0.0.1:6379),
//! each test under its own key prefix: cross-node delivery, presence, recovery, the node registry,
//! a crashed node, and Redis restarts and stalls injected through a proxy (the shared Redis itself
//! is never stopped).

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::proxy::{Fault, Proxy};
use support::*;

#[tokio::test]
async fn publications_reach_subscribers_on_every_node_exactly_once() {
    let cluster = Cluster::start(3, "delivery").await;
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut client = node.client(&format!("user{i}")).await;
        client.subscribe("chat:all").await;
        clients.push(client);
    }
    // From the API of every node, and from a client.
    for n in 1..=30u64 {
        publish_n(&cluster.nodes[(n % 3) as usize], "chat:all", n).await;
    }
    let reply = clients[1]
        .call(
            "publish",
            json!({"channel": "chat:all", "data": {"from": "client"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    for client in &mut clients {
        let offsets = offsets_until_quiet(client, "chat:all", Duration::from_millis(500)).await;
        assert_eq!(
            offsets,
            (1..=31).collect::<Vec<u64>>(),
            "every publication once, in order"
        );
    }
}

#[tokio::test]
async fn channels_without_history_are_delivered_across_nodes() {
    let cluster = Cluster::start(2, "nohistory").await;
    let mut a = cluster.nodes[0].client("a").await;
    a.subscribe("plain").await;
    let reply = cluster.nodes[1]
        .api("publish", json!({"channel": "plain", "data": {"x": 1}}))
        .await;
    assert_eq!(reply.0, 200, "{reply:?}");
    let publication = a.publication("plain").await;
    assert_eq!(publication["data"]["x"], 1);
}

#[tokio::test]
async fn presence_and_join_leave_are_cluster_wide() {
    let cluster = Cluster::start(3, "presence").await;
    let mut alice = cluster.nodes[0].client("alice").await;
    alice.subscribe("chat:room").await;
    let mut bob = cluster.nodes[1].client("bob").await;
    bob.subscribe("chat:room").await;
    // Alice (node 0) sees bob join on node 1.
    loop {
        let push = alice.push().await;
        if push["channel"] == "chat:room" && push["join"]["info"]["user"] == "bob" {
            break;
        }
    }
    let presence = cluster.nodes[2]
        .api_ok("presence", json!({"channel": "chat:room"}))
        .await;
    let users: Vec<&str> = presence["presence"]
        .as_object()
        .expect("presence map")
        .values()
        .filter_map(|v| v["user"].as_str())
        .collect();
    assert_eq!(users.len(), 2, "{presence}");
    assert!(users.contains(&"alice") && users.contains(&"bob"));
    let stats = cluster.nodes[2]
        .api_ok("presence_stats", json!({"channel": "chat:room"}))
        .await;
    assert_eq!(stats, json!({"num_clients": 2, "num_users": 2}));
    // A client's presence call on node 1 sees alice too.
    let reply = bob.call("presence", json!({"channel": "chat:room"})).await;
    assert_eq!(
        reply["presence"]["presence"].as_object().map(|m| m.len()),
        Some(2),
        "{reply}"
    );
    // Bob leaves: alice sees it and presence shrinks everywhere.
    bob.call("unsubscribe", json!({"channel": "chat:room"}))
        .await;
    loop {
        let push = alice.push().await;
        if push["channel"] == "chat:room" && push["leave"]["info"]["user"] == "bob" {
            break;
        }
    }
    let stats = cluster.nodes[1]
        .api_ok("presence_stats", json!({"channel": "chat:room"}))
        .await;
    assert_eq!(stats, json!({"num_clients": 1, "num_users": 1}));
}

#[tokio::test]
async fn a_client_recovers_on_another_node() {
    let cluster = Cluster::start(3, "recovery").await;
    let mut client = cluster.nodes[0].client("roamer").await;
    let sub = client.subscribe("chat:r").await;
    let epoch = sub["epoch"].as_str().expect("epoch").to_string();
    for n in 1..=3 {
        publish_n(&cluster.nodes[2], "chat:r", n).await;
    }
    let offsets = offsets_until_quiet(&mut client, "chat:r", Duration::from_millis(300)).await;
    assert_eq!(offsets, vec![1, 2, 3]);
    drop(client);
    for n in 4..=6 {
        publish_n(&cluster.nodes[2], "chat:r", n).await;
    }
    // Reconnect to another node and recover from offset 3.
    let mut client = cluster.nodes[1].client("roamer").await;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "chat:r", "recover": true, "offset": 3, "epoch": epoch}),
        )
        .await;
    let sub = &reply["subscribe"];
    assert_eq!(sub["recovered"], true, "{reply}");
    let recovered: Vec<u64> = sub["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .filter_map(|p| p["offset"].as_u64())
        .collect();
    assert_eq!(recovered, vec![4, 5, 6]);
    publish_n(&cluster.nodes[0], "chat:r", 7).await;
    let offsets = offsets_until_quiet(&mut client, "chat:r", Duration::from_millis(300)).await;
    assert_eq!(offsets, vec![7], "live continues without duplicates");
    // A position from a lost epoch is not recovered on any node.
    let mut other = cluster.nodes[2].client("late").await;
    let reply = other
        .call(
            "subscribe",
            json!({"channel": "chat:r", "recover": true, "offset": 2, "epoch": "nope"}),
        )
        .await;
    assert!(reply["subscribe"].get("recovered").is_none(), "{reply}");
}

#[tokio::test]
async fn api_control_commands_reach_users_on_other_nodes() {
    let cluster = Cluster::start(2, "control").await;
    let mut carol = cluster.nodes[1].client("carol").await;
    cluster.nodes[0]
        .api_ok(
            "subscribe",
            json!({"user": "carol", "channel": "chat:pushed"}),
        )
        .await;
    loop {
        let push = carol.push().await;
        if push["channel"] == "chat:pushed" && push.get("subscribe").is_some() {
            break;
        }
    }
    cluster.nodes[0]
        .api_ok(
            "disconnect",
            json!({"user": "carol", "disconnect": {"code": 4001, "reason": "bye"}}),
        )
        .await;
    assert_eq!(carol.closed().await, Closed::Code(4001, "bye".into()));
}

#[tokio::test]
async fn info_lists_every_live_node_and_forgets_stopped_ones() {
    let mut cluster = Cluster::start(3, "info").await;
    let names = |info: &Value| -> Vec<String> {
        info["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect()
    };
    let mut listed = Vec::new();
    for _ in 0..50 {
        let info = cluster.nodes[0].api_ok("info", json!({})).await;
        listed = names(&info);
        if listed.len() == 3 {
            let uids: std::collections::HashSet<&str> = info["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .filter_map(|n| n["uid"].as_str())
                .collect();
            assert_eq!(uids.len(), 3, "{info}");
            assert!(info["nodes"][0]["address"]
                .as_str()
                .is_some_and(|a| a.contains(':')));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed, vec!["node0", "node1", "node2"]);
    // A graceful stop removes the entry and the presence of its clients at once (not at expiry).
    let mut leaving = cluster.nodes[2].client("leaving").await;
    leaving.subscribe("chat:gs").await;
    let stats = cluster.nodes[0]
        .api_ok("presence_stats", json!({"channel": "chat:gs"}))
        .await;
    assert_eq!(stats["num_clients"], 1);
    cluster.nodes[2].shutdown().await;
    let info = cluster.nodes[0].api_ok("info", json!({})).await;
    assert_eq!(names(&info), vec!["node0", "node1"]);
    let stats = cluster.nodes[0]
        .api_ok("presence_stats", json!({"channel": "chat:gs"}))
        .await;
    assert_eq!(
        stats["num_clients"], 0,
        "presence removed on a graceful stop"
    );
}

#[tokio::test]
async fn a_crashed_nodes_presence_and_registry_entry_expire() {
    let mut cluster = Cluster::start(3, "crash").await;
    let mut watcher = cluster.nodes[0].client("watcher").await;
    watcher.subscribe("chat:crash").await;
    let mut doomed = cluster.nodes[1].client("doomed").await;
    doomed.subscribe("chat:crash").await;
    let stats = cluster.nodes[2]
        .api_ok("presence_stats", json!({"channel": "chat:crash"}))
        .await;
    assert_eq!(stats["num_clients"], 2);
    let crashed_uid = cluster.nodes[1].node().uid.clone();
    cluster.nodes[1].crash().await;
    // Still listed right after the crash: nothing was cleaned up...
    let stats = cluster.nodes[2]
        .api_ok("presence_stats", json!({"channel": "chat:crash"}))
        .await;
    assert_eq!(stats["num_clients"], 2, "no cleanup on a crash");
    // ...and gone within the TTLs (presence 2s, registry 3 × 300ms).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = cluster.nodes[2]
            .api_ok("presence_stats", json!({"channel": "chat:crash"}))
            .await;
        let info = cluster.nodes[0].api_ok("info", json!({})).await;
        let listed = info["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["uid"] == crashed_uid.as_str());
        if stats["num_clients"] == 1 && !listed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "crashed node's state did not expire: {stats} {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A restarted node (same name) is a new life: a new uid, and the old one never comes back.
    let redis = test_redis();
    let restarted_uid = cluster.add("node1", &redis).await.node().uid.clone();
    assert_ne!(restarted_uid, crashed_uid);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let info = cluster.nodes[0].api_ok("info", json!({})).await;
    let uids: Vec<&str> = info["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["uid"].as_str())
        .collect();
    assert!(uids.contains(&restarted_uid.as_str()), "{info}");
    assert!(!uids.contains(&crashed_uid.as_str()), "{info}");
    assert_eq!(uids.len(), 3, "{info}");
}

/// Two nodes reach Redis through a proxy, a third directly (it keeps publishing during the fault).
/// During the fault the proxied nodes report not ready and refuse publications, but keep their
/// clients; afterwards they are ready again, clients of a channel that missed publications are told
/// (unsubscribe 2500) and recover everything, and a channel that missed nothing stays untouched.
async fn broker_fault(fault: Fault, test: &str) {
    let proxy = Proxy::start(test_redis_addr()).await;
    let via_proxy = format!("redis://{}", proxy.addr);
    let mut cluster = Cluster::start_via(2, test, &via_proxy).await;
    let direct = test_redis();
    cluster.add("direct", &direct).await;
    let (a, b, direct) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    let mut alice = a.client("alice").await;
    let sub = alice.subscribe("chat:busy").await;
    let epoch = sub["epoch"].as_str().expect("epoch").to_string();
    alice.subscribe("chat:quiet").await;
    let mut bob = b.client("bob").await;
    bob.subscribe("chat:busy").await;
    bob.subscribe("chat:quiet").await;
    for n in 1..=3 {
        publish_n(direct, "chat:busy", n).await;
        publish_n(direct, "chat:quiet", n).await;
    }
    for client in [&mut alice, &mut bob] {
        let offsets = offsets_until_quiet(client, "chat:busy", Duration::from_millis(300)).await;
        assert_eq!(offsets, vec![1, 2, 3]);
    }

    // A new connection to a node that cannot reach Redis cannot get its personal channel, so it
    // is asked to reconnect (3010) rather than left without it.
    let newcomer_refused = async |a: &TestServer| {
        let mut newcomer = Client::open(&a.ws_url()).await;
        newcomer
            .send(json!({"id": 1, "connect": {"token": token("newcomer")}}))
            .await;
        assert_eq!(
            newcomer.closed().await,
            Closed::Code(3010, "insufficient state".into())
        );
    };
    broker_outage(
        &proxy,
        &fault,
        &cluster,
        &mut alice,
        &mut bob,
        WAIT,
        newcomer_refused,
    )
    .await;

    // Both are told their busy stream has a gap, and recover it in full.
    for client in [&mut alice, &mut bob] {
        let (code, before) = unsubscribe_push(client, "chat:busy").await;
        assert_eq!(code, 2500, "insufficient state");
        // A stalled (not broken) connection may still hand over what it had, in order, before
        // the node gives it up; never anything beyond a hole.
        let from = before.last().copied().unwrap_or(3);
        assert_eq!(
            before,
            (4..=from).collect::<Vec<u64>>(),
            "in order, no hole"
        );
        let (recovered, offsets) = resubscribe(client, "chat:busy", from, &epoch).await;
        assert!(recovered);
        assert_eq!(offsets, (from + 1..=6).collect::<Vec<u64>>());
    }
    // Everything after the outage arrives once, on both channels; the quiet channel (no gap) was
    // not interrupted.
    publish_n(direct, "chat:busy", 7).await;
    publish_n(a, "chat:busy", 8).await;
    publish_n(b, "chat:quiet", 4).await;
    for client in [&mut alice, &mut bob] {
        let mut busy = Vec::new();
        let mut quiet = Vec::new();
        while let Some(message) = client.next_within(Duration::from_millis(500)).await {
            let push = &message["push"];
            assert!(
                push.get("unsubscribe").is_none(),
                "unexpected unsubscribe: {message}"
            );
            if let Some(offset) = push["pub"]["offset"].as_u64() {
                match push["channel"].as_str() {
                    Some("chat:busy") => busy.push(offset),
                    Some("chat:quiet") => quiet.push(offset),
                    _ => {}
                }
            }
        }
        assert_eq!(busy, vec![7, 8]);
        assert_eq!(quiet, vec![4]);
    }
    let metrics = a.metrics().await;
    assert!(
        metric(&metrics, "herald_broker_reconnects_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "herald_broker_ready"), 1.0);
}

#[tokio::test]
async fn redis_restart_is_survived_without_silent_loss() {
    broker_fault(Fault::Restart, "restart").await;
}

#[tokio::test]
async fn redis_stall_is_survived_without_silent_loss() {
    broker_fault(Fault::Stall, "stall").await;
}

#[tokio::test]
async fn conflated_channels_snapshot_the_latest_value_per_key_across_nodes() {
    let redis = test_redis();
    let cluster = Cluster::start_with(2, "conflated", &redis, |c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            name: "live".into(),
            conflation_key: "/k".into(),
            conflation_max_keys: 2,
            ..open_namespace("live")
        });
    })
    .await;
    for (k, v) in [("a", 1), ("b", 2), ("a", 3), ("c", 4)] {
        cluster.nodes[0]
            .api_ok(
                "publish",
                json!({"channel": "live:map", "data": {"k": k, "v": v}}),
            )
            .await;
    }
    // A subscriber on the other node gets the latest value of the two most recent keys.
    let mut viewer = cluster.nodes[1].client("viewer").await;
    let sub = viewer.subscribe("live:map").await;
    let values: Vec<i64> = sub["publications"]
        .as_array()
        .expect("snapshot")
        .iter()
        .filter_map(|p| p["data"]["v"].as_i64())
        .collect();
    assert_eq!(values, vec![3, 4], "{sub}");
    assert_eq!(sub["offset"], 4);
    cluster.nodes[0]
        .api_ok(
            "publish",
            json!({"channel": "live:map", "data": {"k": "a", "v": 5}}),
        )
        .await;
    assert_eq!(viewer.publication("live:map").await["data"]["v"], 5);
}

#[tokio::test]
async fn subscribing_on_one_node_while_others_publish_loses_and_repeats_nothing() {
    let cluster = Cluster::start(3, "race").await;
    let mut publishers = Vec::new();
    for node in &cluster.nodes[..2] {
        let node = node.node().clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..500u32 {
                let data = serde_json::value::RawValue::from_string(n.to_string()).expect("json");
                node.publish("chat:race", data, None, Default::default(), "test")
                    .await
                    .expect("publish");
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut client = cluster.nodes[2].client("racer").await;
    let sub = client.subscribe("chat:race").await;
    let mut last = sub["offset"].as_u64().unwrap_or(0);
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    while last < 1000 {
        let publication = client.publication("chat:race").await;
        let offset = publication["offset"].as_u64().expect("offset");
        assert_eq!(offset, last + 1, "gap or duplicate after {last}");
        last = offset;
    }
    client.expect_silence(Duration::from_millis(200)).await;
}
