//! The PHP example backend (`examples/php-backend`) run for real with `php -S`, driven through
//! Herald: connect by session cookie and by app token, subscribe checks, publish moderation, rpc,
//! and a signed webhook that the PHP side verifies and answers by calling Herald's API.

mod support;

use herald::config::NamespaceOptions;
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use support::*;
use tokio::process::{Child, Command};

const WEBHOOK_SECRET: &str = "php-example-secret";

/// `php -S` serving the example on a free port; killed on drop.
struct PhpServer {
    child: Child,
    port: u16,
    events_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl PhpServer {
    /// `None` (with a message) when `php` is not installed; CI installs it.
    async fn start(herald_api: &str) -> Option<PhpServer> {
        match Command::new("php").arg("-v").output().await {
            Ok(out) if out.status.success() => {}
            _ => {
                eprintln!("SKIPPED: `php` is not installed (apt-get install php-cli php-curl); CI runs this test");
                return None;
            }
        }
        let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/php-backend");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let events_log = dir.path().join("events.log");
        let child = Command::new("php")
            .args(["-S", &format!("127.0.0.1:{port}"), "index.php"])
            .current_dir(&example)
            .env("PHP_CLI_SERVER_WORKERS", "4")
            .env("HERALD_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("HERALD_API_URL", herald_api)
            .env("HERALD_API_KEY", API_KEY)
            .env("HERALD_EVENTS_LOG", &events_log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("php -S starts");
        wait_listening(("127.0.0.1", port), "php -S").await;
        Some(PhpServer {
            child,
            port,
            events_log,
            _dir: dir,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for PhpServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn php_example_backend_runs_the_im_scenario() {
    // Herald's API address must be known before php starts: reserve Herald's port first.
    let herald_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let Some(php) = PhpServer::start(&format!("http://127.0.0.1:{herald_port}")).await else {
        return;
    };
    let server = TestServer::with(|c| {
        c.http.listen = format!("127.0.0.1:{herald_port}");
        c.proxy.connect_endpoint = php.url("/centrifugo/connect");
        c.http.allowed_origins = vec!["https://im.example".into()];
        c.proxy.subscribe_endpoint = php.url("/centrifugo/subscribe");
        c.proxy.publish_endpoint = php.url("/centrifugo/publish");
        c.proxy.rpc_endpoint = php.url("/centrifugo/rpc");
        c.proxy.timeout = Duration::from_secs(5);
        c.webhooks.url = php.url("/herald/webhook");
        c.webhooks.secret = WEBHOOK_SECRET.into();
        c.webhooks.events = vec!["disconnect".into(), "join".into()];
        c.channel.namespaces.push(NamespaceOptions {
            name: "im".into(),
            presence: true,
            join_leave: true,
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            proxy_subscribe: true,
            proxy_publish: true,
            ..Default::default()
        });
    })
    .await;

    // Alice: a browser with the session cookie.
    let mut alice =
        Client::open_with_headers(&server.ws_url(), &[("Cookie", "session=sess-alice")]).await;
    let reply = alice.call("connect", json!({})).await;
    let connect = &reply["connect"];
    assert_eq!(connect["data"], json!({"rooms": ["1", "2"]}), "{reply}");
    assert!(connect["subs"].get("im:announcements").is_some(), "{reply}");
    assert!(connect["subs"].get("#alice").is_some(), "{reply}");
    assert_eq!(connect["expires"], true);

    // Bob: an app with a token in the connect data, watching presence.
    let mut bob = Client::open(&server.ws_url()).await;
    let reply = bob
        .call("connect", json!({"data": {"token": "tok-bob"}}))
        .await;
    assert!(reply.get("connect").is_some(), "{reply}");
    bob.subscribe("im:presence").await;

    // Nobody: refused with the backend's code.
    let mut stranger = Client::open(&server.ws_url()).await;
    stranger.send(json!({"id": 1, "connect": {}})).await;
    assert_eq!(
        stranger.closed().await,
        Closed::Code(4501, "login required".into())
    );

    // rpc answered by PHP.
    let reply = alice.call("rpc", json!({"method": "whoami"})).await;
    assert_eq!(
        reply["rpc"]["data"],
        json!({"user": "alice", "name": "Alice", "rooms": ["1", "2"]})
    );
    let reply = alice
        .call(
            "rpc",
            json!({"method": "room.members", "data": {"room": "1"}}),
        )
        .await;
    assert_eq!(reply["rpc"]["data"]["members"], json!(["alice", "bob"]));
    let reply = alice.call("rpc", json!({"method": "nope"})).await;
    assert_eq!(reply["error"]["code"], 1004);

    // Room membership decided by PHP.
    alice.subscribe("im:room-2").await;
    let reply = bob.call("subscribe", json!({"channel": "im:room-2"})).await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");

    // Moderation: refused, then rewritten.
    let reply = alice
        .call(
            "publish",
            json!({"channel": "im:room-2", "data": {"text": "cheap casino"}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 1000, "{reply}");
    let reply = alice
        .call(
            "publish",
            json!({"channel": "im:room-2", "data": {"text": "<b>oh</b> darn"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let publication = alice.publication("im:room-2").await;
    assert_eq!(
        publication["data"],
        json!({"text": "oh ****", "from": "alice", "moderated": true})
    );

    // Webhook: Alice leaves; PHP verifies the signature and publishes to im:presence via the API.
    drop(alice);
    let presence = bob.publication("im:presence").await;
    assert_eq!(presence["data"], json!({"user": "alice", "online": false}));
    let events = php.events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "disconnect" && e["user"] == "alice"),
        "{events:?}"
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "join" && e["channel"] == "im:room-2"));

    // A forged webhook is refused by the PHP side.
    let (status, _) = http_request(
        ([127, 0, 0, 1], php.port).into(),
        "POST",
        "/herald/webhook",
        &[("X-Herald-Signature", "sha256=00")],
        r#"{"event":"disconnect","user":"mallory","time":0}"#,
    )
    .await;
    assert_eq!(status, 401);
}
