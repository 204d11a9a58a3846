//! Channel history of the NATS broker, in one JetStream stream per broker prefix.
//!
//! - Stream `herald_history_<base64url(prefix)>`, subjects `<prefix>.h.<base64url(channel)>`; no
//!   node core-subscribes them. Per subject the stream keeps at most the largest `history_size`
//!   seen (reads trim to the namespace's own size) and a message at most `history_meta_ttl`
//!   (`max_age`), so a channel's position outlives its last publication as long as on Redis.
//! - Every stored message carries its offset and epoch in headers. Offsets are made contiguous by
//!   optimistic concurrency: a publisher reads the subject's last message and appends with
//!   `Nats-Expected-Last-Subject-Sequence` = that message's stream sequence; a concurrent
//!   publisher makes the append fail and it is retried (bounded).
//! - Reads store nothing. An empty subject answers offset 0 and its absent epoch, which its first
//!   publication starts with (so a client that read position (0, E) recovers the first
//!   publication of E): a hash of the stream's creation time (a deleted and re-created stream
//!   answers other epochs) and of the current `history_meta_ttl` period (a subject empties only
//!   after a whole period without publications, so its next life falls in a later one). A removal
//!   leaves a marker message (offset 0, empty payload) with a fresh random epoch instead. Markers
//!   are never delivered nor returned.
//! - Live delivery stays on core NATS (see `delivery.rs`); [`Order`] puts those frames back in offset
//!   order on the receiving node, since two publishers' core messages may cross.

use super::subjects::{encode_token, history_subject};
use crate::brokers::{unavailable, BrokerError};
use crate::core::history::{new_epoch, HistoryOptions};
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;
use herald_protocol::{Publication, StreamPosition};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const OFFSET_HEADER: &str = "Herald-Offset";
pub const EPOCH_HEADER: &str = "Herald-Epoch";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// Appends lost to concurrent publishers before the publication fails (each loss means another
/// publication of the channel was stored, so this bounds waiting, not progress).
const APPEND_ATTEMPTS: usize = 32;

/// A stored message's place in its channel's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stored {
    /// JetStream stream sequence (for the expected-last-sequence check).
    pub sequence: u64,
    pub offset: u64,
    pub epoch: String,
}

/// Reads a stored message's offset and epoch from its headers; an error when they are missing or
/// malformed (not a message of ours).
pub(super) fn parse_headers(
    sequence: u64,
    headers: &async_nats::HeaderMap,
) -> Result<Stored, BrokerError> {
    let offset = headers
        .get(OFFSET_HEADER)
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or_else(|| unavailable(format!("history message {sequence}: no valid offset")))?;
    let epoch = headers
        .get(EPOCH_HEADER)
        .map(|v| v.as_str().to_string())
        .filter(|e| !e.is_empty())
        .ok_or_else(|| unavailable(format!("history message {sequence}: no epoch")))?;
    Ok(Stored {
        sequence,
        offset,
        epoch,
    })
}

fn headers(offset: u64, epoch: &str, expected: u64) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(OFFSET_HEADER, offset.to_string().as_str());
    headers.insert(EPOCH_HEADER, epoch);
    headers.insert(
        EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected.to_string().as_str(),
    );
    headers
}

/// The stream limits the namespaces seen so far need (they only grow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Limits {
    per_subject: i64,
    max_age: Duration,
}

impl Limits {
    fn of(options: &HistoryOptions) -> Limits {
        Limits {
            per_subject: i64::try_from(options.size).unwrap_or(i64::MAX),
            max_age: options.meta_ttl,
        }
    }
    fn covers(&self, other: &Limits) -> bool {
        self.per_subject >= other.per_subject && self.max_age >= other.max_age
    }
    fn max(&self, other: &Limits) -> Limits {
        Limits {
            per_subject: self.per_subject.max(other.per_subject),
            max_age: self.max_age.max(other.max_age),
        }
    }
}

/// The history stream of one broker prefix, opened (or created, or widened) on first use.
pub(super) struct HistoryStore {
    prefix: String,
    name: String,
    timeout: Duration,
    /// The stream handle and the limits it is known to have.
    opened: tokio::sync::Mutex<Option<(stream::Stream, Limits)>>,
}

