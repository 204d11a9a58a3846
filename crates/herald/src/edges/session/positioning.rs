//! Where a subscriber's stream starts, and what of the stream it has already been given. Pure: the
//! namespace's options, the client's wishes and what the history store answered come in as values;
//! the reads themselves are the session's (`subscribe.rs`).
//!
//! Whether a position can be continued (same epoch, not older than what history retains, not ahead
//! of the stream) is the history store's call: it answers `Unrecoverable` when it cannot, and the
//! subscriber then starts at the current position, told it was not recovered.

use crate::brokers::BrokerError;
use crate::core::history::{HistoryPage, HistoryQuery};
use crate::core::outbox::Segment;
use herald_protocol::{Publication, StreamPosition};
use indexmap::IndexMap;
use std::sync::Arc;

/// What a subscribe asks about the stream position, from the client or, for server-side
/// subscriptions, from the client's last known position at reconnect.
#[derive(Debug, Default, Clone)]
pub(super) struct PositionWish {
    /// Continue from `offset` in `epoch`.
    pub recover: bool,
    /// Wants to be able to recover later (the reply carries the position).
    pub recoverable: bool,
    /// Wants the position in the reply, to detect gaps.
    pub positioned: bool,
    pub offset: u64,
    pub epoch: String,
}

/// How a subscription to a channel with history starts.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// Nobody asked for a position: the reply carries none.
    Unpositioned,
    /// The reply carries the current position; `recoverable`: the client may recover from it later.
    Current { recoverable: bool },
    /// Continue from this position: the publications after it go with the reply.
    Recover(StreamPosition),
}

/// The start of a subscription to a channel with history. `force_recovery` makes every
/// subscription recoverable; a conflated channel always gives its position (its snapshot is one).
pub(super) fn plan_start(force_recovery: bool, conflated: bool, wish: &PositionWish) -> Start {
    let recoverable = force_recovery || wish.recoverable;
    let positioned = recoverable || wish.positioned || conflated;
    if !positioned {
        Start::Unpositioned
    } else if wish.recover && recoverable {
        Start::Recover(StreamPosition {
            offset: wish.offset,
            epoch: wish.epoch.clone(),
        })
    } else {
        Start::Current { recoverable }
    }
}

/// Where a new subscriber starts: the publications for its reply, the stream position, and
/// whether a requested recovery succeeded.
#[derive(Debug)]
pub(super) struct StartPoint {
    pub publications: Vec<Arc<Publication>>,
    pub position: StreamPosition,
    pub recovered: bool,
    /// A recovery cut by its bound (counted in `herald_client_recovery_capped_total`).
    pub capped: bool,
}

/// Why a start read gave no start point.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fallback {
    /// The position cannot be continued: start afresh (the current position, or the snapshot).
    Restart,
    /// The broker failed: the subscribe fails.
    Failed(BrokerError),
}

/// The most one recovery replays into a subscribe reply, so that a client cannot make the node
/// build a reply of a whole history (`history_size` × `max_publication_bytes`): the namespace's
/// `recovery_max_publications`, and the connection's outbox bound in bytes of publication data.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecoveryBound {
    pub publications: usize,
    pub bytes: usize,
}

/// The history read for a start: the oldest publications after `since` when recovering (at most
/// the bound's count), otherwise only the stream position.
pub(super) fn start_query(since: Option<StreamPosition>, bound: RecoveryBound) -> HistoryQuery {
    let limit = if since.is_some() {
        Some(bound.publications)
    } else {
        Some(0)
    };
    HistoryQuery {
        limit,
        since,
        reverse: false,
    }
}

/// Everything after `since`: a conflated channel's recovery keeps only the latest value of each
/// key, so it must read all of them (its reply is bounded by the channel's keys instead).
pub(super) fn full_query(since: Option<StreamPosition>) -> HistoryQuery {
    HistoryQuery {
        limit: None,
        since,
        reverse: false,
    }
}

