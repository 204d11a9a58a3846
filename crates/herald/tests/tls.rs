//! Native TLS, through the real binary: wss and https with a test CA, the handshake bound, a
//! plain-HTTP request on the TLS port, certificate rotation by file change (and a bad one that is
//! refused), a mismatched pair at start, and a GT06 tracker over TLS.

mod support;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::binary::Herald;
use support::{metric, token, Client, API_KEY, SECRET, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A test certificate authority that issues server certificates for `localhost`/127.0.0.1.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// A server certificate with its key, as PEM, and the DER a client sees.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "herald test CA");
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for localhost, named `cn`, valid until the start of `expires_year`.
    fn issue(&self, cn: &str, expires_year: i32) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_after = rcgen::date_time_ymd(expires_year, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client configuration that trusts only this CA and offers ALPN `http/1.1`.
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("ca trusted");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// Unix seconds of `year`-01-01T00:00:00Z.
fn new_year(year: i32) -> i64 {
    let days: i64 = (1970..year)
        .map(|y| {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    days * 86_400
}

/// Writes the pair the way a certificate manager should: each file replaced by a rename.
fn install(dir: &Path, issued: &Issued) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    replace(&cert, issued.cert_pem.as_bytes());
    replace(&key, issued.key_pem.as_bytes());
    (cert, key)
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn http_tls(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}",
        cert.display(),
        key.display()
    )
}

const CHAT: &str = "[[channel.namespaces]]\nname = \"chat\"\nallow_subscribe_for_client = true\n\
                    allow_publish_for_subscriber = true\n";

fn server_config() -> String {
    format!("[api]\nkey = \"{API_KEY}\"\n\n[client.token]\nhmac_secret = \"{SECRET}\"\n\n{CHAT}")
}

async fn tls_connect(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(client.clone()).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}

/// The certificate a new handshake gets.
async fn served_cert(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let tls = tls_connect(addr, client).await;
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0]
        .clone()
}

/// One HTTP/1.1 request over TLS with the API key and a JSON body; returns (status, body).
async fn https(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let headers = format!("X-API-Key: {API_KEY}\r\nContent-Type: application/json\r\n");
    let (head, body) = https_with(addr, client, method, path, &headers, body).await;
    (support::status_of(&head), body)
}

/// One HTTP/1.1 request over TLS with `headers` (lines ending in CRLF); returns (head, body).
async fn https_with(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (String, String) {
    let mut tls = tls_connect(addr, client).await;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_string(), body.to_string())
}

async fn api(h: &Herald, client: &Arc<rustls::ClientConfig>, method: &str, params: Value) -> Value {
    let (status, body) = https(
        h.api,
        client,
        "POST",
        &format!("/api/{method}"),
        &params.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{method}: {body}");
    let reply: Value = serde_json::from_str(&body).expect("json reply");
    assert!(reply.get("error").is_none(), "{method}: {reply}");
    reply["result"].clone()
}

async fn metrics(h: &Herald, client: &Arc<rustls::ClientConfig>) -> String {
    https(h.api, client, "GET", "/metrics", "").await.1
}

fn connector(ca: &Ca) -> tokio_websockets::Connector {
    tokio_websockets::Connector::Rustls(tokio_rustls::TlsConnector::from(ca.client()))
}

/// A wss client, connected and subscribed to `channel`.
async fn subscriber(h: &Herald, ca: &Ca, user: &str, channel: &str) -> Client {
    let url = format!("wss://localhost:{}/connection/websocket", h.api.port());
    let mut client = Client::open_tls(&url, &connector(ca)).await;
    client.connect(&token(user)).await;
    client.subscribe(channel).await;
    client
}

/// A publication from the API reaches `client`, and one from `client` comes back to it.
async fn round_trip(
    h: &Herald,
    ca: &Arc<rustls::ClientConfig>,
    client: &mut Client,
    channel: &str,
    n: u32,
) {
    api(
        h,
        ca,
        "publish",
        json!({"channel": channel, "data": {"n": n}}),
    )
    .await;
    assert_eq!(client.publication(channel).await["data"]["n"], n);
    let reply = client
        .call("publish", json!({"channel": channel, "data": {"n": n + 1}}))
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(client.publication(channel).await["data"]["n"], n + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_round_trip_https_health_and_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let leaf = ca.issue("herald one", 2031);
    let (cert, key) = install(dir.path(), &leaf);
    let admin = "[admin]\npassword = \"tls-admin-password\"\n\
                 secret = \"tls-admin-secret-tls-admin-secret-0123\"\n";
    let config = format!("{}\n{admin}", server_config());
    let h = Herald::start_http(dir.path(), &http_tls(&cert, &key, ""), &config);
    let client = ca.client();

    let tls = tls_connect(h.api, &client).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);
    let (status, body) = https(h.api, &client, "GET", "/health", "").await;
    assert_eq!(status, 200, "{body}");
    // A login over TLS gets a Secure session cookie.
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    let (head, _) = https_with(
        h.api,
        &client,
        "POST",
        "/admin/login",
        form,
        "password=tls-admin-password",
    )
    .await;
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    assert!(cookie.contains("; Secure"), "{cookie}");

    let mut sub = subscriber(&h, &ca, "alice", "chat:tls").await;
    round_trip(&h, &client, &mut sub, "chat:tls", 1).await;

    let text = metrics(&h, &client).await;
    assert_eq!(
        metric(
            &text,
            "herald_tls_certificate_expiry_timestamp_seconds{listener=\"public\"}"
        ),
        new_year(2031) as f64,
        "{text}"
    );
}

/// Messages larger than a TLS record, and a stream of them, cross wss whole and in order both
/// ways (the session's non-blocking writes and reads over rustls' buffers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_and_bursts_cross_wss_whole_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = install(dir.path(), &ca.issue("herald", 2031));
    // A small kernel send buffer, so writes block and TLS records wait in rustls. The outbox
    // holds the whole 3 MB burst: the publisher may outrun the client, which is then behind by
    // more than the default 1 MB (a slow consumer, closed with 3008), not a wss failure.
    let config = format!(
        "{}\n[client]\nsend_buffer = 4096\nmax_outbox_bytes = 4194304\n",
        server_config()
    );
    let h = Herald::start_http(dir.path(), &http_tls(&cert, &key, ""), &config);
    let client = ca.client();
    let mut sub = subscriber(&h, &ca, "dave", "chat:big").await;

    // From the client: 50 KB, about four TLS records.
    let big = "x".repeat(50_000);
    let reply = sub
        .call(
            "publish",
            json!({"channel": "chat:big", "data": {"text": big}}),
        )
        .await;
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(
        sub.publication("chat:big").await["data"]["text"],
        big.as_str()
    );

    // While the client does not read: 25 publications of 30 KB, then read them all.
    for n in 0..25u32 {
        let body = json!({"channel": "chat:big", "data": {"n": n, "pad": "z".repeat(30_000)}});
        let (status, reply) =
            https(h.api, &client, "POST", "/api/publish", &body.to_string()).await;
        assert_eq!(status, 200, "{reply}");
    }
    for n in 0..25u32 {
        assert_eq!(sub.publication("chat:big").await["data"]["n"], n);
    }

    // From the API while the client reads: 100 publications of 30 KB.
    let (addr, config) = (h.api, client.clone());
    let publisher = tokio::spawn(async move {
        for n in 0..100u32 {
            let body = json!({"channel": "chat:big", "data": {"n": n, "pad": "y".repeat(30_000)}});
            let (status, reply) =
                https(addr, &config, "POST", "/api/publish", &body.to_string()).await;
            assert_eq!(status, 200, "{reply}");
        }
    });
    for n in 0..100u32 {
        let publication = sub.publication("chat:big").await;
        assert_eq!(publication["data"]["n"], n);
        assert_eq!(
            publication["data"]["pad"].as_str().map(str::len),
            Some(30_000)
        );
    }
    publisher.await.expect("publisher");
    round_trip(&h, &client, &mut sub, "chat:big", 1000).await;
}

/// The last TLS records of a burst reach a client that takes them a few KB at a time, with no
/// later event (publication, ping) to push them out: the session keeps waiting for the socket
/// while rustls holds records, not only while frames are left to encrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_a_slow_reader_to_its_last_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = install(dir.path(), &ca.issue("herald", 2031));
    let config = format!("{}\n[client]\nsend_buffer = 4096\n", server_config());
    let h = Herald::start_http(dir.path(), &http_tls(&cert, &key, ""), &config);
    let client = ca.client();
    // A small receive window (set before connecting): each write the server makes is smaller
    // than what rustls holds, so the burst ends with records still in rustls.
    let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
    tcp.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = tcp.connect(h.api).await.expect("tcp connect");
    let url = format!("wss://localhost:{}/connection/websocket", h.api.port());
    let mut sub = Client::open_tls_on(&url, &connector(&ca), tcp).await;
    sub.connect(&token("erin")).await;
    sub.subscribe("chat:slow").await;

    // Published while the client does not read, then read: the pings come every 25 s, so each
    // publication arriving within WAIT was flushed by the burst's own writes.
    for n in 0..20u32 {
        let body = json!({"channel": "chat:slow", "data": {"n": n, "pad": "s".repeat(30_000)}});
        let (status, reply) =
            https(h.api, &client, "POST", "/api/publish", &body.to_string()).await;
        assert_eq!(status, 200, "{reply}");
    }
    for n in 0..20u32 {
        assert_eq!(sub.publication("chat:slow").await["data"]["n"], n);
    }
}