impl HistoryStore {
    pub fn new(prefix: &str, timeout: Duration) -> HistoryStore {
        HistoryStore {
            prefix: prefix.to_string(),
            name: stream_name(prefix),
            timeout,
            opened: tokio::sync::Mutex::new(None),
        }
    }

    pub fn subject(&self, channel: &str) -> String {
        history_subject(&self.prefix, channel)
    }

    /// Forgets the handle, so the next operation finds or creates the stream again (it was
    /// deleted, or the server restarted empty).
    pub async fn forget(&self) {
        *self.opened.lock().await = None;
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(format!("NATS history {what}: {e}"))),
            Err(_) => Err(unavailable(format!("NATS history {what} timed out"))),
        }
    }

    /// The stream, with limits covering `options` (raised when a namespace needs more).
    async fn stream(
        &self,
        js: &jetstream::Context,
        options: &HistoryOptions,
    ) -> Result<stream::Stream, BrokerError> {
        let wanted = Limits::of(options);
        let mut opened = self.opened.lock().await;
        if let Some((stream, limits)) = opened.as_ref() {
            if limits.covers(&wanted) {
                return Ok(stream.clone());
            }
        }
        let config = stream::Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.h.>", self.prefix)],
            max_messages_per_subject: wanted.per_subject,
            max_age: wanted.max_age,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        };
        let stream = self
            .timed("stream", js.get_or_create_stream(config.clone()))
            .await?;
        let info = stream.cached_info().clone();
        let have = Limits {
            per_subject: info.config.max_messages_per_subject,
            max_age: info.config.max_age,
        };
        let limits = if have.covers(&wanted) {
            have
        } else {
            // Another node (or an older configuration) made it smaller: widen, never narrow.
            let widened = have.max(&wanted);
            let config = stream::Config {
                max_messages_per_subject: widened.per_subject,
                max_age: widened.max_age,
                ..info.config
            };
            self.timed("stream update", js.update_stream(config))
                .await?;
            widened
        };
        *opened = Some((stream.clone(), limits));
        Ok(stream)
    }

    /// The subject's last stored message, if any.
    async fn last(
        &self,
        stream: &stream::Stream,
        subject: &str,
    ) -> Result<Option<Stored>, BrokerError> {
        let got = tokio::time::timeout(
            self.timeout,
            stream.get_last_raw_message_by_subject(subject),
        )
        .await
        .map_err(|_| unavailable("NATS history read timed out"))?;
        match got {
            Ok(message) => parse_headers(message.sequence, &message.headers).map(Some),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(self.read_failed(e).await),
        }
    }

    /// A failed message read; a stream deleted under us is looked up (or created) again next time.
    async fn read_failed(&self, e: stream::LastRawMessageError) -> BrokerError {
        if let stream::LastRawMessageErrorKind::JetStream(js) = e.kind() {
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND {
                self.forget().await;
            }
        }
        unavailable(format!("NATS history read: {e}"))
    }

    /// The epoch of an empty subject (see the module documentation).
    fn absent_epoch(stream: &stream::Stream, meta_ttl: Duration) -> String {
        let created = stream.cached_info().created.unix_timestamp_nanos();
        let period = crate::core::clock::unix_millis().max(0) as u128 / meta_ttl.as_millis().max(1);
        let digest = sha1_smol::Sha1::from(format!("{created}:{period}"))
            .digest()
            .to_string();
        digest[..12].to_string()
    }

    /// Appends `payload` after `last` (`None`: the subject is empty, a new life starts under
    /// `epoch`). `Ok(None)`: another publisher appended first.
    async fn append(
        &self,
        js: &jetstream::Context,
        subject: &str,
        last: Option<&Stored>,
        epoch: String,
        offset: u64,
        payload: Bytes,
    ) -> Result<Option<StreamPosition>, BrokerError> {
        let epoch = last.map(|l| l.epoch.clone()).unwrap_or(epoch);
        let expected = last.map(|l| l.sequence).unwrap_or(0);
        let headers = headers(offset, &epoch, expected);
        let ack = async {
            js.publish_with_headers(subject.to_string(), headers, payload)
                .await?
                .await
        };
        match tokio::time::timeout(self.timeout, ack).await {
            Ok(Ok(_)) => Ok(Some(StreamPosition { offset, epoch })),
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Ok(Err(e)) => {
                if e.kind() == PublishErrorKind::StreamNotFound {
                    self.forget().await;
                }
                Err(unavailable(format!("NATS history append: {e}")))
            }
            Err(_) => Err(unavailable("NATS history append timed out")),
        }
    }

    /// Stores a publication payload under the next offset of `channel`; returns its position.
    pub async fn store(
        &self,
        js: &jetstream::Context,
        channel: &str,
        payload: Bytes,
        options: &HistoryOptions,
    ) -> Result<StreamPosition, BrokerError> {
        let stream = self.stream(js, options).await?;
        let subject = self.subject(channel);
        for _ in 0..APPEND_ATTEMPTS {
            let last = self.last(&stream, &subject).await?;
            let offset = last.as_ref().map(|l| l.offset + 1).unwrap_or(1);
            let epoch = Self::absent_epoch(&stream, options.meta_ttl);
            if let Some(position) = self
                .append(js, &subject, last.as_ref(), epoch, offset, payload.clone())
                .await?
            {
                return Ok(position);
            }
            tracing::debug!(%channel, offset, "nats history: a concurrent publisher appended first");
            // Jitter, so publishers that lost together do not collide again in lockstep.
            let pause = Duration::from_micros(rand::random::<u64>() % 3000);
            tokio::time::sleep(pause).await;
        }
        Err(unavailable(format!(
            "NATS history: {APPEND_ATTEMPTS} appends to {channel:?} lost to concurrent publishers"
        )))
    }

    /// The channel's position and its stored publications up to it (oldest first, contiguous,
    /// markers left out), those after `since` only and at most `count` of them when given (a
    /// recovery stops reading at its bound instead of fetching the whole history).
    pub async fn read(
        &self,
        js: &jetstream::Context,
        channel: &str,
        entries: bool,
        since: Option<u64>,
        count: Option<usize>,
        options: &HistoryOptions,
    ) -> Result<(StreamPosition, Vec<Publication>), BrokerError> {
        let stream = self.stream(js, options).await?;
        let subject = self.subject(channel);
        let Some(top) = self.last(&stream, &subject).await? else {
            // Nothing stored, nothing written: the position the first publication continues.
            let position = StreamPosition {
                offset: 0,
                epoch: Self::absent_epoch(&stream, options.meta_ttl),
            };
            return Ok((position, Vec::new()));
        };
        let position = StreamPosition {
            offset: top.offset,
            epoch: top.epoch.clone(),
        };
        if !entries || top.offset == 0 {
            return Ok((position, Vec::new()));
        }
        // The stream keeps the largest size of any namespace: this one's is what counts, so what
        // is older than its last `size` offsets is skipped.
        let oldest = top
            .offset
            .saturating_sub(options.size as u64)
            .saturating_add(1)
            .max(since.map_or(0, |s| s.saturating_add(1)));
        let mut items: Vec<Publication> = Vec::new();
        let mut next = self
            .first_sequence_from(&stream, &subject, &top, oldest)
            .await?;
        // One MSG.GET per stored message from there, oldest first, up to the position read above.
        loop {
            let got = tokio::time::timeout(
                self.timeout,
                stream.get_first_raw_message_by_subject(&subject, next),
            )
            .await
            .map_err(|_| unavailable("NATS history read timed out"))?;
            let message = match got {
                Ok(message) => message,
                // What is left up to the top expired or was trimmed meanwhile.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(self.read_failed(e).await),
            };
            if message.sequence > top.sequence {
                break;
            }
            next = message.sequence + 1;
            let stored = parse_headers(message.sequence, &message.headers)?;
            if stored.epoch != top.epoch || stored.offset < oldest.max(1) {
                continue;
            }
            // Trimmed while we walked: what came before the hole is older than what is kept.
            if items.last().is_some_and(|p| p.offset + 1 != stored.offset) {
                items.clear();
            }
            let publication = crate::brokers::wire::stored(stored.offset, &message.payload)
                .map_err(unavailable)?;
            items.push(publication);
            if message.sequence == top.sequence || count.is_some_and(|n| items.len() >= n) {
                break;
            }
        }
        Ok((position, items))
    }

    /// Where the walk of `read` starts: a stream sequence at or before the subject's first message
    /// of `top`'s epoch with an offset of at least `wanted`, found by bisection (a few MSG.GETs,
    /// however long the history) instead of walking from the start. Along the stream a subject's
    /// messages are: older epochs, then this epoch's marker (offset 0), then offsets 1, 2, … up to
    /// `top`, so "an older epoch, or a smaller offset" holds for a prefix of the sequences.
    async fn first_sequence_from(
        &self,
        stream: &stream::Stream,
        subject: &str,
        top: &Stored,
        wanted: u64,
    ) -> Result<u64, BrokerError> {
        let (mut lo, mut hi) = (1, top.sequence);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let got = tokio::time::timeout(
                self.timeout,
                stream.get_first_raw_message_by_subject(subject, mid),
            )
            .await
            .map_err(|_| unavailable("NATS history read timed out"))?;
            match got {
                Ok(message) => {
                    let stored = parse_headers(message.sequence, &message.headers)?;
                    if stored.epoch == top.epoch && stored.offset >= wanted {
                        hi = mid;
                    } else {
                        // Every sequence up to this message leads to it: start after it.
                        lo = message.sequence.max(mid) + 1;
                    }
                }
                // Nothing at or after `mid` (expired meanwhile): the walk finds nothing either.
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                    return Ok(mid)
                }
                Err(e) => return Err(self.read_failed(e).await),
            }
        }
        Ok(lo)
    }

    /// Forgets a channel's history; a subject that held any continues from offset 0 under a fresh
    /// random epoch (a marker), so positions of the removed life never recover into the next.
    /// Nothing to do without a stream (it is created on first use).
    pub async fn remove(&self, js: &jetstream::Context, channel: &str) -> Result<(), BrokerError> {
        let opened = self.opened.lock().await.as_ref().map(|(s, _)| s.clone());
        let stream = match opened {
            Some(stream) => stream,
            None => match tokio::time::timeout(self.timeout, js.get_stream(&self.name))
                .await
                .map_err(|_| unavailable("NATS history stream lookup timed out"))?
            {
                Ok(stream) => stream,
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(unavailable(format!("NATS history stream: {e}"))),
            },
        };
        let subject = self.subject(channel);
        let purged = self
            .timed("purge", async {
                stream.purge().filter(subject.clone()).await
            })
            .await?;
        if purged.purged > 0 {
            self.append(js, &subject, None, new_epoch(), 0, Bytes::new())
                .await?;
        }
        Ok(())
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The stream's name: stream names allow no `.`, `*`, `>` or spaces, so the prefix is encoded.
pub fn stream_name(prefix: &str) -> String {
    format!("herald_history_{}", encode_token(prefix))
}

/// A publication waiting in [`Order`] for the ones before it.
pub(super) struct Held {
    pub publication: Publication,
    pub key: Option<String>,
}

/// What [`Order::accept`] decided.
pub(super) enum Verdict {
    /// Deliver these, in this order (the frame and any held ones it released).
    Deliver(Vec<Held>),
    /// Held until the missing offsets arrive or the window passes; or dropped as a duplicate.
    Wait,
    /// The channel's stream started a new epoch (it was removed, expired, or lost with the
    /// server): positions subscribers hold are void, they must be told.
    NewEpoch,
}

/// Per channel on a receiving node: puts core NATS frames back in offset order, drops
/// duplicates, and holds a frame whose predecessors are missing for a short window.
#[derive(Default)]
pub(super) struct Order {
    /// The epoch and offset of the last publication delivered (or of the position a history read
    /// gave, which subscribers already have).
    last: Option<(String, u64)>,
    /// Frames after a hole, by offset.
    held: BTreeMap<u64, Held>,
    /// When the oldest hole started waiting.
    since: Option<Instant>,
}

impl Order {
    /// A position subscribers are known to hold (a history read), used until something is
    /// delivered.
    pub fn note_read(&mut self, position: &StreamPosition) {
        if self.last.is_none() && !position.epoch.is_empty() {
            self.last = Some((position.epoch.clone(), position.offset));
        }
    }

    pub fn accept(&mut self, epoch: &str, offset: u64, held: Held, now: Instant) -> Verdict {
        let last = match &self.last {
            Some((e, last)) if e == epoch => *last,
            Some(_) => {
                *self = Order::default();
                return Verdict::NewEpoch;
            }
            // Nothing known: start here.
            None => {
                self.held.clear();
                self.since = None;
                self.last = Some((epoch.to_string(), offset));
                return Verdict::Deliver(vec![held]);
            }
        };
        if offset <= last || self.held.contains_key(&offset) {
            return Verdict::Wait;
        }
        self.held.insert(offset, held);
        self.since.get_or_insert(now);
        let ready = self.release(epoch, now);
        if ready.is_empty() {
            Verdict::Wait
        } else {
            Verdict::Deliver(ready)
        }
    }

    /// Takes the held frames that now follow `last` without a hole.
    fn release(&mut self, epoch: &str, now: Instant) -> Vec<Held> {
        let mut ready = Vec::new();
        let Some((_, mut last)) = self.last.clone() else {
            return ready;
        };
        while let Some(held) = self.held.remove(&(last + 1)) {
            last += 1;
            ready.push(held);
        }
        self.last = Some((epoch.to_string(), last));
        if self.held.is_empty() {
            self.since = None;
        } else if !ready.is_empty() {
            // The next hole starts waiting now.
            self.since = Some(now);
        }
        ready
    }

    /// When the current hole stops being waited for.
    pub fn deadline(&self, window: Duration) -> Option<Instant> {
        self.since.map(|s| s + window)
    }

    /// Whether a hole outlived its window: the missing publications are lost for live delivery
    /// (subscribers must recover from history). Forgets everything held.
    pub fn expired(&mut self, window: Duration, now: Instant) -> bool {
        if self.deadline(window).is_some_and(|d| now >= d) {
            *self = Order::default();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn held(n: u64) -> Held {
        Held {
            publication: Publication {
                data: RawValue::from_string(n.to_string()).unwrap(),
                info: None,
                offset: n,
                tags: Default::default(),
                time: 0,
            },
            key: None,
        }
    }

    fn delivered(v: Verdict) -> Vec<u64> {
        match v {
            Verdict::Deliver(items) => items.iter().map(|h| h.publication.offset).collect(),
            Verdict::Wait | Verdict::NewEpoch => Vec::new(),
        }
    }

    #[test]
    fn order_reorders_drops_duplicates_and_times_out_holes() {
        let now = Instant::now();
        let window = Duration::from_millis(100);
        let mut order = Order::default();
        order.note_read(&StreamPosition {
            offset: 2,
            epoch: "e".into(),
        });
        assert!(delivered(order.accept("e", 2, held(2), now)).is_empty());
        assert!(delivered(order.accept("e", 4, held(4), now)).is_empty());
        assert_eq!(order.deadline(window), Some(now + window));
        assert!(delivered(order.accept("e", 5, held(5), now)).is_empty());
        assert_eq!(delivered(order.accept("e", 3, held(3), now)), vec![3, 4, 5]);
        assert_eq!(order.deadline(window), None);
        assert!(delivered(order.accept("e", 4, held(4), now)).is_empty());
        assert_eq!(delivered(order.accept("e", 6, held(6), now)), vec![6]);
        // A hole that is never filled.
        assert!(delivered(order.accept("e", 8, held(8), now)).is_empty());
        assert!(!order.expired(window, now + window / 2));
        assert!(order.expired(window, now + window));
        // Nothing known afterwards: the next frame starts again.
        assert_eq!(delivered(order.accept("e", 9, held(9), now)), vec![9]);
        // A new epoch voids the positions subscribers hold; what follows starts again.
        assert!(matches!(
            order.accept("f", 1, held(1), now),
            Verdict::NewEpoch
        ));
        assert_eq!(delivered(order.accept("f", 2, held(2), now)), vec![2]);
    }

    #[test]
    fn headers_parse_and_reject_foreign_messages() {
        let h = headers(7, "abc", 3);
        assert_eq!(
            parse_headers(9, &h).unwrap(),
            Stored {
                sequence: 9,
                offset: 7,
                epoch: "abc".into()
            }
        );
        let mut bad = async_nats::HeaderMap::new();
        bad.insert(OFFSET_HEADER, "x");
        bad.insert(EPOCH_HEADER, "abc");
        assert!(parse_headers(1, &bad).is_err());
        let mut no_epoch = async_nats::HeaderMap::new();
        no_epoch.insert(OFFSET_HEADER, "1");
        assert!(parse_headers(1, &no_epoch).is_err());
        assert!(stream_name("a.b *>")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }
}
