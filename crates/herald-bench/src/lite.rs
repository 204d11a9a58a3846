//! A minimal WebSocket client for idle connections: the handshake and the few frames an idle
//! Herald connection sees (connect and subscribe replies, `{}` pings), nothing more.
//!
//! A million idle connections must fit on one machine next to the servers, so a connection here
//! is a socket, a task and a few hundred bytes of state: no read or write buffers survive the
//! handshake (tokio-websockets keeps kilobytes of buffers per connection, fine for the scenarios
//! that move data, too much for this one).

use anyhow::{bail, Context};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opcodes this client handles.
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Writes one masked frame (clients must mask; the key need not be secret for a load test).
async fn send(
    stream: &mut TcpStream,
    opcode: u8,
    payload: &[u8],
    key: [u8; 4],
) -> anyhow::Result<()> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    stream.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame; returns its opcode, and its payload when it is at most `small.len()` bytes
/// (longer payloads are read and discarded: an idle client only needs to recognise `{}`).
async fn recv(stream: &mut TcpStream, small: &mut [u8]) -> anyhow::Result<(u8, Option<usize>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[1] & 0x80 != 0 {
        bail!("the server masked a frame");
    }
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).await?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).await?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let opcode = head[0] & 0x0f;
    if len as usize <= small.len() {
        stream.read_exact(&mut small[..len as usize]).await?;
        return Ok((opcode, Some(len as usize)));
    }
    let mut left = len;
    while left > 0 {
        let chunk = left.min(small.len() as u64) as usize;
        stream.read_exact(&mut small[..chunk]).await?;
        left -= chunk as u64;
    }
    Ok((opcode, None))
}

/// Upgrades `stream`, sends `connect` (and `subscribe` to `channel` unless empty) and waits for
/// the replies; an error reply fails.
pub async fn open(
    stream: &mut TcpStream,
    server: SocketAddr,
    token: &str,
    channel: &str,
    key: [u8; 4],
) -> anyhow::Result<()> {
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: aGVyYWxkLWJlbmNoLWtleQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The server sends nothing after the 101 until the client's first frame, so reading the
    // response byte by byte up to its blank line cannot swallow a frame.
    let mut response = Vec::with_capacity(256);
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            bail!("closed during the upgrade");
        }
        response.push(byte[0]);
        if response.len() > 4096 {
            bail!("upgrade response too long");
        }
    }
    if !response.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&response);
        bail!("upgrade refused: {}", line.lines().next().unwrap_or(""));
    }
    let mut frame = serde_json::json!({"id": 1, "connect": {"token": token}}).to_string();
    let mut expected = 1;
    if !channel.is_empty() {
        frame.push('\n');
        frame
            .push_str(&serde_json::json!({"id": 2, "subscribe": {"channel": channel}}).to_string());
        expected = 2;
    }
    send(stream, TEXT, frame.as_bytes(), key).await?;
    let mut replies = 0;
    let mut text = vec![0u8; 4096];
    while replies < expected {
        let (opcode, len) = recv(stream, &mut text).await?;
        let len = len.context("reply longer than 4 KiB")?;
        if opcode == CLOSE {
            bail!(
                "closed during connect: {}",
                String::from_utf8_lossy(&text[..len])
            );
        }
        let body = &text[..len];
        if memchr::memmem::find(body, b"\"error\"").is_some() {
            bail!(
                "connect/subscribe failed: {}",
                String::from_utf8_lossy(body)
            );
        }
        replies += body
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"{\"id\":"))
            .count();
    }
    Ok(())
}

/// Answers heartbeats until the server closes or `stop` fires.
pub async fn hold(
    stream: &mut TcpStream,
    key: [u8; 4],
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut small = [0u8; 16];
    loop {
        let frame = tokio::select! {
            _ = stop.changed() => return Ok(()),
            frame = recv(stream, &mut small) => frame?,
        };
        match frame {
            (CLOSE, _) => bail!("closed by the server"),
            (PING, Some(n)) => send(stream, PONG, &small[..n], key).await?,
            (TEXT, Some(2)) if &small[..2] == b"{}" => send(stream, TEXT, b"{}", key).await?,
            _ => {}
        }
    }
}
