//! The hostile soak: honest subscribers that must receive every publication while hostile
//! clients of every kind attack the same node, each kind bounded in count and rate. Reports the
//! honest losses (must be 0), disconnects and latency, the server's peak RSS, descriptors and the
//! kernel's TCP memory, and for each hostile kind how its connections ended.
//!
//! Everything targets loopback and stops by itself: hostile connections stop at the end of the
//! run (then are drained for at most a few seconds to learn how the server ended them).

mod hold;
pub mod honest;
mod raw;
pub mod report;
mod requests;
mod sockets;
mod tally;
mod watch;

use crate::common::Common;
use crate::procstat;
use crate::publish::Publisher;
use crate::stats::{latency_json, Stats};
use crate::wsclient::Target;
use hold::{spawn_kind, Ctx};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Clone, Debug)]
pub struct HostileArgs {
    #[command(flatten)]
    pub common: Common,
    /// Honest subscribers in all (busy ones included).
    #[arg(long, default_value_t = 5000)]
    pub subscribers: usize,
    /// Of them, on the busy channel: large publications, the channel the stalled subscribers follow.
    #[arg(long, default_value_t = 50)]
    pub busy_subscribers: usize,
    /// Namespace of the honest channels (`<ns>:0`.., `<ns>:busy`, `<ns>:victims`); give it history.
    #[arg(long, default_value = "live")]
    pub namespace: String,
    /// Honest channels besides the busy one.
    #[arg(long, default_value_t = 5)]
    pub channels: usize,
    /// Publications per second over the honest channels (round-robin).
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Publications per second on the busy channel.
    #[arg(long, default_value_t = 100)]
    pub busy_rate: u64,
    #[arg(long, default_value_t = 8192)]
    pub busy_payload: usize,
    /// Publications per API request.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// How long the publisher and the attacks run.
    #[arg(long, default_value = "60s")]
    pub duration: humantime::Duration,
    /// Longest wait after the run for honest deliveries still in flight.
    #[arg(long, default_value = "5s")]
    pub drain: humantime::Duration,
    /// Channel with a big history for the amplifiers (its namespace needs history and
    /// allow_history_for_client); filled before the run. Its namespace also takes the new names.
    #[arg(long, default_value = "big:amplify")]
    pub big_channel: String,
    #[arg(long, default_value_t = 1000)]
    pub history_fill: usize,
    #[arg(long, default_value_t = 1000)]
    pub history_entry_bytes: usize,
    /// Multiplies every hostile count and rate (e.g. 0.05 for a smoke run; at least one of each).
    #[arg(long, default_value_t = 1.0)]
    pub hostile_scale: f64,
    /// Pipelined `history` calls each amplifier sends at once.
    #[arg(long, default_value_t = 200)]
    pub amplifier_burst: usize,
    /// Publish commands per batch bomb.
    #[arg(long, default_value_t = 100_000)]
    pub bomb_commands: usize,
    /// Size of each oversized publication.
    #[arg(long, default_value_t = 2_000_000)]
    pub oversize_bytes: usize,
    /// Readers of the channel the oversized publications go to (reported with that kind).
    #[arg(long, default_value_t = 10)]
    pub victims: usize,
    /// Device TCP listeners (GT06, H02, Teltonika, JSON lines) for silent sockets; none: skipped.
    #[arg(long, value_delimiter = ',')]
    pub device_tcp: Vec<SocketAddr>,
    /// The OsmAnd listener, for unknown device ids; none: skipped.
    #[arg(long)]
    pub osmand: Option<SocketAddr>,
    /// Hostile kinds to leave out (comma-separated names as in the report).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

impl HostileArgs {
    fn scaled(&self, n: f64) -> usize {
        ((n * self.hostile_scale).round() as usize).max(1)
    }

