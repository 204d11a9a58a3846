//! Attacks on the device ports through real sockets, with honest trackers, WebSocket clients,
//! `/health` and the API alongside: silent sockets (login timeout), floods beyond the per-address
//! and per-listener caps, a descriptor flood of one listener in a process with a small
//! RLIMIT_NOFILE, and 20k unknown OsmAnd ids against the bounded device registry.

mod support;

use futures_util::future::join_all;
use herald::config::Config;
use herald_devices::sim::{self, Fix, Route};
use herald_devices::{gt06, SessionState};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};
use support::procs::{free_port, serve_logged, Proc};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn start(dir: &Path, change: impl FnOnce(&mut Config)) -> TestServer {
    start_with_devices(dir, "never", change).await
}

fn fix(seed: u64) -> Fix {
    Route::new(seed, 52.52, 13.40).next(1000)
}

/// A TCP connection to `addr` from the loopback address `127.0.0.<last>`.
async fn connect_from(last: u8, addr: SocketAddr) -> TcpStream {
    try_connect_from(last, addr)
        .await
        .expect("connect from 127.0.0.x")
}

/// As [`connect_from`]; `None` when the server reset the connection before `connect` returned
/// (a refusal at accept can be that fast on loopback).
async fn try_connect_from(last: u8, addr: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
        .expect("bind a 127.0.0.x source address");
    match socket.connect(addr).await {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("connect to {addr}: {e}"),
    }
}

/// How many of `sockets` the server closed (at connect, or by end of stream or reset within
/// `wait`); the open ones are kept.
async fn count_closed(sockets: &mut Vec<Option<TcpStream>>, wait: Duration) -> usize {
    let open = join_all(sockets.iter_mut().map(|s| async move {
        match s {
            Some(s) => !closed_within(s, wait).await,
            None => false,
        }
    }))
    .await;
    let closed = open.iter().filter(|o| !**o).count();
    let mut i = 0;
    sockets.retain(|_| {
        i += 1;
        open[i - 1]
    });
    closed
}

/// Whether the server closed `s` (end of stream or reset) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn read_n(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

/// An honest GT06 tracker: logs in as `imei`, reports one fix; both are acknowledged.
async fn gt06_reports(s: &mut TcpStream, imei: &str, seed: u64) {
    s.write_all(&sim::gt06_login(imei, 1)).await.unwrap();
    let ack = read_n(s, 10).await.expect("GT06 login acknowledged");
    assert_eq!(&ack[..4], &[0x78, 0x78, 0x05, 0x01], "login ack {ack:02x?}");
    gt06_location_acked(s, imei, seed, 2).await;
}

async fn gt06_location_acked(s: &mut TcpStream, imei: &str, seed: u64, serial: u16) {
    let location = sim::gt06_location(&fix(seed), serial);
    s.write_all(&location).await.unwrap();
    let ack = read_n(s, 10).await.expect("GT06 location acknowledged");
    let mut session = SessionState::with_device(imei);
    let want = gt06::decode(&location, &mut session)
        .unwrap()
        .reply
        .unwrap();
    assert_eq!(ack, want);
}

