//! Partial broker faults on NATS (issue 13, item 12, "where it applies"). Core NATS has no
//! per-channel shards: every channel's traffic goes through each node's single connection to
//! one server of the NATS cluster, and the servers route between themselves. The partial fault
//! that applies is a NATS cluster losing one server: it must take down only what depended on
//! that server — the connections to it — and nothing else. This test starts its own
//! three-server NATS cluster (no JetStream: core delivery only) with one node on server 1 and
//! one on server 2; server 3 serves no node.

mod support;

use herald::config::{BrokerKind, Config};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::brokers::history_off;
use support::procs::{free_port, Proc};
use support::*;

struct NatsCluster {
    /// (client port, cluster port, process) per server.
    servers: Vec<(u16, u16, Proc)>,
}

impl NatsCluster {
    fn start(n: usize) -> NatsCluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cluster_port))| (*port, *cluster_port, Self::spawn(i, &ports)))
            .collect();
        let cluster = NatsCluster { servers };
        for i in 0..n {
            cluster.wait_routes(i, n - 1);
        }
        cluster
    }

    /// Server `i` of `ports`, routed to every other one.
    fn spawn(i: usize, ports: &[(u16, u16)]) -> Proc {
        let (port, cluster_port) = ports[i];
        let routes: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, (_, c))| format!("nats://127.0.0.1:{c}"))
            .collect();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-n", &format!("herald-test-{i}")])
            .args(["--cluster_name", "herald-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{cluster_port}")])
            .args(["--routes", &routes.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (Debian package nats-server)");
        Proc(child)
    }

    fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].0)
    }

    /// Waits until server `i` has `routes` routes (over a raw connection: `INFO` is sent on
    /// connect, and routes show in the `connect_urls` it advertises).
    fn wait_routes(&self, i: usize, routes: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let advertised = std::net::TcpStream::connect(("127.0.0.1", self.servers[i].0))
                .ok()
                .and_then(|stream| {
                    use std::io::BufRead;
                    stream
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .ok()?;
                    let mut line = String::new();
                    std::io::BufReader::new(stream).read_line(&mut line).ok()?;
                    let info: Value = serde_json::from_str(line.strip_prefix("INFO ")?).ok()?;
                    Some(info["connect_urls"].as_array().map_or(0, Vec::len))
                });
            // Each server advertises itself and every routed peer.
            if advertised.is_some_and(|n| n > routes) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server {i} routed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self, i: usize) {
        self.servers[i].2.kill9();
    }
}

/// A node on `url` under `prefix`: core NATS only (no JetStream, so no presence and no
/// history in the namespaces), short timers.
fn configure(url: String, prefix: String) -> impl Fn(&mut Config) {
    move |c: &mut Config| {
        c.broker.kind = BrokerKind::Nats;
        c.broker.nats_urls = vec![url.clone()];
        c.broker.nats_jetstream = false;
        c.broker.prefix = prefix.clone();
        c.broker.command_timeout = Duration::from_millis(500);
        c.broker.connect_timeout = Duration::from_millis(500);
        c.broker.max_reconnect_delay = Duration::from_millis(300);
        c.broker.node_announce_interval = Duration::from_millis(300);
        history_off(c);
        for ns in c
            .channel
            .namespaces
            .iter_mut()
            .chain(std::iter::once(&mut c.channel.without_namespace))
        {
            ns.presence = false;
            ns.join_leave = false;
            ns.force_push_join_leave = false;
        }
    }
}

/// Pushes until `quiet` passes: data per channel, and channels unsubscribed with their codes.
async fn drain(
    client: &mut Client,
    quiet: Duration,
) -> (BTreeMap<String, Vec<Value>>, BTreeMap<String, u64>) {
    let mut data: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut unsubscribed = BTreeMap::new();
    while let Some(message) = client.next_within(quiet).await {
        let push = &message["push"];
        let Some(channel) = push["channel"].as_str() else {
            continue;
        };
        if push.get("pub").is_some() {
            data.entry(channel.to_string())
                .or_default()
                .push(push["pub"]["data"]["n"].clone());
        }
        if let Some(code) = push["unsubscribe"]["code"].as_u64() {
            unsubscribed.insert(channel.to_string(), code);
        }
    }
    (data, unsubscribed)
}

