//! The broadcast scenario.

use crate::procstat;
use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message};

#[derive(clap::Args, Clone)]
pub struct BroadcastArgs {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub server: SocketAddr,
    /// HMAC secret for connection tokens (client.token.hmac_secret).
    #[arg(long)]
    pub secret: String,
    /// Server API key (empty: none).
    #[arg(long, default_value = "")]
    pub api_key: String,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Number of subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Publications per API request (batch).
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Publication payload size in bytes (approximate).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Connections opened concurrently while ramping up.
    #[arg(long, default_value_t = 200)]
    pub ramp_concurrency: usize,
    /// Server pid, to report its CPU and RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the JSON result here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Stats {
    deliveries: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// Source address for the i-th connection: 127.0.0.2 .. 127.0.0.101, so each address needs at most
/// a hundredth of the ephemeral ports.
fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 100) as u8))
}

async fn connect_from(server: SocketAddr, source: IpAddr) -> anyhow::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    set_bind_address_no_port(&socket);
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    Ok(socket.connect(server).await?)
}

/// IP_BIND_ADDRESS_NO_PORT: defer the port choice to connect(), so a bound source address does
/// not reserve a port per socket up front. Best effort: without it, binding still works.
fn set_bind_address_no_port(socket: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for the given length; the fd is owned by `socket`.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Runs the scenario and returns its result as JSON.
pub async fn broadcast(args: BroadcastArgs) -> anyhow::Result<serde_json::Value> {
    if !args.server.ip().is_loopback() {
        bail!("--server must be a loopback address: load tests only target this machine");
    }
    let stats = Arc::new(Stats {
        deliveries: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let token = herald_auth::sign_hs256(&json!({"sub": "bench"}), &args.secret)?;
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.ramp_concurrency));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut ready = Vec::with_capacity(args.subscribers);
    let mut tasks = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let permit = semaphore.clone().acquire_owned().await?;
        let (args, token) = (args.clone(), token.clone());
        let (stats, stop) = (stats.clone(), stop_rx.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        tasks.push(tokio::spawn(async move {
            let result = subscriber(i, &args, &token, stats, permit, tx, stop).await;
            if let Err(e) = result {
                eprintln!("subscriber {i}: {e:#}");
            }
        }));
    }
    let mut connected = 0;
    for rx in ready {
        if rx.await.is_ok() {
            connected += 1;
        }
    }
    let ramp = started.elapsed();
    eprintln!(
        "{connected}/{} subscribers in {:.1}s",
        args.subscribers,
        ramp.as_secs_f64()
    );

    let before = args.server_pid.and_then(procstat::sample);
    let publish_started = Instant::now();
    let published = publisher(&args).await?;
    let publish_elapsed = publish_started.elapsed();
    // Let deliveries in flight arrive (bounded), then stop the subscribers.
    let expected = published * connected as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(5);
    while stats.deliveries.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = publish_started.elapsed().as_secs_f64();
    let after = args.server_pid.and_then(procstat::sample);
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let deliveries = stats.deliveries.load(Ordering::Relaxed);
    let hist = stats
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .clone();
    let cpu = match (&before, &after) {
        (Some(b), Some(a)) => {
            json!((a.cpu_ticks - b.cpu_ticks) as f64 / procstat::TICKS_PER_SECOND / elapsed * 100.0)
        }
        _ => json!(null),
    };
    Ok(json!({
        "scenario": "broadcast",
        "subscribers": connected,
        "ramp_seconds": ramp.as_secs_f64(),
        "publications": published,
        "publish_rate": published as f64 / publish_elapsed.as_secs_f64(),
        "seconds": elapsed,
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "deliveries_per_second": deliveries as f64 / elapsed,
        "latency_ms": {
            "p50": hist.value_at_quantile(0.50) as f64 / 1000.0,
            "p99": hist.value_at_quantile(0.99) as f64 / 1000.0,
            "p999": hist.value_at_quantile(0.999) as f64 / 1000.0,
            "max": hist.max() as f64 / 1000.0,
        },
        "server_cpu_percent": cpu,
        "server_rss_mib": after.map(|a| a.rss_kib as f64 / 1024.0),
    }))
}

async fn subscriber(
    i: usize,
    args: &BroadcastArgs,
    token: &str,
    stats: Arc<Stats>,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: tokio::sync::oneshot::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stream = connect_from(args.server, source_ip(i)).await?;
    let uri: http::Uri = format!("ws://{}/connection/websocket", args.server).parse()?;
    let (mut ws, _) = ClientBuilder::from_uri(uri).connect_on(stream).await?;
    let connect = json!({"id": 1, "connect": {"token": token}});
    let subscribe = json!({"id": 2, "subscribe": {"channel": args.channel}});
    ws.send(Message::text(format!("{connect}\n{subscribe}")))
        .await?;
    let mut replies = 0;
    while replies < 2 {
        let Some(message) = ws.next().await else {
            bail!("closed during subscribe")
        };
        let message = message?;
        if let Some(text) = message.as_text() {
            replies += text.split('\n').filter(|l| l.contains("\"id\":")).count();
            if text.contains("\"error\"") {
                bail!("subscribe failed: {text}");
            }
        }
    }
    drop(permit);
    let _ = ready.send(());
    let finder = memchr::memmem::Finder::new(b"\"t\":");
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => match message {
                Some(Ok(m)) => m,
                _ => break,
            },
        };
        let payload = message.as_payload();
        if payload.as_ref() == b"{}" {
            ws.send(Message::text("{}")).await?;
            continue;
        }
        let now = now_micros();
        let mut count = 0u64;
        for line in payload.split(|b| *b == b'\n') {
            let Some(pos) = finder.find(line) else {
                continue;
            };
            count += 1;
            let digits = &line[pos + 4..];
            let end = digits
                .iter()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(digits.len());
            let sent = std::str::from_utf8(&digits[..end])
                .ok()
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(sent) = sent {
                let _ = local.record(now.saturating_sub(sent).max(1));
            }
        }
        stats.deliveries.fetch_add(count, Ordering::Relaxed);
    }
    if let Ok(mut h) = stats.latency.lock() {
        let _ = h.add(&local);
    }
    Ok(())
}

