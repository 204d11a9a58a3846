//! The unidirectional HTTP stream as a plain HTTP client uses it: `curl` posts the connect
//! request and prints one JSON push a line — the connect push, then publications of the channels
//! its token subscribes it to — with no SDK and no WebSocket.

mod support;

use serde_json::{json, Value};
use std::process::Stdio;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_follows_a_channel_on_uni_http_stream() {
    let server = TestServer::start().await;
    let token = token_with(json!({"sub": "erin", "exp": now() + 3600, "channels": ["news"]}));
    let mut curl = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--no-buffer",
            "--max-time",
            "20",
        ])
        .args(["-H", "Content-Type: application/json"])
        .args(["--data", &json!({"token": token}).to_string()])
        .arg(format!("http://{}/connection/uni_http_stream", server.addr))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl is installed (scripts/setup.sh installs it)");
    let mut lines = BufReader::new(curl.stdout.take().expect("stdout")).lines();
    let connect = next(&mut lines).await;
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    assert!(
        connect["connect"]["subs"].get("news").is_some(),
        "{connect}"
    );
    for n in 1..=3 {
        server
            .api_ok("publish", json!({"channel": "news", "data": {"n": n}}))
            .await;
        let mut push = next(&mut lines).await;
        // Pings (`{}`) and join events may come between publications.
        while push.get("pub").is_none() {
            push = next(&mut lines).await;
        }
        assert_eq!(push["channel"], "news", "{push}");
        assert_eq!(push["pub"]["data"]["n"], n, "{push}");
    }
    curl.kill().await.expect("stop curl");
}

/// The next line curl printed, as JSON.
async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("read")
        .expect("curl still streaming");
    serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}
