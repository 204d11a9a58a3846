//! Several in-process nodes sharing one real NATS server with JetStream (`HERALD_TEST_NATS`,
//! default nats://127.0.0.1:4222), each test under its own subject prefix and its own KV buckets
//! (deleted at the end): cross-node delivery, presence, control commands, the node registry, a
//! crashed node, and NATS restarts and stalls injected through a proxy (the shared server itself
//! is never stopped). History lives in a JetStream stream per prefix (also deleted at the end):
//! tests named `history_*` run with it on, the others on namespaces without history.

mod support;

use herald::config::{BrokerKind, Config};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::proxy::{Fault, Proxy};
use support::*;

fn test_nats_addr() -> SocketAddr {
    let url = test_nats();
    let host = url
        .trim_start_matches("nats://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .expect("HERALD_TEST_NATS host:port")
        .next()
        .expect("an address")
}

/// One test's share of the NATS server: a subject prefix and two KV buckets no one else uses.
struct Setup {
    prefix: String,
    presence_bucket: String,
    nodes_bucket: String,
}

impl Setup {
    fn new(test: &str) -> Setup {
        // Broker logs show up in a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "herald=debug,async_nats=info".into()),
            )
            .with_test_writer()
            .try_init();
        let id = uuid::Uuid::new_v4().simple().to_string();
        Setup {
            prefix: unique_prefix(test),
            presence_bucket: format!("herald_test_{test}_{id}_presence"),
            nodes_bucket: format!("herald_test_{test}_{id}_nodes"),
        }
    }

    /// Configures a node to join this test's cluster through `url`, with short timers and no
    /// history anywhere (core NATS delivery only).
    fn configure(&self, url: &str) -> impl Fn(&mut Config) + '_ {
        self.configure_history(url, false)
    }

    /// As [`Setup::configure`]; with `history`, namespaces keep the test config's history
    /// (`history_size` 100) in this test's JetStream stream.
    fn configure_history(&self, url: &str, history: bool) -> impl Fn(&mut Config) + '_ {
        let url = url.to_string();
        move |c: &mut Config| {
            c.broker.kind = BrokerKind::Nats;
            c.broker.nats_urls = vec![url.clone()];
            c.broker.prefix = self.prefix.clone();
            c.broker.nats_presence_bucket = self.presence_bucket.clone();
            c.broker.nats_nodes_bucket = self.nodes_bucket.clone();
            c.broker.command_timeout = Duration::from_millis(500);
            c.broker.connect_timeout = Duration::from_millis(500);
            c.broker.presence_ttl = Duration::from_secs(2);
            c.broker.node_announce_interval = Duration::from_millis(300);
            c.broker.max_reconnect_delay = Duration::from_millis(300);
            if history {
                // Positions outlive a test run only briefly (the stream is deleted anyway).
                c.channel.history_meta_ttl = Duration::from_secs(600);
                return;
            }
            for ns in c
                .channel
                .namespaces
                .iter_mut()
                .chain(std::iter::once(&mut c.channel.without_namespace))
            {
                ns.history_size = 0;
                ns.history_ttl = Duration::ZERO;
                ns.force_recovery = false;
            }
        }
    }

    async fn cluster(&self, n: usize) -> Cluster {
        Cluster::start_configured(n, &self.prefix, self.configure(&test_nats())).await
    }

    async fn history_cluster(&self, n: usize) -> Cluster {
        Cluster::start_configured(n, &self.prefix, self.configure_history(&test_nats(), true)).await
    }
}

impl Drop for Setup {
    /// Deletes what the test created in NATS (core subjects leave nothing behind), also when the
    /// test failed: on a thread of its own, since the test's runtime may be gone.
    fn drop(&mut self) {
        delete_nats_state(
            vec![self.presence_bucket.clone(), self.nodes_bucket.clone()],
            vec![herald::brokers::nats::history_stream_name(&self.prefix)],
        );
    }
}

