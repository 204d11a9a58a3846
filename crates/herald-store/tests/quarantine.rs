//! Poison records: a record the database rejects is quarantined with its reason and the spool
//! goes on; transient errors (timeouts, lost connections) are retried and quarantine nothing.
//! PostgreSQL tests need the server described in `common/pg.rs`.
mod common;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::pg::TempDb;
use herald_devices::Position;
use herald_store::quarantine;
use herald_store::spool::{FsyncPolicy, Spool, SpoolConfig, SpoolHandle};
use herald_store::store::{Page, Store, StoreError, TrackCursor};
use herald_store::writer::{Writer, WriterConfig, WriterStatsSnapshot};
use herald_store::{PgStore, SqliteStore};

fn writer_cfg() -> WriterConfig {
    WriterConfig {
        batch_max: 64,
        batch_wait: Duration::from_millis(10),
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        insert_timeout: Duration::from_secs(10),
        quarantine_file: None,
    }
}

fn spool(dir: &std::path::Path) -> SpoolHandle {
    SpoolHandle::new(
        Spool::open(SpoolConfig {
            dir: dir.join("spool"),
            max_bytes: 64 << 20,
            segment_bytes: 16 << 10,
            fsync: FsyncPolicy::EveryMillis(5),
        })
        .unwrap(),
    )
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not reached in 15 s: {what}");
}

async fn stored(store: &dyn Store, device: &str) -> Vec<Position> {
    store
        .track(device, i64::MIN, i64::MAX, 100_000, None)
        .await
        .unwrap()
        .positions
}

/// Spools `all` in chunks, runs the writer until the spool is drained and `new` positions were
/// counted (the counters follow the cursor commit), returns its counters.
async fn drain(
    dir: &std::path::Path,
    store: Arc<dyn Store>,
    all: &[Position],
    new: u64,
) -> WriterStatsSnapshot {
    let spool = spool(dir);
    for chunk in all.chunks(37) {
        spool.append(chunk).await.unwrap();
    }
    let writer = Writer::spawn(spool.clone(), store, writer_cfg());
    wait_for("spool drained", || {
        let s = writer.stats();
        s.pending_records == 0 && s.positions_new == new
    })
    .await;
    let stats = writer.stats();
    writer.shutdown().await;
    stats
}

/// 300 good positions of device "q" with poison put at the first, a middle and the last place.
fn with_poison(poison: impl Fn(usize) -> Option<Position>) -> (Vec<Position>, Vec<Position>) {
    let good = common::many("q", 300);
    let mut all = Vec::new();
    let mut bad = Vec::new();
    for (i, p) in good.iter().enumerate() {
        if let Some(b) = poison(i) {
            all.push(b.clone());
            bad.push(b);
        }
        all.push(p.clone());
    }
    (all, bad)
}

fn assert_quarantined(dir: &std::path::Path, bad: &[Position], needle: &str) {
    let entries = quarantine::read(&dir.join("spool").join(quarantine::FILE_NAME)).unwrap();
    let got: Vec<&Position> = entries.iter().map(|e| &e.position).collect();
    assert_eq!(got, bad.iter().collect::<Vec<_>>(), "quarantined in order");
    for e in &entries {
        assert!(e.reason.contains(needle), "reason {:?}", e.reason);
        assert!(e.seq.0 > 0 && e.quarantined_at > 0);
    }
}

#[tokio::test]
async fn sqlite_rejected_records_are_quarantined_and_the_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let store = Arc::new(SqliteStore::open(&db).await.unwrap());
    // An operator's rule the data breaks: SQLite answers SQLITE_CONSTRAINT.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER lat_range BEFORE INSERT ON positions WHEN NEW.latitude > 90 \
             BEGIN SELECT RAISE(ABORT, 'latitude out of range'); END;",
        )
        .unwrap();
    let (all, bad) = with_poison(|i| {
        [0, 150, 299].contains(&i).then(|| {
            let mut p = common::pos("q", 5_000 + i as i64, i as u32);
            p.latitude = 91.0 + i as f64;
            p
        })
    });
    let stats = drain(dir.path(), store.clone(), &all, 300).await;
    assert_eq!(stats.quarantined, 3);
    assert_eq!(stats.positions_new, 300);
    assert_eq!(stored(store.as_ref(), "q").await, common::many("q", 300));
    assert_quarantined(dir.path(), &bad, "latitude out of range");
}

