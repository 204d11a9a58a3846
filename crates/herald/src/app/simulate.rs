//! `herald simulate devices`: plausible trackers driving routes over the real device protocols,
//! for demos, manual testing and the device tests. Every frame comes from `herald_devices::sim`,
//! so what Herald receives is what a real GT06, H02, Teltonika, OsmAnd or JSON-lines device sends.
//!
//! The simulator only targets loopback addresses: it can open thousands of connections, and load
//! is only ever sent to this machine.

use anyhow::{bail, Context};
use herald_devices::sim::{self, Route};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimProtocol {
    Gt06,
    H02,
    Teltonika,
    Osmand,
    Jsonl,
}

impl SimProtocol {
    /// The port Herald (like Traccar) listens on for this protocol by default.
    pub fn default_port(self) -> u16 {
        match self {
            SimProtocol::Gt06 => 5023,
            SimProtocol::H02 => 5013,
            SimProtocol::Teltonika => 5027,
            SimProtocol::Osmand => 5055,
            SimProtocol::Jsonl => 5099,
        }
    }

    /// Whether the device waits for the server's acknowledgement of each report.
    fn acknowledged(self) -> bool {
        matches!(
            self,
            SimProtocol::Gt06 | SimProtocol::Teltonika | SimProtocol::Osmand
        )
    }
}

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub protocol: SimProtocol,
    pub target: SocketAddr,
    pub count: usize,
    pub interval: Duration,
    /// Stop after this long; `None` runs until cancelled.
    pub duration: Option<Duration>,
    pub seed: u64,
    /// Device ids are 15-digit numbers counting up from this one.
    pub first_id: u64,
}

/// What a simulation did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimulateReport {
    pub devices: u64,
    pub positions_sent: u64,
    pub acknowledged: u64,
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    devices: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

/// Runs `count` simulated devices until `duration` passes or `stop` is cancelled.
pub async fn run(
    options: SimulateOptions,
    stop: CancellationToken,
) -> anyhow::Result<SimulateReport> {
    if !options.target.ip().is_loopback() {
        bail!("--target must be a loopback address: the simulator only sends to this machine");
    }
    if options.interval.is_zero() {
        bail!("--interval must be greater than zero");
    }
    let counters = Arc::new(Counters::default());
    let stop = stop.child_token();
    if let Some(duration) = options.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.cancel();
        });
    }
    let mut tasks = Vec::with_capacity(options.count);
    for i in 0..options.count {
        let (options, counters, stop) = (options.clone(), counters.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Spread the devices over the interval, as real fleets are.
            let stagger = options
                .interval
                .mul_f64(i as f64 / options.count.max(1) as f64);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(stagger) => {}
            }
            if let Err(e) = device(i, &options, &counters, &stop).await {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device = i, error = %format!("{e:#}"), "simulated device stopped");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    Ok(SimulateReport {
        devices: counters.devices.load(Ordering::Relaxed),
        positions_sent: counters.sent.load(Ordering::Relaxed),
        acknowledged: counters.acked.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
    })
}

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

async fn read_reply(stream: &mut TcpStream, min: usize) -> anyhow::Result<Vec<u8>> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while reply.len() < min {
        let n = tokio::time::timeout(REPLY_TIMEOUT, stream.read(&mut buf))
            .await
            .context("no reply from the server")??;
        if n == 0 {
            bail!("the server closed the connection");
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(reply)
}

async fn device(
    i: usize,
    options: &SimulateOptions,
    counters: &Counters,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let id = format!("{:015}", options.first_id + i as u64);
    let now_ms = crate::core::clock::unix_millis();
    // Start points spread over a few kilometres so a map shows separate trails.
    let (lat, lon) = (
        52.52 + (i % 20) as f64 * 0.004,
        13.40 + (i / 20 % 20) as f64 * 0.006,
    );
    let mut route = Route::new(options.seed.wrapping_add(i as u64), lat, lon).starting_at(now_ms);
    let step_ms = options.interval.as_millis() as i64;
    let mut tick = tokio::time::interval(options.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let protocol = options.protocol;
    let mut stream = if protocol == SimProtocol::Osmand {
        None
    } else {
        let mut stream = TcpStream::connect(options.target)
            .await
            .context("connect")?;
        match protocol {
            SimProtocol::Gt06 => {
                stream.write_all(&sim::gt06_login(&id, 1)).await?;
                read_reply(&mut stream, 10)
                    .await
                    .context("GT06 login ACK")?;
            }
            SimProtocol::Teltonika => {
                stream.write_all(&sim::teltonika_imei(&id)).await?;
                let accept = read_reply(&mut stream, 1)
                    .await
                    .context("Teltonika IMEI accept")?;
                if accept.first() != Some(&1) {
                    bail!("the server refused IMEI {id}");
                }
            }
            _ => {}
        }
        Some(stream)
    };
    counters.devices.fetch_add(1, Ordering::Relaxed);
    let mut serial: u16 = 2;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let fix = route.next(step_ms);
        match (&mut stream, protocol) {
            (None, _) => {
                let query = sim::osmand_query(&id, &fix);
                let mut http = TcpStream::connect(options.target)
                    .await
                    .context("connect")?;
                let request = format!(
                    "GET {query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    options.target
                );
                http.write_all(request.as_bytes()).await?;
                let reply = read_reply(&mut http, 12).await.context("OsmAnd reply")?;
                if !reply.starts_with(b"HTTP/1.1 200") {
                    bail!(
                        "OsmAnd report refused: {}",
                        String::from_utf8_lossy(&reply).lines().next().unwrap_or("")
                    );
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            (Some(stream), protocol) => {
                let frame = match protocol {
                    SimProtocol::Gt06 => sim::gt06_location(&fix, serial),
                    SimProtocol::H02 => sim::h02_location(&id, &fix),
                    SimProtocol::Teltonika => sim::teltonika_codec8(&[fix]),
                    SimProtocol::Jsonl | SimProtocol::Osmand => {
                        sim::jsonl_line(&id, &fix).into_bytes()
                    }
                };
                serial = serial.wrapping_add(1);
                stream.write_all(&frame).await?;
                counters.sent.fetch_add(1, Ordering::Relaxed);
                if protocol.acknowledged() {
                    let need = if protocol == SimProtocol::Teltonika {
                        4
                    } else {
                        10
                    };
                    read_reply(stream, need).await.context("position ACK")?;
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
