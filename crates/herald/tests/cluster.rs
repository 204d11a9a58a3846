//! What every broker must do for a cluster, written once and run against each of them
//! ([`Broker`]): the shared Redis, a three-shard Redis Cluster the test starts itself, and the
//! shared NATS server (history in JetStream). Every test is one (scenario, broker) pair, named
//! `scenario::broker`, under a prefix of its own (see support/brokers.rs): cross-node delivery
//! in offset order, channels without history, presence, recovery and the history API on another
//! node, control commands, the node registry, a crashed node, conflation, and broker restarts
//! and stalls injected through a proxy. What only one broker has (NATS JetStream internals, a
//! Redis Cluster's slots, shards and replicas) is in cluster_nats.rs and
//! cluster_redis_sharded.rs.

mod support;

use herald::config::NamespaceOptions;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use support::brokers::Broker;
use support::proxy::{Fault, Proxy};
use support::*;

/// One `#[tokio::test]` per broker for the scenario `async fn $scenario(broker: Broker)`, in a
/// module named after it. A scenario that needs a single broker address (a proxy in front of
/// it) lists its brokers.
macro_rules! on_brokers {
    ($scenario:ident) => {
        on_brokers!($scenario: redis => Redis, redis_cluster => RedisCluster, nats => Nats);
    };
    ($scenario:ident: $($test:ident => $broker:ident),+) => {
        mod $scenario {
            $(
                #[tokio::test]
                async fn $test() {
                    super::support::brokers::log_to_test_output();
                    super::$scenario(super::Broker::$broker).await;
                }
            )+
        }
    };
}

/// An open namespace without history (delivery only, nothing to recover).
fn without_history(name: &str) -> NamespaceOptions {
    NamespaceOptions {
        history_size: 0,
        history_ttl: Duration::ZERO,
        force_recovery: false,
        ..open_namespace(name)
    }
}

on_brokers!(publications_reach_subscribers_on_every_node_exactly_once);
async fn publications_reach_subscribers_on_every_node_exactly_once(broker: Broker) {
    let share = broker.share("delivery");
    let cluster = share.cluster(3).await;
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut client = node.client(&format!("user{i}")).await;
        client.subscribe("chat:all").await;
        clients.push(client);
    }
    // A channel name that is no valid NATS token or plain Redis key as it is.
    let odd = "chat:a.b *>#$ x{y}";
    let mut odd_client = cluster.nodes[2].client("odd").await;
    odd_client.subscribe(odd).await;
    // From the API of every node, and from a client.
    for n in 1..=30u64 {
        publish_n(&cluster.nodes[(n % 3) as usize], "chat:all", n).await;
    }
    publish_n(&cluster.nodes[0], odd, 99).await;
    let reply = clients[1]
        .call("publish", json!({"channel": "chat:all", "data": {"n": 31}}))
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
    let numbers = numbers_until_quiet(&mut odd_client, odd, Duration::from_millis(300)).await;
    assert_eq!(numbers, vec![99]);
}

