//! What every hostile connection shares: the run's context, the pacing of a kind's connections,
//! and the loop that keeps one connection doing its thing until the server ends it or the run does.

use super::raw::{closed_by_peer, Observer, Outgoing, Speaks};
use super::tally::Tally;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often a held connection acts and looks at its TCP state.
pub const TICK: Duration = Duration::from_millis(100);
/// At the end, how long a connection is drained to find how the server ended it.
const DRAIN_WAIT: Duration = Duration::from_secs(3);
const DRAIN_MAX_BYTES: u64 = 256 << 20;

pub struct Ctx {
    pub ws: SocketAddr,
    pub api: SocketAddr,
    pub api_key: String,
    pub token: String,
    /// The busy honest channel (stalled subscribers follow it).
    pub busy_channel: String,
    /// A channel of the honest fleet (churning clients subscribe to it).
    pub honest_channel: String,
    /// Namespace with a big history (amplifiers read it, new-name clients probe it).
    pub big_channel: String,
    pub victims_channel: String,
    /// Device TCP listeners (GT06, H02, Teltonika, JSON lines) and OsmAnd, when devices are on.
    pub device_tcp: Vec<SocketAddr>,
    pub osmand: Option<SocketAddr>,
    /// Makes names unique to this run (channels, device ids).
    pub run_id: u64,
    /// Every hostile task stops by this instant.
    pub end: Instant,
    pub tally: Tally,
    next: AtomicUsize,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ws: SocketAddr,
        api: SocketAddr,
        api_key: String,
        token: String,
        channels: [String; 4],
        device_tcp: Vec<SocketAddr>,
        osmand: Option<SocketAddr>,
        end: Instant,
    ) -> Ctx {
        let [busy_channel, honest_channel, big_channel, victims_channel] = channels;
        Ctx {
            ws,
            api,
            api_key,
            token,
            busy_channel,
            honest_channel,
            big_channel,
            victims_channel,
            device_tcp,
            osmand,
            run_id: crate::net::now_micros() % 1_000_000_000,
            end,
            tally: Tally::default(),
            next: AtomicUsize::new(0),
        }
    }

    /// A fresh connection index (it picks the source address).
    pub fn index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The `connect` command with this run's token.
    pub fn connect_command(&self, id: u32) -> String {
        serde_json::json!({"id": id, "connect": {"token": self.token}}).to_string()
    }

    pub fn api_headers(&self, path: &str, length: usize) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-API-Key: {}\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n",
            self.api, self.api_key
        )
    }
}

/// Starts `count` connections of `kind`, spread evenly over `over` (none after the run's end),
/// each running `f(ctx, n)`; the returned task ends when all of them have.
pub fn spawn_kind<F, Fut>(
    ctx: &Arc<Ctx>,
    kind: &'static str,
    count: usize,
    over: Duration,
    f: F,
) -> JoinHandle<()>
where
    F: Fn(Arc<Ctx>, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    ctx.tally.declare(kind);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(count);
        for n in 0..count {
            let due = start + over.mul_f64(n as f64 / count.max(1) as f64);
            if due >= ctx.end {
                break;
            }
            tokio::time::sleep_until(due).await;
            tasks.push(tokio::spawn(f(ctx.clone(), n)));
        }
        for task in tasks {
            let _ = task.await;
        }
    })
}

/// What a held connection does on each tick.
pub struct Behaviour<M, R> {
    pub speaks: Speaks,
    /// Read what the server sends during the run (otherwise nothing is read until the end).
    pub reads: bool,
    /// Bytes to send on tick `n` (empty: nothing this time).
    pub more: M,
    /// Sees what was read during the run (reading clients only).
    pub on_read: R,
}

/// Holds `stream` until the server ends it (its FIN or reset seen in the TCP state, a failed
/// write, or the end of stream for a reading client) or the run ends; then drains it to learn how
/// it ended and records the outcome under `label` (prefixed by `variant` when given).
pub async fn hold<M, R>(
    ctx: &Ctx,
    kind: &'static str,
    variant: Option<&str>,
    mut stream: TcpStream,
    opened: Instant,
    mut behaviour: Behaviour<M, R>,
) where
    M: FnMut(u64) -> Vec<u8>,
    R: FnMut(&[u8]),
{
    let mut observer = Observer::new(behaviour.speaks);
    let mut out = Outgoing::new(256 * 1024);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; if behaviour.reads { 16 * 1024 } else { 0 }];
    let mut n = 0u64;
    let closed_at = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(ctx.end) => break None,
            _ = tick.tick() => {
                if closed_by_peer(&stream) && !behaviour.reads {
                    break Some(opened.elapsed());
                }
                let bytes = (behaviour.more)(n);
                n += 1;
                if !bytes.is_empty() && !out.push(&bytes) {
                    ctx.tally.count(kind, "sends_skipped_socket_full", 1);
                }
                if out.pump(&stream).is_err() {
                    break Some(opened.elapsed());
                }
            }
            readable = stream.readable(), if behaviour.reads => {
                if readable.is_err() {
                    break Some(opened.elapsed());
                }
                let read = stream.try_read(&mut buf);
                if let Ok(k) = read {
                    (behaviour.on_read)(&buf[..k]);
                }
                if !observer.read_result(read, &buf) {
                    break Some(opened.elapsed());
                }
            }
        }
    };
    observer
        .drain(&mut stream, DRAIN_WAIT, DRAIN_MAX_BYTES)
        .await;
    let ending = &observer.ending;
    let mut label = ending.label();
    if closed_at.is_none() && ending.closed() {
        // The server had ended it, but its close sat behind data this client never read.
        label.push_str(" (found at the end, behind unread data)");
    }
    if let Some(variant) = variant {
        label = format!("{variant}: {label}");
    }
    if !behaviour.reads {
        ctx.tally
            .count(kind, "bytes_left_unread_until_the_end", ending.drained);
    }
    let closed_after = closed_at.filter(|_| ending.closed() || ending.said.is_some());
    ctx.tally.ended(kind, &label, closed_after);
}

/// A behaviour that sends nothing and reads nothing.
pub fn silent(speaks: Speaks) -> Behaviour<impl FnMut(u64) -> Vec<u8>, impl FnMut(&[u8])> {
    Behaviour {
        speaks,
        reads: false,
        more: |_| Vec::new(),
        on_read: |_: &[u8]| {},
    }
}
