//! Samples the server while the soak runs: RSS, open descriptors (summed over the server
//! processes) and the kernel's TCP buffer memory (system-wide, both ends of loopback), keeping
//! the peaks and a once-a-second timeline.

use crate::procstat;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone, Copy, Default)]
struct Point {
    rss_kib: u64,
    fds: u64,
    tcp_pages: u64,
}

fn sample(pids: &[u32]) -> Point {
    let mut p = Point::default();
    for pid in pids {
        p.rss_kib += procstat::status_kib(*pid, "VmRSS").unwrap_or(0);
        p.fds += procstat::open_fds(*pid).unwrap_or(0);
    }
    p.tcp_pages = procstat::kernel().map(|k| k.tcp_pages).unwrap_or(0);
    p
}

pub struct Watcher {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Value>,
}

impl Watcher {
    /// Starts sampling every `every`; `before` is taken now (the baseline).
    pub fn start(pids: Vec<u32>, every: Duration) -> Watcher {
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let before = sample(&pids);
            let mut peak = before;
            let mut last = before;
            let mut timeline = Vec::new();
            let mut next_point = Duration::ZERO;
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    _ = tick.tick() => {}
                }
                // /proc reads are quick but blocking; a few thousand descriptors take a millisecond.
                let pids2 = pids.clone();
                last = tokio::task::spawn_blocking(move || sample(&pids2))
                    .await
                    .unwrap_or(last);
                peak.rss_kib = peak.rss_kib.max(last.rss_kib);
                peak.fds = peak.fds.max(last.fds);
                peak.tcp_pages = peak.tcp_pages.max(last.tcp_pages);
                let at = started.elapsed();
                if at >= next_point {
                    timeline.push(json!([
                        (at.as_secs_f64() * 10.0).round() / 10.0,
                        mib(last.rss_kib),
                        last.fds,
                        mib(last.tcp_pages * 4)
                    ]));
                    next_point += Duration::from_secs(1);
                }
            }
            let hwm_kib: u64 = pids
                .iter()
                .filter_map(|pid| procstat::status_kib(*pid, "VmHWM"))
                .sum();
            json!({
                "server_rss_before_mib": mib(before.rss_kib),
                "server_rss_peak_mib": mib(peak.rss_kib),
                "server_rss_end_mib": mib(last.rss_kib),
                "server_rss_hwm_mib": mib(hwm_kib),
                "server_fds_before": before.fds,
                "server_fds_peak": peak.fds,
                "server_fds_end": last.fds,
                "kernel_tcp_mem_before_mib": mib(before.tcp_pages * 4),
                "kernel_tcp_mem_peak_mib": mib(peak.tcp_pages * 4),
                "kernel_tcp_mem_end_mib": mib(last.tcp_pages * 4),
                "timeline_columns": ["seconds", "rss_mib", "fds", "kernel_tcp_mib"],
                "timeline": timeline,
            })
        });
        Watcher { stop, task }
    }

    pub async fn finish(self) -> Value {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_else(|_| json!({}))
    }
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}
