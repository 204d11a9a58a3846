//! Reading the client: frames from the socket, each message against the connection's rate, then
//! to its handler. Malformed messages get a `pusher:error` naming what is wrong; the connection
//! stays open, as with Pusher.

use super::run::Close;
use super::PusherSession;
use crate::edges::ws::{Incoming, WsError, CLOSE_TOO_BIG};
use herald_pusher::codes::ErrorCode;
use herald_pusher::incoming::{decode, ClientMessage};
use std::time::Instant;

/// Messages refused in a row for their rate before the connection is closed (4100: the client
/// backs off before reconnecting).
const MAX_RATE_REJECTIONS: u32 = 64;

impl PusherSession {
    pub(super) async fn read_input(&mut self) -> Result<(), Close> {
        let mut incoming = Vec::new();
        let read = match self.ws.read_available(&mut incoming) {
            Ok(read) => read,
            Err(WsError::Eof) => return Err(Close::gone("connection closed")),
            Err(WsError::Io(_)) => return Err(Close::gone("read error")),
            Err(WsError::Violation(v)) => {
                // Pusher has no code for a broken frame; 4009 stops pusher-js from retrying the
                // same thing. Too big: reconnecting is fine (4100 backs off first).
                let code = if v.code == CLOSE_TOO_BIG {
                    ErrorCode::OverCapacity
                } else {
                    ErrorCode::Unauthorized
                };
                return Err(Close::refused(code, v.reason));
            }
        };
        if read > 0 {
            self.node.metrics.bytes_in.inc_by(read as u64);
        }
        let pings = self.ws.take_pings();
        let now = Instant::now();
        if pings > 0 && !(0..pings).all(|_| self.ping_bucket.take(now)) {
            return Err(Close::refused(
                ErrorCode::OverCapacity,
                "too many WebSocket pings (client.max_ping_rate)",
            ));
        }
        for item in incoming {
            match item {
                Incoming::Message(payload) => {
                    self.last_heard = now;
                    self.pong_deadline = None;
                    if !self.bucket.take(now) {
                        self.rate_rejections += 1;
                        if self.rate_rejections > MAX_RATE_REJECTIONS {
                            return Err(Close::refused(
                                ErrorCode::OverCapacity,
                                "too many messages (client.command_rate)",
                            ));
                        }
                        self.queue_error(None, "message refused: over client.command_rate");
                        continue;
                    }
                    self.rate_rejections = 0;
                    self.handle_message(&payload).await?;
                }
                Incoming::Close(_) => return Err(Close::gone("connection closed")),
            }
        }
        Ok(())
    }

    async fn handle_message(&mut self, payload: &[u8]) -> Result<(), Close> {
        // Text frames are checked to be UTF-8 by the framing.
        let text = String::from_utf8_lossy(payload);
        let message = match decode(&text) {
            Ok(message) => message,
            Err(e) => {
                self.count_refusal("message");
                self.queue_error(None, &e.to_string());
                return Ok(());
            }
        };
        match message {
            ClientMessage::Ping => self.queue(herald_pusher::outgoing::pong()),
            ClientMessage::Pong => {}
            ClientMessage::Subscribe(request) => self.subscribe(request).await,
            ClientMessage::Unsubscribe { channel } => {
                self.unsubscribe_channel(channel.as_str()).await;
            }
            ClientMessage::Signin { auth, user_data } => self.signin(&auth, &user_data)?,
            ClientMessage::ClientEvent(event) => self.client_event(event).await,
        }
        Ok(())
    }
}