/// A slow reader is not a stalled one: while the records rustls holds drain a few KB at a time
/// for longer than `client.write_timeout`, the connection stays and gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_wss_reader_is_not_timed_out_while_records_drain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = install(dir.path(), &ca.issue("herald", 2031));
    let config = format!(
        "{}\n[client]\nsend_buffer = 4096\nwrite_timeout = \"1s\"\n",
        server_config()
    );
    let h = Herald::start_http(dir.path(), &http_tls(&cert, &key, ""), &config);
    let client = ca.client();
    // A relay that passes the server's bytes on at about 20 KB/s: 64 KB held by rustls take
    // about three write timeouts to drain, each step of it progress.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("relay");
    let (relay_addr, server) = (relay.local_addr().expect("relay addr"), h.api);
    tokio::spawn(async move {
        let Ok((downstream, _)) = relay.accept().await else {
            return;
        };
        let upstream = tokio::net::TcpSocket::new_v4().expect("socket");
        upstream.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let upstream = upstream.connect(server).await.expect("relay connects");
        let (mut down_read, mut down_write) = downstream.into_split();
        let (mut up_read, mut up_write) = upstream.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut down_read, &mut up_write).await });
        let mut buf = [0u8; 2048];
        while let Ok(n @ 1..) = up_read.read(&mut buf).await {
            if down_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let tcp = TcpStream::connect(relay_addr).await.expect("tcp connect");
    let url = format!("wss://localhost:{}/connection/websocket", relay_addr.port());
    let mut sub = Client::open_tls_on(&url, &connector(&ca), tcp).await;
    sub.connect(&token("frank")).await;
    sub.subscribe("chat:drip").await;

    for n in 0..3u32 {
        let body = json!({"channel": "chat:drip", "data": {"n": n, "pad": "d".repeat(30_000)}});
        let (status, reply) =
            https(h.api, &client, "POST", "/api/publish", &body.to_string()).await;
        assert_eq!(status, 200, "{reply}");
    }
    for n in 0..3u32 {
        assert_eq!(sub.publication("chat:drip").await["data"]["n"], n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_plain_http_clients_are_dropped_while_wss_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = install(dir.path(), &ca.issue("herald", 2031));
    let http = http_tls(&cert, &key, "tls_handshake_timeout = \"1s\"\n");
    let h = Herald::start_http(dir.path(), &http, &server_config());
    let client = ca.client();

    // Opens TCP and never starts a handshake.
    let mut silent = TcpStream::connect(h.api).await.expect("connect");
    let started = tokio::time::Instant::now();
    // Meanwhile an honest client works.
    let mut sub = subscriber(&h, &ca, "bob", "chat:slow").await;
    round_trip(&h, &client, &mut sub, "chat:slow", 1).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the silent connection is closed within the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );

    // Plain HTTP on the TLS port: no HTTP answer, the connection ends.
    let mut plain = TcpStream::connect(h.api).await.expect("connect");
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(ended.is_ok(), "the plain-HTTP connection is closed");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // The server still serves, the open session included.
    assert_eq!(https(h.api, &client, "GET", "/health", "").await.0, 200);
    round_trip(&h, &client, &mut sub, "chat:slow", 10).await;
    let text = metrics(&h, &client).await;
    let failures = "herald_tls_handshake_failures_total{listener=\"public\",reason=";
    assert!(
        metric(&text, &format!("{failures}\"timeout\"}}")) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, &format!("{failures}\"error\"}}")) >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_replaced_reach_new_handshakes_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let first = ca.issue("herald first", 2031);
    let (cert, key) = install(dir.path(), &first);
    let mut h = Herald::start_http(dir.path(), &http_tls(&cert, &key, ""), &server_config());
    let client = ca.client();
    assert_eq!(served_cert(h.api, &client).await, first.der);
    let mut sub = subscriber(&h, &ca, "carol", "chat:rotate").await;

    let second = ca.issue("herald second", 2032);
    install(dir.path(), &second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served_cert(h.api, &client).await != second.der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The connection opened before the rotation goes on.
    round_trip(&h, &client, &mut sub, "chat:rotate", 1).await;
    let text = metrics(&h, &client).await;
    assert_eq!(
        metric(
            &text,
            "herald_tls_certificate_expiry_timestamp_seconds{listener=\"public\"}"
        ),
        new_year(2032) as f64
    );
    assert!(
        metric(
            &text,
            "herald_tls_reloads_total{listener=\"public\",result=\"ok\"}"
        ) >= 1.0
    );

    // A garbage key: refused, the second certificate stays.
    let third = ca.issue("herald third", 2033);
    replace(&cert, third.cert_pem.as_bytes());
    replace(
        &key,
        b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    let errors = "herald_tls_reloads_total{listener=\"public\",result=\"error\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&metrics(&h, &client).await, errors) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad reload not counted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(served_cert(h.api, &client).await, second.der);
    round_trip(&h, &client, &mut sub, "chat:rotate", 10).await;
    h.drain_log();
    assert!(
        h.log
            .iter()
            .any(|l| l.contains("reload failed") && l.contains("http.tls_key")),
        "{}",
        h.log.join("\n")
    );
}

/// SIGHUP (systemctl reload) reloads the certificates at once, without waiting for the poll. The
/// new files get the old ones' modification times, so the poll sees nothing new unless the sizes
/// differ; the new certificate must be served within a second of the signal either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let first = ca.issue("herald hup 1", 2031);
    let (cert, key) = install(dir.path(), &first);
    let mut h = Herald::start_http(dir.path(), &http_tls(&cert, &key, ""), &server_config());
    let client = ca.client();
    assert_eq!(served_cert(h.api, &client).await, first.der);
    let mut sub = subscriber(&h, &ca, "dave", "chat:hup").await;

    let modified = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let (cert_time, key_time) = (modified(&cert), modified(&key));
    let second = ca.issue("herald hup 2", 2032);
    install(dir.path(), &second);
    for (path, time) in [(&cert, cert_time), (&key, key_time)] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(time))
            .expect("set mtime");
    }
    h.hup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while served_cert(h.api, &client).await != second.der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The configuration reload ran too, and the connection opened before it goes on.
    assert!(
        h.wait_log(Duration::from_secs(5), |l| l["fields"]["message"]
            == "configuration reloaded")
            .is_some(),
        "{}",
        h.log.join("\n")
    );
    round_trip(&h, &client, &mut sub, "chat:hup", 1).await;
}

