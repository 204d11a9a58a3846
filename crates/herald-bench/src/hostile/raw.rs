//! Raw sockets for the hostile clients: hand-made HTTP and WebSocket bytes (so they can be wrong on
//! purpose), writes that never block (a client that does not read must still stop by itself), the
//! TCP state as the kernel sees it, and the final drain that tells how the server ended a
//! connection.

use crate::net::connect_from;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Hostile connections come from 127.0.1.2 .. 127.0.1.101, never from the honest clients'
/// addresses (127.0.0.2 .. 101): a per-address limit the server applies to attackers must not
/// be what refuses an honest client.
pub fn hostile_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2 + (i % 100) as u8))
}

pub async fn tcp(server: SocketAddr, i: usize) -> io::Result<TcpStream> {
    crate::net::require_loopback(&server).map_err(io::Error::other)?;
    connect_from(server, hostile_ip(i))
        .await
        .map_err(io::Error::other)
}

/// Receive buffer of clients that never read. Linux autotunes loopback receive buffers up to
/// `tcp_rmem` (32 MiB here), which would hide a stalled client from the server for minutes; a
/// real stalled client (a phone in a tunnel) advertises a small window.
pub const STALLED_RCVBUF: usize = 64 * 1024;

/// Like [`tcp`], with a fixed receive buffer (set before connecting, so the window stays small).
pub async fn tcp_small_window(server: SocketAddr, i: usize) -> io::Result<TcpStream> {
    crate::net::require_loopback(&server).map_err(io::Error::other)?;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    crate::net::set_bind_address_no_port(&socket);
    socket.set_recv_buffer_size(STALLED_RCVBUF)?;
    socket.bind(&SocketAddr::new(hostile_ip(i), 0).into())?;
    socket.set_nonblocking(true)?;
    let stream = tokio::net::TcpSocket::from_std_stream(socket.into())
        .connect(server)
        .await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The opening handshake request, with `version` as `Sec-WebSocket-Version` (13 is the only valid one).
pub fn upgrade_request(server: SocketAddr, version: u32) -> String {
    format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: {version}\r\n\r\n"
    )
}

/// Why a connection never became a WebSocket.
pub fn refusal(head: &str) -> String {
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    format!("refused http {status}")
}

/// Reads a response head (up to the blank line) within `wait`; bytes after it are not consumed
/// because the server sends nothing after `101` until the client speaks.
pub async fn read_head(stream: &mut TcpStream, wait: Duration) -> io::Result<String> {
    let mut head = Vec::with_capacity(256);
    let read = tokio::time::timeout(wait, async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            head.push(byte[0]);
            if head.len() > 16 * 1024 {
                return Err(io::Error::other("response head too large"));
            }
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => Ok(String::from_utf8_lossy(&head).into_owned()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::from(io::ErrorKind::TimedOut)),
    }
}

/// Opens a WebSocket (valid handshake); `Err` is the outcome to report when it did not open.
/// `small_window`: for a client that will not read (see [`STALLED_RCVBUF`]).
pub async fn ws_open(
    server: SocketAddr,
    i: usize,
    small_window: bool,
) -> Result<TcpStream, String> {
    let connected = if small_window {
        tcp_small_window(server, i).await
    } else {
        tcp(server, i).await
    };
    let mut stream = connected.map_err(|e| format!("connect error ({})", e.kind()))?;
    stream
        .write_all(upgrade_request(server, 13).as_bytes())
        .await
        .map_err(|_| "reset during handshake".to_string())?;
    let head = read_head(&mut stream, Duration::from_secs(10))
        .await
        .map_err(|e| format!("handshake failed ({})", e.kind()))?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(refusal(&head));
    }
    Ok(stream)
}

/// A client frame: masked (as RFC 6455 requires of clients) unless `masked` is false.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

pub fn text(payload: &str) -> Vec<u8> {
    frame(true, 0x1, payload.as_bytes(), true)
}

/// The header of a masked text frame that announces `len` bytes (the payload may never come).
pub fn huge_header(len: u64) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// Bytes waiting to be written; pushing stops at `cap` so a peer that stops reading costs this
/// process a bounded buffer, and frames are never cut (what was queued is written in order).
pub struct Outgoing {
    buf: Vec<u8>,
    cap: usize,
}

