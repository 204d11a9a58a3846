//! Tools for attacking a server the way a hostile client would: raw WebSocket frames written by
//! hand (masked, possibly invalid), clients that never read, and measurements of what the server
//! holds (process RSS, the kernel's per-socket memory as `ss` reports it).

use super::{ws_handshake, TestServer, WAIT};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame, as RFC 6455 requires of clients.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = client_frame_header(opcode, payload.len() as u64);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    out
}

/// The head of a final, masked client frame announcing `len` payload bytes (which a test may
/// then never send).
pub fn client_frame_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out
}

/// A WebSocket connection driven byte by byte.
pub struct RawWs {
    pub tcp: TcpStream,
    buffered: Vec<u8>,
}

/// How a raw connection ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEnd {
    /// A close frame with this code (and the socket then ended).
    Close(u16, String),
    /// The server reset the connection (no close frame read).
    Reset,
    /// End of stream without a close frame.
    Eof,
    /// Nothing within the wait.
    Open,
}

impl RawWs {
    /// Completes a handshake; `recv_buffer` (when set) shrinks the client's receive buffer so that
    /// a client that does not read stalls the server's writes early.
    pub async fn open(addr: SocketAddr, recv_buffer: Option<usize>) -> RawWs {
        let (status, tcp) = ws_handshake(addr).await;
        assert_eq!(status, 101, "handshake");
        if let Some(size) = recv_buffer {
            socket2::SockRef::from(&tcp)
                .set_recv_buffer_size(size)
                .unwrap();
        }
        RawWs {
            tcp,
            buffered: Vec::new(),
        }
    }

    /// The client's local port (the server side's peer port).
    pub fn local_port(&self) -> u16 {
        self.tcp.local_addr().unwrap().port()
    }

    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(&client_frame(opcode, payload)).await
    }

    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.send(OP_TEXT, text.as_bytes()).await
    }

    /// Sends `connect` with `token` (not reading the reply).
    pub async fn connect(&mut self, token: &str) {
        let command = serde_json::json!({"id": 1, "connect": {"token": token}});
        self.send_text(&command.to_string()).await.unwrap();
    }

    /// Reads server frames until a close frame, a reset, the end of the stream or `wait`.
    /// Text frames are skipped.
    pub async fn read_end(&mut self, wait: Duration) -> RawEnd {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some((opcode, payload, used)) = server_frame(&self.buffered) {
                self.buffered.drain(..used);
                if opcode == OP_CLOSE {
                    let code = payload
                        .get(..2)
                        .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into();
                    return RawEnd::Close(code, reason);
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Err(_) => return RawEnd::Open,
                Ok(Ok(0)) => return RawEnd::Eof,
                Ok(Ok(n)) => self.buffered.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return RawEnd::Reset
                }
                Ok(Err(e)) => panic!("read: {e}"),
            }
        }
    }
}

/// Parses one unmasked server frame: (opcode, payload, bytes used).
fn server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let (len, pos) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(pos..pos + len)?.to_vec();
    Some((b0 & 0x0f, payload, pos + len))
}

/// This process's resident set, KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The server side of one TCP connection as `ss -tmn` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSocket {
    /// Bytes not yet acknowledged by the peer (`Send-Q`).
    pub send_q: u64,
    /// Memory the kernel has allocated for the send queue (`skmem` `w`, bytes).
    pub wmem_queued: u64,
    /// The send buffer limit (`skmem` `tb`, bytes).
    pub sndbuf: u64,
}

/// The server's socket towards the client at `client_port`, if it still exists.
pub fn server_socket(server: &TestServer, client_port: u16) -> Option<KernelSocket> {
    let filter = format!(
        "( sport = :{} and dport = :{client_port} )",
        server.addr.port()
    );
    let output = std::process::Command::new("ss")
        .args(["-tmnH", &filter])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    let _state = words.next()?;
    let _recv_q = words.next()?;
    let send_q = words.next()?.parse().ok()?;
    let skmem = text.split("skmem:(").nth(1)?.split(')').next()?;
    let field = |name: &str| {
        skmem
            .split(',')
            .find_map(|f| f.strip_prefix(name)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(KernelSocket {
        send_q,
        wmem_queued: field("w"),
        sndbuf: field("tb"),
    })
}

/// Waits until the server has no socket towards `client_port` any more; returns how long it took.
pub async fn socket_gone_within(
    server: &TestServer,
    client_port: u16,
    wait: Duration,
) -> Option<Duration> {
    let start = std::time::Instant::now();
    while start.elapsed() < wait {
        if server_socket(server, client_port).is_none() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Default wait of the hostile tests.
pub const HOSTILE_WAIT: Duration = WAIT;
