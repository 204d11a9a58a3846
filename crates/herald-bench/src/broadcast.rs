//! Scenario 2 (and 6): one channel, N subscribers, publications at one or more rates. With
//! several `--server`s the subscribers are spread over the nodes and the publisher talks to one,
//! so every delivery to another node crosses the broker.
//!
//! `--target pusher` runs it over the Pusher Channels protocol (Herald's Pusher edge or
//! Sockudo): the subscribers join one Pusher channel (a `private-` one signed with the app
//! secret), publications are client events from one more subscribed connection (`--publish-via
//! client`, on a `private-` channel) or signed `batch_events` to the Pusher HTTP API.
//!
//! With `--server-pid`, the server's RSS is read before the ramp and once the subscribers are
//! connected and idle: the memory each subscribed connection costs the server.

use crate::client_publish::ClientPublisher;
use crate::common::Common;
use crate::procstat;
use crate::publish::{payload, run_at_rate, Publisher};
use crate::pusher::PusherArgs;
use crate::ramp::{self, RampArgs};
use crate::stats::{latency_json, Stamp, Stats};
use crate::wsclient::{Spec, Target, Wire};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// What serves the subscribers: Herald, a Node.js peer in raw mode, or a Pusher server.
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Target,
    /// The Pusher app (`--target pusher`).
    #[command(flatten)]
    pub pusher: PusherArgs,
    /// How long the subscribers stay idle after the ramp before the server's RSS is read.
    #[arg(long, default_value = "1s")]
    pub settle: humantime::Duration,
    /// Herald's wire format for the subscribers.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Wire,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publications per second; a comma-separated list runs one step per rate on the same
    /// connections (a sweep, to find the knee).
    #[arg(long = "rate", value_delimiter = ',', default_value = "100")]
    pub rates: Vec<u64>,
    /// Publications per API request.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// Publication size in bytes (approximate JSON size of the data).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// How long each step publishes.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Longest wait after a step for deliveries still in flight.
    #[arg(long, default_value = "3s")]
    pub drain: humantime::Duration,
    /// Who publishes: the server API (batches of `--batch` over HTTP), or a client on a
    /// WebSocket subscribed to the channel (chat, live commentary).
    #[arg(long, value_enum, default_value = "api")]
    pub publish_via: PublishVia,
    /// Client publishing: publications sent and not yet back at the publisher, at most.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Client publishing: count a publication as back when another subscribed connection (the
    /// watcher) receives it, not the publisher; always so with `--target pusher`.
    #[arg(long)]
    pub watcher: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishVia {
    Api,
    Client,
}

/// One of the two publishing sides.
enum Source {
    Api(Publisher),
    Client(Box<ClientPublisher>),
}

pub async fn run(args: BroadcastArgs) -> anyhow::Result<Value> {
    args.common.check()?;
    let stats = Arc::new(Stats::new()?);
    let token = args.common.token("bench")?;
    let specs: Vec<Arc<Spec>> = args
        .common
        .servers
        .iter()
        .map(|server| {
            Arc::new(Spec {
                target: args.target,
                server: *server,
                token: token.clone(),
                channels: vec![args.channel.clone()],
                stamp: Stamp::Micros,
                talk: None,
                handshake_timeout: Duration::from_secs(30),
                lite: false,
                wire: args.format,
                pusher: (args.target == Target::Pusher).then(|| Arc::new(args.pusher.clone())),
            })
        })
        .collect();
    let ramp_args = RampArgs {
        count: args.subscribers,
        concurrency: args.common.ramp_concurrency,
        rate: args.common.connect_rate,
        first: 0,
    };
    let rss_before = procstat::sample_group(&args.common.server_pids);
    let fleet = ramp::open(&ramp_args, &stats, |i| specs[i % specs.len()].clone()).await?;
    // Idle and subscribed, before any publisher connects: what the connections themselves hold.
    tokio::time::sleep(args.settle.into()).await;
    let rss_subscribed = procstat::sample_group(&args.common.server_pids);
    let memory = memory_json(&rss_before, &rss_subscribed, fleet.connected);
    eprintln!(
        "{} {}/{} subscribers in {:.1}s",
        args.target.name(),
        fleet.connected,
        args.subscribers,
        fleet.seconds
    );
    let mut publisher = match args.publish_via {
        PublishVia::Api if args.target == Target::Pusher => {
            Source::Api(Publisher::connect_pusher(args.common.api_addr(), &args.pusher).await?)
        }
        PublishVia::Api => Source::Api(
            Publisher::connect(args.target, args.common.api_addr(), &args.common.api_key).await?,
        ),
        PublishVia::Client => Source::Client(Box::new(
            ClientPublisher::connect(&specs[0], args.watcher).await?,
        )),
    };
    let mut steps = Vec::new();
    for rate in &args.rates {
        let step = step(&args, *rate, fleet.connected as u64, &stats, &mut publisher).await;
        match step {
            Ok(step) => {
                eprintln!("{}", crate::summary::step_line(&step));
                steps.push(step);
            }
            Err(e) => {
                // The server gave up (e.g. the API closed): report what was measured so far.
                eprintln!("rate {rate}: {e:#}");
                steps.push(json!({"rate": rate, "error": format!("{e:#}")}));
                break;
            }
        }
    }
    let (connected, ramp_seconds, connect_rate) = (fleet.connected, fleet.seconds, fleet.rate());
    fleet.close().await;
    let mut result = json!({
        "scenario": if args.common.servers.len() > 1 { "cluster" } else { "broadcast" },
        "target": args.target.name(),
        "format": if args.target == Target::Herald { format!("{:?}", args.format).to_lowercase() } else { "-".into() },
        "nodes": args.common.servers.len(),
        "subscribers": connected,
        "connect_errors": stats.errors.load(std::sync::atomic::Ordering::Relaxed),
        "ramp_seconds": ramp_seconds,
        "connections_per_second": connect_rate,
        "payload_bytes": args.payload,
        "batch": args.batch,
        "publish_via": format!("{:?}", args.publish_via).to_lowercase(),
        "in_flight": if args.publish_via == PublishVia::Client { json!(args.in_flight) } else { Value::Null },
        "paced_by": match args.publish_via {
            PublishVia::Client if args.watcher || args.target == Target::Pusher => "watcher",
            PublishVia::Client => "publisher",
            PublishVia::Api => "rate",
        },
        "channel": args.channel,
        "steps": steps,
    });
    merge(&mut result, memory);
    Ok(result)
}

