//! History: per channel a stream position (epoch, offset) and the most recent publications, and
//! the rules every history store answers by (memory here, Redis and NATS in the brokers).
//!
//! Offsets grow by one per publication in a channel. The epoch identifies one life of the stream: when
//! a stream is forgotten it starts again under a new epoch, so clients holding an old position learn
//! that they cannot recover.

mod memory;

pub use memory::{ForgetCounts, MemoryHistory, StreamUsers};

use herald_protocol::{Publication, StreamPosition};
use std::sync::Arc;
use std::time::Duration;

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

impl HistoryQuery {
    /// Whether a store must read entries at all: a `limit: 0` read without `since` needs only
    /// the stream position.
    pub fn needs_entries(&self) -> bool {
        self.since.is_some() || self.limit != Some(0)
    }

    /// How many stored entries after `since` a store needs to read, at most (`None`: all). A
    /// forward read from a position takes only what its limit keeps (a recovery reads its bound,
    /// not the whole stream): expiry drops the oldest first, so the first `limit` entries after
    /// `since` are what a full read would keep. At least one: the first entry is what proves the
    /// position can be continued.
    pub fn entries_to_read(&self) -> Option<usize> {
        match (&self.since, self.reverse) {
            (Some(_), false) => self.limit.map(|n| n.max(1)),
            _ => None,
        }
    }
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

/// A fresh random epoch, shared by every history store (memory, Redis, NATS).
pub(crate) fn new_epoch() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..8)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
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

/// History `limit` as Centrifugo reads it: 0 means only the stream position, negative means all.
pub fn history_limit(limit: i32) -> Option<usize> {
    if limit < 0 {
        None
    } else {
        Some(limit as usize)
    }
}

/// History `limit` of a client call, capped at the namespace's `client_history_max_limit` ("all"
/// included): one call cannot make the server build a reply of the whole stream.
pub fn client_history_limit(limit: i32, max: usize) -> Option<usize> {
    Some(history_limit(limit).map_or(max, |limit| limit.min(max)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn client_history_limits_are_capped_at_the_namespace_max() {
        assert_eq!(client_history_limit(-1, 300), Some(300), "all is capped");
        assert_eq!(client_history_limit(1000, 300), Some(300));
        assert_eq!(client_history_limit(20, 300), Some(20));
        assert_eq!(client_history_limit(0, 300), Some(0), "position only");
        assert_eq!(history_limit(-1), None, "the API is not capped");
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
