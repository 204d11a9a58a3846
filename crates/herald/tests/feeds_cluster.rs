//! Feed leadership across real processes sharing a Redis broker: exactly one node consumes the
//! upstream; SIGKILL of the leader hands the feed over within the lease, and a leader frozen
//! with SIGSTOP past its lease publishes nothing when it wakes. Clients count gaps and duplicates
//! by the sequence numbers the fake upstream sends.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::procs::*;
use support::upstream::FakeUpstream;
use support::*;

fn redis_addr() -> String {
    std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// Three nodes on one Redis (a prefix of their own) all configured with the same feed.
fn start_cluster(dir: &std::path::Path, upstream: &FakeUpstream) -> Vec<Node> {
    let prefix = format!("herald-test.feeds-{}", uuid::Uuid::new_v4().simple());
    let extra = format!(
        r#"[broker]
kind = "redis"
redis_addresses = ["{redis}"]
prefix = "{prefix}"
presence_ttl = "5s"
[[feeds]]
name = "seq"
url = "{url}"
channel = "chat:seq"
reconnect_min = "50ms"
reconnect_max = "200ms"
"#,
        redis = redis_addr(),
        url = upstream.url(),
    );
    (0..3)
        .map(|i| {
            let name = format!("n{i}");
            start_node(&node_config(dir, &name, "127.0.0.1:0", &extra)).expect("node starts")
        })
        .collect()
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

/// A client of the feed's channel on a node other than the leader (which the test will kill).
async fn watch_from_another_node(nodes: &[Node], leader: usize) -> Client {
    let watcher = &nodes[(leader + 1) % nodes.len()];
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

#[tokio::test]
async fn a_killed_leader_hands_the_feed_over_within_three_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Arc::new(FakeUpstream::start().await);
    let mut nodes = start_cluster(dir.path(), &upstream);
    let first = leader(&nodes, None).await;
    let mut client = watch_from_another_node(&nodes, first).await;
    let pump = pump(&upstream);
    let mut got = collect(&mut client, Instant::now() + Duration::from_secs(1)).await;
    assert!(
        got.len() > 20,
        "the feed flows through the cluster: {}",
        got.len()
    );
    assert_eq!(upstream.open_now(), 1, "only the leader consumes");

    nodes[first].proc.kill9();
    got.extend(collect(&mut client, Instant::now() + Duration::from_secs(5)).await);
    pump.abort();
    let second = leader(&nodes, Some(first)).await;
    assert_ne!(second, first);
    let (gap, lost) = largest_gap(&got);
    eprintln!("takeover after SIGKILL: gap {gap:?}, {lost} upstream messages missed meanwhile");
    assert!(gap < Duration::from_secs(3), "takeover took {gap:?}");
    assert_once(&got);
}

#[tokio::test]
async fn a_leader_frozen_past_its_lease_publishes_nothing_when_it_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Arc::new(FakeUpstream::start().await);
    let nodes = start_cluster(dir.path(), &upstream);
    let first = leader(&nodes, None).await;
    let mut client = watch_from_another_node(&nodes, first).await;
    let pump = pump(&upstream);
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
