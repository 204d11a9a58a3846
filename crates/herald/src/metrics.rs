//! Prometheus metrics of one node. Each server owns its registry (tests run several nodes per process).
//! Hot-path counters are plain atomics behind `prometheus-client` handles: no lookups when counting.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Family<ReasonLabel, Counter>,
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub commands: Family<MethodLabel, Counter>,
    pub command_errors: Family<MethodLabel, Counter>,
    pub publications: Family<SourceLabel, Counter>,
    pub deliveries: Counter,
    pub bytes_out: Counter,
    pub bytes_in: Counter,
    pub frames_out: Counter,
    pub disconnects: Family<ReasonLabel, Counter>,
    pub outbox_drops: Counter,
    pub outbox_bytes: Gauge,
    pub api_requests: Family<MethodLabel, Counter>,
    device_spool_pending_bytes: Gauge,
    device_spool_disk_bytes: Gauge,
    device_positions_stored: Counter,
    device_positions_quarantined: Counter,
    device_writer_errors: Counter,
}

/// Device ingest counters, copied into the registry when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceCounts {
    pub spool_pending_bytes: u64,
    pub spool_disk_bytes: u64,
    pub positions_stored: u64,
    pub positions_quarantined: u64,
    pub writer_errors: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("herald");
        let m = Metrics {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Family::default(),
            subscriptions: Gauge::default(),
            channels: Gauge::default(),
            commands: Family::default(),
            command_errors: Family::default(),
            publications: Family::default(),
            deliveries: Counter::default(),
            bytes_out: Counter::default(),
            bytes_in: Counter::default(),
            frames_out: Counter::default(),
            disconnects: Family::default(),
            outbox_drops: Counter::default(),
            outbox_bytes: Gauge::default(),
            api_requests: Family::default(),
            device_spool_pending_bytes: Gauge::default(),
            device_spool_disk_bytes: Gauge::default(),
            device_positions_stored: Counter::default(),
            device_positions_quarantined: Counter::default(),
            device_writer_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at the handshake, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "subscriptions",
            "Client subscriptions on this node",
            m.subscriptions.clone(),
        );
        registry.register(
            "channels",
            "Channels with at least one local subscriber",
            m.channels.clone(),
        );
        registry.register(
            "commands",
            "Client commands received, by method",
            m.commands.clone(),
        );
        registry.register(
            "command_errors",
            "Client commands answered with an error",
            m.command_errors.clone(),
        );
        registry.register(
            "publications",
            "Publications accepted, by source",
            m.publications.clone(),
        );
        registry.register(
            "deliveries",
            "Publications and events queued to local clients",
            m.deliveries.clone(),
        );
        registry.register("bytes_out", "Bytes written to clients", m.bytes_out.clone());
        registry.register("bytes_in", "Bytes read from clients", m.bytes_in.clone());
        registry.register(
            "frames_out",
            "WebSocket frames written to clients",
            m.frames_out.clone(),
        );
        registry.register(
            "disconnects",
            "Connections closed, by reason",
            m.disconnects.clone(),
        );
        registry.register(
            "outbox_drops",
            "Messages dropped because a client's outbox was full",
            m.outbox_drops.clone(),
        );
        registry.register(
            "outbox_bytes",
            "Bytes queued in all client outboxes",
            m.outbox_bytes.clone(),
        );
        registry.register(
            "api_requests",
            "Server API calls, by method",
            m.api_requests.clone(),
        );
        registry.register(
            "device_spool_pending_bytes",
            "Spooled device position bytes not yet in the database",
            m.device_spool_pending_bytes.clone(),
        );
        registry.register(
            "device_spool_disk_bytes",
            "Bytes of the device spool's segment files",
            m.device_spool_disk_bytes.clone(),
        );
        registry.register(
            "device_positions_stored",
            "Device positions written to the database (replays included)",
            m.device_positions_stored.clone(),
        );
        registry.register(
            "device_positions_quarantined",
            "Device positions the database rejected, moved to the quarantine file",
            m.device_positions_quarantined.clone(),
        );
        registry.register(
            "device_writer_errors",
            "Failed database writes of device positions (each retried)",
            m.device_writer_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Brings the device metrics up to `c` (counters only ever move forward).
    pub fn set_devices(&self, c: DeviceCounts) {
        let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.device_spool_pending_bytes, c.spool_pending_bytes);
        gauge(&self.device_spool_disk_bytes, c.spool_disk_bytes);
        for (counter, v) in [
            (&self.device_positions_stored, c.positions_stored),
            (&self.device_positions_quarantined, c.positions_quarantined),
            (&self.device_writer_errors, c.writer_errors),
        ] {
            counter.inc_by(v.saturating_sub(counter.get()));
        }
    }

    pub fn command(&self, method: &'static str) {
        self.commands.get_or_create(&MethodLabel { method }).inc();
    }

    pub fn disconnect(&self, reason: &'static str) {
        self.disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
