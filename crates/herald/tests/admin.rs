//! The admin console through real sockets: no data without credentials (every endpoint), the
//! login and its rate limit, tampered and expired sessions, CSRF tokens on every state change,
//! the admin token, sessions shared by nodes with one secret, where the console is served, the
//! `connections` API method it lists users with, and the device list with last positions.

mod support;

use herald::config::Config;
use herald::edges::admin::Signer;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const PASSWORD: &str = "admin-test-password";
const ADMIN_SECRET: &str = "admin-test-secret-admin-test-secret-0123";
const ADMIN_TOKEN: &str = "admin-test-token-for-scripts";

fn with_admin(c: &mut Config) {
    c.admin.password = PASSWORD.into();
    c.admin.secret = ADMIN_SECRET.into();
    c.admin.token = ADMIN_TOKEN.into();
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The session cookie's value from `Set-Cookie`.
    fn session(&self) -> String {
        let cookie = self.header("set-cookie").expect("Set-Cookie");
        let value = cookie
            .strip_prefix("herald_admin=")
            .and_then(|rest| rest.split(';').next())
            .expect("herald_admin cookie");
        value.to_string()
    }
}

async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let (status, head, body) = http_exchange(addr, &request, WAIT).await;
    Reply { status, head, body }
}

async fn login(ts: &TestServer, password: &str) -> Reply {
    send(
        ts.addr,
        "POST",
        "/admin/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("password={password}"),
    )
    .await
}

/// Logs in; returns the session cookie and its CSRF token (read from the console page).
async fn session(ts: &TestServer) -> (String, String) {
    let reply = login(ts, PASSWORD).await;
    assert_eq!(reply.status, 303, "{}", reply.body);
    let session = reply.session();
    let page = send(
        ts.addr,
        "GET",
        "/admin",
        &[("Cookie", &format!("herald_admin={session}"))],
        "",
    )
    .await;
    assert_eq!(page.status, 200);
    let csrf = page
        .body
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the console carries its CSRF token")
        .to_string();
    (session, csrf)
}

/// Reads what `client` gets for a moment: no publication may be among it (join pushes of its
/// personal channel may).
async fn no_publication(client: &mut Client) {
    while let Some(message) = client.next_within(Duration::from_millis(300)).await {
        assert!(
            message["push"]["pub"].is_null(),
            "unexpected publication: {message}"
        );
    }
}

const GETS: [&str; 5] = [
    "/admin/api/overview",
    "/admin/api/channels?q=chat",
    "/admin/api/presence?channel=chat:room",
    "/admin/api/connections?user=alice",
    "/admin/api/devices",
];
const POSTS: [(&str, &str); 3] = [
    (
        "/admin/api/publish",
        r#"{"channel":"chat:room","data":{"x":1}}"#,
    ),
    ("/admin/api/disconnect", r#"{"user":"alice"}"#),
    ("/admin/logout", "csrf=x"),
];

/// Every data endpoint answers 401 and nothing else to `headers`.
async fn assert_locked(ts: &TestServer, headers: &[(&str, &str)], what: &str) {
    for path in GETS {
        let reply = send(ts.addr, "GET", path, headers, "").await;
        assert_eq!(reply.status, 401, "{what}: GET {path}: {}", reply.body);
        assert_eq!(
            reply.json(),
            json!({"error": {"code": 401, "message": "log in at /admin first"}}),
            "{what}: GET {path}"
        );
    }
    for (path, body) in POSTS {
        let mut with_type = headers.to_vec();
        with_type.push(("Content-Type", "application/json"));
        let reply = send(ts.addr, "POST", path, &with_type, body).await;
        assert_eq!(reply.status, 401, "{what}: POST {path}: {}", reply.body);
    }
    // The page itself is the login form, without any token or number.
    let page = send(ts.addr, "GET", "/admin", headers, "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("action=\"/admin/login\""), "{what}");
    assert!(!page.body.contains("csrf-token"), "{what}");
}

