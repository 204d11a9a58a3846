//! Fossil deltas: the patch format of Centrifugo's delta compression (`delta: "fossil"`), which
//! the SDKs apply to the previous publication's data to get the next one.
//!
//! A delta is `<target length>\n`, then commands — `<n>@<offset>,` copies `n` bytes of the source
//! from `offset`, `<n>:<n bytes>` inserts literal bytes — and ends with `<checksum>;`. Numbers are
//! written in fossil's base-64 digits (`0-9A-Z_a-z~`).
//!
//! [`create`] never cuts a UTF-8 character of the target between a copy and a literal: when the
//! target is UTF-8 (JSON always is), so is the delta, which can then travel as a JSON string (the
//! JSON protocol carries patches that way) without being altered.

use crate::reply::{encode_publication_push, Publication};
use serde_json::value::RawValue;
use thiserror::Error;

/// Bytes hashed at a time; sources this short are not indexed (the target goes literally).
const NHASH: usize = 16;
/// Candidates examined per hash hit: bounds the work on repetitive input.
const MAX_CHAIN: usize = 64;
/// A copy this long ends the search for a better one, so the bytes compared per position stay
/// bounded (a longer copy is consumed: the scan jumps past it).
const GOOD_ENOUGH: usize = 1024;

const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Why a delta cannot be applied to a source.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeltaError {
    #[error("delta: the size header is not terminated by a newline")]
    Header,
    #[error("delta: a copy is not terminated by ','")]
    CopyTerminator,
    #[error("delta: a copy extends past the end of the source")]
    CopyOutOfSource,
    #[error("delta: an insert extends past the end of the delta")]
    InsertOutOfDelta,
    #[error("delta: the output outgrows the size in the header")]
    TooLong,
    #[error("delta: unknown operator {0:#04x}")]
    Operator(u8),
    #[error("delta: the output is shorter than the size in the header")]
    TooShort,
    #[error("delta: bad checksum")]
    Checksum,
    #[error("delta: no terminating checksum")]
    Unterminated,
    #[error("delta: number too large")]
    Number,
}

fn put_int(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 11];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 63) as usize];
        v >>= 6;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn digit_count(mut v: usize) -> usize {
    let mut n = 1;
    while v >= 64 {
        v >>= 6;
        n += 1;
    }
    n
}

/// Fossil's 32-bit checksum: the data as big-endian 32-bit words (the tail padded with zeros),
/// summed with wrap-around.
pub fn checksum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(4);
    let mut sum = 0u32;
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 4];
        word[..rest.len()].copy_from_slice(rest);
        sum = sum.wrapping_add(u32::from_be_bytes(word));
    }
    sum
}

/// Rolling hash of `NHASH` bytes (two running sums, as in rsync/fossil).
#[derive(Clone, Copy)]
struct Hash {
    a: u32,
    b: u32,
}

impl Hash {
    fn new(window: &[u8]) -> Hash {
        let (mut a, mut b) = (0u32, 0u32);
        for (i, &c) in window.iter().enumerate() {
            a = a.wrapping_add(u32::from(c));
            b = b.wrapping_add((NHASH - i) as u32 * u32::from(c));
        }
        Hash { a, b }
    }

    fn roll(&mut self, out: u8, into: u8) {
        self.a = self
            .a
            .wrapping_sub(u32::from(out))
            .wrapping_add(u32::from(into));
        self.b = self
            .b
            .wrapping_sub(NHASH as u32 * u32::from(out))
            .wrapping_add(self.a);
    }

