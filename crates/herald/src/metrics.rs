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
    /// 1 while the broker is connected and listening (always 1 for the memory broker).
    pub broker_ready: Gauge,
    pub broker_reconnects: Counter,
    /// Channels whose local subscribers were told to recover after a broker outage.
    pub broker_gaps: Counter,
    /// Broker messages dropped because a subscription's bounded queue was full (NATS).
    pub broker_dropped: Counter,
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
            broker_ready: Gauge::default(),
            broker_reconnects: Counter::default(),
            broker_gaps: Counter::default(),
            broker_dropped: Counter::default(),
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
            "broker_ready",
            "1 while the broker is connected and every channel is listened to",
            m.broker_ready.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Reconnections to the broker after a lost connection",
            m.broker_reconnects.clone(),
        );
        registry.register(
            "broker_gaps",
            "Channels whose subscribers were told to recover after a broker outage",
            m.broker_gaps.clone(),
        );
        registry.register(
            "broker_dropped",
            "Times a broker subscription's bounded queue overflowed and dropped messages",
            m.broker_dropped.clone(),
        );
        Metrics { registry, ..m }
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