/// A plain channel's start read (`start_query`). A recovery from `since` is recovered when what
/// it replays reaches the stream's top; cut by the bound (in count, or in bytes here), the
/// client gets the oldest missed publications and `recovered: false`, as Centrifugo answers.
pub(super) fn plain_start(
    read: Result<HistoryPage, BrokerError>,
    since: Option<u64>,
    bound: RecoveryBound,
) -> Result<StartPoint, Fallback> {
    match read {
        Ok(page) => {
            let mut publications = page.publications;
            let mut bytes = 0usize;
            let fit = publications
                .iter()
                .take_while(|p| {
                    bytes = bytes.saturating_add(p.data.get().len());
                    bytes <= bound.bytes
                })
                .count();
            publications.truncate(fit);
            let reached_top = match publications.last() {
                Some(last) => last.offset == page.position.offset,
                None => since == Some(page.position.offset),
            };
            Ok(StartPoint {
                publications,
                recovered: since.is_some() && reached_top,
                capped: since.is_some() && !reached_top,
                position: page.position,
            })
        }
        Err(e) => Err(fallback(e)),
    }
}

/// A start at `position` with nothing to replay and nothing recovered.
pub(super) fn fresh_start(position: StreamPosition) -> StartPoint {
    StartPoint {
        publications: Vec::new(),
        position,
        recovered: false,
        capped: false,
    }
}

/// A conflated channel's recovery read: only the latest value of each key changed since the
/// client's position is replayed (superseded values never are), so its state ends complete.
pub(super) fn conflated_recovery(
    read: Result<HistoryPage, BrokerError>,
    key_of: impl Fn(&Publication) -> Option<String>,
) -> Result<StartPoint, Fallback> {
    match read {
        Ok(page) => Ok(StartPoint {
            publications: latest_per_key(page.publications, key_of),
            position: page.position,
            recovered: true,
            capped: false,
        }),
        Err(e) => Err(fallback(e)),
    }
}

/// A conflated channel's snapshot (the latest value of every key) as a start point. The snapshot
/// is a complete state of this stream, so a recovery within the same epoch is recovered; across
/// an epoch change (history removed, streams restarted) the client's state may hold keys the
/// stream no longer knows.
pub(super) fn snapshot_start(
    latest: Vec<Arc<Publication>>,
    position: StreamPosition,
    since_epoch: Option<&str>,
) -> StartPoint {
    let recovered = since_epoch.is_some_and(|epoch| epoch == position.epoch);
    StartPoint {
        publications: latest,
        position,
        recovered,
        capped: false,
    }
}

fn fallback(e: BrokerError) -> Fallback {
    match e {
        BrokerError::Unrecoverable => Fallback::Restart,
        e => Fallback::Failed(e),
    }
}

/// The last publication of each key, and every publication without a key, in offset order.
pub(super) fn latest_per_key(
    publications: Vec<Arc<Publication>>,
    key_of: impl Fn(&Publication) -> Option<String>,
) -> Vec<Arc<Publication>> {
    let mut latest: IndexMap<String, Arc<Publication>> = IndexMap::new();
    let mut unkeyed = Vec::new();
    for publication in publications {
        match key_of(&publication) {
            Some(key) => {
                latest.shift_remove(&key);
                latest.insert(key, publication);
            }
            None => unkeyed.push(publication),
        }
    }
    let mut publications: Vec<_> = latest.into_values().chain(unkeyed).collect();
    publications.sort_by_key(|p| p.offset);
    publications
}

/// What of a publication item (one push, or a window of them) the subscriber still needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unseen {
    /// Nothing: the slot is unsubscribed, or the subscribe reply already carried it all.
    Nothing,
    /// All of it.
    All,
    /// A window straddling what the subscribe reply carried: only these, its newer publications.
    Newer(Vec<Segment>),
}

