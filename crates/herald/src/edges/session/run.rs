//! The connection's loop: waits for the socket, the outbox, the timers or shutdown, hands each
//! wake-up to its job, and closes the connection the way its `Close` says.

use super::output::MAX_BATCH_BYTES;
use super::{Close, Ending, Session};
use crate::core::outbox::Outbox;
use crate::core::session_handle::SessionHandle;
use herald_protocol::Disconnect;
use std::time::{Duration, Instant};
use tokio::time::sleep_until;

/// What woke the loop up.
enum Wake {
    Outbox,
    Writable,
    Readable,
    Timer,
}

impl Session {
    /// Serves the connection to its end. Boxed: an async fn keeps a by-value argument twice in
    /// its state, and this state lives as long as the connection.
    pub async fn run(mut self: Box<Self>) {
        let close = self.serve().await;
        self.node.metrics.disconnect(close.label);
        if let Some(handle) = &self.handle {
            // A peer that vanished has no close reason: the label says what happened instead.
            let reason = if close.reason.is_empty() {
                close.label
            } else {
                &close.reason
            };
            let hooks = &self.node.hooks;
            hooks.disconnect(&handle.client, &self.user, close.code, reason);
        }
        match close.ending {
            Ending::Abort => {
                self.pending.clear();
                self.conn.abort(Some((close.code, &close.reason)));
            }
            Ending::Silent => {}
            Ending::Polite | Ending::Brief => Box::pin(self.close_politely(&close)).await,
        }
        self.cleanup().await;
    }

    /// Replies to the commands before the one that ended the session go out first, then the close
    /// frame, as long as the peer keeps reading (a write without progress for `write_timeout`
    /// ends in a reset). Boxed: only closing connections pay for its state.
    async fn close_politely(&mut self, close: &Close) {
        let stall = self.node.config().client.write_timeout;
        let messages = std::mem::take(&mut self.pending);
        let mut written = self.conn.write_queued(stall).await;
        if written.is_ok() && !messages.is_empty() {
            self.conn.queue_messages(&messages, MAX_BATCH_BYTES);
            written = self.conn.write_queued(stall).await;
        }
        drop(messages);
        if written.is_ok() {
            self.conn.queue_close(close.code, &close.reason);
            written = self.conn.write_queued(stall).await;
        }
        match (written, close.ending) {
            // Give the peer a moment to acknowledge so the close frame is not lost in a reset.
            (Ok(()), Ending::Polite) => self.conn.drain_until_closed(Duration::from_secs(1)).await,
            (Ok(()), _) => self.conn.shutdown().await,
            (Err(_), _) => self.conn.abort(None),
        }
    }

    /// The connection's loop. The idle state is small on purpose (one task per connection, many
    /// thousands idle): the work done on each wake-up runs in boxed futures.
    async fn serve(&mut self) -> Close {
        if self.conn.has_buffered() {
            if let Err(close) = Box::pin(self.read_input()).await {
                return close;
            }
        }
        loop {
            if self.backlog.is_some() && !self.output_full() {
                if let Err(close) = Box::pin(self.process_input()).await {
                    return close;
                }
            }
            if let Err(close) = self.write_some() {
                return close;
            }
            let writing = self.conn.is_writing();
            // Every frame handed over but TLS records still wait for the kernel: wait for the
            // socket too (nothing else may come to write them), and keep draining the outbox.
            let flushing = !writing && self.conn.has_pending_output();
            // Reading waits while the output is over the bound or input is still unanswered, so
            // what a connection makes the server hold is bounded whatever it sends.
            let reading = self.backlog.is_none() && !self.output_full();
            let deadline = self.next_deadline();
            let wake = if writing || flushing {
                // Boxed: only connections with a write pending pay for this state.
                match Box::pin(self.wait_writing(deadline, reading, flushing)).await {
                    Ok(wake) => wake,
                    Err(close) => return close,
                }
            } else {
                let outbox = self.handle.as_deref().map(|h| &h.outbox);
                // A registered connection learns of a shutdown from its outbox (the hub wakes
                // every one): only a connection still in its handshake waits on the node's
                // shutdown future, which every waiter shares.
                let handshaking = outbox.is_none();
                tokio::select! {
                    biased;
                    _ = self.node.shutdown.cancelled(), if handshaking => {
                        return Disconnect::SHUTDOWN.into()
                    }
                    _ = wait_outbox(outbox) => Wake::Outbox,
                    readable = self.conn.readable(), if reading => match readable {
                        Ok(()) => Wake::Readable,
                        Err(_) => return Close::gone("read error"),
                    },
                    _ = sleep_until(deadline.into()) => Wake::Timer,
                }
            };
            if self.handle.is_some() && self.node.hub.is_stopping() {
                return Disconnect::SHUTDOWN.into();
            }
            let result = match wake {
                Wake::Outbox => match self.take_outbox() {
                    Ok(None) => Ok(()),
                    // Boxed: only the rare wake-up with a command or a gap pays for its state.
                    Ok(Some(resync)) => Box::pin(self.finish_outbox(resync)).await,
                    Err(close) => Err(close),
                },
                Wake::Writable => Ok(()),
                Wake::Readable => Box::pin(self.read_input()).await,
                Wake::Timer => match Box::pin(self.refresh_by_backend())
                    .await
                    .and_then(|()| self.on_timer())
                {
                    Ok(()) => Box::pin(self.expire_subscriptions()).await,
                    Err(close) => Err(close),
                },
            };
            if let Err(close) = result {
                return close;
            }
        }
    }

    /// Waits while a write is pending. The outbox is not drained meanwhile: a client that does not
    /// read lets its outbox fill and overflow (slow consumer) instead of growing `pending`. Only
    /// TLS records left (`flushing`): the outbox is drained as when idle, and new frames queue
    /// behind the records.
    async fn wait_writing(
        &self,
        deadline: Instant,
        reading: bool,
        flushing: bool,
    ) -> Result<Wake, Close> {
        let handle = self.handle.as_deref();
        tokio::select! {
            biased;
            _ = self.node.shutdown.cancelled() => Err(Disconnect::SHUTDOWN.into()),
            // Marked slow while the write waits on a full socket: give up now.
            _ = wait_slowed(handle) => Err(Disconnect::SLOW.into()),
            writable = self.conn.writable() => match writable {
                Ok(()) => Ok(Wake::Writable),
                Err(_) => Err(Close::gone("write error")),
            },
            _ = wait_outbox(handle.map(|h| &h.outbox)), if flushing => Ok(Wake::Outbox),
            readable = self.conn.readable(), if reading => match readable {
                Ok(()) => Ok(Wake::Readable),
                Err(_) => Err(Close::gone("read error")),
            },
            _ = sleep_until(deadline.into()) => Ok(Wake::Timer),
        }
    }

    /// Leaves every channel and the hub once the connection is closed.
    async fn cleanup(&mut self) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        handle.outbox.close();
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe_channel(&channel).await;
        }
        self.node.hub.remove_session(&handle);
    }
}

async fn wait_slowed(handle: Option<&SessionHandle>) {
    match handle {
        Some(handle) => handle.outbox.slowed().await,
        None => std::future::pending().await,
    }
}

async fn wait_outbox(outbox: Option<&Outbox>) {
    match outbox {
        Some(outbox) => outbox.wait().await,
        None => std::future::pending().await,
    }
}