/// Publishes at `rate` per second for `duration` through the API's `batch` method on one
/// keep-alive connection; returns how many publications were accepted.
async fn publisher(args: &BroadcastArgs) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(args.server).await?;
    stream.set_nodelay(true)?;
    let padding = "x".repeat(args.payload.saturating_sub(30));
    let batch = args.batch.max(1) as u64;
    let interval = Duration::from_secs_f64(batch as f64 / args.rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from(args.duration);
    let mut published = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < end {
        tick.tick().await;
        let commands: Vec<serde_json::Value> = (0..batch)
            .map(|_| json!({"publish": {"channel": args.channel, "data": {"t": now_micros(), "p": padding}}}))
            .collect();
        let body = json!({"commands": commands}).to_string();
        let mut request = format!(
            "POST /api/batch HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            args.server,
            body.len()
        );
        if !args.api_key.is_empty() {
            request.push_str(&format!("X-API-Key: {}\r\n", args.api_key));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        stream.write_all(request.as_bytes()).await?;
        read_response(&mut stream, &mut buf).await?;
        published += batch;
    }
    Ok(published)
}

/// Reads one HTTP/1.1 response with Content-Length; fails on a non-200 status.
async fn read_response(stream: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<()> {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("API connection closed");
        }
        filled += n;
        let head = &buf[..filled];
        let Some(end) = memchr::memmem::find(head, b"\r\n\r\n") else {
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
        if filled >= end + 4 + length {
            if memchr::memmem::find(&head[end + 4..end + 4 + length], b"\"error\"").is_some() {
                bail!(
                    "API error: {}",
                    String::from_utf8_lossy(&head[end + 4..end + 4 + length])
                );
            }
            return Ok(());
        }
        if filled == buf.len() {
            bail!("API response too large");
        }
    }
}
