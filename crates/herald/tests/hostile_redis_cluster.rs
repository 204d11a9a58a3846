//! Partial broker faults (issue 13, item 12): two nodes on a three-primary Redis Cluster (no
//! replicas) that this test starts itself lose one primary for good (SIGKILL). Only that shard's
//! channels may fail — fast, with an error naming the condition, their subscribers told to
//! recover — while every other channel keeps working on both nodes, `/ready` stays 200 with a
//! degraded status and the metrics say which shards are lost. When the primary is restarted (same
//! port, same cluster config) its channels work again.

mod support;

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::redis_cluster::{cli, RedisCluster};
use support::*;

/// Channels per shard.
const PER_SHARD: usize = 3;

/// `PER_SHARD` channel names for each primary, picked by hash slot (`CLUSTER KEYSLOT`: a
/// channel's keys carry its name as hash tag).
fn channels_by_shard(redis: &RedisCluster) -> BTreeMap<u16, Vec<String>> {
    let primaries = redis.primaries();
    let mut by_shard: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        if by_shard.len() == primaries.len() && by_shard.values().all(|c| c.len() == PER_SHARD) {
            break;
        }
        assert!(i < 1000, "channels for every shard");
        let channel = format!("chat:r{i}");
        let shard = by_shard
            .entry(redis.primary_of(redis.slot(&channel)))
            .or_default();
        if shard.len() < PER_SHARD {
            shard.push(channel);
        }
    }
    by_shard
}

/// `/ready`: (HTTP status, `status` field).
async fn readiness(node: &TestServer) -> (u16, String) {
    let (status, body) = http_raw(node.addr, "GET", "/ready", &[], "").await;
    let json: Value = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (
        status,
        json["status"].as_str().unwrap_or_default().to_string(),
    )
}

async fn wait_status(node: &TestServer, want: &str, wait: Duration) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let seen = readiness(node).await;
        if seen.1 == want || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `client`'s pushes until `quiet` passes without one: publication offsets per channel,
