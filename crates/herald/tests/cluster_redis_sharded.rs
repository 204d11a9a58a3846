//! What only a Redis Cluster has, on clusters each test starts itself (`redis-server` processes
//! in cluster mode, see support/redis_cluster.rs): a slot moving to another shard, a primary
//! failing over to its replica, a stalled shard, and feed leases whose keys live on different
//! shards. What every broker does (a Redis Cluster included) is in cluster.rs.

mod support;

use serde_json::json;
use std::time::Duration;
use support::redis_cluster::RedisCluster;
use support::*;

async fn publish(node: &TestServer, channel: &str, n: u64) {
    let reply = node
        .api_ok("publish", json!({"channel": channel, "data": {"n": n}}))
        .await;
    assert!(reply.get("offset").is_some(), "{reply}");
}

/// [`publish`] through a node that may still be rebuilding its cluster connection after the slot
/// map changed: error 100 (broker not ready, temporary by the protocol) is retried, as a client
/// must, until `WAIT`; any other error, or 100 for longer, fails. Exactly-once is still checked by
/// the caller (contiguous offsets, the history's length).
async fn publish_while_the_map_settles(node: &TestServer, channel: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, reply) = node
            .api("publish", json!({"channel": channel, "data": {"n": n}}))
            .await;
        if status == 200 && reply["result"].get("offset").is_some() {
            return;
        }
        assert!(
            reply["error"]["code"] == 100 && tokio::time::Instant::now() < deadline,
            "publish {n}: {status} {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nodes `node0`… on `redis` under a fresh prefix.
async fn nodes(redis: &RedisCluster, n: usize, test: &str) -> Cluster {
    let prefix = unique_prefix(test);
    Cluster::start_configured(n, &prefix, |c| redis.configure(c, &prefix)).await
}

/// The channel's newest offset, from history.
async fn top(node: &TestServer, channel: &str) -> u64 {
    let history = node
        .api_ok("history", json!({"channel": channel, "limit": 0}))
        .await;
    history["offset"].as_u64().unwrap_or(0)
}

/// Alice on node 0 and bob on node 1 subscribed to `channel`, both having received offsets 1..=3
/// published through node 2; returns them and the channel's epoch.
async fn two_subscribers(cluster: &Cluster, channel: &str) -> (Client, Client, String) {
    let mut alice = cluster.nodes[0].client("alice").await;
    let epoch = epoch_of(&alice.subscribe(channel).await);
    let mut bob = cluster.nodes[1].client("bob").await;
    bob.subscribe(channel).await;
    for n in 1..=3 {
        publish(&cluster.nodes[2], channel, n).await;
    }
    receive_all(&mut alice, channel, &epoch, 0, 3).await;
    receive_all(&mut bob, channel, &epoch, 0, 3).await;
    (alice, bob, epoch)
}

#[tokio::test]
async fn a_slot_moving_to_another_shard_loses_nothing() {
    let redis = RedisCluster::start(3, 0);
    let cluster = nodes(&redis, 3, "reshard").await;
    let channel = "chat:moving";
    let (mut alice, mut bob, epoch) = two_subscribers(&cluster, channel).await;

    let slot = redis.slot(channel);
    let from = redis.primary_of(slot);
    let to = *redis
        .primaries()
        .iter()
        .find(|p| **p != from)
        .expect("another primary");
    redis.migrate_slot(slot, to);

    // The subscribed nodes were told by their shard (sunsubscribe) and follow the slot.
    for node in &cluster.nodes[..2] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let metrics = node.metrics().await;
            if metric(&metrics, "herald_broker_reconnects_total") >= 1.0
                && metric(&metrics, "herald_broker_ready") == 1.0
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node did not follow the slot"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The third node holds no subscriber of the channel, so nothing above waited for it: it
    // may learn of the new slot map while these publications are sent.
    for n in 4..=6 {
        publish_while_the_map_settles(&cluster.nodes[2], channel, n).await;
    }
    receive_all(&mut alice, channel, &epoch, 3, 6).await;
    receive_all(&mut bob, channel, &epoch, 3, 6).await;
    // History moved with the slot.
    let history = cluster.nodes[0]
        .api_ok("history", json!({"channel": channel, "limit": -1}))
        .await;
    assert_eq!(
        history["publications"].as_array().map(Vec::len),
        Some(6),
        "{history}"
    );
}

#[tokio::test]
async fn a_primary_failing_over_to_its_replica_loses_nothing_silently() {
    let mut redis = RedisCluster::start(3, 1);
    let cluster = nodes(&redis, 3, "failover").await;
    let channel = "chat:failover";
    let (mut alice, mut bob, epoch) = two_subscribers(&cluster, channel).await;

    // Killed once its replica has its writes (what Redis replication promises).
    redis.wait_replicated();
    let primary = redis.primary_of(redis.slot(channel));
    redis.kill(primary);
    assert!(
        cluster.nodes[0].wait_readiness(false, WAIT).await,
        "a node whose shard died reports not ready"
    );
    // The replica takes over (cluster-node-timeout 1 s) and the nodes follow it.
    // (Blocks this test's runtime meanwhile: the nodes catch up once it is healthy.)
    redis.wait_healthy(3);
    assert_ne!(redis.primary_of(redis.slot(channel)), primary);
    for node in &cluster.nodes {
        assert!(
            node.wait_ready(Duration::from_secs(10)).await,
            "ready after the failover"
        );
    }
    for n in 4..=6 {
        publish(&cluster.nodes[2], channel, n).await;
    }
    receive_all(&mut alice, channel, &epoch, 3, 6).await;
    receive_all(&mut bob, channel, &epoch, 3, 6).await;
    // Presence written before the failover is there again (nodes rewrite theirs on reconnect).
    let stats = cluster.nodes[2]
        .api_ok("presence_stats", json!({"channel": channel}))
        .await;
    assert_eq!(stats["num_clients"], 2, "{stats}");
}

#[tokio::test]
async fn a_stalled_shard_makes_nodes_not_ready_and_they_recover_without_loss() {
    let redis = RedisCluster::start(3, 0);
    let cluster = nodes(&redis, 2, "stall").await;
    let channel = "chat:stalled";
    let mut alice = cluster.nodes[0].client("alice").await;
    let epoch = epoch_of(&alice.subscribe(channel).await);
    for n in 1..=2 {
        publish(&cluster.nodes[1], channel, n).await;
    }
    receive_all(&mut alice, channel, &epoch, 0, 2).await;

    let primary = redis.primary_of(redis.slot(channel));
    redis.freeze(primary, true);
    assert!(
        cluster.nodes[0].wait_readiness(false, WAIT).await,
        "a stalled shard is noticed without traffic"
    );
    // Publishing to the stalled shard fails clearly instead of hanging or being lost.
    let (status, reply) = cluster.nodes[1]
        .api("publish", json!({"channel": channel, "data": {}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    alice.assert_alive().await;
    redis.freeze(primary, false);
    for node in &cluster.nodes {
        assert!(
            node.wait_ready(Duration::from_secs(10)).await,
            "ready after the stall"
        );
    }
    for n in 3..=4 {
        publish(&cluster.nodes[1], channel, n).await;
    }
    // The publication refused during the stall may still have been applied when the shard woke
    // up (a timeout cannot tell): whatever the stream holds arrives, and nothing else.
    let last = top(&cluster.nodes[0], channel).await;
    assert!(last >= 4, "{last}");
    receive_all(&mut alice, channel, &epoch, 2, last).await;
}

#[tokio::test]
async fn feed_leases_work_on_a_cluster() {
    use herald::brokers::leases::LeaseStore;
    use herald::brokers::redis::{RedisLeases, Topology};
    let redis = RedisCluster::start(3, 0);
    let mut config = herald::config::Config::default();
    redis.configure(&mut config, &unique_prefix("leases"));
    let leases = RedisLeases::lazy(&config.broker, Topology::Cluster).expect("lease store");
    let ttl = Duration::from_millis(300);
    // Names on different shards: both keys of a lease share its slot.
    for name in ["feed-a", "feed-b", "feed-c", "quotes{eu}"] {
        let a = leases.acquire(name, "a", ttl).await.expect("acquire");
        let a = a.expect("granted to the first asker");
        assert_eq!(leases.acquire(name, "b", ttl).await.expect("acquire"), None);
        assert!(leases.is_current(name, a).await.expect("is_current"));
        leases.release(name, "a").await.expect("release");
        let b = leases.acquire(name, "b", ttl).await.expect("acquire");
        let b = b.expect("free after release");
        assert!(b > a, "tokens grow");
        assert!(!leases.is_current(name, a).await.expect("is_current"));
        tokio::time::sleep(ttl * 2).await;
        let c = leases.acquire(name, "c", ttl).await.expect("acquire");
        assert!(c.expect("expired lease taken over") > b);
    }
}
