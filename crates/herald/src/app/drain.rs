//! The drain of a stopping node: each client is told to reconnect (3001 `shutdown`) at its own
//! random moment within `http.drain_period`, so the node that takes the clients over (the new
//! process after a handover, the other processes on a `reuse_port` port, the rest of a cluster)
//! sees a steady trickle of reconnects rather than all of them at once.

use crate::core::delivery::Control;
use crate::core::metrics::Metrics;
use crate::core::outbox::OutItem;
use crate::node::Node;
use herald_protocol::Disconnect;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng as _;
use std::time::{Duration, Instant};

/// How often the drain sends the batch of disconnects that are due.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// What an operator watches while a node drains.
#[derive(Clone, Default)]
pub struct DrainGauges {
    /// 1 from the moment the node stops accepting until it exits.
    draining: Gauge,
    /// Clients not yet told to reconnect.
    pending: Gauge,
}

impl DrainGauges {
    pub fn register(metrics: &Metrics) -> DrainGauges {
        let gauges = DrainGauges::default();
        metrics.register(
            "draining",
            "1 while the node stops: it accepts no connections and tells its clients to reconnect",
            gauges.draining.clone(),
        );
        metrics.register(
            "drain_pending_clients",
            "Clients of a draining node not yet told to reconnect",
            gauges.pending.clone(),
        );
        gauges
    }
}

/// Tells every connected client to reconnect, spread over `period` (at once when zero). Returns
/// when the last one was told; their connections close as their sessions handle it.
pub async fn drain(node: &Node, period: Duration, gauges: &DrainGauges) {
    gauges.draining.set(1);
    let sessions = node.hub.all_sessions();
    if period.is_zero() || sessions.is_empty() {
        return;
    }
    // A uniformly random moment per client: batches of about the same size, with jitter.
    // (The generator is not Send: it must not live across an await.)
    let mut plan: Vec<_> = {
        let mut rng = rand::rng();
        sessions
            .into_iter()
            .map(|s| (period.mul_f64(rng.random::<f64>()), s))
            .collect()
    };
    plan.sort_by_key(|(at, _)| *at);
    tracing::info!(
        clients = plan.len(),
        period = ?period,
        "draining: clients are told to reconnect over the drain period"
    );
    let start = Instant::now();
    let mut tick = tokio::time::interval(BATCH_INTERVAL);
    let mut next = 0;
    while next < plan.len() {
        tick.tick().await;
        let elapsed = start.elapsed();
        while let Some((at, session)) = plan.get(next) {
            if *at > elapsed {
                break;
            }
            // A session that already left ignores it.
            session.outbox.push(OutItem::Control(Control::Disconnect {
                user: String::new(),
                client: None,
                code: Disconnect::SHUTDOWN.code,
                reason: Disconnect::SHUTDOWN.reason.to_string(),
            }));
            next += 1;
        }
        gauges
            .pending
            .set(i64::try_from(plan.len() - next).unwrap_or(i64::MAX));
    }
}
