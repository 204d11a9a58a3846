//! Scenario 1: hold N idle connections (answering heartbeats); server memory per connection
//! (process RSS and kernel) and CPU at rest.
//!
//! One process may hold at most ~20,000 sockets here, so above `--per-process` connections the
//! scenario re-runs this binary as children (`--child`), each with its own range of connection
//! indexes (so its own share of source addresses). A child prints one `READY <json>` line when
//! its connections are open and holds them until its standard input closes, or until its own
//! time bound, whichever comes first.

use crate::broadcast::merge;
use crate::common::Common;
use crate::procstat;
use crate::ramp::{self, RampArgs};
use crate::stats::{Stamp, Stats};
use crate::wsclient::{Spec, Target, Wire};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Channel every connection subscribes to ("" : connect only).
    #[arg(long, default_value = "idle")]
    pub channel: String,
    /// Connections per load-generator process (each needs a file descriptor).
    #[arg(long, default_value_t = 19_000)]
    pub per_process: usize,
    /// How long to hold the connections after the ramp (CPU at rest is measured over this).
    #[arg(long, default_value = "20s")]
    pub hold: humantime::Duration,
    /// Internal: run as a child of a multi-process run, from this connection index.
    #[arg(long, hide = true)]
    pub child: bool,
    #[arg(long, hide = true, default_value_t = 0)]
    pub first: usize,
}

fn spec(args: &IdleArgs, server: std::net::SocketAddr) -> anyhow::Result<Arc<Spec>> {
    Ok(Arc::new(Spec {
        target: Target::Herald,
        server,
        token: args.common.token("idle")?,
        channels: if args.channel.is_empty() {
            vec![]
        } else {
            vec![args.channel.clone()]
        },
        stamp: Stamp::Micros,
        talk: None,
        handshake_timeout: Duration::from_secs(60),
        lite: true,
        wire: Wire::Json,
        pusher: None,
    }))
}

/// The connections of this process: open them, return the fleet.
async fn open_here(args: &IdleArgs, stats: &Arc<Stats>) -> anyhow::Result<ramp::Fleet> {
    let specs = args
        .common
        .servers
        .iter()
        .map(|s| spec(args, *s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ramp_args = RampArgs {
        count: args.connections,
        concurrency: args.common.ramp_concurrency,
        rate: args.common.connect_rate,
        first: args.first,
    };
    ramp::open(&ramp_args, stats, |i| specs[i % specs.len()].clone()).await
}

/// `--child`: open, announce, hold until stdin closes (bounded by twice the hold plus 15 minutes).
pub async fn child(args: IdleArgs) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::new()?);
    let fleet = open_here(&args, &stats).await?;
    println!(
        "READY {}",
        json!({"connected": fleet.connected, "seconds": fleet.seconds,
               "errors": stats.errors.load(Ordering::Relaxed)})
    );
    // The parent measures only when every child is ready, and children that ramp slowly can take
    // minutes more than the first: the bound must outlast the whole group's ramp, not this
    // child's (a 60 s margin let early children leave a 1M run before it was measured).
    let bound = Duration::from(args.hold) * 2 + Duration::from_secs(900);
    let mut stdin = tokio::io::stdin();
    let mut byte = [0u8; 1];
    let _ = tokio::time::timeout(bound, stdin.read(&mut byte)).await;
    let lost = stats.errors.load(Ordering::Relaxed);
    fleet.close().await;
    eprintln!("child from {}: closed (errors {lost})", args.first);
    Ok(())
}

