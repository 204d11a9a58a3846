//! A local, bounded, append-only spool of positions on disk.
//!
//! The spool is a directory of segment files named after the sequence number of their first
//! record (`00000000000000000001.seg`), plus a `cursor` file holding the last committed
//! sequence number. Each record is framed as `len:u32 LE | crc32(payload):u32 LE | payload`
//! (payload: [`crate::record`]). Sequence numbers start at 1 and are implicit: record `i` of a
//! segment has `first_seq + i`.
//!
//! * [`Spool::append`] writes a whole batch with one `write` and then fsyncs per [`FsyncPolicy`].
//!   When the batch would take the spool past `max_bytes` it fails with [`SpoolError::Full`] and
//!   writes nothing: the caller stops reading devices (TCP backpressure).
//!   [`Spool::append_group`] does the same for many callers' batches with one `write` and one
//!   flush decision (group commit); [`SpoolHandle::append`] funnels concurrent appends into it.
//! * [`Spool::read_batch`] reads from the committed cursor; [`Spool::commit`] persists the cursor
//!   (write-temp, fsync, rename) and then deletes segments that are entirely consumed. Through
//!   [`SpoolHandle::read_batch`] the lock is taken only to look up segments ([`frames`]): the
//!   records are read and decoded while appends go on.
//! * [`Spool::open`] validates the last segment and truncates a torn tail (an incomplete record
//!   or one whose CRC does not match, as left by kill -9 or power loss mid-write). Complete
//!   records are never dropped. Reading resumes after the committed cursor, so records read but
//!   not committed before a crash are read again (at-least-once).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_devices::Position;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::record;
use frames::{frame_header, FrameReader, SegmentSlice};

mod frames;

/// Frame header: length and CRC32, both u32 LE.
const HEADER: u64 = 8;
/// Largest accepted record payload.
pub const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;
const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const SEGMENT_EXT: &str = "seg";

/// Sequence number of a record in the spool (starts at 1; 0 means "none").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SpoolSeq(pub u64);

/// When appended records are flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` before every `append` returns: an accepted record survives power loss.
    Always,
    /// `fdatasync` on an append when at least this many milliseconds passed since the last one,
    /// and from [`Spool::sync_if_due`]. Survives a process crash; power loss may lose the last
    /// interval.
    EveryMillis(u64),
    /// Leave flushing to the OS. Survives a process crash only.
    Never,
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory of the segment files (created if missing).
    pub dir: PathBuf,
    /// Upper bound of the bytes of all segment files.
    pub max_bytes: u64,
    /// A new segment is started when the active one reaches this size.
    pub segment_bytes: u64,
    /// Flush policy for appends.
    pub fsync: FsyncPolicy,
}

impl SpoolConfig {
    /// Defaults: 1 GiB bound, 16 MiB segments, fsync every 100 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync: FsyncPolicy::EveryMillis(100),
        }
    }
}

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool i/o: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool full: {used} of {max} bytes used, batch needs {needed}")]
    Full { used: u64, needed: u64, max: u64 },
    #[error("record of {0} bytes exceeds the {MAX_RECORD_BYTES} byte limit")]
    RecordTooLarge(usize),
    #[error("cannot encode position: {0}")]
    Encode(#[from] record::EncodeError),
    #[error("commit of seq {seq} beyond the last appended seq {last}")]
    CommitBeyondEnd { seq: u64, last: u64 },
    #[error("spool task failed: {0}")]
    Task(String),
}

