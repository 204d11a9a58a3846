//! Device ingest through real sockets: trackers → spool → ACK → live publish → SQLite.

mod support;

use herald::config::Config;
use herald_devices::sim::{self, Fix, Route};
use herald_devices::{gt06, SessionState};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(dir: &Path, change: impl FnOnce(&mut Config)) -> TestServer {
    start_with_devices(dir, "always", change).await
}

fn ingest(ts: &TestServer) -> std::sync::Arc<herald::edges::devices::DeviceIngest> {
    ts.server.as_ref().unwrap().devices.clone().unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn fixes(seed: u64, n: usize) -> Vec<Fix> {
    let mut route = Route::new(seed, 52.52, 13.40);
    (0..n).map(|_| route.next(1000)).collect()
}

async fn read_n(s: &mut TcpStream, n: usize, wait: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

/// The reply the decoder owes for `frame` from a logged-in device.
fn gt06_ack(imei: &str, frame: &[u8]) -> Vec<u8> {
    let mut session = SessionState::with_device(imei);
    gt06::decode(frame, &mut session).unwrap().reply.unwrap()
}

async fn stored(ts: &TestServer, device: &str) -> Vec<Value> {
    ts.api_ok("device_track", json!({"device": device, "limit": 10000}))
        .await["positions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `n` positions of `device` are stored; asserts there are exactly `n`.
async fn wait_stored(ts: &TestServer, device: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = stored(ts, device).await;
        if rows.len() >= n || tokio::time::Instant::now() > deadline {
            assert_eq!(rows.len(), n, "stored positions of {device}: {rows:?}");
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gt06_capture_is_acked_published_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |_| {}).await;
    let imei = "864717003283581";
    let mut device_sub = ts.client("map").await;
    device_sub.subscribe(&format!("devices:{imei}")).await;
    let mut fleet_sub = ts.client("map").await;
    fleet_sub.subscribe("devices:fleet").await;

    let mut s = TcpStream::connect(addrs(&ts).gt06.unwrap()).await.unwrap();
    // Captures from /work/shared/testdata/devices/gt06.txt (login serial 9, then a 0x12 location).
    let login = hex("78780d01086471700328358100093f040d0a");
    s.write_all(&login).await.unwrap();
    let ack = read_n(&mut s, 10, WAIT).await.expect("login ack");
    assert_eq!(ack, gt06::encode_reply(false, 0x01, 0x0009, &[]));
    assert_eq!(&ack[..6], &[0x78, 0x78, 0x05, 0x01, 0x00, 0x09]);
    let location = hex(
        "78782912170316053b3bcf015b51220af1201105d56100000000000000000000869c0130010000000238d1af0d0a",
    );
    s.write_all(&location).await.unwrap();
    let ack = read_n(&mut s, 10, WAIT).await.expect("location ack");
    assert_eq!(ack, gt06_ack(imei, &location));
    assert_eq!(&ack[..6], &[0x78, 0x78, 0x05, 0x12, 0x02, 0x38]);

    let device_channel = format!("devices:{imei}");
    for (sub, channel) in [
        (&mut device_sub, device_channel.as_str()),
        (&mut fleet_sub, "devices:fleet"),
    ] {
        let publication = sub.publication(channel).await;
        let data = &publication["data"];
        assert_eq!(data["device"], imei);
        assert!(
            (data["lat"].as_f64().unwrap() - 12.645423).abs() < 1e-4,
            "{data}"
        );
        assert!(
            (data["lon"].as_f64().unwrap() - 101.985858).abs() < 1e-4,
            "{data}"
        );
        assert_eq!(data["valid"], true);
        for key in ["time", "speed", "course", "altitude", "attributes"] {
            assert!(data.get(key).is_some(), "{key} missing in {data}");
        }
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let latest = ts.api_ok("device_positions", json!({})).await;
        let positions = latest["positions"].as_array().unwrap();
        if let Some(p) = positions.iter().find(|p| p["device"] == imei) {
            assert!((p["lat"].as_f64().unwrap() - 12.645423).abs() < 1e-4);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not stored: {latest}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A retransmission of the same frame is acknowledged again but neither published nor stored twice.
    s.write_all(&location).await.unwrap();
    assert_eq!(read_n(&mut s, 10, WAIT).await.unwrap(), ack);
    device_sub.expect_silence(Duration::from_millis(300)).await;
    wait_stored(&ts, imei, 1).await;
    let geo = ts
        .api_ok("device_track", json!({"device": imei, "format": "geojson"}))
        .await;
    assert_eq!(geo["type"], "FeatureCollection");
}

#[tokio::test]
async fn teltonika_handshake_and_codec8_ack() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |_| {}).await;
    let imei = "356307042441013";
    let mut s = TcpStream::connect(addrs(&ts).teltonika.unwrap())
        .await
        .unwrap();
    s.write_all(&sim::teltonika_imei(imei)).await.unwrap();
    assert_eq!(read_n(&mut s, 1, WAIT).await.unwrap(), vec![0x01]);
    let fixes = fixes(7, 3);
    s.write_all(&sim::teltonika_codec8(&fixes)).await.unwrap();
    assert_eq!(read_n(&mut s, 4, WAIT).await.unwrap(), vec![0, 0, 0, 3]);
    let rows = wait_stored(&ts, imei, 3).await;
    assert_eq!(rows[0]["time"], fixes[0].time_ms);
}

#[tokio::test]
async fn unknown_device_is_refused_when_not_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |c| {
        c.devices.accept_unknown = false;
        c.devices.allowed = vec!["111111111111111".into()];
    })
    .await;
    let mut s = TcpStream::connect(addrs(&ts).teltonika.unwrap())
        .await
        .unwrap();
    s.write_all(&sim::teltonika_imei("356307042441013"))
        .await
        .unwrap();
    assert_eq!(read_n(&mut s, 1, WAIT).await.unwrap(), vec![0x00]);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "connection closed");
}

#[tokio::test]
async fn h02_and_json_lines_are_published_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |_| {}).await;
    let mut fleet = ts.client("map").await;
    fleet.subscribe("devices:fleet").await;

    let h02_id = "4209917484";
    let mut h02 = TcpStream::connect(addrs(&ts).h02.unwrap()).await.unwrap();
    let fix = fixes(1, 1)[0];
    h02.write_all(&sim::h02_location(h02_id, &fix))
        .await
        .unwrap();
    let p = fleet.publication("devices:fleet").await;
    assert_eq!(p["data"]["device"], h02_id);
    wait_stored(&ts, h02_id, 1).await;

    let jl_id = "truck-7";
    let mut jl = TcpStream::connect(addrs(&ts).jsonl.unwrap()).await.unwrap();
    for fix in fixes(2, 4) {
        jl.write_all(sim::jsonl_line(jl_id, &fix).as_bytes())
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let p = fleet.publication("devices:fleet").await;
        assert_eq!(p["data"]["device"], jl_id);
    }
    wait_stored(&ts, jl_id, 4).await;
}

