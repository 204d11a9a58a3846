//! The honest side of the soak: subscribers that read everything and answer heartbeats, each on one
//! channel, tracking every publication's sequence number (so a loss is a missing number, not a
//! shortfall in a total), and the publishers that number their publications per channel.

use crate::net::now_micros;
use crate::publish::Publisher;
use crate::stats::Stats;
use crate::wsclient::{open, Spec, Target, Wire};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_websockets::Message;

/// One subscriber's account of its channel.
pub struct Record {
    pub channel: usize,
    /// Distinct sequence numbers received.
    pub unique: u64,
    pub duplicates: u64,
    /// How the server ended the connection before the run did (`close 3008`, `eof`, ...).
    pub disconnect: Option<String>,
}

/// Connected subscribers, reading until [`Fleet::close`].
pub struct Fleet {
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Option<Record>>>,
}

impl Fleet {
    pub async fn close(self) -> Vec<Record> {
        let _ = self.stop.send(true);
        let mut records = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            if let Ok(Some(record)) = task.await {
                records.push(record);
            }
        }
        records
    }
}

/// Opens `count` subscribers, the i-th on `channels[i % channels.len()]`, from connection index
/// `first` on (which picks their source addresses), at most `concurrency` handshakes at once.
pub async fn open_fleet(
    server: SocketAddr,
    token: &str,
    channels: &[String],
    count: usize,
    first: usize,
    concurrency: usize,
    stats: &Arc<Stats>,
) -> Fleet {
    let started = Instant::now();
    let semaphore = Arc::new(Semaphore::new(concurrency.max(1)));
    let (stop, stop_rx) = watch::channel(false);
    let specs: Vec<Arc<Spec>> = channels
        .iter()
        .map(|channel| {
            Arc::new(Spec {
                target: Target::Herald,
                server,
                token: token.to_string(),
                channels: vec![channel.clone()],
                stamp: crate::stats::Stamp::Micros,
                talk: None,
                handshake_timeout: Duration::from_secs(30),
                lite: false,
                wire: Wire::Json,
                pusher: None,
            })
        })
        .collect();
    let mut ready = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let (tx, rx) = oneshot::channel();
        ready.push(rx);
        let (spec, stats, stop) = (
            specs[n % specs.len()].clone(),
            stats.clone(),
            stop_rx.clone(),
        );
        let channel = n % specs.len();
        tasks.push(tokio::spawn(async move {
            let opened = tokio::time::timeout(spec.handshake_timeout, open(first + n, &spec)).await;
            drop(permit);
            let ws = match opened {
                Ok(Ok(ws)) => ws,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                    return None;
                }
                Err(_) => {
                    let _ = tx.send(Err("handshake timed out".into()));
                    return None;
                }
            };
            let _ = tx.send(Ok(()));
            Some(read_all(first + n, channel, ws, &stats, stop).await)
        }));
    }
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    for rx in ready {
        match rx.await {
            Ok(Ok(())) => connected += 1,
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => failed += 1,
        }
    }
    Fleet {
        connected,
        failed,
        first_error,
        seconds: started.elapsed().as_secs_f64(),
        stop,
        tasks,
    }
}

async fn read_all(
    i: usize,
    channel: usize,
    mut ws: crate::wsclient::Ws,
    stats: &Stats,
    mut stop: watch::Receiver<bool>,
) -> Record {
    let mut seen = SeqSet::default();
    let mut ages = Vec::with_capacity(64);
    let mut duplicates = 0;
    let disconnect = loop {
        let message = tokio::select! {
            _ = stop.changed() => break None,
            message = ws.next() => message,
        };
        let message = match message {
            None => break Some("eof".to_string()),
            Some(Err(e)) => break Some(format!("error: {e}")),
            Some(Ok(m)) => m,
        };
        if let Some((code, _)) = message.as_close() {
            break Some(format!("close {}", u16::from(code)));
        }
        let payload: &[u8] = message.as_payload();
        if payload == b"{}" {
            if let Err(e) = ws.send(Message::text("{}")).await {
                break Some(format!("error answering a ping: {e}"));
            }
            continue;
        }
        ages.clear();
        let now = now_micros();
        let count = scan_numbered(payload, |seq, sent| {
            if !seen.insert(seq) {
                duplicates += 1;
            }
            ages.push(now.saturating_sub(sent));
        });
        stats.delivered(count);
        stats.record(i, &ages);
    };
    // A stopped subscriber leaves politely; one the server dropped has nothing to close.
    if disconnect.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
    }
    Record {
        channel,
        unique: seen.len,
        duplicates,
        disconnect,
    }
}