impl Outgoing {
    pub fn new(cap: usize) -> Self {
        Outgoing {
            buf: Vec::new(),
            cap,
        }
    }

    /// Queues `bytes` unless the queue is full; returns whether it was queued.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if self.buf.len() >= self.cap {
            return false;
        }
        self.buf.extend_from_slice(bytes);
        true
    }

    /// Writes what the socket takes now without waiting.
    pub fn pump(&mut self, stream: &TcpStream) -> io::Result<()> {
        while !self.buf.is_empty() {
            match stream.try_write(&self.buf) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The kernel's TCP state of this socket (1 established, 7 closed, 8 close-wait).
#[allow(unsafe_code)] // no safe wrapper reads TCP_INFO
pub fn tcp_state(stream: &TcpStream) -> Option<u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_state)
    }
}

/// The server sent its FIN or a reset, whether or not this client has read what came before.
pub fn closed_by_peer(stream: &TcpStream) -> bool {
    const ESTABLISHED: u8 = 1;
    tcp_state(stream).is_some_and(|s| s != ESTABLISHED)
}

/// What a connection looked like from the client side when it ended.
#[derive(Debug, Default)]
pub struct Ending {
    /// First close frame's code (WebSocket) or response status (HTTP) found in the received bytes.
    pub said: Option<String>,
    pub eof: bool,
    pub reset: bool,
    /// Bytes read from the server (for a client that never reads: what it drained at the end).
    pub drained: u64,
}

impl Ending {
    /// One short label: `close 1002`, `http 408`, `reset`, `eof`, or `open at end`.
    pub fn label(&self) -> String {
        match (&self.said, self.reset, self.eof) {
            (Some(said), _, _) => said.clone(),
            (None, true, _) => "reset".into(),
            (None, false, true) => "eof".into(),
            (None, false, false) => "open at end".into(),
        }
    }

    pub fn closed(&self) -> bool {
        self.reset || self.eof
    }
}

/// How to read what the server sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// Server WebSocket frames (after a consumed 101 head): look for the close frame.
    WebSocket,
    /// An HTTP response: its status line.
    Http,
    /// Anything (device protocols): only the end matters.
    Raw,
}

/// Follows what the server sent on one connection: the first close code or HTTP status, and
/// how the connection ended.
pub struct Observer {
    speaks: Speaks,
    frames: ServerFrames,
    head: Vec<u8>,
    pub ending: Ending,
}

impl Observer {
    pub fn new(speaks: Speaks) -> Self {
        Observer {
            speaks,
            frames: ServerFrames::default(),
            head: Vec::new(),
            ending: Ending::default(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.ending.drained += bytes.len() as u64;
        if self.ending.said.is_some() {
            return;
        }
        match self.speaks {
            Speaks::WebSocket => {
                if let Some(code) = self.frames.feed(bytes) {
                    self.ending.said = Some(match code {
                        Some(code) => format!("close {code}"),
                        None => "close (no code)".into(),
                    });
                }
            }
            Speaks::Http => {
                if self.head.len() < 64 {
                    self.head.extend_from_slice(&bytes[..bytes.len().min(64)]);
                }
                let text = String::from_utf8_lossy(&self.head);
                if let Some(status) = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)) {
                    self.ending.said = Some(format!("http {status}"));
                }
            }
            Speaks::Raw => {}
        }
    }

    /// A read's result: `false` once the connection is over (end of stream or error).
    pub fn read_result(&mut self, read: io::Result<usize>, buf: &[u8]) -> bool {
        match read {
            Ok(0) => {
                self.ending.eof = true;
                false
            }
            Ok(n) => {
                self.feed(&buf[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => {
                self.ending.reset = matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                );
                self.ending.eof = !self.ending.reset;
                false
            }
        }
    }

    /// Reads everything the server still sends, for at most `wait` and `max_bytes`, to learn how
    /// it ended the connection.
    pub async fn drain(&mut self, stream: &mut TcpStream, wait: Duration, max_bytes: u64) {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 64 * 1024];
        while !self.ending.closed() && self.ending.drained < max_bytes {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => break,
                Ok(read) => {
                    if !self.read_result(read, &buf) {
                        break;
                    }
                }
            }
        }
    }
}

/// Server (unmasked) frames, parsed incrementally without keeping payloads: only a close
/// frame's code matters here.
#[derive(Default)]
struct ServerFrames {
    pending: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
}

