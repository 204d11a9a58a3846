//! In-memory history: per channel a stream position (epoch, offset) and the most recent publications.
//!
//! Offsets grow by one per publication in a channel. The epoch identifies one life of the stream: when
//! a stream is forgotten (no publication for `history_meta_ttl`, all its items expired and nobody
//! subscribed, evicted at `channel.max_streams`, or removed through the API) it starts again under a
//! new epoch, so clients holding an old position learn that they cannot recover.
//!
//! Only publications create streams. A read of a channel without a stream answers the empty
//! position: offset 0 and the epoch the channel's next stream will start with (see
//! [`MemoryHistory::absent_epoch`]), so a client that subscribed before the first publication
//! recovers that stream's publications exactly.

use super::{new_epoch, page, HistoryError, HistoryOptions, HistoryPage, HistoryQuery};
use crate::config::DEFAULT_MAX_STREAMS;
use herald_protocol::{Publication, StreamPosition};
use parking_lot::Mutex;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

struct Stream {
    epoch: String,
    offset: u64,
    items: VecDeque<(Instant, Arc<Publication>)>,
    touched: Instant,
    /// The namespace's `history_ttl` at the last publication (the sweeper's notion of "empty").
    ttl: Duration,
    /// Conflated channels: the latest publication of each key (bounded by `max_keys`).
    latest: HashMap<String, Arc<Publication>>,
}

impl Stream {
    fn new(epoch: String, now: Instant) -> Stream {
        Stream {
            epoch,
            offset: 0,
            items: VecDeque::new(),
            touched: now,
            ttl: Duration::MAX,
            latest: HashMap::new(),
        }
    }

    fn trim(&mut self, size: usize, ttl: Duration, now: Instant) {
        while self.items.len() > size {
            self.items.pop_front();
        }
        while self
            .items
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= ttl)
        {
            self.items.pop_front();
        }
    }

    /// Nothing left to recover: every item expired and no latest value is kept. Forgetting such a
    /// stream only costs clients holding its position a `recovered: false`.
    fn is_empty(&self, now: Instant) -> bool {
        self.latest.is_empty()
            && self
                .items
                .back()
                .is_none_or(|(at, _)| now.duration_since(*at) >= self.ttl)
    }

    /// Remembers `publication` as the latest of `key`, forgetting the least recently updated key
    /// when the map is full.
    fn remember(&mut self, key: &str, publication: &Arc<Publication>, max_keys: usize) {
        if !self.latest.contains_key(key) && self.latest.len() >= max_keys {
            let oldest = self
                .latest
                .iter()
                .min_by_key(|(_, p)| p.offset)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.latest.remove(&oldest);
            }
        }
        self.latest.insert(key.to_string(), publication.clone());
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

const SHARDS: usize = 64;
/// Forget generations: a channel's absent epoch changes when a stream hashing to the same
/// generation is forgotten (bounded memory, no per-channel state for channels without a stream).
const GENERATIONS: usize = 4096;

/// What the history needs to know of a channel's subscribers when it forgets streams.
pub trait StreamUsers: Send + Sync {
    /// Whether the channel has subscribers (their streams are forgotten last).
    fn has_subscribers(&self, channel: &str) -> bool;
    /// The channel's stream was forgotten while it had subscribers: they must recover.
    fn forgotten(&self, channel: &str);
}

/// Why streams were forgotten (the label of `herald_history_streams_forgotten_total`).
#[derive(Debug, Default)]
pub struct ForgetCounts {
    /// No publication for `history_meta_ttl`.
    pub idle: AtomicU64,
    /// Every item expired, nobody subscribed.
    pub empty: AtomicU64,
    /// Evicted to stay within `channel.max_streams`.
    pub limit: AtomicU64,
    /// Removed through the API.
    pub removed: AtomicU64,
}

type Shard = Mutex<HashMap<String, Arc<Mutex<Stream>>>>;

pub struct MemoryHistory {
    shards: Vec<Shard>,
    hasher: RandomState,
    /// Random per process life: streams of an earlier life never share an epoch with this one's.
    salt: String,
    generations: Box<[AtomicU32]>,
    streams: AtomicUsize,
    max_streams: usize,
    users: OnceLock<Arc<dyn StreamUsers>>,
    pub forgotten: ForgetCounts,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    pub fn new() -> MemoryHistory {
        Self::with_max_streams(DEFAULT_MAX_STREAMS)
    }

