//! GPS device ingest: protocol listeners, the spool, the database writer and the live publish.
//!
//! Per position the order is fixed (docs/devices.md): decode → drop exact duplicates →
//! `spool.append` (flushed per `devices.fsync`) → acknowledge the device → publish live to
//! `<device_channel_prefix><imei>` and `fleet_channel` through [`Node::publish`]. A full spool
//! blocks the connection before its acknowledgement, so the device's TCP window fills instead of
//! positions being dropped. The [`Writer`] moves spooled positions into the configured [`Store`].

mod admission;
mod http;
pub mod queries;
mod registry;
mod tcp;

pub use registry::{Registry, RegistryFull};

use crate::config::{FsyncSetting, StoreSetting};
use crate::core::clock::unix_millis;
use crate::core::metrics::DeviceCounts;
use crate::node::Node;
use anyhow::Context as _;
use herald_devices::Position;
use herald_store::{
    FsyncPolicy, PgStore, Spool, SpoolConfig, SpoolError, SpoolHandle, SqliteStore, Store, Writer,
    WriterConfig, WriterStatsSnapshot,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long writing a reply to a device may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// While the spool is full, an append is retried this often.
const FULL_RETRY: Duration = Duration::from_millis(20);

/// A device protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Gt06,
    H02,
    Teltonika,
    Osmand,
    Jsonl,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Gt06 => "gt06",
            Protocol::H02 => "h02",
            Protocol::Teltonika => "teltonika",
            Protocol::Osmand => "osmand",
            Protocol::Jsonl => "jsonl",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        Some(match name {
            "gt06" => Protocol::Gt06,
            "h02" => Protocol::H02,
            "teltonika" => Protocol::Teltonika,
            "osmand" => Protocol::Osmand,
            "jsonl" => Protocol::Jsonl,
            _ => return None,
        })
    }
}

/// Bound addresses of the device listeners (`None`: disabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceAddrs {
    pub gt06: Option<SocketAddr>,
    pub h02: Option<SocketAddr>,
    pub teltonika: Option<SocketAddr>,
    pub osmand: Option<SocketAddr>,
    pub jsonl: Option<SocketAddr>,
}

impl DeviceAddrs {
    fn set(&mut self, protocol: Protocol, addr: SocketAddr) {
        let slot = match protocol {
            Protocol::Gt06 => &mut self.gt06,
            Protocol::H02 => &mut self.h02,
            Protocol::Teltonika => &mut self.teltonika,
            Protocol::Osmand => &mut self.osmand,
            Protocol::Jsonl => &mut self.jsonl,
        };
        *slot = Some(addr);
    }
}

/// Why positions could not be accepted (the device is not acknowledged and is disconnected).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("shutting down")]
    Shutdown,
}

/// The running device ingest of one node.
pub struct DeviceIngest {
    node: Arc<Node>,
    pub spool: SpoolHandle,
    pub store: Arc<dyn Store>,
    pub registry: Registry,
    pub addrs: DeviceAddrs,
    writer: parking_lot::Mutex<Option<Writer>>,
    /// Counters of writers that were stopped (pause/resume), added to the running one's.
    writer_base: parking_lot::Mutex<WriterStatsSnapshot>,
    stop: CancellationToken,
    tasks: TaskTracker,
    publish_warned: AtomicBool,
    /// Open device connections per source address (`devices.max_connections_per_ip`).
    per_ip: Arc<admission::PerIp>,
    connection_metrics: Arc<admission::ConnectionMetrics>,
    /// The certificate of the listeners named in `devices.tls.protocols`.
    tls: Option<Arc<crate::edges::tls::Endpoint>>,
}

