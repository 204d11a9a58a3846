//! Capacity: what one more connection, subscription and channel with history costs the server,
//! for the capacity planning table of docs/operations.md.
//!
//! A warm-up, then three steps against one running node, each measured as the growth of the
//! server's RSS over the whole population the step adds:
//! 0. `--connections` clients that connect and subscribe to nothing, not measured: the first
//!    connections also pay for the server's one-time growth (runtime and allocator caches, tables
//!    sized for the population), which would otherwise be charged to every connection and make
//!    step 2's subtraction come out below zero;
//! 1. as many again, also bare;
//! 2. as many again, each subscribed to `--subscriptions` channels out of a pool of
//!    `--channels` (so the pool's channels are a small share of the cost);
//! 3. `--history-channels` channels of a namespace with history (`--history-namespace`), each
//!    given `--history-size` publications of `--payload` bytes through the server API.
//!
//! Step 2's cost per subscription is its growth minus step 1's cost per connection for its own
//! clients. Steps never free what an earlier one holds, so allocator reuse cannot hide a cost.

use crate::common::Common;
use crate::procstat;
use crate::publish::{payload, Publisher};
use crate::ramp::{self, RampArgs};
use crate::stats::{Stamp, Stats};
use crate::wsclient::{Spec, Target, Wire};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Clone, Debug)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients in each of the warm-up and steps 1 and 2.
    #[arg(long, default_value_t = 5_000)]
    pub connections: usize,
    /// Channels each client of step 2 subscribes to.
    #[arg(long, default_value_t = 50)]
    pub subscriptions: usize,
    /// The pool step 2's clients pick their channels from.
    #[arg(long, default_value_t = 1_000)]
    pub channels: usize,
    /// Channels with history in step 3.
    #[arg(long, default_value_t = 1_000)]
    pub history_channels: usize,
    /// Publications kept per channel in step 3 (the namespace's `history_size`).
    #[arg(long, default_value_t = 100)]
    pub history_size: usize,
    /// Namespace of step 3's channels; it must keep `--history-size` publications.
    #[arg(long, default_value = "capacity")]
    pub history_namespace: String,
    /// Bytes of JSON per publication in step 3.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Pause after each step before the server's memory is read.
    #[arg(long, default_value = "2s")]
    pub settle: humantime::Duration,
}

fn spec(args: &CapacityArgs, token: &str, channels: Vec<String>) -> Arc<Spec> {
    Arc::new(Spec {
        target: Target::Herald,
        server: args.common.servers[0],
        token: token.to_string(),
        channels,
        stamp: Stamp::Micros,
        talk: None,
        handshake_timeout: Duration::from_secs(60),
        // The full client: the lite one subscribes to one channel at most.
        lite: false,
        wire: Wire::Json,
        pusher: None,
    })
}

/// The server's RSS in KiB after the step settled.
async fn rss_after_settling(args: &CapacityArgs, pid: u32) -> anyhow::Result<f64> {
    tokio::time::sleep(args.settle.into()).await;
    let sample = procstat::sample(pid).context("reading the server's /proc entry")?;
    Ok(sample.rss_kib as f64)
}

async fn open(
    args: &CapacityArgs,
    stats: &Arc<Stats>,
    first: usize,
    spec_for: impl Fn(usize) -> Arc<Spec>,
) -> anyhow::Result<ramp::Fleet> {
    let ramp = RampArgs {
        count: args.connections,
        concurrency: args.common.ramp_concurrency,
        rate: args.common.connect_rate,
        first,
    };
    let fleet = ramp::open(&ramp, stats, spec_for).await?;
    if fleet.connected != args.connections {
        bail!(
            "{} of {} clients connected",
            fleet.connected,
            args.connections
        );
    }
    Ok(fleet)
}

/// Fills `--history-channels` channels with `--history-size` publications each, 100 per request.
async fn fill_history(args: &CapacityArgs) -> anyhow::Result<()> {
    let mut publisher =
        Publisher::connect(Target::Herald, args.common.api_addr(), &args.common.api_key).await?;
    let mut batch = Vec::with_capacity(100);
    for round in 0..args.history_size {
        for c in 0..args.history_channels {
            let channel = format!("{}:h{c}", args.history_namespace);
            batch.push((channel, payload(args.payload, None)));
            if batch.len() == 100 {
                publisher
                    .send(&batch)
                    .await
                    .with_context(|| format!("publishing round {round} of the history step"))?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        publisher.send(&batch).await?;
    }
    Ok(())
}

pub async fn run(args: CapacityArgs) -> anyhow::Result<Value> {
    args.common.check()?;
    let &[pid] = args.common.server_pids.as_slice() else {
        bail!("capacity measures one node: give exactly one --server-pid");
    };
    if args.subscriptions >= 100 {
        // connect and the subscribes travel in one frame, and client.max_commands_per_frame is 100
        bail!("--subscriptions must be below 100 (one frame carries connect and every subscribe)");
    }
    if args.subscriptions > args.channels {
        bail!("--subscriptions must not exceed --channels (a client subscribes once per channel)");
    }
    let stats = Arc::new(Stats::new()?);
    let token = args.common.token("capacity")?;
    let n = args.connections;

    let start = rss_after_settling(&args, pid).await?;
    let bare_spec = spec(&args, &token, vec![]);
    let warm = open(&args, &stats, 0, |_| bare_spec.clone()).await?;
    let base = rss_after_settling(&args, pid).await?;
    let bare = open(&args, &stats, n, |_| bare_spec.clone()).await?;
    let after_bare = rss_after_settling(&args, pid).await?;
    let per_connection = (after_bare - base) / n as f64;

    let subscribed = open(&args, &stats, 2 * n, |i| {
        let channels = (0..args.subscriptions)
            .map(|k| format!("cap{}", (i * args.subscriptions + k) % args.channels))
            .collect();
        spec(&args, &token, channels)
    })
    .await?;
    let after_subscribed = rss_after_settling(&args, pid).await?;
    let subscriptions = (n * args.subscriptions) as f64;
    let per_subscription =
        (after_subscribed - after_bare - per_connection * n as f64) / subscriptions;

    fill_history(&args).await?;
    let after_history = rss_after_settling(&args, pid).await?;
    let history_growth = after_history - after_subscribed;
    let per_history_channel = history_growth / args.history_channels as f64;
    let retained = (args.history_channels * args.history_size) as f64;

    warm.close().await;
    bare.close().await;
    subscribed.close().await;
    Ok(json!({
        "scenario": "capacity",
        "target": "herald",
        "connections": n,
        "subscriptions_per_client": args.subscriptions,
        "channel_pool": args.channels,
        "history_channels": args.history_channels,
        "history_size": args.history_size,
        "payload_bytes": args.payload,
        "server_rss_before_mib": start / 1024.0,
        "kib_per_connection_with_warm_up": (base - start) / n as f64,
        "server_rss_after_mib": after_history / 1024.0,
        "kib_per_connection": per_connection,
        "bytes_per_subscription": per_subscription * 1024.0,
        "kib_per_channel_with_history": per_history_channel,
        "bytes_per_retained_publication": history_growth * 1024.0 / retained,
        "errors": stats.errors.load(std::sync::atomic::Ordering::Relaxed),
    }))
}