    fn value(self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
}

/// Whether `at` starts a character of `text` (or is its end), read as UTF-8.
fn boundary(text: &[u8], at: usize) -> bool {
    text.get(at).is_none_or(|b| b & 0xC0 != 0x80)
}

fn put_insert(literal: &[u8], out: &mut Vec<u8>) {
    if !literal.is_empty() {
        put_int(literal.len() as u64, out);
        out.push(b':');
        out.extend_from_slice(literal);
    }
}

fn put_copy(count: usize, offset: usize, out: &mut Vec<u8>) {
    put_int(count as u64, out);
    out.push(b'@');
    put_int(offset as u64, out);
    out.push(b',');
}

/// Index of the source: every `NHASH`-byte block by its hash, chained on collisions.
struct Index {
    heads: Vec<u32>,
    next: Vec<u32>,
}

const NONE: u32 = u32::MAX;

impl Index {
    fn new(source: &[u8]) -> Index {
        let blocks = source.len() / NHASH;
        let mut index = Index {
            heads: vec![NONE; blocks],
            next: vec![NONE; blocks],
        };
        // Chained from the last block down, so a bucket lists its lowest offset first: on
        // repetitive input, where MAX_CHAIN cuts the walk, the first candidates match longest.
        for block in (0..blocks).rev() {
            let at = block * NHASH;
            let bucket = index.bucket(Hash::new(&source[at..at + NHASH]));
            index.next[block] = index.heads[bucket];
            index.heads[bucket] = block as u32;
        }
        index
    }

    fn bucket(&self, hash: Hash) -> usize {
        hash.value() as usize % self.heads.len()
    }
}

/// The delta that turns `source` into `target`.
pub fn create(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 4 + 16);
    put_int(target.len() as u64, &mut out);
    out.push(b'\n');
    // Offsets are kept in u32 (the index); larger inputs go literally.
    let indexable = source.len() > NHASH && source.len() < u32::MAX as usize;
    let mut base = 0;
    if indexable {
        let index = Index::new(source);
        while base + NHASH <= target.len() {
            let mut hash = Hash::new(&target[base..base + NHASH]);
            let mut i = 0;
            loop {
                let best = best_copy(source, target, &index, hash, base, i);
                if let Some((count, offset, literal)) = best {
                    put_insert(&target[base..base + literal], &mut out);
                    put_copy(count, offset, &mut out);
                    base += literal + count;
                    break;
                }
                if base + i + NHASH >= target.len() {
                    // No room left to find another match: the rest goes literally.
                    put_insert(&target[base..], &mut out);
                    base = target.len();
                    break;
                }
                hash.roll(target[base + i], target[base + i + NHASH]);
                i += 1;
            }
        }
    }
    put_insert(&target[base..], &mut out);
    put_int(u64::from(checksum(target)), &mut out);
    out.push(b';');
    out
}

