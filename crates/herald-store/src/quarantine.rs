//! The quarantine (dead-letter) file: positions the database rejected, so that one bad record
//! never blocks the spool.
//!
//! Append-only JSON lines, one per rejected record, fsynced before the spool cursor moves past
//! the record:
//!
//! ```json
//! {"seq":17,"quarantined_at":1700000000123,"reason":"postgres: db error: ...",
//!  "device":"356307042441013","time":1700000000000,"record":"01 0f00 ..."}
//! ```
//!
//! `record` is the spool record payload in hex ([`crate::record`]), which keeps every field
//! exactly (JSON cannot carry NaN); [`read`] decodes it back. A crash between the append and the
//! cursor commit repeats the entry on restart: entries are at-least-once, `seq` tells repeats.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use herald_devices::Position;
use serde::{Deserialize, Serialize};

use crate::record;
use crate::spool::SpoolSeq;

/// Name of the quarantine file inside the spool directory.
pub const FILE_NAME: &str = "quarantine.jsonl";

/// Errors of the quarantine file.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("quarantine i/o: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("quarantine entry: {0}")]
    Encode(String),
    #[error("quarantine line {line}: {reason}")]
    BadLine { line: usize, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> QuarantineError + 'a {
    move |source| QuarantineError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    quarantined_at: i64,
    reason: String,
    device: String,
    time: i64,
    record: String,
}

/// One quarantined position as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: SpoolSeq,
    /// Unix ms when it was quarantined.
    pub quarantined_at: i64,
    /// The database's reason.
    pub reason: String,
    pub position: Position,
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Append one entry to the file at `path` (created if missing) and flush it to disk.
pub fn append(
    path: &Path,
    seq: SpoolSeq,
    position: &Position,
    reason: &str,
    now_ms: i64,
) -> Result<(), QuarantineError> {
    let mut payload = Vec::new();
    record::encode(position, &mut payload).map_err(|e| QuarantineError::Encode(e.to_string()))?;
    let line = Line {
        seq: seq.0,
        quarantined_at: now_ms,
        reason: reason.to_owned(),
        device: position.device_id.clone(),
        time: position.time_ms,
        record: to_hex(&payload),
    };
    let mut text =
        serde_json::to_string(&line).map_err(|e| QuarantineError::Encode(e.to_string()))?;
    text.push('\n');
    let created = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open", path))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("write", path))?;
    file.sync_data().map_err(io_err("fsync", path))?;
    if created {
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("fsync dir", dir))?;
        }
    }
    Ok(())
}

/// Every entry of the file at `path` (none if it does not exist). A torn last line (a crash
/// mid-append) is ignored; any other bad line is an error.
pub fn read(path: &Path) -> Result<Vec<Entry>, QuarantineError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io_err("read", path))?;
    let mut out = Vec::with_capacity(lines.len());
    for (i, text) in lines.iter().enumerate() {
        let bad = |reason: String| QuarantineError::BadLine {
            line: i + 1,
            reason,
        };
        let line: Line = match serde_json::from_str(text) {
            Ok(l) => l,
            Err(_) if i + 1 == lines.len() => break,
            Err(e) => return Err(bad(e.to_string())),
        };
        let payload = from_hex(&line.record).ok_or_else(|| bad("record is not hex".into()))?;
        let position = record::decode(&payload).map_err(|e| bad(e.to_string()))?;
        out.push(Entry {
            seq: SpoolSeq(line.seq),
            quarantined_at: line.quarantined_at,
            reason: line.reason,
            position,
        });
    }
    Ok(out)
}
