//! PostgreSQL backend (tokio-postgres). Batches go through binary `COPY` into a per-connection
//! temporary table, then one `INSERT ... SELECT ... ON CONFLICT (idem_key) DO NOTHING` that also
//! advances `latest_positions`.
//!
//! Schema (created by [`PgStore::connect`], under an advisory lock so nodes may race):
//!
//! ```sql
//! CREATE TABLE positions (
//!   id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- storage order
//!   idem_key BYTEA NOT NULL UNIQUE,                        -- crate::IdempotencyKey
//!   device_id TEXT NOT NULL, time_ms BIGINT NOT NULL,
//!   latitude FLOAT8 NOT NULL, longitude FLOAT8 NOT NULL,
//!   speed_kmh FLOAT8 NOT NULL, course FLOAT8 NOT NULL,
//!   altitude_m FLOAT8, valid BOOLEAN NOT NULL, satellites BIGINT, accuracy_m FLOAT8,
//!   attributes JSONB NOT NULL);
//! CREATE INDEX positions_device_time ON positions (device_id, time_ms, id);
//! CREATE TABLE latest_positions (device_id TEXT PRIMARY KEY,
//!   position_id BIGINT NOT NULL, time_ms BIGINT NOT NULL);
//! ```
//!
//! A closed connection is re-established on the next call. An operation holds the connection
//! taken out of its slot and puts it back only when it ends: a cancelled one (the writer's
//! timeout against a stalled database) drops the connection, so the next call starts afresh
//! instead of queueing behind a request that may never be answered.

use std::pin::pin;

use async_trait::async_trait;
use herald_devices::Position;
use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row};

use crate::idempotency::IdempotencyKey;
use crate::sqlite::page_from_rows;
use crate::store::{Page, Store, StoreError, TrackCursor};

const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(72617261);
CREATE TABLE IF NOT EXISTS positions (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  idem_key BYTEA NOT NULL UNIQUE,
  device_id TEXT NOT NULL,
  time_ms BIGINT NOT NULL,
  latitude DOUBLE PRECISION NOT NULL,
  longitude DOUBLE PRECISION NOT NULL,
  speed_kmh DOUBLE PRECISION NOT NULL,
  course DOUBLE PRECISION NOT NULL,
  altitude_m DOUBLE PRECISION,
  valid BOOLEAN NOT NULL,
  satellites BIGINT,
  accuracy_m DOUBLE PRECISION,
  attributes JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS positions_device_time ON positions (device_id, time_ms, id);
CREATE TABLE IF NOT EXISTS latest_positions (
  device_id TEXT PRIMARY KEY,
  position_id BIGINT NOT NULL,
  time_ms BIGINT NOT NULL
);
COMMIT;
";

const TEMP: &str = "CREATE TEMP TABLE IF NOT EXISTS herald_positions_in (
  ord BIGINT, idem_key BYTEA, device_id TEXT, time_ms BIGINT,
  latitude FLOAT8, longitude FLOAT8, speed_kmh FLOAT8, course FLOAT8, altitude_m FLOAT8,
  valid BOOLEAN, satellites BIGINT, accuracy_m FLOAT8, attributes TEXT
) ON COMMIT DELETE ROWS";

const COPY: &str = "COPY herald_positions_in (ord, idem_key, device_id, time_ms, latitude, \
    longitude, speed_kmh, course, altitude_m, valid, satellites, accuracy_m, attributes) \
    FROM STDIN BINARY";

const COPY_TYPES: [Type; 13] = [
    Type::INT8,
    Type::BYTEA,
    Type::TEXT,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::BOOL,
    Type::INT8,
    Type::FLOAT8,
    Type::TEXT,
];

const MERGE: &str = "
WITH ins AS (
  INSERT INTO positions (idem_key, device_id, time_ms, latitude, longitude, speed_kmh, course,
                         altitude_m, valid, satellites, accuracy_m, attributes)
  SELECT idem_key, device_id, time_ms, latitude, longitude, speed_kmh, course,
         altitude_m, valid, satellites, accuracy_m, attributes::jsonb
  FROM herald_positions_in ORDER BY ord
  ON CONFLICT (idem_key) DO NOTHING
  RETURNING id, device_id, time_ms
), up AS (
  INSERT INTO latest_positions (device_id, position_id, time_ms)
  SELECT DISTINCT ON (device_id) device_id, id, time_ms FROM ins
  ORDER BY device_id, time_ms DESC, id ASC
  ON CONFLICT (device_id) DO UPDATE
    SET position_id = EXCLUDED.position_id, time_ms = EXCLUDED.time_ms
    WHERE EXCLUDED.time_ms > latest_positions.time_ms
)
SELECT count(*) FROM ins";

const COLS: &str = "p.id, p.device_id, p.time_ms, p.latitude, p.longitude, p.speed_kmh, \
    p.course, p.altitude_m, p.valid, p.satellites, p.accuracy_m, p.attributes::text";

