//! Hostile clients made of requests: batch bombs and oversized publications through the server
//! API, unknown OsmAnd device ids, and WebSocket connection churn.

use super::hold::Ctx;
use super::raw::{self, http_exchange, response_label, text, ws_open};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long one API request of an attack may take before it is given up.
const REQUEST_WAIT: Duration = Duration::from_secs(30);

/// Repeats `request` every `every` until the run ends, one at a time on a fresh connection each;
/// records each answer and the total time the server took.
async fn repeat(ctx: &Ctx, kind: &'static str, request: Arc<Vec<u8>>, every: Duration) {
    ctx.tally.declare(kind);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(ctx.end) => return,
            _ = tick.tick() => {}
        }
        ctx.tally.opened(kind);
        let started = Instant::now();
        let wait =
            REQUEST_WAIT.min(ctx.end.saturating_duration_since(started) + Duration::from_secs(5));
        let label = http_exchange(ctx.api, ctx.index(), &request, wait).await;
        ctx.tally.count(
            kind,
            "milliseconds_answering",
            started.elapsed().as_millis() as u64,
        );
        ctx.tally.response(kind, &label);
        let outcome = if label.starts_with("http ") {
            "answered, closed by the client"
        } else {
            &label
        };
        ctx.tally.ended(kind, outcome, None);
    }
}

/// `/api/batch` requests of `commands` tiny publishes each (~37 bytes per command), one every `every`.
pub async fn batch_bomb(ctx: Arc<Ctx>, commands: usize, every: Duration) {
    let mut body = String::with_capacity(commands * 40 + 32);
    body.push_str("{\"commands\":[");
    for n in 0..commands {
        if n > 0 {
            body.push(',');
        }
        body.push_str("{\"publish\":{\"channel\":\"b\",\"data\":1}}");
    }
    body.push_str("]}");
    let mut request = ctx.api_headers("/api/batch", body.len()).into_bytes();
    request.extend_from_slice(body.as_bytes());
    ctx.tally
        .count("batch_bomb", "body_bytes", body.len() as u64);
    repeat(&ctx, "batch_bomb", Arc::new(request), every).await;
}

/// `/api/publish` of a `bytes`-sized message to the victims' channel, one every `every`.
pub async fn oversized_publication(ctx: Arc<Ctx>, bytes: usize, every: Duration) {
    let body =
        json!({"channel": ctx.victims_channel, "data": {"p": "x".repeat(bytes)}}).to_string();
    let mut request = ctx.api_headers("/api/publish", body.len()).into_bytes();
    request.extend_from_slice(body.as_bytes());
    repeat(&ctx, "oversized_publication", Arc::new(request), every).await;
}

/// OsmAnd requests, each with a device id never seen before, `per_second` over keep-alive
/// connections (a new one when the server closes one).
pub async fn osmand_unknown_ids(ctx: Arc<Ctx>, per_second: u64) {
    let kind = "osmand_unknown_ids";
    let Some(addr) = ctx.osmand else { return };
    ctx.tally.declare(kind);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(TcpStream, Instant)> = None;
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(ctx.end) => break,
            _ = tick.tick() => {}
        }
        if conn.is_none() {
            ctx.tally.opened(kind);
            match raw::tcp(addr, ctx.index()).await {
                Ok(stream) => conn = Some((stream, Instant::now())),
                Err(e) => {
                    ctx.tally
                        .ended(kind, &format!("connect error ({})", e.kind()), None);
                    continue;
                }
            }
        }
        let Some((stream, opened)) = conn.as_mut() else {
            continue;
        };
        // Connection indexes are unique: they make the ids unique too.
        let request = format!(
            "GET /?id=hostile-{}-{} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
            ctx.run_id,
            ctx.index()
        );
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            stream.write_all(request.as_bytes()).await?;
            let k = stream.read(&mut buf).await?;
            std::io::Result::Ok(k)
        })
        .await;
        match answer {
            Ok(Ok(k)) if k > 0 => {
                ctx.tally.response(kind, &response_label(&buf[..k]));
                ctx.tally.count(kind, "new_ids", 1);
                // One response per read: the answers are tiny and the next request waits for it.
            }
            other => {
                let how = match other {
                    Ok(Ok(_)) => "eof".to_string(),
                    Ok(Err(e)) => format!("{}", e.kind()),
                    Err(_) => "no answer in 10 s".to_string(),
                };
                let after = opened.elapsed();
                ctx.tally
                    .ended(kind, &format!("closed by the server ({how})"), Some(after));
                conn = None;
            }
        }
    }
    if conn.is_some() {
        ctx.tally.ended(kind, "open at end", None);
    }
}

/// WebSocket connections opened and closed at `per_second` (at most 64 at once): handshake,
/// `connect` and subscribe to an honest channel, wait for both replies, close.
pub async fn connection_churn(ctx: Arc<Ctx>, per_second: u64) {
    let kind = "connection_churn";
    ctx.tally.declare(kind);
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(ctx.end) => break,
            _ = tick.tick() => {}
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.tally.count(kind, "skipped_64_in_flight", 1);
            continue;
        };
        let ctx = ctx.clone();
        tasks.spawn(async move {
            ctx.tally.opened(kind);
            let outcome = tokio::time::timeout(Duration::from_secs(10), churn_once(&ctx))
                .await
                .unwrap_or_else(|_| "no replies in 10 s".into());
            ctx.tally.ended(kind, &outcome, None);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

async fn churn_once(ctx: &Ctx) -> String {
    let mut stream = match ws_open(ctx.ws, ctx.index(), false).await {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let hello = format!(
        "{}\n{}",
        ctx.connect_command(1),
        json!({"id": 2, "subscribe": {"channel": ctx.honest_channel}})
    );
    if stream.write_all(&text(&hello)).await.is_err() {
        return "reset".into();
    }
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    while memchr::memmem::find(&got, b"\"id\":2").is_none() {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return "closed by the server before the replies".into(),
            Ok(n) => got.extend_from_slice(&buf[..n.min(8192)]),
        }
        if got.len() > 1 << 20 {
            break;
        }
    }
    if memchr::memmem::find(&got, b"\"error\"").is_some() {
        return "error reply".into();
    }
    let _ = stream
        .write_all(&raw::frame(true, 0x8, &1000u16.to_be_bytes(), true))
        .await;
    "completed, closed by the client".into()
}