impl SpoolError {
    /// The same error for another batch of a failed group (`io::Error` is not `Clone`).
    fn duplicate(&self) -> SpoolError {
        match self {
            SpoolError::Io { op, path, source } => SpoolError::Io {
                op,
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            SpoolError::Full { used, needed, max } => SpoolError::Full {
                used: *used,
                needed: *needed,
                max: *max,
            },
            other => SpoolError::Task(other.to_string()),
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Bytes of all segment files.
    pub disk_bytes: u64,
    /// Bytes of records not yet committed.
    pub pending_bytes: u64,
    /// Records not yet committed.
    pub pending_records: u64,
    /// Number of segment files.
    pub segments: usize,
    /// Last committed seq.
    pub committed: u64,
    /// Last appended seq.
    pub last_seq: u64,
}

/// A batch already framed for the spool (encoding is CPU work that need not hold the lock).
#[derive(Debug, Default)]
pub struct EncodedBatch {
    bytes: Vec<u8>,
    count: u64,
}

impl EncodedBatch {
    /// Frame `positions`.
    pub fn encode(positions: &[Position]) -> Result<Self, SpoolError> {
        let mut bytes = Vec::with_capacity(positions.len() * 128);
        for p in positions {
            // The payload is encoded in place after a header filled in once its length is known.
            let start = bytes.len();
            let body = start + HEADER as usize;
            bytes.resize(body, 0);
            record::encode(p, &mut bytes)?;
            let payload = &bytes[body..];
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD_BYTES)
                .ok_or(SpoolError::RecordTooLarge(payload.len()))?;
            let crc = crc32fast::hash(payload);
            bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
            bytes[start + 4..body].copy_from_slice(&crc.to_le_bytes());
        }
        Ok(EncodedBatch {
            bytes,
            count: positions.len() as u64,
        })
    }

    /// Bytes the batch takes on disk.
    pub fn len_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    len: u64,
}

/// A read position: the record at `offset` of segment `seg_first` has sequence `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    seg_first: u64,
    offset: u64,
    seq: u64,
}

impl Pos {
    fn start(first_seq: u64) -> Self {
        Pos {
            seg_first: first_seq,
            offset: 0,
            seq: first_seq,
        }
    }
}

/// The spool. Blocking file I/O: call it from a blocking context, or use [`SpoolHandle`].
#[derive(Debug)]
pub struct Spool {
    cfg: SpoolConfig,
    segments: VecDeque<Segment>,
    active: Option<File>,
    /// A read handle of the segment reading is in, shared with reads outside the lock.
    reader: Option<(u64, Arc<File>)>,
    next_seq: u64,
    committed: u64,
    read_pos: Pos,
    last_read: Vec<(u64, Pos)>,
    disk_bytes: u64,
    last_sync: Instant,
    dirty: bool,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.{SEGMENT_EXT}")
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

/// Result of checking a frame header and payload.
enum Frame {
    Ok(Vec<u8>),
    /// Incomplete or corrupt: everything from here on is a torn tail.
    Bad,
}

fn read_frame(r: &mut impl Read, remaining: u64) -> io::Result<Frame> {
    if remaining < HEADER {
        return Ok(Frame::Bad);
    }
    let mut h = [0u8; HEADER as usize];
    r.read_exact(&mut h)?;
    let Some((len, crc)) = frame_header(&h, remaining) else {
        return Ok(Frame::Bad);
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Ok(Frame::Bad);
    }
    Ok(Frame::Ok(payload))
}

/// Length of the valid prefix of a segment and its record count.
fn valid_prefix(path: &Path) -> Result<(u64, u64), SpoolError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let total = file.metadata().map_err(io_err("stat", path))?.len();
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let (mut offset, mut count) = (0u64, 0u64);
    while offset < total {
        match read_frame(&mut r, total - offset).map_err(io_err("read", path))? {
            Frame::Ok(p) => {
                offset += HEADER + p.len() as u64;
                count += 1;
            }
            Frame::Bad => break,
        }
    }
    Ok((offset, count))
}

impl Spool {
    /// Open (or create) the spool in `cfg.dir`, truncating a torn tail.
    pub fn open(cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err("create dir", &dir))?;
        let committed = read_cursor(&dir)?;

        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read dir", &dir))? {
            let entry = entry.map_err(io_err("read dir", &dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_EXT) {
                continue;
            }
            let Some(first) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                tracing::warn!(path = %path.display(), "ignoring a spool file with a bad name");
                continue;
            };
            let len = entry.metadata().map_err(io_err("stat", &path))?.len();
            found.push(Segment {
                first_seq: first,
                path,
                len,
            });
        }
        found.sort_by_key(|s| s.first_seq);
        let mut segments: VecDeque<Segment> = found.into();

        // Segments consumed before a crash that hit between cursor write and deletion.
        while segments.len() >= 2 && segments[1].first_seq <= committed + 1 {
            if let Some(s) = segments.pop_front() {
                fs::remove_file(&s.path).map_err(io_err("remove", &s.path))?;
            }
        }