/// The best copy for the target window at `base + i`: (bytes, source offset, literal bytes
/// before it), cut to whole UTF-8 characters of the target, and only when it is worth more than
/// its own command.
fn best_copy(
    source: &[u8],
    target: &[u8],
    index: &Index,
    hash: Hash,
    base: usize,
    i: usize,
) -> Option<(usize, usize, usize)> {
    let mut best: Option<(usize, usize, usize)> = None;
    let mut candidate = index.heads[index.bucket(hash)];
    let mut examined = 0;
    while candidate != NONE && examined < MAX_CHAIN {
        examined += 1;
        let src = candidate as usize * NHASH;
        candidate = index.next[candidate as usize];
        let at = base + i;
        let forward = source[src..]
            .iter()
            .zip(&target[at..])
            .take_while(|(a, b)| a == b)
            .count();
        if forward == 0 {
            continue;
        }
        let backward = source[..src]
            .iter()
            .rev()
            .zip(target[base..at].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        let (mut start, mut end) = (at - backward, at + forward);
        let mut offset = src - backward;
        while start < end && !boundary(target, start) {
            start += 1;
            offset += 1;
        }
        while end > start && !boundary(target, end) {
            end -= 1;
        }
        let count = end - start;
        let literal = start - base;
        let cost = digit_count(offset) + digit_count(count) + digit_count(literal) + 3;
        if count >= cost && best.is_none_or(|(c, _, _)| count > c) {
            best = Some((count, offset, literal));
            if count >= GOOD_ENOUGH {
                break;
            }
        }
    }
    best
}

/// `text` as a JSON string value.
fn json_string(text: &str) -> Option<Box<RawValue>> {
    serde_json::to_string(text)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
}

/// The publication as a delta-compression subscriber of the JSON protocol receives it in full:
/// its `data` is the data's JSON text as a JSON string (the SDK keeps those exact bytes as the
/// base of the next patch).
pub fn with_data_as_string(publication: &Publication) -> Publication {
    Publication {
        data: json_string(publication.data.get()).unwrap_or_else(|| publication.data.clone()),
        info: publication.info.clone(),
        offset: publication.offset,
        tags: publication.tags.clone(),
        time: publication.time,
    }
}

/// A publication push for a delta-compression subscriber (JSON protocol): in full (`patch`:
/// none), or carrying a fossil patch against the previous publication's data, as a JSON string,
/// with `"delta":true`. None when the patch is not UTF-8 (never for a patch [`create`] made
/// between two JSON texts): the caller sends the publication in full instead.
pub fn encode_delta_publication_push(
    channel: &str,
    publication: &Publication,
    patch: Option<&[u8]>,
) -> Option<bytes::Bytes> {
    let Some(patch) = patch else {
        return Some(encode_publication_push(
            channel,
            &with_data_as_string(publication),
        ));
    };
    let data = json_string(std::str::from_utf8(patch).ok()?)?;
    let patched = Publication {
        data,
        ..with_data_as_string(publication)
    };
    let mut out = encode_publication_push(channel, &patched).to_vec();
    // The push ends with the publication object's `}` and the push's `}}`: the flag goes last in
    // the publication, after `data` (always there), so after a comma.
    let at = out.len().checked_sub(3)?;
    out.splice(at..at, b",\"delta\":true".iter().copied());
    Some(bytes::Bytes::from(out))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn int(&mut self) -> Result<usize, DeltaError> {
        let mut v: u64 = 0;
        while let Some(d) = self.data.get(self.pos).and_then(|&c| digit(c)) {
            v = v
                .checked_mul(64)
                .and_then(|v| v.checked_add(u64::from(d)))
                .filter(|v| *v <= u64::from(u32::MAX))
                .ok_or(DeltaError::Number)?;
            self.pos += 1;
        }
        usize::try_from(v).map_err(|_| DeltaError::Number)
    }

    fn byte(&mut self) -> Option<u8> {
        let b = self.data.get(self.pos).copied();
        self.pos += 1;
        b
    }
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'Z' => Some(c - b'A' + 10),
        b'_' => Some(36),
        b'a'..=b'z' => Some(c - b'a' + 37),
        b'~' => Some(63),
        _ => None,
    }
}

