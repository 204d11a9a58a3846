//! Configuration reload on SIGHUP, on the real binary: the file is edited, the process gets a
//! real SIGHUP, and the new behaviour is seen through the WebSocket, the server API, the
//! handshake, the log and `/metrics`.

mod support;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use support::binary::Herald;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const OLD_SECRET: &str = "reload-old-secret-reload-old-secret";
const NEW_SECRET: &str = "reload-new-secret-reload-new-secret";
const OLD_KEY: &str = "reload-old-api-key";
const NEW_KEY: &str = "reload-new-api-key";

/// One version of the file: JSON logs on a loopback port 0 (as the support's `Herald` reads
/// them), the given `[api]`, `[client]`, `[client.token]` lines, origins, level and namespaces.
struct Version<'a> {
    level: &'a str,
    origins: &'a str,
    client: &'a str,
    api_key: &'a str,
    secret: &'a str,
    token_extra: &'a str,
    namespaces: &'a [&'a str],
    extra: &'a str,
}

impl Version<'_> {
    fn write(&self, file: &Path) {
        let mut text = format!(
            "{extra}\n[http]\nlisten = \"127.0.0.1:0\"\nallowed_origins = {origins}\n\
             [log]\nformat = \"json\"\nlevel = \"{level}\"\n\
             [api]\nkey = \"{key}\"\n\
             [client]\n{client}\n\
             [client.token]\nhmac_secret = \"{secret}\"\n{token_extra}\n",
            extra = self.extra,
            origins = self.origins,
            level = self.level,
            key = self.api_key,
            client = self.client,
            secret = self.secret,
            token_extra = self.token_extra,
        );
        for name in self.namespaces {
            text.push_str(&format!(
                "[[channel.namespaces]]\nname = \"{name}\"\nallow_subscribe_for_client = true\n"
            ));
        }
        std::fs::write(file, text).expect("config written");
    }
}

fn first() -> Version<'static> {
    Version {
        level: "info",
        origins: "[\"https://one.example\"]",
        client: "max_channels = 8",
        api_key: OLD_KEY,
        secret: OLD_SECRET,
        token_extra: "",
        namespaces: &["chat"],
        extra: "",
    }
}

fn token_signed(secret: &str, user: &str) -> String {
    herald_auth::sign_hs256(&json!({"sub": user, "exp": now() + 3600}), secret).expect("sign")
}

fn ws_url(h: &Herald) -> String {
    format!("ws://{}/connection/websocket", h.api)
}

async fn connected(h: &Herald, secret: &str, user: &str) -> Client {
    let mut c = Client::open(&ws_url(h)).await;
    c.connect(&token_signed(secret, user)).await;
    c
}

/// Whether a connection token signed with `secret` is accepted (true) or the connection closes.
async fn token_accepted(h: &Herald, secret: &str) -> bool {
    let mut c = Client::open(&ws_url(h)).await;
    let token = token_signed(secret, "probe");
    c.send(json!({"id": 1, "connect": {"token": token, "name": "t"}}))
        .await;
    c.next_within(WAIT)
        .await
        .is_some_and(|reply| reply.get("connect").is_some())
}

/// The API status with this key.
async fn api_status(h: &Herald, key: &str) -> u16 {
    http_request(
        h.api,
        "POST",
        "/api/info",
        &[("X-API-Key", key)],
        &json!({}).to_string(),
    )
    .await
    .0
}

/// The status of a WebSocket handshake sent with this `Origin`.
async fn handshake_with_origin(addr: SocketAddr, origin: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Origin: {origin}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write handshake");
    status_of(&read_head(&mut stream).await)
}

async fn metrics_text(h: &Herald) -> String {
    http_raw(h.api, "GET", "/metrics", &[("X-API-Key", NEW_KEY)], "")
        .await
        .1
}

fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or_default()
}