#[tokio::test]
async fn osmand_http_get_post_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |_| {}).await;
    let addr = addrs(&ts).osmand.unwrap();
    let f = fixes(3, 2);
    let (status, body) = http_raw(addr, "GET", &sim::osmand_query("phone1", &f[0]), &[], "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_raw(
        addr,
        "POST",
        "/",
        &[("Content-Type", "application/json")],
        &sim::osmand_json("phone1", &f[1]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_stored(&ts, "phone1", 2).await;
    let (status, body) = http_raw(addr, "GET", "/?id=phone1&lat=abc&lon=1", &[], "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad request"), "{body}");
    let (status, _) = http_raw(addr, "GET", "/?lat=1&lon=1", &[], "").await;
    assert_eq!(status, 400);
    let listed = ts.api_ok("devices", json!({})).await;
    let d = &listed["devices"][0];
    assert_eq!(d["device"], "phone1");
    assert_eq!(d["protocol"], "osmand");
}

#[tokio::test]
async fn ack_only_after_the_record_is_in_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |_| {}).await;
    let devices = ingest(&ts);
    devices.pause_writer().await;
    assert_eq!(devices.spool.stats().pending_records, 0);
    let imei = "123456789012345";
    let mut s = TcpStream::connect(addrs(&ts).gt06.unwrap()).await.unwrap();
    s.write_all(&sim::gt06_login(imei, 1)).await.unwrap();
    read_n(&mut s, 10, WAIT).await.expect("login ack");
    assert_eq!(
        devices.spool.stats().pending_records,
        0,
        "a login carries no position"
    );
    let fix = fixes(4, 1)[0];
    let frame = sim::gt06_location(&fix, 2);
    s.write_all(&frame).await.unwrap();
    let ack = read_n(&mut s, 10, WAIT).await.expect("location ack");
    assert_eq!(ack, gt06_ack(imei, &frame));
    // The ACK is written after the (fsync = always) append returned: the record is on disk now.
    assert_eq!(devices.spool.stats().pending_records, 1);
    assert!(devices.spool.stats().disk_bytes > 0);
    devices.resume_writer();
    wait_stored(&ts, imei, 1).await;
}

