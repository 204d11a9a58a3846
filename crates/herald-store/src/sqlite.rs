//! SQLite backend (rusqlite, bundled SQLite). Blocking calls run on tokio's blocking pool.
//!
//! Schema (created by [`SqliteStore::open`]):
//!
//! ```sql
//! CREATE TABLE positions (
//!   id INTEGER PRIMARY KEY,            -- storage order
//!   idem_key BLOB NOT NULL UNIQUE,     -- crate::IdempotencyKey, 16 bytes
//!   device_id TEXT NOT NULL, time_ms INTEGER NOT NULL,
//!   latitude REAL, longitude REAL, speed_kmh REAL, course REAL,   -- NULL only for NaN
//!   altitude_m REAL, valid INTEGER NOT NULL, satellites INTEGER, accuracy_m REAL,
//!   attributes TEXT NOT NULL);         -- JSON object
//! CREATE INDEX positions_device_time ON positions (device_id, time_ms);
//! CREATE TABLE latest_positions (device_id TEXT PRIMARY KEY,
//!   position_id INTEGER NOT NULL, time_ms INTEGER NOT NULL);
//! ```
//!
//! SQLite cannot store NaN (it becomes NULL), so a NaN float reads back as NaN through NULL.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use herald_devices::Position;
use rusqlite::{params, Connection, Row};

use crate::idempotency::IdempotencyKey;
use crate::store::{Page, Store, StoreError, TrackCursor};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS positions (
  id INTEGER PRIMARY KEY,
  idem_key BLOB NOT NULL UNIQUE,
  device_id TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  latitude REAL, longitude REAL, speed_kmh REAL, course REAL,
  altitude_m REAL,
  valid INTEGER NOT NULL,
  satellites INTEGER,
  accuracy_m REAL,
  attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS positions_device_time ON positions (device_id, time_ms);
CREATE TABLE IF NOT EXISTS latest_positions (
  device_id TEXT PRIMARY KEY,
  position_id INTEGER NOT NULL,
  time_ms INTEGER NOT NULL
);
";

const COLS: &str = "p.id, p.device_id, p.time_ms, p.latitude, p.longitude, p.speed_kmh, p.course, \
                    p.altitude_m, p.valid, p.satellites, p.accuracy_m, p.attributes";

/// A SQLite position store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Open (or create) the database at `path` and create the schema.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Task("sqlite connection poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn nan_if_null(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

fn row_to_position(row: &Row<'_>) -> Result<(i64, Position), StoreError> {
    let mut p = Position::new(row.get::<_, String>(1)?);
    p.time_ms = row.get(2)?;
    p.latitude = nan_if_null(row.get(3)?);
    p.longitude = nan_if_null(row.get(4)?);
    p.speed_kmh = nan_if_null(row.get(5)?);
    p.course = nan_if_null(row.get(6)?);
    p.altitude_m = row.get(7)?;
    p.valid = row.get::<_, i64>(8)? != 0;
    p.satellites = crate::store::satellites_from_db(row.get(9)?)?;
    p.accuracy_m = row.get(10)?;
    let attrs: String = row.get(11)?;
    p.attributes = crate::store::attributes_from_db(&attrs)?;
    Ok((row.get(0)?, p))
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_batch(&self, positions: &[Position]) -> Result<u64, StoreError> {
        let mut rows = Vec::with_capacity(positions.len());
        for p in positions {
            let attrs = serde_json::to_string(&p.attributes)
                .map_err(|e| StoreError::Rejected(format!("attributes: {e}")))?;
            rows.push((IdempotencyKey::of(p), p.clone(), attrs));
        }
        self.with_conn(move |conn| {
            let tx = conn.transaction()?;
            let mut inserted = 0u64;
            {
                let mut ins = tx.prepare_cached(
                    // Not `OR IGNORE`: that would also skip rows failing a CHECK or NOT NULL
                    // silently; only a replay (same key) is to be ignored.
                    "INSERT INTO positions (idem_key, device_id, time_ms, latitude, \
                     longitude, speed_kmh, course, altitude_m, valid, satellites, accuracy_m, \
                     attributes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                     ON CONFLICT (idem_key) DO NOTHING",
                )?;
                let mut latest = tx.prepare_cached(
                    "INSERT INTO latest_positions (device_id, position_id, time_ms) \
                     VALUES (?1, ?2, ?3) ON CONFLICT (device_id) DO UPDATE SET \
                     position_id = excluded.position_id, time_ms = excluded.time_ms \
                     WHERE excluded.time_ms > latest_positions.time_ms",
                )?;
                for (key, p, attrs) in &rows {
                    let n = ins.execute(params![
                        &key.0[..],
                        p.device_id,
                        p.time_ms,
                        p.latitude,
                        p.longitude,
                        p.speed_kmh,
                        p.course,
                        p.altitude_m,
                        p.valid,
                        p.satellites,
                        p.accuracy_m,
                        attrs,
                    ])?;
                    if n == 1 {
                        inserted += 1;
                        let id = tx.last_insert_rowid();
                        latest.execute(params![p.device_id, id, p.time_ms])?;
                    }
                }
            }
            tx.commit()?;
            Ok(inserted)
        })
        .await
    }

    async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLS} FROM latest_positions l JOIN positions p ON p.id = l.position_id \
                 ORDER BY l.device_id"
            ))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(row_to_position(row)?.1);
            }
            Ok(out)
        })
        .await
    }

    async fn track(
        &self,
        device_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
        after: Option<TrackCursor>,
    ) -> Result<Page, StoreError> {
        let device_id = device_id.to_owned();
        self.with_conn(move |conn| {
            let (ct, cid) = after.map_or((i64::MIN, i64::MIN), |c| (c.time_ms, c.id));
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLS} FROM positions p WHERE p.device_id = ?1 AND p.time_ms >= ?2 \
                 AND p.time_ms <= ?3 AND (p.time_ms > ?4 OR (p.time_ms = ?4 AND p.id > ?5)) \
                 ORDER BY p.time_ms, p.id LIMIT ?6"
            ))?;
            let mut rows = stmt.query(params![
                device_id,
                from_ms,
                to_ms,
                ct,
                cid,
                i64::from(limit) + 1
            ])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(row_to_position(row)?);
            }
            Ok(page_from_rows(device_id, out, limit))
        })
        .await
    }
}

/// Build a page from up to `limit + 1` rows: the extra row only says there is a next page.
pub(crate) fn page_from_rows(
    device_id: String,
    mut rows: Vec<(i64, Position)>,
    limit: u32,
) -> Page {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|(id, p)| TrackCursor {
            time_ms: p.time_ms,
            id: *id,
        })
    } else {
        None
    };
    Page {
        device_id,
        positions: rows.into_iter().map(|(_, p)| p).collect(),
        next,
    }
}