    pub fn with_max_streams(max_streams: usize) -> MemoryHistory {
        MemoryHistory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            salt: new_epoch(),
            generations: (0..GENERATIONS).map(|_| AtomicU32::new(0)).collect(),
            streams: AtomicUsize::new(0),
            max_streams: max_streams.max(1),
            users: OnceLock::new(),
            forgotten: ForgetCounts::default(),
        }
    }

    /// Who subscribes to what (set once by the broker).
    pub fn set_users(&self, users: Arc<dyn StreamUsers>) {
        let _ = self.users.set(users);
    }

    /// Streams currently kept.
    pub fn len(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams evicted at `max_streams` so far.
    pub fn evictions(&self) -> u64 {
        self.forgotten.limit.load(Ordering::Relaxed)
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    fn generation(&self, channel: &str) -> &AtomicU32 {
        // Another seed than the shard's, so shards and generations do not line up.
        let hash = self.hasher.hash_one((channel, 1u8)) as usize;
        &self.generations[hash % GENERATIONS]
    }

    /// The epoch of a channel without a stream: the one its next stream starts with. It changes
    /// whenever a stream of its generation is forgotten, so two lives of one channel never share
    /// an epoch (a client holding a position of a forgotten life cannot recover into the next).
    pub fn absent_epoch(&self, channel: &str) -> String {
        let generation = self.generation(channel).load(Ordering::SeqCst);
        format!("{}{generation:x}", self.salt)
    }

    /// Called with the channel's shard locked, as it leaves the map.
    fn note_forgotten(&self, channel: &str, reason: &AtomicU64) {
        self.generation(channel).fetch_add(1, Ordering::SeqCst);
        self.streams.fetch_sub(1, Ordering::Relaxed);
        reason.fetch_add(1, Ordering::Relaxed);
    }

    fn existing(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        self.shard(channel).lock().get(channel).cloned()
    }

    /// The channel's stream, created when missing (publications only).
    fn stream_for_append(&self, channel: &str, now: Instant) -> Arc<Mutex<Stream>> {
        if let Some(stream) = self.existing(channel) {
            return stream;
        }
        if self.len() >= self.max_streams {
            self.evict(channel, now);
        }
        let mut shard = self.shard(channel).lock();
        shard
            .entry(channel.to_string())
            .or_insert_with(|| {
                self.streams.fetch_add(1, Ordering::Relaxed);
                Arc::new(Mutex::new(Stream::new(self.absent_epoch(channel), now)))
            })
            .clone()
    }

    /// Makes room under `max_streams`: forgets a batch (1 % of the limit, at least one) of
    /// streams, empty ones without subscribers first, then the least recently published to.
    /// One scan per batch keeps the cost per new stream small.
    fn evict(&self, except: &str, now: Instant) {
        let batch = (self.max_streams / 100).clamp(1, 10_000);
        let users = self.users.get();
        // Max-heap of the `batch` best victims so far, by rank: empty before holding publications,
        // nobody subscribed before subscribed, then least recently published to.
        let mut victims: BinaryHeap<((bool, bool, Instant), String)> = BinaryHeap::new();
        for shard in &self.shards {
            let shard = shard.lock();
            for (channel, stream) in shard.iter() {
                if channel == except {
                    continue;
                }
                let (full, touched) = {
                    let stream = stream.lock();
                    (!stream.is_empty(now), stream.touched)
                };
                let subscribed = users.is_some_and(|u| u.has_subscribers(channel));
                let rank = (full, subscribed, touched);
                if victims.len() < batch {
                    victims.push((rank, channel.clone()));
                } else if victims.peek().is_some_and(|(worst, _)| rank < *worst) {
                    victims.pop();
                    victims.push((rank, channel.clone()));
                }
            }
        }
        let victims = victims.into_sorted_vec();
        let mut told = Vec::new();
        // The whole batch, so the next scan waits for another 1 % of new streams.
        for (_, channel) in victims {
            let mut shard = self.shard(&channel).lock();
            if shard.remove(&channel).is_some() {
                self.note_forgotten(&channel, &self.forgotten.limit);
                told.push(channel);
            }
        }
        if let Some(users) = users {
            for channel in told.iter().filter(|c| users.has_subscribers(c)) {
                users.forgotten(channel);
            }
        }
    }

    /// Appends a publication, assigning the next offset, and calls `deliver` while the stream is still
    /// locked so concurrent publishers of one channel deliver in offset order.
    pub fn append<R>(
        &self,
        channel: &str,
        mut publication: Publication,
        key: Option<&str>,
        options: HistoryOptions,
        deliver: impl FnOnce(Arc<Publication>) -> R,
    ) -> (StreamPosition, R) {
        let now = Instant::now();
        let stream = self.stream_for_append(channel, now);
        let mut stream = stream.lock();
        stream.offset += 1;
        stream.touched = now;
        stream.ttl = options.ttl;
        publication.offset = stream.offset;
        let publication = Arc::new(publication);
        stream.items.push_back((now, publication.clone()));
        if let (Some(key), true) = (key, options.max_keys > 0) {
            stream.remember(key, &publication, options.max_keys);
        }
        stream.trim(options.size, options.ttl, now);
        let position = stream.position();
        let delivered = deliver(publication);
        (position, delivered)
    }

    /// Reads history. A `since` position that cannot be continued exactly returns `Unrecoverable`.
    /// A channel without a stream answers the empty position and keeps nothing.
    pub fn read(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, HistoryError> {
        let Some(stream) = self.existing(channel) else {
            let position = StreamPosition {
                offset: 0,
                epoch: self.absent_epoch(channel),
            };
            if let Some(since) = &query.since {
                if since.epoch != position.epoch || since.offset > 0 {
                    return Err(HistoryError::Unrecoverable);
                }
            }
            return Ok(page(Vec::new(), position, query));
        };
        let now = Instant::now();
        let mut stream = stream.lock();
        stream.trim(options.size, options.ttl, now);
        let position = stream.position();
        let publications: Vec<Arc<Publication>> = match &query.since {
            Some(since) => {
                if since.epoch != stream.epoch || since.offset > stream.offset {
                    return Err(HistoryError::Unrecoverable);
                }
                if since.offset == stream.offset {
                    Vec::new()
                } else {
                    let first_kept = stream
                        .items
                        .front()
                        .map(|(_, p)| p.offset)
                        .unwrap_or(stream.offset + 1);
                    if first_kept > since.offset + 1 {
                        return Err(HistoryError::Unrecoverable);
                    }
                    // A recovery takes its bound, not the rest of the stream.
                    stream
                        .items
                        .iter()
                        .filter(|(_, p)| p.offset > since.offset)
                        .take(query.entries_to_read().unwrap_or(usize::MAX))
                        .map(|(_, p)| p.clone())
                        .collect()
                }
            }
            None => stream.items.iter().map(|(_, p)| p.clone()).collect(),
        };
        Ok(page(publications, position, query))
    }

    /// The latest publication of every key of a conflated channel, oldest first, and the position.
    pub fn latest(&self, channel: &str) -> (Vec<Arc<Publication>>, StreamPosition) {
        let Some(stream) = self.existing(channel) else {
            let position = StreamPosition {
                offset: 0,
                epoch: self.absent_epoch(channel),
            };
            return (Vec::new(), position);
        };
        let stream = stream.lock();
        let mut latest: Vec<Arc<Publication>> = stream.latest.values().cloned().collect();
        latest.sort_by_key(|p| p.offset);
        (latest, stream.position())
    }

    /// Forgets a channel's publications; the stream continues under a new epoch.
    pub fn remove(&self, channel: &str) {
        let mut shard = self.shard(channel).lock();
        if shard.remove(channel).is_some() {
            self.note_forgotten(channel, &self.forgotten.removed);
        }
    }

    /// Forgets streams idle for longer than `meta_ttl`, and streams with nothing left to recover
    /// (every item expired, no latest value) that nobody subscribes to (run periodically).
    pub fn sweep(&self, meta_ttl: Duration) {
        let now = Instant::now();
        let users = self.users.get();
        let mut told = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            shard.retain(|channel, stream| {
                let stream = stream.lock();
                let reason = if now.duration_since(stream.touched) >= meta_ttl {
                    &self.forgotten.idle
                } else if stream.is_empty(now) && !users.is_some_and(|u| u.has_subscribers(channel))
                {
                    &self.forgotten.empty
                } else {
                    return true;
                };
                self.note_forgotten(channel, reason);
                told.push(channel.clone());
                false
            });
        }
        if let Some(users) = users {
            for channel in told.iter().filter(|c| users.has_subscribers(c)) {
                users.forgotten(channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::value::RawValue;

    fn publication(n: u32) -> Publication {
        Publication {
            data: RawValue::from_string(n.to_string()).unwrap(),
            info: None,
            offset: 0,
            tags: Default::default(),
            time: 0,
        }
    }

    const OPTS: HistoryOptions = HistoryOptions {
        size: 3,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(600),
        max_keys: 0,
    };

    #[test]
    fn offsets_grow_and_history_is_bounded() {
        let h = MemoryHistory::new();
        let mut last = StreamPosition::default();
        for n in 1..=5 {
            let (pos, offset) = h.append("c", publication(n), None, OPTS, |p| p.offset);
            assert_eq!(pos.offset, u64::from(n));
            assert_eq!(offset, u64::from(n));
            last = pos;
        }
        let page = h.read("c", &HistoryQuery::default(), OPTS).unwrap();
        assert_eq!(
            page.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(page.position, last);
    }

    #[test]
    fn recovery_from_a_position() {
        let h = MemoryHistory::new();
        for n in 1..=5 {
            h.append("c", publication(n), None, OPTS, |_| ());
        }
        let epoch = h
            .read("c", &HistoryQuery::default(), OPTS)
            .unwrap()
            .position
            .epoch;
        let since = |offset| HistoryQuery {
            since: Some(StreamPosition {
                offset,
                epoch: epoch.clone(),
            }),
            ..Default::default()
        };
        let page = h.read("c", &since(3), OPTS).unwrap();
        assert_eq!(
            page.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert!(h
            .read("c", &since(5), OPTS)
            .unwrap()
            .publications
            .is_empty());
        assert_eq!(
            h.read("c", &since(1), OPTS).unwrap_err(),
            HistoryError::Unrecoverable
        );
        assert_eq!(
            h.read("c", &since(9), OPTS).unwrap_err(),
            HistoryError::Unrecoverable
        );
        let wrong_epoch = HistoryQuery {
            since: Some(StreamPosition {
                offset: 4,
                epoch: "x".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            h.read("c", &wrong_epoch, OPTS).unwrap_err(),
            HistoryError::Unrecoverable
        );
    }

    #[test]
    fn removal_starts_a_new_epoch_and_ttl_expires_items() {
        let h = MemoryHistory::new();
        let (first, _) = h.append("c", publication(1), None, OPTS, |_| ());
        h.remove("c");
        let (second, _) = h.append("c", publication(2), None, OPTS, |_| ());
        assert_ne!(first.epoch, second.epoch);
        assert_eq!(second.offset, 1);
        let short = HistoryOptions {
            ttl: Duration::from_millis(1),
            ..OPTS
        };
        std::thread::sleep(Duration::from_millis(5));
        let page = h.read("c", &HistoryQuery::default(), short).unwrap();
        assert!(page.publications.is_empty());
        assert_eq!(page.position.offset, 1, "the position survives item expiry");
    }

    #[test]
    fn latest_value_per_key_is_bounded() {
        let h = MemoryHistory::new();
        let opts = HistoryOptions {
            size: 100,
            max_keys: 2,
            ..OPTS
        };
        for (n, key) in [(1, "a"), (2, "b"), (3, "a"), (4, "c")] {
            h.append("q", publication(n), Some(key), opts, |_| ());
        }
        let (latest, position) = h.latest("q");
        // "b" (offset 2) was the least recently updated when "c" arrived.
        let offsets: Vec<u64> = latest.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![3, 4]);
        assert_eq!(position.offset, 4);
    }

    #[test]
    fn reads_create_no_stream_and_the_first_publication_continues_their_position() {
        let h = MemoryHistory::new();
        let read = h
            .read(
                "fresh",
                &HistoryQuery {
                    limit: Some(0),
                    ..Default::default()
                },
                OPTS,
            )
            .unwrap();
        let (_, latest) = h.latest("fresh");
        assert_eq!(read.position.offset, 0);
        assert!(!read.position.epoch.is_empty());
        assert_eq!(latest, read.position);
        // A recovery from the empty position of a missing stream is exact (nothing missed).
        let since = HistoryQuery {
            since: Some(read.position.clone()),
            ..Default::default()
        };
        assert!(h
            .read("fresh", &since, OPTS)
            .unwrap()
            .publications
            .is_empty());
        assert!(h.is_empty(), "reads keep nothing");
        let (position, _) = h.append("fresh", publication(1), None, OPTS, |_| ());
        assert_eq!(position.epoch, read.position.epoch);
        let page = h.read("fresh", &since, OPTS).unwrap();
        assert_eq!(
            page.publications.len(),
            1,
            "recovered from before the stream existed"
        );
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_forgotten_stream_never_shares_an_epoch_with_the_next() {
        let h = MemoryHistory::new();
        let (first, _) = h.append("c", publication(1), None, OPTS, |_| ());
        h.remove("c");
        assert_ne!(h.absent_epoch("c"), first.epoch);
        let stale = HistoryQuery {
            since: Some(first.clone()),
            ..Default::default()
        };
        assert_eq!(
            h.read("c", &stale, OPTS).unwrap_err(),
            HistoryError::Unrecoverable
        );
        h.append("c", publication(2), None, OPTS, |_| ());
        h.append("c", publication(3), None, OPTS, |_| ());
        assert_eq!(
            h.read("c", &stale, OPTS).unwrap_err(),
            HistoryError::Unrecoverable,
            "offset 1 of the old life is not offset 1 of the new one"
        );
    }

    struct Subscribed(&'static str, Mutex<Vec<String>>);
    impl StreamUsers for Subscribed {
        fn has_subscribers(&self, channel: &str) -> bool {
            channel == self.0
        }
        fn forgotten(&self, channel: &str) {
            self.1.lock().push(channel.to_string());
        }
    }

    #[test]
    fn streams_are_bounded_and_empty_ones_go_first() {
        let h = MemoryHistory::with_max_streams(3);
        let expiring = HistoryOptions {
            ttl: Duration::from_millis(1),
            ..OPTS
        };
        h.append("empty", publication(1), None, expiring, |_| ());
        h.append("old", publication(1), None, OPTS, |_| ());
        h.append("newer", publication(1), None, OPTS, |_| ());
        std::thread::sleep(Duration::from_millis(5));
        h.append("fourth", publication(1), None, OPTS, |_| ());
        assert_eq!(h.len(), 3);
        assert_eq!(h.evictions(), 1);
        let kept = |c: &str| h.latest(c).1.offset == 1;
        assert!(!kept("empty") && kept("old") && kept("newer") && kept("fourth"));
        // Then the least recently published to.
        h.append("fifth", publication(1), None, OPTS, |_| ());
        assert!(!kept("old") && kept("newer") && kept("fifth"));
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn sweep_forgets_empty_streams_nobody_subscribes_to() {
        let h = MemoryHistory::new();
        let users = Arc::new(Subscribed("watched", Mutex::new(Vec::new())));
        h.set_users(users.clone());
        let expiring = HistoryOptions {
            ttl: Duration::from_millis(1),
            ..OPTS
        };
        for channel in ["watched", "unwatched"] {
            h.append(channel, publication(1), None, expiring, |_| ());
        }
        h.append("recent", publication(1), None, OPTS, |_| ());
        std::thread::sleep(Duration::from_millis(5));
        h.sweep(Duration::from_secs(600));
        assert_eq!(h.len(), 2, "the empty unwatched stream is gone");
        assert_eq!(h.forgotten.empty.load(Ordering::Relaxed), 1);
        assert_eq!(
            h.latest("watched").1.offset,
            1,
            "subscribers keep their stream"
        );
        assert!(users.1.lock().is_empty());
        // Idle past meta_ttl: forgotten even with subscribers, who are told.
        h.sweep(Duration::ZERO);
        assert!(h.is_empty());
        assert_eq!(*users.1.lock(), vec!["watched".to_string()]);
    }
}