/// What a subscriber still needs of an item carrying publications up to `offset` (0: a stream
/// without offsets), given `seen`, the highest offset its subscribe reply carried (`None`: no
/// longer subscribed), and for a window the position of each publication in it.
pub(super) fn unseen(seen: Option<u64>, offset: u64, segments: Option<&[Segment]>) -> Unseen {
    let Some(seen) = seen else {
        return Unseen::Nothing;
    };
    if offset != 0 && offset <= seen {
        return Unseen::Nothing;
    }
    match segments {
        Some(segments)
            if segments
                .first()
                .is_some_and(|s| s.offset != 0 && s.offset <= seen) =>
        {
            Unseen::Newer(
                segments
                    .iter()
                    .filter(|s| s.offset > seen)
                    .copied()
                    .collect(),
            )
        }
        _ => Unseen::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn wish(recover: bool, recoverable: bool, positioned: bool) -> PositionWish {
        PositionWish {
            recover,
            recoverable,
            positioned,
            offset: 7,
            epoch: "e1".to_string(),
        }
    }

    fn position(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.to_string(),
        }
    }

    fn publication(offset: u64, key: &str) -> Arc<Publication> {
        let mut tags = BTreeMap::new();
        if !key.is_empty() {
            tags.insert("key".to_string(), key.to_string());
        }
        Arc::new(Publication {
            data: serde_json::value::RawValue::from_string("{}".to_string()).expect("json"),
            info: None,
            offset,
            tags,
            time: 0,
        })
    }

    fn key_tag(p: &Publication) -> Option<String> {
        p.tags.get("key").cloned()
    }

    fn offsets(publications: &[Arc<Publication>]) -> Vec<u64> {
        publications.iter().map(|p| p.offset).collect()
    }

    fn page(offsets: &[(u64, &str)], top: u64) -> HistoryPage {
        HistoryPage {
            publications: offsets.iter().map(|&(o, k)| publication(o, k)).collect(),
            position: position(top, "e1"),
        }
    }

    fn segment(offset: u64, start: u32) -> Segment {
        Segment {
            offset,
            start,
            end: start + 10,
        }
    }

    #[test]
    fn nothing_asked_is_unpositioned() {
        assert_eq!(
            plan_start(false, false, &wish(false, false, false)),
            Start::Unpositioned
        );
    }

    #[test]
    fn positioned_or_conflated_gives_the_current_position() {
        let not_recoverable = Start::Current { recoverable: false };
        assert_eq!(
            plan_start(false, false, &wish(false, false, true)),
            not_recoverable
        );
        assert_eq!(
            plan_start(false, true, &wish(false, false, false)),
            not_recoverable
        );
    }

    #[test]
    fn recoverable_without_recover_gives_a_recoverable_current_position() {
        let recoverable = Start::Current { recoverable: true };
        assert_eq!(
            plan_start(false, false, &wish(false, true, false)),
            recoverable
        );
        assert_eq!(
            plan_start(true, false, &wish(false, false, false)),
            recoverable
        );
    }

    #[test]
    fn recover_continues_from_the_clients_position() {
        let recover = Start::Recover(position(7, "e1"));
        assert_eq!(plan_start(false, false, &wish(true, true, false)), recover);
        // force_recovery makes the subscription recoverable, so recover works without it.
        assert_eq!(plan_start(true, false, &wish(true, false, false)), recover);
    }

    #[test]
    fn recover_without_recoverable_is_not_a_recovery() {
        // Only positioned (or conflated): the position, not a recovery.
        assert_eq!(
            plan_start(false, false, &wish(true, false, true)),
            Start::Current { recoverable: false }
        );
        assert_eq!(
            plan_start(false, false, &wish(true, false, false)),
            Start::Unpositioned
        );
    }

    const BOUND: RecoveryBound = RecoveryBound {
        publications: 300,
        bytes: 1 << 20,
    };

    #[test]
    fn the_start_query_reads_the_oldest_since_or_only_the_position() {
        let since = start_query(Some(position(3, "e1")), BOUND);
        assert_eq!(since.since, Some(position(3, "e1")));
        assert_eq!(since.limit, Some(300));
        assert!(!since.reverse);
        let current = start_query(None, BOUND);
        assert_eq!(current.since, None);
        assert_eq!(current.limit, Some(0));
        assert!(!current.reverse);
        assert_eq!(full_query(Some(position(3, "e1"))).limit, None);
    }

    #[test]
    fn a_plain_read_is_recovered_when_it_reaches_the_top() {
        let start = plain_start(Ok(page(&[(8, ""), (9, "")], 9)), Some(7), BOUND).expect("read");
        assert_eq!(offsets(&start.publications), [8, 9]);
        assert_eq!(start.position, position(9, "e1"));
        assert!(start.recovered && !start.capped);
        // Nothing missed: recovered with nothing to replay.
        let start = plain_start(Ok(page(&[], 9)), Some(9), BOUND).expect("read");
        assert!(start.recovered && !start.capped);
        let start = plain_start(Ok(page(&[], 9)), None, BOUND).expect("read");
        assert!(!start.recovered && !start.capped);
    }

    #[test]
    fn a_recovery_over_its_bound_replays_the_oldest_and_is_not_recovered() {
        // The read stopped at the count (8 and 9 of 8..=20): not the top.
        let start = plain_start(Ok(page(&[(8, ""), (9, "")], 20)), Some(7), BOUND).expect("read");
        assert_eq!(offsets(&start.publications), [8, 9]);
        assert_eq!(start.position, position(20, "e1"));
        assert!(!start.recovered && start.capped);
        // Each publication's data is 2 bytes ("{}"): a 5-byte budget keeps two of three.
        let small = RecoveryBound {
            publications: 300,
            bytes: 5,
        };
        let start =
            plain_start(Ok(page(&[(8, ""), (9, ""), (10, "")], 10)), Some(7), small).expect("read");
        assert_eq!(offsets(&start.publications), [8, 9]);
        assert!(!start.recovered && start.capped);
    }

    #[test]
    fn an_unrecoverable_position_restarts_and_a_broker_failure_fails() {
        // Another epoch, older than history retains, or ahead of the stream: all `Unrecoverable`.
        let read = Err(BrokerError::Unrecoverable);
        assert_eq!(
            plain_start(read, Some(1), BOUND).err(),
            Some(Fallback::Restart)
        );
        let down = || BrokerError::Unavailable("down".to_string());
        assert_eq!(
            plain_start(Err(down()), Some(1), BOUND).err(),
            Some(Fallback::Failed(down()))
        );
        let read = Err(BrokerError::Unrecoverable);
        assert_eq!(
            conflated_recovery(read, key_tag).err(),
            Some(Fallback::Restart)
        );
        assert_eq!(
            conflated_recovery(Err(down()), key_tag).err(),
            Some(Fallback::Failed(down()))
        );
    }

    #[test]
    fn a_fresh_start_replays_nothing_and_recovers_nothing() {
        let start = fresh_start(position(5, "e2"));
        assert!(start.publications.is_empty());
        assert_eq!(start.position, position(5, "e2"));
        assert!(!start.recovered);
    }

    #[test]
    fn a_conflated_recovery_replays_the_latest_value_of_each_key() {
        let read = Ok(page(&[(4, "a"), (5, "b"), (6, "a"), (7, ""), (8, "b")], 8));
        let start = conflated_recovery(read, key_tag).expect("read");
        assert_eq!(offsets(&start.publications), [6, 7, 8]);
        assert!(start.recovered);
    }

    #[test]
    fn latest_per_key_keeps_unkeyed_publications_in_offset_order() {
        let publications = [(1, ""), (2, "k"), (3, ""), (4, "k")]
            .iter()
            .map(|&(o, k)| publication(o, k))
            .collect();
        assert_eq!(offsets(&latest_per_key(publications, key_tag)), [1, 3, 4]);
    }

    #[test]
    fn a_snapshot_is_recovered_only_within_the_clients_epoch() {
        let snapshot = || vec![publication(3, "a")];
        assert!(snapshot_start(snapshot(), position(3, "e1"), Some("e1")).recovered);
        // Epoch mismatch: the client's state may hold keys this stream does not know.
        assert!(!snapshot_start(snapshot(), position(3, "e2"), Some("e1")).recovered);
        // Not recovering: a fresh snapshot.
        let start = snapshot_start(snapshot(), position(3, "e1"), None);
        assert!(!start.recovered);
        assert_eq!(offsets(&start.publications), [3]);
    }

    #[test]
    fn nothing_is_unseen_on_an_unsubscribed_slot() {
        assert_eq!(unseen(None, 5, None), Unseen::Nothing);
        assert_eq!(unseen(None, 0, None), Unseen::Nothing);
    }

    #[test]
    fn offsets_the_reply_carried_are_skipped() {
        assert_eq!(unseen(Some(5), 5, None), Unseen::Nothing);
        assert_eq!(unseen(Some(5), 4, None), Unseen::Nothing);
        assert_eq!(unseen(Some(5), 6, None), Unseen::All);
        // Offset 0: a stream without offsets, always delivered.
        assert_eq!(unseen(Some(5), 0, None), Unseen::All);
    }

    #[test]
    fn a_window_straddling_the_reply_gives_only_its_newer_publications() {
        let window = [
            segment(4, 0),
            segment(5, 10),
            segment(6, 20),
            segment(7, 30),
        ];
        assert_eq!(
            unseen(Some(5), 7, Some(&window)),
            Unseen::Newer(vec![segment(6, 20), segment(7, 30)])
        );
    }

    #[test]
    fn a_window_after_the_reply_goes_whole() {
        let window = [segment(6, 0), segment(7, 10)];
        assert_eq!(unseen(Some(5), 7, Some(&window)), Unseen::All);
        // Segments without offsets are not compared.
        let window = [segment(0, 0), segment(0, 10)];
        assert_eq!(unseen(Some(5), 0, Some(&window)), Unseen::All);
        assert_eq!(unseen(Some(5), 7, Some(&[])), Unseen::All);
    }
}
