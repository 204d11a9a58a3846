//! Reading the client: frames from the socket into the backlog, WebSocket pings against their
//! rate, and the backlog's commands to the dispatcher as far as the output bound allows.

use super::{Close, Ending, Session};
use crate::edges::ws::{Incoming, WsError};
use herald_protocol::{Disconnect, Method};
use std::collections::VecDeque;
use std::time::Instant;

/// Input read from the socket and not yet answered: the session stops reading more while its
/// output is over the bound, and answers the rest when the output has drained.
#[derive(Default)]
pub(super) struct Backlog {
    messages: VecDeque<Incoming>,
    commands: VecDeque<(u32, Method)>,
}

impl Session {
    /// Reads what the socket has into the backlog, then answers it as far as the output bound
    /// allows.
    pub(super) async fn read_input(&mut self) -> Result<(), Close> {
        let mut incoming = Vec::new();
        let read = match self.conn.read_available(&mut incoming) {
            Ok(read) => read,
            Err(WsError::Eof) => return Err(Close::gone("connection closed")),
            Err(WsError::Io(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                return Err(Close::gone("read error"));
            }
            Err(WsError::Violation(v)) => {
                let label = if v.code == crate::edges::ws::CLOSE_TOO_BIG {
                    "message too big"
                } else {
                    "protocol error"
                };
                return Err(Close {
                    code: v.code,
                    reason: v.reason.to_string(),
                    ending: Ending::Polite,
                    label,
                });
            }
        };
        if read > 0 {
            self.node.metrics.bytes_in.inc_by(read as u64);
        }
        if let Some(reason) = self.conn.take_refusal() {
            // The close reason names the field, as the HTTP endpoints' 400 does.
            return Err(Close {
                reason,
                ..Disconnect::BAD_REQUEST.into()
            });
        }
        let pings = self.conn.take_pings();
        if pings > 0 {
            let now = Instant::now();
            if !(0..pings).all(|_| self.ping_bucket.take(now)) {
                return Err(Close::ping_flood());
            }
        }
        // Messages prove the peer is alive; WebSocket pings do not (a client that only pings and
        // never reads must not outlive the pong timeout).
        if incoming.iter().any(|i| matches!(i, Incoming::Message(_))) {
            self.pong_deadline = None;
        }
        if !incoming.is_empty() {
            self.backlog
                .get_or_insert_with(Box::default)
                .messages
                .extend(incoming);
        }
        self.process_input().await
    }

    /// Answers backlogged input until it is all answered or the output is over the bound.
    pub(super) async fn process_input(&mut self) -> Result<(), Close> {
        while !self.output_full() {
            let Some(backlog) = self.backlog.as_mut() else {
                return Ok(());
            };
            if let Some((id, method)) = backlog.commands.pop_front() {
                self.handle_command(id, method).await?;
                continue;
            }
            match backlog.messages.pop_front() {
                Some(Incoming::Message(payload)) => {
                    let max = self.node.config().client.max_commands_per_frame;
                    let commands = match self.format.decode_frame(&payload, max) {
                        Ok(commands) => commands,
                        Err(e) => {
                            tracing::debug!(error = %e, "bad client frame");
                            return Err(Disconnect::BAD_REQUEST.into());
                        }
                    };
                    backlog.commands.extend(commands);
                }
                Some(Incoming::Close(_)) => {
                    return Err(Close {
                        code: 1000,
                        reason: String::new(),
                        ending: Ending::Polite,
                        label: "connection closed",
                    })
                }
                None => self.backlog = None,
            }
        }
        if self.backlog.is_some() {
            // The rest waits, unread, until the client has taken its output.
            self.node.metrics.client_reads_paused.inc();
        }
        Ok(())
    }
}