/// Applies `delta` to `source`; checks it as strictly as the SDKs do (size, bounds, checksum).
pub fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let mut reader = Reader {
        data: delta,
        pos: 0,
    };
    let limit = reader.int()?;
    if reader.byte() != Some(b'\n') {
        return Err(DeltaError::Header);
    }
    // The header is the client's claim: grow as the output really does.
    let mut out = Vec::with_capacity(limit.min(delta.len().saturating_mul(4)).min(1 << 20));
    while reader.pos < delta.len() {
        let count = reader.int()?;
        match reader.byte() {
            Some(b'@') => {
                let offset = reader.int()?;
                match reader.byte() {
                    Some(b',') | None => {}
                    Some(_) => return Err(DeltaError::CopyTerminator),
                }
                if out.len() + count > limit {
                    return Err(DeltaError::TooLong);
                }
                let end = offset
                    .checked_add(count)
                    .filter(|end| *end <= source.len())
                    .ok_or(DeltaError::CopyOutOfSource)?;
                out.extend_from_slice(&source[offset..end]);
            }
            Some(b':') => {
                if out.len() + count > limit {
                    return Err(DeltaError::TooLong);
                }
                let literal = delta
                    .get(reader.pos..reader.pos + count)
                    .ok_or(DeltaError::InsertOutOfDelta)?;
                out.extend_from_slice(literal);
                reader.pos += count;
            }
            Some(b';') => {
                if u64::from(checksum(&out)) != count as u64 {
                    return Err(DeltaError::Checksum);
                }
                if out.len() != limit {
                    return Err(DeltaError::TooShort);
                }
                return Ok(out);
            }
            Some(other) => return Err(DeltaError::Operator(other)),
            None => break,
        }
    }
    Err(DeltaError::Unterminated)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn round_trip(source: &[u8], target: &[u8]) -> Vec<u8> {
        let delta = create(source, target);
        assert_eq!(apply(source, &delta).as_deref(), Ok(target));
        delta
    }

    #[test]
    fn empty_and_short_inputs() {
        assert_eq!(round_trip(b"", b""), b"0\n0;");
        round_trip(b"", b"abc");
        round_trip(b"abc", b"");
        round_trip(b"short", b"shorter");
    }

    #[test]
    fn similar_json_gives_a_small_delta() {
        let a = br#"{"id":"sensor-17","temperature":21.5,"humidity":40,"status":"ok","history":[1,2,3,4,5,6,7,8,9,10]}"#;
        let b = br#"{"id":"sensor-17","temperature":21.7,"humidity":40,"status":"ok","history":[1,2,3,4,5,6,7,8,9,10]}"#;
        let delta = round_trip(a, b);
        assert!(
            delta.len() < b.len() / 3,
            "{}",
            String::from_utf8_lossy(&delta)
        );
    }

    /// The format as written by fossil itself: a known delta applies.
    #[test]
    fn applies_a_handwritten_delta() {
        let source = b"hello, world";
        // "hello, " copied, then "there" inserted.
        let target = b"hello, there";
        let mut delta = Vec::new();
        put_int(target.len() as u64, &mut delta);
        delta.push(b'\n');
        delta.extend_from_slice(b"7@0,5:there");
        put_int(u64::from(checksum(target)), &mut delta);
        delta.push(b';');
        assert_eq!(apply(source, &delta).unwrap(), target);
    }

    #[test]
    fn checksum_matches_fossil() {
        // Big-endian words, tail padded: "abcd" + "e\0\0\0".
        assert_eq!(checksum(b"abcde"), 0x6162_6364u32.wrapping_add(0x6500_0000));
        assert_eq!(checksum(b""), 0);
    }

    #[test]
    fn deltas_of_utf8_stay_utf8() {
        let mut rng = Rng(7);
        let alphabet = ["a", "é", "€", "𝄞", "\"", "b", "ü"];
        for _ in 0..300 {
            let len = rng.below(200) + 20;
            let source: String = (0..len).map(|_| alphabet[rng.below(7)]).collect();
            let mut target = source.clone();
            for _ in 0..rng.below(4) + 1 {
                let mut at = rng.below(target.len());
                while !target.is_char_boundary(at) {
                    at -= 1;
                }
                target.insert_str(at, alphabet[rng.below(7)]);
            }
            let delta = round_trip(source.as_bytes(), target.as_bytes());
            assert!(std::str::from_utf8(&delta).is_ok(), "{delta:?}");
        }
    }

    #[test]
    fn random_edits_round_trip() {
        let mut rng = Rng(0x5eed);
        for _ in 0..500 {
            let len = rng.below(3000);
            let source: Vec<u8> = (0..len).map(|_| (rng.below(4) as u8) + b'a').collect();
            let mut target = source.clone();
            for _ in 0..rng.below(6) {
                let at = rng.below(target.len() + 1);
                match rng.below(3) {
                    0 => target.insert(at, rng.next() as u8),
                    1 if at < target.len() => {
                        target.remove(at);
                    }
                    _ => {
                        let end = (at + rng.below(50)).min(target.len());
                        target.drain(at..end);
                    }
                }
            }
            round_trip(&source, &target);
            round_trip(&target, &source);
        }
    }

    #[test]
    fn repetitive_input_is_bounded() {
        let source = vec![b'a'; 1 << 20];
        let mut target = source.clone();
        target[500_000] = b'b';
        let started = std::time::Instant::now();
        let delta = round_trip(&source, &target);
        assert!(delta.len() < 64, "delta of {} bytes", delta.len());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn bad_deltas_are_errors_not_panics() {
        let source = b"0123456789abcdef0123456789";
        let cases: [(&[u8], DeltaError); 8] = [
            (b"5", DeltaError::Header),
            (b"5\n5@0!", DeltaError::CopyTerminator),
            (b"5\n5@100,", DeltaError::CopyOutOfSource),
            (b"9\n9:abc", DeltaError::InsertOutOfDelta),
            (b"2\n5@0,", DeltaError::TooLong),
            (b"5\n5!", DeltaError::Operator(b'!')),
            (b"5\n5@0,", DeltaError::Unterminated),
            (b"~~~~~~~~~~~~\n", DeltaError::Number),
        ];
        for (delta, error) in cases {
            assert_eq!(apply(source, delta), Err(error), "{:?}", delta);
        }
        let mut wrong = create(source, b"0123456789abcdef0123456789!");
        let n = wrong.len();
        wrong[n - 2] ^= 1;
        assert_eq!(apply(source, &wrong), Err(DeltaError::Checksum));
        // Random bytes never panic.
        let mut rng = Rng(99);
        for _ in 0..2000 {
            let delta: Vec<u8> = (0..rng.below(40))
                .map(|_| b"0123:@,;\nAz~x"[rng.below(13)])
                .collect();
            let _ = apply(source, &delta);
        }
    }
    #[test]
    fn pushes_carry_data_as_a_json_string_and_patches_with_the_delta_flag() {
        let publication = |data: &str, offset| Publication {
            data: RawValue::from_string(data.to_string()).unwrap(),
            info: None,
            offset,
            tags: Default::default(),
            time: 0,
        };
        let first = publication(
            r#"{"n":"é\"x","list":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#,
            1,
        );
        let second = publication(
            r#"{"n":"é\"y","list":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#,
            2,
        );
        let full = encode_delta_publication_push("ch", &first, None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&full).unwrap();
        assert_eq!(v["push"]["pub"]["data"].as_str(), Some(first.data.get()));
        assert!(v["push"]["pub"].get("delta").is_none());
        let patch = create(first.data.get().as_bytes(), second.data.get().as_bytes());
        let pushed = encode_delta_publication_push("ch", &second, Some(&patch)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&pushed).unwrap();
        assert_eq!(v["push"]["pub"]["delta"], serde_json::json!(true));
        assert_eq!(v["push"]["pub"]["offset"], serde_json::json!(2));
        let wire = v["push"]["pub"]["data"].as_str().unwrap();
        let rebuilt = apply(first.data.get().as_bytes(), wire.as_bytes()).unwrap();
        assert_eq!(rebuilt, second.data.get().as_bytes());
        assert!(encode_delta_publication_push("ch", &second, Some(&[0xff])).is_none());
    }
}

#[cfg(test)]
mod doc_example {
    /// The patch shown in docs/protocol.md#delta-compression.
    #[test]
    fn the_documented_patch() {
        let a = br#"{"price":10,"name":"spot","currency":"EUR","venue":"XETR"}"#;
        let b = br#"{"price":11,"name":"spot","currency":"EUR","venue":"XETR"}"#;
        let patch = super::create(a, b);
        assert_eq!(patch, b"v\nB:{\"price\":11k@B,2I8tD;");
        assert_eq!(super::apply(a, &patch).unwrap(), b);
    }
}
