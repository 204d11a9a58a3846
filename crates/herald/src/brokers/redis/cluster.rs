//! A Redis Cluster's shards: the slot map, which primaries are lost, and what follows from a
//! probe — a lost shard's channels fail at once ([`BrokerError::ShardUnavailable`]) and their
//! subscribers are told; a returned shard's channels are subscribed again and checked for gaps;
//! a changed slot map or a shard connection lost and restored by itself rebuilds everything.

use super::conn::{self, SlotRange};
use super::Inner;
use crate::brokers::BrokerError;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;

/// A Redis Cluster's shards as the last probe saw them (empty on a single Redis, or while the
/// broker is down).
#[derive(Default)]
pub(super) struct Shards {
    /// The slot map, from `CLUSTER SLOTS`.
    pub(super) ranges: Vec<SlotRange>,
    /// Primaries that did not serve at the last probe: their slots' channels fail.
    pub(super) down: HashSet<String>,
}

impl Shards {
    fn primary_of(&self, slot: u16) -> Option<&str> {
        self.ranges
            .iter()
            .find(|r| (r.first..=r.last).contains(&slot))
            .map(|r| r.primary.as_str())
    }

    pub(super) fn primaries(&self) -> Vec<String> {
        let mut primaries: Vec<String> = self.ranges.iter().map(|r| r.primary.clone()).collect();
        primaries.sort();
        primaries.dedup();
        primaries
    }
}

impl Inner {
    /// The lost primary serving `key`'s slot, if it is lost.
    fn lost_primary(&self, key: &str) -> Option<String> {
        let shards = self.shards.lock();
        if shards.down.is_empty() {
            return None;
        }
        let primary = shards.primary_of(conn::key_slot(key.as_bytes()))?;
        shards.down.contains(primary).then(|| primary.to_string())
    }

    /// Fails at once, naming the condition, for a key on a lost cluster shard.
    pub(super) fn key_available(&self, key: &str) -> Result<(), BrokerError> {
        match self.lost_primary(key) {
            Some(primary) => Err(BrokerError::ShardUnavailable(format!(
                "{key}: Redis Cluster primary {primary} is lost"
            ))),
            None => Ok(()),
        }
    }

    /// [`Inner::key_available`] for a channel (all its keys share one slot).
    pub(super) fn shard_available(&self, channel: &str) -> Result<(), BrokerError> {
        self.key_available(&self.keys.pubsub(channel))
    }

    pub(super) fn on_primary(&self, key: &str, primary: &str) -> bool {
        self.shards
            .lock()
            .primary_of(conn::key_slot(key.as_bytes()))
            == Some(primary)
    }

    /// One of the current cluster connection's shard connections was lost (its reader has
    /// delivered what it read before). Which shard's is unknown here: the probe finds out. A
    /// shard that stays lost fails its own channels; a connection that came back by itself may
    /// have dropped messages of any channel, so everything is rebuilt.
    pub(super) fn shard_connection_lost(&self) {
        self.disconnected.store(true, Ordering::SeqCst);
        self.probe.notify_one();
    }

    /// A push other than a message or a lost shard connection from a cluster connection of
    /// `generation`. A slot moved away from a subscribed channel (the shard sends `sunsubscribe`)
    /// may have dropped messages: the connection is rebuilt, which resubscribes every channel and
    /// checks it for gaps.
    pub(super) fn on_cluster_push(&self, generation: u64, push: &redis::PushInfo) {
        if let Some(name) = conn::sharded_unsubscribe(push) {
            // Our own unsubscribe removed the channel from the set before sending SUNSUBSCRIBE.
            let ours = name == self.keys.control()
                || self
                    .keys
                    .channel_of(&name)
                    .is_some_and(|c| self.subscribed.lock().contains(&c));
            if ours {
                self.fail(generation, "a subscribed channel's slot moved");
            }
        }
    }