/// and the channels unsubscribed with their codes.
async fn drain(
    client: &mut Client,
    quiet: Duration,
) -> (BTreeMap<String, Vec<u64>>, BTreeMap<String, u64>) {
    let mut offsets: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut unsubscribed = BTreeMap::new();
    while let Some(message) = client.next_within(quiet).await {
        let push = &message["push"];
        let Some(channel) = push["channel"].as_str() else {
            continue;
        };
        if let Some(offset) = push["pub"]["offset"].as_u64() {
            offsets.entry(channel.to_string()).or_default().push(offset);
        }
        if let Some(code) = push["unsubscribe"]["code"].as_u64() {
            unsubscribed.insert(channel.to_string(), code);
        }
    }
    (offsets, unsubscribed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shard_fails_only_its_own_channels_and_comes_back() {
    let mut redis = RedisCluster::start(3, 0);
    // What an operator who wants the other shards served while one is lost configures (by
    // default Redis Cluster refuses every command once a slot is uncovered: docs/scaling.md).
    for port in redis.primaries() {
        assert_eq!(
            cli(
                port,
                &["CONFIG", "SET", "cluster-require-full-coverage", "no"]
            ),
            "OK"
        );
    }
    let by_shard = channels_by_shard(&redis);
    let prefix = unique_prefix("lost-shard");
    let cluster = Cluster::start_configured(2, &prefix, |c| redis.configure(c, &prefix)).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);

    // A subscriber of every channel on each node; offset 1 everywhere.
    let all: Vec<String> = by_shard.values().flatten().cloned().collect();
    let mut alice = a.client("alice").await;
    let mut bob = b.client("bob").await;
    for channel in &all {
        alice.subscribe(channel).await;
        bob.subscribe(channel).await;
    }
    for (i, channel) in all.iter().enumerate() {
        publish_n(&cluster.nodes[i % 2], channel, 1).await;
    }
    for client in [&mut alice, &mut bob] {
        let (offsets, unsubscribed) = drain(client, Duration::from_millis(400)).await;
        assert!(unsubscribed.is_empty(), "{unsubscribed:?}");
        for channel in &all {
            assert_eq!(offsets.get(channel), Some(&vec![1]), "{channel}");
        }
    }

    // A shard that hosts neither the node registry nor the control channel of this prefix is
    // lost (their loss fails `info` and user-targeted API commands; this test is about channels).
    let control = redis.primary_of(redis.slot(&format!("{prefix}.control")));
    let registry = redis.primary_of(redis.slot(&prefix));
    let victim = *by_shard
        .keys()
        .find(|p| **p != control && **p != registry)
        .expect("a shard with channels only");
    let lost: BTreeSet<String> = by_shard[&victim].iter().cloned().collect();
    // The users' personal channels (server-side subscriptions) live on some shard too.
    let personal_lost: BTreeSet<String> = ["#alice", "#bob"]
        .into_iter()
        .filter(|c| redis.primary_of(redis.slot(c)) == victim)
        .map(String::from)
        .collect();
    let healthy: Vec<String> = all.iter().filter(|c| !lost.contains(*c)).cloned().collect();
    redis.kill(victim);
    let killed_at = Instant::now();

    // Both nodes notice without traffic, stay in the load balancer, and say why.
    for node in [a, b] {
        let (status, state) = wait_status(node, "degraded", Duration::from_secs(5)).await;
        assert_eq!((status, state.as_str()), (200, "degraded"));
        let (_, body) = http_raw(node.addr, "GET", "/ready", &[], "").await;
        assert!(body.contains(r#""shards_down":1"#), "{body}");
        assert!(body.contains(r#""shards":3"#), "{body}");
        let metrics = node.metrics().await;
        assert_eq!(
            metric(&metrics, r#"herald_broker_shards{state="down"}"#),
            1.0
        );
        assert_eq!(metric(&metrics, r#"herald_broker_shards{state="up"}"#), 2.0);
        assert_eq!(metric(&metrics, "herald_broker_ready"), 1.0);
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "noticed in {:?}",
        killed_at.elapsed()
    );

    // Every publication to a healthy shard's channel is accepted, through either node, and
    // delivered to both subscribers, in order.
    for n in 2..=4 {
        for (i, channel) in healthy.iter().enumerate() {
            let reply = publish_n(&cluster.nodes[(i + n as usize) % 2], channel, n).await;
            assert_eq!(reply["offset"], n, "{channel}: {reply}");
        }
    }
    // The lost shard's publications fail at once, with a code SDKs retry and a message naming
    // the condition.
    for channel in &lost {
        for node in [a, b] {
            let started = Instant::now();
            let (status, reply) = node
                .api("publish", json!({"channel": channel, "data": {}}))
                .await;
            assert_eq!(status, 200);
            assert_eq!(reply["error"]["code"], 100, "{reply}");
            assert_eq!(
                reply["error"]["message"], "broker shard unavailable, retry later",
                "{reply}"
            );
            assert!(started.elapsed() < Duration::from_millis(400), "fast");
        }
    }
    let lost_channel = lost.iter().next().expect("a lost channel").clone();

    // Subscribers hear of the lost channels (2500: resubscribe and recover), of nothing else,
    // and receive every healthy publication once and in order.
    for client in [&mut alice, &mut bob] {
        let (offsets, unsubscribed) = drain(client, Duration::from_millis(500)).await;
        let told: BTreeSet<String> = unsubscribed
            .keys()
            .filter(|c| !personal_lost.contains(*c))
            .cloned()
            .collect();
        assert_eq!(told, lost, "only the lost shard's channels");
        assert!(
            unsubscribed.values().all(|code| *code == 2500),
            "{unsubscribed:?}"
        );
        for channel in &healthy {
            assert_eq!(offsets.get(channel), Some(&vec![2, 3, 4]), "{channel}");
        }
        for channel in &lost {
            assert_eq!(offsets.get(channel), None, "{channel}");
        }
    }

    // Subscribe, history and presence work on the healthy shards and fail clearly on the lost one.
    let mut carol = b.client("carol").await;
    let healthy_channel = &healthy[0];
    carol.subscribe(healthy_channel).await;
    // A client's subscribe to a lost channel: code 100, temporary (SDKs retry), named.
    let reply = carol
        .call("subscribe", json!({"channel": lost_channel}))
        .await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["temporary"], true, "{reply}");
    assert_eq!(
        reply["error"]["message"], "broker shard unavailable, retry later",
        "{reply}"
    );
    let history = a
        .api_ok("history", json!({"channel": healthy_channel, "limit": -1}))
        .await;
    assert_eq!(history["publications"].as_array().map(Vec::len), Some(4));
    let stats = a
        .api_ok("presence_stats", json!({"channel": healthy_channel}))
        .await;
    assert_eq!(stats["num_clients"], 3, "{stats}");
    for method in ["history", "presence"] {
        let (_, reply) = a.api(method, json!({"channel": lost_channel})).await;
        assert_eq!(reply["error"]["code"], 100, "{method}: {reply}");
    }
    publish_n(b, healthy_channel, 5).await;
    assert_eq!(carol.publication(healthy_channel).await["offset"], 5);

    // The primary returns (same port and cluster config: it rejoins with its slots, empty).
    tokio::task::block_in_place(|| redis.restart(victim));
    for node in [a, b] {
        let (status, state) = wait_status(node, "ready", Duration::from_secs(10)).await;
        assert_eq!((status, state.as_str()), (200, "ready"));
        let metrics = node.metrics().await;
        assert_eq!(
            metric(&metrics, r#"herald_broker_shards{state="down"}"#),
            0.0
        );
        assert_eq!(metric(&metrics, r#"herald_broker_shards{state="up"}"#), 3.0);
    }
    // Its channels' subscribers resubscribe (recovery from their positions: the stream did not
    // survive, so they are told it is not recovered) and receive what follows on both nodes.
    for client in [&mut alice, &mut bob] {
        for channel in &lost {
            let reply = client
                .call(
                    "subscribe",
                    json!({"channel": channel, "recover": true, "offset": 1, "epoch": "gone"}),
                )
                .await;
            assert!(reply["subscribe"].is_object(), "{channel}: {reply}");
        }
    }
    for channel in &lost {
        let reply = publish_n(a, channel, 1).await;
        assert!(reply.get("offset").is_some(), "{reply}");
    }
    for client in [&mut alice, &mut bob] {
        let (offsets, unsubscribed) = drain(client, Duration::from_millis(400)).await;
        assert!(unsubscribed.is_empty(), "{unsubscribed:?}");
        for channel in &lost {
            assert_eq!(offsets.get(channel).map(Vec::len), Some(1), "{channel}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_shard_fails_its_channels_within_the_command_timeout_and_stalls_no_other() {
    let redis = RedisCluster::start(3, 0);
    for port in redis.primaries() {
        cli(
            port,
            &["CONFIG", "SET", "cluster-require-full-coverage", "no"],
        );
    }
    let by_shard = channels_by_shard(&redis);
    let prefix = unique_prefix("stalled-shard");
    let cluster = Cluster::start_configured(2, &prefix, |c| redis.configure(c, &prefix)).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let command_timeout = a.node().config().broker.command_timeout;
    let control = redis.primary_of(redis.slot(&format!("{prefix}.control")));
    let registry = redis.primary_of(redis.slot(&prefix));
    let victim = *by_shard
        .keys()
        .find(|p| **p != control && **p != registry)
        .expect("a shard with channels only");
    let frozen_channel = by_shard[&victim][0].clone();
    let healthy: Vec<String> = by_shard
        .iter()
        .filter(|(p, _)| **p != victim)
        .flat_map(|(_, c)| c.clone())
        .collect();
    let mut alice = a.client("alice").await;
    for channel in &healthy {
        alice.subscribe(channel).await;
    }
    // Every script has run on every shard before the stall (as in a node that has served).
    publish_n(b, &frozen_channel, 1).await;
    for channel in &healthy {
        publish_n(b, channel, 1).await;
    }

    redis.freeze(victim, true);
    // Before the node has noticed: the frozen shard's publish fails within the command timeout
    // (plus scheduling), while the others are answered at once, concurrently.
    let frozen = async {
        let started = Instant::now();
        let (_, reply) = b
            .api("publish", json!({"channel": frozen_channel, "data": {}}))
            .await;
        (started.elapsed(), reply)
    };
    let others = async {
        let mut slowest = Duration::ZERO;
        for channel in &healthy {
            let started = Instant::now();
            let reply = publish_n(a, channel, 2).await;
            assert_eq!(reply["offset"], 2, "{channel}: {reply}");
            slowest = slowest.max(started.elapsed());
        }
        slowest
    };
    let ((frozen_took, reply), slowest) = tokio::join!(frozen, others);
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert!(
        frozen_took < command_timeout + Duration::from_millis(400),
        "the frozen shard's publish took {frozen_took:?}"
    );
    assert!(
        slowest < Duration::from_millis(300),
        "a healthy shard's publish took {slowest:?} while another shard was frozen"
    );
    for node in [a, b] {
        let (status, state) = wait_status(node, "degraded", Duration::from_secs(5)).await;
        assert_eq!((status, state.as_str()), (200, "degraded"));
    }
    let (offsets, unsubscribed) = drain(&mut alice, Duration::from_millis(300)).await;
    assert!(
        unsubscribed.keys().all(|c| c.starts_with('#')),
        "{unsubscribed:?}"
    );
    for channel in &healthy {
        assert_eq!(offsets.get(channel), Some(&vec![1, 2]), "{channel}");
    }

    redis.freeze(victim, false);
    for node in [a, b] {
        let (status, state) = wait_status(node, "ready", Duration::from_secs(10)).await;
        assert_eq!((status, state.as_str()), (200, "ready"));
    }
    // The shard kept its data: its channel continues its stream.
    let reply = publish_n(a, &frozen_channel, 2).await;
    assert!(reply["offset"].as_u64() >= Some(2), "{reply}");
}