on_brokers!(three_nodes_are_one_system_for_channels_on_every_shard);
async fn three_nodes_are_one_system_for_channels_on_every_shard(broker: Broker) {
    let share = broker.share("shards");
    let mut cluster = share.cluster(3).await;
    let channels: Vec<String> = (0..9).map(|i| format!("chat:s{i}")).collect();
    if let Some(redis) = share.redis_cluster() {
        let shards: BTreeSet<u16> = channels
            .iter()
            .map(|c| redis.primary_of(redis.slot(c)))
            .collect();
        assert_eq!(shards.len(), 3, "the channels cover all three shards");
    }

    let mut clients = Vec::new();
    let mut epochs = BTreeMap::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut client = node.client(&format!("user{i}")).await;
        for channel in &channels {
            let sub = client.subscribe(channel).await;
            epochs.insert(channel.clone(), epoch_of(&sub));
        }
        clients.push(client);
    }
    for n in 1..=4u64 {
        for (i, channel) in channels.iter().enumerate() {
            let reply = publish_n(&cluster.nodes[(i + n as usize) % 3], channel, n).await;
            assert!(reply.get("offset").is_some(), "{reply}");
        }
    }
    for client in &mut clients {
        let seen = offsets_by_channel(client, Duration::from_millis(500)).await;
        for channel in &channels {
            assert_eq!(
                seen.get(channel),
                Some(&vec![1, 2, 3, 4]),
                "{channel}: once, in order"
            );
        }
    }

    // Presence is cluster-wide.
    let stats = cluster.nodes[2]
        .api_ok("presence_stats", json!({"channel": "chat:s0"}))
        .await;
    assert_eq!(stats, json!({"num_clients": 3, "num_users": 3}));

    // A client leaving node 0 recovers on node 1 what it missed.
    drop(clients.remove(0));
    publish_n(&cluster.nodes[2], "chat:s1", 5).await;
    publish_n(&cluster.nodes[1], "chat:s1", 6).await;
    let mut roamer = cluster.nodes[1].client("user0").await;
    let (recovered, offsets) = resubscribe(&mut roamer, "chat:s1", 4, &epochs["chat:s1"]).await;
    assert!(recovered);
    assert_eq!(offsets, vec![5, 6]);

    // Every node is listed.
    let info = cluster.nodes[0].api_ok("info", json!({})).await;
    assert_eq!(info["nodes"].as_array().map(Vec::len), Some(3), "{info}");

    // A crashed node's presence expires (presence TTL 2 s).
    cluster.nodes[2].crash().await;
    let deadline = tokio::time::Instant::now() + broker.expiry_within();
    loop {
        let stats = cluster.nodes[0]
            .api_ok("presence_stats", json!({"channel": "chat:s0"}))
            .await;
        // user0 left (graceful), user2's node crashed: only user1 remains.
        if stats["num_clients"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence did not expire: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_brokers!(concurrent_publishers_on_every_node_are_delivered_and_stored_in_offset_order);
async fn concurrent_publishers_on_every_node_are_delivered_and_stored_in_offset_order(
    broker: Broker,
) {
    let share = broker.share("concurrent");
    let cluster = share.cluster(3).await;
    let mut clients = Vec::new();
    let mut epochs = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut client = node.client(&format!("user{i}")).await;
        let sub = client.subscribe("chat:h").await;
        epochs.push(sub["epoch"].as_str().unwrap_or_default().to_string());
        clients.push(client);
    }
    // An empty channel already has its epoch, the same on every node.
    assert!(!epochs[0].is_empty());
    assert!(epochs.iter().all(|e| e == &epochs[0]), "{epochs:?}");
    // One node after the other...
    for n in 1..=15u64 {
        publish_n(&cluster.nodes[(n % 3) as usize], "chat:h", n).await;
    }
    // ...then all three at once on the same channel.
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    tokio::join!(
        publish_range(a, "chat:h", 16..36),
        publish_range(b, "chat:h", 36..56),
        publish_range(c, "chat:h", 56..76),
    );
    for client in &mut clients {
        let offsets = offsets_until_quiet(client, "chat:h", Duration::from_millis(700)).await;
        assert_eq!(
            offsets,
            (1..=75).collect::<Vec<u64>>(),
            "every publication once, in offset order"
        );
    }
    // Every publication was stored once under its offset, whichever node took it.
    let history = cluster.nodes[1]
        .api_ok("history", json!({"channel": "chat:h", "limit": -1}))
        .await;
    assert_eq!(
        offsets_of(&history["publications"]),
        (1..=75).collect::<Vec<u64>>()
    );
    assert_eq!(history["epoch"], epochs[0].as_str());
    assert_eq!(history["offset"], 75);
    let mut numbers: Vec<u64> = history["publications"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["data"]["n"].as_u64()).collect())
        .unwrap_or_default();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=75).collect::<Vec<u64>>());
}

