//! The [`Store`] trait shared by the SQLite and PostgreSQL backends.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use herald_devices::Position;

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("stored row is invalid: {0}")]
    BadRow(String),
    #[error("invalid track cursor {0:?}")]
    BadCursor(String),
    #[error("store task failed: {0}")]
    Task(String),
    #[error("no answer from the database within {0:?}")]
    Timeout(std::time::Duration),
    /// A record that cannot be written at all (retrying it cannot succeed).
    #[error("record rejected: {0}")]
    Rejected(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Whether the database rejected the data itself, so that retrying the same records cannot
    /// succeed: a constraint or a value it refuses. Everything else (connection lost, timeout,
    /// busy, out of disk, a schema or permission problem) is transient: retrying after the cause
    /// is fixed succeeds, and quarantining the records would lose them for a fault of the
    /// database, not of the data.
    pub fn is_rejection(&self) -> bool {
        match self {
            StoreError::Rejected(_) => true,
            StoreError::Sqlite(e) => sqlite_rejects(e),
            StoreError::Postgres(e) => e.code().is_some_and(|c| postgres_rejects(c.code())),
            _ => false,
        }
    }
}

/// The server's own words for a database error (tokio-postgres' Display says only "db error").
fn postgres_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut m = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(c) = db.constraint() {
                m.push_str(&format!(" (constraint {c})"));
            }
            m
        }
        None => e.to_string(),
    }
}

fn sqlite_rejects(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig
        ),
        rusqlite::Error::ToSqlConversionFailure(_) => true,
        _ => false,
    }
}

/// SQLSTATE classes that depend on the row: 22 data exception (out of range, invalid text or
/// JSON, NUL in text), 23 integrity constraint violation; 54000 (an index row too large).
fn postgres_rejects(sqlstate: &str) -> bool {
    sqlstate.starts_with("22") || sqlstate.starts_with("23") || sqlstate == "54000"
}

/// Keyset cursor of a track page: the last row of the previous page. Renders as `time_ms:id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackCursor {
    pub time_ms: i64,
    pub id: i64,
}

impl fmt::Display for TrackCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.time_ms, self.id)
    }
}

impl FromStr for TrackCursor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::BadCursor(s.to_owned());
        let (t, i) = s.split_once(':').ok_or_else(bad)?;
        Ok(TrackCursor {
            time_ms: t.parse().map_err(|_| bad())?,
            id: i.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of a device's track, in (time, storage order).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub device_id: String,
    pub positions: Vec<Position>,
    /// Cursor for the next page; `None` on the last page.
    pub next: Option<TrackCursor>,
}

/// Durable position storage.
///
/// Semantics every backend keeps:
/// * `insert_batch` is atomic and idempotent: a position whose [`crate::IdempotencyKey`] is already
///   stored is ignored. Returns how many positions were new.
/// * The latest position of a device is the one with the greatest `time_ms` (on a tie, the first
///   stored). An out-of-order older position is stored but never replaces it.
/// * `track` returns positions with `from_ms <= time_ms <= to_ms`, ordered by time then storage
///   order, at most `limit` per page, after `after` if given.
#[async_trait]
pub trait Store: Send + Sync {
    async fn insert_batch(&self, positions: &[Position]) -> Result<u64, StoreError>;
    async fn latest_positions(&self) -> Result<Vec<Position>, StoreError>;
    async fn track(
        &self,
        device_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
        after: Option<TrackCursor>,
    ) -> Result<Page, StoreError>;
}

#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn insert_batch(&self, positions: &[Position]) -> Result<u64, StoreError> {
        (**self).insert_batch(positions).await
    }
    async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        (**self).latest_positions().await
    }
    async fn track(
        &self,
        device_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
        after: Option<TrackCursor>,
    ) -> Result<Page, StoreError> {
        (**self)
            .track(device_id, from_ms, to_ms, limit, after)
            .await
    }
}

/// Satellites as stored (a nullable integer) back to the position field; out of range is a bad row.
pub(crate) fn satellites_from_db(stored: Option<i64>) -> Result<Option<u32>, StoreError> {
    stored
        .map(|s| u32::try_from(s).map_err(|_| StoreError::BadRow(format!("satellites {s}"))))
        .transpose()
}

/// Attributes as stored (JSON text) back to the position field.
pub(crate) fn attributes_from_db(
    stored: &str,
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, StoreError> {
    serde_json::from_str(stored).map_err(|e| StoreError::BadRow(format!("attributes: {e}")))
}
