//! Durable storage of GPS positions: a local spool on disk feeding SQLite or PostgreSQL.
//!
//! # Durability contract
//!
//! A position is **accepted** when [`spool::Spool::append`] (or [`spool::SpoolHandle::append`])
//! returns `Ok`: its records are written to a spool segment and, per [`spool::FsyncPolicy`],
//! flushed — `Always`: survives power loss; `EveryMillis(n)`: survives a process crash, power
//! loss may lose the last `n` ms; `Never`: survives a process crash only. Only then should a
//! device be acknowledged. A full spool (`max_bytes`) returns [`spool::SpoolError::Full`]:
//! stop reading devices (TCP backpressure). After kill -9 a torn tail is truncated on open;
//! complete records are kept.
//!
//! The [`writer::Writer`] moves spooled positions into a [`store::Store`] in batches and
//! commits the spool cursor only after the insert succeeded, so delivery to the database is
//! at-least-once; the database deduplicates by [`IdempotencyKey`] (a hash of every field of the
//! report), making the stored result exactly-once. A database outage grows the spool on disk,
//! not memory. A record the database rejects (not a transient error) is moved to the
//! [`quarantine`] file with the reason, so it never blocks the records after it.
//!
//! # Schema
//!
//! Both backends keep `positions` (one row per distinct report, `idem_key` UNIQUE, index on
//! `(device_id, time_ms)`) and `latest_positions` (per device, the stored position with the
//! greatest `time_ms`; an older out-of-order position never replaces it). See [`sqlite`] and
//! [`postgres`] for the exact DDL.

#![forbid(unsafe_code)]

pub mod geojson;
pub mod idempotency;
pub mod postgres;
pub mod quarantine;
pub mod record;
pub mod spool;
pub mod sqlite;
pub mod store;
pub mod writer;

pub use idempotency::IdempotencyKey;
pub use postgres::PgStore;
pub use spool::{FsyncPolicy, Spool, SpoolConfig, SpoolError, SpoolHandle, SpoolSeq};
pub use sqlite::SqliteStore;
pub use store::{Page, Store, StoreError, TrackCursor};
pub use writer::{Writer, WriterConfig, WriterStatsSnapshot};
