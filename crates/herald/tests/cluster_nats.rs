//! What only the NATS broker does, against the shared NATS server with JetStream
//! (`HERALD_TEST_NATS`, default nats://127.0.0.1:4222), each test under its own subject prefix,
//! KV buckets and history stream (deleted at the end): core NATS delivery without history told
//! of every outage, a server restarted empty, JetStream frames that cross or never come, and a
//! lost history stream. What every broker does is in cluster.rs.

mod support;

use herald::config::Config;
use serde_json::{json, Value};
use std::time::Duration;
use support::brokers::{history_off, log_to_test_output, Broker, Share};
use support::proxy::{Fault, Proxy};
use support::*;

/// This test's share of the NATS server, node logs in its output.
fn share(test: &str) -> Share {
    log_to_test_output();
    Broker::Nats.share(test)
}

/// Configures a node of `share` reaching NATS at `url`, without history.
fn core_only<'a>(share: &'a Share, url: &'a str) -> impl Fn(&mut Config) + 'a {
    move |c: &mut Config| {
        share.configure_via(c, url);
        history_off(c);
    }
}

/// Two nodes reach NATS through a proxy, a third directly (it keeps publishing during the fault).
/// During the fault the proxied nodes report not ready and refuse publications but keep their
/// clients; afterwards they are ready again and, since core NATS may have dropped what was
/// published meanwhile, every subscriber of theirs is told (unsubscribe 2500); after
/// resubscribing, publications arrive once again.
async fn core_outage(fault: Fault, test: &str) {
    let share = share(test);
    let proxy = Proxy::start(share.server_addr()).await;
    let via_proxy = format!("nats://{}", proxy.addr);
    let mut cluster =
        Cluster::start_configured(2, &share.prefix, core_only(&share, &via_proxy)).await;
    cluster
        .add_with("direct", core_only(&share, &test_nats()))
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
        assert_eq!(unsubscribe_push(client, "chat:busy").await.0, 2500);
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
    assert_reconnected(a).await;
}

#[tokio::test]
async fn without_history_a_nats_restart_is_told_to_every_subscriber() {
    core_outage(Fault::Restart, "restart").await;
}

#[tokio::test]
async fn without_history_a_nats_stall_is_told_to_every_subscriber() {
    core_outage(Fault::Stall, "stall").await;
}

/// Conflation needs a broker that keeps the latest value per key beside the stream: NATS does
/// not, and a node refuses to start with a conflated namespace rather than ignore it.
#[test]
fn conflated_namespaces_are_refused() {
    let share = share("conflated");
    let mut config = test_config();
    share.configure(&mut config);
    config
        .channel
        .namespaces
        .push(herald::config::NamespaceOptions {
            conflation_key: "/k".into(),
            conflation_max_keys: 2,
            ..open_namespace("live")
        });
    let error = config.validate().expect_err("refused").to_string();
    assert!(error.contains("conflation is not supported"), "{error}");
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
        wait_listening(("127.0.0.1", port), "nats-server").await;
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
    let share = share("ownserver");
    let cluster = Cluster::start_configured(2, &share.prefix, core_only(&share, &url)).await;
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
    assert_eq!(unsubscribe_push(&mut alice, "chat:own").await.0, 2500);
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
    let share = share("horder");
    let cluster = share.cluster(2).await;
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
    let third = store_only(&js, &share.prefix, channel, 3).await;
    let fourth = store_only(&js, &share.prefix, channel, 4).await;
    let subject = herald::brokers::nats::delivery_subject(&share.prefix, channel);
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
    store_only(&js, &share.prefix, channel, 5).await;
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
}

/// The history stream is lost (deleted here; a server restarted without its store is the same):
/// the next publication re-creates it under a new epoch, subscribers are told (2500) instead of
/// being handed offset 1 after offset 2, and their old position is unrecoverable.
#[tokio::test]
async fn history_lost_stream_starts_a_new_epoch_and_subscribers_are_told() {
    let share = share("hlost");
    let cluster = share.cluster(2).await;
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
        .delete_stream(herald::brokers::nats::history_stream_name(&share.prefix))
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
}
