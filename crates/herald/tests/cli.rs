//! The real binary: the README's zero-config run (demo token, loopback API, SIGTERM drains clients
//! with 3001), configuration commands and their errors, the descriptor-limit warning.

mod support;

use serde_json::json;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;
use support::procs::{self, Proc, BIN};
use support::*;

/// Starts `herald serve` with `args` and collects its log lines as they come.
fn serve(args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    procs::serve(args, Some("info")).expect("herald starts")
}

/// Waits for a log line containing `needle`; returns it.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }
    panic!("no log line with {needle:?}; got:\n{}", seen.join("\n"));
}

fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    let start = line
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {line}"))
        + marker.len();
    line[start..].split_whitespace().next().unwrap_or("")
}

#[tokio::test]
async fn zero_config_run_serves_a_demo_and_drains_on_sigterm() {
    let (mut server, rx) = serve(&["--listen", "127.0.0.1:0"]);
    let mut seen = Vec::new();
    let ws_line = wait_line(&rx, "websocket: ws://", &mut seen);
    assert!(
        !ws_line.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal: {ws_line:?}"
    );
    let url = after(&ws_line, "websocket: ").to_string();
    let token_line = wait_line(&rx, "connect with token", &mut seen);
    let demo_token = after(&token_line, "connect with token ").to_string();
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/connection/websocket")
        .parse()
        .unwrap();

    let mut client = Client::open(&url).await;
    let connected = client.connect(&demo_token).await;
    assert!(connected["subs"].get("#demo").is_some(), "{connected}");
    // The printed curl line: the API without a key, from loopback.
    let (status, body) = http_request(
        addr,
        "POST",
        "/api/publish",
        &[("Content-Type", "application/json")],
        &json!({"channel": "#demo", "data": {"text": "hello"}}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        client.publication("#demo").await["data"],
        json!({"text": "hello"})
    );

    // SIGTERM: clients are told to reconnect elsewhere, then the process exits cleanly.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(client.closed().await, Closed::Code(3001, "shutdown".into()));
    let status = tokio::task::spawn_blocking(move || server.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn descriptor_limit_warning_names_the_setting() {
    let (_server, rx) = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--set",
        "client.max_connections=10000000",
    ]);
    let mut seen = Vec::new();
    let line = wait_line(
        &rx,
        "descriptor limit allows fewer WebSocket connections",
        &mut seen,
    );
    assert!(line.contains("max_connections"), "{line}");
}

#[test]
fn genconfig_checkconfig_and_errors_that_name_the_field() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("herald.toml");
    let out = Command::new(BIN)
        .args(["genconfig", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(BIN)
        .arg("checkconfig")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": ok"),
        "{out:?}"
    );
    let again = Command::new(BIN)
        .args(["genconfig", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "genconfig does not overwrite without --force"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[client]\nping_interval = \"often\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("checkconfig")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml:2: client.ping_interval: "),
        "{out:?}"
    );

    // A missing file: one line, its cause named once, no backtrace whatever RUST_BACKTRACE says.
    let missing = dir.join("missing.toml");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&missing)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: cannot read {}: No such file or directory (os error 2)",
            missing.display()
        ),
        "{out:?}"
    );

    let out = Command::new(BIN)
        .arg("token")
        .arg("--config")
        .arg(&file)
        .args(["--user", "alice", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    std::fs::remove_dir_all(&dir).ok();
}