    fn channel(&self, name: impl std::fmt::Display) -> String {
        format!("{}:{name}", self.namespace)
    }
}

/// The attacks, each with its bound. Kinds named in `--skip` are left out.
fn start_attacks(args: &HostileArgs, ctx: &Arc<Ctx>) -> Vec<tokio::task::JoinHandle<()>> {
    let over = Duration::from(args.duration) / 3;
    let scale = |n: f64| args.scaled(n);
    let on = |kind: &str| !args.skip.iter().any(|s| s == kind);
    let mut tasks = Vec::new();
    if on("ping_flood_anonymous") {
        let rate = scale(200.0) as u64;
        tasks.push(spawn_kind(
            ctx,
            "ping_flood_anonymous",
            scale(20.0),
            over,
            move |c, _| sockets::ping_flood(c, false, rate),
        ));
    }
    if on("ping_flood_authenticated") {
        let rate = scale(200.0) as u64;
        tasks.push(spawn_kind(
            ctx,
            "ping_flood_authenticated",
            scale(20.0),
            over,
            move |c, _| sockets::ping_flood(c, true, rate),
        ));
    }
    if on("history_amplifier") {
        let burst = args.amplifier_burst;
        tasks.push(spawn_kind(
            ctx,
            "history_amplifier",
            scale(2.0),
            over,
            move |c, _| sockets::history_amplifier(c, burst, 10),
        ));
    }
    if on("slowloris") {
        tasks.push(spawn_kind(ctx, "slowloris", scale(100.0), over, |c, _| {
            sockets::slowloris(c, 20)
        }));
    }
    if on("idle_tcp") {
        tasks.push(spawn_kind(ctx, "idle_tcp", scale(100.0), over, |c, _| {
            sockets::idle_tcp(c)
        }));
    }
    if on("huge_frame") {
        tasks.push(spawn_kind(ctx, "huge_frame", scale(10.0), over, |c, _| {
            sockets::huge_frame(c)
        }));
    }
    if on("bad_frame") {
        // Every variant at least once, whatever the scale.
        let count = sockets::BAD_FRAMES.len() * scale(3.0);
        tasks.push(spawn_kind(
            ctx,
            "bad_frame",
            count,
            over,
            sockets::bad_frame,
        ));
    }
    if on("stalled_subscriber") {
        tasks.push(spawn_kind(
            ctx,
            "stalled_subscriber",
            scale(20.0),
            over,
            |c, _| sockets::stalled_subscriber(c),
        ));
    }
    if on("new_channel_names") {
        tasks.push(spawn_kind(
            ctx,
            "new_channel_names",
            scale(4.0),
            over,
            sockets::new_channel_names,
        ));
    }
    if on("device_silent") && !ctx.device_tcp.is_empty() {
        tasks.push(spawn_kind(
            ctx,
            "device_silent",
            scale(1000.0),
            over,
            sockets::device_silent,
        ));
    }
    if on("osmand_unknown_ids") && ctx.osmand.is_some() {
        // Each connection waits for every answer: several of them make the rate.
        let connections = scale(8.0);
        let rate = (scale(200.0) / connections).max(1) as u64;
        for _ in 0..connections {
            tasks.push(tokio::spawn(requests::osmand_unknown_ids(
                ctx.clone(),
                rate,
            )));
        }
    }
    if on("connection_churn") {
        tasks.push(tokio::spawn(requests::connection_churn(
            ctx.clone(),
            scale(40.0) as u64,
        )));
    }
    if on("batch_bomb") {
        let every = Duration::from_secs(5).div_f64(args.hostile_scale.clamp(0.2, 5.0));
        tasks.push(tokio::spawn(requests::batch_bomb(
            ctx.clone(),
            args.bomb_commands,
            every,
        )));
    }
    if on("oversized_publication") {
        let every = Duration::from_secs(5).div_f64(args.hostile_scale.clamp(0.2, 5.0));
        tasks.push(tokio::spawn(requests::oversized_publication(
            ctx.clone(),
            args.oversize_bytes,
            every,
        )));
    }
    tasks
}

/// Fills the big channel's history (what the amplifiers ask for).
async fn fill_history(args: &HostileArgs) -> anyhow::Result<()> {
    if args.history_fill == 0 {
        return Ok(());
    }
    let mut publisher =
        Publisher::connect(Target::Herald, args.common.api_addr(), &args.common.api_key).await?;
    let entry = "h".repeat(args.history_entry_bytes.saturating_sub(20));
    let items: Vec<_> = (0..args.history_fill)
        .map(|n| (args.big_channel.clone(), json!({"n": n, "p": entry})))
        .collect();
    for chunk in items.chunks(100) {
        publisher.send(chunk).await?;
    }
    Ok(())
}

/// The metrics that say what the node refused, dropped or closed (non-zero values only).
async fn limit_metrics(args: &HostileArgs) -> Value {
    let api = args.common.api_addr();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {api}\r\nX-API-Key: {}\r\nConnection: close\r\n\r\n",
        args.common.api_key
    );
    let fetch = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(api).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        std::io::Result::Ok(body)
    };
    let Ok(Ok(body)) = tokio::time::timeout(Duration::from_secs(10), fetch).await else {
        return json!({});
    };
    let text = String::from_utf8_lossy(&body);
    let words = [
        "disconnect",
        "refused",
        "limit",
        "drop",
        "reject",
        "evict",
        "timeout",
        "too_",
        "slow",
        "exceeded",
        "streams",
        "devices",
        "outbox",
        "closed",
    ];
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("herald_")) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let base = name.split('{').next().unwrap_or(name);
        let wanted = words.iter().any(|w| base.contains(w))
            && !["_bucket", "_sum", "_created"]
                .iter()
                .any(|s| base.ends_with(s));
        if wanted && value.parse::<f64>().is_ok_and(|v| v != 0.0) {
            out.insert(name.to_string(), value.parse::<f64>().unwrap_or(0.0));
        }
    }
    json!(out)
}

