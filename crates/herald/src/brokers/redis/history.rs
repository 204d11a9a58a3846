//! History in Redis: a stream per channel beside its meta hash (epoch, last offset) and, for
//! conflated channels, the latest value per key; reads and removals go through the scripts.

use super::{millis, Inner};
use crate::brokers::wire;
use crate::brokers::{unavailable, BrokerError};
use crate::core::history::{new_epoch, HistoryOptions, HistoryPage, HistoryQuery};
use herald_protocol::{Publication, StreamPosition};
use std::sync::Arc;
use std::time::Duration;

impl Inner {
    /// Reads a stream position and, optionally, its entries after `since` (at most `count`).
    async fn read_stream(
        &self,
        channel: &str,
        since: Option<u64>,
        entries: bool,
        count: Option<usize>,
        meta_ttl: Duration,
    ) -> Result<Positioned, BrokerError> {
        let (generation, mut conn) = self.conn()?;
        let mut invocation = self.scripts.history.key(self.keys.stream(channel));
        invocation
            .key(self.keys.meta(channel))
            .arg(millis(meta_ttl))
            .arg(since.map(|s| s.to_string()).unwrap_or_default())
            .arg(if entries { "1" } else { "0" })
            .arg(count.map(|n| n.to_string()).unwrap_or_default());
        let flat: Vec<Vec<u8>> = self
            .timed(generation, invocation.invoke_async(&mut conn))
            .await?;
        parse_positioned(flat, |id| id.split('-').next().and_then(|o| o.parse().ok()))
    }

    /// [`Broker::history`](crate::brokers::Broker::history) of a channel.
    pub(super) async fn history_page(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        self.shard_available(channel)?;
        let since = query.since.as_ref();
        let (entries, count) = (query.needs_entries(), query.entries_to_read());
        let (position, items) = self
            .read_stream(
                channel,
                since.map(|s| s.offset),
                entries,
                count,
                options.meta_ttl,
            )
            .await?;
        self.note_read(channel, &position);
        let publications = items
            .into_iter()
            .map(|(offset, payload)| wire::stored(offset, &payload))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        // Items older than `history_ttl` are dropped there, as in the memory broker (the
        // stream's own TTL only bounds how long an idle stream is kept).
        Ok(crate::core::history::stored_page(
            position,
            publications,
            query,
            options.ttl,
            crate::core::clock::unix_millis(),
        )?)
    }

    /// Drops a channel's stream and latest values; its position restarts under a new epoch.
    pub(super) async fn remove_stream(&self, channel: &str) -> Result<(), BrokerError> {
        self.shard_available(channel)?;
        let (generation, mut conn) = self.conn()?;
        let mut invocation = self.scripts.remove.key(self.keys.stream(channel));
        invocation
            .key(self.keys.meta(channel))
            .key(self.keys.latest_keys(channel))
            .key(self.keys.latest(channel))
            .arg(millis(self.meta_ttl))
            .arg(new_epoch());
        self.timed(generation, invocation.invoke_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    /// The latest publication of every key of a conflated channel (oldest first) and its position.
    pub(super) async fn latest_values(
        &self,
        channel: &str,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), BrokerError> {
        self.shard_available(channel)?;
        let (generation, mut conn) = self.conn()?;
        let mut invocation = self.scripts.latest.key(self.keys.meta(channel));
        invocation
            .key(self.keys.latest_keys(channel))
            .key(self.keys.latest(channel))
            .arg(millis(self.meta_ttl));
        let flat: Vec<Vec<u8>> = self
            .timed(generation, invocation.invoke_async(&mut conn))
            .await?;
        let (position, items) = parse_positioned(flat, |score| score.parse().ok())?;
        self.note_read(channel, &position);
        let publications = items
            .into_iter()
            .map(|(offset, payload)| wire::stored(offset, &payload).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        Ok((publications, position))
    }
}

/// A stream position and stored payloads with their offsets.
type Positioned = (StreamPosition, Vec<(u64, Vec<u8>)>);

/// Parses {epoch, offset, id1, payload1, ...}; `offset_of` reads an item's offset from its id.
fn parse_positioned(
    flat: Vec<Vec<u8>>,
    offset_of: impl Fn(&str) -> Option<u64>,
) -> Result<Positioned, BrokerError> {
    let mut it = flat.into_iter();
    let epoch = it
        .next()
        .map(|e| String::from_utf8_lossy(&e).into_owned())
        .ok_or_else(|| unavailable("malformed script reply"))?;
    let offset = it
        .next()
        .and_then(|o| String::from_utf8_lossy(&o).parse::<u64>().ok())
        .ok_or_else(|| unavailable("malformed script reply"))?;
    let mut items = Vec::new();
    while let (Some(id), Some(payload)) = (it.next(), it.next()) {
        let offset = offset_of(&String::from_utf8_lossy(&id))
            .ok_or_else(|| unavailable("malformed stream id"))?;
        items.push((offset, payload));
    }
    Ok((StreamPosition { offset, epoch }, items))
}
