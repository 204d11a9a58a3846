//! Keeps docs/api.md honest: runs every `curl` example in it against the real `herald` binary.
//!
//! The server is configured with the ```toml block of docs/api.md marked `<!-- docs-test: config -->`
//! (the configuration the page says its examples use), on a free loopback port. Every ```bash block
//! that starts with `curl` runs through `sh -c`, with `http://localhost:8000` replaced by the real
//! address. It must exit 0, and its output must not contain `"error"`, unless the block is preceded by
//! `<!-- expect-error -->`, in which case the output must contain it.
//!
//! A WebSocket client connected as `alice` (subscribed to `chat:room1`, and to `site:everyone` through
//! its token) checks that the publish examples really deliver, and that the disconnect example closes
//! the connection with the code it shows. When `php` with the curl extension is installed, the PHP
//! blocks marked `<!-- docs-test: php -->` run too, and the token from the block marked
//! `<!-- docs-test: php-token -->` must be accepted by the server.
//!
//! The configuration errors shown in docs/configuration.md are checked too: a ```toml block marked
//! `<!-- docs-test: config-file -->` is written as `herald.toml`, each line of the next ```sh block
//! marked `<!-- docs-test: config-run -->` runs next to it, and together they must print exactly
//! the block marked `<!-- docs-test: config-output -->` that follows.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// The address the documentation uses; replaced by the test server's address.
const DOCS_HOST: &str = "http://localhost:8000";
const WAIT: Duration = Duration::from_secs(10);

/// A fenced code block and the HTML comment marker right above it, if any.
#[derive(Debug)]
struct Block {
    lang: String,
    marker: Option<String>,
    text: String,
    line: usize,
}

fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut previous: Option<&str> = None;
    let mut open: Option<Block> = None;
    for (index, line) in markdown.lines().enumerate() {
        if let Some(block) = open.as_mut() {
            if line.trim_start() == "```" {
                blocks.extend(open.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        }
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            let marker = previous
                .and_then(|p| p.trim().strip_prefix("<!--"))
                .and_then(|p| p.strip_suffix("-->"))
                .map(|m| m.trim().to_string());
            open = Some(Block {
                lang: lang.trim().to_string(),
                marker,
                text: String::new(),
                line: index + 1,
            });
            continue;
        }
        if !line.trim().is_empty() {
            previous = Some(line);
        }
    }
    assert!(open.is_none(), "unterminated code block in the markdown");
    blocks
}