/// The public listener's address, from the start log's `websocket: wss://…` line.
fn public_addr(h: &Herald) -> SocketAddr {
    h.log
        .iter()
        .find_map(|l| l.split("websocket: wss://").nth(1))
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no wss address in the log:\n{}", h.log.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_listener_serves_the_public_pair_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let leaf = ca.issue("herald both", 2031);
    let (cert, key) = install(dir.path(), &leaf);
    let http = http_tls(&cert, &key, "internal_listen = \"127.0.0.1:0\"\n");
    let h = Herald::start_http(dir.path(), &http, &server_config());
    let client = ca.client();
    let public = public_addr(&h);
    assert_ne!(public, h.api);
    for addr in [public, h.api] {
        assert_eq!(served_cert(addr, &client).await, leaf.der);
        assert_eq!(https(addr, &client, "GET", "/health", "").await.0, 200);
    }
    // The API and metrics are on the internal listener only, over TLS.
    assert_eq!(https(public, &client, "GET", "/metrics", "").await.0, 404);
    let text = metrics(&h, &client).await;
    for listener in ["public", "internal"] {
        let gauge =
            format!("herald_tls_certificate_expiry_timestamp_seconds{{listener=\"{listener}\"}}");
        assert_eq!(metric(&text, &gauge), new_year(2031) as f64, "{text}");
    }
}