/// WebSocket, `/health` and the API of `ts` all answer.
async fn node_answers(ts: &TestServer) {
    let mut client = ts.client("honest").await;
    client.subscribe("chat:room").await;
    ts.api_ok("publish", json!({"channel": "chat:room", "data": {"n": 1}}))
        .await;
    assert_eq!(client.publication("chat:room").await["data"]["n"], 1);
    let (status, _) = http_raw(ts.addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn silent_tracker_sockets_are_closed_at_the_login_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let login_timeout = Duration::from_millis(800);
    let ts = start(dir.path(), |c| c.devices.login_timeout = login_timeout).await;
    let a = addrs(&ts);
    let started = Instant::now();
    let mut honest = TcpStream::connect(a.gt06.unwrap()).await.unwrap();
    gt06_reports(&mut honest, "864717003283581", 1).await;
    let mut silent = Vec::new();
    for addr in [a.gt06, a.h02, a.teltonika, a.jsonl, a.osmand] {
        silent.push(TcpStream::connect(addr.unwrap()).await.unwrap());
    }
    // A trickle of a GT06 frame that never completes: bytes arrive, no login does.
    let mut trickler = TcpStream::connect(a.gt06.unwrap()).await.unwrap();
    let trickle = async {
        for byte in sim::gt06_login("864717003283582", 1)
            .iter()
            .cycle()
            .take(40)
        {
            if trickler.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_within(&mut trickler, Duration::from_secs(3)).await
    };
    let silent_closed = join_all(
        silent
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(5))),
    );
    let (trickler_closed, silent_closed) = tokio::join!(trickle, silent_closed);
    let elapsed = started.elapsed();
    assert!(
        trickler_closed,
        "a trickling socket outlived the login timeout"
    );
    assert_eq!(silent_closed, vec![true; 5], "every silent socket closed");
    assert!(
        elapsed >= login_timeout && elapsed < login_timeout + Duration::from_secs(4),
        "closed after {elapsed:?} (login_timeout {login_timeout:?})"
    );

    // The device that logged in is past the login timeout and still served.
    gt06_location_acked(&mut honest, "864717003283581", 2, 3).await;
    let metrics = ts.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "herald_device_login_timeouts_total{protocol=\"gt06\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "herald_device_login_timeouts_total"), 5.0);
    assert_eq!(
        metric(&metrics, "herald_device_connections{protocol=\"gt06\"}"),
        1.0,
        "only the honest device is left open"
    );
    node_answers(&ts).await;
}

