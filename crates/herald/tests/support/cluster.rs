//! Several in-process nodes on one broker ([`brokers`](super::brokers)), and what tests read
//! from their clients: publications per channel, recovery, gap notices, broker outages.

use super::{proxy, Client, TestServer, WAIT};
use herald::config::Config;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// N in-process nodes sharing one broker config (one broker, one prefix; see
/// [`super::brokers::Share`]).
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub prefix: String,
}

impl Cluster {
    /// N nodes named `node0`… configured by `configure` (broker settings included).
    pub async fn start_configured(
        n: usize,
        prefix: &str,
        configure: impl Fn(&mut Config),
    ) -> Cluster {
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = TestServer::with(|c| {
                configure(c);
                c.node.name = format!("node{i}");
            })
            .await;
            nodes.push(node);
        }
        for node in &nodes {
            assert!(node.wait_ready(WAIT).await, "node ready");
        }
        Cluster {
            nodes,
            prefix: prefix.to_string(),
        }
    }

    /// Adds a node configured by `configure` (e.g. a restarted one).
    pub async fn add_with(&mut self, name: &str, configure: impl Fn(&mut Config)) -> &TestServer {
        let node = TestServer::with(|c| {
            configure(c);
            c.node.name = name.to_string();
        })
        .await;
        assert!(node.wait_ready(WAIT).await, "node ready");
        self.nodes.push(node);
        self.nodes.last().expect("just added")
    }
}

/// Publication offsets received on `channel` until `quiet` passes without any.
pub async fn offsets_until_quiet(client: &mut Client, channel: &str, quiet: Duration) -> Vec<u64> {
    let mut offsets = Vec::new();
    while let Some(message) = client.next_within(quiet).await {
        let push = &message["push"];
        if push["channel"] == channel {
            if let Some(offset) = push["pub"]["offset"].as_u64() {
                offsets.push(offset);
            }
        }
    }
    offsets
}

