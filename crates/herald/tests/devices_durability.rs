//! Durability of device ingest over real sockets, with PostgreSQL (see `support/pg.rs`) and
//! SQLite: exactly-once storage after replays, quarantine of positions the database rejects,
//! a database stalled for 60 s under load (the real binary's memory stays flat while the spool
//! grows on disk), a full spool that stops reading devices, and kill -9 mid-ingest.

mod support;

use herald::config::{Config, FsyncSetting, StoreSetting};
use herald_devices::sim::{self, Fix, Route};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::binary::{spool_disk_bytes, Herald};
use support::fleet::{self, Fleet, Kind, Plan};
use support::pg::TempDb;
use support::proxy::Proxy;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn fixes(seed: u64, n: usize) -> Vec<Fix> {
    let mut route = Route::new(seed, 52.52, 13.40);
    (0..n).map(|_| route.next(1000)).collect()
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("reply in time")
        .expect("reply");
    buf
}

/// `(device, time)` of every stored position, straight from PostgreSQL.
async fn pg_rows(db: &TempDb) -> BTreeMap<(String, i64), u32> {
    let rows = db
        .client()
        .await
        .query("SELECT device_id, time_ms FROM positions", &[])
        .await
        .expect("select positions");
    fleet::count_stored(rows.iter().map(|r| (r.get(0), r.get(1))))
}

// ---------------------------------------------------------------------------------------------
// In-process server on PostgreSQL
// ---------------------------------------------------------------------------------------------

fn pg_devices(c: &mut Config, dir: &Path, store: String) {
    c.devices.enabled = true;
    let l = &mut c.devices.listen;
    for a in [&mut l.gt06, &mut l.teltonika, &mut l.jsonl] {
        *a = "127.0.0.1:0".into();
    }
    l.h02 = String::new();
    l.osmand = String::new();
    c.devices.spool_dir = dir.join("spool").display().to_string();
    c.devices.store = StoreSetting::Postgres(store);
    c.devices.fsync = FsyncSetting::Always;
    c.channel.namespaces.push(open_namespace("devices"));
}

async fn track_times(ts: &TestServer, device: &str) -> Vec<i64> {
    ts.api_ok("device_track", json!({"device": device, "limit": 10000}))
        .await["positions"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["time"].as_i64()).collect())
        .unwrap_or_default()
}

