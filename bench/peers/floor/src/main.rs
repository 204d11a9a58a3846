//! The floor: the cheapest program that does a broadcast server's job, for the bench to measure
//! Herald against. No protocol, no limits, no history: every line POSTed to `/publish`, and every
//! WebSocket text message starting with `pub:`, goes as one text frame to every connected client
//! (the contract of bench/peers/ws). Messages a slow client misses are skipped, as a
//! `tokio::sync::broadcast` does. Listens on 127.0.0.1:$PORT (default 8200).

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;
use tokio_websockets::{Message, ServerBuilder};

/// Frames in flight per client before a slow one starts skipping.
const BACKLOG: usize = 4096;
/// A request head larger than this is not one the bench sends.
const MAX_HEAD: usize = 16 * 1024;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn main() -> anyhow::Result<()> {
    // Thousands of subscribers: as many descriptors as the hard limit allows.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!("floor listening on 127.0.0.1:{port}");
        let (tx, _) = broadcast::channel::<Bytes>(BACKLOG);
        // SIGTERM ends the process normally, so a profiler around it (callgrind) writes its data.
        let mut terminate = signal(SignalKind::terminate())?;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = terminate.recv() => return Ok(()),
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = serve(stream, tx).await;
            });
        }
    })
}

/// Serves HTTP requests on one connection (kept alive, as the bench's publisher expects) until
/// one upgrades to a WebSocket.
async fn serve(mut stream: TcpStream, tx: broadcast::Sender<Bytes>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffered = Vec::new();
    loop {
        let head = read_head(&mut stream, &mut buffered).await?;
        let text = String::from_utf8_lossy(&head).to_string();
        let request_line = text.split("\r\n").next().unwrap_or_default().to_string();
        let header = |name: &str| {
            text.split("\r\n").skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        if let Some(key) = header("sec-websocket-key") {
            let mut sha1 = sha1_smol::Sha1::new();
            sha1.update(key.as_bytes());
            sha1.update(WS_GUID.as_bytes());
            let accept = base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            stream.write_all(response.as_bytes()).await?;
            return relay(ServerBuilder::new().serve(stream), tx).await;
        }
        let (status, reply) = if request_line.starts_with("POST /publish ") {
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buffered.len() < length {
                read_more(&mut stream, &mut buffered).await?;
            }
            let body: Vec<u8> = buffered.drain(..length).collect();
            let mut published = 0;
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let _ = tx.send(Bytes::copy_from_slice(line));
                published += 1;
            }
            ("200 OK", format!("{{\"published\":{published}}}"))
        } else if request_line.starts_with("GET /health ") {
            ("200 OK", String::new())
        } else {
            ("404 Not Found", String::new())
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}

/// Takes one request head out of `buffered`, reading more as needed; what follows stays there.
async fn read_head(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> anyhow::Result<Vec<u8>> {
    loop {
        if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(buffered.drain(..end + 4).collect());
        }
        anyhow::ensure!(buffered.len() < MAX_HEAD, "request head too large");
        read_more(stream, buffered).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    anyhow::ensure!(n > 0, "closed");
    buffered.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Sends every broadcast message to this client (as many as are ready, then one flush) and
/// broadcasts what it publishes.
async fn relay(
    mut ws: tokio_websockets::WebSocketStream<TcpStream>,
    tx: broadcast::Sender<Bytes>,
) -> anyhow::Result<()> {
    let mut rx = tx.subscribe();
    loop {
        tokio::select! {
            received = rx.recv() => {
                let first = match received {
                    Ok(message) => message,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                ws.feed(Message::text(first)).await?;
                while let Ok(next) = rx.try_recv() {
                    ws.feed(Message::text(next)).await?;
                }
                ws.flush().await?;
            }
            incoming = ws.next() => {
                let Some(message) = incoming else { return Ok(()) };
                let message = message?;
                if let Some(text) = message.as_text() {
                    if let Some(published) = text.strip_prefix("pub:") {
                        let _ = tx.send(Bytes::copy_from_slice(published.as_bytes()));
                    }
                }
            }
        }
    }
}
