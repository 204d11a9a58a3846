//! The live map's HTTP side through real sockets: the page, the token checks of its data
//! endpoints, their JSON, `[map] enabled = false`, and `herald serve --demo` end to end.

mod support;

use herald::config::{Config, FsyncSetting, StoreSetting};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Device ingest on loopback with only the JSON-lines listener, and a `devices` namespace where
/// clients may not subscribe by themselves (the map then needs the fleet channel in the token).
fn with_devices(c: &mut Config, dir: &Path) {
    c.devices.enabled = true;
    let l = &mut c.devices.listen;
    for a in [&mut l.gt06, &mut l.h02, &mut l.teltonika, &mut l.osmand] {
        *a = String::new();
    }
    l.jsonl = "127.0.0.1:0".into();
    c.devices.spool_dir = dir.join("spool").display().to_string();
    c.devices.store = StoreSetting::Sqlite(dir.join("herald.db").display().to_string());
    c.devices.fsync = FsyncSetting::Never;
    c.channel.namespaces.push(herald::config::NamespaceOptions {
        allow_subscribe_for_client: false,
        ..open_namespace("devices")
    });
}

/// A token whose `channels` claim lists the fleet channel.
fn fleet_token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now() + 3600, "channels": ["devices:fleet"]}))
}

/// One GET; returns the status, the response head (lower-cased) and the body.
async fn get(ts: &TestServer, path: &str, bearer: Option<&str>) -> (u16, String, String) {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}\r\n",
        ts.addr
    );
    let (status, head, body) = http_exchange(ts.addr, &request, WAIT).await;
    (status, head.to_ascii_lowercase(), body)
}

async fn get_json(ts: &TestServer, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let (status, head, body) = get(ts, path, bearer).await;
    assert!(
        head.contains("content-type: application/json"),
        "{path}: {head}"
    );
    (status, serde_json::from_str(&body).expect("JSON body"))
}

async fn feed(ts: &TestServer, lines: &[Value]) {
    let addr = ts.server.as_ref().expect("server").device_addrs.jsonl;
    let mut stream = TcpStream::connect(addr.expect("jsonl listener"))
        .await
        .expect("connect jsonl");
    let mut text = String::new();
    for line in lines {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    stream.write_all(text.as_bytes()).await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
}

fn positions(device: &str, start_ms: i64, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": device, "time": start_ms + i as i64 * 10_000,
                   "lat": 52.5 + i as f64 * 0.001, "lon": 13.4, "speed": 20 + i})
        })
        .collect()
}

#[tokio::test]
async fn the_page_is_served_as_html_with_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestServer::with(|c| {
        with_devices(c, dir.path());
        c.map.tile_url = "https://tiles.example/{z}/{x}/{y}.png".into();
        // A setting must not be able to end the config's script element.
        c.map.attribution = "</script><script>alert(1)</script>".into();
    })
    .await;
    for path in ["/map", "/map/"] {
        let (status, head, body) = get(&ts, path, None).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            head.contains("content-type: text/html; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains("content-security-policy:"), "{head}");
        assert!(body.contains("<canvas id=\"overlay\""), "{body}");
        assert!(body.contains("https://tiles.example/{z}/{x}/{y}.png"));
        assert!(body.contains("\"fleet_channel\":\"devices:fleet\""));
        assert!(!body.contains("<script>alert"), "escaped settings");
        assert!(!body.contains("{{HERALD_MAP_CONFIG}}"));
    }
    let (status, _, _) = get(&ts, "/map/elsewhere", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn data_endpoints_need_a_token_that_may_see_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestServer::with(|c| with_devices(c, dir.path())).await;
    for path in ["/map/api/devices", "/map/api/track?device=x"] {
        let (status, body) = get_json(&ts, path, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], 101, "{body}");
        let (status, body) = get_json(&ts, path, Some("not-a-jwt")).await;
        assert_eq!(status, 401, "{path}: {body}");
        let expired =
            token_with(json!({"sub": "a", "exp": now() - 10, "channels": ["devices:fleet"]}));
        let (status, body) = get_json(&ts, path, Some(&expired)).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], 109, "{body}");
        let (status, body) = get_json(&ts, path, Some(&token("alice"))).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], 103, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("devices:fleet"),
            "{body}"
        );
    }
    let (status, body) = get_json(&ts, "/map/api/devices", Some(&fleet_token("alice"))).await;
    assert_eq!(status, 200, "{body}");
    // A token signed with another key is refused too.
    let foreign =
        herald_auth::sign_hs256(&json!({"sub": "a", "channels": ["devices:fleet"]}), "other")
            .unwrap();
    let (status, _) = get_json(&ts, "/map/api/devices", Some(&foreign)).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_namespace_open_to_clients_admits_any_user() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestServer::with(|c| {
        with_devices(c, dir.path());
        c.channel.namespaces.retain(|n| n.name != "devices");
        c.channel.namespaces.push(open_namespace("devices"));
    })
    .await;
    let (status, body) = get_json(&ts, "/map/api/devices", Some(&token("bob"))).await;
    assert_eq!(status, 200, "{body}");
    let anonymous = token_with(json!({"sub": "", "exp": now() + 60}));
    let (status, _) = get_json(&ts, "/map/api/devices", Some(&anonymous)).await;
    assert_eq!(
        status, 403,
        "anonymous users need allow_subscribe_for_anonymous"
    );
}