/// Sends SIGHUP and waits for the reload's last line: "configuration reloaded" or the refusal.
fn reload(h: &mut Herald) -> Value {
    h.hup();
    h.wait_log(WAIT, |v| {
        let m = message(v);
        m == "configuration reloaded" || m.starts_with("configuration reload refused")
    })
    .unwrap_or_else(|| panic!("no reload outcome logged:\n{}", h.log.join("\n")))
}

/// A refused connection token is logged at debug level only.
async fn debug_line_for_a_bad_token(h: &mut Herald) -> bool {
    let mut c = Client::open(&ws_url(h)).await;
    c.send(json!({"id": 1, "connect": {"token": "not-a-token", "name": "t"}}))
        .await;
    let _ = c.closed_within(WAIT).await;
    h.wait_log(Duration::from_millis(500), |v| {
        message(v) == "connection token refused"
    })
    .is_some()
}

#[tokio::test]
async fn sighup_applies_namespaces_limits_keys_api_key_origins_and_log_level() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    first().write(&file);
    let mut h = Herald::start_file(&file);

    // Before: the first file's rules.
    let mut old = connected(&h, OLD_SECRET, "alice").await;
    old.subscribe("chat:a").await;
    let news = old.call("subscribe", json!({"channel": "news:a"})).await;
    assert_eq!(news["error"]["code"], 102, "no news namespace yet: {news}");
    assert_eq!(api_status(&h, OLD_KEY).await, 200);
    assert_eq!(api_status(&h, NEW_KEY).await, 401);
    assert_eq!(
        handshake_with_origin(h.api, "https://one.example").await,
        101
    );
    assert_eq!(
        handshake_with_origin(h.api, "https://two.example").await,
        403
    );
    assert!(!token_accepted(&h, NEW_SECRET).await);
    assert!(!debug_line_for_a_bad_token(&mut h).await, "info level");

    Version {
        level: "debug",
        origins: "[\"https://two.example\"]",
        client: "max_channels = 2",
        api_key: NEW_KEY,
        secret: NEW_SECRET,
        token_extra: "rotation_grace = \"10m\"",
        namespaces: &["chat", "news"],
        extra: "",
    }
    .write(&file);
    let outcome = reload(&mut h);
    assert_eq!(message(&outcome), "configuration reloaded", "{outcome}");
    assert_eq!(outcome["fields"]["restart_needed"], 0, "{outcome}");

    // The connection made before the reload is still there and still receives.
    old.assert_alive().await;
    assert_eq!(api_status(&h, OLD_KEY).await, 401, "the old API key");
    let (status, _) = http_request(
        h.api,
        "POST",
        "/api/publish",
        &[("X-API-Key", NEW_KEY)],
        &json!({"channel": "chat:a", "data": {"n": 1}}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "the new API key");
    assert_eq!(old.publication("chat:a").await["data"]["n"], 1);
    // Limits are read per command: the old connection (#alice, chat:a) is at the new
    // max_channels.
    let more = old.call("subscribe", json!({"channel": "chat:b"})).await;
    assert_eq!(more["error"]["code"], 106, "max_channels = 2: {more}");

    // Tokens signed with the old and the new secret both connect; the new namespace exists.
    assert!(token_accepted(&h, OLD_SECRET).await, "old key within grace");
    let mut fresh = connected(&h, NEW_SECRET, "bob").await;
    fresh.subscribe("news:a").await;

    assert_eq!(
        handshake_with_origin(h.api, "https://one.example").await,
        403
    );
    assert_eq!(
        handshake_with_origin(h.api, "https://two.example").await,
        101
    );
    assert!(
        debug_line_for_a_bad_token(&mut h).await,
        "debug level applied"
    );

    let metrics = metrics_text(&h).await;
    assert_eq!(
        metric(&metrics, "herald_config_reloads_total{result=\"ok\"}"),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "herald_config_last_reload_success_timestamp_seconds"
        ) >= (now() - 60) as f64
    );
}