#[tokio::test]
async fn full_spool_stops_acks_until_space_frees() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |c| c.devices.spool_max_bytes = 400).await;
    let devices = ingest(&ts);
    devices.pause_writer().await;
    let imei = "123456789012346";
    let mut s = TcpStream::connect(addrs(&ts).gt06.unwrap()).await.unwrap();
    s.write_all(&sim::gt06_login(imei, 1)).await.unwrap();
    read_n(&mut s, 10, WAIT).await.expect("login ack");
    let all = fixes(5, 12);
    let mut acked = 0;
    let mut blocked_at = None;
    for (i, fix) in all.iter().enumerate() {
        let frame = sim::gt06_location(fix, i as u16 + 2);
        s.write_all(&frame).await.unwrap();
        match read_n(&mut s, 10, Duration::from_millis(500)).await {
            Some(ack) => {
                assert_eq!(ack, gt06_ack(imei, &frame));
                acked += 1;
            }
            None => {
                blocked_at = Some(i);
                break;
            }
        }
    }
    let blocked_at = blocked_at.expect("the spool filled up and ACKs stopped");
    assert!(acked >= 1, "at least one position fit");
    assert!(devices.spool.stats().disk_bytes <= 400);
    // Still not acknowledged while the writer is paused.
    assert!(read_n(&mut s, 10, Duration::from_millis(300))
        .await
        .is_none());
    devices.resume_writer();
    read_n(&mut s, 10, WAIT)
        .await
        .expect("ack after space freed");
    for (i, fix) in all.iter().enumerate().skip(blocked_at + 1) {
        let frame = sim::gt06_location(fix, i as u16 + 2);
        s.write_all(&frame).await.unwrap();
        let ack = read_n(&mut s, 10, WAIT).await.expect("ack");
        assert_eq!(ack, gt06_ack(imei, &frame));
    }
    let rows = wait_stored(&ts, imei, all.len()).await;
    let times: Vec<i64> = rows.iter().map(|r| r["time"].as_i64().unwrap()).collect();
    let want: Vec<i64> = all.iter().map(|f| f.time_ms / 1000 * 1000).collect();
    assert_eq!(times, want, "nothing lost, in order");
}

#[tokio::test]
async fn restart_loses_nothing_and_stores_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let imei = "123456789012347";
    let all = fixes(6, 10);
    let frames: Vec<Vec<u8>> = all
        .iter()
        .enumerate()
        .map(|(i, f)| sim::gt06_location(f, i as u16 + 2))
        .collect();
    {
        let mut ts = start(dir.path(), |_| {}).await;
        let mut s = TcpStream::connect(addrs(&ts).gt06.unwrap()).await.unwrap();
        s.write_all(&sim::gt06_login(imei, 1)).await.unwrap();
        read_n(&mut s, 10, WAIT).await.expect("login ack");
        for frame in &frames[..5] {
            s.write_all(frame).await.unwrap();
            read_n(&mut s, 10, WAIT).await.expect("ack");
        }
        wait_stored(&ts, imei, 5).await;
        // The rest stays in the spool only.
        ingest(&ts).pause_writer().await;
        for frame in &frames[5..] {
            s.write_all(frame).await.unwrap();
            read_n(&mut s, 10, WAIT).await.expect("ack");
        }
        assert_eq!(ingest(&ts).spool.stats().pending_records, 5);
        ts.shutdown().await;
    }
    let ts = start(dir.path(), |_| {}).await;
    // The device did not trust the old connection and sends everything again.
    let mut s = TcpStream::connect(addrs(&ts).gt06.unwrap()).await.unwrap();
    s.write_all(&sim::gt06_login(imei, 1)).await.unwrap();
    read_n(&mut s, 10, WAIT).await.expect("login ack");
    for frame in &frames {
        s.write_all(frame).await.unwrap();
        read_n(&mut s, 10, WAIT).await.expect("ack");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ingest(&ts).spool.stats().pending_records > 0 {
        assert!(tokio::time::Instant::now() < deadline, "spool drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = wait_stored(&ts, imei, 10).await;
    let times: Vec<i64> = rows.iter().map(|r| r["time"].as_i64().unwrap()).collect();
    let want: Vec<i64> = all.iter().map(|f| f.time_ms / 1000 * 1000).collect();
    assert_eq!(times, want);
}

#[tokio::test]
async fn devices_api_tracks_connection_state() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |_| {}).await;
    let imei = "123456789012348";
    let s = {
        let mut s = TcpStream::connect(addrs(&ts).gt06.unwrap()).await.unwrap();
        s.write_all(&sim::gt06_login(imei, 1)).await.unwrap();
        read_n(&mut s, 10, WAIT).await.expect("login ack");
        s
    };
    let listed = ts.api_ok("devices", json!({})).await;
    let d = &listed["devices"][0];
    assert_eq!(d["device"], imei);
    assert_eq!(d["protocol"], "gt06");
    assert_eq!(d["connected"], true);
    assert!(d["last_seen"].as_i64().unwrap() > 0);
    assert!(listed["stats"]["spool_pending_bytes"].is_u64(), "{listed}");
    assert!(listed["stats"]["positions_written"].is_u64(), "{listed}");
    drop(s);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = ts.api_ok("devices", json!({})).await;
        if listed["devices"][0]["connected"] == false {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn device_api_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start(dir.path(), |_| {}).await;
    for (body, needle) in [
        (json!({}), "\"device\""),
        (json!({"device": "x", "format": "kml"}), "\"format\""),
        (json!({"device": "x", "cursor": "nope"}), "\"cursor\""),
        (json!({"device": "x", "limit": 0}), "\"limit\""),
        (json!({"device": "x", "from": 10, "to": 1}), "\"to\""),
    ] {
        let (status, reply) = ts.api("device_track", body).await;
        assert_eq!(status, 200);
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{reply}");
    }
    let plain = TestServer::start().await;
    let (_, reply) = plain.api("devices", json!({})).await;
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("devices.enabled"),
        "{reply}"
    );
}
