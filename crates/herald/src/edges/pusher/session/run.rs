//! The connection's loop: registers the connection, waits for the socket, the outbox or a clock,
//! hands each wake-up to its job, and closes the way Pusher clients understand (a `pusher:error`
//! with the code, then a close frame with it).

use super::{PusherSession, TRANSPORT};
use crate::core::outbox::Outbox;
use crate::core::session_handle::SessionHandle;
use crate::core::wire::Wire;
use herald_pusher::codes::ErrorCode;
use herald_pusher::socket_id::SocketId;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::sleep_until;

/// How a connection ends.
#[derive(Debug)]
pub struct Close {
    /// Told to the client first (`pusher:error`, then the close frame); `None`: the peer is
    /// gone, or a plain close answers its own.
    code: Option<ErrorCode>,
    message: String,
    /// Reset without writing (a client that does not read).
    abort: bool,
    /// `herald_disconnects_total{reason}`.
    label: &'static str,
}

impl Close {
    fn with(code: ErrorCode, message: impl Into<String>, label: &'static str) -> Close {
        Close {
            code: Some(code),
            message: message.into(),
            abort: false,
            label,
        }
    }

    pub(super) fn refused(code: ErrorCode, message: impl Into<String>) -> Close {
        Close::with(code, message, "pusher refused")
    }

    /// The outbox overflowed: 4100 makes pusher-js back off before it reconnects.
    pub(super) fn slow() -> Close {
        Close::with(
            ErrorCode::OverCapacity,
            "slow consumer: the connection did not read its messages fast enough",
            "slow",
        )
    }

    /// A disconnect asked by the server API or a user termination.
    pub(super) fn server(code: ErrorCode, message: String) -> Close {
        Close::with(code, message, "server disconnect")
    }

    pub(super) fn gone(label: &'static str) -> Close {
        Close {
            code: None,
            message: String::new(),
            abort: false,
            label,
        }
    }

    fn aborted(label: &'static str) -> Close {
        Close {
            abort: true,
            ..Close::gone(label)
        }
    }
}

enum Wake {
    Outbox,
    Writable,
    Readable,
    Timer,
}

impl PusherSession {
    /// Serves the connection to its end. Boxed by the caller: its state lives as long as the
    /// connection.
    pub async fn run(mut self: Box<Self>) {
        let close = self.serve().await;
        self.node.metrics.disconnect(close.label);
        if let Some(handle) = &self.handle {
            let code = close.code.map_or(1000, ErrorCode::code);
            let reason = if close.message.is_empty() {
                close.label
            } else {
                &close.message
            };
            let user = self.user.as_deref().unwrap_or("");
            self.node
                .hooks
                .disconnect(&handle.client, user, code, reason);
        }
        if close.abort {
            self.pending.clear();
            self.ws.abort(None);
        } else {
            self.close_politely(&close).await;
        }
        self.cleanup().await;
    }

    /// What is owed goes out first, then the error and the close frame, as long as the peer keeps
    /// reading (a write without progress for `client.write_timeout` ends in a reset).
    async fn close_politely(&mut self, close: &Close) {
        let stall = self.node.config().client.write_timeout;
        if let Some(code) = close.code {
            self.queue_error(Some(code), &close.message);
        }
        let mut written = self.ws.write_queued(stall).await;
        if written.is_ok() {
            let messages = std::mem::take(&mut self.pending);
            self.pending_bytes = 0;
            self.ws.queue_messages(&messages, 0);
            written = self.ws.write_queued(stall).await;
        }
        if written.is_ok() {
            let code = close.code.map_or(1000, ErrorCode::code);
            let reason = close.code.map_or("", ErrorCode::message);
            self.ws.queue_close(code, reason);
            written = self.ws.write_queued(stall).await;
        }
        match written {
            // A moment for the peer's close, so ours is not lost in a reset.
            Ok(()) => self.ws.drain_until_closed(Duration::from_secs(1)).await,
            Err(_) => self.ws.abort(None),
        }
    }