#[tokio::test]
async fn devices_and_track_return_stored_positions() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestServer::with(|c| with_devices(c, dir.path())).await;
    let t = fleet_token("viewer");
    let start = herald::core::clock::unix_millis() - 600_000;
    feed(&ts, &positions("truck-1", start, 7)).await;
    feed(&ts, &positions("truck-2", start, 2)).await;

    let (status, body) = get_json(&ts, "/map/api/devices", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fleet_channel"], "devices:fleet");
    let list = body["devices"].as_array().expect("devices");
    let ids: Vec<&str> = list.iter().filter_map(|d| d["device"].as_str()).collect();
    assert_eq!(ids, ["truck-1", "truck-2"]);
    assert_eq!(list[0]["protocol"], "jsonl");
    assert_eq!(list[0]["position"]["time"], start + 60_000);
    assert_eq!(list[0]["position"]["speed"], 26.0);
    assert!((list[0]["position"]["lat"].as_f64().unwrap() - 52.506).abs() < 1e-9);

    // The writer stores asynchronously: poll until the whole track is in the database.
    let path = format!(
        "/map/api/track?device=truck-1&from={start}&to={}",
        start + 600_000
    );
    let mut track = Value::Null;
    for _ in 0..100 {
        let (status, body) = get_json(&ts, &path, Some(&t)).await;
        assert_eq!(status, 200, "{body}");
        if body["positions"].as_array().map(Vec::len) == Some(7) {
            track = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times: Vec<i64> = track["positions"]
        .as_array()
        .expect("7 stored positions")
        .iter()
        .filter_map(|p| p["time"].as_i64())
        .collect();
    assert_eq!(
        times,
        (0..7).map(|i| start + i * 10_000).collect::<Vec<_>>()
    );
    assert_eq!(track["device"], "truck-1");
    assert!(track["next_cursor"].is_null());

    // Paging and the time range, as in device_track.
    let (_, page) = get_json(
        &ts,
        &format!(
            "/map/api/track?device=truck-1&from={}&limit=2",
            start + 20_000
        ),
        Some(&t),
    )
    .await;
    assert_eq!(page["positions"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["positions"][0]["time"], start + 20_000);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, next) = get_json(
        &ts,
        &format!(
            "/map/api/track?device=truck-1&from={}&limit=2&cursor={}",
            start + 20_000,
            cursor.replace(':', "%3A")
        ),
        Some(&t),
    )
    .await;
    assert_eq!(next["positions"][0]["time"], start + 40_000);

    for (query, field) in [
        ("device=truck-1&from=soon", "from"),
        ("device=truck-1&limit=0", "limit"),
        ("device=truck-1&limit=-1", "limit"),
        ("from=1", "device"),
        ("device=truck-1&colour=red", "colour"),
    ] {
        let (status, body) = get_json(&ts, &format!("/map/api/track?{query}"), Some(&t)).await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(field), "{query}: {message}");
    }
}

#[tokio::test]
async fn map_disabled_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let ts = TestServer::with(|c| {
        with_devices(c, dir.path());
        c.map.enabled = false;
    })
    .await;
    for path in ["/map", "/map/api/devices", "/map/api/track?device=x"] {
        let (status, _, _) = get(&ts, path, Some(&fleet_token("a"))).await;
        assert_eq!(status, 404, "{path}");
    }
}

#[tokio::test]
async fn without_device_ingest_the_page_loads_and_data_is_unavailable() {
    let ts = TestServer::start().await;
    let (status, _, body) = get(&ts, "/map", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"devices_enabled\":false"));
    let (status, body) = get_json(&ts, "/map/api/devices", Some(&fleet_token("a"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], 108);
}

/// `herald serve --demo`: zero configuration, simulated trackers, and a printed map URL whose
/// token reads their positions; SIGTERM removes the demo's data directory.
#[tokio::test]
async fn serve_demo_prints_a_map_url_whose_token_sees_moving_devices() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(support::procs::BIN)
        .args([
            "serve",
            "--demo",
            "--demo-devices",
            "3",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("HERALD_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("herald starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let url = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no map URL; got {lines:?}"));
        if let Some(url) = line.strip_prefix("open the map: ") {
            break url.to_string();
        }
        lines.push(line);
    };
    let data_dir = lines
        .iter()
        .find_map(|l| l.split("(data in ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .map(std::path::PathBuf::from)
        .expect("the demo says where its data is");
    assert!(data_dir.exists());
    let (addr, token) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once("/map#token="))
        .unwrap_or_else(|| panic!("map URL {url}"));
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let mut devices = Vec::new();
    for _ in 0..100 {
        let (status, body) = http_request(
            addr,
            "GET",
            "/map/api/devices",
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        devices = body["devices"].as_array().cloned().unwrap_or_default();
        if devices.len() == 3 && devices.iter().all(|d| d["position"].is_object()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(devices.len(), 3, "{devices:?}");
    assert!(devices.iter().all(|d| d["protocol"] == "gt06"));
    let lat = devices[0]["position"]["lat"].as_f64().unwrap_or(0.0);
    assert!((52.4..52.7).contains(&lat), "near Berlin: {lat}");

    // A graceful stop removes the demo's data.
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let exited = eventually(Duration::from_secs(20), || {
        matches!(child.0.try_wait(), Ok(Some(_)))
    })
    .await;
    assert!(exited, "herald exits on SIGTERM");
    assert!(!data_dir.exists(), "{} removed", data_dir.display());
}
