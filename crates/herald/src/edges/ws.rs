//! Server side of RFC 6455 framing, written for many idle connections.
//!
//! A general WebSocket library keeps a read buffer per connection (8 KiB in tokio-util's framing),
//! which alone is twice Herald's budget for an idle connection. Here nothing is buffered while a
//! connection is idle: the session waits for readiness, then [`WsConn::read_available`] reads what
//! the kernel has into a stack buffer and keeps only an incomplete frame's bytes. Writes are built
//! into one buffer (frames for several messages) and written without waiting: the session keeps
//! serving its timers while a write is pending, and measures how long the write made no progress.
//!
//! The parsers ([`parse_frame`], [`parse_close`]) are pure so they are tested and fuzzed directly.

use bytes::Bytes;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes of RFC 6455 that the framing layer itself sends.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A framing violation: the connection must be closed with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

/// One parsed frame, payload already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Parses one client frame from the start of `buf`. `Ok(None)`: more bytes are needed.
/// `max_payload` bounds a single frame (a message is bounded by the caller across fragments).
pub fn parse_frame(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, Violation> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(violation(CLOSE_PROTOCOL_ERROR, "reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    if b1 & 0x80 == 0 {
        return Err(violation(
            CLOSE_PROTOCOL_ERROR,
            "client frames must be masked",
        ));
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut eight = [0u8; 8];
                eight.copy_from_slice(b);
                (u64::from_be_bytes(eight), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 {
        if !fin || len > 125 {
            return Err(violation(CLOSE_PROTOCOL_ERROR, "invalid control frame"));
        }
        if !matches!(opcode, OP_CLOSE | OP_PING | OP_PONG) {
            return Err(violation(CLOSE_PROTOCOL_ERROR, "unknown opcode"));
        }
    } else if opcode > OP_BINARY {
        return Err(violation(CLOSE_PROTOCOL_ERROR, "unknown opcode"));
    }
    if len > max_payload as u64 {
        return Err(violation(CLOSE_TOO_BIG, "message too big"));
    }
    let len = len as usize;
    let Some(mask) = buf.get(pos..pos + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    pos += 4;
    let Some(data) = buf.get(pos..pos + len) else {
        return Ok(None);
    };
    let payload = data
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i & 3])
        .collect();
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload,
        },
        pos + len,
    )))
}

/// Whether a client may send `code` in a close frame (RFC 6455 §7.4): the codes defined for use
/// in frames (1004, 1005, 1006 and 1015 are not), the IANA-registered 1012-1014, and the ranges for
/// libraries and applications (3000-4999). Anything else is a protocol error.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks a client's close payload (RFC 6455 §5.5.1): empty, or a valid code followed by a UTF-8
/// reason. Returns the code, if any.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(violation(CLOSE_PROTOCOL_ERROR, "close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(violation(CLOSE_PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(violation(
                    CLOSE_INVALID_PAYLOAD,
                    "close reason is not UTF-8",
                ));
            }
            Ok(Some(code))
        }
    }
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    write_header(out, OP_CLOSE, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends a server frame header (servers do not mask).
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text or binary message (text already checked to be UTF-8).
    Message(Vec<u8>),
    /// The peer sent a close frame (its code, if any).
    Close(Option<u16>),
}

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the connection")]
    Eof,
    #[error("protocol violation {}: {}", .0.code, .0.reason)]
    Violation(Violation),
}

/// A server-side WebSocket connection over a TCP stream.
pub struct WsConn {
    io: TcpStream,
    /// Bytes of an incomplete frame; empty (no allocation) while idle.
    partial: Vec<u8>,
    /// Fragments of an incomplete message.
    message: Vec<u8>,
    /// Opcode of the message being assembled (text messages are checked for UTF-8).
    message_opcode: u8,
    in_message: bool,
    max_message: usize,
    /// Control frames (pongs, close) owed to the peer, written once `out` is done.
    control: Vec<u8>,
    /// Frames being written; `out[written..]` is still to go. Empty (no allocation) when idle.
    out: Vec<u8>,
    written: usize,
    /// When the pending write last made progress (or started).
    progress_at: Instant,
    /// Pings received since the session last asked ([`WsConn::take_pings`]).
    pings: u32,
}

/// Upper bound of one read burst, so one busy client cannot monopolize its task.
const READ_BURST: usize = 256 * 1024;

impl WsConn {
    /// `preread`: bytes the HTTP layer read past the handshake.
    pub fn new(io: TcpStream, preread: &[u8], max_message: usize) -> WsConn {
        WsConn {
            io,
            partial: preread.to_vec(),
            message: Vec::new(),
            message_opcode: OP_TEXT,
            in_message: false,
            max_message,
            control: Vec::new(),
            out: Vec::new(),
            written: 0,
            progress_at: Instant::now(),
            pings: 0,
        }
    }

    /// Waits until the socket can take more bytes. Cancel-safe.
    pub async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    /// Bytes owed to the peer and not yet handed to the kernel: frames being written and control
    /// frames (pongs) waiting behind them.
    pub fn queued_out(&self) -> usize {
        self.out.len() - self.written + self.control.len()
    }