/// `Server::reload_tls` (what SIGHUP calls) applies new files at once, before any poll, and a bad
/// pair keeps the certificate and names the field.
#[tokio::test]
async fn reload_tls_applies_at_once_and_a_bad_pair_names_its_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let first = ca.issue("first", 2031);
    let (cert, key) = install(dir.path(), &first);
    let ts = support::TestServer::with(|c| {
        c.http.tls_cert = cert.display().to_string();
        c.http.tls_key = key.display().to_string();
    })
    .await;
    let server = ts.server.as_ref().expect("server");
    let client = ca.client();
    assert_eq!(served_cert(ts.addr, &client).await, first.der);

    let second = ca.issue("second", 2032);
    install(dir.path(), &second);
    server.reload_tls().expect("reload");
    assert_eq!(served_cert(ts.addr, &client).await, second.der);

    let other = ca.issue("other", 2033);
    replace(&key, other.key_pem.as_bytes());
    let error = server
        .reload_tls()
        .expect_err("a key of another certificate");
    assert!(error.to_string().starts_with("http.tls_key: "), "{error}");
    std::fs::remove_file(&cert).expect("remove");
    let error = server.reload_tls().expect_err("no certificate file");
    assert!(error.to_string().starts_with("http.tls_cert: "), "{error}");
    assert_eq!(served_cert(ts.addr, &client).await, second.der);
}

