//! Feed leadership across real processes sharing a Redis broker: exactly one node consumes the
//! upstream; SIGKILL of the leader hands the feed over within the lease, and a leader frozen
//! with SIGSTOP past its lease publishes nothing when it wakes. The same SIGKILL takeover on the
//! NATS broker (leases in JetStream KV). Clients count gaps and duplicates by the sequence numbers
//! the fake upstream sends.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::brokers::NatsState;
use support::procs::*;
use support::upstream::FakeUpstream;
use support::*;

/// Three nodes on one Redis (a prefix of their own) all configured with the same feed.
fn start_cluster(dir: &std::path::Path, upstream: &FakeUpstream) -> Vec<Node> {
    let broker = format!(
        r#"[broker]
kind = "redis"
redis_addresses = ["{redis}"]
prefix = "{prefix}"
presence_ttl = "5s""#,
        redis = test_redis(),
        prefix = unique_prefix("feeds"),
    );
    start_feed_cluster(dir, upstream, &broker, CHAT_WITH_HISTORY)
}

/// Three nodes with the same `[broker]` section (and `chat` namespace), all configured with the
/// same feed.
fn start_feed_cluster(
    dir: &std::path::Path,
    upstream: &FakeUpstream,
    broker: &str,
    chat: &str,
) -> Vec<Node> {
    let extra = format!(
        r#"{broker}
[[feeds]]
name = "seq"
url = "{url}"
channel = "chat:seq"
reconnect_min = "50ms"
reconnect_max = "200ms"
"#,
        url = upstream.url(),
    );
    (0..3)
        .map(|i| {
            let name = format!("n{i}");
            start_node(&node_config_with(dir, &name, "127.0.0.1:0", chat, &extra))
                .expect("node starts")
        })
        .collect()
}

/// The `[broker]` section of a node on the shared NATS under `nats`'s prefix and buckets (the
/// feed leases' bucket is the prefix's, deleted with them).
fn nats_broker_toml(nats: &NatsState) -> String {
    format!(
        r#"[broker]
kind = "nats"
nats_urls = ["{url}"]
prefix = "{prefix}"
nats_presence_bucket = "{presence}"
nats_nodes_bucket = "{nodes}"
presence_ttl = "5s""#,
        url = test_nats(),
        prefix = nats.prefix,
        presence = nats.presence_bucket,
        nodes = nats.nodes_bucket,
    )
}

