//! Opening a scenario's connections at a bounded concurrency and rate, and closing them.

use crate::stats::Stats;
use crate::wsclient::{subscriber, Spec};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

pub struct RampArgs {
    pub count: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// New connections per second (0: as fast as `concurrency` allows).
    pub rate: u64,
    /// Index of the first connection (a process of several uses its own range of source
    /// addresses and ids).
    pub first: usize,
}

/// Connected subscribers, running until [`Fleet::close`].
pub struct Fleet {
    pub connected: usize,
    pub seconds: f64,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Connections per second during the ramp.
    pub fn rate(&self) -> f64 {
        self.connected as f64 / self.seconds.max(1e-6)
    }

    pub async fn close(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Opens `args.count` subscribers (spec per connection index) and waits until each is ready or
/// has failed.
pub async fn open(
    args: &RampArgs,
    stats: &Arc<Stats>,
    spec_for: impl Fn(usize) -> Arc<Spec>,
) -> anyhow::Result<Fleet> {
    let started = Instant::now();
    let semaphore = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (stop, stop_rx) = watch::channel(false);
    let mut ready = Vec::with_capacity(args.count);
    let mut tasks = Vec::with_capacity(args.count);
    for n in 0..args.count {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = semaphore.clone().acquire_owned().await?;
        let i = args.first + n;
        let (tx, rx) = oneshot::channel();
        ready.push(rx);
        tasks.push(tokio::spawn(subscriber(
            i,
            spec_for(i),
            stats.clone(),
            permit,
            tx,
            stop_rx.clone(),
        )));
    }
    let mut connected = 0;
    for rx in ready {
        if rx.await.is_ok() {
            connected += 1;
        }
    }
    Ok(Fleet {
        connected,
        seconds: started.elapsed().as_secs_f64(),
        stop,
        tasks,
    })
}
