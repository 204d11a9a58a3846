//! What the session reads from and writes to: a WebSocket (bidirectional or unidirectional) or an
//! HTTP stream. One session core serves them all with the same commands, limits and storm control;
//! only the framing, the way commands arrive and the way a connection ends differ.

use crate::edges::stream::requests::uni_connect_command;
use crate::edges::stream::StreamConn;
use crate::edges::ws::{Incoming, WsConn, WsError};
use bytes::Bytes;
use std::io;
use std::time::{Duration, Instant};

pub enum Transport {
    WebSocket(WsConn),
    /// `/connection/uni_websocket`: the first message is the connect request; later ones are
    /// ignored; the client gets bare pushes.
    UniWebSocket {
        ws: WsConn,
        connected: bool,
        /// Why the connect request was refused (a message naming the field), until the session
        /// closes with it.
        refused: Option<String>,
    },
    /// HTTP streaming or SSE; `session`: the secret `/emulation` requests name (bidirectional).
    Stream {
        conn: StreamConn,
        name: &'static str,
        session: Option<String>,
    },
}

impl Transport {
    pub fn stream(conn: StreamConn, name: &'static str, session: Option<String>) -> Transport {
        Transport::Stream {
            conn,
            name,
            session,
        }
    }

    /// The transport's name, as Centrifugo names it.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::WebSocket(_) => "websocket",
            Transport::UniWebSocket { .. } => "uni_websocket",
            Transport::Stream { name, .. } => name,
        }
    }

    /// The client only receives: no replies but the connect push, and no pongs expected.
    pub fn unidirectional(&self) -> bool {
        match self {
            Transport::WebSocket(_) => false,
            Transport::UniWebSocket { .. } => true,
            Transport::Stream { conn, .. } => conn.is_unidirectional(),
        }
    }

    /// The session secret of an emulated connection (sent in the connect reply).
    pub fn emulation_session(&self) -> Option<&str> {
        match self {
            Transport::Stream { session, .. } => session.as_deref(),
            _ => None,
        }
    }

    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.readable().await,
            Transport::Stream { conn, .. } => conn.readable().await,
        }
    }

    pub async fn writable(&self) -> io::Result<()> {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.writable().await,
            Transport::Stream { conn, .. } => conn.writable().await,
        }
    }

    pub fn has_buffered(&self) -> bool {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.has_buffered(),
            Transport::Stream { conn, .. } => conn.has_buffered(),
        }
    }

    pub fn read_available(&mut self, out: &mut Vec<Incoming>) -> Result<usize, WsError> {
        match self {
            Transport::WebSocket(ws) => ws.read_available(out),
            Transport::UniWebSocket {
                ws,
                connected,
                refused,
            } => {
                let mut incoming = Vec::new();
                let read = ws.read_available(&mut incoming)?;
                for item in incoming {
                    match item {
                        Incoming::Message(payload) if !*connected => {
                            *connected = true;
                            match uni_connect_command(&payload) {
                                Ok(command) => out.push(Incoming::Message(command)),
                                Err(e) => *refused = Some(e.0),
                            }
                        }
                        // Centrifugo reads and drops what a unidirectional client sends later.
                        Incoming::Message(_) => {}
                        close => out.push(close),
                    }
                }
                Ok(read)
            }
            Transport::Stream { conn, .. } => conn.read_available(out),
        }
    }

    /// Why the unidirectional connect request just read was refused, once.
    pub fn take_refusal(&mut self) -> Option<String> {
        match self {
            Transport::UniWebSocket { refused, .. } => refused.take(),
            _ => None,
        }
    }

    /// WebSocket pings received since the last call.
    pub fn take_pings(&mut self) -> u32 {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.take_pings(),
            Transport::Stream { .. } => 0,
        }
    }

    pub fn queued_out(&self) -> usize {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.queued_out(),
            Transport::Stream { conn, .. } => conn.queued_out(),
        }
    }

    /// Whether frames are still being handed to the connection (new ones wait behind them).
    pub fn is_writing(&self) -> bool {
        self.queued_out() > 0
    }

    /// Whether TLS records are waiting for the kernel after every frame was handed over: nothing
    /// else may come to write them, so the session waits for the socket.
    pub fn has_pending_output(&self) -> bool {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => {
                ws.has_pending_output()
            }
            Transport::Stream { .. } => false,
        }
    }

    pub fn stalled_since(&self) -> Option<Instant> {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.stalled_since(),
            Transport::Stream { conn, .. } => conn.stalled_since(),
        }
    }

    /// Queues messages for the client (merged into frames of at most `max_frame` where the
    /// transport has frames). Returns (payload bytes, frames or chunks).
    pub fn queue_messages(&mut self, messages: &[Bytes], max_frame: usize) -> (usize, usize) {
        match self {
            Transport::WebSocket(ws) => ws.queue_messages(messages, max_frame),
            Transport::UniWebSocket { ws, .. } => {
                let pushes: Vec<Bytes> = messages
                    .iter()
                    .flat_map(|m| {
                        m.split(|&b| b == b'\n')
                            .filter(|line| !line.is_empty())
                            .filter_map(|line| {
                                crate::edges::stream::framing::unidirectional(&m.slice_ref(line))
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                if pushes.is_empty() {
                    return (0, 0);
                }
                // One push per frame, as Centrifugo's uni_websocket sends them by default.
                let _ = max_frame;
                ws.queue_messages(&pushes, 0)
            }
            Transport::Stream { conn, .. } => conn.queue_messages(messages),
        }
    }

    pub fn try_write(&mut self) -> io::Result<usize> {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.try_write(),
            Transport::Stream { conn, .. } => conn.try_write(),
        }
    }

    pub async fn write_queued(&mut self, stall: Duration) -> io::Result<()> {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => {
                ws.write_queued(stall).await
            }
            Transport::Stream { conn, .. } => conn.write_queued(stall).await,
        }
    }

    /// Queues the end of the connection: a close frame, or a stream's disconnect push.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => {
                ws.queue_close(code, reason)
            }
            Transport::Stream { conn, .. } => conn.queue_close(code, reason),
        }
    }

    /// Ends the connection at once (a client that does not read).
    pub fn abort(&mut self, close: Option<(u16, &str)>) {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.abort(close),
            Transport::Stream { conn, .. } => conn.abort(),
        }
    }

    /// Ends the connection after what was written.
    pub async fn shutdown(&mut self) {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => ws.shutdown().await,
            Transport::Stream { conn, .. } => conn.shutdown(),
        }
    }

    /// Closes and waits (at most `wait`) for the peer to close too.
    pub async fn drain_until_closed(&mut self, wait: Duration) {
        match self {
            Transport::WebSocket(ws) | Transport::UniWebSocket { ws, .. } => {
                ws.drain_until_closed(wait).await
            }
            Transport::Stream { conn, .. } => conn.shutdown(),
        }
    }
}