async fn wait_pg_count(db: &TempDb, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rows = pg_rows(db).await;
        let total: u32 = rows.values().sum();
        if total as usize >= n || tokio::time::Instant::now() > deadline {
            assert_eq!(total as usize, n, "rows in PostgreSQL: {rows:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn postgres_end_to_end_exactly_once_after_replay() {
    let db = TempDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = db.store_url(db.addr());
    let gt06_imei = "864717003283581";
    let tel_imei = "356307042441013";
    // Captures from /work/shared/testdata/devices (gt06.txt: login serial 9 and a 0x12 location;
    // teltonika.txt: a one-record codec 8 packet).
    let gt06_login = hex("78780d01086471700328358100093f040d0a");
    let gt06_capture = hex(
        "78782912170316053b3bcf015b51220af1201105d56100000000000000000000869c0130010000000238d1af0d0a",
    );
    let tel_capture = hex("0000000000000035080100000161f37c50500020de5ba60ef11450000000000000000006040100b300b400ef000109002000014e0000000000000000010000be52");
    let sim_gt06: Vec<Vec<u8>> = fixes(11, 6)
        .iter()
        .enumerate()
        .map(|(i, f)| sim::gt06_location(f, 100 + i as u16))
        .collect();
    let tel_fixes = fixes(12, 12);
    let tel_packets = [
        sim::teltonika_codec8(&tel_fixes[..6]),
        sim::teltonika_codec8e(&tel_fixes[6..]),
    ];

    // First run: everything is sent and acknowledged; the last part stays in the spool only.
    {
        let mut ts = TestServer::with(|c| pg_devices(c, dir.path(), store.clone())).await;
        let addrs = ts.server.as_ref().expect("server").device_addrs;
        let ingest = ts
            .server
            .as_ref()
            .expect("server")
            .devices
            .clone()
            .expect("ingest");
        let mut g = TcpStream::connect(addrs.gt06.expect("gt06"))
            .await
            .expect("connect");
        g.write_all(&gt06_login).await.expect("write");
        read_n(&mut g, 10).await;
        g.write_all(&gt06_capture).await.expect("write");
        read_n(&mut g, 10).await;
        let mut t = TcpStream::connect(addrs.teltonika.expect("teltonika"))
            .await
            .expect("connect");
        t.write_all(&sim::teltonika_imei(tel_imei))
            .await
            .expect("write");
        assert_eq!(read_n(&mut t, 1).await, [1]);
        t.write_all(&tel_capture).await.expect("write");
        assert_eq!(read_n(&mut t, 4).await, [0, 0, 0, 1]);
        wait_pg_count(&db, 2).await;
        ingest.pause_writer().await;
        for f in &sim_gt06 {
            g.write_all(f).await.expect("write");
            read_n(&mut g, 10).await;
        }
        for p in &tel_packets {
            t.write_all(p).await.expect("write");
            assert_eq!(read_n(&mut t, 4).await, [0, 0, 0, 6]);
        }
        assert_eq!(ingest.spool.stats().pending_records, 18);
        ts.shutdown().await;
    }

    // Second run: the spool drains into PostgreSQL, and the devices, not trusting the old
    // connection, send everything again. Nothing is stored twice.
    let ts = TestServer::with(|c| pg_devices(c, dir.path(), store.clone())).await;
    let addrs = ts.server.as_ref().expect("server").device_addrs;
    let mut g = TcpStream::connect(addrs.gt06.expect("gt06"))
        .await
        .expect("connect");
    g.write_all(&gt06_login).await.expect("write");
    read_n(&mut g, 10).await;
    for f in std::iter::once(&gt06_capture).chain(&sim_gt06) {
        g.write_all(f).await.expect("write");
        read_n(&mut g, 10).await;
    }
    let mut t = TcpStream::connect(addrs.teltonika.expect("teltonika"))
        .await
        .expect("connect");
    t.write_all(&sim::teltonika_imei(tel_imei))
        .await
        .expect("write");
    assert_eq!(read_n(&mut t, 1).await, [1]);
    t.write_all(&tel_capture).await.expect("write");
    read_n(&mut t, 4).await;
    for p in &tel_packets {
        t.write_all(p).await.expect("write");
        read_n(&mut t, 4).await;
    }
    wait_pg_count(&db, 20).await;
    let rows = pg_rows(&db).await;
    assert!(rows.values().all(|n| *n == 1), "{rows:?}");
    assert_eq!(rows.keys().filter(|(d, _)| d == gt06_imei).count(), 7);
    assert_eq!(rows.keys().filter(|(d, _)| d == tel_imei).count(), 13);

    // The API answers from PostgreSQL.
    let mut want: Vec<i64> = tel_fixes.iter().map(|f| f.time_ms).collect();
    let capture_time = rows
        .keys()
        .filter(|(d, _)| d == tel_imei)
        .map(|(_, t)| *t)
        .find(|t| !want.contains(t))
        .expect("the captured record");
    want.push(capture_time);
    want.sort();
    assert_eq!(track_times(&ts, tel_imei).await, want);
    let latest = ts.api_ok("device_positions", json!({})).await;
    let latest = latest["positions"].as_array().expect("positions").clone();
    assert_eq!(latest.len(), 2, "{latest:?}");
    let tel_latest = latest
        .iter()
        .find(|p| p["device"] == tel_imei)
        .expect("latest");
    assert_eq!(tel_latest["time"], json!(want.last().copied()));
    let geo = ts
        .api_ok(
            "device_track",
            json!({"device": gt06_imei, "format": "geojson"}),
        )
        .await;
    assert_eq!(geo["features"].as_array().map(Vec::len), Some(8));
    drop(ts);
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_rejects_a_line_and_it_is_quarantined_not_blocking() {
    let db = TempDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ts = TestServer::with(|c| pg_devices(c, dir.path(), db.store_url(db.addr()))).await;
    let addrs = ts.server.as_ref().expect("server").device_addrs;
    let mut s = TcpStream::connect(addrs.jsonl.expect("jsonl"))
        .await
        .expect("connect");
    let f = fixes(21, 5);
    // PostgreSQL refuses a NUL in JSONB (SQLSTATE 22P05); SQLite would take it.
    let poison = format!(
        "{{\"id\":\"truck-9\",\"time\":{},\"lat\":52.5,\"lon\":13.4,\"attrs\":{{\"note\":\"a\\u0000b\"}}}}\n",
        f[2].time_ms
    );
    for (i, fix) in f.iter().enumerate() {
        let line = if i == 2 {
            poison.clone()
        } else {
            sim::jsonl_line("truck-9", fix)
        };
        s.write_all(line.as_bytes()).await.expect("write");
    }
    wait_pg_count(&db, 4).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let stats = loop {
        let stats = ts.api_ok("devices", json!({})).await["stats"].clone();
        // The counters follow the cursor commit: wait for the stored ones too.
        if stats["quarantined"] == 1 && stats["positions_new"] == 4 {
            break stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stats["spool_pending_records"], 0, "{stats}");
    let entries = herald_store::quarantine::read(
        &dir.path()
            .join("spool")
            .join(herald_store::quarantine::FILE_NAME),
    )
    .expect("quarantine file");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].position.device_id, "truck-9");
    assert_eq!(entries[0].position.time_ms, f[2].time_ms);
    assert!(entries[0].reason.contains("22P05"), "{}", entries[0].reason);
    let metrics = ts.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_device_positions_quarantined_total"),
        1.0
    );
    drop(ts);
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// Config of the binary: GT06 and Teltonika on port 0, the given store and spool bound.
fn binary_config(dir: &Path, store: &str, spool_max_bytes: u64) -> String {
    format!(
        "[api]\nkey = \"{API_KEY}\"\n\n[client.token]\nhmac_secret = \"{SECRET}\"\n\n\
         [devices]\nenabled = true\nspool_dir = \"{}\"\nspool_max_bytes = {spool_max_bytes}\n\
         store = \"{store}\"\n\n[devices.listen]\ngt06 = \"127.0.0.1:0\"\n\
         teltonika = \"127.0.0.1:0\"\nh02 = \"\"\nosmand = \"\"\njsonl = \"\"\n",
        dir.join("spool").display()
    )
}

fn device_addr(h: &Herald, protocol: &str) -> std::net::SocketAddr {
    *h.devices
        .get(protocol)
        .unwrap_or_else(|| panic!("{protocol} listener"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_postgres_for_60s_under_load_loses_nothing_and_memory_stays_flat() {
    let db = TempDb::new().await;
    let proxy = Proxy::start(db.addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = db.store_url(proxy.addr);
    let h = Herald::start(dir.path(), &binary_config(dir.path(), &store, 1 << 30));
    let tel = Fleet::start(
        device_addr(&h, "teltonika"),
        Plan {
            kind: Kind::Teltonika { records: 10 },
            count: 200,
            first_id: 356_000_000_000_000,
            interval: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(30),
        },
    );
    let gt06 = Fleet::start(
        device_addr(&h, "gt06"),
        Plan {
            kind: Kind::Gt06,
            count: 100,
            first_id: 864_000_000_000_000,
            interval: Duration::from_millis(200),
            ack_timeout: Duration::from_secs(30),
        },
    );
    // Warm up until the allocator and the connections are at their steady state.
    let warm = Instant::now();
    tel.wait_acked(20_000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let warm_rate = (tel.acked() + gt06.acked()) as f64 / warm.elapsed().as_secs_f64();

    let spool_dir = dir.path().join("spool");
    let acked_before = tel.acked() + gt06.acked();
    proxy.stall();
    let rss_start = h.rss_kib();
    let spool_start = spool_disk_bytes(&spool_dir);
    let stall = Instant::now();
    let mut rss_max = rss_start;
    let mut samples = Vec::new();
    while stall.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = h.rss_kib();
        rss_max = rss_max.max(rss);
        samples.push(rss);
    }
    let spool_end = spool_disk_bytes(&spool_dir);
    let acked_during = tel.acked() + gt06.acked() - acked_before;
    let stats = h.device_stats().await;
    assert!(
        stats["consecutive_errors"].as_u64() >= Some(1),
        "the writer noticed: {stats}"
    );
    proxy.resume();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut reports = tel.stop().await;
    reports.extend(gt06.stop().await);
    for r in &reports {
        assert!(
            r.error.is_none(),
            "device {} failed: {:?}",
            r.device,
            r.error
        );
    }
    let drain_start = Instant::now();
    let stats = h.wait_drained(Duration::from_secs(240)).await;
    let drain = drain_start.elapsed();
    let rows = pg_rows(&db).await;
    let (acked, stored) = fleet::assert_exactly_once(&reports, &rows);
    assert_eq!(
        acked, stored,
        "every sent position was acknowledged and stored"
    );
    eprintln!(
        "stall: warm-up {warm_rate:.0} positions/s; {acked_during} positions acknowledged during \
         the 60 s stall ({:.0}/s); spool {:.1} -> {:.1} MB; RSS at stall start {:.1} MB, max \
         {:.1} MB (+{:.1} MB), samples (MB) {:?}; drained in {:.1} s; {acked} acknowledged, \
         {stored} rows; writer {stats}",
        acked_during as f64 / 60.0,
        spool_start as f64 / 1e6,
        spool_end as f64 / 1e6,
        rss_start as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        (rss_max - rss_start) as f64 / 1024.0,
        samples.iter().map(|k| k / 1024).collect::<Vec<_>>(),
        drain.as_secs_f64(),
    );
    // The backlog is on disk, not in memory: at ~110 bytes a record the spool grew by tens of
    // MB; had the positions been held in memory, RSS would have grown at least as much. 16 MiB
    // leaves room for allocator noise and a reconnecting database client, not for the backlog.
    let growth = spool_end.saturating_sub(spool_start);
    assert!(
        growth > 10_000_000,
        "the spool grew on disk: {growth} bytes"
    );
    let rss_growth = (rss_max - rss_start) * 1024;
    assert!(
        rss_growth < 16 << 20 && rss_growth < growth / 2,
        "RSS grew {rss_growth} bytes while the spool grew {growth}"
    );
    drop(h);
    drop(proxy);
    db.drop_db().await;
}

// Multi-threaded: `Herald::start` blocks its thread while the proxy must keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_stops_reading_the_device_until_postgres_returns() {
    let db = TempDb::new().await;
    let proxy = Proxy::start(db.addr()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool_max = 64 * 1024;
    let h = Herald::start(
        dir.path(),
        &binary_config(dir.path(), &db.store_url(proxy.addr), spool_max),
    );
    let imei = "864000000000999";
    // A small send buffer, like a tracker's modem, so the device blocks soon after the server
    // stops reading (the server's receive window is what it is).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    let s = socket
        .connect(device_addr(&h, "gt06"))
        .await
        .expect("connect");
    let (mut rx, mut tx) = s.into_split();
    tx.write_all(&sim::gt06_login(imei, 1))
        .await
        .expect("write");
    let mut ack = [0u8; 10];
    rx.read_exact(&mut ack).await.expect("login ack");
    // The device reads acknowledgements on its own, counting them.
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = acks.clone();
    let reader = tokio::spawn(async move {
        let mut a = [0u8; 10];
        while rx.read_exact(&mut a).await.is_ok() {
            assert_eq!(a[3], 0x12, "a location ACK");
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let acked = || acks.load(std::sync::atomic::Ordering::SeqCst);
    let mut route = Route::new(99, 52.52, 13.40);
    let mut sent: Vec<i64> = Vec::new();
    let send = |route: &mut Route, sent: &mut Vec<i64>| {
        let fix = route.next(1000);
        sent.push(fix.time_ms / 1000 * 1000);
        sim::gt06_location(&fix, (sent.len() as u16).wrapping_add(1))
    };
    for _ in 0..20 {
        let frame = send(&mut route, &mut sent);
        tx.write_all(&frame).await.expect("write");
    }
    assert!(
        eventually(WAIT, || acked() == 20).await,
        "acks before the stall"
    );

    proxy.stall();
    // The device keeps sending without waiting: the spool fills, the server stops reading, then
    // the socket buffers fill and the device's writes block.
    let mut blocked = false;
    while sent.len() < 400_000 {
        let frame = send(&mut route, &mut sent);
        match tokio::time::timeout(Duration::from_secs(3), tx.write_all(&frame)).await {
            Ok(r) => r.expect("write"),
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(
        blocked,
        "the device's writes never blocked after {} frames",
        sent.len()
    );
    // Blocked because the spool is full (not because the server is merely slow): no room for
    // another record (~110 bytes).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = h.device_stats().await;
        if stats["spool_disk_bytes"].as_u64().unwrap_or(0) + 200 > spool_max {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spool not full: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked_when_blocked = acked();
    assert!(
        (acked_when_blocked as usize) < sent.len(),
        "acknowledged {acked_when_blocked} of {}",
        sent.len()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        acked(),
        acked_when_blocked,
        "no acknowledgement while the spool is full"
    );
    let stats = h.device_stats().await;
    assert!(
        stats["spool_disk_bytes"].as_u64() <= Some(spool_max),
        "bounded: {stats}"
    );
    eprintln!(
        "full spool: {} frames sent, {acked_when_blocked} acknowledged when the device's writes \
         blocked; spool {stats}",
        sent.len()
    );

    proxy.resume();
    // Every frame is read, spooled and acknowledged now, but the one whose write timed out: it
    // may be cut short, so it is never complete.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (acked() as usize) < sent.len() - 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} acknowledged after the database returned",
            acked(),
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(tx);
    let _ = reader.await;
    h.wait_drained(Duration::from_secs(120)).await;
    let rows = pg_rows(&db).await;
    let want: BTreeMap<(String, i64), u32> = sent[..sent.len() - 1]
        .iter()
        .map(|t| ((imei.to_string(), *t), 1))
        .collect();
    assert_eq!(acked() as usize, want.len());
    assert!(
        rows == want,
        "every acknowledged position stored once, nothing else"
    );
    drop(h);
    drop(proxy);
    db.drop_db().await;
}

/// Devices send over GT06 and Teltonika, both acknowledging; the process is killed with SIGKILL
/// while they send and the writer drains; after a restart on the same spool and database every
/// acknowledged position is stored exactly once.
async fn kill9_mid_ingest(
    store: &str,
    dir: &Path,
    stored: impl AsyncFnOnce(&Herald, &[String]) -> BTreeMap<(String, i64), u32>,
) {
    let config = binary_config(dir, store, 1 << 30);
    let mut h = Herald::start(dir, &config);
    let tel = Fleet::start(
        device_addr(&h, "teltonika"),
        Plan {
            kind: Kind::Teltonika { records: 5 },
            count: 20,
            first_id: 356_100_000_000_000,
            interval: Duration::from_millis(20),
            ack_timeout: Duration::from_secs(10),
        },
    );
    let gt06 = Fleet::start(
        device_addr(&h, "gt06"),
        Plan {
            kind: Kind::Gt06,
            count: 20,
            first_id: 864_100_000_000_000,
            interval: Duration::from_millis(10),
            ack_timeout: Duration::from_secs(10),
        },
    );
    tel.wait_acked(3_000, Duration::from_secs(60)).await;
    gt06.wait_acked(500, Duration::from_secs(60)).await;
    let before = h.device_stats().await;
    h.kill9();
    let mut reports = tel.stop().await;
    reports.extend(gt06.stop().await);
    let unacked: usize = reports.iter().map(|r| r.unacked.len()).sum();

    let h = Herald::start(dir, &config);
    let after = h.wait_drained(Duration::from_secs(120)).await;
    let devices: Vec<String> = reports.iter().map(|r| r.device.clone()).collect();
    let rows = stored(&h, &devices).await;
    let (acked, stored) = fleet::assert_exactly_once(&reports, &rows);
    eprintln!(
        "kill -9: {acked} acknowledged, {unacked} sent without an acknowledgement, {stored} \
         stored; before the kill {before}; after the restart {after}"
    );
    assert!(acked >= 3_500);
}

/// `(device, time)` of every stored position of `devices`, through the `device_track` API.
async fn api_rows(h: &Herald, devices: &[String]) -> BTreeMap<(String, i64), u32> {
    let mut pairs = Vec::new();
    for d in devices {
        let page = h
            .api("device_track", json!({"device": d, "limit": 10000}))
            .await;
        let positions = page["positions"].as_array().cloned().unwrap_or_default();
        assert!(positions.len() < 10000, "one page holds them all");
        pairs.extend(
            positions
                .iter()
                .filter_map(|p| p["time"].as_i64())
                .map(|t| (d.clone(), t)),
        );
    }
    fleet::count_stored(pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_ingest_loses_nothing_acknowledged_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite:{}", dir.path().join("herald.db").display());
    kill9_mid_ingest(&store, dir.path(), api_rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_ingest_loses_nothing_acknowledged_postgres() {
    let db = TempDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = db.store_url(db.addr());
    kill9_mid_ingest(
        &store,
        dir.path(),
        async |h: &Herald, devices: &[String]| {
            let via_api = api_rows(h, devices).await;
            let via_sql = pg_rows(&db).await;
            assert_eq!(via_api, via_sql, "the API answers from PostgreSQL");
            via_sql
        },
    )
    .await;
    db.drop_db().await;
}
