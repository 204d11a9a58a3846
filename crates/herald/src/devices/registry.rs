//! In-memory registry of the devices this node has heard from.

use super::Protocol;
use herald_devices::Position;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;

#[derive(Debug)]
struct Entry {
    protocol: Protocol,
    /// Open TCP connections of this device (a reconnect may overlap the old connection).
    connections: u32,
    remote: Option<SocketAddr>,
    last_seen_ms: i64,
    /// The last accepted report (for duplicate detection and the `devices` API).
    last: Option<Position>,
    /// Time of the newest position published live (older ones are stored only).
    last_published_ms: Option<i64>,
}

/// Per device id: protocol, connection state, remote address, last seen, last position.
#[derive(Debug, Default)]
pub struct Registry {
    inner: parking_lot::Mutex<HashMap<String, Entry>>,
}

impl Registry {
    fn entry<'a>(
        map: &'a mut HashMap<String, Entry>,
        id: &str,
        protocol: Protocol,
    ) -> &'a mut Entry {
        // Looked up first: `entry` would allocate the key on every frame of a known device.
        if !map.contains_key(id) {
            map.insert(
                id.to_string(),
                Entry {
                    protocol,
                    connections: 0,
                    remote: None,
                    last_seen_ms: 0,
                    last: None,
                    last_published_ms: None,
                },
            );
        }
        map.get_mut(id).expect("inserted above")
    }

    /// A TCP connection identified itself as `id`.
    pub fn connected(&self, id: &str, protocol: Protocol, remote: SocketAddr, now_ms: i64) {
        let mut map = self.inner.lock();
        let e = Self::entry(&mut map, id, protocol);
        e.protocol = protocol;
        e.connections += 1;
        e.remote = Some(remote);
        e.last_seen_ms = now_ms;
    }

    /// A TCP connection of `id` ended.
    pub fn disconnected(&self, id: &str) {
        if let Some(e) = self.inner.lock().get_mut(id) {
            e.connections = e.connections.saturating_sub(1);
        }
    }

    /// Something arrived from `id` (any frame, or an HTTP request).
    pub fn seen(&self, id: &str, protocol: Protocol, remote: Option<SocketAddr>, now_ms: i64) {
        let mut map = self.inner.lock();
        let e = Self::entry(&mut map, id, protocol);
        e.protocol = protocol;
        if remote.is_some() {
            e.remote = remote;
        }
        e.last_seen_ms = now_ms;
    }

    /// Drops exact duplicates of each device's last accepted report (and of the previous
    /// position in the same batch). A duplicate is already in the spool, so nothing is lost.
    pub fn without_duplicates(&self, positions: Vec<Position>) -> Vec<Position> {
        let map = self.inner.lock();
        let mut out: Vec<Position> = Vec::with_capacity(positions.len());
        for p in positions {
            let previous = out
                .iter()
                .rev()
                .find(|q| q.device_id == p.device_id)
                .or_else(|| map.get(&p.device_id).and_then(|e| e.last.as_ref()));
            if previous != Some(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Records positions accepted into the spool; returns those to publish live: valid fixes
    /// not older than the newest position already published for their device.
    pub fn accepted(&self, positions: Vec<Position>, protocol: Protocol) -> Vec<Position> {
        let mut map = self.inner.lock();
        let mut live = Vec::new();
        for p in positions {
            let e = Self::entry(&mut map, &p.device_id, protocol);
            e.last = Some(p.clone());
            if p.valid && e.last_published_ms.is_none_or(|t| p.time_ms >= t) {
                e.last_published_ms = Some(p.time_ms);
                live.push(p);
            }
        }
        live
    }

    /// The `devices` API listing, sorted by device id.
    pub fn list(&self) -> Vec<Value> {
        let map = self.inner.lock();
        let mut ids: Vec<&String> = map.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let e = &map[id];
                json!({
                    "device": id,
                    "protocol": e.protocol.name(),
                    "connected": e.connections > 0,
                    "remote": e.remote.map(|a| a.to_string()),
                    "last_seen": e.last_seen_ms,
                    "position": e.last.as_ref().map(super::position_json),
                })
            })
            .collect()
    }
}
