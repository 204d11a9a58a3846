//! One WebSocket connection's socket: reading what the kernel has without a standing buffer,
//! and writing prepared frames without blocking the session.

use super::frame::{
    parse_close, parse_frame, violation, write_close, write_header, Violation,
    CLOSE_INVALID_PAYLOAD, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA, OP_BINARY,
    OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use crate::edges::spare;
use crate::edges::tls::Socket;
use bytes::Bytes;
use std::io;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A complete message of the connection's type (text already checked to be UTF-8).
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

/// A server-side WebSocket connection over a TCP stream, plain or TLS.
pub struct WsConn {
    io: Socket,
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
    /// The connection speaks binary messages (Protobuf) instead of text (JSON).
    binary: bool,
}

/// Upper bound of one read burst, so one busy client cannot monopolize its task.
const READ_BURST: usize = 256 * 1024;

impl WsConn {
    /// `preread`: bytes the HTTP layer read past the handshake.
    pub fn new(io: Socket, preread: &[u8], max_message: usize) -> WsConn {
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
            binary: false,
        }
    }

    /// Makes this a binary connection (the Protobuf protocol): messages both ways are binary, and
    /// a text message from the client is refused like a binary one on a text connection.
    pub fn binary(mut self, binary: bool) -> WsConn {
        self.binary = binary;
        self
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

    /// Whether anything is waiting to be handed to the kernel (TLS records included).
    pub fn is_writing(&self) -> bool {
        self.queued_out() > 0 || self.io.has_pending_output()
    }

    /// Whether TLS records wait for the kernel (never on a plain socket).
    pub fn has_pending_output(&self) -> bool {
        self.io.has_pending_output()
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
                        let expected = if self.binary { OP_BINARY } else { OP_TEXT };
                        if opcode != expected {
                            return Err(violation(
                                CLOSE_UNSUPPORTED_DATA,
                                if self.binary {
                                    "text frame on a Protobuf connection: send binary frames"
                                } else {
                                    "binary frame on a JSON connection: send text frames"
                                },
                            ));
                        }
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

    /// Queues `messages` as frames of the connection's type: text frames with the messages joined
    /// by newlines (JSON), or binary frames with them concatenated (Protobuf messages carry their
    /// own length prefix). Frames hold at most `max_frame` bytes (a single larger message keeps its
    /// own frame). Call only when no frame is being written (`queued_out() == 0`; TLS records
    /// rustls still holds go first); [`WsConn::try_write`] hands them to the kernel. Returns
    /// (bytes of payload, frames queued).
    pub fn queue_messages(&mut self, messages: &[Bytes], max_frame: usize) -> (usize, usize) {
        debug_assert!(self.out.len() == self.written);
        let (opcode, separator): (u8, &[u8]) = if self.binary {
            (OP_BINARY, b"")
        } else {
            (OP_TEXT, b"\n")
        };
        let sep = separator.len();
        let total: usize = messages.iter().map(|m| m.len() + sep).sum();
        // Pongs owed go first, in the same write.
        let mut out = std::mem::take(&mut self.control);
        if out.capacity() == 0 {
            out = spare::take_frames();
        }
        out.reserve(total + 10 * (1 + total / max_frame.max(1)));
        let mut frames = 0;
        let mut i = 0;
        while i < messages.len() {
            // Take as many messages as fit in one frame (at least one).
            let mut len = messages[i].len();
            let mut j = i + 1;
            while j < messages.len() && len + sep + messages[j].len() <= max_frame {
                len += sep + messages[j].len();
                j += 1;
            }
            write_header(&mut out, opcode, len);
            for (k, message) in messages[i..j].iter().enumerate() {
                if k > 0 {
                    out.extend_from_slice(separator);
                }
                out.extend_from_slice(message);
            }
            frames += 1;
            i = j;
        }
        self.start(out);
        (total.saturating_sub(messages.len() * sep), frames)
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
                spare::give_frames(std::mem::take(&mut self.out));
                self.written = 0;
                if self.control.is_empty() {
                    // TLS holds encrypted records until the kernel takes them; the kernel
                    // taking them is progress (a slow reader is not a stalled one).
                    if self.io.try_flush()? > 0 {
                        self.progress_at = Instant::now();
                    }
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
        let _ = socket2::SockRef::from(self.io.tcp()).set_linger(Some(Duration::ZERO));
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
