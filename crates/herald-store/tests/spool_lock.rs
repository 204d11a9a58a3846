//! A batch read must not hold the spool lock while it reads and decodes: appends (the device
//! side) wait for that lock. The wait is probed with `SpoolHandle::stats`, which takes the same
//! lock and does nothing else, while the writer's read of 5,000 records runs.

mod common;
use common::many;
use herald_store::spool::{FsyncPolicy, Spool, SpoolConfig, SpoolHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The writer's batch size (`WriterConfig::default().batch_max`).
const BATCH: usize = 5000;

struct Round {
    read: Duration,
    longest_wait: Duration,
}

/// `rounds` reads of `BATCH` records (never committed, so each reads the same records) while a
/// thread takes the lock in a loop; per round the read's duration and the longest lock wait.
async fn probe_reads(rounds: usize) -> Vec<Round> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        dir: dir.path().to_path_buf(),
        max_bytes: 256 << 20,
        segment_bytes: 16 << 20,
        fsync: FsyncPolicy::Never,
    };
    let spool = SpoolHandle::new(Spool::open(cfg).unwrap());
    let ps = many("359710049000001", BATCH as u32);
    for chunk in ps.chunks(100) {
        spool.append(chunk).await.unwrap();
    }
    let mut out = Vec::new();
    for _ in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let (running, probing) = std::sync::mpsc::channel();
        let prober = {
            let (spool, stop) = (spool.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut longest = Duration::ZERO;
                let _ = running.send(());
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    std::hint::black_box(spool.stats());
                    longest = longest.max(asked.elapsed());
                    std::thread::yield_now();
                }
                longest
            })
        };
        // The read starts only once the lock is being probed.
        probing.recv().unwrap();
        let started = Instant::now();
        let batch = spool.read_batch(BATCH).await.unwrap();
        let read = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(batch.len(), BATCH);
        out.push(Round {
            read,
            longest_wait: prober.join().unwrap(),
        });
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_does_not_hold_the_lock_while_reading() {
    let rounds = probe_reads(15).await;
    let read = median(rounds.iter().map(|r| r.read).collect());
    let wait = median(rounds.iter().map(|r| r.longest_wait).collect());
    // Holding the lock for the whole read makes the longest wait about as long as the read;
    // only brief holds per segment are allowed (a wide margin for a busy machine).
    assert!(
        wait * 4 < read,
        "longest lock wait {wait:?} (median of rounds) against a read of {read:?}"
    );
}

/// Numbers for the record: `cargo test --release -p herald-store --test spool_lock -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --release --nocapture"]
async fn measure_lock_wait_during_batch_reads() {
    let rounds = probe_reads(40).await;
    let mut reads: Vec<_> = rounds.iter().map(|r| r.read).collect();
    let mut waits: Vec<_> = rounds.iter().map(|r| r.longest_wait).collect();
    reads.sort();
    waits.sort();
    let pick = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "read_batch({BATCH}): median {:?} p90 {:?} | longest lock wait per read: median {:?} p90 {:?} max {:?}",
        pick(&reads, 0.5),
        pick(&reads, 0.9),
        pick(&waits, 0.5),
        pick(&waits, 0.9),
        pick(&waits, 1.0),
    );
}