#[test]
fn mismatched_or_missing_pair_fails_start_and_checkconfig_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (one, two) = (ca.issue("one", 2031), ca.issue("two", 2031));
    std::fs::write(dir.path().join("cert.pem"), &one.cert_pem).expect("write");
    std::fs::write(dir.path().join("key.pem"), &two.key_pem).expect("write");
    for (cert, field) in [
        ("cert.pem", "http.tls_key"),
        ("missing.pem", "http.tls_cert"),
    ] {
        let config = dir.path().join("herald.toml");
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\n{}\n",
                http_tls(&dir.path().join(cert), &dir.path().join("key.pem"), "")
            ),
        )
        .expect("write config");
        for args in [&["serve", "-c"][..], &["checkconfig"][..]] {
            let out = std::process::Command::new(support::procs::BIN)
                .args(args)
                .arg(&config)
                .env_remove("HERALD_CONFIG")
                .output()
                .expect("run herald");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!out.status.success(), "{args:?} {cert}: {text}");
            assert!(text.contains(field), "{args:?} {cert}: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gt06_login_over_tls_is_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let (cert, key) = install(dir.path(), &ca.issue("trackers", 2031));
    let config = format!(
        "{}\n[devices]\nenabled = true\nspool_dir = \"{}\"\nstore = \"sqlite:{}\"\n\n\
         [devices.listen]\ngt06 = \"127.0.0.1:0\"\nteltonika = \"\"\nh02 = \"\"\nosmand = \"\"\n\
         jsonl = \"\"\n\n[devices.tls]\ncert = \"{}\"\nkey = \"{}\"\nprotocols = [\"gt06\"]\n",
        server_config(),
        dir.path().join("spool").display(),
        dir.path().join("herald.db").display(),
        cert.display(),
        key.display()
    );
    let h = Herald::start(dir.path(), &config);
    let addr = h.devices["gt06"];
    let mut tls = tls_connect(addr, &ca.client()).await;
    // A login from /work/shared/testdata/devices/gt06.txt (serial 9).
    let login = hex("78780d01086471700328358100093f040d0a");
    tls.write_all(&login).await.expect("login");
    let mut ack = [0u8; 10];
    tokio::time::timeout(WAIT, tls.read_exact(&mut ack))
        .await
        .expect("ack in time")
        .expect("ack");
    assert_eq!(
        ack.to_vec(),
        herald_devices::gt06::encode_reply(false, 0x01, 0x0009, &[])
    );
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}
