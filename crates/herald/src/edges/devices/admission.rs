//! Who may hold a device connection: the listener's descriptor share and connection bound
//! (`devices.max_connections`), and a bound per source address over all device listeners
//! (`devices.max_connections_per_ip`). Decided at accept; a refused socket is closed at once.

use super::Protocol;
use crate::core::metrics::Metrics;
use crate::edges::descriptors::{Permit, Refusal, Share};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolReasonLabel {
    pub protocol: &'static str,
    pub reason: &'static str,
}

/// Metrics of device connections, registered once per ingest.
#[derive(Default)]
pub struct ConnectionMetrics {
    pub open: Family<ProtocolLabel, Gauge>,
    pub refused: Family<ProtocolReasonLabel, Counter>,
    pub login_timeouts: Family<ProtocolLabel, Counter>,
}

impl ConnectionMetrics {
    pub fn register(metrics: &Metrics) -> Arc<ConnectionMetrics> {
        let m = Arc::new(ConnectionMetrics::default());
        metrics.register(
            "device_connections",
            "Open device connections, by protocol",
            m.open.clone(),
        );
        metrics.register(
            "device_connections_refused",
            "Device connections closed at accept or before identifying, by protocol and reason (max_connections, descriptors, per_ip, registry_full)",
            m.refused.clone(),
        );
        metrics.register(
            "device_login_timeouts",
            "Device connections closed because they did not identify within devices.login_timeout",
            m.login_timeouts.clone(),
        );
        m
    }

    pub fn refused(&self, protocol: Protocol, reason: &'static str) {
        self.refused
            .get_or_create(&ProtocolReasonLabel {
                protocol: protocol.name(),
                reason,
            })
            .inc();
    }
}

/// Open device connections per source address.
#[derive(Default)]
pub struct PerIp {
    counts: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted device connection: its descriptor, its place in the per-address count and the
/// open-connections gauge, all given back when it is dropped.
pub struct Admission {
    _permit: Permit,
    per_ip: Arc<PerIp>,
    ip: IpAddr,
    open: Gauge,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.per_ip.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Entries exist only for addresses with open connections: bounded by them.
                counts.remove(&self.ip);
            }
        }
        drop(counts);
        self.open.dec();
    }
}

/// Admits a connection from `ip` on `protocol`'s listener, or names the reason it is refused
/// (and counts it).
pub fn admit(
    protocol: Protocol,
    share: &Share,
    per_ip: &Arc<PerIp>,
    max_per_ip: usize,
    ip: IpAddr,
    metrics: &ConnectionMetrics,
) -> Result<Admission, &'static str> {
    let permit = share.try_acquire().map_err(|refusal| {
        let reason = match refusal {
            Refusal::ListenerFull => "max_connections",
            Refusal::Descriptors => "descriptors",
        };
        metrics.refused(protocol, reason);
        reason
    })?;
    {
        let mut counts = per_ip.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if max_per_ip > 0 && *n >= max_per_ip {
            metrics.refused(protocol, "per_ip");
            return Err("per_ip");
        }
        *n += 1;
    }
    let open = metrics
        .open
        .get_or_create(&ProtocolLabel {
            protocol: protocol.name(),
        })
        .clone();
    open.inc();
    Ok(Admission {
        _permit: permit,
        per_ip: per_ip.clone(),
        ip,
        open,
    })
}