pub async fn run(args: HostileArgs) -> anyhow::Result<Value> {
    args.common.check()?;
    if args.busy_subscribers >= args.subscribers {
        anyhow::bail!("--busy-subscribers must be fewer than --subscribers");
    }
    let ws = args.common.servers[0];
    let api = args.common.api_addr();
    let pids = args.common.server_pids.clone();
    let idle_rss = pids
        .iter()
        .filter_map(|p| procstat::status_kib(*p, "VmRSS"))
        .sum::<u64>();
    let idle_fds = pids
        .iter()
        .filter_map(|p| procstat::open_fds(*p))
        .sum::<u64>();
    let token = args.common.token("honest")?;
    fill_history(&args).await?;

    // The honest fleet: the plain channels, the busy one, and the oversized publications' victims.
    let stats = Arc::new(Stats::new()?);
    let victim_stats = Arc::new(Stats::new()?);
    let plain: Vec<String> = (0..args.channels.max(1)).map(|c| args.channel(c)).collect();
    let busy = args.channel("busy");
    let victims_channel = args.channel("victims");
    let plain_count = args.subscribers - args.busy_subscribers;
    let concurrency = args.common.ramp_concurrency;
    let plain_fleet =
        honest::open_fleet(ws, &token, &plain, plain_count, 0, concurrency, &stats).await;
    let busy_fleet = honest::open_fleet(
        ws,
        &token,
        std::slice::from_ref(&busy),
        args.busy_subscribers,
        plain_count,
        concurrency,
        &stats,
    )
    .await;
    let victims_fleet = honest::open_fleet(
        ws,
        &token,
        std::slice::from_ref(&victims_channel),
        args.victims,
        args.subscribers,
        concurrency,
        &victim_stats,
    )
    .await;
    let honest_connected = plain_fleet.connected + busy_fleet.connected;
    let busy_connected = busy_fleet.connected;
    let ramp_seconds = plain_fleet.seconds + busy_fleet.seconds;
    eprintln!(
        "{honest_connected}/{} honest subscribers and {}/{} victims in {ramp_seconds:.1}s",
        args.subscribers, victims_fleet.connected, args.victims
    );
    let connect_error = plain_fleet
        .first_error
        .clone()
        .or_else(|| busy_fleet.first_error.clone());

    // The run: publishers and attacks together, for `duration`.
    let watcher = watch::Watcher::start(pids.clone(), Duration::from_millis(250));
    let cpu_before = procstat::sample_group(&pids);
    let duration = Duration::from(args.duration);
    let end = Instant::now() + duration;
    let ctx = Arc::new(Ctx::new(
        ws,
        api,
        args.common.api_key.clone(),
        args.common.token("hostile")?,
        [
            busy.clone(),
            plain[0].clone(),
            args.big_channel.clone(),
            victims_channel,
        ],
        args.device_tcp.clone(),
        args.osmand,
        end,
    ));
    let attacks = start_attacks(&args, &ctx);
    let main_pub = tokio::spawn(honest::publish(
        api,
        args.common.api_key.clone(),
        plain.clone(),
        args.rate,
        args.batch,
        args.payload,
        duration,
    ));
    let busy_pub = tokio::spawn(honest::publish(
        api,
        args.common.api_key.clone(),
        vec![busy.clone()],
        args.busy_rate,
        args.batch,
        args.busy_payload,
        duration,
    ));
    let mut failures = Vec::new();
    let mut published = |task: Result<anyhow::Result<u64>, _>, what: &str| match task {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            failures.push(format!("{what} publisher failed: {e:#}"));
            0
        }
        Err(e) => {
            failures.push(format!("{what} publisher panicked: {e}"));
            0
        }
    };
    let published_plain = published(main_pub.await, "honest");
    let published_busy = published(busy_pub.await, "busy");
    let cpu_after = procstat::sample_group(&pids);

    // Deliveries still in flight, then the end of the attacks.
    let expected_for = |channel: usize, busy: bool| {
        if busy {
            published_busy
        } else {
            honest::published_on(published_plain, channel, plain.len())
        }
    };
    let expected: u64 = (0..plain_fleet.connected)
        .map(|n| expected_for(n % plain.len(), false))
        .sum::<u64>()
        + busy_fleet.connected as u64 * published_busy;
    let drain_until = Instant::now() + Duration::from(args.drain);
    while stats.deliveries() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for task in attacks {
        let _ = task.await;
    }
    let server = watcher.finish().await;
    let metrics = limit_metrics(&args).await;

    // Every honest subscriber's account.
    let mut disconnects: BTreeMap<String, u64> = BTreeMap::new();
    let (mut lost, mut received, mut duplicates) = (0u64, 0u64, 0u64);
    for (records, busy) in [
        (plain_fleet.close().await, false),
        (busy_fleet.close().await, true),
    ] {
        for r in records {
            let want = expected_for(r.channel, busy);
            lost += want.saturating_sub(r.unique);
            received += r.unique;
            duplicates += r.duplicates;
            if let Some(d) = r.disconnect {
                *disconnects.entry(d).or_default() += 1;
            }
        }
    }
    let mut victims_disconnected: BTreeMap<String, u64> = BTreeMap::new();
    for r in victims_fleet.close().await {
        if let Some(d) = r.disconnect {
            *victims_disconnected.entry(d).or_default() += 1;
        }
    }
    for (label, n) in &victims_disconnected {
        ctx.tally
            .count("oversized_publication", "victims_disconnected", *n);
        for _ in 0..*n {
            ctx.tally
                .response("oversized_publication", &format!("victim {label}"));
        }
    }
    let latency = stats.take_latency()?;

    let honest_disconnects: u64 = disconnects.values().sum();
    if honest_connected < args.subscribers {
        failures.push(format!(
            "{} honest subscribers could not connect (first error: {})",
            args.subscribers - honest_connected,
            connect_error.unwrap_or_default()
        ));
    }
    if lost > 0 {
        failures.push(format!("{lost} honest deliveries lost"));
    }
    if duplicates > 0 {
        failures.push(format!("{duplicates} honest deliveries duplicated"));
    }
    if honest_disconnects > 0 {
        failures.push(format!(
            "{honest_disconnects} honest subscribers disconnected: {disconnects:?}"
        ));
    }
    let mut result = json!({
        "scenario": "hostile",
        "target": "herald",
        "seconds": duration.as_secs_f64(),
        "passed": failures.is_empty(),
        "failures": failures,
        "honest": {
            "subscribers": args.subscribers,
            "connected": honest_connected,
            "ramp_seconds": ramp_seconds,
            "channels": plain.len(),
            "busy_subscribers": busy_connected,
            "publications": published_plain + published_busy,
            "publications_offered": (args.rate + args.busy_rate) * duration.as_secs(),
            "publications_busy": published_busy,
            "publication_rate": (published_plain + published_busy) as f64 / duration.as_secs_f64(),
            "expected_deliveries": expected,
            "received_deliveries": received,
            "lost": lost,
            "duplicates": duplicates,
            "disconnects": honest_disconnects,
            "disconnect_reasons": disconnects,
            "latency_ms": latency_json(&latency),
        },
        "server": server,
        "hostile": ctx.tally.json(),
        "limit_metrics": metrics,
    });
    if let Some(server) = result["server"].as_object_mut() {
        server.insert(
            "server_rss_idle_mib".into(),
            json!(idle_rss as f64 / 1024.0),
        );
        server.insert("server_fds_idle".into(), json!(idle_fds));
        if let Some(cpu) = procstat::usage_json(&cpu_before, &cpu_after).get("server_cpu_percent") {
            server.insert("server_cpu_percent".into(), cpu.clone());
        }
    }
    Ok(result)
}