    async fn serve(&mut self) -> Close {
        if let Some(code) = self.refusal {
            return Close::refused(code, code.message());
        }
        let handle = self.register();
        loop {
            if let Err(close) = self.write_some() {
                return close;
            }
            let writing = self.ws.is_writing();
            let reading = !self.output_full();
            let deadline = self.next_deadline();
            // While a write waits on the socket the outbox is left to fill: a client that does
            // not read overflows it and is closed as slow, instead of growing `pending`.
            let wake = tokio::select! {
                biased;
                _ = handle.outbox.slowed(), if writing => {
                    return Close::aborted("slow");
                }
                _ = handle.outbox.wait(), if !writing => Wake::Outbox,
                writable = self.ws.writable(), if writing => match writable {
                    Ok(()) => Wake::Writable,
                    Err(_) => return Close::gone("write error"),
                },
                readable = self.ws.readable(), if reading => match readable {
                    Ok(()) => Wake::Readable,
                    Err(_) => return Close::gone("read error"),
                },
                _ = sleep_until(deadline.into()) => Wake::Timer,
            };
            if self.node.hub.is_stopping() {
                return Close::with(
                    ErrorCode::ReconnectImmediately,
                    "server shutting down",
                    "shutdown",
                );
            }
            let result = match wake {
                Wake::Outbox => Box::pin(self.take_outbox()).await,
                Wake::Writable => Ok(()),
                Wake::Readable => Box::pin(self.read_input()).await,
                Wake::Timer => self.on_timer(),
            };
            if let Err(close) = result {
                return close;
            }
        }
    }

    /// Joins the hub under a fresh socket id and greets the client with it.
    fn register(&mut self) -> Arc<SessionHandle> {
        let node = self.node.clone();
        let config = node.config();
        let c = &config.client;
        let socket_id = SocketId::random(&mut rand::rng());
        let handle = Arc::new(SessionHandle {
            seq: node.next_seq(),
            client: socket_id.as_str().to_string(),
            user: String::new(),
            wire: Wire::Pusher,
            transport: TRANSPORT,
            outbox: Outbox::new(
                c.max_outbox_bytes,
                c.max_outbox_messages,
                node.metrics.outbox_bytes.clone(),
                c.outbox_budget,
            ),
        });
        node.hub.add_session(handle.clone());
        self.handle = Some(handle.clone());
        let timeout = config.pusher.activity_timeout.as_secs();
        self.queue(herald_pusher::outgoing::connection_established(
            &socket_id,
            u32::try_from(timeout).unwrap_or(u32::MAX),
        ));
        self.last_heard = Instant::now();
        handle
    }

    /// Starts writing pending messages once the previous write is done (each its own WebSocket
    /// message, as Pusher clients read them), and hands the kernel what it takes.
    fn write_some(&mut self) -> Result<(), Close> {
        if !self.pending.is_empty() && !self.ws.is_writing() {
            let messages = std::mem::take(&mut self.pending);
            self.pending_bytes = 0;
            let (bytes, frames) = self.ws.queue_messages(&messages, 0);
            self.node.metrics.bytes_out.inc_by(bytes as u64);
            self.node.metrics.frames_out.inc_by(frames as u64);
        }
        match self.ws.try_write() {
            Ok(_) => Ok(()),
            Err(_) => Err(Close::gone("write error")),
        }
    }

    /// The earliest moment a clock needs the loop: the client's silence, its pong, a stalled
    /// write.
    fn next_deadline(&self) -> Instant {
        let config = self.node.config();
        let mut deadline = self
            .pong_deadline
            .unwrap_or(self.last_heard + config.pusher.activity_timeout);
        if let Some(since) = self.ws.stalled_since() {
            deadline = deadline.min(since + config.client.write_timeout);
        }
        deadline
    }

    fn on_timer(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let config = self.node.config();
        if self
            .ws
            .stalled_since()
            .is_some_and(|since| now >= since + config.client.write_timeout)
        {
            return Err(Close::aborted("write timeout"));
        }
        if let Some(deadline) = self.pong_deadline {
            if now >= deadline {
                let mut close = Close::with(
                    ErrorCode::PongNotReceived,
                    ErrorCode::PongNotReceived.message(),
                    "no pong",
                );
                // Not waited for if it does not take what it is owed either.
                close.abort = self.ws.is_writing();
                return Err(close);
            }
            return Ok(());
        }
        if now >= self.last_heard + config.pusher.activity_timeout {
            self.queue(herald_pusher::outgoing::ping());
            self.pong_deadline = Some(now + config.client.pong_timeout);
        }
        Ok(())
    }

    /// Leaves every channel, the signed-in user and the hub once the connection is closed.
    async fn cleanup(&mut self) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        handle.outbox.close();
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe_channel(&channel).await;
        }
        if let Some(user) = self.user.take() {
            self.node.hub.sign_out(&user, handle.seq);
        }
        self.node.hub.remove_session(&handle);
    }
}