impl ServerFrames {
    /// `Some(code)` once a close frame is complete (`Some(None)`: a close without a code).
    fn feed(&mut self, mut bytes: &[u8]) -> Option<Option<u16>> {
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(bytes.len());
                self.skip -= n as u64;
                bytes = &bytes[n..];
                if self.skip > 0 {
                    return None;
                }
            }
            self.pending.extend_from_slice(bytes);
            bytes = &[];
            let buf = &self.pending;
            let [b0, b1, ..] = buf[..] else { return None };
            let (len, header) = match b1 & 0x7f {
                126 => match buf.get(2..4) {
                    Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                    None => return None,
                },
                127 => match buf.get(2..10) {
                    Some(b) => {
                        let mut eight = [0u8; 8];
                        eight.copy_from_slice(b);
                        (u64::from_be_bytes(eight), 10)
                    }
                    None => return None,
                },
                n => (u64::from(n), 2),
            };
            if b0 & 0x0f == 0x8 {
                let end = header + len as usize;
                if buf.len() < end {
                    return None;
                }
                let payload = &buf[header..end];
                return Some(
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                );
            }
            // Skip this frame's payload: what is already buffered, then the rest as it comes.
            let available = (buf.len() - header) as u64;
            let rest = self.pending.split_off(header + available.min(len) as usize);
            self.skip = len - available.min(len);
            self.pending = rest;
            if self.skip == 0 && self.pending.is_empty() {
                return None;
            }
            if self.skip > 0 {
                return None;
            }
        }
    }
}

/// A minimal HTTP/1.1 exchange on a fresh connection (`Connection: close`): the status, and
/// whether the body holds an API error object. Bounded by `wait`.
pub async fn http_exchange(server: SocketAddr, i: usize, request: &[u8], wait: Duration) -> String {
    let exchange = async {
        let mut stream = tcp(server, i).await?;
        stream.write_all(request).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(response)
    };
    match tokio::time::timeout(wait, exchange).await {
        Err(_) => "no answer in time".into(),
        Ok(Err(e)) => format!("{} during the request", e.kind()),
        Ok(Ok(response)) => response_label(&response),
    }
}

/// `http 200`, or `http 200 error <code>` when an API error object is in the body.
pub fn response_label(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(&response[..response.len().min(64)]).into_owned();
    let Some(status) = text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)) else {
        return "no http response".into();
    };
    match memchr::memmem::find(response, b"\"error\":{\"code\":") {
        Some(at) => {
            let digits: String = response[at + 16..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| *b as char)
                .collect();
            format!("http {status} error {digits}")
        }
        None => format!("http {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = frame(true, opcode, payload, false);
        f[0] = 0x80 | opcode;
        f
    }

    #[test]
    fn finds_the_close_code_after_data_frames_split_anywhere() {
        let mut bytes = server_frame(0x1, &vec![b'x'; 70_000]);
        bytes.extend(server_frame(0x1, b"{}"));
        bytes.extend(server_frame(0x8, &[0x0b, 0xc0, b'x']));
        for cut in [1, 3, 100, 70_004, bytes.len() - 2] {
            let mut frames = ServerFrames::default();
            assert_eq!(frames.feed(&bytes[..cut]), None, "cut at {cut}");
            assert_eq!(frames.feed(&bytes[cut..]), Some(Some(3008)), "cut at {cut}");
        }
    }

    #[test]
    fn labels_api_errors_and_statuses() {
        assert_eq!(
            response_label(b"HTTP/1.1 200 OK\r\n\r\n{\"error\":{\"code\":107,\"message\":\"x\"}}"),
            "http 200 error 107"
        );
        assert_eq!(
            response_label(b"HTTP/1.1 413 Payload Too Large\r\n\r\n"),
            "http 413"
        );
        assert_eq!(response_label(b""), "no http response");
    }

    #[test]
    fn frames_use_the_length_forms_of_rfc_6455() {
        assert_eq!(frame(true, 1, b"hi", true)[1], 0x82);
        assert_eq!(frame(true, 1, &[0; 200], true)[1], 0x80 | 126);
        assert_eq!(frame(true, 1, &[0; 70_000], false)[1], 127);
        assert_eq!(huge_header(1 << 30).len(), 14);
    }
}
