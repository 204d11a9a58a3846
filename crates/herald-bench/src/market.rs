//! Scenario 4: market data. `--symbols` channels (`<namespace>:S<k>`), each client subscribed to
//! `--per-client` of them, ticks published round-robin over the symbols at `--rate`. The namespace
//! conflates (latest tick per symbol per window), so a client receives at most one tick per
//! symbol per window however fast the symbol trades.

use crate::broadcast::merge;
use crate::common::Common;
use crate::procstat;
use crate::publish::{payload, run_at_rate, Publisher};
use crate::ramp::{self, RampArgs};
use crate::stats::{latency_json, Stamp, Stats};
use crate::wsclient::{Spec, Target, Wire};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct MarketArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub symbols: usize,
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    #[arg(long, default_value_t = 20)]
    pub per_client: usize,
    /// Ticks per second over all symbols.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Symbol channels are `<namespace>:S<k>`; the namespace sets the window and conflation key.
    #[arg(long, default_value = "md")]
    pub namespace: String,
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
}

/// The symbols client `i` follows: evenly spaced over the list, offset by `i`, all distinct.
fn symbols_of(i: usize, symbols: usize, per_client: usize) -> Vec<usize> {
    let per = per_client.min(symbols).max(1);
    let stride = symbols / per;
    (0..per).map(|j| (i + j * stride) % symbols).collect()
}

pub async fn run(args: MarketArgs) -> anyhow::Result<Value> {
    args.common.check()?;
    let symbols = args.symbols.max(1);
    let stats = Arc::new(Stats::new()?);
    let token = args.common.token("trader")?;
    let mut specs = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let channels = symbols_of(i, symbols, args.per_client)
            .into_iter()
            .map(|k| format!("{}:S{k:04}", args.namespace))
            .collect();
        specs.push(Arc::new(Spec {
            target: Target::Herald,
            server: args.common.server_for(i),
            token: token.clone(),
            channels,
            stamp: Stamp::Micros,
            talk: None,
            handshake_timeout: Duration::from_secs(30),
            lite: false,
            wire: Wire::Json,
            pusher: None,
        }));
    }
    let ramp_args = RampArgs {
        count: args.clients,
        concurrency: args.common.ramp_concurrency,
        rate: args.common.connect_rate,
        first: 0,
    };
    let fleet = ramp::open(&ramp_args, &stats, |i| specs[i].clone()).await?;
    eprintln!(
        "{}/{} clients in {:.1}s",
        fleet.connected, args.clients, fleet.seconds
    );
    // Subscribe replies carry each symbol's latest tick (a snapshot); they are not deliveries.
    stats.take_latency()?;
    let delivered_before = stats.deliveries();
    let mut publisher =
        Publisher::connect(Target::Herald, args.common.api_addr(), &args.common.api_key).await?;
    let before = procstat::sample_group(&args.common.server_pids);
    let started = Instant::now();
    let namespace = args.namespace.clone();
    let ticks = run_at_rate(
        &mut publisher,
        args.rate,
        args.batch,
        args.duration.into(),
        |n| {
            let k = n as usize % symbols;
            let symbol = format!("S{k:04}");
            (
                format!("{namespace}:{symbol}"),
                payload(args.payload, Some(("s", &symbol))),
            )
        },
    )
    .await?;
    let after = procstat::sample_group(&args.common.server_pids);
    // One more window lets the last conflated frames out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seconds = started.elapsed().as_secs_f64();
    let deliveries = stats.deliveries() - delivered_before;
    let latency = stats.take_latency()?;
    let (connected, ramp_seconds) = (fleet.connected, fleet.seconds);
    fleet.close().await;
    // Without conflation every tick would reach every follower of its symbol.
    let followers = (connected * args.per_client.min(symbols)) as f64 / symbols as f64;
    let unconflated = ticks as f64 * followers;
    let mut step = json!({
        "rate": args.rate,
        "publications": ticks,
        "seconds": seconds,
        "deliveries": deliveries,
        "expected_deliveries": unconflated.round(),
        "deliveries_per_second": deliveries as f64 / seconds,
        "conflation_ratio": if deliveries > 0 { unconflated / deliveries as f64 } else { 0.0 },
        "latency_ms": latency_json(&latency),
    });
    merge(&mut step, procstat::usage_json(&before, &after));
    Ok(json!({
        "scenario": "market",
        "target": "herald",
        "symbols": symbols,
        "clients": connected,
        "per_client": args.per_client,
        "errors": stats.errors.load(std::sync::atomic::Ordering::Relaxed),
        "ramp_seconds": ramp_seconds,
        "steps": [step],
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_follows_distinct_symbols() {
        let mut s = super::symbols_of(7, 1000, 20);
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 20);
        assert!(s.iter().all(|k| *k < 1000));
    }
}
