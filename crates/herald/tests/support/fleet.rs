//! Simulated trackers for load and crash tests. Each device connects over TCP, logs in, then
//! sends positions and waits for each acknowledgement, as real devices do, and remembers exactly
//! which positions the server acknowledged and which were sent without an acknowledgement.

use herald_devices::sim::{self, Fix, Route};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A device protocol that acknowledges positions.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// One 0x12 location per frame, acknowledged by a `78 78 05 12 <serial>` reply.
    Gt06,
    /// Codec 8 packets of `records` positions, acknowledged by the record count.
    Teltonika { records: usize },
}

/// What one device saw.
#[derive(Debug, Default)]
pub struct Report {
    pub device: String,
    /// Fix times (as stored, unix ms) of the positions the server acknowledged.
    pub acked: Vec<i64>,
    /// Fix times of positions sent whose acknowledgement never came.
    pub unacked: Vec<i64>,
    /// Why the device stopped early.
    pub error: Option<String>,
}

pub struct Fleet {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<Report>>,
}

/// How a fleet behaves.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub kind: Kind,
    /// Devices, with ids `first_id ..`.
    pub count: u64,
    pub first_id: u64,
    /// Pause after each acknowledgement.
    pub interval: Duration,
    /// How long a device waits for an acknowledgement before it gives up.
    pub ack_timeout: Duration,
}

impl Fleet {
    pub fn start(addr: SocketAddr, plan: Plan) -> Fleet {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let tasks = (0..plan.count)
            .map(|i| {
                let id = (plan.first_id + i).to_string();
                tokio::spawn(run(addr, plan, id, i, stop.clone(), acked.clone()))
            })
            .collect();
        Fleet { stop, acked, tasks }
    }

    /// Positions acknowledged so far, all devices together.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` positions were acknowledged.
    pub async fn wait_acked(&self, n: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.acked() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} positions acknowledged within {within:?}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tells every device to stop after its acknowledgement in flight; returns their reports.
    pub async fn stop(self) -> Vec<Report> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.expect("device task"));
        }
        out
    }
}

async fn run(
    addr: SocketAddr,
    plan: Plan,
    id: String,
    index: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Report {
    let mut report = Report {
        device: id.clone(),
        ..Report::default()
    };
    if let Err(e) = drive(addr, plan, &id, index, &stop, &acked, &mut report).await {
        report.error = Some(e);
    }
    report
}

async fn drive(
    addr: SocketAddr,
    plan: Plan,
    id: &str,
    index: u64,
    stop: &AtomicBool,
    acked: &AtomicU64,
    report: &mut Report,
) -> Result<(), String> {
    let wait = plan.ack_timeout;
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    match plan.kind {
        Kind::Gt06 => {
            send(&mut s, &sim::gt06_login(id, 1), wait).await?;
            read(&mut s, 10, wait).await?;
        }
        Kind::Teltonika { .. } => {
            send(&mut s, &sim::teltonika_imei(id), wait).await?;
            if read(&mut s, 1, wait).await? != [1] {
                return Err("IMEI refused".into());
            }
        }
    }
    // Spread the devices over the interval so they do not send in lockstep.
    let offset = plan.interval.mul_f64((index % 97) as f64 / 97.0);
    tokio::time::sleep(offset).await;
    let mut route = Route::new(index + 1, 52.52, 13.40);
    let mut serial: u16 = 2;
    while !stop.load(Ordering::SeqCst) {
        let n = match plan.kind {
            Kind::Gt06 => 1,
            Kind::Teltonika { records } => records,
        };
        let fixes: Vec<Fix> = (0..n).map(|_| route.next(1000)).collect();
        // GT06 carries whole seconds.
        let times: Vec<i64> = fixes.iter().map(|f| f.time_ms / 1000 * 1000).collect();
        let (frame, ack_len) = match plan.kind {
            Kind::Gt06 => (sim::gt06_location(&fixes[0], serial), 10),
            Kind::Teltonika { .. } => (sim::teltonika_codec8(&fixes), 4),
        };
        if let Err(e) = send(&mut s, &frame, wait).await {
            report.unacked.extend(&times);
            return Err(e);
        }
        let ack = match read(&mut s, ack_len, wait).await {
            Ok(a) => a,
            Err(e) => {
                report.unacked.extend(&times);
                return Err(e);
            }
        };
        let expected = match plan.kind {
            Kind::Gt06 => ack[..4] == [0x78, 0x78, 0x05, 0x12] && ack[4..6] == serial.to_be_bytes(),
            Kind::Teltonika { .. } => ack == (n as u32).to_be_bytes(),
        };
        if !expected {
            report.unacked.extend(&times);
            return Err(format!("unexpected acknowledgement {ack:02x?}"));
        }
        report.acked.extend(&times);
        acked.fetch_add(n as u64, Ordering::Relaxed);
        serial = serial.wrapping_add(1);
        tokio::time::sleep(plan.interval).await;
    }
    Ok(())
}

async fn send(s: &mut TcpStream, bytes: &[u8], wait: Duration) -> Result<(), String> {
    match tokio::time::timeout(wait, s.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write: {e}")),
        Err(_) => Err("write timed out".into()),
    }
}

async fn read(s: &mut TcpStream, n: usize, wait: Duration) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Ok(buf),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no acknowledgement in time".into()),
    }
}

/// Per device, how often each fix time is stored, from `device_track`-style rows
/// (`{"device", "time"}`) or any other source of `(device, time)` pairs.
pub fn count_stored(rows: impl IntoIterator<Item = (String, i64)>) -> BTreeMap<(String, i64), u32> {
    let mut out = BTreeMap::new();
    for key in rows {
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// Asserts every acknowledged position is stored exactly once, nothing is stored twice, and
/// nothing is stored that was never sent. Returns (acknowledged, stored) counts.
pub fn assert_exactly_once(
    reports: &[Report],
    stored: &BTreeMap<(String, i64), u32>,
) -> (usize, usize) {
    let mut acked = 0;
    let mut sent = std::collections::BTreeSet::new();
    for r in reports {
        for t in &r.acked {
            acked += 1;
            let n = stored.get(&(r.device.clone(), *t)).copied().unwrap_or(0);
            assert_eq!(
                n, 1,
                "acknowledged position {} @ {t} stored {n} times",
                r.device
            );
            sent.insert((r.device.clone(), *t));
        }
        for t in &r.unacked {
            sent.insert((r.device.clone(), *t));
        }
    }
    for (key, n) in stored {
        assert_eq!(*n, 1, "{key:?} stored {n} times");
        assert!(sent.contains(key), "{key:?} stored but never sent");
    }
    (acked, stored.len())
}