async fn is_leader(addr: SocketAddr) -> bool {
    let text = http_raw(addr, "GET", "/metrics", &[], "").await.1;
    metric(&text, r#"herald_feed_leader{feed="seq"}"#) == 1.0
}

/// Index of the single leader (asserting there is exactly one).
async fn leader(nodes: &[Node], skip: Option<usize>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut leaders = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            if Some(i) != skip && is_leader(n.addr).await {
                leaders.push(i);
            }
        }
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if let [one] = leaders[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `/ready`: a node still connecting to its broker closes new connections.
async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while http_raw(addr, "GET", "/ready", &[], "").await.0 != 200 {
        assert!(Instant::now() < deadline, "node {addr} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client of the feed's channel on a node other than the leader (which the test will kill).
async fn watch_from_another_node(nodes: &[Node], leader: usize) -> Client {
    let watcher = &nodes[(leader + 1) % nodes.len()];
    wait_ready(watcher.addr).await;
    let mut client = Client::open(&format!("ws://{}/connection/websocket", watcher.addr)).await;
    client.connect(&token("watcher")).await;
    client.subscribe("chat:seq").await;
    client
}

/// Sends `{"seq":n}` every 10 ms.
fn pump(upstream: &Arc<FakeUpstream>) -> tokio::task::JoinHandle<()> {
    let upstream = upstream.clone();
    tokio::spawn(async move {
        for seq in 0u64.. {
            upstream.send(&json!({ "seq": seq }).to_string());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Receives until `until` passes; returns (seq, arrival) in order.
async fn collect(client: &mut Client, until: Instant) -> Vec<(u64, Instant)> {
    let mut got = Vec::new();
    while let Some(v) = client
        .next_within(until.saturating_duration_since(Instant::now()))
        .await
    {
        if let Some(seq) = v["push"]["pub"]["data"]["seq"].as_u64() {
            got.push((seq, Instant::now()));
        }
    }
    got
}

fn assert_once(got: &[(u64, Instant)]) {
    let mut seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a sequence number arrived twice");
}

/// The longest pause between consecutive publications, and the seqs skipped across it.
fn largest_gap(got: &[(u64, Instant)]) -> (Duration, u64) {
    got.windows(2)
        .map(|w| {
            (
                w[1].1.duration_since(w[0].1),
                w[1].0.saturating_sub(w[0].0 + 1),
            )
        })
        .max_by_key(|g| g.0)
        .unwrap_or_default()
}

/// Kills the leader while the upstream pumps; checks that one other node took over, keeps
/// publishing and that nothing arrived twice. Returns the largest gap the watcher saw.
async fn kill_the_leader(mut nodes: Vec<Node>, upstream: &Arc<FakeUpstream>) -> Duration {
    let first = leader(&nodes, None).await;
    let mut client = watch_from_another_node(&nodes, first).await;
    let pump = pump(upstream);
    let mut got = collect(&mut client, Instant::now() + Duration::from_secs(1)).await;
    assert!(
        got.len() > 20,
        "the feed flows through the cluster: {}",
        got.len()
    );
    assert_eq!(upstream.open_now(), 1, "only the leader consumes");

    nodes[first].proc.kill9();
    let end = Instant::now() + Duration::from_secs(6);
    got.extend(collect(&mut client, end).await);
    pump.abort();
    assert!(
        got.last()
            .is_some_and(|last| last.1 > end - Duration::from_secs(1)),
        "the new leader keeps publishing"
    );
    let second = leader(&nodes, Some(first)).await;
    assert_ne!(second, first);
    let (gap, lost) = largest_gap(&got);
    eprintln!("takeover after SIGKILL: gap {gap:?}, {lost} upstream messages missed meanwhile");
    assert_once(&got);
    gap
}

/// Freezes the leader for 4 s (twice the default lease), then wakes it: another node took over
/// meanwhile, and the old leader publishes none of the messages in its socket buffer.
async fn freeze_the_leader(nodes: Vec<Node>, upstream: &Arc<FakeUpstream>) {
    let first = leader(&nodes, None).await;
    let mut client = watch_from_another_node(&nodes, first).await;
    let pump = pump(upstream);
    let mut got = collect(&mut client, Instant::now() + Duration::from_millis(500)).await;

    // Frozen for twice the lease: another node takes over while the upstream keeps writing into
    // the frozen node's socket.
    nodes[first].proc.freeze(true);
    got.extend(collect(&mut client, Instant::now() + Duration::from_secs(4)).await);
    let second = leader(&nodes, Some(first)).await;
    nodes[first].proc.freeze(false);
    // It wakes with seconds of messages in its socket buffer; none of them may be published.
    got.extend(collect(&mut client, Instant::now() + Duration::from_secs(3)).await);
    pump.abort();
    assert!(
        !is_leader(nodes[first].addr).await,
        "the old leader stepped down"
    );
    assert_eq!(leader(&nodes, None).await, second);
    assert!(
        eventually(WAIT, || upstream.open_now() == 1).await,
        "the old leader let go of the upstream"
    );
    let (gap, lost) = largest_gap(&got);
    eprintln!("takeover after SIGSTOP: gap {gap:?}, {lost} messages missed");
    assert_once(&got);
    // Sequence numbers never go backwards: nothing old was published late.
    assert!(
        got.windows(2).all(|w| w[1].0 > w[0].0),
        "a late publication from the frozen leader"
    );
}

#[tokio::test]
async fn a_killed_leader_hands_the_feed_over_within_three_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Arc::new(FakeUpstream::start().await);
    let gap = kill_the_leader(start_cluster(dir.path(), &upstream), &upstream).await;
    assert!(gap < Duration::from_secs(3), "takeover took {gap:?}");
}

#[tokio::test]
async fn a_leader_frozen_past_its_lease_publishes_nothing_when_it_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Arc::new(FakeUpstream::start().await);
    freeze_the_leader(start_cluster(dir.path(), &upstream), &upstream).await;
}

/// Three nodes on the NATS broker (this test's prefix and buckets) with the same feed.
fn start_nats_cluster(
    dir: &std::path::Path,
    upstream: &FakeUpstream,
    nats: &NatsState,
) -> Vec<Node> {
    start_feed_cluster(dir, upstream, &nats_broker_toml(nats), CHAT_WITHOUT_HISTORY)
}

/// On the NATS broker a lease lapses when other nodes have seen it unchanged for `lease_ttl`
/// (docs/feeds.md): takeover after up to about 1.5 leases plus a retry, so the bound is 4 s.
#[tokio::test]
async fn on_nats_a_killed_leader_hands_the_feed_over_within_four_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsState::new(&unique_prefix("feeds"));
    let upstream = Arc::new(FakeUpstream::start().await);
    let nodes = start_nats_cluster(dir.path(), &upstream, &nats);
    let gap = kill_the_leader(nodes, &upstream).await;
    assert!(gap < Duration::from_secs(4), "takeover took {gap:?}");
}

/// Fencing on NATS: the woken leader's token is no longer the lease's (a KV read per message).
#[tokio::test]
async fn on_nats_a_leader_frozen_past_its_lease_publishes_nothing_when_it_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsState::new(&unique_prefix("feeds"));
    let upstream = Arc::new(FakeUpstream::start().await);
    freeze_the_leader(start_nats_cluster(dir.path(), &upstream, &nats), &upstream).await;
}
