//! Prometheus metrics of one node. Each server owns its registry (tests run several nodes per process).
//! Hot-path counters are plain atomics behind `prometheus-client` handles: no lookups when counting.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabel {
    pub hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookErrorLabel {
    pub hook: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s: backend calls are bounded by proxy.timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    /// Behind a lock so subsystems (feeds, hooks) register their own metrics after start.
    registry: parking_lot::Mutex<Registry>,
    pub connections: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// HTTP connections hyper closed for the client's doing (header timeout, head too large, malformed).
    pub http_closed: Family<ReasonLabel, Counter>,
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
    /// 1 while the broker is connected and listening (always 1 for the memory broker); stays 1
    /// while a lost Redis Cluster shard degrades it (`broker_shards`).
    pub broker_ready: Gauge,
    pub broker_reconnects: Counter,
    /// Redis Cluster shards (primaries) by state, `up` or `down` (none on other brokers).
    pub broker_shards: Family<StateLabel, Gauge>,
    /// Channels whose local subscribers were told to recover after a broker outage.
    pub broker_gaps: Counter,
    /// Broker messages dropped because a subscription's bounded queue was full (NATS).
    pub broker_dropped: Counter,
    pub proxy_calls: Family<HookLabel, Counter>,
    pub proxy_errors: Family<HookErrorLabel, Counter>,
    pub proxy_duration: HistogramFamily<HookLabel>,
    pub webhooks_queued: Family<EventLabel, Counter>,
    pub webhooks_delivered: Family<EventLabel, Counter>,
    pub webhooks_retried: Family<EventLabel, Counter>,
    pub webhooks_dropped: Family<ReasonLabel, Counter>,
    pub webhook_queue_length: Gauge,
    device_spool_pending_bytes: Gauge,
    device_spool_disk_bytes: Gauge,
    device_spool_append_queue: Gauge,
    device_positions_stored: Counter,
    device_positions_quarantined: Counter,
    device_writer_errors: Counter,
    /// Times a connection's unanswered input waited, unread, because its output had reached
    /// `client.max_outbox_bytes`.
    pub client_reads_paused: Counter,
    /// Client `history` calls whose limit was capped at the namespace's `client_history_max_limit`.
    pub client_history_capped: Counter,
    /// Recoveries cut at the namespace's `recovery_max_publications` or the outbox bound in bytes.
    pub client_recovery_capped: Counter,
    /// History streams kept in memory (memory broker; bounded by `channel.max_streams`).
    pub history_streams: Gauge,
    /// History streams forgotten, by reason: idle, empty, limit, removed.
    pub history_streams_forgotten: Family<ReasonLabel, Counter>,
    /// Publications refused for exceeding `channel.max_publication_bytes`, by source.
    pub publications_too_large: Family<SourceLabel, Counter>,
    /// Server API and `/metrics` requests refused before any method ran, by reason.
    pub api_refused: Family<ReasonLabel, Counter>,
    /// What Pusher WebSocket clients asked and were refused, by reason.
    pub pusher_refused: Family<ReasonLabel, Counter>,
    /// Client events Pusher WebSocket clients published.
    pub pusher_client_events: Counter,
    /// Open client connections by transport (websocket, uni_websocket, http_stream, sse, …).
    pub transport_connections: Family<TransportLabel, Gauge>,
    /// Client connections accepted, by transport.
    pub transport_connects: Family<TransportLabel, Counter>,
    /// `/emulation` requests refused, by reason.
    pub emulation_refused: Family<ReasonLabel, Counter>,
    /// Fossil patches computed (once per channel and publication, whatever the subscribers).
    pub delta_patches: Counter,
    /// Publications queued to delta-compression subscribers, by kind: `delta` or `full`.
    pub delta_publications: Family<KindLabel, Counter>,
    /// Configuration reloads (SIGHUP), by result: `ok` or `refused`.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// When the configuration in force was last loaded (at start, then each reload that was not
    /// refused), UNIX seconds.
    pub config_last_reload_success: Gauge,
}

/// One open connection counted in `herald_transport_connections{transport}` while it lives.
pub struct TransportCount {
    gauge: Gauge,
}