/// Server RSS before the ramp and with the subscribers connected and idle, and the difference
/// per subscriber.
fn memory_json(
    before: &Option<procstat::GroupSample>,
    subscribed: &Option<procstat::GroupSample>,
    subscribers: usize,
) -> Value {
    match (before, subscribed) {
        (Some(b), Some(s)) if subscribers > 0 => json!({
            "server_rss_before_mib": b.rss_kib as f64 / 1024.0,
            "server_rss_subscribed_mib": s.rss_kib as f64 / 1024.0,
            "server_rss_kib_per_subscriber":
                (s.rss_kib as f64 - b.rss_kib as f64) / subscribers as f64,
        }),
        _ => json!({}),
    }
}

async fn step(
    args: &BroadcastArgs,
    rate: u64,
    subscribers: u64,
    stats: &Stats,
    publisher: &mut Source,
) -> anyhow::Result<Value> {
    // Whatever a previous step left in flight belongs to it, not to this one.
    stats.take_latency()?;
    let delivered_before = stats.deliveries();
    let frames_before = stats.frames();
    let before = procstat::sample_group(&args.common.server_pids);
    let client_before = procstat::sample_group(&[std::process::id()]);
    let started = Instant::now();
    let channel = args.channel.clone();
    let duration = args.duration.into();
    let published = match publisher {
        Source::Api(publisher) => {
            run_at_rate(publisher, rate, args.batch, duration, |_| {
                (channel.clone(), payload(args.payload, None))
            })
            .await?
        }
        Source::Client(publisher) => {
            publisher
                .run(rate, args.in_flight, duration, args.payload)
                .await?
        }
    };
    let publish_seconds = started.elapsed().as_secs_f64();
    let after_publish = procstat::sample_group(&args.common.server_pids);
    let client_after = procstat::sample_group(&[std::process::id()]);
    let expected = published * subscribers;
    let deadline = Instant::now() + Duration::from(args.drain);
    while stats.deliveries() - delivered_before < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let deliveries = stats.deliveries() - delivered_before;
    let frames = stats.frames() - frames_before;
    let latency = stats.take_latency()?;
    let mut step = json!({
        "rate": rate,
        "publications": published,
        "publish_rate": published as f64 / publish_seconds,
        "seconds": seconds,
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "deliveries_per_second": deliveries as f64 / seconds,
        // Publications per WebSocket message received: Herald's Centrifugo protocol writes a
        // burst as one message, Pusher has one message per event.
        "deliveries_per_message": deliveries as f64 / frames.max(1) as f64,
        "offered_deliveries_per_second": rate as f64 * subscribers as f64,
        "latency_ms": latency_json(&latency),
    });
    // CPU over the publishing period (the drain would dilute it).
    merge(&mut step, procstat::usage_json(&before, &after_publish));
    // The load generator's own CPU over the same period: on a shared machine, what it takes is
    // not the server's.
    if let Some(cpu) = procstat::usage_json(&client_before, &client_after).get("server_cpu_percent")
    {
        merge(&mut step, json!({ "client_cpu_percent": cpu }));
    }
    Ok(step)
}

pub fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}
