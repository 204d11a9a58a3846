//! Readiness of the NATS connection: async-nats connects, reconnects (with our backoff) and
//! resubscribes; the supervisor probes the server, (re)creates the KV buckets, rewrites presence
//! and tells subscribers of possible gaps.

use super::delivery::spawn_reader;
use super::kv::Buckets;
use super::Inner;
use crate::brokers::BrokerError;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Backoff of async-nats's reconnection attempts: 50 ms doubling up to `max`, with jitter so
/// nodes do not reconnect in lockstep.
fn backoff(attempts: usize, max: Duration) -> Duration {
    let base = Duration::from_millis(50).saturating_mul(1u32 << attempts.min(16));
    base.min(max) + Duration::from_millis(rand::random::<u64>() % 50)
}

async fn connect(inner: &Arc<Inner>) -> Result<async_nats::Client, String> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let max_delay = inner.config.max_reconnect_delay;
    let urls: Vec<async_nats::ServerAddr> = inner
        .config
        .nats_urls
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(inner.config.connect_timeout)
        .request_timeout(Some(inner.config.command_timeout))
        // A stalled server is found by our probe; async-nats's own pings then replace the dead
        // connection.
        .ping_interval(inner.config.command_timeout.max(Duration::from_millis(500)))
        .reconnect_delay_callback(move |attempts| backoff(attempts, max_delay))
        .event_callback(move |event| {
            let weak = weak.clone();
            async move {
                let Some(inner) = weak.upgrade() else { return };
                match event {
                    async_nats::Event::Connected => inner.connected.store(true, Ordering::SeqCst),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        inner.connected.store(false, Ordering::SeqCst);
                        inner.set_ready(false);
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        // The subscription's bounded queue overflowed: messages were dropped.
                        tracing::warn!(sid, "nats broker: slow consumer, messages dropped");
                        if let Some(metrics) = inner.metrics.get() {
                            metrics.broker_dropped.inc();
                        }
                        inner.gap.store(true, Ordering::SeqCst);
                    }
                    other => tracing::info!(event = %other, "nats broker: event"),
                }
                inner.wake.notify_one();
            }
        })
        .connect(urls)
        .await
        .map_err(|e| e.to_string())
}

/// Owns the connection's readiness: probe, (re)create the KV buckets, rewrite presence, tell
/// subscribers of possible gaps; async-nats reconnects and resubscribes underneath.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let client = loop {
        match connect(&inner).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(error = %e, "nats broker: cannot create client");
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(inner.config.max_reconnect_delay) => {}
                }
            }
        }
    };
    let _ = inner.client.set(client.clone());
    let control = spawn_reader(&inner, &client, inner.subjects.control(), None).await;
    let mut probe = client
        .subscribe(inner.subjects.probe(&inner.uid))
        .await
        .ok();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // A slow probe must not be followed by a burst of catch-up probes.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let refresh_every = inner.config.presence_ttl / 3;
    let mut last_refresh = tokio::time::Instant::now();
    let mut ever_ready = false;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => break,
            _ = inner.wake.notified() => {}
            _ = tick.tick() => {}
        }
        if !inner.connected.load(Ordering::SeqCst) {
            inner.set_ready(false);
            continue;
        }
        if probe.is_none() {
            probe = client
                .subscribe(inner.subjects.probe(&inner.uid))
                .await
                .ok();
        }
        let Some(sub) = probe.as_mut() else { continue };
        if let Err(e) = probe_once(&inner, &client, sub).await {
            tracing::debug!(error = %e, "nats broker: probe failed");
            inner.set_ready(false);
            continue;
        }
        if !inner.ready.load(Ordering::SeqCst) {
            if let Err(e) = become_ready(&inner, &client).await {
                tracing::warn!(error = %e, "nats broker: not ready");
                continue;
            }
            if ever_ready {
                if let Some(metrics) = inner.metrics.get() {
                    metrics.broker_reconnects.inc();
                }
            }
            ever_ready = true;
            last_refresh = tokio::time::Instant::now();
        } else if last_refresh.elapsed() >= refresh_every {
            last_refresh = tokio::time::Instant::now();
            if let Err(e) = inner.refresh_presence().await {
                // JetStream (or the bucket) is gone while core NATS answers: presence would
                // expire everywhere, so the node is not ready until the buckets work again
                // (`become_ready` re-creates them and rewrites every entry).
                tracing::warn!(error = %e, "nats broker: presence refresh failed");
                inner.set_ready(false);
                continue;
            }
        }
        // A slow-consumer drop while ready also leaves gaps.
        if inner.ready.load(Ordering::SeqCst) && inner.gap.swap(false, Ordering::SeqCst) {
            inner.report_gaps();
        }
    }
    control.abort();
}

/// A message to ourselves through the server: proves the connection and its subscriptions work.
async fn probe_once(
    inner: &Inner,
    client: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
) -> Result<(), String> {
    let nonce = rand::random::<u64>().to_string();
    let round_trip = async {
        client
            .publish(inner.subjects.probe(&inner.uid), Bytes::from(nonce.clone()))
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        // Older probes that timed out may still arrive: skip them.
        while let Some(msg) = sub.next().await {
            if msg.payload.as_ref() == nonce.as_bytes() {
                return Ok(());
            }
        }
        Err("probe subscription closed".to_string())
    };
    tokio::time::timeout(inner.config.command_timeout, round_trip)
        .await
        .map_err(|_| "probe timed out".to_string())?
}

async fn become_ready(inner: &Arc<Inner>, client: &async_nats::Client) -> Result<(), BrokerError> {
    // The history stream may be gone (server restarted empty): look it up again on first use.
    inner.history.forget().await;
    if inner.config.nats_jetstream {
        let buckets = Buckets::open(client, &inner.config).await?;
        *inner.buckets.lock() = Some(buckets);
        // Entries written before the outage may be gone (server restarted empty): write them again.
        inner.refresh_presence().await?;
    }
    inner.set_ready(true);
    tracing::info!(channels = inner.channels.lock().len(), "nats broker: ready");
    Ok(())
}
