//! Scenario 5: live map. `--devices` simulated GT06 trackers (frames from `herald_devices::sim`)
//! each send a position every `--interval` and wait for its acknowledgement; `--viewers` WebSocket
//! clients follow the fleet channel (conflated per device, delivered once per window by the
//! server's namespace). Reports positions/s acknowledged (decoded and spooled), persisted (the
//! server's `devices` API: rows the writer inserted) and delivered to viewers.

use crate::broadcast::merge;
use crate::common::Common;
use crate::net::{connect_from, require_loopback, source_ip};
use crate::procstat;
use crate::publish::Publisher;
use crate::ramp::{self, RampArgs};
use crate::stats::{latency_json, Stamp, Stats};
use crate::wsclient::{Spec, Target, Wire};
use anyhow::{bail, Context};
use herald_devices::sim::{self, Route};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Clone, Debug)]
pub struct LiveMapArgs {
    #[command(flatten)]
    pub common: Common,
    /// The server's GT06 listener.
    #[arg(long, default_value = "127.0.0.1:5023")]
    pub gt06: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Each device reports once per interval (real trackers: 1 s or slower; a shorter interval
    /// stands in for more devices when file descriptors are the limit).
    #[arg(long, default_value = "1s")]
    pub interval: humantime::Duration,
    #[arg(long, default_value_t = 10)]
    pub viewers: usize,
    #[arg(long, default_value = "devices:fleet")]
    pub fleet_channel: String,
    /// IMEIs count up from here (use a fresh range per run so the server sees new devices).
    #[arg(long, default_value_t = 860_000_000_000_000)]
    pub first_imei: u64,
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Longest wait after the run for the writer to persist what was acknowledged.
    #[arg(long, default_value = "30s")]
    pub persist_wait: humantime::Duration,
}

#[derive(Default)]
struct DeviceCounters {
    logged_in: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads one GT06 acknowledgement (`78 78 05 <type> <serial 2> <crc 2> 0d 0a`).
async fn read_ack(stream: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    let mut ack = [0u8; 10];
    stream.read_exact(&mut ack).await?;
    if ack[..2] != [0x78, 0x78] || ack[8..] != [0x0d, 0x0a] {
        bail!("not a GT06 acknowledgement: {ack:02x?}");
    }
    Ok(())
}

async fn device(
    i: usize,
    args: Arc<LiveMapArgs>,
    counters: Arc<DeviceCounters>,
    login_permit: tokio::sync::OwnedSemaphorePermit,
    start_reporting: tokio::time::Instant,
    end: tokio::time::Instant,
) -> anyhow::Result<()> {
    let imei = format!("{:015}", args.first_imei + i as u64);
    let mut stream = connect_from(args.gt06, source_ip(i)).await?;
    stream.write_all(&sim::gt06_login(&imei, 1)).await?;
    read_ack(&mut stream).await.context("login")?;
    counters.logged_in.fetch_add(1, Ordering::Relaxed);
    drop(login_permit);
    let interval: Duration = args.interval.into();
    let mut route = Route::new(i as u64, 52.52, 13.405).starting_at(now_ms());
    // Devices report at different phases, as a real fleet does.
    let phase = interval.mul_f64((i % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(start_reporting + phase, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serial: u16 = 2;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(end) => return Ok(()),
        }
        if tokio::time::Instant::now() >= end {
            return Ok(());
        }
        let mut fix = route.next(interval.as_millis() as i64);
        // The wall clock, so viewers can tell how old a delivered position is.
        fix.time_ms = now_ms();
        stream.write_all(&sim::gt06_location(&fix, serial)).await?;
        counters.sent.fetch_add(1, Ordering::Relaxed);
        read_ack(&mut stream).await?;
        counters.acked.fetch_add(1, Ordering::Relaxed);
        serial = serial.wrapping_add(1).max(1);
    }
}

/// `positions_written` of the server's device writer. A fresh connection per call: the server
/// closes keep-alive connections that stay idle for the length of a run.
async fn positions_written(common: &Common) -> anyhow::Result<u64> {
    let mut api = Publisher::connect(Target::Herald, common.api_addr(), &common.api_key).await?;
    let body = api.request("/api/devices", "{}").await?;
    let v: Value = serde_json::from_str(&body)?;
    let stats = &v["result"]["stats"];
    let stats = if stats.is_null() { &v["stats"] } else { stats };
    stats["positions_written"]
        .as_u64()
        .context("the devices API reported no positions_written")
}

pub async fn run(args: LiveMapArgs) -> anyhow::Result<Value> {
    args.common.check()?;
    require_loopback(&args.gt06)?;
    let args = Arc::new(args);
    let stats = Arc::new(Stats::new()?);
    let viewer = Arc::new(Spec {
        target: Target::Herald,
        server: args.common.servers[0],
        token: args.common.token("viewer")?,
        channels: vec![args.fleet_channel.clone()],
        stamp: Stamp::Millis,
        talk: None,
        handshake_timeout: Duration::from_secs(30),
        lite: false,
        wire: Wire::Json,
        pusher: None,
    });
    let ramp_args = RampArgs {
        count: args.viewers,
        concurrency: args.common.ramp_concurrency,
        rate: 0,
        // Viewers use source addresses after the devices'.
        first: args.devices,
    };
    let viewers = ramp::open(&ramp_args, &stats, |_| viewer.clone()).await?;
    // The HTTP listener answers before device ingest has opened its store: wait for it (bounded).
    let ingest_deadline = Instant::now() + Duration::from_secs(30);
    let written_before = loop {
        match positions_written(&args.common).await {
            Ok(n) => break n,
            Err(e) if Instant::now() > ingest_deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    // Devices log in while the clock for reporting has not started; the run is bounded by `end`.
    let counters = Arc::new(DeviceCounters::default());
    let login_time = Duration::from_secs(5) + Duration::from_millis(args.devices as u64 / 2);
    let start_reporting = tokio::time::Instant::now() + login_time;
    let end = start_reporting + Duration::from(args.duration);
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.common.ramp_concurrency));
    let mut tasks = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let (args, counters, semaphore) = (args.clone(), counters.clone(), semaphore.clone());
        tasks.push(tokio::spawn(async move {
            // The permit bounds concurrent logins only (device() drops it after the login).
            let Ok(permit) = semaphore.acquire_owned().await else {
                return;
            };
            let result = device(i, args, counters.clone(), permit, start_reporting, end).await;
            if let Err(e) = result {
                if counters.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("device {i}: {e:#}");
                }
            }
        }));
    }
    tokio::time::sleep_until(start_reporting).await;
    eprintln!(
        "{} devices logged in, {} viewers",
        counters.logged_in.load(Ordering::Relaxed),
        viewers.connected
    );
    stats.take_latency()?;
    let delivered_before = stats.deliveries();
    let acked_before = counters.acked.load(Ordering::Relaxed);
    let before = procstat::sample_group(&args.common.server_pids);
    tokio::time::sleep_until(end).await;
    let after = procstat::sample_group(&args.common.server_pids);
    let seconds = Duration::from(args.duration).as_secs_f64();
    let acked = counters.acked.load(Ordering::Relaxed) - acked_before;
    // One more window for the last conflated frame.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let delivered = stats.deliveries() - delivered_before;
    let latency = stats.take_latency()?;
    for task in tasks {
        let _ = task.await;
    }
    let viewer_count = viewers.connected;
    viewers.close().await;
    let total_acked = counters.acked.load(Ordering::Relaxed);
    let persist_deadline = Instant::now() + Duration::from(args.persist_wait);
    let mut written = positions_written(&args.common).await? - written_before;
    while written < total_acked && Instant::now() < persist_deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        written = positions_written(&args.common).await? - written_before;
    }
    let persisted_seconds = (Instant::now() - end.into_std()).as_secs_f64() + seconds;
    let mut step = json!({
        "rate": args.devices as f64 / Duration::from(args.interval).as_secs_f64(),
        "seconds": seconds,
        "positions_acknowledged_per_second": acked as f64 / seconds,
        "deliveries": delivered,
        "deliveries_per_second": delivered as f64 / seconds,
        "delivered_per_viewer_per_second": delivered as f64 / seconds / viewer_count.max(1) as f64,
        "latency_ms": latency_json(&latency),
    });
    merge(&mut step, procstat::usage_json(&before, &after));
    Ok(json!({
        "scenario": "livemap",
        "target": "herald",
        "devices": args.devices,
        "devices_logged_in": counters.logged_in.load(Ordering::Relaxed),
        "device_errors": counters.errors.load(Ordering::Relaxed),
        "viewers": viewer_count,
        "positions_sent": counters.sent.load(Ordering::Relaxed),
        "positions_acknowledged": total_acked,
        "positions_persisted": written,
        "positions_persisted_per_second_incl_drain": written as f64 / persisted_seconds,
        "steps": [step],
    }))
}
