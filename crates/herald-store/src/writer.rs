//! The batch writer: moves positions from the spool into a [`Store`].
//!
//! Loop: read up to `batch_max` records from the committed cursor (waiting up to `batch_wait`
//! for a short batch to fill), insert them in one `insert_batch`, and only then commit the spool
//! cursor. On a store error the same batch is retried with exponential backoff; meanwhile new
//! positions keep accumulating in the spool on disk, while the writer holds at most one batch in
//! memory. A crash between insert and commit replays the batch, which the store ignores
//! (idempotency keys), so every position ends up stored exactly once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::spool::{SpoolHandle, SpoolSeq};
use crate::store::Store;

/// Writer settings.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most positions per insert.
    pub batch_max: usize,
    /// How long a short batch waits for more positions.
    pub batch_wait: Duration,
    /// First retry delay after a store error (doubles up to `retry_max`).
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            batch_max: 1000,
            batch_wait: Duration::from_millis(200),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// Live counters, shared with the metrics exporter.
#[derive(Debug, Default)]
pub struct WriterStats {
    batches_written: AtomicU64,
    positions_written: AtomicU64,
    positions_new: AtomicU64,
    errors: AtomicU64,
    consecutive_errors: AtomicU64,
}

/// A snapshot of the writer's and its spool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStatsSnapshot {
    /// Spool bytes not yet committed (the database backlog on disk).
    pub pending_bytes: u64,
    /// Spool records not yet committed.
    pub pending_records: u64,
    /// Batches inserted and committed.
    pub batches_written: u64,
    /// Positions in those batches (replays included).
    pub positions_written: u64,
    /// Positions that were new to the store.
    pub positions_new: u64,
    /// Failed store or spool operations.
    pub errors: u64,
    /// Failures since the last success (0 when healthy).
    pub consecutive_errors: u64,
}

/// A running writer.
#[derive(Debug)]
pub struct Writer {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    stats: Arc<WriterStats>,
    spool: SpoolHandle,
}

impl Writer {
    /// Start the writer task.
    pub fn spawn(spool: SpoolHandle, store: Arc<dyn Store>, cfg: WriterConfig) -> Self {
        let stats = Arc::new(WriterStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(spool.clone(), store, cfg, stats.clone(), stop_rx));
        Writer {
            task,
            stop,
            stats,
            spool,
        }
    }

    /// Counters.
    pub fn stats(&self) -> WriterStatsSnapshot {
        let s = self.spool.stats();
        WriterStatsSnapshot {
            pending_bytes: s.pending_bytes,
            pending_records: s.pending_records,
            batches_written: self.stats.batches_written.load(Ordering::Relaxed),
            positions_written: self.stats.positions_written.load(Ordering::Relaxed),
            positions_new: self.stats.positions_new.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            consecutive_errors: self.stats.consecutive_errors.load(Ordering::Relaxed),
        }
    }

    /// Stop after the batch in flight and wait for the task. Pending records stay in the spool.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Abort at once, as a crash would (the batch in flight is replayed on restart).
    pub fn abort(self) {
        self.task.abort();
    }
}

async fn run(
    spool: SpoolHandle,
    store: Arc<dyn Store>,
    cfg: WriterConfig,
    stats: Arc<WriterStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = cfg.retry_initial;
    let batch_max = cfg.batch_max.max(1);
    loop {
        if *stop.borrow() {
            return;
        }
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            stats.consecutive_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "position writer: {what} failed; retrying");
        };
        if let Err(e) = spool.sync_if_due().await {
            fail("spool sync", &e);
        }
        let mut batch = match spool.read_batch(batch_max).await {
            Ok(b) => b,
            Err(e) => {
                fail("spool read", &e);
                sleep_or_stop(backoff, &mut stop).await;
                backoff = (backoff * 2).min(cfg.retry_max);
                continue;
            }
        };
        if batch.len() < batch_max {
            // Wait for an append (or the time bound), then take what is there.
            tokio::select! {
                _ = spool.appended() => {
                    if !batch.is_empty() {
                        tokio::time::sleep(cfg.batch_wait).await;
                    }
                }
                _ = tokio::time::sleep(cfg.batch_wait) => {}
                _ = stop.changed() => {}
            }
            match spool.read_batch(batch_max).await {
                Ok(b) => batch = b,
                Err(e) => {
                    fail("spool read", &e);
                    continue;
                }
            }
            if batch.is_empty() {
                continue;
            }
        }
        let last: SpoolSeq = match batch.last() {
            Some((seq, _)) => *seq,
            None => continue,
        };
        let positions: Vec<_> = batch.into_iter().map(|(_, p)| p).collect();
        match store.insert_batch(&positions).await {
            Ok(new) => match spool.commit(last).await {
                Ok(()) => {
                    stats.batches_written.fetch_add(1, Ordering::Relaxed);
                    stats
                        .positions_written
                        .fetch_add(positions.len() as u64, Ordering::Relaxed);
                    stats.positions_new.fetch_add(new, Ordering::Relaxed);
                    stats.consecutive_errors.store(0, Ordering::Relaxed);
                    backoff = cfg.retry_initial;
                }
                Err(e) => fail("spool commit", &e),
            },
            Err(e) => {
                fail("store insert", &e);
                sleep_or_stop(backoff, &mut stop).await;
                backoff = (backoff * 2).min(cfg.retry_max);
            }
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
