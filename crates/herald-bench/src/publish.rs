//! The publishing side: timestamped publications over one keep-alive HTTP/1.1 connection, to
//! Herald's server API (`/api/batch`), a Pusher server's signed `batch_events`, or a peer's
//! `/publish` (one JSON object per line).

use crate::net::{now_micros, require_loopback};
use crate::pusher::PusherArgs;
use crate::wsclient::Target;
use anyhow::bail;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Publisher {
    target: Target,
    addr: SocketAddr,
    api_key: String,
    stream: TcpStream,
    buf: Vec<u8>,
    /// Pusher: the app whose secret signs the requests.
    pusher: Option<PusherArgs>,
}

impl Publisher {
    pub async fn connect(target: Target, addr: SocketAddr, api_key: &str) -> anyhow::Result<Self> {
        require_loopback(&addr)?;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Publisher {
            target,
            addr,
            api_key: api_key.to_string(),
            stream,
            buf: vec![0u8; 64 * 1024],
            pusher: None,
        })
    }

    /// A publisher to a Pusher server's HTTP API (`batch_events`, signed with the app secret).
    pub async fn connect_pusher(addr: SocketAddr, app: &PusherArgs) -> anyhow::Result<Self> {
        let mut publisher = Publisher::connect(Target::Pusher, addr, "").await?;
        publisher.pusher = Some(app.clone());
        Ok(publisher)
    }

    /// Sends `(channel, data)` publications in one request; fails unless all were accepted.
    pub async fn send(&mut self, items: &[(String, serde_json::Value)]) -> anyhow::Result<()> {
        if let Some(app) = self.pusher.clone() {
            // Pusher allows 10 events a batch: a larger batch is several requests in a row.
            for chunk in items.chunks(crate::pusher::MAX_BATCH_EVENTS) {
                let (path, body) =
                    crate::pusher::batch_request(&app, chunk, now_micros() / 1_000_000);
                self.request(&path, &body).await?;
            }
            return Ok(());
        }
        let (path, body) = match self.target {
            Target::Herald => {
                let commands: Vec<_> = items
                    .iter()
                    .map(|(c, d)| json!({"publish": {"channel": c, "data": d}}))
                    .collect();
                // Parallel: with a broker, the batch costs one round trip, not one per command.
                let body = json!({"commands": commands, "parallel": true});
                ("/api/batch", body.to_string())
            }
            Target::Ws | Target::Floor | Target::Socketio | Target::Pusher => {
                let mut body = String::new();
                for (_, data) in items {
                    body.push_str(&data.to_string());
                    body.push('\n');
                }
                ("/publish", body)
            }
        };
        self.request(path, &body).await.map(|_| ())
    }

    /// One POST; returns the response body (fails on a non-200 status or an `"error"` in it).
    pub async fn request(&mut self, path: &str, body: &str) -> anyhow::Result<String> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !self.api_key.is_empty() && self.target == Target::Herald {
            request.push_str(&format!("X-API-Key: {}\r\n", self.api_key));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.stream.write_all(request.as_bytes()).await?;
        let (body, close) = read_response(&mut self.stream, &mut self.buf).await?;
        if close {
            // The server closes after this answer (Sockudo's API does after each request): the
            // next request goes on a new connection, as an SDK's would.
            self.stream = TcpStream::connect(self.addr).await?;
            self.stream.set_nodelay(true)?;
        }
        Ok(body)
    }
}

/// A bench publication: send time in µs and padding up to about `size` bytes of JSON.
pub fn payload(size: usize, extra: Option<(&str, &str)>) -> serde_json::Value {
    let mut data = json!({"t": now_micros(), "p": "x".repeat(size.saturating_sub(30))});
    if let (Some((k, v)), Some(map)) = (extra, data.as_object_mut()) {
        map.insert(k.to_string(), json!(v));
    }
    data
}

/// Publishes `rate` publications per second for `duration`, `batch` per request, asking `next`
/// for each one's channel; returns how many were accepted. Stops early on an error.
pub async fn run_at_rate(
    publisher: &mut Publisher,
    rate: u64,
    batch: usize,
    duration: Duration,
    mut next: impl FnMut(u64) -> (String, serde_json::Value),
) -> anyhow::Result<u64> {
    let batch = batch.max(1) as u64;
    let interval = Duration::from_secs_f64(batch as f64 / rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    // Burst: when the server is slower than the offered rate we keep offering it (as long as the
    // API answers), so the knee shows up as latency growth, not as a quietly lower rate.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + duration;
    // Exactly rate × duration publications when the server keeps up; fewer when it does not.
    let target = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let mut published = 0u64;
    let mut items = Vec::with_capacity(batch as usize);
    while published < target && Instant::now() < end {
        tick.tick().await;
        items.clear();
        for k in 0..batch {
            items.push(next(published + k));
        }
        publisher.send(&items).await?;
        published += batch;
    }
    Ok(published)
}

/// Reads one HTTP/1.1 response with Content-Length; fails on a non-200 status or an error body.
/// The buffer grows up to 64 MiB (the `devices` API lists every device). Returns the body and
/// whether the server closes the connection after it (`Connection: close`).
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(String, bool)> {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("API connection closed");
        }
        filled += n;
        let head = &buf[..filled];
        let Some(end) = memchr::memmem::find(head, b"\r\n\r\n") else {
            if filled == buf.len() {
                bail!("API response head too large");
            }
            continue;
        };
        let text = String::from_utf8_lossy(&head[..end]);
        if !text.starts_with("HTTP/1.1 200") {
            bail!("API answered: {}", text.lines().next().unwrap_or(""));
        }
        let length: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let close = text.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("connection:")
                .is_some_and(|v| v.trim() == "close")
        });
        if filled >= end + 4 + length {
            let body = &head[end + 4..end + 4 + length];
            if memchr::memmem::find(body, b"\"error\"").is_some() {
                bail!("API error: {}", String::from_utf8_lossy(body));
            }
            return Ok((String::from_utf8_lossy(body).into_owned(), close));
        }
        if filled == buf.len() {
            if buf.len() >= 64 << 20 {
                bail!("API response too large");
            }
            let grown = (buf.len() * 2).max(end + 4 + length);
            buf.resize(grown, 0);
        }
    }
}
