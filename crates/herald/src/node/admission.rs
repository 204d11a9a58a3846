//! What the node lets in: new connections per client address (a token bucket each), and the
//! count of open WebSocket connections against `client.max_connections`.

use super::Node;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// One open WebSocket connection, counted while this lives (including the `connect` phase).
pub struct ConnectionSlot(Arc<Node>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

/// One open connection of a Pusher app, counted while this lives.
pub struct AppSlot {
    node: Arc<Node>,
    app: String,
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        let mut counts = self.node.app_connections.lock();
        if let Some(count) = counts.get_mut(&self.app) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.app);
            }
        }
    }
}

impl Node {
    /// A slot for one more connection of Pusher app `app`, or `None` when it has `max` (0: no
    /// limit of its own). Only configured apps are counted, so the map is as small as the
    /// config.
    pub fn open_app_connection(self: &Arc<Self>, app: &str, max: usize) -> Option<AppSlot> {
        let mut counts = self.app_connections.lock();
        let count = counts.entry(app.to_string()).or_default();
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(AppSlot {
            node: self.clone(),
            app: app.to_string(),
        })
    }

    /// Whether a new connection from `ip` fits its rate limit.
    pub fn admit_ip(&self, ip: std::net::IpAddr) -> bool {
        let c = &self.config().client;
        if c.connection_rate_per_ip == 0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.ip_buckets.lock();
        // Bounded: full buckets carry no information and are dropped by the sweeper; a flood of
        // distinct addresses is capped here.
        if buckets.len() >= 100_000 && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| !b.is_full(now));
            if buckets.len() >= 100_000 {
                // Hard cap on the map: beyond it new addresses are admitted untracked (fail open),
                // since refusing every new address would let a flood lock out everyone.
                return true;
            }
        }
        buckets
            .entry(ip)
            .or_insert_with(|| {
                crate::core::rate::TokenBucket::new(
                    c.connection_rate_per_ip,
                    c.connection_burst_per_ip.max(1),
                    now,
                )
            })
            .take(now)
    }

    /// Drops the buckets that are full again (they carry no information).
    pub fn forget_idle_ip_buckets(&self) {
        let now = Instant::now();
        self.ip_buckets
            .lock()
            .retain(|_, bucket| !bucket.is_full(now));
    }

    /// A slot for one more WebSocket connection, or `None` at `client.max_connections`.
    pub fn open_connection(self: &Arc<Self>) -> Option<ConnectionSlot> {
        let max = self.config().client.max_connections;
        if self.connections.fetch_add(1, Ordering::AcqRel) >= max {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.connections.inc();
        self.metrics.connections_accepted.inc();
        Some(ConnectionSlot(self.clone()))
    }

    /// Open WebSocket connections.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}
