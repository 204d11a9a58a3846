//! Reading record frames out of segment files without the spool lock.
//!
//! A [`SegmentSlice`] is a segment as far as it was written when it was looked up (under the
//! lock): appends only add bytes after its `end`, and a segment deleted meanwhile stays readable
//! through the open handle, so its frames can be read and decoded with the lock released.
//! [`FrameReader`] reads them with positional reads of [`READ_CHUNK`] bytes: a few system calls
//! per batch instead of a seek and two reads per record.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::{io_err, Pos, SpoolError, HEADER, MAX_RECORD_BYTES};

/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 256 * 1024;

/// The written part of one segment and a handle to read it.
#[derive(Debug, Clone)]
pub(super) struct SegmentSlice {
    pub first_seq: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// The segment's length when it was looked up: everything before it is whole records.
    pub end: u64,
}

/// The length and CRC of a frame whose header is `h`, if the frame fits in `remaining` bytes.
pub(super) fn frame_header(h: &[u8; HEADER as usize], remaining: u64) -> Option<(u32, u32)> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len <= MAX_RECORD_BYTES && HEADER + u64::from(len) <= remaining).then_some((len, crc))
}

/// Reads frames in order across segment slices.
#[derive(Debug, Default)]
pub(super) struct FrameReader {
    slice: Option<SegmentSlice>,
    buf: Vec<u8>,
    /// Offset in the slice's file of `buf[0]`.
    buf_at: u64,
}

impl FrameReader {
    /// The seq and payload of the record at `pos`, advancing `pos` past it. `lookup` gives the
    /// slice of the segment `pos` is in, moving `pos` to the next segment at a segment's end
    /// (`None`: nothing more is written). A corrupt frame ends its slice.
    pub fn next(
        &mut self,
        pos: &mut Pos,
        lookup: &mut impl FnMut(&mut Pos) -> Result<Option<SegmentSlice>, SpoolError>,
    ) -> Result<Option<(u64, &[u8])>, SpoolError> {
        loop {
            let end = match &self.slice {
                Some(s) if s.first_seq == pos.seg_first && pos.offset < s.end => s.end,
                _ => {
                    match lookup(pos)? {
                        Some(slice) => self.slice = Some(slice),
                        None => return Ok(None),
                    }
                    self.buf.clear();
                    continue;
                }
            };
            match self.frame_at(pos.offset, end)? {
                Some(payload) => {
                    let seq = pos.seq;
                    pos.offset += HEADER + payload.len() as u64;
                    pos.seq += 1;
                    return Ok(Some((seq, &self.buf[payload])));
                }
                None => {
                    if let Some(s) = &self.slice {
                        tracing::warn!(path = %s.path.display(), offset = pos.offset, "corrupt spool record; skipping the rest of the segment");
                    }
                    pos.offset = end;
                }
            }
        }
    }

    /// Where in `buf` the payload of the frame at `offset` is; `None` if the frame is
    /// incomplete or its CRC does not match.
    fn frame_at(&mut self, offset: u64, end: u64) -> Result<Option<Range<usize>>, SpoolError> {
        let remaining = end - offset;
        if remaining < HEADER {
            return Ok(None);
        }
        let at = self.fill(offset, HEADER as usize, end)?;
        let mut h = [0u8; HEADER as usize];
        h.copy_from_slice(&self.buf[at..at + HEADER as usize]);
        let Some((len, crc)) = frame_header(&h, remaining) else {
            return Ok(None);
        };
        let at = self.fill(offset, HEADER as usize + len as usize, end)?;
        let payload = at + HEADER as usize..at + HEADER as usize + len as usize;
        Ok((crc32fast::hash(&self.buf[payload.clone()]) == crc).then_some(payload))
    }

    /// Makes `buf` hold the `need` bytes at `offset` (all before `end`); returns where they start.
    fn fill(&mut self, offset: u64, need: usize, end: u64) -> Result<usize, SpoolError> {
        let held = self.buf_at..self.buf_at + self.buf.len() as u64;
        if held.start <= offset && offset + need as u64 <= held.end {
            return Ok((offset - self.buf_at) as usize);
        }
        let Some(slice) = &self.slice else {
            return Err(SpoolError::Task("spool read without a segment".into()));
        };
        let len = need.max(READ_CHUNK).min((end - offset) as usize);
        self.buf.resize(len, 0);
        slice
            .file
            .read_exact_at(&mut self.buf, offset)
            .map_err(io_err("read", &slice.path))?;
        self.buf_at = offset;
        Ok(0)
    }
}