on_brokers!(subscribing_on_one_node_while_others_publish_loses_and_repeats_nothing);
async fn subscribing_on_one_node_while_others_publish_loses_and_repeats_nothing(broker: Broker) {
    let share = broker.share("race");
    let cluster = share.cluster(3).await;
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

on_brokers!(channels_without_history_are_delivered_across_nodes);
async fn channels_without_history_are_delivered_across_nodes(broker: Broker) {
    let share = broker.share("nohistory");
    let cluster = share
        .cluster_with(3, |c| c.channel.namespaces.push(without_history("plain")))
        .await;
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut client = node.client(&format!("user{i}")).await;
        client.subscribe("plain:all").await;
        clients.push(client);
    }
    let reply = cluster.nodes[1]
        .api("publish", json!({"channel": "plain:all", "data": {"x": 1}}))
        .await;
    assert_eq!(reply.0, 200, "{reply:?}");
    assert!(reply.1.get("error").is_none(), "{reply:?}");
    for client in &mut clients {
        let publication = client.publication("plain:all").await;
        assert_eq!(publication["data"]["x"], 1);
        assert!(publication.get("offset").is_none(), "{publication}");
    }
    for n in 1..=30u64 {
        publish_n(&cluster.nodes[(n % 3) as usize], "plain:all", n).await;
    }
    let reply = clients[1]
        .call(
            "publish",
            json!({"channel": "plain:all", "data": {"n": 31}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    for client in &mut clients {
        let mut numbers =
            numbers_until_quiet(client, "plain:all", Duration::from_millis(500)).await;
        // Those accepted by one node keep their order (n % 3 names the node)...
        for node in 0..3 {
            let of_node: Vec<u64> = numbers
                .iter()
                .copied()
                .filter(|n| n % 3 == node && *n <= 30)
                .collect();
            assert!(of_node.windows(2).all(|w| w[0] < w[1]), "{of_node:?}");
        }
        // ...while publications from different nodes need not be ordered among themselves;
        // each arrives once.
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            (1..=31).collect::<Vec<u64>>(),
            "every publication once"
        );
    }
}

on_brokers!(presence_and_join_leave_are_cluster_wide);
async fn presence_and_join_leave_are_cluster_wide(broker: Broker) {
    let share = broker.share("presence");
    let cluster = share.cluster(3).await;
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

on_brokers!(a_client_recovers_on_another_node);
async fn a_client_recovers_on_another_node(broker: Broker) {
    let share = broker.share("recovery");
    let cluster = share.cluster(3).await;
    let mut client = cluster.nodes[0].client("roamer").await;
    let epoch = epoch_of(&client.subscribe("chat:r").await);
    for n in 1..=3 {
        publish_n(&cluster.nodes[2], "chat:r", n).await;
    }
    let offsets = offsets_until_quiet(&mut client, "chat:r", Duration::from_millis(300)).await;
    assert_eq!(offsets, vec![1, 2, 3]);
    drop(client);
    for n in 4..=6 {
        publish_n(&cluster.nodes[(n % 3) as usize], "chat:r", n).await;
    }
    // Reconnect to another node and recover from offset 3.
    let mut client = cluster.nodes[1].client("roamer").await;
    let (recovered, offsets) = resubscribe(&mut client, "chat:r", 3, &epoch).await;
    assert!(recovered);
    assert_eq!(offsets, vec![4, 5, 6]);
    publish_n(&cluster.nodes[0], "chat:r", 7).await;
    let offsets = offsets_until_quiet(&mut client, "chat:r", Duration::from_millis(300)).await;
    assert_eq!(offsets, vec![7], "live continues without duplicates");
    // A position from a lost epoch is not recovered on any node.
    let mut late = cluster.nodes[2].client("late").await;
    let reply = late
        .call(
            "subscribe",
            json!({"channel": "chat:r", "recover": true, "offset": 2, "epoch": "nope"}),
        )
        .await;
    assert!(reply["subscribe"].get("recovered").is_none(), "{reply}");
    // The history API: everything with its offsets and epoch, newest first with a limit, and
    // recovery rules (a lost epoch or a position ahead of the stream is unrecoverable).
    let node = &cluster.nodes[2];
    let all = node
        .api_ok("history", json!({"channel": "chat:r", "limit": -1}))
        .await;
    assert_eq!(
        offsets_of(&all["publications"]),
        (1..=7).collect::<Vec<u64>>()
    );
    assert_eq!(
        (all["offset"].as_u64(), all["epoch"].as_str()),
        (Some(7), Some(epoch.as_str()))
    );
    let newest = node
        .api_ok(
            "history",
            json!({"channel": "chat:r", "limit": 2, "reverse": true}),
        )
        .await;
    assert_eq!(offsets_of(&newest["publications"]), vec![7, 6]);
    let since = node
        .api_ok(
            "history",
            json!({"channel": "chat:r", "limit": -1, "since": {"offset": 5, "epoch": epoch}}),
        )
        .await;
    assert_eq!(offsets_of(&since["publications"]), vec![6, 7]);
    for since in [
        json!({"offset": 2, "epoch": "nope"}),
        json!({"offset": 9, "epoch": epoch}),
    ] {
        let (_, reply) = node
            .api("history", json!({"channel": "chat:r", "since": since}))
            .await;
        assert_eq!(reply["error"]["code"], 112, "{reply}");
    }
    // Removal starts a new epoch at offset 0.
    node.api_ok("history_remove", json!({"channel": "chat:r"}))
        .await;
    let after = node
        .api_ok("history", json!({"channel": "chat:r", "limit": -1}))
        .await;
    assert_eq!(after["offset"], 0, "{after}");
    assert_ne!(after["epoch"], epoch.as_str());
    let mut other = cluster.nodes[2].client("other").await;
    let (recovered, _) = resubscribe(&mut other, "chat:r", 2, &epoch).await;
    assert!(!recovered);
}

on_brokers!(api_control_commands_reach_users_on_other_nodes);
async fn api_control_commands_reach_users_on_other_nodes(broker: Broker) {
    let share = broker.share("control");
    let cluster = share.cluster(2).await;
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

on_brokers!(info_lists_every_live_node_and_forgets_stopped_ones);
async fn info_lists_every_live_node_and_forgets_stopped_ones(broker: Broker) {
    let share = broker.share("info");
    let mut cluster = share.cluster(3).await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        let info = cluster.nodes[0].api_ok("info", json!({})).await;
        listed = node_names(&info);
        if listed.len() == 3 {
            let uids: BTreeSet<String> = node_uids(&info).into_iter().collect();
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
    assert_eq!(node_names(&info), vec!["node0", "node1"]);
    let stats = cluster.nodes[0]
        .api_ok("presence_stats", json!({"channel": "chat:gs"}))
        .await;
    assert_eq!(
        stats["num_clients"], 0,
        "presence removed on a graceful stop"
    );
}

on_brokers!(a_crashed_nodes_presence_and_registry_entry_expire);
async fn a_crashed_nodes_presence_and_registry_entry_expire(broker: Broker) {
    let share = broker.share("crash");
    let mut cluster = share.cluster(3).await;
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
    // ...and gone within the TTLs (presence 2 s, registry 3 × 300 ms).
    let deadline = tokio::time::Instant::now() + broker.expiry_within();
    loop {
        let stats = cluster.nodes[2]
            .api_ok("presence_stats", json!({"channel": "chat:crash"}))
            .await;
        let info = cluster.nodes[0].api_ok("info", json!({})).await;
        let listed = node_uids(&info).contains(&crashed_uid);
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
    let restarted_uid = share.add(&mut cluster, "node1").await.node().uid.clone();
    assert_ne!(restarted_uid, crashed_uid);
    let mut uids = Vec::new();
    for _ in 0..50 {
        let info = cluster.nodes[0].api_ok("info", json!({})).await;
        uids = node_uids(&info);
        if uids.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(uids.contains(&restarted_uid), "{uids:?}");
    assert!(!uids.contains(&crashed_uid), "{uids:?}");
    assert_eq!(uids.len(), 3, "{uids:?}");
}

// Not on NATS: it refuses conflated namespaces (docs/scaling.md; cluster_nats.rs checks that).
on_brokers!(
    conflated_channels_snapshot_the_latest_value_per_key_across_nodes:
    redis => Redis, redis_cluster => RedisCluster
);
async fn conflated_channels_snapshot_the_latest_value_per_key_across_nodes(broker: Broker) {
    let share = broker.share("conflated");
    let cluster = share
        .cluster_with(2, |c| {
            c.channel.namespaces.push(NamespaceOptions {
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

/// Two nodes reach the broker through a proxy, a third directly (it keeps publishing during the
/// fault). During the fault the proxied nodes report not ready and refuse publications and new
/// connections, but keep their clients; afterwards they are ready again, subscribers of a
/// channel that missed publications are told (unsubscribe 2500) and recover everything, and
/// live delivery from every node continues once, in offset order. A channel that missed
/// nothing stays untouched where the broker can prove it ([`Broker::proves_no_gap`]); where it
/// cannot, its subscribers are told too and recover nothing, since nothing is missing.
async fn broker_fault(broker: Broker, fault: Fault) {
    let share = broker.share("fault");
    let proxy = Proxy::start(share.server_addr()).await;
    let mut cluster = share.cluster_via(2, &share.url_of(proxy.addr)).await;
    share.add(&mut cluster, "direct").await;
    let (a, b, direct) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    let mut alice = a.client("alice").await;
    let epoch = epoch_of(&alice.subscribe("chat:busy").await);
    let quiet_epoch = epoch_of(&alice.subscribe("chat:quiet").await);
    let mut bob = b.client("bob").await;
    bob.subscribe("chat:busy").await;
    bob.subscribe("chat:quiet").await;
    for n in 1..=3 {
        publish_n(direct, "chat:busy", n).await;
        publish_n(direct, "chat:quiet", n).await;
    }
    for client in [&mut alice, &mut bob] {
        let seen = offsets_by_channel(client, Duration::from_millis(300)).await;
        assert_eq!(seen.get("chat:busy"), Some(&vec![1, 2, 3]));
        assert_eq!(seen.get("chat:quiet"), Some(&vec![1, 2, 3]));
    }

    // A new connection to a node that cannot reach the broker cannot get its personal channel,
    // so it is asked to reconnect (3010) rather than left without it.
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

    let told: &[&str] = if broker.proves_no_gap() {
        &["chat:busy"]
    } else {
        &["chat:busy", "chat:quiet"]
    };
    for client in [&mut alice, &mut bob] {
        let notices = gap_notices(client, told).await;
        // Told of the gap in the busy stream, and it is recovered in full. A stalled (not
        // broken) connection may still hand over what it had, in order, before the node gives
        // it up; never anything beyond a hole.
        let (code, before) = &notices["chat:busy"];
        assert_eq!(*code, 2500, "insufficient state");
        let from = before.last().copied().unwrap_or(3);
        assert_eq!(
            *before,
            (4..=from).collect::<Vec<u64>>(),
            "in order, no hole"
        );
        let (recovered, offsets) = resubscribe(client, "chat:busy", from, &epoch).await;
        assert!(recovered, "recovered from {from}");
        assert_eq!(offsets, (from + 1..=6).collect::<Vec<u64>>());
        if let Some(quiet) = notices.get("chat:quiet") {
            assert_eq!(*quiet, (2500, vec![]), "quiet channel");
            let (recovered, offsets) = resubscribe(client, "chat:quiet", 3, &quiet_epoch).await;
            assert!(recovered, "quiet channel recovered");
            assert_eq!(
                offsets,
                Vec::<u64>::new(),
                "the quiet channel missed nothing"
            );
        }
    }
    // After the outage, publications from every node at once arrive once, in offset order, and
    // the quiet channel goes on.
    tokio::join!(
        publish_range(direct, "chat:busy", 7..12),
        publish_range(a, "chat:busy", 12..17),
        publish_range(b, "chat:busy", 17..22),
    );
    publish_n(b, "chat:quiet", 4).await;
    for client in [&mut alice, &mut bob] {
        let mut busy = Vec::new();
        let mut quiet = Vec::new();
        while let Some(message) = client.next_within(Duration::from_millis(700)).await {
            let push = &message["push"];
            let channel = push["channel"].as_str().unwrap_or_default();
            // Where the broker cannot prove anything, the personal `#user` channel is told too.
            if broker.proves_no_gap() || channel.starts_with("chat:") {
                assert!(
                    push.get("unsubscribe").is_none(),
                    "unexpected unsubscribe: {message}"
                );
            }
            if let Some(offset) = push["pub"]["offset"].as_u64() {
                match channel {
                    "chat:busy" => busy.push(offset),
                    "chat:quiet" => quiet.push(offset),
                    _ => {}
                }
            }
        }
        assert_eq!(busy, (7..=21).collect::<Vec<u64>>());
        assert_eq!(quiet, vec![4]);
    }
    assert_reconnected(a).await;
}

/// Reads `client`'s pushes until each of `channels` was unsubscribed; returns per `chat:`
/// channel told so far its code and the offsets delivered before the notice.
async fn gap_notices(client: &mut Client, channels: &[&str]) -> BTreeMap<String, (u64, Vec<u64>)> {
    let mut before: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut told: BTreeMap<String, (u64, Vec<u64>)> = BTreeMap::new();
    while !channels.iter().all(|c| told.contains_key(*c)) {
        let push = client.push().await;
        let Some(channel) = push["channel"].as_str().filter(|c| c.starts_with("chat:")) else {
            continue;
        };
        assert!(!told.contains_key(channel), "after its notice: {push}");
        if let Some(offset) = push["pub"]["offset"].as_u64() {
            before.entry(channel.to_string()).or_default().push(offset);
        }
        if let Some(code) = push["unsubscribe"]["code"].as_u64() {
            let offsets = before.remove(channel).unwrap_or_default();
            told.insert(channel.to_string(), (code, offsets));
        }
    }
    for (channel, offsets) in &before {
        assert!(
            offsets.is_empty(),
            "{channel} delivered {offsets:?} without a notice"
        );
    }
    told
}

// Not on a Redis Cluster: its clients follow the addresses its servers announce, so no proxy can
// stand in front of it for some nodes only. Its stalled shards and failovers are in
// cluster_redis_sharded.rs.
on_brokers!(broker_restart_is_survived_without_silent_loss: redis => Redis, nats => Nats);
async fn broker_restart_is_survived_without_silent_loss(broker: Broker) {
    broker_fault(broker, Fault::Restart).await;
}

on_brokers!(broker_stall_is_survived_without_silent_loss: redis => Redis, nats => Nats);
async fn broker_stall_is_survived_without_silent_loss(broker: Broker) {
    broker_fault(broker, Fault::Stall).await;
}