#[tokio::test]
async fn no_endpoint_answers_without_valid_credentials() {
    let mut ts = TestServer::with(with_admin).await;
    let mut alice = ts.client("alice").await;
    alice.subscribe("chat:room").await;
    assert_locked(&ts, &[], "no credentials").await;
    let (session, _) = session(&ts).await;
    // One changed character of the signature, of the expiry, or another cluster's secret.
    let mut tampered = session.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (expiry, rest) = session.split_once('.').unwrap();
    let extended = format!("{}.{rest}", expiry.parse::<u64>().unwrap() + 3600);
    let foreign =
        Signer::new("another-secret-another-secret-another", PASSWORD).issue(now() as u64 + 3600);
    let expired = Signer::new(ADMIN_SECRET, PASSWORD).issue(now() as u64 - 1);
    let before = ts.metrics().await;
    for (what, cookie) in [
        ("tampered signature", tampered),
        ("extended expiry", extended),
        ("foreign secret", foreign),
        ("expired", expired.clone()),
        ("garbage", "x".into()),
    ] {
        let header = format!("herald_admin={cookie}");
        assert_locked(&ts, &[("Cookie", &header)], what).await;
    }
    assert_locked(
        &ts,
        &[("Authorization", "Bearer not-the-admin-token")],
        "wrong token",
    )
    .await;
    // The API key is not an admin credential.
    assert_locked(&ts, &[("X-API-Key", API_KEY)], "API key").await;
    let after = ts.metrics().await;
    let refused = |text: &str, reason: &str| {
        metric(
            text,
            &format!("herald_admin_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(refused(&after, "expired") > refused(&before, "expired"));
    assert!(refused(&after, "invalid") > refused(&before, "invalid"));
    // Nothing above reached alice.
    alice.assert_alive().await;
    no_publication(&mut alice).await;
    // The same expired check holds for the page: it shows the login form.
    let page = send(
        ts.addr,
        "GET",
        "/admin",
        &[("Cookie", &format!("herald_admin={expired}"))],
        "",
    )
    .await;
    assert!(page.body.contains("action=\"/admin/login\""));
    ts.shutdown().await;
}

#[tokio::test]
async fn login_opens_a_session_with_a_strict_cookie_and_the_console_shows_the_cluster() {
    let mut ts = TestServer::with(with_admin).await;
    let wrong = login(&ts, "not-the-password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    assert!(wrong.body.contains("Wrong password."));
    let ok = login(&ts, PASSWORD).await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.header("location").as_deref(), Some("/admin"));
    let cookie = ok.header("set-cookie").unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/admin",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let header = format!("herald_admin={}", ok.session());
    let page = send(ts.addr, "GET", "/admin", &[("Cookie", &header)], "").await;
    assert!(page.body.contains("id=\"stat-clients\""));
    // The map's security headers, stricter: no inline script, no framing.
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        page.header("referrer-policy").as_deref(),
        Some("strict-origin")
    );
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    for asset in ["/admin/admin.js", "/admin/admin.css"] {
        let reply = send(ts.addr, "GET", asset, &[], "").await;
        assert_eq!(reply.status, 200, "{asset}");
        assert!(reply.header("content-security-policy").is_some());
        // The SVG namespace is a name, not an address.
        let body = reply.body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{asset} loads nothing from elsewhere"
        );
    }
    let mut alice = ts.client("alice").await;
    alice.subscribe("chat:room").await;
    let overview = send(
        ts.addr,
        "GET",
        "/admin/api/overview",
        &[("Cookie", &header)],
        "",
    )
    .await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert_eq!(
        overview.header("cache-control").as_deref(),
        Some("no-store")
    );
    let o = overview.json();
    assert_eq!(o["totals"]["nodes"], 1);
    assert_eq!(o["totals"]["clients"], 1);
    // chat:room and alice's personal channel.
    assert_eq!(o["totals"]["subscriptions"], 2);
    let channels = send(
        ts.addr,
        "GET",
        "/admin/api/channels?q=room",
        &[("Cookie", &header)],
        "",
    )
    .await
    .json();
    assert_eq!(channels["channels"][0]["channel"], "chat:room");
    assert_eq!(channels["channels"][0]["subscribers"], 1);
    assert_eq!(channels["channels"][0]["presence"]["num_users"], 1);
    let connections = send(
        ts.addr,
        "GET",
        "/admin/api/connections?user=alice",
        &[("Cookie", &header)],
        "",
    )
    .await
    .json();
    assert_eq!(connections["total"], 1);
    let (_, info) = connections["connections"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(
        info["state"]["channels"],
        json!({"#alice": {}, "chat:room": {}})
    );
    assert_eq!(info["transport"], "websocket");
    let logins = ts.metrics().await;
    assert_eq!(
        metric(&logins, "herald_admin_logins_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &logins,
            "herald_admin_logins_total{result=\"wrong password\"}"
        ),
        1.0
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn every_state_change_needs_the_sessions_csrf_token() {
    let mut ts = TestServer::with(with_admin).await;
    let (session, csrf) = session(&ts).await;
    let (_, other_csrf) = self::session(&ts).await;
    let cookie = format!("herald_admin={session}");
    let mut alice = ts.client("alice").await;
    alice.subscribe("chat:room").await;
    let publish = r#"{"channel":"chat:room","data":{"text":"from admin"}}"#;
    let json_type = ("Content-Type", "application/json");
    let foreign = "http://evil.example";
    for (what, headers) in [
        ("no token", vec![("Cookie", cookie.as_str()), json_type]),
        (
            "another session's token",
            vec![
                ("Cookie", cookie.as_str()),
                json_type,
                ("X-CSRF-Token", other_csrf.as_str()),
            ],
        ),
        (
            "foreign origin",
            vec![
                ("Cookie", cookie.as_str()),
                json_type,
                ("X-CSRF-Token", csrf.as_str()),
                ("Origin", foreign),
            ],
        ),
    ] {
        for (path, body) in [
            ("/admin/api/publish", publish),
            ("/admin/api/disconnect", r#"{"user":"alice"}"#),
        ] {
            let reply = send(ts.addr, "POST", path, &headers, body).await;
            assert_eq!(reply.status, 403, "{what}: {path}: {}", reply.body);
        }
        let reply = send(
            ts.addr,
            "POST",
            "/admin/logout",
            &headers,
            &format!("csrf={}", if what == "no token" { "" } else { &other_csrf }),
        )
        .await;
        assert_eq!(reply.status, 403, "{what}: logout");
    }
    no_publication(&mut alice).await;
    // A form post (no JSON) is refused even with the token.
    let form = send(
        ts.addr,
        "POST",
        "/admin/api/publish",
        &[
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Content-Type", "text/plain"),
        ],
        publish,
    )
    .await;
    assert_eq!(form.status, 415);
    // A body over 256 KiB is not read.
    let huge = format!(
        r#"{{"channel":"chat:room","data":"{}"}}"#,
        "x".repeat(300 << 10)
    );
    let reply = send(
        ts.addr,
        "POST",
        "/admin/api/publish",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf), json_type],
        &huge,
    )
    .await;
    assert_eq!(reply.status, 413);
    let own_origin = format!("http://{}", ts.addr);
    let good = [
        ("Cookie", cookie.as_str()),
        json_type,
        ("X-CSRF-Token", csrf.as_str()),
        ("Origin", own_origin.as_str()),
    ];
    let reply = send(ts.addr, "POST", "/admin/api/publish", &good, publish).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let publication = alice.publication("chat:room").await;
    assert_eq!(publication["data"], json!({"text": "from admin"}));
    // An API error comes back as the API words it.
    let bad = send(
        ts.addr,
        "POST",
        "/admin/api/publish",
        &good,
        r#"{"channel":"chat:room"}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("data"));
    let reply = send(
        ts.addr,
        "POST",
        "/admin/api/disconnect",
        &good,
        r#"{"user":"alice"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        alice.closed_within(WAIT).await.is_some(),
        "alice is disconnected"
    );
    let metrics = ts.metrics().await;
    assert!(metric(&metrics, "herald_admin_refused_total{reason=\"csrf\"}") >= 4.0);
    assert!(metric(&metrics, "herald_admin_refused_total{reason=\"origin\"}") >= 2.0);
    // Logout with the token clears the cookie.
    let out = send(
        ts.addr,
        "POST",
        "/admin/logout",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    ts.shutdown().await;
}

#[tokio::test]
async fn the_admin_token_reaches_the_data_without_a_session() {
    let mut ts = TestServer::with(with_admin).await;
    let mut alice = ts.client("alice").await;
    alice.subscribe("chat:room").await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    for path in GETS {
        let reply = send(ts.addr, "GET", path, &auth, "").await;
        if path.ends_with("devices") {
            // Reached: it is the API's answer for a node without device ingest.
            assert_eq!(reply.status, 400, "{path}: {}", reply.body);
            assert_eq!(reply.json()["error"]["code"], 108);
        } else {
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        }
    }
    let reply = send(
        ts.addr,
        "POST",
        "/admin/api/publish",
        &auth,
        r#"{"channel":"chat:room","data":1}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(alice.publication("chat:room").await["data"], 1);
    ts.shutdown().await;
}

#[tokio::test]
async fn login_attempts_are_limited_per_address() {
    let mut ts = TestServer::with(|c| {
        with_admin(c);
        c.admin.login_attempts_per_minute = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(login(&ts, "guess-guess-guess").await.status, 401);
    }
    // Over the limit even the right password gets no session.
    let limited = login(&ts, PASSWORD).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("set-cookie").is_none());
    assert_eq!(limited.header("retry-after").as_deref(), Some("60"));
    let metrics = ts.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_admin_logins_total{result=\"limited\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "herald_admin_logins_total{result=\"ok\"}"),
        0.0
    );
    ts.shutdown().await;
}

#[tokio::test]
async fn a_session_is_valid_on_every_node_with_the_same_secret() {
    let mut a = TestServer::with(with_admin).await;
    let mut b = TestServer::with(with_admin).await;
    let mut c = TestServer::with(|c| {
        with_admin(c);
        c.admin.secret = "a-different-secret-a-different-secret".into();
    })
    .await;
    let (session, csrf) = session(&a).await;
    let cookie = format!("herald_admin={session}");
    let on = |ts: &TestServer| {
        let cookie = cookie.clone();
        let addr = ts.addr;
        async move {
            send(
                addr,
                "GET",
                "/admin/api/overview",
                &[("Cookie", &cookie)],
                "",
            )
            .await
            .status
        }
    };
    assert_eq!(on(&b).await, 200);
    assert_eq!(on(&c).await, 401);
    // Its CSRF token too.
    let reply = send(
        b.addr,
        "POST",
        "/admin/api/publish",
        &[
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Content-Type", "application/json"),
        ],
        r#"{"channel":"chat:x","data":1}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for ts in [&mut a, &mut b, &mut c] {
        ts.shutdown().await;
    }
}

#[tokio::test]
async fn the_console_is_served_only_with_credentials_and_only_on_the_internal_listener() {
    let mut plain = TestServer::start().await;
    assert_eq!(send(plain.addr, "GET", "/admin", &[], "").await.status, 404);
    assert_eq!(
        send(plain.addr, "GET", "/admin/api/overview", &[], "")
            .await
            .status,
        404
    );
    plain.shutdown().await;
    let mut off = TestServer::with(|c| {
        with_admin(c);
        c.admin.enabled = false;
    })
    .await;
    assert_eq!(send(off.addr, "GET", "/admin", &[], "").await.status, 404);
    off.shutdown().await;
    let mut split = TestServer::with(|c| {
        with_admin(c);
        c.http.internal_listen = "127.0.0.1:0".into();
    })
    .await;
    assert_eq!(send(split.addr, "GET", "/admin", &[], "").await.status, 404);
    let internal = split
        .server
        .as_ref()
        .unwrap()
        .internal_addr
        .expect("internal listener");
    let page = send(internal, "GET", "/admin", &[], "").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("action=\"/admin/login\""));
    split.shutdown().await;
}

#[tokio::test]
async fn the_connections_method_lists_a_users_connections_on_this_node() {
    let mut ts = TestServer::with(with_admin).await;
    let mut one = ts.client("bob").await;
    one.subscribe("chat:a").await;
    one.subscribe("chat:b").await;
    let _two = ts.client("bob").await;
    let result = ts.api_ok("connections", json!({"user": "bob"})).await;
    assert_eq!(result["total"], 2);
    let lists: Vec<Value> = result["connections"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["state"]["channels"].clone())
        .collect();
    // Every connection is in its user's personal channel too.
    assert!(
        lists.contains(&json!({"#bob": {}, "chat:a": {}, "chat:b": {}})),
        "{result}"
    );
    assert!(lists.contains(&json!({"#bob": {}})), "{result}");
    for connection in result["connections"].as_object().unwrap().values() {
        assert_eq!(connection["transport"], "websocket");
        assert_eq!(connection["protocol"], "json");
        assert_eq!(connection["user"], "bob");
    }
    assert_eq!(
        ts.api_ok("connections", json!({"user": "nobody"})).await,
        json!({"node": ts.node().uid, "total": 0, "connections": {}})
    );
    for bad in [
        json!({}),
        json!({"user": "bob", "expression": "user == 'bob'"}),
    ] {
        let (status, error) = ts.api("connections", bad.clone()).await;
        assert_eq!(status, 200);
        assert_eq!(error["error"]["code"], 107, "{bad}: {error}");
    }
    ts.shutdown().await;
}

#[tokio::test]
async fn the_device_list_shows_each_devices_last_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ts = start_with_devices(dir.path(), "never", with_admin).await;
    let jsonl = addrs(&ts).jsonl.expect("jsonl listener");
    let mut stream = tokio::net::TcpStream::connect(jsonl)
        .await
        .expect("connect");
    let now_ms = now() * 1000;
    let lines = format!(
        "{}\n{}\n",
        json!({"id": "truck-9", "time": now_ms - 1000, "lat": 52.5, "lon": 13.4, "speed": 10}),
        json!({"id": "truck-9", "time": now_ms, "lat": 52.6, "lon": 13.5, "speed": 20}),
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, lines.as_bytes())
        .await
        .expect("write");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let deadline = tokio::time::Instant::now() + WAIT;
    let device = loop {
        let reply = send(
            ts.addr,
            "GET",
            "/admin/api/devices",
            &[("Authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let list = reply.json()["devices"].clone();
        let found = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["device"] == "truck-9" && d["position"]["lat"] == 52.6)
            .cloned();
        if let Some(device) = found {
            break device;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "truck-9 not listed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(device["protocol"], "jsonl");
    assert_eq!(device["position"]["lon"], 13.5);
    drop(stream);
    ts.shutdown().await;
}