/// Sequence numbers seen, as a bitset (a 60 s run at 100/s per channel is 750 bytes).
#[derive(Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        // Numbers come from the bench's own publisher; a wild one must not allocate gigabytes.
        let word = (seq / 64).min(1 << 20) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.words[word] & bit != 0 {
            return false;
        }
        self.words[word] |= bit;
        self.len += 1;
        true
    }
}

/// Calls `f(seq, sent_micros)` for each numbered publication in a frame (`"s":<n>` followed by
/// `"t":<µs>` in its data) and returns how many there were.
pub fn scan_numbered(payload: &[u8], mut f: impl FnMut(u64, u64)) -> u64 {
    let mut count = 0;
    let mut rest = payload;
    while let Some(at) = memchr::memmem::find(rest, b"\"s\":") {
        let (seq, tail) = number_at(&rest[at + 4..]);
        rest = tail;
        let Some(t_at) = memchr::memmem::find(rest, b"\"t\":") else {
            break;
        };
        let (sent, tail) = number_at(&rest[t_at + 4..]);
        rest = tail;
        if let (Some(seq), Some(sent)) = (seq, sent) {
            count += 1;
            f(seq, sent);
        }
    }
    count
}

fn number_at(digits: &[u8]) -> (Option<u64>, &[u8]) {
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let value = std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|s| s.parse().ok());
    (value, &digits[end..])
}

/// Publication `seq` of a channel: the sequence number, the send time, padding up to ~`size` bytes.
pub fn numbered(seq: u64, size: usize) -> serde_json::Value {
    json!({"s": seq, "t": now_micros(), "p": "x".repeat(size.saturating_sub(40))})
}

/// Publishes `rate`/s round-robin over `channels` for `duration`, `batch` per API request;
/// publication k goes to channel k mod n with sequence number k div n. Returns how many were
/// accepted in all. Unlike the broadcast sweep, a publisher held up by a slow API does not catch
/// up in a burst afterwards (that burst, not the attack, would overflow honest outboxes): like a
/// synchronous backend, it just publishes less while it waits.
pub async fn publish(
    api: SocketAddr,
    api_key: String,
    channels: Vec<String>,
    rate: u64,
    batch: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<u64> {
    let mut publisher = Publisher::connect(Target::Herald, api, &api_key).await?;
    let n = channels.len().max(1) as u64;
    let batch = batch.max(1) as u64;
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(batch as f64 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + duration;
    let mut published = 0u64;
    let mut items = Vec::with_capacity(batch as usize);
    while Instant::now() < end {
        tick.tick().await;
        items.clear();
        for k in published..published + batch {
            items.push((channels[(k % n) as usize].clone(), numbered(k / n, size)));
        }
        publisher.send(&items).await?;
        published += batch;
    }
    Ok(published)
}

/// How many of `total` round-robin publications went to channel `c` of `n`.
pub fn published_on(total: u64, c: usize, n: usize) -> u64 {
    let (c, n) = (c as u64, n.max(1) as u64);
    total / n + u64::from(c < total % n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_numbered_publications_of_a_batched_frame() {
        let frame =
            br#"{"push":{"channel":"live:0","pub":{"data":{"p":"xx","s":7,"t":900},"offset":8}}}
{"push":{"channel":"live:0","pub":{"data":{"s":8,"t":950,"p":"x"}}}}"#;
        let mut got = Vec::new();
        assert_eq!(scan_numbered(frame, |s, t| got.push((s, t))), 2);
        assert_eq!(got, vec![(7, 900), (8, 950)]);
        assert_eq!(scan_numbered(b"{}", |_, _| ()), 0);
    }

    #[test]
    fn a_sequence_set_counts_distinct_numbers() {
        let mut set = SeqSet::default();
        assert!(set.insert(0));
        assert!(set.insert(200));
        assert!(!set.insert(200));
        assert_eq!(set.len, 2);
    }

    #[test]
    fn round_robin_shares_add_up() {
        let total = 1003;
        let sum: u64 = (0..5).map(|c| published_on(total, c, 5)).sum();
        assert_eq!(sum, total);
        assert_eq!(published_on(1003, 2, 5), 201);
        assert_eq!(published_on(1003, 3, 5), 200);
    }
}
