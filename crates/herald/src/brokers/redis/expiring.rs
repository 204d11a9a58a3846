//! Expiring hashes (presence, the node registry): a hash of values beside a zset of expiry times
//! in Redis time, written again by their owner, so the entries of a dead node vanish within their
//! TTL.

use super::{millis, Inner};
use crate::brokers::BrokerError;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

impl Inner {
    /// Refreshes `entries` ((zset, hash, member, value)) with `ttl`: one script call per
    /// expiring hash and chunk (a call's keys must share a slot on a cluster), several at once.
    pub(super) async fn touch(
        &self,
        entries: &[(String, String, String, String)],
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        type Entry = (String, String, String, String);
        let mut groups: HashMap<&str, Vec<Entry>> = HashMap::new();
        for entry in entries {
            groups
                .entry(entry.0.as_str())
                .or_default()
                .push(entry.clone());
        }
        // Owned chunks: futures borrowing from a local map trip the Send checks of async traits.
        let calls: Vec<Vec<Entry>> = groups
            .into_values()
            .flat_map(|group| {
                group
                    .chunks(200)
                    .map(|chunk| chunk.to_vec())
                    .collect::<Vec<_>>()
            })
            .collect();
        let results: Vec<Result<(), BrokerError>> = futures_util::stream::iter(calls)
            .map(|chunk| async move {
                if let Some((zset, ..)) = chunk.first() {
                    self.key_available(zset)?;
                }
                let (generation, mut conn) = self.conn()?;
                let mut invocation = self.scripts.touch.prepare_invoke();
                invocation.arg(millis(ttl));
                for (zset, hash, member, value) in &chunk {
                    invocation.key(zset).key(hash).arg(member).arg(value);
                }
                self.timed(generation, invocation.invoke_async::<i64>(&mut conn))
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(32)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// The live members of an expiring hash.
    pub(super) async fn live(
        &self,
        zset: &str,
        hash: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, BrokerError> {
        self.key_available(zset)?;
        let (generation, mut conn) = self.conn()?;
        let mut invocation = self.scripts.live.key(zset);
        invocation.key(hash);
        let flat: Vec<Vec<u8>> = self
            .timed(generation, invocation.invoke_async(&mut conn))
            .await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(member), Some(value)) = (it.next(), it.next()) {
            out.push((String::from_utf8_lossy(&member).into_owned(), value));
        }
        Ok(out)
    }
}