/// Subscribes with recovery from `offset`/`epoch` and returns (recovered, offsets of the
/// recovered publications).
pub async fn resubscribe(
    client: &mut Client,
    channel: &str,
    offset: u64,
    epoch: &str,
) -> (bool, Vec<u64>) {
    let reply = client
        .call(
            "subscribe",
            json!({"channel": channel, "recover": true, "offset": offset, "epoch": epoch}),
        )
        .await;
    let sub = &reply["subscribe"];
    assert!(sub.is_object(), "resubscribe failed: {reply}");
    let offsets = sub["publications"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default();
    (sub["recovered"] == true, offsets)
}

/// Waits for the unsubscribe push of `channel`; returns its code. Publications before it are
/// returned too.
pub async fn unsubscribe_push(client: &mut Client, channel: &str) -> (u64, Vec<u64>) {
    let mut offsets = Vec::new();
    loop {
        let push = client.push().await;
        if push["channel"] != channel {
            continue;
        }
        if let Some(offset) = push["pub"]["offset"].as_u64() {
            offsets.push(offset);
        }
        if let Some(unsub) = push.get("unsubscribe") {
            return (unsub["code"].as_u64().unwrap_or(0), offsets);
        }
    }
}

/// Publishes `{"n": n}` to `channel` through `node`'s API.
pub async fn publish_n(node: &TestServer, channel: &str, n: u64) -> Value {
    node.api_ok("publish", json!({"channel": channel, "data": {"n": n}}))
        .await
}

/// A broker outage for a cluster whose nodes 0 and 1 reach the broker through `proxy` and node 2
/// directly: the fault on, nodes 0 and 1 report not ready, refuse publications through the API
/// and from their clients (error 100) and keep their clients; `while_down` runs on node 0; then
/// offsets 4..=6 of `chat:busy` are published through node 2, the fault is lifted and nodes 0 and
/// 1 are ready again within `ready_within`.
pub async fn broker_outage(
    proxy: &proxy::Proxy,
    fault: &proxy::Fault,
    cluster: &Cluster,
    alice: &mut Client,
    bob: &mut Client,
    ready_within: Duration,
    while_down: impl AsyncFnOnce(&TestServer),
) {
    let (a, b, direct) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    proxy.inject(fault);
    assert!(a.wait_readiness(false, WAIT).await, "node a not ready");
    assert!(b.wait_readiness(false, WAIT).await, "node b not ready");
    // A node that cannot reach the broker stores nothing and says so, to the API and to clients.
    let (status, reply) = a
        .api("publish", json!({"channel": "chat:busy", "data": {}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    let reply = bob
        .call("publish", json!({"channel": "chat:busy", "data": {}}))
        .await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    alice.assert_alive().await;
    while_down(a).await;
    for n in 4..=6 {
        publish_n(direct, "chat:busy", n).await;
    }
    proxy.lift(fault);
    assert!(a.wait_ready(ready_within).await, "node a ready again");
    assert!(b.wait_ready(ready_within).await, "node b ready again");
}

/// After an outage: `node` reconnected, told subscribers of a possible gap, and is ready.
pub async fn assert_reconnected(node: &TestServer) {
    let metrics = node.metrics().await;
    assert!(
        super::metric(&metrics, "herald_broker_reconnects_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        super::metric(&metrics, "herald_broker_gaps_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(super::metric(&metrics, "herald_broker_ready"), 1.0);
}

/// Publications `numbers` on `channel` through `node`, one after the other.
pub async fn publish_range(node: &TestServer, channel: &str, numbers: std::ops::Range<u64>) {
    for n in numbers {
        publish_n(node, channel, n).await;
    }
}

/// The `n` of every publication received on `channel` until `quiet` passes without any.
pub async fn numbers_until_quiet(client: &mut Client, channel: &str, quiet: Duration) -> Vec<u64> {
    let mut numbers = Vec::new();
    while let Some(message) = client.next_within(quiet).await {
        let push = &message["push"];
        if push["channel"] == channel {
            if let Some(n) = push["pub"]["data"]["n"].as_u64() {
                numbers.push(n);
            }
        }
    }
    numbers
}

/// Offsets per channel received until `quiet` passes without a message; no channel may be
/// unsubscribed meanwhile.
pub async fn offsets_by_channel(
    client: &mut Client,
    quiet: Duration,
) -> BTreeMap<String, Vec<u64>> {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(message) = client.next_within(quiet).await {
        let push = &message["push"];
        assert!(push.get("unsubscribe").is_none(), "unexpected: {message}");
        if let (Some(channel), Some(offset)) =
            (push["channel"].as_str(), push["pub"]["offset"].as_u64())
        {
            seen.entry(channel.to_string()).or_default().push(offset);
        }
    }
    seen
}

/// Everything published on `channel` up to offset `last` reaches `client` once and in order:
/// live, or — where the node could not prove its stream whole and said so with "insufficient
/// state" (2500) — by recovery from the last offset the client holds. Never a silent hole.
pub async fn receive_all(
    client: &mut Client,
    channel: &str,
    epoch: &str,
    mut have: u64,
    last: u64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while have < last {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at offset {have} of {last}"
        );
        let Some(message) = client.next_within(Duration::from_secs(1)).await else {
            continue;
        };
        let push = &message["push"];
        if push["channel"] != channel {
            continue;
        }
        if let Some(offset) = push["pub"]["offset"].as_u64() {
            assert_eq!(offset, have + 1, "in order, no hole, no duplicate");
            have = offset;
        } else if let Some(unsubscribe) = push.get("unsubscribe") {
            assert_eq!(unsubscribe["code"], 2500, "{message}");
            let (recovered, offsets) = resubscribe(client, channel, have, epoch).await;
            assert!(recovered, "recovery from {have}@{epoch}");
            let expected: Vec<u64> = (have + 1..have + 1 + offsets.len() as u64).collect();
            assert_eq!(offsets, expected, "recovery continues the stream");
            have += offsets.len() as u64;
        }
    }
    // Nothing more (no duplicate) arrives.
    while let Some(message) = client.next_within(Duration::from_millis(300)).await {
        let push = &message["push"];
        if push["channel"] == channel {
            assert!(push["pub"].is_null(), "duplicate after {last}: {message}");
        }
    }
}

/// The epoch of a subscribe reply.
pub fn epoch_of(subscribe_reply: &Value) -> String {
    subscribe_reply["epoch"]
        .as_str()
        .expect("epoch")
        .to_string()
}

/// The offsets of a subscribe or history reply's publications.
pub fn offsets_of(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// The names of the nodes an `info` reply lists.
pub fn node_names(info: &Value) -> Vec<String> {
    node_field(info, "name")
}

/// The uids of the nodes an `info` reply lists.
pub fn node_uids(info: &Value) -> Vec<String> {
    node_field(info, "uid")
}

fn node_field(info: &Value, field: &str) -> Vec<String> {
    info["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n[field].as_str().map(str::to_string))
        .collect()
}