/// Publishes `n` on `channels` through `node`; every one must be accepted.
async fn publish_all(node: &TestServer, channels: &[&str], n: u64) {
    for channel in channels {
        publish_n(node, channel, n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nats_server_takes_down_only_the_connections_it_served() {
    let mut nats = NatsCluster::start(3);
    let prefix = unique_prefix("lost-nats-server");
    let a = TestServer::with(|c| {
        configure(nats.url(0), prefix.clone())(c);
        c.node.name = "on-server-1".into();
    })
    .await;
    let b = TestServer::with(|c| {
        configure(nats.url(1), prefix.clone())(c);
        c.node.name = "on-server-2".into();
    })
    .await;
    assert!(a.wait_ready(WAIT).await && b.wait_ready(WAIT).await);
    let channels = ["chat:n1", "chat:n2", "chat:n3"];
    let mut alice = a.client("alice").await;
    let mut bob = b.client("bob").await;
    for channel in channels {
        alice.subscribe(channel).await;
        bob.subscribe(channel).await;
    }
    publish_all(&a, &channels, 1).await;
    publish_all(&b, &channels, 2).await;
    for client in [&mut alice, &mut bob] {
        let (data, unsubscribed) = drain(client, Duration::from_millis(400)).await;
        assert!(unsubscribed.is_empty(), "{unsubscribed:?}");
        for channel in channels {
            assert_eq!(data[channel], vec![1, 2], "{channel}");
        }
    }

    // Server 3 serves no node: losing it changes nothing for anyone.
    nats.kill(2);
    for n in 3..=5 {
        publish_all(&a, &channels, n).await;
        publish_all(&b, &channels, n + 10).await;
    }
    for client in [&mut alice, &mut bob] {
        let (data, unsubscribed) = drain(client, Duration::from_millis(500)).await;
        assert!(unsubscribed.is_empty(), "{unsubscribed:?}");
        for channel in channels {
            assert_eq!(data[channel].len(), 6, "{channel}: {:?}", data[channel]);
        }
    }
    assert!(a.is_ready().await && b.is_ready().await);

    // Server 2 serves node b: b's connection is lost (async-nats fails over to server 1, which
    // server 2 advertised), so b's subscribers are told (2500: core NATS cannot prove nothing
    // was missed). Node a and its subscribers never notice.
    nats.kill(1);
    let mut a_ready = true;
    let mut sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        a_ready &= a.is_ready().await;
        publish_all(&a, &channels, 100).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a_ready, "a node on a live server stays ready");
    assert!(b.wait_ready(WAIT).await, "b fails over to a live server");
    let (data, unsubscribed) = drain(&mut alice, Duration::from_millis(400)).await;
    assert!(
        unsubscribed.is_empty(),
        "alice was not affected: {unsubscribed:?}"
    );
    for channel in channels {
        assert!(
            data[channel].iter().all(|n| *n == 100) && data[channel].len() == sent,
            "{channel}: alice got every publication of node a: {:?}",
            data[channel]
        );
    }
    let (_, unsubscribed) = drain(&mut bob, Duration::from_millis(400)).await;
    for channel in channels {
        assert_eq!(unsubscribed.get(channel), Some(&2500), "{unsubscribed:?}");
    }
    // Bob resubscribes on the failed-over node and receives again, from both nodes.
    for channel in channels {
        bob.subscribe(channel).await;
    }
    publish_all(&a, &channels, 200).await;
    publish_all(&b, &channels, 201).await;
    for client in [&mut alice, &mut bob] {
        let (data, unsubscribed) = drain(client, Duration::from_millis(400)).await;
        assert!(unsubscribed.is_empty(), "{unsubscribed:?}");
        for channel in channels {
            assert_eq!(data[channel], vec![200, 201], "{channel}");
        }
    }
}