fn docs_page(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn docs_api() -> String {
    docs_page("api.md")
}

/// The `herald` binary running on a free loopback port; killed on drop.
struct Herald {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    addr: String,
}

impl Herald {
    async fn start(config_text: &str) -> Herald {
        let dir = std::env::temp_dir().join(format!(
            "herald-docs-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("herald.toml");
        std::fs::write(&config, config_text).expect("write config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("herald.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // Settings of the environment running the tests must not change the documented configuration.
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD_") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().expect("start herald");
        let mut herald = Herald {
            child,
            dir,
            config,
            addr,
        };
        herald.wait_healthy().await;
        herald
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("herald.log")).unwrap_or_default()
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "herald exited with {status} before it was healthy:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = http_get(&self.addr, "/health").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "herald not healthy within 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection token signed by `herald token` with the same configuration.
    async fn token(&self, user: &str, channels: &str) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["token", "--config"])
            .arg(&self.config)
            .args(["--user", user, "--channels", channels])
            .env_remove("HERALD_CONFIG")
            .output()
            .await
            .expect("herald token");
        assert!(
            output.status.success(),
            "herald token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("token is UTF-8")
            .trim()
            .to_string()
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!("--- herald log ---\n{}", self.log());
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// One `GET` over a fresh connection; returns the status and the body.
async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .map_err(std::io::Error::other)??;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: &str, token: &str) -> (Ws, Value) {
    let uri = http::Uri::try_from(format!("ws://{addr}/connection/websocket")).expect("uri");
    let (mut ws, _) = ClientBuilder::from_uri(uri)
        .connect()
        .await
        .expect("websocket connects");
    ws.send(Message::text(
        json!({"id": 1, "connect": {"token": token}}).to_string(),
    ))
    .await
    .expect("send connect");
    let reply = ws_reply(&mut ws, 1).await;
    (ws, reply)
}

/// Reads until the reply with `id` arrives.
async fn ws_reply(ws: &mut Ws, id: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no reply {id} within {WAIT:?}"))
            .unwrap_or_else(|| panic!("connection closed before reply {id}"))
            .expect("websocket read");
        if let Some((code, reason)) = message.as_close() {
            panic!(
                "connection closed before reply {id}: {} {reason}",
                u16::from(code)
            );
        }
        for line in message
            .as_text()
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let value: Value = serde_json::from_str(line).expect("server sends JSON");
            if value["id"].as_u64() == Some(id) {
                return value;
            }
        }
    }
}

/// What the background reader saw on alice's connection.
#[derive(Default)]
struct Seen {
    messages: Vec<Value>,
    close: Option<(u16, String)>,
}

/// Reads every message (answering pings) until the connection ends.
fn spawn_reader(mut ws: Ws, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Some((code, reason)) = message.as_close() {
                seen.lock().unwrap().close = Some((u16::from(code), reason.to_string()));
                break;
            }
            let Some(text) = message.as_text() else {
                continue;
            };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let Ok(value) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                if value.as_object().is_some_and(|o| o.is_empty()) {
                    let _ = ws.send(Message::text("{}".to_string())).await;
                    continue;
                }
                seen.lock().unwrap().messages.push(value);
            }
        }
    })
}