    /// Probes every primary of the cluster and follows what changed: a lost shard's channels
    /// are dropped and their subscribers told; a returned shard's channels are subscribed again
    /// and checked for gaps. `Err`: the whole connection must be rebuilt (no primary serves, the
    /// slot map changed, or a shard connection was lost and restored by itself).
    pub(super) async fn probe_shards(&self) -> Result<(), String> {
        let known = self.shards.lock().ranges.clone();
        let ranges = if known.is_empty() {
            self.first_slot_map().await?
        } else {
            known
        };
        let primaries = Shards {
            ranges: ranges.clone(),
            down: HashSet::new(),
        }
        .primaries();
        // Taken before the probes: a loss reported meanwhile is seen by the next probe.
        let disconnected = self.disconnected.swap(false, Ordering::SeqCst);
        // All at once, each within the timeouts: a stalled primary delays no verdict.
        let serving: Vec<bool> = futures_util::future::join_all(
            primaries
                .iter()
                .map(|primary| self.on_node(primary, conn::serves)),
        )
        .await
        .into_iter()
        .map(|r| matches!(r, Ok(true)))
        .collect();
        let Some(witness) = primaries
            .iter()
            .zip(&serving)
            .find_map(|(primary, up)| up.then_some(primary))
        else {
            return Err("no Redis Cluster primary serves".into());
        };
        // The slot map as a serving primary sees it: a change (a failover, a slot moved) rebuilds
        // the connection, which follows the new map.
        let now = self.on_node(witness, conn::cluster_slots).await;
        match now.map(|now| conn::with_queried_host(now, witness)) {
            Ok(now) if now == ranges => {}
            Ok(_) => return Err("the cluster's slot map changed".into()),
            Err(e) => return Err(format!("CLUSTER SLOTS failed: {e}")),
        }
        let down_now: HashSet<String> = primaries
            .iter()
            .zip(&serving)
            .filter(|(_, up)| !**up)
            .map(|(primary, _)| primary.clone())
            .collect();
        let (lost, returned) = {
            let mut shards = self.shards.lock();
            shards.ranges = ranges;
            let lost: Vec<String> = down_now.difference(&shards.down).cloned().collect();
            let returned: Vec<String> = shards.down.difference(&down_now).cloned().collect();
            (lost, returned)
        };
        if disconnected && lost.is_empty() {
            return Err("a cluster shard connection was lost".into());
        }
        for primary in &lost {
            self.lose_shard(primary).await;
        }
        for primary in &returned {
            self.restore_shard(primary).await;
        }
        self.count_shards();
        Ok(())
    }

    /// The slot map from the first seed that answers.
    async fn first_slot_map(&self) -> Result<Vec<SlotRange>, String> {
        let mut errors = Vec::new();
        for seed in self.cluster.iter().flatten() {
            let address = redis::IntoConnectionInfo::into_connection_info(seed.as_str())
                .ok()
                .and_then(|info| conn::address_of(&info));
            let Some(address) = address else {
                continue;
            };
            match self.on_node(&address, conn::cluster_slots).await {
                Ok(ranges) if !ranges.is_empty() => {
                    return Ok(conn::with_queried_host(ranges, &address))
                }
                Ok(_) => errors.push(format!("{address}: no slots served")),
                Err(e) => errors.push(format!("{address}: {e}")),
            }
        }
        Err(format!("no slot map: {}", errors.join("; ")))
    }

