//! Scenario 3: many rooms, every member talks. Each member subscribes to its room and publishes
//! into it through the client protocol every `--interval`; every member receives every message of
//! its room (its own included), so deliveries = rooms × members² / interval.

use crate::broadcast::merge;
use crate::common::Common;
use crate::procstat;
use crate::ramp::{self, RampArgs};
use crate::stats::{latency_json, Stamp, Stats};
use crate::wsclient::{Spec, Target, Wire};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Each member publishes once per interval.
    #[arg(long, default_value = "1s")]
    pub interval: humantime::Duration,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Room channels are `<namespace>:room<N>`; the namespace must allow subscribers to publish.
    #[arg(long, default_value = "chat")]
    pub namespace: String,
    /// How long to measure after every member is connected.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
}

pub async fn run(args: ChatArgs) -> anyhow::Result<Value> {
    args.common.check()?;
    let stats = Arc::new(Stats::new()?);
    let token = args.common.token("member")?;
    let interval: Duration = args.interval.into();
    let count = args.rooms * args.members;
    let mut specs = Vec::with_capacity(count);
    for i in 0..count {
        specs.push(Arc::new(Spec {
            target: Target::Herald,
            server: args.common.server_for(i),
            token: token.clone(),
            channels: vec![format!("{}:room{}", args.namespace, i % args.rooms.max(1))],
            stamp: Stamp::Micros,
            talk: Some((interval, args.payload)),
            handshake_timeout: Duration::from_secs(30),
            lite: false,
            wire: Wire::Json,
            pusher: None,
        }));
    }
    let ramp_args = RampArgs {
        count,
        concurrency: args.common.ramp_concurrency,
        rate: args.common.connect_rate,
        first: 0,
    };
    let fleet = ramp::open(&ramp_args, &stats, |i| specs[i].clone()).await?;
    eprintln!(
        "{}/{count} members in {:.1}s",
        fleet.connected, fleet.seconds
    );
    // Measure a window in steady state: members already talk while others connect.
    stats.take_latency()?;
    let before = procstat::sample_group(&args.common.server_pids);
    let delivered_before = stats.deliveries();
    let started = Instant::now();
    tokio::time::sleep(args.duration.into()).await;
    let seconds = started.elapsed().as_secs_f64();
    let deliveries = stats.deliveries() - delivered_before;
    let after = procstat::sample_group(&args.common.server_pids);
    let latency = stats.take_latency()?;
    let (connected, ramp_seconds) = (fleet.connected, fleet.seconds);
    fleet.close().await;
    let per_second = args.members as f64 / interval.as_secs_f64().max(1e-6);
    let mut step = json!({
        "rate": args.rooms as f64 * per_second,
        "seconds": seconds,
        "deliveries": deliveries,
        "expected_deliveries": (args.rooms as f64 * args.members as f64 * per_second * seconds).round(),
        "deliveries_per_second": deliveries as f64 / seconds,
        "latency_ms": latency_json(&latency),
    });
    merge(&mut step, procstat::usage_json(&before, &after));
    Ok(json!({
        "scenario": "chat",
        "target": "herald",
        "rooms": args.rooms,
        "members_per_room": args.members,
        "connections": connected,
        "errors": stats.errors.load(std::sync::atomic::Ordering::Relaxed),
        "ramp_seconds": ramp_seconds,
        "publications_per_second": args.rooms as f64 * per_second,
        "steps": [step],
    }))
}