impl Drop for TransportCount {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Device ingest counters, copied into the registry when metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceCounts {
    pub spool_pending_bytes: u64,
    pub spool_disk_bytes: u64,
    pub spool_append_queue: u64,
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
            http_closed: Family::default(),
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
            broker_shards: Family::default(),
            broker_gaps: Counter::default(),
            broker_dropped: Counter::default(),
            proxy_calls: Family::default(),
            proxy_errors: Family::default(),
            proxy_duration: Family::new_with_constructor(duration_histogram),
            webhooks_queued: Family::default(),
            webhooks_delivered: Family::default(),
            webhooks_retried: Family::default(),
            webhooks_dropped: Family::default(),
            webhook_queue_length: Gauge::default(),
            device_spool_pending_bytes: Gauge::default(),
            device_spool_disk_bytes: Gauge::default(),
            device_spool_append_queue: Gauge::default(),
            device_positions_stored: Counter::default(),
            device_positions_quarantined: Counter::default(),
            device_writer_errors: Counter::default(),
            client_reads_paused: Counter::default(),
            client_history_capped: Counter::default(),
            client_recovery_capped: Counter::default(),
            history_streams: Gauge::default(),
            history_streams_forgotten: Family::default(),
            publications_too_large: Family::default(),
            api_refused: Family::default(),
            pusher_refused: Family::default(),
            pusher_client_events: Counter::default(),
            transport_connections: Family::default(),
            transport_connects: Family::default(),
            emulation_refused: Family::default(),
            delta_patches: Counter::default(),
            delta_publications: Family::default(),
            config_reloads: Family::default(),
            config_last_reload_success: Gauge::default(),
            registry: parking_lot::Mutex::new(Registry::default()),
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
            "http_closed",
            "HTTP connections closed for the client's doing: header timeout, head too large, malformed request",
            m.http_closed.clone(),
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
            "1 while the broker is connected and every channel is listened to (but a lost cluster shard's, see broker_shards)",
            m.broker_ready.clone(),
        );
        registry.register(
            "broker_reconnects",
            "Reconnections to the broker after a lost connection",
            m.broker_reconnects.clone(),
        );
        registry.register(
            "broker_shards",
            "Redis Cluster shards by state (up, down); a down shard fails only its own channels",
            m.broker_shards.clone(),
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
        registry.register(
            "proxy_calls",
            "Backend proxy calls, by hook",
            m.proxy_calls.clone(),
        );
        registry.register(
            "proxy_errors",
            "Backend proxy calls that failed, by hook and reason (unavailable, timeout, status, bad_response, busy)",
            m.proxy_errors.clone(),
        );
        registry.register(
            "proxy_duration_seconds",
            "Duration of backend proxy calls, by hook",
            m.proxy_duration.clone(),
        );
        registry.register(
            "webhooks_queued",
            "Webhook events queued for delivery, by event",
            m.webhooks_queued.clone(),
        );
        registry.register(
            "webhooks_delivered",
            "Webhook events delivered (2xx from the receiver), by event",
            m.webhooks_delivered.clone(),
        );
        registry.register(
            "webhooks_retried",
            "Webhook delivery retries, by event",
            m.webhooks_retried.clone(),
        );
        registry.register(
            "webhooks_dropped",
            "Webhook events dropped, by reason (queue_full, failed)",
            m.webhooks_dropped.clone(),
        );
        registry.register(
            "webhook_queue_length",
            "Webhook events waiting for delivery",
            m.webhook_queue_length.clone(),
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
            "device_spool_append_queue",
            "Device position batches waiting to be appended to the spool",
            m.device_spool_append_queue.clone(),
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
        registry.register(
            "client_reads_paused",
            "Times a connection's input waited unread because its output reached client.max_outbox_bytes",
            m.client_reads_paused.clone(),
        );
        registry.register(
            "client_history_capped",
            "Client history calls whose limit was capped at the namespace's client_history_max_limit",
            m.client_history_capped.clone(),
        );
        registry.register(
            "client_recovery_capped",
            "Subscribe recoveries cut at the namespace's recovery_max_publications or at client.max_outbox_bytes of data (answered recovered: false)",
            m.client_recovery_capped.clone(),
        );
        registry.register(
            "history_streams",
            "History streams kept in memory (memory broker; at most channel.max_streams)",
            m.history_streams.clone(),
        );
        registry.register(
            "history_streams_forgotten",
            "History streams forgotten, by reason (idle, empty, limit, removed)",
            m.history_streams_forgotten.clone(),
        );
        registry.register(
            "publications_too_large",
            "Publications refused for exceeding channel.max_publication_bytes, by source",
            m.publications_too_large.clone(),
        );
        registry.register(
            "api_refused",
            "Server API and /metrics requests refused before any method ran, by reason (key, peer, host, origin, forwarded, content type, body, body size, batch size)",
            m.api_refused.clone(),
        );
        registry.register(
            "pusher_refused",
            "Pusher WebSocket requests refused, by reason (subscribe auth, subscribe limit, subscribe unavailable, client event, client event rate, signin, message)",
            m.pusher_refused.clone(),
        );
        registry.register(
            "pusher_client_events",
            "Client events published by Pusher WebSocket clients",
            m.pusher_client_events.clone(),
        );
        registry.register(
            "transport_connections",
            "Open client connections by transport",
            m.transport_connections.clone(),
        );
        registry.register(
            "transport_connects",
            "Client connections accepted, by transport",
            m.transport_connects.clone(),
        );
        registry.register(
            "emulation_refused",
            "/emulation requests refused, by reason (origin, body size, malformed, unknown session, unknown node, inbox full)",
            m.emulation_refused.clone(),
        );
        registry.register(
            "delta_patches",
            "Fossil patches computed for delta-compression subscribers (once per channel and publication)",
            m.delta_patches.clone(),
        );
        registry.register(
            "delta_publications",
            "Publications queued to delta-compression subscribers, by kind (delta: a patch, full: the whole data)",
            m.delta_publications.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP), by result (ok, refused: the running configuration stays)",
            m.config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration in force was loaded (at start, then each reload not refused), UNIX seconds",
            m.config_last_reload_success.clone(),
        );
        Metrics {
            registry: parking_lot::Mutex::new(registry),
            ..m
        }
    }

    /// Counts a new connection of `transport` until the returned guard is dropped.
    pub fn transport_opened(&self, transport: &'static str) -> TransportCount {
        let label = TransportLabel { transport };
        self.transport_connects.get_or_create(&label).inc();
        let gauge = self.transport_connections.get_or_create(&label).clone();
        gauge.inc();
        TransportCount { gauge }
    }

    /// Brings the device metrics up to `c` (counters only ever move forward).
    pub fn set_devices(&self, c: DeviceCounts) {
        let gauge = |g: &Gauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
        gauge(&self.device_spool_pending_bytes, c.spool_pending_bytes);
        gauge(&self.device_spool_disk_bytes, c.spool_disk_bytes);
        gauge(&self.device_spool_append_queue, c.spool_append_queue);
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

    /// Registers a subsystem's metric (named `herald_<name>`).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.lock().register(name, help, metric);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()).is_err() {
            out.clear();
        }
        out
    }
}