impl DeviceIngest {
    /// Opens the spool and the store, starts the writer and binds every enabled listener; each
    /// listener holds connections within its share of `budget` (named by protocol). The listeners
    /// of `devices.tls.protocols` speak TLS with `tls`.
    pub async fn start(
        node: Arc<Node>,
        budget: &crate::edges::descriptors::Budget,
        tls: Option<Arc<crate::edges::tls::Endpoint>>,
    ) -> anyhow::Result<Arc<DeviceIngest>> {
        let cfg = node.config().devices.clone();
        let fsync = match cfg.fsync {
            FsyncSetting::Always => FsyncPolicy::Always,
            FsyncSetting::Never => FsyncPolicy::Never,
            FsyncSetting::Every(d) => FsyncPolicy::EveryMillis((d.as_millis() as u64).max(1)),
        };
        let spool_cfg = SpoolConfig {
            dir: cfg.spool_dir.clone().into(),
            max_bytes: cfg.spool_max_bytes,
            // Space is freed a segment at a time, so segments are a fraction of the bound.
            segment_bytes: (cfg.spool_max_bytes / 8).clamp(1, 16 << 20),
            fsync,
        };
        let spool = tokio::task::spawn_blocking(move || Spool::open(spool_cfg))
            .await
            .context("devices.spool_dir: opening the spool failed")?
            .with_context(|| format!("devices.spool_dir: cannot open {:?}", cfg.spool_dir))?;
        let spool = SpoolHandle::new(spool);
        let store: Arc<dyn Store> = match cfg.store.clone() {
            StoreSetting::Sqlite(path) => {
                if let Some(parent) = std::path::Path::new(&path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).with_context(|| {
                            format!("devices.store: cannot create {}", parent.display())
                        })?;
                    }
                }
                Arc::new(
                    SqliteStore::open(&path)
                        .await
                        .with_context(|| format!("devices.store: cannot open sqlite {path:?}"))?,
                )
            }
            StoreSetting::Postgres(conninfo) => Arc::new(
                PgStore::connect(&conninfo)
                    .await
                    .context("devices.store: cannot connect to PostgreSQL")?,
            ),
        };
        let mut addrs = DeviceAddrs::default();
        let mut listeners = Vec::new();
        for (name, addr) in cfg.listeners() {
            let protocol = Protocol::from_name(name).context("unknown device protocol")?;
            let listener = crate::edges::sockets::bind(addr, false)
                .with_context(|| format!("devices.listen.{name}: cannot listen on {addr}"))?;
            addrs.set(protocol, listener.local_addr()?);
            let share = budget
                .share(name)
                .with_context(|| format!("devices.listen.{name}: no descriptor share planned"))?;
            listeners.push((protocol, listener, share));
        }
        let writer = Writer::spawn(spool.clone(), store.clone(), WriterConfig::default());
        let ingest = Arc::new(DeviceIngest {
            stop: node.shutdown.child_token(),
            node: node.clone(),
            spool,
            store,
            registry: Registry::new(cfg.max_devices),
            addrs,
            writer: parking_lot::Mutex::new(Some(writer)),
            writer_base: Default::default(),
            tasks: TaskTracker::new(),
            publish_warned: AtomicBool::new(false),
            per_ip: Arc::default(),
            connection_metrics: admission::ConnectionMetrics::register(&node.metrics),
            tls,
        });
        ingest.registry.register_metrics(&node.metrics);
        for (protocol, listener, share) in listeners {
            tracing::info!(protocol = protocol.name(), addr = %listener.local_addr()?, max_connections = share.max(), "device listener");
            let task = ingest
                .tasks
                .spawn(accept_loop(ingest.clone(), protocol, listener, share));
            drop(task);
        }
        Ok(ingest)
    }

    /// Stops listeners and connections (waiting at most 5 s for them), then the writer after its
    /// batch in flight. Positions not yet written stay in the spool for the next start.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("device connections did not end within 5s");
        }
        self.pause_writer().await;
    }

    /// Stops the database writer (the spool keeps filling; when full, devices are not read).
    pub async fn pause_writer(&self) {
        let writer = self.writer.lock().take();
        if let Some(w) = writer {
            let s = w.stats();
            w.shutdown().await;
            let mut base = self.writer_base.lock();
            base.batches_written += s.batches_written;
            base.positions_written += s.positions_written;
            base.positions_new += s.positions_new;
            base.errors += s.errors;
            base.quarantined += s.quarantined;
        }
    }

    /// Starts the database writer again after [`DeviceIngest::pause_writer`].
    pub fn resume_writer(&self) {
        let mut writer = self.writer.lock();
        if writer.is_none() && !self.stop.is_cancelled() {
            *writer = Some(Writer::spawn(
                self.spool.clone(),
                self.store.clone(),
                WriterConfig::default(),
            ));
        }
    }

    /// Counts a connection closed because it did not identify within `devices.login_timeout`.
    fn login_timed_out(&self, protocol: Protocol) {
        self.connection_metrics
            .login_timeouts
            .get_or_create(&admission::ProtocolLabel {
                protocol: protocol.name(),
            })
            .inc();
    }

    /// Counts a connection refused after accept (e.g. `registry_full`).
    fn refused(&self, protocol: Protocol, reason: &'static str) {
        self.connection_metrics.refused(protocol, reason);
    }

    fn allowed(&self, id: &str) -> bool {
        let cfg = &self.node.config().devices;
        cfg.accept_unknown || cfg.allowed.iter().any(|a| a == id)
    }

    /// Accepts positions: drops exact duplicates, appends the rest to the spool (waiting while it
    /// is full) and returns the positions to publish live once the device was acknowledged.
    pub async fn accept(
        &self,
        positions: Vec<Position>,
        protocol: Protocol,
    ) -> Result<Vec<Position>, AcceptError> {
        let positions = self.registry.without_duplicates(positions);
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        loop {
            match self.spool.append(&positions).await {
                Ok(_) => break,
                Err(SpoolError::Full { needed, max, .. }) if needed <= max => {
                    // Backpressure: the caller reads nothing from its device meanwhile.
                    tokio::select! {
                        _ = self.stop.cancelled() => return Err(AcceptError::Shutdown),
                        _ = tokio::time::sleep(FULL_RETRY) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.registry.accepted(positions, protocol))
    }

    /// Publishes positions to their device channel and the fleet channel.
    pub async fn publish(&self, positions: Vec<Position>) {
        let cfg = &self.node.config().devices;
        for p in positions {
            let device_channel = format!("{}{}", cfg.device_channel_prefix, p.device_id);
            let channels = [device_channel.as_str(), cfg.fleet_channel.as_str()];
            for (channel, data) in payloads(&p, channels) {
                let result = self
                    .node
                    .publish(channel, data, None, Default::default(), "device")
                    .await;
                if let Err(code) = result {
                    if !self.publish_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(channel, error = ?code, "publishing a device position failed (is a namespace configured for it?); positions are still stored. Further failures are not logged");
                    }
                }
            }
        }
    }

    /// The writer's and spool's counters.
    pub fn stats(&self) -> Value {
        let spool = self.spool.stats();
        let s = self.writer_stats();
        json!({
            "spool_pending_bytes": spool.pending_bytes,
            "spool_pending_records": spool.pending_records,
            "spool_disk_bytes": spool.disk_bytes,
            "spool_last_seq": spool.last_seq,
            "writer_running": self.writer.lock().is_some(),
            "batches_written": s.batches_written,
            "positions_written": s.positions_written,
            "positions_new": s.positions_new,
            "errors": s.errors,
            "consecutive_errors": s.consecutive_errors,
            "quarantined": s.quarantined,
        })
    }

    /// The counters `/metrics` shows.
    pub fn metric_counts(&self) -> DeviceCounts {
        let spool = self.spool.stats();
        let s = self.writer_stats();
        DeviceCounts {
            spool_pending_bytes: spool.pending_bytes,
            spool_disk_bytes: spool.disk_bytes,
            spool_append_queue: self.spool.append_queue() as u64,
            positions_stored: s.positions_written,
            positions_quarantined: s.quarantined,
            writer_errors: s.errors,
        }
    }

    /// Counters of the running writer plus those of writers stopped before.
    fn writer_stats(&self) -> WriterStatsSnapshot {
        let mut s = *self.writer_base.lock();
        if let Some(w) = self.writer.lock().as_ref() {
            let c = w.stats();
            s.batches_written += c.batches_written;
            s.positions_written += c.positions_written;
            s.positions_new += c.positions_new;
            s.errors += c.errors;
            s.consecutive_errors = c.consecutive_errors;
            s.quarantined += c.quarantined;
        }
        s
    }

    fn now() -> i64 {
        unix_millis()
    }
}

/// Accepts device connections until shutdown. A connection beyond the listener's bound or
/// descriptor share, or beyond `devices.max_connections_per_ip`, is closed at once (reset), so
/// the kernel backlog never fills with sockets nobody serves.
async fn accept_loop(
    ingest: Arc<DeviceIngest>,
    protocol: Protocol,
    listener: TcpListener,
    share: crate::edges::descriptors::Share,
) {
    let max_per_ip = ingest.node.config().devices.max_connections_per_ip;
    let tls = (ingest.node.config().devices.tls.covers(protocol.name()))
        .then(|| ingest.tls.clone())
        .flatten();
    let mut last_warning: Option<Instant> = None;
    let mut warn = |message: &str, detail: &str| {
        if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            tracing::warn!(protocol = protocol.name(), detail, "{message}");
            last_warning = Some(Instant::now());
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = ingest.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let admitted = admission::admit(
                    protocol,
                    &share,
                    &ingest.per_ip,
                    max_per_ip,
                    peer.ip(),
                    &ingest.connection_metrics,
                );
                let admission = match admitted {
                    Ok(admission) => admission,
                    Err(reason) => {
                        warn("device connections refused at accept", reason);
                        crate::edges::sockets::close_now(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let task = if protocol == Protocol::Osmand {
                    ingest
                        .tasks
                        .spawn(http::serve(ingest.clone(), stream, peer, admission))
                } else {
                    ingest.tasks.spawn(tcp::serve(
                        ingest.clone(),
                        protocol,
                        stream,
                        tls.clone(),
                        peer,
                        admission,
                    ))
                };
                drop(task);
            }
            Err(e) => {
                warn("device accept failed; pausing", &e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The non-empty ones of `channels`, each with the JSON of `p` as published. The JSON is encoded
/// once; [`Node::publish`] takes its payload by value, so each channel before the last gets a
/// copy and the last one the original.
fn payloads<'c>(
    p: &Position,
    channels: [&'c str; 2],
) -> impl Iterator<Item = (&'c str, Box<serde_json::value::RawValue>)> {
    let mut data = serde_json::value::to_raw_value(&PositionJson::of(p)).ok();
    let mut targets = channels.into_iter().filter(|c| !c.is_empty()).peekable();
    std::iter::from_fn(move || {
        let channel = targets.next()?;
        let payload = if targets.peek().is_some() {
            data.clone()
        } else {
            data.take()
        }?;
        Some((channel, payload))
    })
}

/// The JSON of a position as published and returned by the API.
pub fn position_json(p: &Position) -> Value {
    serde_json::to_value(PositionJson::of(p)).unwrap_or_default()
}

/// The fields of [`position_json`], serialized straight from the position when publishing
/// (no `Value` per position). Declared in key order, as a JSON map in a `Value` keeps them.
#[derive(serde::Serialize)]
struct PositionJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<f64>,
    altitude: Option<f64>,
    attributes: &'a herald_devices::Attributes,
    course: f64,
    device: &'a str,
    lat: f64,
    lon: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    satellites: Option<u32>,
    speed: f64,
    time: i64,
    valid: bool,
}

impl<'a> PositionJson<'a> {
    fn of(p: &'a Position) -> Self {
        PositionJson {
            accuracy: p.accuracy_m,
            altitude: p.altitude_m,
            attributes: &p.attributes,
            course: p.course,
            device: &p.device_id,
            lat: p.latitude,
            lon: p.longitude,
            satellites: p.satellites,
            speed: p.speed_kmh,
            time: p.time_ms,
            valid: p.valid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `position_json` built before it was derived from [`PositionJson`].
    fn reference(p: &Position) -> Value {
        let mut v = json!({
            "device": p.device_id,
            "time": p.time_ms,
            "lat": p.latitude,
            "lon": p.longitude,
            "speed": p.speed_kmh,
            "course": p.course,
            "altitude": p.altitude_m,
            "valid": p.valid,
            "attributes": p.attributes,
        });
        if let Some(s) = p.satellites {
            v["satellites"] = json!(s);
        }
        if let Some(a) = p.accuracy_m {
            v["accuracy"] = json!(a);
        }
        v
    }

    #[test]
    fn published_json_is_unchanged() {
        let mut bare = Position::new("359710049000001");
        bare.time_ms = 1_700_000_000_123;
        bare.latitude = 52.520008;
        bare.longitude = -13.404954;
        let mut full = bare.clone();
        full.speed_kmh = 42.5;
        full.course = 359.0;
        full.altitude_m = Some(34.0);
        full.valid = true;
        full.satellites = Some(9);
        full.accuracy_m = Some(3.5);
        full.attributes.insert("ignition".into(), json!(true));
        full.attributes.insert("battery".into(), json!(4.1));
        full.attributes
            .insert("note".into(), json!("a \"quoted\" \u{1} text"));
        let mut odd = full.clone();
        odd.speed_kmh = f64::NAN;
        odd.accuracy_m = Some(f64::INFINITY);
        for p in [bare, full, odd] {
            let want = serde_json::to_string(&reference(&p)).unwrap();
            let raw = serde_json::value::to_raw_value(&PositionJson::of(&p)).unwrap();
            assert_eq!(raw.get(), want);
            assert_eq!(position_json(&p), reference(&p));
            // What `publish` hands to each channel: the same JSON, the copies as the original.
            let published: Vec<_> = payloads(&p, ["devices:1", "devices:fleet"])
                .map(|(channel, data)| (channel, data.get().to_string()))
                .collect();
            assert_eq!(
                published,
                [("devices:1", want.clone()), ("devices:fleet", want.clone())]
            );
        }
    }

    #[test]
    fn payloads_leave_out_disabled_channels() {
        let p = Position::new("359710049000001");
        let want = serde_json::to_string(&reference(&p)).unwrap();
        for (channels, expected) in [
            (["devices:1", ""], vec!["devices:1"]),
            (["", "devices:fleet"], vec!["devices:fleet"]),
            (["", ""], vec![]),
        ] {
            let published: Vec<_> = payloads(&p, channels).collect();
            assert_eq!(
                published.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
                expected
            );
            assert!(published.iter().all(|(_, data)| data.get() == want));
        }
    }
}
