//! What a session reads commands from and writes messages to. Each transport is a variant, so
//! the session's jobs (commands, limits, storm control) are written once for all of them and the
//! hot path stays a static call.

use crate::edges::ws::{Incoming, WsConn, WsError};
use bytes::Bytes;
use std::io;
use std::time::{Duration, Instant};

pub enum Transport {
    WebSocket(WsConn),
}

impl Transport {
    /// Whether bytes read earlier may still hold a complete message.
    pub fn has_buffered(&self) -> bool {
        match self {
            Transport::WebSocket(ws) => ws.has_buffered(),
        }
    }

    /// Waits until input can be read. Cancel-safe.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::WebSocket(ws) => ws.readable().await,
        }
    }

    /// Waits until more output can be written. Cancel-safe.
    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Transport::WebSocket(ws) => ws.writable().await,
        }
    }

    /// Whether output is waiting to be handed to the kernel.
    pub fn is_writing(&self) -> bool {
        match self {
            Transport::WebSocket(ws) => ws.is_writing(),
        }
    }

    /// Bytes owed to the peer and not yet handed to the kernel.
    pub fn queued_out(&self) -> usize {
        match self {
            Transport::WebSocket(ws) => ws.queued_out(),
        }
    }

    /// While a write is pending: since when it has made no progress.
    pub fn stalled_since(&self) -> Option<Instant> {
        match self {
            Transport::WebSocket(ws) => ws.stalled_since(),
        }
    }

    /// Transport-level pings received since the last call (already answered).
    pub fn take_pings(&mut self) -> u32 {
        match self {
            Transport::WebSocket(ws) => ws.take_pings(),
        }
    }

    /// Reads what is available without waiting and appends complete messages to `out`; returns
    /// the bytes read.
    pub fn read_available(&mut self, out: &mut Vec<Incoming>) -> Result<usize, WsError> {
        match self {
            Transport::WebSocket(ws) => ws.read_available(out),
        }
    }

    /// Queues encoded messages, merged into as few frames of at most `max_frame` bytes as the
    /// transport allows. Call only when nothing is being written. Returns (payload bytes, frames).
    pub fn queue_messages(&mut self, messages: &[Bytes], max_frame: usize) -> (usize, usize) {
        match self {
            Transport::WebSocket(ws) => ws.queue_text(messages, max_frame),
        }
    }

    /// Hands queued output to the kernel as far as it takes it, without waiting.
    pub fn try_write(&mut self) -> io::Result<usize> {
        match self {
            Transport::WebSocket(ws) => ws.try_write(),
        }
    }

    /// Writes everything queued; gives up once a write made no progress for `stall`.
    pub async fn write_queued(&mut self, stall: Duration) -> io::Result<()> {
        match self {
            Transport::WebSocket(ws) => ws.write_queued(stall).await,
        }
    }

    /// Queues the transport's close (a close frame) with `code` and `reason`.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        match self {
            Transport::WebSocket(ws) => ws.queue_close(code, reason),
        }
    }

    /// Ends the connection at once, offering the close code when that does not wait.
    pub fn abort(&mut self, close: Option<(u16, &str)>) {
        match self {
            Transport::WebSocket(ws) => ws.abort(close),
        }
    }

    /// Ends our side after what was written.
    pub async fn shutdown(&mut self) {
        match self {
            Transport::WebSocket(ws) => ws.shutdown().await,
        }
    }

    /// Ends our side, then waits up to `wait` for the peer to close, so the close is not lost.
    pub async fn drain_until_closed(&mut self, wait: Duration) {
        match self {
            Transport::WebSocket(ws) => ws.drain_until_closed(wait).await,
        }
    }
}
