//! The session's clocks: the connect deadline, pings and their pongs, a stalled write, and the
//! expiry of the connection and of its subscriptions.

use super::{Close, Ending, Session};
use crate::hooks::proxy::Hook;
use bytes::Bytes;
use herald_protocol::{Disconnect, UnsubscribeCode};
use std::time::Instant;

impl Session {
    /// The earliest moment one of the clocks needs the loop.
    pub(super) fn next_deadline(&self) -> Instant {
        let mut deadline = if self.handle.is_none() {
            self.connect_deadline
        } else {
            self.next_ping
        };
        let write_stall = self
            .conn
            .stalled_since()
            .map(|since| since + self.node.config().client.write_timeout);
        for candidate in [self.pong_deadline, self.connection_close_at(), write_stall]
            .into_iter()
            .flatten()
        {
            deadline = deadline.min(candidate);
        }
        let grace = self.node.config().client.expired_sub_close_delay;
        for sub in self.subs.values() {
            if let Some(at) = sub.expires_at {
                deadline = deadline.min(at + grace);
            }
        }
        deadline
    }

    /// When an expired connection closes. A client refreshes its own token: it gets
    /// `client.expired_close_delay` past the expiry, so an SDK that refreshes at the expiry is
    /// never closed. A connection the backend authenticated is refreshed by the refresh hook at
    /// the expiry itself (`refresh_by_backend`, which runs first).
    fn connection_close_at(&self) -> Option<Instant> {
        let at = self.expires_at?;
        // Checked on every pass of the loop: look at the proxy without cloning it.
        let refresh_hook = || self.node.hooks.has(Hook::Refresh);
        if self.backend_auth && refresh_hook() {
            return Some(at);
        }
        Some(at + self.node.config().client.expired_close_delay)
    }

    pub(super) fn on_timer(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let write_timeout = self.node.config().client.write_timeout;
        if self
            .conn
            .stalled_since()
            .is_some_and(|since| now >= since + write_timeout)
        {
            return Err(Close::write_timeout());
        }
        // A client closed for silence that has not taken what it is owed either is not waited
        // for: it is gone by the timeout, not by the timeout plus a write timeout.
        let unresponsive = |disconnect: Disconnect, writing: bool| Close {
            ending: if writing {
                Ending::Abort
            } else {
                Ending::Brief
            },
            ..disconnect.into()
        };
        if self.handle.is_none() {
            if now >= self.connect_deadline {
                return Err(unresponsive(Disconnect::STALE, self.conn.is_writing()));
            }
            return Ok(());
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(unresponsive(Disconnect::NO_PONG, self.conn.is_writing()));
        }
        if self.connection_close_at().is_some_and(|at| now >= at) {
            return Err(Disconnect::EXPIRED.into());
        }
        if now >= self.next_ping {
            self.queue(Bytes::from_static(self.format.ping()));
            self.next_ping = now + self.node.config().client.ping_interval;
            // A unidirectional client cannot answer: it is closed by a failing write instead.
            if !self.conn.unidirectional() {
                self.pong_deadline = Some(now + self.node.config().client.pong_timeout);
            }
        }
        Ok(())
    }

    /// Ends subscriptions whose token expired without a `sub_refresh` within
    /// `client.expired_sub_close_delay`: the client gets an unsubscribe push with code 2501, on
    /// which SDKs fetch a new subscription token and resubscribe.
    pub(super) async fn expire_subscriptions(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let grace = self.node.config().client.expired_sub_close_delay;
        let expired: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| now >= at + grace))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            self.unsubscribe_channel(&channel).await;
            self.queue_unsubscribe(&channel, UnsubscribeCode::EXPIRED);
        }
        Ok(())
    }
}