#[tokio::test]
async fn sqlite_check_constraint_is_not_silently_ignored() {
    // `INSERT OR IGNORE` would skip a CHECK violation without a word; the store must report it.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch(
            "CREATE TABLE positions (id INTEGER PRIMARY KEY, idem_key BLOB NOT NULL UNIQUE, \
             device_id TEXT NOT NULL, time_ms INTEGER NOT NULL, latitude REAL CHECK (latitude <= 90), \
             longitude REAL, speed_kmh REAL, course REAL, altitude_m REAL, valid INTEGER NOT NULL, \
             satellites INTEGER, accuracy_m REAL, attributes TEXT NOT NULL);",
        )
        .unwrap();
    let store = SqliteStore::open(&db).await.unwrap();
    let mut p = common::pos("c", 1, 1);
    p.latitude = 95.0;
    let e = store.insert_batch(&[p]).await.unwrap_err();
    assert!(e.is_rejection(), "{e}");
    assert_eq!(store.insert_batch(&common::many("c", 3)).await.unwrap(), 3);
}

#[tokio::test]
async fn postgres_rejected_records_are_quarantined_and_the_rest_stored() {
    let db = TempDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(PgStore::connect(&db.conninfo()).await.unwrap());
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE positions ADD CONSTRAINT lat_range CHECK (latitude BETWEEN -90 AND 90)",
        )
        .await
        .unwrap();
    // Three ways PostgreSQL refuses a record that SQLite takes: a CHECK (23514), a NUL in a text
    // column (22021) and a NUL escape in JSONB (22P05). The last two can come from a device.
    let (all, bad) = with_poison(|i| {
        let mut p = common::pos("q", 5_000 + i as i64, i as u32);
        match i {
            0 => p.latitude = 123.0,
            150 => p.device_id = "q\0".into(),
            299 => {
                p.attributes
                    .insert("note".into(), serde_json::json!("a\u{0}b"));
            }
            _ => return None,
        }
        Some(p)
    });
    let stats = drain(dir.path(), store.clone(), &all, 300).await;
    assert_eq!(stats.quarantined, 3);
    assert_eq!(stats.positions_new, 300);
    assert_eq!(stored(store.as_ref(), "q").await, common::many("q", 300));
    assert_quarantined(dir.path(), &bad, "postgres");
    let entries = quarantine::read(&dir.path().join("spool").join(quarantine::FILE_NAME)).unwrap();
    assert!(entries[0].reason.contains("lat_range"), "{:?}", entries[0]);
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_errors_are_classified() {
    let db = TempDb::new().await;
    let store = PgStore::connect(&db.conninfo()).await.unwrap();
    let mut p = common::pos("c", 1, 1);
    p.device_id = "c\0".into();
    let e = store.insert_batch(&[p]).await.unwrap_err();
    assert!(e.is_rejection(), "{e}");
    // The connection survives a rejected batch.
    assert_eq!(store.insert_batch(&common::many("c", 2)).await.unwrap(), 2);
    drop(store);
    db.drop_db().await;
    // Nothing listens on port 1: a connection error is transient.
    let e = PgStore::connect("host=127.0.0.1 port=1 user=postgres connect_timeout=2")
        .await
        .unwrap_err();
    assert!(!e.is_rejection(), "{e}");
    assert!(!StoreError::Timeout(Duration::from_secs(1)).is_rejection());
    assert!(StoreError::Rejected("x".into()).is_rejection());
}

/// A store that does not answer while `stalled` is set, like a database behind a dead link.
struct Stalling {
    inner: SqliteStore,
    stalled: AtomicBool,
}

#[async_trait]
impl Store for Stalling {
    async fn insert_batch(&self, p: &[Position]) -> Result<u64, StoreError> {
        if self.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
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

#[tokio::test]
async fn a_stalled_store_times_out_and_is_retried_not_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Stalling {
        inner: SqliteStore::open(dir.path().join("db.sqlite"))
            .await
            .unwrap(),
        stalled: AtomicBool::new(true),
    });
    let spool = spool(dir.path());
    spool.append(&common::many("s", 100)).await.unwrap();
    let cfg = WriterConfig {
        insert_timeout: Duration::from_millis(50),
        ..writer_cfg()
    };
    let writer = Writer::spawn(spool.clone(), store.clone(), cfg);
    wait_for("timeouts counted", || writer.stats().errors >= 3).await;
    assert_eq!(writer.stats().pending_records, 100);
    store.stalled.store(false, Ordering::SeqCst);
    wait_for("drained", || writer.stats().pending_records == 0).await;
    let stats = writer.stats();
    assert_eq!(stats.quarantined, 0);
    assert_eq!(stats.consecutive_errors, 0);
    writer.shutdown().await;
    assert_eq!(stored(store.as_ref(), "s").await, common::many("s", 100));
    assert!(!dir
        .path()
        .join("spool")
        .join(quarantine::FILE_NAME)
        .exists());
}