#[tokio::test]
async fn an_invalid_file_is_refused_naming_the_field_and_the_running_configuration_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    first().write(&file);
    let mut h = Herald::start_file(&file);
    let mut client = connected(&h, OLD_SECRET, "alice").await;
    client.subscribe("chat:a").await;

    let missing_key = dir.path().join("missing.pem");
    let token_extra = format!("rsa_public_key = \"{}\"", missing_key.display());
    let bad = [
        (
            Version {
                client: "max_channels = 0",
                api_key: NEW_KEY,
                ..first()
            },
            "client.max_channels",
        ),
        (
            Version {
                level: "verbose",
                api_key: NEW_KEY,
                ..first()
            },
            "log.level",
        ),
        (
            Version {
                token_extra: &token_extra,
                api_key: NEW_KEY,
                secret: NEW_SECRET,
                ..first()
            },
            "client.token.rsa_public_key",
        ),
    ];
    for (version, field) in &bad {
        version.write(&file);
        let outcome = reload(&mut h);
        assert!(
            message(&outcome).starts_with("configuration reload refused"),
            "{outcome}"
        );
        let error = outcome["fields"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "names {field}: {outcome}");
    }
    std::fs::write(&file, "[client\nmax_channels = 3\n").expect("write");
    let outcome = reload(&mut h);
    assert!(
        message(&outcome).starts_with("configuration reload refused"),
        "{outcome}"
    );

    assert!(h.running(), "the process keeps running");
    client.assert_alive().await;
    // Nothing of the refused files applies: the first API key, the first secret only.
    assert_eq!(api_status(&h, OLD_KEY).await, 200);
    assert_eq!(api_status(&h, NEW_KEY).await, 401);
    assert!(!token_accepted(&h, NEW_SECRET).await);
    assert!(token_accepted(&h, OLD_SECRET).await);
    let metrics = http_raw(h.api, "GET", "/metrics", &[("X-API-Key", OLD_KEY)], "")
        .await
        .1;
    assert_eq!(
        metric(&metrics, "herald_config_reloads_total{result=\"refused\"}"),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "herald_config_reloads_total{result=\"ok\"}"),
        0.0
    );
}