        let mut next_seq = committed + 1;
        if let Some(last) = segments.back_mut() {
            let (valid, count) = valid_prefix(&last.path)?;
            if valid < last.len {
                tracing::warn!(
                    path = %last.path.display(),
                    dropped = last.len - valid,
                    "truncating a torn tail in the spool"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .map_err(io_err("open", &last.path))?;
                f.set_len(valid).map_err(io_err("truncate", &last.path))?;
                f.sync_all().map_err(io_err("fsync", &last.path))?;
                last.len = valid;
            }
            next_seq = next_seq.max(last.first_seq + count);
        }
        let active = match segments.back() {
            Some(last) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io_err("open", &last.path))?,
            ),
            None => None,
        };
        let disk_bytes = segments.iter().map(|s| s.len).sum();
        let start = segments.front().map_or(next_seq, |s| s.first_seq);
        let mut spool = Spool {
            cfg,
            segments,
            active,
            reader: None,
            next_seq,
            committed,
            read_pos: Pos::start(start),
            last_read: Vec::new(),
            disk_bytes,
            last_sync: Instant::now(),
            dirty: false,
        };
        // Skip to the first record after the committed cursor.
        let mut pos = spool.read_pos;
        let mut reader = FrameReader::default();
        loop {
            let before = pos;
            match reader.next(&mut pos, &mut |p: &mut Pos| spool.slice_at(p))? {
                Some((seq, _)) if seq <= committed => continue,
                Some(_) => {
                    pos = before;
                    break;
                }
                None => break,
            }
        }
        spool.read_pos = pos;
        spool.delete_consumed()?;
        Ok(spool)
    }

    /// Configuration in use.
    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// Append `positions`; see [`Spool::append_encoded`].
    pub fn append(&mut self, positions: &[Position]) -> Result<SpoolSeq, SpoolError> {
        let batch = EncodedBatch::encode(positions)?;
        self.append_encoded(batch)
    }

    /// Append a framed batch. Returns the seq of its last record once it is written and, per
    /// the fsync policy, flushed. Either the whole batch is appended or (on error) none of it.
    pub fn append_encoded(&mut self, batch: EncodedBatch) -> Result<SpoolSeq, SpoolError> {
        self.append_group(vec![batch])
            .pop()
            .unwrap_or_else(|| Err(SpoolError::Task("empty group result".into())))
    }

    /// Append the batches of several callers with one `write` and one flush decision
    /// (`Always`: one `fdatasync` for the group). Returns one result per batch, in order: the
    /// seq of the batch's last record, or [`SpoolError::Full`] for a batch that does not fit
    /// after the ones accepted before it (nothing of it is written). When the write or the flush
    /// fails, every batch of the group fails; a failed write is cut back to the last record.
    pub fn append_group(
        &mut self,
        batches: Vec<EncodedBatch>,
    ) -> Vec<Result<SpoolSeq, SpoolError>> {
        // Per batch: `None` if it fits after those accepted before it, else the bytes in use.
        let mut used = self.disk_bytes;
        let refused: Vec<Option<u64>> = batches
            .iter()
            .map(|b| {
                let needed = b.len_bytes();
                if b.count == 0 || used.saturating_add(needed) <= self.cfg.max_bytes {
                    used += needed;
                    None
                } else {
                    Some(used)
                }
            })
            .collect();
        let parts: Vec<&EncodedBatch> = batches
            .iter()
            .zip(&refused)
            .filter(|(b, r)| r.is_none() && b.count > 0)
            .map(|(b, _)| b)
            .collect();
        let base = self.next_seq - 1;
        let written = if parts.is_empty() {
            Ok(())
        } else {
            self.write_group(&parts)
        };
        let mut seq = base;
        batches
            .iter()
            .zip(refused)
            .map(|(b, refused)| match (refused, &written) {
                (Some(used), _) => Err(SpoolError::Full {
                    used,
                    needed: b.len_bytes(),
                    max: self.cfg.max_bytes,
                }),
                (None, Err(e)) if b.count > 0 => Err(e.duplicate()),
                (None, Err(_)) => Ok(SpoolSeq(base)),
                (None, Ok(())) => {
                    seq += b.count;
                    Ok(SpoolSeq(seq))
                }
            })
            .collect()
    }

    /// Write `parts` with one `write` and flush per policy.
    fn write_group(&mut self, parts: &[&EncodedBatch]) -> Result<(), SpoolError> {
        let rotate = match (self.segments.back(), &self.active) {
            (Some(s), Some(_)) => s.len >= self.cfg.segment_bytes,
            _ => true,
        };
        if rotate {
            self.start_segment()?;
        }
        let (Some(seg), Some(file)) = (self.segments.back_mut(), self.active.as_mut()) else {
            return Err(SpoolError::Task("no active segment".into()));
        };
        let bytes: u64 = parts.iter().map(|b| b.len_bytes()).sum();
        let count: u64 = parts.iter().map(|b| b.count).sum();
        let result = match parts {
            [one] => file.write_all(&one.bytes),
            _ => {
                let mut buf = Vec::with_capacity(bytes as usize);
                for b in parts {
                    buf.extend_from_slice(&b.bytes);
                }
                file.write_all(&buf)
            }
        };
        if let Err(e) = result {
            // Take back a partial write so the segment stays record-aligned.
            let _ = file.set_len(seg.len);
            return Err(SpoolError::Io {
                op: "write",
                path: seg.path.clone(),
                source: e,
            });
        }
        seg.len += bytes;
        self.disk_bytes += bytes;
        self.next_seq += count;
        self.dirty = true;
        match self.cfg.fsync {
            FsyncPolicy::Always => self.sync(),
            FsyncPolicy::EveryMillis(ms)
                if self.last_sync.elapsed() >= Duration::from_millis(ms) =>
            {
                self.sync()
            }
            FsyncPolicy::EveryMillis(_) | FsyncPolicy::Never => Ok(()),
        }
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        if self.dirty {
            self.sync()?;
        }
        let path = self.cfg.dir.join(segment_name(self.next_seq));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        if self.cfg.fsync != FsyncPolicy::Never {
            sync_dir(&self.cfg.dir)?;
        }
        // A stale empty segment with the same name (possible only after a crash) is replaced.
        if let Some(last) = self.segments.back() {
            if last.first_seq == self.next_seq {
                self.disk_bytes -= last.len;
                self.segments.pop_back();
            }
        }
        self.segments.push_back(Segment {
            first_seq: self.next_seq,
            path,
            len: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Flush appended records to stable storage now.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let (Some(f), Some(s)) = (&self.active, self.segments.back()) {
            f.sync_data().map_err(io_err("fsync", &s.path))?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// With [`FsyncPolicy::EveryMillis`], flush if unflushed records are older than the interval.
    pub fn sync_if_due(&mut self) -> Result<(), SpoolError> {
        if let FsyncPolicy::EveryMillis(ms) = self.cfg.fsync {
            if self.dirty && self.last_sync.elapsed() >= Duration::from_millis(ms) {
                self.sync()?;
            }
        }
        Ok(())
    }

    /// Read up to `max` records after the committed cursor. Calling it again without a commit
    /// returns the same records. A record that passes its CRC but cannot be decoded is logged
    /// and skipped.
    pub fn read_batch(&mut self, max: usize) -> Result<Vec<(SpoolSeq, Position)>, SpoolError> {
        let read = read_records(self.read_pos, max, &mut |p: &mut Pos| self.slice_at(p))?;
        Ok(self.finish_read(read))
    }

    /// Takes note of what a batch read found (see [`read_records`]) and returns its records.
    fn finish_read(&mut self, read: BatchRead) -> Vec<(SpoolSeq, Position)> {
        // A commit since the read started moved the cursor: what the read found about the old
        // start no longer applies, and `commit` finds positions by scanning instead.
        if self.read_pos == read.start {
            self.last_read = read.ends;
            if let Some(after) = read.skip_to {
                self.read_pos = after;
            }
        }
        read.records
    }

    /// Mark every record up to and including `seq` consumed: persist the cursor, then delete the
    /// segments that are entirely consumed.
    pub fn commit(&mut self, seq: SpoolSeq) -> Result<(), SpoolError> {
        let Some(after) = self.commit_target(seq)? else {
            return Ok(());
        };
        write_cursor(&self.cfg.dir, seq.0, self.durable_cursor())?;
        self.committed_to(seq, after)
    }

    /// Where reading resumes once `seq` is committed; `None` if it is committed already.
    fn commit_target(&mut self, seq: SpoolSeq) -> Result<Option<Pos>, SpoolError> {
        let seq = seq.0;
        if seq <= self.committed {
            return Ok(None);
        }
        if seq >= self.next_seq {
            return Err(SpoolError::CommitBeyondEnd {
                seq,
                last: self.next_seq - 1,
            });
        }
        if let Some((_, p)) = self.last_read.iter().find(|(s, _)| *s == seq) {
            return Ok(Some(*p));
        }
        let mut pos = self.read_pos;
        let mut after = pos;
        let mut reader = FrameReader::default();
        while let Some((s, _)) = reader.next(&mut pos, &mut |p: &mut Pos| self.slice_at(p))? {
            if s > seq {
                break;
            }
            after = pos;
        }
        Ok(Some(after))
    }

    fn durable_cursor(&self) -> bool {
        self.cfg.fsync != FsyncPolicy::Never
    }

    /// The second half of a commit, once the cursor file holds `seq`.
    fn committed_to(&mut self, seq: SpoolSeq, after: Pos) -> Result<(), SpoolError> {
        self.committed = seq.0;
        self.read_pos = after;
        self.last_read.retain(|(s, _)| *s > seq.0);
        self.delete_consumed()
    }

    fn delete_consumed(&mut self) -> Result<(), SpoolError> {
        while let Some(front) = self.segments.front() {
            let is_last = self.segments.len() == 1;
            let consumed = if self.read_pos.seg_first > front.first_seq {
                true
            } else {
                self.read_pos.seg_first == front.first_seq && self.read_pos.offset >= front.len
            };
            if !consumed {
                break;
            }
            if !is_last && self.read_pos.seg_first == front.first_seq {
                self.read_pos = Pos::start(self.segments[1].first_seq);
            }
            if is_last {
                self.active = None;
                self.read_pos = Pos::start(self.next_seq);
            }
            if self.reader.as_ref().map(|r| r.0) == Some(front.first_seq) {
                self.reader = None;
            }
            fs::remove_file(&front.path).map_err(io_err("remove", &front.path))?;
            self.disk_bytes -= front.len;
            self.segments.pop_front();
        }
        Ok(())
    }

    /// The written part of the segment `pos` is in, with a read handle; moves `pos` to the next
    /// segment at a segment's end. `None`: no record is written at or after `pos`.
    fn slice_at(&mut self, pos: &mut Pos) -> Result<Option<SegmentSlice>, SpoolError> {
        loop {
            let idx = match self
                .segments
                .iter()
                .position(|s| s.first_seq == pos.seg_first)
            {
                Some(i) => i,
                None => match self.segments.iter().find(|s| s.first_seq > pos.seg_first) {
                    Some(s) => {
                        *pos = Pos::start(s.first_seq);
                        continue;
                    }
                    None => return Ok(None),
                },
            };
            let seg = &self.segments[idx];
            if pos.offset >= seg.len {
                match self.segments.get(idx + 1) {
                    Some(next) => {
                        *pos = Pos::start(next.first_seq);
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            let file = match &self.reader {
                Some((first, f)) if *first == seg.first_seq => f.clone(),
                _ => {
                    let f = Arc::new(File::open(&seg.path).map_err(io_err("open", &seg.path))?);
                    self.reader = Some((seg.first_seq, f.clone()));
                    f
                }
            };
            return Ok(Some(SegmentSlice {
                first_seq: seg.first_seq,
                path: seg.path.clone(),
                file,
                end: seg.len,
            }));
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> SpoolStats {
        let consumed_in_head = match self.segments.front() {
            Some(s) if s.first_seq == self.read_pos.seg_first => self.read_pos.offset,
            _ => 0,
        };
        SpoolStats {
            disk_bytes: self.disk_bytes,
            pending_bytes: self.disk_bytes.saturating_sub(consumed_in_head),
            pending_records: (self.next_seq - 1).saturating_sub(self.committed),
            segments: self.segments.len(),
            committed: self.committed,
            last_seq: self.next_seq - 1,
        }
    }
}

/// What one batch read found.
#[derive(Debug)]
struct BatchRead {
    /// The read position it started from.
    start: Pos,
    records: Vec<(SpoolSeq, Position)>,
    /// Per record, where reading resumes after it (a commit of that seq moves there).
    ends: Vec<(u64, Pos)>,
    /// Past the undecodable records it found before its first record, which are stepped over for
    /// good (nothing to lose).
    skip_to: Option<Pos>,
}

/// Reads and decodes up to `max` records from `start`; `lookup` gives segment slices (see
/// [`Spool::slice_at`]), so only it needs the spool.
fn read_records(
    start: Pos,
    max: usize,
    lookup: &mut impl FnMut(&mut Pos) -> Result<Option<SegmentSlice>, SpoolError>,
) -> Result<BatchRead, SpoolError> {
    let mut read = BatchRead {
        start,
        records: Vec::with_capacity(max.min(4096)),
        ends: Vec::with_capacity(max.min(4096)),
        skip_to: None,
    };
    let mut reader = FrameReader::default();
    let mut pos = start;
    while read.records.len() < max {
        let Some((seq, payload)) = reader.next(&mut pos, lookup)? else {
            break;
        };
        match record::decode(payload) {
            Ok(p) => {
                read.records.push((SpoolSeq(seq), p));
                read.ends.push((seq, pos));
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "undecodable spool record skipped");
                if read.records.is_empty() {
                    read.skip_to = Some(pos);
                }
            }
        }
    }
    Ok(read)
}

fn read_cursor(dir: &Path) -> Result<u64, SpoolError> {
    let path = dir.join(CURSOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    if bytes.len() == 12 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&bytes[..8]);
        let mut c = [0u8; 4];
        c.copy_from_slice(&bytes[8..]);
        if crc32fast::hash(&v) == u32::from_le_bytes(c) {
            return Ok(u64::from_le_bytes(v));
        }
    }
    // Replaying from the start is safe: the database ignores duplicates.
    tracing::warn!(path = %path.display(), "corrupt spool cursor; replaying from the start");
    Ok(0)
}

fn write_cursor(dir: &Path, seq: u64, durable: bool) -> Result<(), SpoolError> {
    let tmp = dir.join(CURSOR_TMP);
    let path = dir.join(CURSOR_FILE);
    let v = seq.to_le_bytes();
    let mut bytes = v.to_vec();
    bytes.extend_from_slice(&crc32fast::hash(&v).to_le_bytes());
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&bytes).map_err(io_err("write", &tmp))?;
    if durable {
        f.sync_all().map_err(io_err("fsync", &tmp))?;
    }
    drop(f);
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    if durable {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Requests the append queue holds. A full queue makes [`SpoolHandle::append`] wait before
/// queueing: that is the backpressure (the connection reads nothing more meanwhile), as when the
/// disk is slow. Memory stays bounded by the callers, each of which holds its own batch anyway.
const APPEND_QUEUE: usize = 4096;
/// Most requests, and most bytes, written as one group.
const GROUP_MAX: usize = 4096;
const GROUP_MAX_BYTES: u64 = 4 << 20;

/// One caller's batch and where its result goes.
struct AppendRequest {
    batch: EncodedBatch,
    reply: oneshot::Sender<Result<SpoolSeq, SpoolError>>,
}

/// A shareable, async face of a [`Spool`]: file I/O runs on tokio's blocking pool, and appends
/// wake the writer. Concurrent appends are group-committed by one appender task: it takes the
/// first queued request and everything queued behind it, and writes them with one
/// [`Spool::append_group`] (one `spawn_blocking`, one write, one flush). The task ends when the
/// last handle is dropped, after answering every request it took.
#[derive(Debug, Clone)]
pub struct SpoolHandle {
    inner: Arc<Mutex<Spool>>,
    appended: Arc<Notify>,
    appends: mpsc::Sender<AppendRequest>,
    commits: Arc<Mutex<()>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest")
            .field("records", &self.batch.count)
            .finish_non_exhaustive()
    }
}

impl SpoolHandle {
    /// Wrap an open spool and start its appender task.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn new(spool: Spool) -> Self {
        // A group stays within about one segment, so segments keep their size.
        let group_bytes = spool.config().segment_bytes.clamp(1, GROUP_MAX_BYTES);
        let inner = Arc::new(Mutex::new(spool));
        let appended = Arc::new(Notify::new());
        let (appends, rx) = mpsc::channel(APPEND_QUEUE);
        tokio::spawn(run_appender(
            inner.clone(),
            appended.clone(),
            rx,
            group_bytes,
        ));
        SpoolHandle {
            inner,
            appended,
            appends,
            commits: Arc::new(Mutex::new(())),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut inner.lock()))
            .await
            .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// Append (see [`Spool::append_encoded`]); resolves once the batch is written and flushed
    /// per the fsync policy, possibly together with other callers' batches.
    pub async fn append(&self, positions: &[Position]) -> Result<SpoolSeq, SpoolError> {
        let batch = EncodedBatch::encode(positions)?;
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(AppendRequest { batch, reply })
            .await
            .map_err(|_| SpoolError::Task("spool appender stopped".into()))?;
        answer
            .await
            .map_err(|_| SpoolError::Task("spool appender stopped".into()))?
    }

    /// Append requests waiting for the appender (not counting the group being written).
    pub fn append_queue(&self) -> usize {
        self.appends.max_capacity() - self.appends.capacity()
    }

    /// See [`Spool::read_batch`]. The lock is held only to look up segments, not while the
    /// records are read and decoded, so appends are not held up by a batch read.
    pub async fn read_batch(&self, max: usize) -> Result<Vec<(SpoolSeq, Position)>, SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let start = inner.lock().read_pos;
            let read = read_records(start, max, &mut |p: &mut Pos| inner.lock().slice_at(p))?;
            Ok(inner.lock().finish_read(read))
        })
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// See [`Spool::commit`]. The cursor file is written and fsynced without the spool lock,
    /// so appends are not held up by it; commits are serialized among themselves.
    pub async fn commit(&self, seq: SpoolSeq) -> Result<(), SpoolError> {
        let inner = self.inner.clone();
        let commits = self.commits.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = commits.lock();
            let (after, dir, durable) = {
                let mut spool = inner.lock();
                let Some(after) = spool.commit_target(seq)? else {
                    return Ok(());
                };
                (after, spool.cfg.dir.clone(), spool.durable_cursor())
            };
            write_cursor(&dir, seq.0, durable)?;
            inner.lock().committed_to(seq, after)
        })
        .await
        .map_err(|e| SpoolError::Task(e.to_string()))?
    }

    /// See [`Spool::sync_if_due`].
    pub async fn sync_if_due(&self) -> Result<(), SpoolError> {
        self.blocking(|s| s.sync_if_due()).await
    }

    /// The spool directory.
    pub fn dir(&self) -> std::path::PathBuf {
        self.inner.lock().config().dir.clone()
    }

    /// Counters for metrics (takes the lock briefly; no I/O).
    pub fn stats(&self) -> SpoolStats {
        self.inner.lock().stats()
    }

    /// Resolves after the next append (or at once if one happened since the last wait).
    pub async fn appended(&self) {
        self.appended.notified().await
    }
}

/// The appender task: one group per round, until every handle is gone and the queue is empty.
async fn run_appender(
    inner: Arc<Mutex<Spool>>,
    appended: Arc<Notify>,
    mut rx: mpsc::Receiver<AppendRequest>,
    group_bytes: u64,
) {
    while let Some(first) = rx.recv().await {
        let mut bytes = first.batch.len_bytes();
        let mut group = vec![first];
        while group.len() < GROUP_MAX && bytes < group_bytes {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.batch.len_bytes();
                    group.push(req);
                }
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<EncodedBatch>, Vec<_>) =
            group.into_iter().map(|r| (r.batch, r.reply)).unzip();
        let spool = inner.clone();
        match tokio::task::spawn_blocking(move || spool.lock().append_group(batches)).await {
            Ok(results) => {
                let any = results.iter().any(Result::is_ok);
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up no longer waits; its records are spooled anyway.
                    let _ = reply.send(result);
                }
                if any {
                    appended.notify_one();
                }
            }
            Err(e) => {
                let msg = format!("spool append task: {e}");
                for reply in replies {
                    let _ = reply.send(Err(SpoolError::Task(msg.clone())));
                }
            }
        }
    }
}