pub async fn run(args: IdleArgs) -> anyhow::Result<Value> {
    args.common.check()?;
    let pids = &args.common.server_pids;
    let base = procstat::sample_group(pids);
    let kernel_base = procstat::kernel();
    let started = Instant::now();
    let processes = args.connections.div_ceil(args.per_process.max(1)).max(1);
    let stats = Arc::new(Stats::new()?);
    let mut children = Vec::new();
    let mut fleet = None;
    let (connected, errors) = if processes == 1 {
        let f = open_here(&args, &stats).await?;
        let counts = (f.connected, stats.errors.load(Ordering::Relaxed));
        fleet = Some(f);
        counts
    } else {
        let mut total = (0, 0);
        for p in 0..processes {
            let first = p * args.per_process;
            let count = args.per_process.min(args.connections - first);
            children.push(spawn_child(&args, first, count, processes)?);
        }
        for child in children.iter_mut() {
            let (c, e) = wait_ready(child).await?;
            total.0 += c;
            total.1 += e;
        }
        total
    };
    let ramp_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{connected}/{} connections in {ramp_seconds:.1}s",
        args.connections
    );
    // Let the server finish what the ramp queued before measuring rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rest_start = procstat::sample_group(pids);
    tokio::time::sleep(args.hold.into()).await;
    let rest_end = procstat::sample_group(pids);
    let kernel_end = procstat::kernel();
    // The load generator's own memory, for the record (this process and its children).
    let mut own = vec![std::process::id()];
    own.extend(children.iter().filter_map(|c| c.id()));
    let load_rss_mib = procstat::sample_group(&own).map(|g| g.rss_kib as f64 / 1024.0);
    let mut result = json!({
        "scenario": "idle",
        "target": "herald",
        "connections": connected,
        "requested": args.connections,
        "errors": errors,
        "load_processes": processes,
        "server_nodes": args.common.servers.len(),
        "ramp_seconds": ramp_seconds,
        "connections_per_second": connected as f64 / ramp_seconds.max(1e-6),
        "hold_seconds": Duration::from(args.hold).as_secs_f64(),
        "load_generator_rss_mib": load_rss_mib,
    });
    if let (Some(b), Some(e)) = (&base, &rest_end) {
        let per = (e.rss_kib as f64 - b.rss_kib as f64) / connected.max(1) as f64;
        merge(
            &mut result,
            json!({"server_rss_before_mib": b.rss_kib as f64 / 1024.0,
                   "server_process_kib_per_connection": per}),
        );
    }
    // "CPU at rest": the usage over the hold, with heartbeats and nothing else.
    merge(&mut result, procstat::usage_json(&rest_start, &rest_end));
    if let (Some(b), Some(e)) = (kernel_base, kernel_end) {
        let slab = e.slab_kib as f64 - b.slab_kib as f64;
        let tcp = (e.tcp_pages as f64 - b.tcp_pages as f64) * 4.0;
        merge(
            &mut result,
            json!({"kernel_kib_per_connection_both_ends": (slab + tcp) / connected.max(1) as f64,
                   "kernel_slab_delta_mib": slab / 1024.0,
                   "kernel_tcp_buffers_delta_mib": tcp / 1024.0,
                   "tcp_sockets_in_use": e.tcp_inuse}),
        );
    }
    if let Some(f) = fleet {
        f.close().await;
    }
    for mut child in children {
        // Closing stdin tells the child to close its connections and exit.
        drop(child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        let _ = child.start_kill();
    }
    Ok(result)
}

fn spawn_child(args: &IdleArgs, first: usize, count: usize, of: usize) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("locating herald-bench")?;
    let mut cmd = Command::new(exe);
    cmd.arg("idle")
        .arg("--child")
        .args(["--first", &first.to_string()])
        .args(["--connections", &count.to_string()])
        .args(["--channel", &args.channel])
        .args(["--hold", &args.hold.to_string()])
        .args(["--secret", &args.common.secret])
        .args([
            "--ramp-concurrency",
            &(args.common.ramp_concurrency / of).max(8).to_string(),
        ])
        .args([
            "--connect-rate",
            &args.common.connect_rate.div_ceil(of as u64).to_string(),
        ]);
    for s in &args.common.servers {
        cmd.args(["--server", &s.to_string()]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    Ok(cmd.spawn()?)
}

async fn wait_ready(child: &mut Child) -> anyhow::Result<(usize, u64)> {
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.strip_prefix("READY ") {
            let v: Value = serde_json::from_str(rest)?;
            let connected = v["connected"].as_u64().unwrap_or(0) as usize;
            return Ok((connected, v["errors"].as_u64().unwrap_or(0)));
        }
    }
    bail!("a load-generator child exited before its connections were open")
}