#[tokio::test]
async fn restart_only_fields_are_named_and_keep_their_running_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    Version {
        extra: "[node]\nname = \"first-name\"",
        ..first()
    }
    .write(&file);
    let mut h = Herald::start_file(&file);
    let mut client = connected(&h, OLD_SECRET, "alice").await;

    // A rename and a new connection limit need a restart; the key rotation with no grace
    // applies at once and ends the old key.
    Version {
        extra: "[node]\nname = \"second-name\"",
        client: "max_channels = 8\nmax_connections = 10",
        secret: NEW_SECRET,
        token_extra: "rotation_grace = \"0s\"",
        ..first()
    }
    .write(&file);
    h.hup();
    for field in ["node", "client.max_connections"] {
        let warning = h
            .wait_log(WAIT, |v| {
                v["level"] == "WARN" && v["fields"]["field"] == field
            })
            .unwrap_or_else(|| panic!("no warning naming {field}:\n{}", h.log.join("\n")));
        assert_eq!(
            message(&warning),
            format!("{field}: needs a restart; kept the running value")
        );
    }
    let done = h
        .wait_log(WAIT, |v| message(v) == "configuration reloaded")
        .expect("reloaded");
    assert_eq!(done["fields"]["restart_needed"], 2, "{done}");

    let (status, info) = http_request(
        h.api,
        "POST",
        "/api/info",
        &[("X-API-Key", OLD_KEY)],
        &json!({}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{info}");
    let names: Vec<&str> = info["result"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["first-name"], "the running name stays");
    client.assert_alive().await;
    assert!(token_accepted(&h, NEW_SECRET).await);
    assert!(
        !token_accepted(&h, OLD_SECRET).await,
        "rotation_grace = 0s ends the old key at once"
    );
}

/// A PEM of herald-auth's test keys.
fn test_key(name: &str) -> String {
    let path = format!(
        "{}/../herald-auth/tests/keys/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

async fn rs256_accepted(h: &Herald, private: &str) -> bool {
    let claims = json!({"sub": "probe", "exp": now() + 3600});
    let token = herald_auth::sign(&claims, "RS256", &test_key(private), None).expect("sign");
    let mut c = Client::open(&ws_url(h)).await;
    c.send(json!({"id": 1, "connect": {"token": token, "name": "t"}}))
        .await;
    c.next_within(WAIT)
        .await
        .is_some_and(|reply| reply.get("connect").is_some())
}

#[tokio::test]
async fn a_key_file_rewritten_in_place_is_a_rotation_with_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    let key_file = dir.path().join("token.pem");
    std::fs::write(&key_file, test_key("rsa_public")).expect("key written");
    let token_extra = format!("rsa_public_key = \"{}\"", key_file.display());
    let version = Version {
        token_extra: &token_extra,
        ..first()
    };
    version.write(&file);
    let mut h = Herald::start_file(&file);
    assert!(rs256_accepted(&h, "rsa_private").await);
    assert!(!rs256_accepted(&h, "rsa2_private").await);

    // The configuration file is unchanged: only the key file's content is new.
    std::fs::write(&key_file, test_key("rsa2_public")).expect("key rewritten");
    let outcome = reload(&mut h);
    assert_eq!(message(&outcome), "configuration reloaded", "{outcome}");
    assert!(rs256_accepted(&h, "rsa2_private").await, "the new key");
    assert!(
        rs256_accepted(&h, "rsa_private").await,
        "the old key within client.token.rotation_grace (1h by default)"
    );
    assert!(
        token_accepted(&h, OLD_SECRET).await,
        "the HMAC secret stays"
    );
}

// Multi-threaded: the backend serves while `Herald` blocks its thread reading the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_a_connect_hook_in_force() {
    use support::backend::{Backend, Reply};
    let backend =
        Backend::start(|_| Reply::Json(json!({"result": {"user": "from-backend"}}))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    first().write(&file);
    let mut h = Herald::start_file(&file);
    let without_token = |h: &Herald| {
        let url = ws_url(h);
        async move {
            let mut c = Client::open(&url).await;
            c.send(json!({"id": 1, "connect": {"name": "t"}})).await;
            c.next_within(WAIT)
                .await
                .is_some_and(|reply| reply.get("connect").is_some())
        }
    };
    assert!(!without_token(&h).await, "no hook, no token: refused");

    let proxy = format!(
        "[proxy]\nconnect_endpoint = \"{}\"",
        backend.url("/connect")
    );
    Version {
        extra: &proxy,
        ..first()
    }
    .write(&file);
    let outcome = reload(&mut h);
    assert_eq!(message(&outcome), "configuration reloaded", "{outcome}");
    assert!(without_token(&h).await, "the backend authenticates");
    assert_eq!(backend.requests("/connect").len(), 1);
}

#[tokio::test]
async fn a_reload_reads_the_set_overrides_of_the_command_line_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("herald.toml");
    first().write(&file);
    let mut h = Herald::start_file_with(&file, &["--set", "api.key=\"key-from-set\""]);
    assert_eq!(api_status(&h, "key-from-set").await, 200);
    Version {
        api_key: NEW_KEY,
        client: "max_channels = 2",
        ..first()
    }
    .write(&file);
    let outcome = reload(&mut h);
    assert_eq!(message(&outcome), "configuration reloaded", "{outcome}");
    assert_eq!(
        api_status(&h, "key-from-set").await,
        200,
        "--set still wins"
    );
    assert_eq!(api_status(&h, NEW_KEY).await, 401);
    // The file's other change applied: #carol and chat:a fill max_channels = 2.
    let mut c = connected(&h, OLD_SECRET, "carol").await;
    c.subscribe("chat:a").await;
    let more = c.call("subscribe", json!({"channel": "chat:b"})).await;
    assert_eq!(more["error"]["code"], 106, "{more}");
}