    /// Runs `command` on the cluster node at `address` through its probe connection (opened
    /// when missing, dropped on failure), within the connect and command timeouts.
    async fn on_node<T, F>(
        &self,
        address: &str,
        command: impl FnOnce(redis::aio::MultiplexedConnection) -> F,
    ) -> Result<T, String>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let cached = self.probe_conns.lock().get(address).cloned();
        let conn = match cached {
            Some(conn) => conn,
            None => {
                let info = self
                    .seed_info
                    .as_ref()
                    .and_then(|seed| conn::node_info(seed, address))
                    .ok_or_else(|| format!("{address}: not a cluster node address"))?;
                let client = redis::Client::open(info).map_err(|e| e.to_string())?;
                let connect = client.get_multiplexed_async_connection();
                let conn = match tokio::time::timeout(self.config.connect_timeout, connect).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("connect timed out".into()),
                };
                self.probe_conns
                    .lock()
                    .insert(address.to_string(), conn.clone());
                conn
            }
        };
        let result = match tokio::time::timeout(self.config.command_timeout, command(conn)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        self.probe_conns.lock().remove(address);
        Err(result)
    }

    /// Marks `primary` lost: commands for its slots fail at once, its channels are no longer
    /// listened to and their subscribers are told (they resubscribe once it returns).
    async fn lose_shard(&self, primary: &str) {
        let _ops = self.subscribe_ops.lock().await;
        self.shards.lock().down.insert(primary.to_string());
        self.count_shards();
        let lost: Vec<String> = {
            let mut subscribed = self.subscribed.lock();
            let lost: Vec<String> = subscribed
                .iter()
                .filter(|c| self.on_primary(&self.keys.pubsub(c), primary))
                .cloned()
                .collect();
            for channel in &lost {
                subscribed.remove(channel);
            }
            lost
        };
        if self.on_primary(&self.keys.control(), primary) {
            self.control_subscribed.store(false, Ordering::SeqCst);
        }
        tracing::warn!(
            %primary,
            channels = lost.len(),
            "redis broker: a cluster shard is lost; its channels fail until it returns"
        );
        for channel in &lost {
            self.report_gap(channel);
        }
    }

    /// `primary` serves again: its channels with local subscribers (and the control channel)
    /// are subscribed again and checked for gaps. It stays lost if that fails.
    async fn restore_shard(&self, primary: &str) {
        let ops = self.subscribe_ops.lock().await;
        let channels: Vec<String> = self
            .handler()
            .map(|h| h.local_channels())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                self.on_primary(&self.keys.pubsub(c), primary)
                    && !self.subscribed.lock().contains(c)
            })
            .collect();
        let mut names: Vec<String> = channels.iter().map(|c| self.keys.pubsub(c)).collect();
        let control = self.on_primary(&self.keys.control(), primary)
            && !self.control_subscribed.load(Ordering::SeqCst);
        if control {
            names.push(self.keys.control());
        }
        if !names.is_empty() {
            let Some(mut sink) = self.sink.lock().clone() else {
                return;
            };
            let bound = self.config.command_timeout * (1 + names.len() as u32 / 500);
            match tokio::time::timeout(bound, sink.subscribe(&names)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%primary, error = %e, "redis broker: shard back, resubscribe failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%primary, "redis broker: shard back, resubscribe timed out");
                    return;
                }
            }
        }
        self.subscribed.lock().extend(channels.iter().cloned());
        if control {
            self.control_subscribed.store(true, Ordering::SeqCst);
        }
        self.shards.lock().down.remove(primary);
        self.count_shards();
        drop(ops);
        tracing::info!(%primary, channels = channels.len(), "redis broker: a lost cluster shard is back");
        if let Err(e) = self.check_gaps(&channels).await {
            tracing::warn!(%primary, error = %e, "redis broker: gap check failed, telling subscribers");
            for channel in &channels {
                self.report_gap(channel);
            }
        }
        // Presence written on it before it was lost may be gone.
        if let Err(e) = self.refresh_presence().await {
            tracing::debug!(error = %e, "redis broker: presence refresh after a shard returned");
        }
    }

    /// Sets `broker_shards{state}` from the last probe.
    pub(super) fn count_shards(&self) {
        let Some(metrics) = self.metrics.get().filter(|_| self.cluster.is_some()) else {
            return;
        };
        let (total, down) = {
            let shards = self.shards.lock();
            (shards.primaries().len(), shards.down.len())
        };
        let gauge = |state| {
            metrics
                .broker_shards
                .get_or_create(&crate::core::metrics::StateLabel { state })
                .set((if state == "down" { down } else { total - down }) as i64)
        };
        gauge("up");
        gauge("down");
    }
}