/// A PostgreSQL position store.
pub struct PgStore {
    conninfo: String,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

async fn open_client(conninfo: &str) -> Result<Client, StoreError> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection ended");
        }
    });
    client.batch_execute(SCHEMA).await?;
    client.batch_execute(TEMP).await?;
    Ok(client)
}

fn row_to_position(row: &Row) -> Result<(i64, Position), StoreError> {
    let mut p = Position::new(row.try_get::<_, String>(1)?);
    p.time_ms = row.try_get(2)?;
    p.latitude = row.try_get(3)?;
    p.longitude = row.try_get(4)?;
    p.speed_kmh = row.try_get(5)?;
    p.course = row.try_get(6)?;
    p.altitude_m = row.try_get(7)?;
    p.valid = row.try_get(8)?;
    p.satellites = crate::store::satellites_from_db(row.try_get(9)?)?;
    p.accuracy_m = row.try_get(10)?;
    let attrs: String = row.try_get(11)?;
    p.attributes = crate::store::attributes_from_db(&attrs)?;
    Ok((row.try_get(0)?, p))
}

impl PgStore {
    /// Connect (`host=... user=... dbname=...` or a `postgres://` URL) and create the schema.
    pub async fn connect(conninfo: &str) -> Result<Self, StoreError> {
        let client = open_client(conninfo).await?;
        Ok(PgStore {
            conninfo: conninfo.to_owned(),
            client: Mutex::new(Some(client)),
        })
    }

    /// The connection (opened if there is none or it closed), with its emptied slot.
    async fn checkout(&self) -> Result<(MutexGuard<'_, Option<Client>>, Client), StoreError> {
        let mut slot = self.client.lock().await;
        let client = match slot.take() {
            Some(c) if !c.is_closed() => c,
            _ => open_client(&self.conninfo).await?,
        };
        Ok((slot, client))
    }
}

fn checkin(mut slot: MutexGuard<'_, Option<Client>>, client: Client) {
    if !client.is_closed() {
        *slot = Some(client);
    }
}

#[async_trait]
impl Store for PgStore {
    async fn insert_batch(&self, positions: &[Position]) -> Result<u64, StoreError> {
        if positions.is_empty() {
            return Ok(0);
        }
        let (slot, mut client) = self.checkout().await?;
        let result = copy_and_merge(&mut client, positions).await;
        checkin(slot, client);
        result
    }

    async fn latest_positions(&self) -> Result<Vec<Position>, StoreError> {
        let (slot, client) = self.checkout().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLS} FROM latest_positions l JOIN positions p \
                     ON p.id = l.position_id ORDER BY l.device_id"
                ),
                &[],
            )
            .await;
        checkin(slot, client);
        rows?
            .iter()
            .map(|r| row_to_position(r).map(|(_, p)| p))
            .collect()
    }

    async fn track(
        &self,
        device_id: &str,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
        after: Option<TrackCursor>,
    ) -> Result<Page, StoreError> {
        let (ct, cid) = after.map_or((i64::MIN, i64::MIN), |c| (c.time_ms, c.id));
        let lim = i64::from(limit) + 1;
        let (slot, client) = self.checkout().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLS} FROM positions p WHERE p.device_id = $1 AND p.time_ms >= $2 \
                     AND p.time_ms <= $3 AND (p.time_ms, p.id) > ($4, $5) \
                     ORDER BY p.time_ms, p.id LIMIT $6"
                ),
                &[&device_id, &from_ms, &to_ms, &ct, &cid, &lim],
            )
            .await;
        checkin(slot, client);
        let rows = rows?
            .iter()
            .map(row_to_position)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page_from_rows(device_id.to_owned(), rows, limit))
    }
}

/// One batch: binary COPY into the temporary table, then the merge, in one transaction.
async fn copy_and_merge(client: &mut Client, positions: &[Position]) -> Result<u64, StoreError> {
    let tx = client.transaction().await?;
    let sink = tx.copy_in(COPY).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    for (ord, p) in positions.iter().enumerate() {
        let ord = ord as i64;
        let key = IdempotencyKey::of(p).0.to_vec();
        let attrs = serde_json::to_string(&p.attributes)
            .map_err(|e| StoreError::Rejected(format!("attributes: {e}")))?;
        let satellites = p.satellites.map(i64::from);
        let row: [&(dyn ToSql + Sync); 13] = [
            &ord,
            &key,
            &p.device_id,
            &p.time_ms,
            &p.latitude,
            &p.longitude,
            &p.speed_kmh,
            &p.course,
            &p.altitude_m,
            &p.valid,
            &satellites,
            &p.accuracy_m,
            &attrs,
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    let row = tx.query_one(MERGE, &[]).await?;
    let inserted: i64 = row.try_get(0)?;
    tx.commit().await?;
    Ok(inserted.max(0) as u64)
}
