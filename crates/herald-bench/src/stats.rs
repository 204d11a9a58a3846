//! Counters and latency histograms shared by a scenario's connections.
//!
//! Latency is recorded per received frame into one of several mutex-guarded HDR histograms
//! (chosen by connection index), so two cores recording millions of values a second rarely
//! contend, and the coordinator can take a step's histogram without stopping the connections.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const SHARDS: usize = 32;
/// Latencies are recorded in microseconds, up to a minute.
const MAX_MICROS: u64 = 60_000_000;

pub struct Stats {
    pub deliveries: AtomicU64,
    /// WebSocket messages that carried at least one delivery.
    pub frames: AtomicU64,
    pub errors: AtomicU64,
    pub connected: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Stats {
    pub fn new() -> anyhow::Result<Self> {
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            shards.push(Mutex::new(Histogram::new_with_bounds(1, MAX_MICROS, 3)?));
        }
        Ok(Stats {
            deliveries: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            shards,
        })
    }

    /// One received message carried `count` deliveries.
    pub fn delivered(&self, count: u64) {
        if count > 0 {
            self.deliveries.fetch_add(count, Ordering::Relaxed);
            self.frames.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed)
    }

    /// Records latencies (µs) of one frame under connection `i`'s shard.
    pub fn record(&self, i: usize, micros: &[u64]) {
        if micros.is_empty() {
            return;
        }
        if let Ok(mut h) = self.shards[i % SHARDS].lock() {
            for v in micros {
                let _ = h.record((*v).clamp(1, MAX_MICROS));
            }
        }
    }

    /// Takes everything recorded so far (and resets it): one step's latency distribution.
    pub fn take_latency(&self) -> anyhow::Result<Histogram<u64>> {
        let mut all = Histogram::new_with_bounds(1, MAX_MICROS, 3)?;
        for shard in &self.shards {
            if let Ok(mut h) = shard.lock() {
                all.add(&*h)?;
                h.reset();
            }
        }
        Ok(all)
    }
}

/// p50/p99/p99.9/max in milliseconds; nulls when nothing was recorded.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": null, "p99": null, "p999": null, "max": null});
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(0.50),
        "p99": ms(0.99),
        "p999": ms(0.999),
        "max": h.max() as f64 / 1000.0,
    })
}

/// Where a frame's timestamps are: `"t":<µs>` in the bench's own publications (end to end), or
/// the publication's `"time":<ms>` that Herald stamps when it publishes a device position (the
/// last `"time":` of the push: the position's own `time` is the fix time in whole seconds).
#[derive(Clone, Copy)]
pub enum Stamp {
    Micros,
    Millis,
}

/// Scans a frame (newline-separated pushes) for publications; returns how many it holds and
/// pushes each one's age in µs. Lines holding a reply (`"id":`) are not publications.
pub fn scan(payload: &[u8], stamp: Stamp, now: u64, ages: &mut Vec<u64>) -> u64 {
    let mut count = 0;
    for line in payload.split(|b| *b == b'\n') {
        match stamp {
            Stamp::Micros => {
                // One publication per key occurrence (a line may be a batched push). A Pusher
                // event carries its data as a string holding the JSON: the key is escaped there.
                let found = micros_keys(line, b"\"t\":", now, ages);
                count += if found > 0 {
                    found
                } else {
                    micros_keys(line, b"\\\"t\\\":", now, ages)
                };
            }
            Stamp::Millis => {
                // One position per push line; the publication's stamp is its last "time".
                if let Some(pos) = memchr::memmem::rfind(line, b"\"time\":") {
                    count += 1;
                    if let (Some(ms), _) = number_at(&line[pos + 7..]) {
                        ages.push(now.saturating_sub(ms.saturating_mul(1000)));
                    }
                }
            }
        }
    }
    count
}

/// Counts the occurrences of `key` in `line`, pushing the age of the number after each.
fn micros_keys(line: &[u8], key: &[u8], now: u64, ages: &mut Vec<u64>) -> u64 {
    let (mut count, mut rest) = (0, line);
    while let Some(pos) = memchr::memmem::find(rest, key) {
        count += 1;
        let (value, tail) = number_at(&rest[pos + key.len()..]);
        if let Some(sent) = value {
            ages.push(now.saturating_sub(sent));
        }
        rest = tail;
    }
    count
}

/// The decimal number at the start of `digits`, and what follows it.
fn number_at(digits: &[u8]) -> (Option<u64>, &[u8]) {
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    let value = std::str::from_utf8(&digits[..end])
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    (value, &digits[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_counts_each_publication_of_a_batched_frame() {
        let frame = b"{\"push\":{\"channel\":\"a\",\"pub\":{\"data\":{\"t\":900,\"p\":\"x\"}}}}\n{\"push\":{\"pub\":{\"data\":{\"t\":950}}}}";
        let mut ages = Vec::new();
        assert_eq!(scan(frame, Stamp::Micros, 1000, &mut ages), 2);
        assert_eq!(ages, vec![100, 50]);
    }

    #[test]
    fn scan_reads_the_stamp_of_a_pusher_event_whose_data_is_a_string() {
        let frame =
            br#"{"event":"client-bench","channel":"private-b","data":"{\"t\":900,\"p\":\"x\"}"}"#;
        let mut ages = Vec::new();
        assert_eq!(scan(frame, Stamp::Micros, 1000, &mut ages), 1);
        assert_eq!(ages, vec![100]);
        // Data sent on as an object, as some servers do.
        let frame = br#"{"event":"client-bench","channel":"private-b","data":{"t":960}}"#;
        ages.clear();
        assert_eq!(scan(frame, Stamp::Micros, 1000, &mut ages), 1);
        assert_eq!(ages, vec![40]);
    }

    #[test]
    fn scan_reads_millisecond_position_times() {
        let mut ages = Vec::new();
        let n = scan(
            b"{\"data\":{\"device\":\"1\",\"time\":2}}",
            Stamp::Millis,
            2500,
            &mut ages,
        );
        assert_eq!((n, ages), (1, vec![500]));
    }
}
