//! In-memory registry of the devices this node has heard from, bounded by `devices.max_devices`:
//! when full, the disconnected devices seen longest ago are forgotten (their positions are in the
//! spool and the store already; only the duplicate check and the `devices` listing lose them);
//! when every entry is a connected device, new ids are refused.

use super::Protocol;
use crate::core::metrics::Metrics;
use herald_devices::Position;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
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

/// The registry is full of connected devices: a new id is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device registry is full of connected devices (devices.max_devices = {0})")]
pub struct RegistryFull(pub usize);

/// Per device id: protocol, connection state, remote address, last seen, last position.
#[derive(Debug)]
pub struct Registry {
    inner: parking_lot::Mutex<HashMap<String, Entry>>,
    max: usize,
    entries: Gauge,
    evictions: Counter,
    refused: Counter,
}

impl Registry {
    /// A registry of at most `max` devices (at least 1).
    pub fn new(max: usize) -> Registry {
        Registry {
            inner: parking_lot::Mutex::new(HashMap::new()),
            max: max.max(1),
            entries: Gauge::default(),
            evictions: Counter::default(),
            refused: Counter::default(),
        }
    }

    /// Registers the registry's metrics on `metrics`.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(
            "device_registry_entries",
            "Devices in the in-memory registry (bounded by devices.max_devices)",
            self.entries.clone(),
        );
        metrics.register(
            "device_registry_evictions",
            "Disconnected devices forgotten by the full registry (their positions stay stored)",
            self.evictions.clone(),
        );
        metrics.register(
            "device_registry_refused",
            "New device ids refused because the registry was full of connected devices",
            self.refused.clone(),
        );
    }

    /// Number of devices known.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the oldest-seen disconnected sixteenth of the registry (at least one), so the
    /// scan is paid once per many new ids.
    fn evict(&self, map: &mut HashMap<String, Entry>) {
        let mut idle: Vec<(i64, &String)> = map
            .iter()
            .filter(|(_, e)| e.connections == 0)
            .map(|(id, e)| (e.last_seen_ms, id))
            .collect();
        if idle.is_empty() {
            return;
        }
        let n = (self.max / 16).clamp(1, idle.len());
        if n < idle.len() {
            idle.select_nth_unstable(n - 1);
        }
        let victims: Vec<String> = idle[..n].iter().map(|(_, id)| (*id).clone()).collect();
        for id in &victims {
            map.remove(id);
        }
        self.evictions.inc_by(victims.len() as u64);
    }

    fn entry<'a>(
        &self,
        map: &'a mut HashMap<String, Entry>,
        id: &str,
        protocol: Protocol,
    ) -> Result<&'a mut Entry, RegistryFull> {
        // Looked up first: `entry` would allocate the key on every frame of a known device.
        if !map.contains_key(id) {
            if map.len() >= self.max {
                self.evict(map);
                if map.len() >= self.max {
                    self.refused.inc();
                    return Err(RegistryFull(self.max));
                }
            }
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
            self.entries.set(map.len() as i64);
        }
        Ok(map.get_mut(id).expect("inserted above"))
    }
    /// A TCP connection identified itself as `id`.
    pub fn connected(
        &self,
        id: &str,
        protocol: Protocol,
        remote: SocketAddr,
        now_ms: i64,
    ) -> Result<(), RegistryFull> {
        let mut map = self.inner.lock();
        let e = self.entry(&mut map, id, protocol)?;
        e.protocol = protocol;
        e.connections += 1;
        e.remote = Some(remote);
        e.last_seen_ms = now_ms;
        Ok(())
    }

    /// A TCP connection of `id` ended.
    pub fn disconnected(&self, id: &str) {
        if let Some(e) = self.inner.lock().get_mut(id) {
            e.connections = e.connections.saturating_sub(1);
        }
    }

    /// Something arrived from `id` (any frame, or an HTTP request).
    pub fn seen(
        &self,
        id: &str,
        protocol: Protocol,
        remote: Option<SocketAddr>,
        now_ms: i64,
    ) -> Result<(), RegistryFull> {
        let mut map = self.inner.lock();
        let e = self.entry(&mut map, id, protocol)?;
        e.protocol = protocol;
        if remote.is_some() {
            e.remote = remote;
        }
        e.last_seen_ms = now_ms;
        Ok(())
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
            let Ok(e) = self.entry(&mut map, &p.device_id, protocol) else {
                // Stored already; without an entry there is no order to keep, so it goes live.
                if p.valid {
                    live.push(p);
                }
                continue;
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn full_registry_forgets_the_oldest_disconnected_and_refuses_when_all_connected() {
        let r = Registry::new(32);
        r.connected("keep", Protocol::Gt06, addr(), 0).unwrap();
        for i in 0..1000 {
            r.seen(&format!("unknown-{i}"), Protocol::Osmand, None, i + 1)
                .unwrap();
            assert!(r.len() <= 32);
        }
        let ids: Vec<String> = r
            .list()
            .iter()
            .map(|v| v["device"].as_str().unwrap().to_string())
            .collect();
        assert!(ids.contains(&"keep".to_string()), "{ids:?}");
        assert!(ids.contains(&"unknown-999".to_string()), "{ids:?}");
        assert!(!ids.contains(&"unknown-0".to_string()), "{ids:?}");
        assert!(r.evictions.get() >= 1000 - 31);

        let full = Registry::new(2);
        full.connected("a", Protocol::Gt06, addr(), 0).unwrap();
        full.connected("b", Protocol::Gt06, addr(), 0).unwrap();
        assert_eq!(
            full.connected("c", Protocol::Gt06, addr(), 0),
            Err(RegistryFull(2))
        );
        full.disconnected("a");
        full.connected("c", Protocol::Gt06, addr(), 1).unwrap();
        assert_eq!(full.refused.get(), 1);
    }
}