#[tokio::test]
async fn floods_beyond_the_address_and_listener_caps_are_refused_while_honest_devices_report() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |c| {
        c.devices.max_connections_per_ip = 20;
        c.devices.max_connections = 50;
    })
    .await;
    let a = addrs(&ts);
    let gt06_addr = a.gt06.unwrap();

    // 60 silent sockets from one address: 20 are kept (until the login timeout), 40 reset.
    let mut flood = Vec::new();
    for _ in 0..60 {
        flood.push(try_connect_from(2, gt06_addr).await);
    }
    let closed = count_closed(&mut flood, Duration::from_secs(2)).await;
    assert_eq!(closed, 40, "refused per address");
    // An honest tracker from another address logs in, reports and is acknowledged.
    let mut honest = connect_from(9, gt06_addr).await;
    gt06_reports(&mut honest, "864717003283581", 1).await;

    // Other addresses fill the listener to devices.max_connections (20 + 1 + 29 kept).
    let mut more = Vec::new();
    for last in [3, 4] {
        for _ in 0..20 {
            more.push(try_connect_from(last, gt06_addr).await);
        }
    }
    let closed = count_closed(&mut more, Duration::from_secs(2)).await;
    assert_eq!(closed, 11, "refused at the listener cap");
    let mut late = vec![try_connect_from(10, gt06_addr).await];
    assert_eq!(
        count_closed(&mut late, Duration::from_secs(2)).await,
        1,
        "the full listener resets a new connection at once"
    );

    // The other device listeners, the WebSocket endpoint, /health and the API keep working.
    let mut h02 = connect_from(10, a.h02.unwrap()).await;
    h02.write_all(&sim::h02_heartbeat("4209917484"))
        .await
        .unwrap();
    let mut reply = [0u8; 16];
    let n = tokio::time::timeout(WAIT, h02.read(&mut reply))
        .await
        .expect("H02 heartbeat answered")
        .unwrap();
    assert!(n > 0 && reply.starts_with(b"*HQ"), "{:?}", &reply[..n]);
    let (status, _) = http_raw(
        a.osmand.unwrap(),
        "GET",
        &sim::osmand_query("phone-1", &fix(3)),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    node_answers(&ts).await;
    // Known devices still report on their open connection.
    gt06_location_acked(&mut honest, "864717003283581", 4, 3).await;

    let metrics = ts.metrics().await;
    let refused = |reason: &str| {
        metric(
            &metrics,
            &format!(
                "herald_device_connections_refused_total{{protocol=\"gt06\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(refused("per_ip"), 40.0, "{metrics}");
    assert_eq!(refused("max_connections"), 12.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "herald_device_connections{protocol=\"gt06\"}"),
        50.0
    );
    assert_eq!(
        metric(&metrics, "herald_listener_descriptors{listener=\"gt06\"}"),
        50.0
    );
    assert_eq!(
        metric(&metrics, "herald_listener_refused_total{listener=\"gt06\"}"),
        12.0
    );
}

/// The herald binary in a process of its own (descriptor limit, RSS), killed when dropped.
struct Child {
    process: Proc,
    public: SocketAddr,
    gt06: SocketAddr,
    h02: SocketAddr,
    osmand: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Child {
    /// Starts `herald serve` with the device listeners GT06, H02 and OsmAnd, `extra` appended to
    /// `[devices]`, and (when given) RLIMIT_NOFILE set to `fd_limit` before exec.
    async fn start(extra: &str, fd_limit: Option<u64>) -> Child {
        // A port found free can be taken by another test before Herald binds it; Herald then
        // exits naming the address, and the start is tried again on fresh ports.
        for _ in 0..5 {
            if let Some(child) = Self::try_start(extra, fd_limit).await {
                return child;
            }
        }
        panic!("herald found no free ports in 5 tries");
    }

    async fn try_start(extra: &str, fd_limit: Option<u64>) -> Option<Child> {
        let dir = tempfile::tempdir().unwrap();
        let port = |_| SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let [public, gt06, h02, osmand] = [0; 4].map(port);
        let config = format!(
            "[http]\nlisten = \"{public}\"\n\n[log]\nlevel = \"warn\"\n\n[client.token]\nhmac_secret = \"{SECRET}\"\n\n\
             [api]\nkey = \"{API_KEY}\"\n\n[channel.without_namespace]\nallow_subscribe_for_client = true\n\n\
             [devices]\nenabled = true\nspool_dir = \"{spool}\"\nstore = \"sqlite:{db}\"\nfsync = \"never\"\n{extra}\n\n\
             [devices.listen]\ngt06 = \"{gt06}\"\nh02 = \"{h02}\"\nosmand = \"{osmand}\"\nteltonika = \"\"\njsonl = \"\"\n",
            spool = dir.path().join("spool").display(),
            db = dir.path().join("herald.db").display(),
        );
        let config_path = dir.path().join("herald.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = Child {
            process: serve_logged(&config_path, &log, fd_limit),
            public,
            gt06,
            h02,
            osmand,
            log,
            _dir: dir,
        };
        let up = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut stream) = TcpStream::connect(child.osmand).await {
                drop(stream.shutdown().await);
                if TcpStream::connect(public).await.is_ok() {
                    let (status, _) = http_raw(public, "GET", "/health", &[], "").await;
                    if status == 200 {
                        return Some(child);
                    }
                }
            }
            let exited = child.process.0.try_wait().expect("try_wait").is_some();
            if exited && child.log().contains("Address already in use") {
                return None;
            }
            assert!(
                !exited && Instant::now() < up,
                "herald did not start: {}",
                child.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.process.0.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
            })
            .expect("VmRSS")
    }

    async fn metrics(&self) -> String {
        let (status, text) = http_raw(self.public, "GET", "/metrics", &[], "").await;
        assert_eq!(status, 200);
        text
    }

    async fn api(&self, method: &str, body: Value) -> Value {
        let (status, reply) = http_request(
            self.public,
            "POST",
            &format!("/api/{method}"),
            &[("X-API-Key", API_KEY)],
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{method}: {reply}");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }
}

#[tokio::test]
async fn a_descriptor_flood_of_one_listener_leaves_the_others_their_share() {
    const FD_LIMIT: u64 = 320;
    // Unlimited per address so that only the descriptor share stops the flood.
    let child = Child::start("max_connections_per_ip = 0", Some(FD_LIMIT)).await;
    let metrics = child.metrics().await;
    assert_eq!(metric(&metrics, "herald_descriptor_limit"), FD_LIMIT as f64);
    let gt06_share = metric(
        &metrics,
        "herald_listener_descriptor_share{listener=\"gt06\"}",
    );
    assert!(
        gt06_share > 0.0 && gt06_share < FD_LIMIT as f64 - 64.0,
        "gt06 share {gt06_share}\n{metrics}"
    );

    // Twice the process's descriptors in silent sockets at the GT06 port.
    let mut flood = Vec::new();
    for i in 0..(2 * FD_LIMIT) {
        flood.push(try_connect_from(2 + (i % 50) as u8, child.gt06).await);
    }
    let held = gt06_share as usize;
    let settled = eventually(WAIT, || {
        // Every connection beyond the share was reset; the held ones wait for the login timeout.
        child.fds() < FD_LIMIT as usize - 32
    })
    .await;
    assert!(
        settled,
        "herald holds {} of {FD_LIMIT} descriptors",
        child.fds()
    );

    // WebSocket clients, /health, the API and the other device listeners are still served.
    let mut client = Client::open(&format!("ws://{}/connection/websocket", child.public)).await;
    client.connect(&token("honest")).await;
    client.subscribe("room").await;
    child
        .api("publish", json!({"channel": "room", "data": {"n": 1}}))
        .await;
    assert_eq!(client.publication("room").await["data"]["n"], 1);
    let (status, _) = http_raw(child.public, "GET", "/health", &[], "").await;
    assert_eq!(status, 200);
    let mut h02 = TcpStream::connect(child.h02).await.unwrap();
    h02.write_all(&sim::h02_heartbeat("4209917484"))
        .await
        .unwrap();
    let mut reply = [0u8; 16];
    let n = tokio::time::timeout(WAIT, h02.read(&mut reply))
        .await
        .expect("H02 answered while GT06 is flooded")
        .unwrap();
    assert!(n > 0, "H02 heartbeat reply");
    let (status, _) = http_raw(
        child.osmand,
        "GET",
        &sim::osmand_query("phone-1", &fix(1)),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "OsmAnd served while GT06 is flooded");

    let metrics = child.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_listener_descriptors{listener=\"gt06\"}"),
        held as f64,
        "{metrics}"
    );
    let open = metric(&metrics, "herald_descriptors_open");
    assert!(
        open > held as f64 && open < FD_LIMIT as f64,
        "herald_descriptors_open {open}"
    );
    let refused = metric(
        &metrics,
        "herald_device_connections_refused_total{protocol=\"gt06\",reason=\"descriptors\"}",
    );
    assert_eq!(refused, (2 * FD_LIMIT) as f64 - held as f64, "{metrics}");
    assert!(
        !child.log().contains("os error 24"),
        "the process ran out of descriptors: {}",
        child.log()
    );
    drop(flood);
}

/// Sends `GET` requests for `ids` on one keep-alive connection, pipelined in batches; returns
/// how many were answered `200`.
async fn osmand_requests(addr: SocketAddr, ids: Vec<String>) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut ok = 0;
    for (batch, chunk) in ids.chunks(100).enumerate() {
        let mut request = String::new();
        for id in chunk {
            request.push_str(&format!(
                "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
                sim::osmand_query(id, &fix(batch as u64))
            ));
        }
        s.write_all(request.as_bytes()).await.unwrap();
        let mut text = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut answered = 0;
        while answered < chunk.len() {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("OsmAnd answers in time")
                .unwrap();
            assert!(n > 0, "OsmAnd closed the connection");
            text.extend_from_slice(&buf[..n]);
            let seen = String::from_utf8_lossy(&text);
            answered = seen.matches("HTTP/1.1 ").count();
            if answered >= chunk.len() {
                ok += seen.matches("HTTP/1.1 200").count();
            }
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_osmand_ids_cost_bounded_memory() {
    const CAP: usize = 1000;
    let child = Child::start(&format!("max_devices = {CAP}"), None).await;
    let imei = "864717003283581";
    let mut known = TcpStream::connect(child.gt06).await.unwrap();
    gt06_reports(&mut known, imei, 1).await;

    let send = |from: usize, to: usize| {
        let ids: Vec<String> = (from..to).map(|i| format!("unknown-{i:06}")).collect();
        let per = ids.len().div_ceil(8);
        let parts: Vec<Vec<String>> = ids.chunks(per).map(<[String]>::to_vec).collect();
        let addr = child.osmand;
        async move {
            let answered = join_all(parts.into_iter().map(|p| osmand_requests(addr, p))).await;
            answered.into_iter().sum::<usize>()
        }
    };
    // Warm-up: the registry fills and starts forgetting; the allocator and the store settle.
    assert_eq!(send(0, 4_000).await, 4_000);
    let rss_before = child.rss_kib();
    assert_eq!(send(4_000, 24_000).await, 20_000);
    let rss_after = child.rss_kib();
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!("RSS {rss_before} KiB -> {rss_after} KiB after 20,000 more unknown ids");

    let metrics = child.metrics().await;
    let entries = metric(&metrics, "herald_device_registry_entries");
    assert!(entries <= CAP as f64 && entries > 0.0, "{metrics}");
    assert!(
        metric(&metrics, "herald_device_registry_evictions_total") >= (24_000 - CAP) as f64,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "herald_device_registry_refused_total"),
        0.0
    );
    // Measured on a debug build: about 4 MiB bounded (SQLite's page cache and the allocator
    // settling), 8.5 MiB with an unbounded registry (max_devices = 1,000,000).
    assert!(
        growth < 6 * 1024,
        "RSS grew {growth} KiB for 20,000 unknown ids"
    );

    // The connected device was never forgotten and is still served.
    gt06_location_acked(&mut known, imei, 2, 3).await;
    let devices = child.api("devices", json!({})).await;
    let listed = devices["devices"].as_array().cloned().unwrap_or_default();
    assert!(listed.len() <= CAP, "{} devices listed", listed.len());
    let me = listed
        .iter()
        .find(|d| d["device"] == imei)
        .unwrap_or_else(|| panic!("{imei} still known: {devices}"));
    assert_eq!(me["connected"], true);
    // Every accepted position of an unknown id is stored, forgotten or not.
    let deadline = Instant::now() + WAIT;
    loop {
        let stored = child
            .api(
                "device_track",
                json!({"device": "unknown-000007", "limit": 10}),
            )
            .await;
        let n = stored["positions"].as_array().map_or(0, Vec::len);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forgotten device's position stored: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_registry_full_of_connected_devices_refuses_new_ids_without_losing_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |c| c.devices.max_devices = 2).await;
    let gt06_addr = addrs(&ts).gt06.unwrap();
    let mut first = TcpStream::connect(gt06_addr).await.unwrap();
    gt06_reports(&mut first, "864717003283581", 1).await;
    let mut second = TcpStream::connect(gt06_addr).await.unwrap();
    gt06_reports(&mut second, "864717003283582", 2).await;

    // Both entries are connected devices: nothing may be forgotten, so the third id is refused
    // (no login acknowledgement, connection closed).
    let mut third = TcpStream::connect(gt06_addr).await.unwrap();
    third
        .write_all(&sim::gt06_login("864717003283583", 1))
        .await
        .unwrap();
    assert!(closed_within(&mut third, WAIT).await, "third id refused");
    let metrics = ts.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_device_registry_refused_total"),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "herald_device_connections_refused_total{protocol=\"gt06\",reason=\"registry_full\"}"
        ),
        1.0,
        "{metrics}"
    );
    gt06_location_acked(&mut first, "864717003283581", 3, 3).await;

    // Once a device disconnects its entry may be forgotten, and the new id is taken.
    drop(second);
    let mut third = TcpStream::connect(gt06_addr).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        third
            .write_all(&sim::gt06_login("864717003283583", 1))
            .await
            .unwrap();
        if read_n(&mut third, 10).await.is_some() {
            break;
        }
        // The old connection's end may not be seen yet: the refused login closed this one.
        assert!(Instant::now() < deadline, "third id never taken");
        third = TcpStream::connect(gt06_addr).await.unwrap();
    }
    gt06_location_acked(&mut third, "864717003283583", 4, 2).await;
    let metrics = ts.metrics().await;
    assert_eq!(metric(&metrics, "herald_device_registry_entries"), 2.0);
    assert!(metric(&metrics, "herald_device_registry_evictions_total") >= 1.0);
}