    /// Whether anything is waiting to be handed to the kernel.
    pub fn is_writing(&self) -> bool {
        self.queued_out() > 0
    }

    /// While a write is pending: since when it has made no progress.
    pub fn stalled_since(&self) -> Option<Instant> {
        self.is_writing().then_some(self.progress_at)
    }

    /// Pings received since the last call (each already answered with a queued pong).
    pub fn take_pings(&mut self) -> u32 {
        std::mem::take(&mut self.pings)
    }

    /// Waits until the socket is readable. Cancel-safe and holds no buffer.
    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    /// Whether bytes read earlier may still hold a complete frame.
    pub fn has_buffered(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Reads whatever the kernel has (without waiting) and appends complete messages to `out`.
    /// Pings are answered (queued for the next flush); pongs are ignored.
    pub fn read_available(&mut self, out: &mut Vec<Incoming>) -> Result<usize, WsError> {
        let mut stack = [0u8; 8192];
        let mut total = 0;
        while total < READ_BURST {
            match self.io.try_read(&mut stack) {
                Ok(0) => {
                    if total == 0 && self.partial.is_empty() {
                        return Err(WsError::Eof);
                    }
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.partial.extend_from_slice(&stack[..n]);
                    if n < stack.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WsError::Io(e)),
            }
        }
        self.parse_buffered(out).map_err(WsError::Violation)?;
        Ok(total)
    }

    fn parse_buffered(&mut self, out: &mut Vec<Incoming>) -> Result<(), Violation> {
        let mut consumed = 0;
        while let Some((frame, used)) = parse_frame(&self.partial[consumed..], self.max_message)? {
            consumed += used;
            match frame.opcode {
                OP_PING => {
                    // Owed pongs count against the session's output bound (`queued_out`).
                    self.pings = self.pings.saturating_add(1);
                    write_header(&mut self.control, OP_PONG, frame.payload.len());
                    self.control.extend_from_slice(&frame.payload);
                }
                OP_PONG => {}
                OP_CLOSE => {
                    out.push(Incoming::Close(parse_close(&frame.payload)?));
                    break;
                }
                opcode => {
                    let continuation = opcode == OP_CONTINUATION;
                    if continuation != self.in_message {
                        return Err(violation(
                            CLOSE_PROTOCOL_ERROR,
                            "unexpected continuation state",
                        ));
                    }
                    if self.message.len() + frame.payload.len() > self.max_message {
                        return Err(violation(CLOSE_TOO_BIG, "message too big"));
                    }
                    if !continuation {
                        self.message_opcode = opcode;
                    }
                    let whole = if frame.fin && !continuation {
                        frame.payload
                    } else {
                        self.message.extend_from_slice(&frame.payload);
                        self.in_message = !frame.fin;
                        if !frame.fin {
                            continue;
                        }
                        std::mem::take(&mut self.message)
                    };
                    if self.message_opcode == OP_TEXT && std::str::from_utf8(&whole).is_err() {
                        return Err(violation(CLOSE_INVALID_PAYLOAD, "invalid UTF-8"));
                    }
                    out.push(Incoming::Message(whole));
                }
            }
        }
        self.partial.drain(..consumed);
        if self.partial.is_empty() && self.partial.capacity() > 0 {
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Queues `messages` as text frames: merged with newlines into frames of at most `max_frame`
    /// bytes (a single larger message keeps its own frame). Call only when nothing is being
    /// written (`!is_writing()`); [`WsConn::try_write`] hands them to the kernel.
    /// Returns (bytes of payload, frames queued).
    pub fn queue_text(&mut self, messages: &[Bytes], max_frame: usize) -> (usize, usize) {
        debug_assert!(self.out.len() == self.written);
        let total: usize = messages.iter().map(|m| m.len() + 1).sum();
        // Pongs owed go first, in the same write.
        let mut out = std::mem::take(&mut self.control);
        out.reserve(total + 10 * (1 + total / max_frame.max(1)));
        let mut frames = 0;
        let mut i = 0;
        while i < messages.len() {
            // Take as many messages as fit in one frame (at least one).
            let mut len = messages[i].len();
            let mut j = i + 1;
            while j < messages.len() && len + 1 + messages[j].len() <= max_frame {
                len += 1 + messages[j].len();
                j += 1;
            }
            write_header(&mut out, OP_TEXT, len);
            for (k, message) in messages[i..j].iter().enumerate() {
                if k > 0 {
                    out.push(b'\n');
                }
                out.extend_from_slice(message);
            }
            frames += 1;
            i = j;
        }
        self.start(out);
        (total.saturating_sub(messages.len()), frames)
    }

    fn start(&mut self, out: Vec<u8>) {
        if !out.is_empty() {
            self.out = out;
            self.written = 0;
            self.progress_at = Instant::now();
        }
    }

    /// Hands as much of the queued output to the kernel as it takes, without waiting. Control
    /// frames queued behind a finished write are started here. Returns the bytes written.
    pub fn try_write(&mut self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            if self.written == self.out.len() {
                // Done: give the buffer back (an idle connection holds none).
                self.out = Vec::new();
                self.written = 0;
                if self.control.is_empty() {
                    return Ok(total);
                }
                let control = std::mem::take(&mut self.control);
                self.start(control);
            }
            match self.io.try_write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    total += n;
                    self.progress_at = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes everything queued, waiting for the socket; gives up (`TimedOut`) once a write has
    /// made no progress for `stall`.
    pub async fn write_queued(&mut self, stall: Duration) -> io::Result<()> {
        loop {
            self.try_write()?;
            let Some(since) = self.stalled_since() else {
                return Ok(());
            };
            let deadline = tokio::time::Instant::from_std(since + stall);
            match tokio::time::timeout_at(deadline, self.io.writable()).await {
                Ok(ready) => ready?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
    }

    /// Queues a close frame with `code` and `reason` behind whatever is owed.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        write_close(&mut self.control, code, reason);
    }

    /// Ends the connection at once with a reset (SO_LINGER 0): nothing the kernel still holds
    /// for this peer is sent, and its memory is released when the socket is dropped. When no
    /// frame is half-written, a close frame is first offered to the kernel without waiting — a
    /// peer that still reads learns the code; one that does not is not waited for.
    pub fn abort(&mut self, close: Option<(u16, &str)>) {
        if let (Some((code, reason)), false) = (close, self.out.len() > self.written) {
            let mut frame = Vec::new();
            write_close(&mut frame, code, reason);
            let _ = self.io.try_write(&frame);
        }
        let _ = socket2::SockRef::from(&self.io).set_linger(Some(Duration::ZERO));
    }

    /// Sends FIN after what was written, without waiting for the peer.
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }

    /// Reads and discards input until the peer closes or `wait` passes, so closing our side does not
    /// turn unread input into a reset that could destroy the close frame before the peer reads it.
    pub async fn drain_until_closed(&mut self, wait: std::time::Duration) {
        let _ = self.io.shutdown().await;
        let _ = tokio::time::timeout(wait, async {
            loop {
                if self.io.readable().await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                match self.io.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn parses_masked_frames_of_every_length_form() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = client_frame(true, OP_TEXT, &payload);
            let (frame, used) = parse_frame(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(frame.payload, payload);
            assert!(frame.fin);
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                if cut < bytes.len() {
                    assert_eq!(
                        parse_frame(&bytes[..cut], 1 << 20).unwrap(),
                        None,
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut unmasked = client_frame(true, OP_TEXT, b"hi");
        unmasked[1] &= 0x7f;
        assert_eq!(
            parse_frame(&unmasked, 100).unwrap_err().code,
            CLOSE_PROTOCOL_ERROR
        );
        let mut rsv = client_frame(true, OP_TEXT, b"hi");
        rsv[0] |= 0x40;
        assert_eq!(
            parse_frame(&rsv, 100).unwrap_err().code,
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            parse_frame(&client_frame(true, 0x3, b""), 100)
                .unwrap_err()
                .code,
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            parse_frame(&client_frame(false, OP_PING, b""), 100)
                .unwrap_err()
                .code,
            CLOSE_PROTOCOL_ERROR
        );
        assert_eq!(
            parse_frame(&client_frame(true, OP_PING, &[0; 126]), 1000)
                .unwrap_err()
                .code,
            CLOSE_PROTOCOL_ERROR
        );
        let big = client_frame(true, OP_TEXT, &[b'a'; 101]);
        assert_eq!(
            parse_frame(&big[..4], 100).unwrap_err().code,
            CLOSE_TOO_BIG,
            "rejected from the header alone"
        );
    }

    #[test]
    fn close_payloads_are_checked_per_rfc_6455() {
        let with_code = |code: u16, reason: &[u8]| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            parse_close(&payload)
        };
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(&[3]).unwrap_err().code, CLOSE_PROTOCOL_ERROR);
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(
                with_code(code, b"").unwrap_err().code,
                CLOSE_PROTOCOL_ERROR,
                "{code}"
            );
        }
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 4999,
        ] {
            assert_eq!(
                with_code(code, "bye ✓".as_bytes()),
                Ok(Some(code)),
                "{code}"
            );
        }
        assert_eq!(
            with_code(1000, &[0xce, 0xba, 0xff]).unwrap_err().code,
            CLOSE_INVALID_PAYLOAD
        );
    }

    #[test]
    fn close_frames_cut_long_reasons_on_a_char_boundary() {
        let mut out = Vec::new();
        write_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2, "short length form");
        assert!(out.len() - 2 <= 125, "fits a control frame");
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        for (len, expected) in [
            (5usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut out = Vec::new();
            write_header(&mut out, OP_TEXT, len);
            assert_eq!(out.len(), expected);
            assert_eq!(out[0], 0x81);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut state = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            let _ = parse_frame(&bytes, 64);
        }
    }
}
