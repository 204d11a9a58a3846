//! In-memory history: per channel a stream position (epoch, offset) and the most recent publications.
//!
//! Offsets grow by one per publication in a channel. The epoch identifies one life of the stream: when
//! a stream is forgotten (no publication for `history_meta_ttl`, or removed through the API) it starts
//! again under a new epoch, so clients holding an old position learn that they cannot recover.

use herald_protocol::{Publication, StreamPosition};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a channel keeps history.
#[derive(Debug, Clone, Copy)]
pub struct HistoryOptions {
    pub size: usize,
    pub ttl: Duration,
    pub meta_ttl: Duration,
    /// For conflated channels: how many keys' latest values to remember (0: not conflated).
    pub max_keys: usize,
}

/// A history read: everything after `since` (or the whole retained history), oldest first unless
/// `reverse`, at most `limit` items (`None`: no limit, `Some(0)`: only the stream position).
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub since: Option<StreamPosition>,
    pub limit: Option<usize>,
    pub reverse: bool,
}

#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    pub publications: Vec<Arc<Publication>>,
    pub position: StreamPosition,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistoryError {
    /// The requested position is from another epoch, or older than what history retains.
    #[error("unrecoverable position")]
    Unrecoverable,
}

struct Stream {
    epoch: String,
    offset: u64,
    items: VecDeque<(Instant, Arc<Publication>)>,
    touched: Instant,
    /// Conflated channels: the latest publication of each key (bounded by `max_keys`).
    latest: HashMap<String, Arc<Publication>>,
}

impl Stream {
    fn new(now: Instant) -> Stream {
        Stream {
            epoch: new_epoch(),
            offset: 0,
            items: VecDeque::new(),
            touched: now,
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

/// A fresh random epoch, shared by every history store (memory, Redis, NATS).
pub(crate) fn new_epoch() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

const SHARDS: usize = 64;

pub struct MemoryHistory {
    shards: Vec<Mutex<HashMap<String, Arc<Mutex<Stream>>>>>,
    hasher: RandomState,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHistory {
    pub fn new() -> MemoryHistory {
        MemoryHistory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, Arc<Mutex<Stream>>>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    fn stream(&self, channel: &str, now: Instant) -> Arc<Mutex<Stream>> {
        let mut shard = self.shard(channel).lock();
        shard
            .entry(channel.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new(now))))
            .clone()
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
        let stream = self.stream(channel, now);
        let mut stream = stream.lock();
        stream.offset += 1;
        stream.touched = now;
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
    pub fn read(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, HistoryError> {
        let now = Instant::now();
        let stream = self.stream(channel, now);
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
                    stream
                        .items
                        .iter()
                        .filter(|(_, p)| p.offset > since.offset)
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
        let now = Instant::now();
        let stream = self.stream(channel, now);
        let stream = stream.lock();
        let mut latest: Vec<Arc<Publication>> = stream.latest.values().cloned().collect();
        latest.sort_by_key(|p| p.offset);
        (latest, stream.position())
    }

    /// Forgets a channel's publications; the stream continues under a new epoch.
    pub fn remove(&self, channel: &str) {
        self.shard(channel).lock().remove(channel);
    }

    /// Drops streams idle for longer than `meta_ttl` (run periodically).
    pub fn sweep(&self, meta_ttl: Duration) {
        let now = Instant::now();
        for shard in &self.shards {
            shard
                .lock()
                .retain(|_, stream| now.duration_since(stream.lock().touched) < meta_ttl);
        }
    }
}

/// A page of a broker's stored history (Redis, NATS), by the rules the memory history follows:
/// `since` from another epoch, ahead of the stream, or older than what is kept is
/// `Unrecoverable`; items older than `history_ttl` are gone; then `reverse` and `limit`.
pub(crate) fn stored_page(
    position: StreamPosition,
    items: Vec<Publication>,
    query: &HistoryQuery,
    ttl: Duration,
    now_millis: i64,
) -> Result<HistoryPage, HistoryError> {
    let ttl = ttl.as_millis() as i64;
    let mut publications: Vec<Arc<Publication>> = items
        .into_iter()
        .filter(|p| p.time == 0 || now_millis - p.time < ttl)
        .map(Arc::new)
        .collect();
    if let Some(since) = &query.since {
        if since.epoch != position.epoch || since.offset > position.offset {
            return Err(HistoryError::Unrecoverable);
        }
        publications.retain(|p| p.offset > since.offset);
        if since.offset < position.offset
            && publications.first().map(|p| p.offset) != Some(since.offset + 1)
        {
            return Err(HistoryError::Unrecoverable);
        }
    }
    Ok(page(publications, position, query))
}

/// The page a query asks for, from the publications it may see (oldest first): `reverse`, then
/// `limit`.
fn page(
    mut publications: Vec<Arc<Publication>>,
    position: StreamPosition,
    query: &HistoryQuery,
) -> HistoryPage {
    if query.reverse {
        publications.reverse();
    }
    if let Some(limit) = query.limit {
        publications.truncate(limit);
    }
    HistoryPage {
        publications,
        position,
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

    fn stored(offset: u64, time: i64) -> Publication {
        Publication {
            data: RawValue::from_string("1".into()).unwrap(),
            info: None,
            offset,
            tags: Default::default(),
            time,
        }
    }

    #[test]
    fn pages_follow_the_recovery_rules() {
        let position = |offset| StreamPosition {
            offset,
            epoch: "e".into(),
        };
        let items = || (3..=5).map(|o| stored(o, 1000)).collect::<Vec<_>>();
        let ttl = Duration::from_secs(60);
        let since = |offset: u64, epoch: &str| HistoryQuery {
            since: Some(StreamPosition {
                offset,
                epoch: epoch.into(),
            }),
            ..Default::default()
        };
        let offsets = |p: HistoryPage| p.publications.iter().map(|p| p.offset).collect::<Vec<_>>();
        let all = stored_page(position(5), items(), &HistoryQuery::default(), ttl, 1000).unwrap();
        assert_eq!(offsets(all), vec![3, 4, 5]);
        assert_eq!(
            offsets(stored_page(position(5), items(), &since(3, "e"), ttl, 1000).unwrap()),
            vec![4, 5]
        );
        assert!(
            offsets(stored_page(position(5), items(), &since(5, "e"), ttl, 1000).unwrap())
                .is_empty()
        );
        for bad in [since(1, "e"), since(6, "e"), since(4, "x")] {
            assert_eq!(
                stored_page(position(5), items(), &bad, ttl, 1000).unwrap_err(),
                HistoryError::Unrecoverable
            );
        }
        let newest_two = HistoryQuery {
            limit: Some(2),
            reverse: true,
            ..Default::default()
        };
        assert_eq!(
            offsets(stored_page(position(5), items(), &newest_two, ttl, 1000).unwrap()),
            vec![5, 4]
        );
        // Expired items are gone: recovering across them is impossible.
        assert_eq!(
            stored_page(position(5), items(), &since(3, "e"), ttl, 1000 + 60_000).unwrap_err(),
            HistoryError::Unrecoverable
        );
    }
}
