mod common;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_devices::Position;
use herald_store::spool::{FsyncPolicy, Spool, SpoolConfig, SpoolHandle};
use herald_store::sqlite::SqliteStore;
use herald_store::store::{Page, Store, StoreError, TrackCursor};
use herald_store::writer::{Writer, WriterConfig};

struct Flaky {
    inner: SqliteStore,
    fail_left: AtomicU32,
}

#[async_trait]
impl Store for Flaky {
    async fn insert_batch(&self, p: &[Position]) -> Result<u64, StoreError> {
        if self
            .fail_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Other("injected failure".into()));
        }
        self.inner.insert_batch(p).await
    }
    async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        self.inner.latest_positions().await
    }
    async fn track(
        &self,
        d: &str,
        f: i64,
        t: i64,
        l: u32,
        a: Option<TrackCursor>,
    ) -> Result<Page, StoreError> {
        self.inner.track(d, f, t, l, a).await
    }
}

fn cfg() -> WriterConfig {
    WriterConfig {
        batch_max: 50,
        batch_wait: Duration::from_millis(10),
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        ..WriterConfig::default()
    }
}

fn spool_cfg(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 64 << 20,
        segment_bytes: 8192,
        fsync: FsyncPolicy::EveryMillis(5),
    }
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 10 s");
}

async fn all_stored(store: &dyn Store) -> Vec<Position> {
    store
        .track("w", i64::MIN, i64::MAX, 100_000, None)
        .await
        .unwrap()
        .positions
}

#[tokio::test]
async fn failures_lose_nothing_and_commit_only_after_success() {
    let dir = tempfile::tempdir().unwrap();
    let inner = SqliteStore::open(dir.path().join("db.sqlite"))
        .await
        .unwrap();
    let store = Arc::new(Flaky {
        inner,
        fail_left: AtomicU32::new(3),
    });
    let spool = SpoolHandle::new(Spool::open(spool_cfg(&dir.path().join("spool"))).unwrap());
    let ps = common::many("w", 120);
    for c in ps.chunks(20) {
        spool.append(c).await.unwrap();
    }
    let writer = Writer::spawn(spool.clone(), store.clone(), cfg());
    // The spool empties at commit, just before the writer counts the batch: wait for both.
    wait_for(|| {
        let s = writer.stats();
        s.pending_records == 0 && s.positions_new == 120
    })
    .await;
    let s = writer.stats();
    assert_eq!(s.errors, 3);
    assert_eq!(s.consecutive_errors, 0);
    assert_eq!(s.positions_new, 120);
    assert_eq!(s.pending_bytes, 0);
    writer.shutdown().await;
    assert_eq!(all_stored(store.as_ref()).await, ps);
}

#[tokio::test]
async fn cursor_not_committed_while_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let inner = SqliteStore::open(dir.path().join("db.sqlite"))
        .await
        .unwrap();
    let store = Arc::new(Flaky {
        inner,
        fail_left: AtomicU32::new(u32::MAX),
    });
    let spool = SpoolHandle::new(Spool::open(spool_cfg(&dir.path().join("spool"))).unwrap());
    spool.append(&common::many("w", 10)).await.unwrap();
    let writer = Writer::spawn(spool.clone(), store.clone(), cfg());
    wait_for(|| writer.stats().errors >= 3).await;
    assert_eq!(spool.stats().committed, 0);
    assert_eq!(writer.stats().pending_records, 10);
    // Outage: the spool keeps growing on disk.
    spool.append(&common::many("w", 20)).await.unwrap();
    assert_eq!(writer.stats().pending_records, 30);
    writer.shutdown().await;
}

#[tokio::test]
async fn crash_mid_way_then_resume_stores_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let ps = common::many("w", 2000);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let spool = SpoolHandle::new(Spool::open(spool_cfg(&dir.path().join("spool"))).unwrap());
    for c in ps.chunks(100) {
        spool.append(c).await.unwrap();
    }
    let writer = Writer::spawn(spool.clone(), store.clone(), cfg());
    wait_for(|| writer.stats().batches_written >= 3).await;
    writer.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(spool);
    // Simulate a crash between insert and commit: re-insert what was committed plus more.
    store.insert_batch(&ps[..500]).await.unwrap();
    let spool = SpoolHandle::new(Spool::open(spool_cfg(&dir.path().join("spool"))).unwrap());
    assert!(spool.stats().pending_records < 2000);
    let writer = Writer::spawn(spool.clone(), store.clone(), cfg());
    wait_for(|| writer.stats().pending_records == 0).await;
    writer.shutdown().await;
    assert_eq!(all_stored(store.as_ref()).await, ps);
}