/// The `n` of every publication received on `channel` until `quiet` passes without any.
async fn numbers_until_quiet(client: &mut Client, channel: &str, quiet: Duration) -> Vec<u64> {
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

#[tokio::test]
async fn publications_reach_subscribers_on_every_node_exactly_once() {
    let setup = Setup::new("delivery");
    let cluster = setup.cluster(3).await;
    let mut clients = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut client = node.client(&format!("user{i}")).await;
        client.subscribe("chat:all").await;
        clients.push(client);
    }
    // A channel name that is not a valid NATS token as it is.
    let odd = "chat:a.b *>#$ x";
    let mut odd_client = cluster.nodes[2].client("odd").await;
    odd_client.subscribe(odd).await;
    for n in 1..=30u64 {
        publish_n(&cluster.nodes[(n % 3) as usize], "chat:all", n).await;
    }
    publish_n(&cluster.nodes[0], odd, 99).await;
    let reply = clients[1]
        .call("publish", json!({"channel": "chat:all", "data": {"n": 31}}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    for client in &mut clients {
        let mut numbers = numbers_until_quiet(client, "chat:all", Duration::from_millis(500)).await;
        // Those accepted by one node keep their order (n % 3 names the node)...
        for node in 0..3 {
            let of_node: Vec<u64> = numbers
                .iter()
                .copied()
                .filter(|n| n % 3 == node && *n <= 30)
                .collect();
            assert!(of_node.windows(2).all(|w| w[0] < w[1]), "{of_node:?}");
        }
        // ...while publications from different nodes are not ordered among themselves; each
        // arrives once.
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            (1..=31).collect::<Vec<u64>>(),
            "every publication once"
        );
    }
    let numbers = numbers_until_quiet(&mut odd_client, odd, Duration::from_millis(300)).await;
    assert_eq!(numbers, vec![99]);
    drop(cluster);
    drop(setup);
}

#[tokio::test]
async fn presence_and_join_leave_are_cluster_wide() {
    let setup = Setup::new("presence");
    let cluster = setup.cluster(3).await;
    let mut alice = cluster.nodes[0].client("alice").await;
    alice.subscribe("chat:room").await;
    let mut bob = cluster.nodes[1].client("bob").await;
    bob.subscribe("chat:room").await;
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
    let reply = bob.call("presence", json!({"channel": "chat:room"})).await;
    assert_eq!(
        reply["presence"]["presence"].as_object().map(|m| m.len()),
        Some(2),
        "{reply}"
    );
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
    drop(cluster);
    drop(setup);
}

#[tokio::test]
async fn api_control_commands_reach_users_on_other_nodes() {
    let setup = Setup::new("control");
    let cluster = setup.cluster(2).await;
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
    drop(cluster);
    drop(setup);
}

fn node_names(info: &Value) -> Vec<String> {
    info["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect()
}

fn node_uids(info: &Value) -> Vec<String> {
    info["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["uid"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn info_lists_every_live_node_and_forgets_stopped_ones() {
    let setup = Setup::new("info");
    let mut cluster = setup.cluster(3).await;
    let mut listed = Vec::new();
    for _ in 0..100 {
        let info = cluster.nodes[0].api_ok("info", json!({})).await;
        listed = node_names(&info);
        if listed.len() == 3 {
            assert!(info["nodes"][0]["address"]
                .as_str()
                .is_some_and(|a| a.contains(':')));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed, vec!["node0", "node1", "node2"]);
    // A graceful stop removes the entry at once (not at its expiry).
    cluster.nodes[2].shutdown().await;
    let info = cluster.nodes[0].api_ok("info", json!({})).await;
    assert_eq!(node_names(&info), vec!["node0", "node1"]);
    drop(cluster);
    drop(setup);
}

#[tokio::test]
async fn a_crashed_nodes_presence_and_registry_entry_expire() {
    let setup = Setup::new("crash");
    let mut cluster = setup.cluster(3).await;
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
    let stats = cluster.nodes[2]
        .api_ok("presence_stats", json!({"channel": "chat:crash"}))
        .await;
    assert_eq!(stats["num_clients"], 2, "no cleanup on a crash");
    // Gone within the TTLs (presence 2s, registry 3 × 300ms) plus the server's expiry pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
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
    let restarted_uid = cluster
        .add_with("node1", setup.configure(&test_nats()))
        .await
        .node()
        .uid
        .clone();
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
    drop(cluster);
    drop(setup);
}

/// Publications `from..to` on `channel` through `node`, one after the other.
async fn publish_range(node: &TestServer, channel: &str, numbers: std::ops::Range<u64>) {
    for n in numbers {
        publish_n(node, channel, n).await;
    }
}

/// The offsets of a subscribe or history reply's publications.
fn offsets_of(publications: &Value) -> Vec<u64> {
    publications
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn history_publications_reach_every_node_once_in_offset_order() {
    let setup = Setup::new("hdelivery");
    let cluster = setup.history_cluster(3).await;
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
    drop(cluster);
    drop(setup);
}

#[tokio::test]
async fn history_client_recovers_on_another_node() {
    let setup = Setup::new("hrecovery");
    let cluster = setup.history_cluster(3).await;
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
    let mut other = cluster.nodes[2].client("late").await;
    let (recovered, _) = resubscribe(&mut other, "chat:r", 2, &epoch).await;
    assert!(!recovered);
    drop(cluster);
    drop(setup);
}

/// Waits for the unsubscribe push of `channel`; returns its code.
async fn unsubscribe_code(client: &mut Client, channel: &str) -> u64 {
    loop {
        let push = client.push().await;
        if push["channel"] != channel {
            continue;
        }
        if let Some(unsub) = push.get("unsubscribe") {
            return unsub["code"].as_u64().unwrap_or(0);
        }
    }
}

/// Two nodes reach NATS through a proxy, a third directly (it keeps publishing during the fault).
/// During the fault the proxied nodes report not ready and refuse publications but keep their
/// clients; afterwards they are ready again and, since core NATS may have dropped what was
/// published meanwhile, every subscriber of theirs is told (unsubscribe 2500); after
/// resubscribing, publications arrive once again.
async fn broker_fault(fault: Fault, test: &str) {
    let setup = Setup::new(test);
    let proxy = Proxy::start(test_nats_addr()).await;
    let via_proxy = format!("nats://{}", proxy.addr);
    let mut cluster =
        Cluster::start_configured(2, &setup.prefix, setup.configure(&via_proxy)).await;
    cluster
        .add_with("direct", setup.configure(&test_nats()))
        .await;
    let (a, b, direct) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    let mut alice = a.client("alice").await;
    alice.subscribe("chat:busy").await;
    let mut bob = b.client("bob").await;
    bob.subscribe("chat:busy").await;
    for n in 1..=3 {
        publish_n(direct, "chat:busy", n).await;
    }
    for client in [&mut alice, &mut bob] {
        let numbers = numbers_until_quiet(client, "chat:busy", Duration::from_millis(300)).await;
        assert_eq!(numbers, vec![1, 2, 3]);
    }

    broker_outage(
        &proxy,
        &fault,
        &cluster,
        &mut alice,
        &mut bob,
        Duration::from_secs(10),
        async |_| {},
    )
    .await;

    for client in [&mut alice, &mut bob] {
        assert_eq!(unsubscribe_code(client, "chat:busy").await, 2500);
        client.subscribe("chat:busy").await;
    }
    publish_n(direct, "chat:busy", 7).await;
    publish_n(a, "chat:busy", 8).await;
    for client in [&mut alice, &mut bob] {
        let mut numbers = Vec::new();
        while let Some(message) = client.next_within(Duration::from_millis(500)).await {
            let push = &message["push"];
            // Other channels (the personal `#user` one) are told of the outage too.
            if push["channel"] != "chat:busy" {
                continue;
            }
            assert!(
                push.get("unsubscribe").is_none(),
                "unexpected unsubscribe: {message}"
            );
            if let Some(n) = push["pub"]["data"]["n"].as_u64() {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        assert_eq!(numbers, vec![7, 8]);
    }
    let metrics = a.metrics().await;
    assert!(
        metric(&metrics, "herald_broker_reconnects_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "herald_broker_gaps_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "herald_broker_ready"), 1.0);
    drop(cluster);
    drop(setup);
}

#[tokio::test]
async fn nats_restart_is_survived_without_silent_loss() {
    broker_fault(Fault::Restart, "restart").await;
}

#[tokio::test]
async fn nats_stall_is_survived_without_silent_loss() {
    broker_fault(Fault::Stall, "stall").await;
}

/// A nats-server process this test owns (killed on drop), on a free port with its own store.
struct OwnServer {
    child: std::process::Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl OwnServer {
    fn binary() -> Option<String> {
        let path = std::env::var("HERALD_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".into());
        std::path::Path::new(&path).exists().then_some(path)
    }

    /// Starts on `port` (0: a free one) with an empty store.
    async fn start(binary: &str, port: u16) -> OwnServer {
        let port = if port == 0 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            listener.local_addr().expect("addr").port()
        } else {
            port
        };
        let store = tempfile::tempdir().expect("store dir");
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server listens"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OwnServer {
            child,
            port,
            _store: store,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The NATS server is killed and comes back empty (no store): nodes report not ready meanwhile,
/// then re-create their buckets, write their presence again, tell their subscribers, and deliver
/// across nodes again.
#[tokio::test]
async fn a_nats_server_restarted_empty_is_rebuilt_from_the_nodes() {
    let Some(binary) = OwnServer::binary() else {
        eprintln!("skipped: no nats-server binary (set HERALD_TEST_NATS_SERVER)");
        return;
    };
    let server = OwnServer::start(&binary, 0).await;
    let url = server.url();
    let setup = Setup::new("ownserver");
    let cluster = Cluster::start_configured(2, &setup.prefix, setup.configure(&url)).await;
    let mut alice = cluster.nodes[0].client("alice").await;
    alice.subscribe("chat:own").await;
    let stats = cluster.nodes[1]
        .api_ok("presence_stats", json!({"channel": "chat:own"}))
        .await;
    assert_eq!(stats["num_clients"], 1);

    let port = server.port;
    drop(server);
    for node in &cluster.nodes {
        assert!(
            node.wait_readiness(false, WAIT).await,
            "not ready while down"
        );
    }
    alice.assert_alive().await;
    let server = OwnServer::start(&binary, port).await;
    for node in &cluster.nodes {
        assert!(
            node.wait_ready(Duration::from_secs(10)).await,
            "ready again"
        );
    }
    assert_eq!(unsubscribe_code(&mut alice, "chat:own").await, 2500);
    alice.subscribe("chat:own").await;
    // Presence was written again into the re-created bucket.
    let stats = cluster.nodes[1]
        .api_ok("presence_stats", json!({"channel": "chat:own"}))
        .await;
    assert_eq!(stats["num_clients"], 1, "{stats}");
    publish_n(&cluster.nodes[1], "chat:own", 1).await;
    let numbers = numbers_until_quiet(&mut alice, "chat:own", Duration::from_millis(500)).await;
    assert_eq!(numbers, vec![1]);
    drop(cluster);
    drop(server);
}

/// Stores publication `n` as the next of `channel` the way a publisher does (next offset, same
/// epoch, expected last subject sequence) but sends nothing live; returns the frame it would send.
async fn store_only(
    js: &async_nats::jetstream::Context,
    prefix: &str,
    channel: &str,
    n: u64,
) -> Vec<u8> {
    use herald::brokers::nats::{
        history_stream_name, history_subject, HISTORY_EPOCH_HEADER, HISTORY_OFFSET_HEADER,
    };
    let stream = js
        .get_stream(history_stream_name(prefix))
        .await
        .expect("history stream");
    let subject = history_subject(prefix, channel);
    let last = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("last stored");
    let header = |name: &str| {
        last.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .expect("herald header")
    };
    let offset = header(HISTORY_OFFSET_HEADER)
        .parse::<u64>()
        .expect("offset")
        + 1;
    let epoch = header(HISTORY_EPOCH_HEADER);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let payload = serde_json::to_vec(&json!({"data": {"n": n}, "time": millis})).expect("json");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HISTORY_OFFSET_HEADER, offset.to_string().as_str());
    headers.insert(HISTORY_EPOCH_HEADER, epoch.as_str());
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        last.sequence.to_string().as_str(),
    );
    js.publish_with_headers(subject, headers, payload.clone().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    herald::brokers::wire::publication_frame(offset, &epoch, None, &payload)
}

/// Core frames of two publishers that cross are delivered in offset order; a stored publication
/// whose frame never comes (its publisher died between the JetStream ack and the core publish) is
/// found missing at the next publication: after the reorder window subscribers are told (2500)
/// and recover it from the stream.
#[tokio::test]
async fn history_crossed_frames_are_reordered_and_a_lost_frame_is_recovered() {
    let setup = Setup::new("horder");
    let cluster = setup.history_cluster(2).await;
    let channel = "chat:o";
    let mut clients = Vec::new();
    let mut epoch = String::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut client = node.client(&format!("user{i}")).await;
        let sub = client.subscribe(channel).await;
        epoch = sub["epoch"].as_str().expect("epoch").to_string();
        clients.push(client);
    }
    for n in 1..=2 {
        publish_n(&cluster.nodes[0], channel, n).await;
    }
    for client in &mut clients {
        let offsets = offsets_until_quiet(client, channel, Duration::from_millis(300)).await;
        assert_eq!(offsets, vec![1, 2]);
    }
    let nats = async_nats::connect(test_nats()).await.expect("nats");
    let js = async_nats::jetstream::new(nats.clone());
    // Offsets 3 and 4 stored; 4's frame overtakes 3's.
    let third = store_only(&js, &setup.prefix, channel, 3).await;
    let fourth = store_only(&js, &setup.prefix, channel, 4).await;
    let subject = herald::brokers::nats::delivery_subject(&setup.prefix, channel);
    nats.publish(subject.clone(), fourth.into())
        .await
        .expect("core publish");
    nats.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(30)).await;
    nats.publish(subject, third.into())
        .await
        .expect("core publish");
    nats.flush().await.expect("flush");
    for client in &mut clients {
        let offsets = offsets_until_quiet(client, channel, Duration::from_millis(400)).await;
        assert_eq!(offsets, vec![3, 4], "in offset order, once");
    }
    // Offset 5 stored, its frame lost; 6 published normally.
    store_only(&js, &setup.prefix, channel, 5).await;
    publish_n(&cluster.nodes[1], channel, 6).await;
    for client in &mut clients {
        let (code, before) = unsubscribe_push(client, channel).await;
        assert_eq!(code, 2500, "told of the hole");
        assert!(
            before.is_empty(),
            "nothing delivered over the hole: {before:?}"
        );
        let (recovered, offsets) = resubscribe(client, channel, 4, &epoch).await;
        assert!(recovered);
        assert_eq!(offsets, vec![5, 6]);
    }
    publish_n(&cluster.nodes[0], channel, 7).await;
    for client in &mut clients {
        let offsets = offsets_until_quiet(client, channel, Duration::from_millis(400)).await;
        assert_eq!(offsets, vec![7]);
    }
    drop(cluster);
    drop(setup);
}

/// The history stream is lost (deleted here; a server restarted without its store is the same):
/// the next publication re-creates it under a new epoch, subscribers are told (2500) instead of
/// being handed offset 1 after offset 2, and their old position is unrecoverable.
#[tokio::test]
async fn history_lost_stream_starts_a_new_epoch_and_subscribers_are_told() {
    let setup = Setup::new("hlost");
    let cluster = setup.history_cluster(2).await;
    let channel = "chat:l";
    let mut client = cluster.nodes[0].client("alice").await;
    let epoch = client.subscribe(channel).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    for n in 1..=2 {
        publish_n(&cluster.nodes[1], channel, n).await;
    }
    let offsets = offsets_until_quiet(&mut client, channel, Duration::from_millis(300)).await;
    assert_eq!(offsets, vec![1, 2]);
    let nats = async_nats::connect(test_nats()).await.expect("nats");
    async_nats::jetstream::new(nats)
        .delete_stream(herald::brokers::nats::history_stream_name(&setup.prefix))
        .await
        .expect("stream deleted");
    // The first attempt may find the stream gone; the next re-creates it.
    let mut reply = Value::Null;
    for _ in 0..3 {
        let (_, r) = cluster.nodes[1]
            .api("publish", json!({"channel": channel, "data": {"n": 3}}))
            .await;
        reply = r;
        if reply.get("error").is_none() {
            break;
        }
    }
    assert!(reply.get("error").is_none(), "{reply}");
    let (code, before) = unsubscribe_push(&mut client, channel).await;
    assert_eq!((code, before), (2500, vec![]));
    let (recovered, _) = resubscribe(&mut client, channel, 2, &epoch).await;
    assert!(!recovered, "a position of the lost epoch");
    let history = cluster.nodes[0]
        .api_ok("history", json!({"channel": channel, "limit": -1}))
        .await;
    assert_eq!(offsets_of(&history["publications"]), vec![1]);
    assert_ne!(history["epoch"], epoch.as_str());
    drop(cluster);
    drop(setup);
}

/// As [`broker_fault`] with history: two nodes reach NATS through a proxy, a third directly and
/// keeps publishing during the fault. Afterwards the proxied nodes' subscribers are told (2500),
/// recover exactly what they missed from the JetStream stream, and live delivery continues in
/// offset order without duplicates.
async fn history_broker_fault(fault: Fault, test: &str) {
    let setup = Setup::new(test);
    let proxy = Proxy::start(test_nats_addr()).await;
    let via_proxy = format!("nats://{}", proxy.addr);
    let mut cluster =
        Cluster::start_configured(2, &setup.prefix, setup.configure_history(&via_proxy, true))
            .await;
    cluster
        .add_with("direct", setup.configure_history(&test_nats(), true))
        .await;
    let (a, b, direct) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    let mut alice = a.client("alice").await;
    let sub = alice.subscribe("chat:busy").await;
    let epoch = sub["epoch"].as_str().expect("epoch").to_string();
    let mut bob = b.client("bob").await;
    bob.subscribe("chat:busy").await;
    for n in 1..=3 {
        publish_n(direct, "chat:busy", n).await;
    }
    for client in [&mut alice, &mut bob] {
        let offsets = offsets_until_quiet(client, "chat:busy", Duration::from_millis(300)).await;
        assert_eq!(offsets, vec![1, 2, 3]);
    }

    broker_outage(
        &proxy,
        &fault,
        &cluster,
        &mut alice,
        &mut bob,
        Duration::from_secs(10),
        async |_| {},
    )
    .await;

    for client in [&mut alice, &mut bob] {
        let (code, before) = unsubscribe_push(client, "chat:busy").await;
        assert_eq!(code, 2500, "insufficient state");
        let from = before.last().copied().unwrap_or(3);
        assert_eq!(
            before,
            (4..=from).collect::<Vec<u64>>(),
            "in order, no hole"
        );
        let (recovered, offsets) = resubscribe(client, "chat:busy", from, &epoch).await;
        assert!(recovered, "recovered from {from}");
        assert_eq!(offsets, (from + 1..=6).collect::<Vec<u64>>());
    }
    // After the outage, publications from every node at once arrive once, in offset order.
    tokio::join!(
        publish_range(direct, "chat:busy", 7..12),
        publish_range(a, "chat:busy", 12..17),
        publish_range(b, "chat:busy", 17..22),
    );
    for client in [&mut alice, &mut bob] {
        let mut offsets = Vec::new();
        while let Some(message) = client.next_within(Duration::from_millis(700)).await {
            let push = &message["push"];
            if push["channel"] != "chat:busy" {
                continue;
            }
            assert!(
                push.get("unsubscribe").is_none(),
                "unexpected unsubscribe: {message}"
            );
            if let Some(offset) = push["pub"]["offset"].as_u64() {
                offsets.push(offset);
            }
        }
        assert_eq!(offsets, (7..=21).collect::<Vec<u64>>());
    }
    let metrics = a.metrics().await;
    assert!(
        metric(&metrics, "herald_broker_gaps_total") >= 1.0,
        "{metrics}"
    );
    drop(cluster);
    drop(setup);
}

#[tokio::test]
async fn history_nats_restart_is_recovered_without_loss() {
    history_broker_fault(Fault::Restart, "hrestart").await;
}

#[tokio::test]
async fn history_nats_stall_is_recovered_without_loss() {
    history_broker_fault(Fault::Stall, "hstall").await;
}