async fn run_shell(script: &str) -> (bool, String) {
    let output = tokio::time::timeout(
        WAIT,
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("example did not finish within {WAIT:?}:\n{script}"))
    .expect("run sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn php_available() -> bool {
    match Command::new("php").arg("-m").output().await {
        Ok(output) => {
            output.status.success()
                && String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .any(|l| l.trim() == "curl")
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn every_curl_example_in_the_api_docs_works() {
    let markdown = docs_api();
    let blocks = code_blocks(&markdown);
    let config = blocks
        .iter()
        .find(|b| b.lang == "toml" && b.marker.as_deref() == Some("docs-test: config"))
        .expect("docs/api.md has a ```toml block marked <!-- docs-test: config -->");
    let herald = Herald::start(&config.text).await;
    let base = format!("http://{}", herald.addr);

    let token = herald.token("alice", "site:everyone").await;
    let (mut ws, connected) = ws_connect(&herald.addr, &token).await;
    assert!(
        connected.get("connect").is_some(),
        "alice connects: {connected}"
    );
    ws.send(Message::text(
        json!({"id": 2, "subscribe": {"channel": "chat:room1"}}).to_string(),
    ))
    .await
    .expect("send");
    let subscribed = ws_reply(&mut ws, 2).await;
    assert!(
        subscribed.get("subscribe").is_some(),
        "alice subscribes to chat:room1: {subscribed}"
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = spawn_reader(ws, seen.clone());

    let mut ran = 0;
    for block in blocks
        .iter()
        .filter(|b| b.lang == "bash" && b.text.trim_start().starts_with("curl"))
    {
        assert!(
            block.text.contains(DOCS_HOST) || !block.text.contains("localhost"),
            "line {}: use {DOCS_HOST}",
            block.line
        );
        let script = block.text.replace(DOCS_HOST, &base);
        let (ok, output) = run_shell(&script).await;
        let expect_error = block.marker.as_deref() == Some("expect-error");
        let context = format!(
            "docs/api.md line {}:\n{}\noutput:\n{output}",
            block.line,
            block.text.trim_end()
        );
        assert!(ok, "example failed: {context}");
        assert!(
            !output.trim().is_empty(),
            "example printed nothing: {context}"
        );
        if expect_error {
            assert!(
                output.contains("\"error\""),
                "example marked expect-error did not fail: {context}"
            );
        } else {
            assert!(
                !output.contains("\"error\""),
                "example answered with an error: {context}"
            );
        }
        ran += 1;
    }
    assert!(ran >= 20, "only {ran} curl examples found in docs/api.md");

    // The publish examples reached alice, and the disconnect example closed her connection with its code.
    tokio::time::timeout(WAIT, reader)
        .await
        .expect("alice's connection closed by the disconnect example")
        .ok();
    {
        let seen = seen.lock().unwrap();
        let published_to = |channel: &str| {
            seen.messages
                .iter()
                .any(|m| m["push"]["channel"] == channel && m["push"].get("pub").is_some())
        };
        assert!(
            published_to("chat:room1"),
            "no publication on chat:room1 reached alice: {:?}",
            seen.messages
        );
        assert!(
            published_to("#alice"),
            "no publication on #alice reached alice: {:?}",
            seen.messages
        );
        assert!(
            seen.messages
                .iter()
                .any(|m| m["push"]["channel"] == "chat:room2"
                    && m["push"].get("subscribe").is_some()),
            "the subscribe example did not subscribe alice to chat:room2: {:?}",
            seen.messages
        );
        assert_eq!(
            seen.close,
            Some((4000, "reload".to_string())),
            "the disconnect example's code and reason"
        );
    }

    if !php_available().await {
        // CI installs php (see .ci/run), so there the PHP examples must run.
        assert!(
            std::env::var_os("CI").is_none(),
            "php with the curl extension is required under CI"
        );
        eprintln!("php with the curl extension not found: PHP examples skipped");
        return;
    }
    for block in blocks
        .iter()
        .filter(|b| b.lang == "php" && b.marker.as_deref() == Some("docs-test: php"))
    {
        let path = herald.dir.join(format!("example-{}.php", block.line));
        std::fs::write(&path, block.text.replace(DOCS_HOST, &base)).expect("write php");
        let (ok, output) = run_shell(&format!("php {}", path.display())).await;
        let context = format!("docs/api.md line {}, output:\n{output}", block.line);
        assert!(
            ok && !output.contains("\"error\"") && !output.contains("Fatal error"),
            "PHP example failed: {context}"
        );
    }
    let php_token = blocks
        .iter()
        .find(|b| b.lang == "php" && b.marker.as_deref() == Some("docs-test: php-token"))
        .expect("docs/api.md has a ```php block marked <!-- docs-test: php-token -->");
    let path = herald.dir.join("token.php");
    std::fs::write(&path, &php_token.text).expect("write php");
    let (ok, token) = run_shell(&format!("php {}", path.display())).await;
    assert!(ok, "PHP token example failed: {token}");
    let (_ws, connected) = ws_connect(&herald.addr, token.trim()).await;
    assert!(
        connected["connect"]["subs"].get("site:everyone").is_some(),
        "PHP token accepted: {connected}"
    );
}

/// What `line` prints (standard output, then standard error) when run through `sh -c` in `dir`,
/// with the `herald` under test first on `PATH` and no setting from the test's environment.
fn printed_by(line: &str, dir: &Path) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_herald"))
        .parent()
        .expect("the binary's directory");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .env("PATH", path)
        // A backtrace would follow the message.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            command.env_remove(key);
        }
    }
    let output = command.output().expect("run sh");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_config_error_example_in_the_configuration_docs_is_what_herald_prints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file: Option<String> = None;
    let mut printed: Option<(usize, String)> = None;
    let mut checked = 0;
    for block in code_blocks(&docs_page("configuration.md")) {
        match block.marker.as_deref() {
            Some("docs-test: config-file") => file = Some(block.text),
            Some("docs-test: config-run") => {
                let text = file.as_deref().unwrap_or_else(|| {
                    panic!("line {}: no config-file block before it", block.line)
                });
                std::fs::write(dir.path().join("herald.toml"), text).expect("write herald.toml");
                let output: String = block
                    .text
                    .lines()
                    .filter(|line| !line.trim().is_empty())
                    .map(|line| printed_by(line, dir.path()))
                    .collect();
                printed = Some((block.line, output));
            }
            Some("docs-test: config-output") => {
                let (line, output) = printed.take().unwrap_or_else(|| {
                    panic!("line {}: no config-run block before it", block.line)
                });
                assert_eq!(
                    output.trim_end(),
                    block.text.trim_end(),
                    "docs/configuration.md line {line}: what herald prints"
                );
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(
        checked >= 2,
        "only {checked} config-output blocks found in docs/configuration.md"
    );
}

/// docs/pusher.md: its app configuration starts Herald, and its signed `curl` trigger is accepted
/// and reaches a client subscribed to the Herald channel the page names, with the data and the
/// event tag it shows, and a Pusher client of the Pusher channel as exactly the event it shows.
#[tokio::test]
async fn the_pusher_page_configuration_and_signed_trigger_work() {
    let markdown = docs_page("pusher.md");
    let blocks = code_blocks(&markdown);
    let marked = |marker: &str| {
        blocks
            .iter()
            .find(|b| b.marker.as_deref() == Some(marker))
            .unwrap_or_else(|| panic!("docs/pusher.md has a block marked <!-- {marker} -->"))
    };
    // The page's app, with a token secret so that a test client can connect.
    let config = format!(
        "[client.token]\nhmac_secret = \"docs-test-secret-0123456789\"\n\n{}",
        marked("docs-test: pusher-config").text
    );
    let herald = Herald::start(&config).await;
    let token = herald.token("alice", "shop:orders").await;
    let (ws, connected) = ws_connect(&herald.addr, &token).await;
    assert!(connected.get("connect").is_some(), "{connected}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = spawn_reader(ws, seen.clone());
    let mut pusher = pusher_subscriber(&herald.addr, "app-key", "orders").await;

    let trigger = marked("docs-test: pusher-trigger");
    assert!(
        trigger.text.contains(DOCS_HOST),
        "the example uses {DOCS_HOST}"
    );
    let script = trigger
        .text
        .replace(DOCS_HOST, &format!("http://{}", herald.addr));
    let (ok, output) = run_shell(&script).await;
    assert!(ok, "the trigger example failed: {output}");
    assert_eq!(output.trim(), "{}", "what the trigger example prints");

    let deadline = Instant::now() + WAIT;
    let publication = loop {
        let found = seen.lock().unwrap().messages.iter().find_map(|m| {
            (m["push"]["channel"] == "shop:orders").then(|| m["push"]["pub"].clone())
        });
        if let Some(publication) = found {
            break publication;
        }
        assert!(Instant::now() < deadline, "no publication on shop:orders");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(publication["data"], json!({"id": 7}));
    assert_eq!(publication["tags"]["event"], "order.created");
    reader.abort();
    let event = next_text(&mut pusher).await;
    assert_eq!(
        event,
        marked("docs-test: pusher-event").text.trim(),
        "the event the page shows, byte for byte"
    );
}

/// A Pusher protocol client of app `key`, subscribed to public channel `channel`.
async fn pusher_subscriber(addr: &str, key: &str, channel: &str) -> Ws {
    let url = format!("ws://{addr}/app/{key}?protocol=7&client=js&version=8.6.0");
    let (mut ws, _) = ClientBuilder::from_uri(http::Uri::try_from(url).expect("uri"))
        .connect()
        .await
        .expect("pusher websocket connects");
    let hello = next_text(&mut ws).await;
    assert!(hello.contains("pusher:connection_established"), "{hello}");
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    ws.send(Message::text(subscribe.to_string()))
        .await
        .expect("send subscribe");
    let answer = next_text(&mut ws).await;
    assert!(
        answer.contains("pusher_internal:subscription_succeeded"),
        "{answer}"
    );
    ws
}

/// The next text message of a WebSocket, within WAIT.
async fn next_text(ws: &mut Ws) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no message within {WAIT:?}"))
            .expect("connection open")
            .expect("websocket read");
        if let Some(text) = message.as_text() {
            return text.to_string();
        }
    }
}
