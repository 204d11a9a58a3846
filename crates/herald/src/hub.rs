//! Node-local routing: which local connections subscribe to which channel, and which connections
//! belong to which user. Publications arrive from the broker already positioned; the hub encodes each
//! one once and queues the shared bytes on every subscriber's outbox.

use crate::broker::{BrokerHandler, Control};
use crate::metrics::Metrics;
use crate::outbox::{OutItem, Outbox, Pushed};
use herald_protocol::{encode_publication_push, encode_push, ClientInfo, Publication, PushBody};
use indexmap::IndexMap;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

/// What other tasks know of one connection.
pub struct SessionHandle {
    /// Node-unique number, cheaper than the client id as a map key.
    pub seq: u64,
    pub client: String,
    pub user: String,
    pub outbox: Outbox,
}

struct Subscriber {
    handle: Arc<SessionHandle>,
    slot: u32,
    join_leave: bool,
}

type ChannelSubscribers = IndexMap<u64, Subscriber>;

const SHARDS: usize = 64;

pub struct Hub {
    channels: Vec<RwLock<HashMap<String, ChannelSubscribers>>>,
    sessions: RwLock<HashMap<String, Arc<SessionHandle>>>,
    users: RwLock<HashMap<String, Vec<Arc<SessionHandle>>>>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Hub {
        Hub {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sessions: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
            metrics,
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, ChannelSubscribers>> {
        &self.channels[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    pub fn add_session(&self, handle: Arc<SessionHandle>) {
        self.sessions
            .write()
            .insert(handle.client.clone(), handle.clone());
        self.users
            .write()
            .entry(handle.user.clone())
            .or_default()
            .push(handle);
    }

    pub fn remove_session(&self, handle: &SessionHandle) {
        self.sessions.write().remove(&handle.client);
        let mut users = self.users.write();
        if let Some(list) = users.get_mut(&handle.user) {
            list.retain(|h| h.seq != handle.seq);
            if list.is_empty() {
                users.remove(&handle.user);
            }
        }
    }

    /// Registers a subscriber; returns true when it is the channel's first on this node.
    pub fn add_subscriber(
        &self,
        channel: &str,
        handle: &Arc<SessionHandle>,
        slot: u32,
        join_leave: bool,
    ) -> bool {
        let mut shard = self.shard(channel).write();
        let first = !shard.contains_key(channel);
        let subs = shard.entry(channel.to_string()).or_default();
        subs.insert(
            handle.seq,
            Subscriber {
                handle: handle.clone(),
                slot,
                join_leave,
            },
        );
        self.metrics.subscriptions.inc();
        if first {
            self.metrics.channels.inc();
        }
        first
    }

    /// Unregisters a subscriber; returns true when the channel has no subscriber left on this node.
    pub fn remove_subscriber(&self, channel: &str, seq: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(subs) = shard.get_mut(channel) else {
            return false;
        };
        if subs.swap_remove(&seq).is_some() {
            self.metrics.subscriptions.dec();
        }
        if subs.is_empty() {
            shard.remove(channel);
            self.metrics.channels.dec();
            return true;
        }
        false
    }

    fn fan_out(&self, channel: &str, make: impl Fn(&Subscriber) -> Option<OutItem>) {
        let shard = self.shard(channel).read();
        let Some(subs) = shard.get(channel) else {
            return;
        };
        let mut delivered = 0u64;
        let mut overflowed = 0u64;
        for sub in subs.values() {
            let Some(item) = make(sub) else { continue };
            match sub.handle.outbox.push(item) {
                Pushed::Queued => delivered += 1,
                Pushed::Overflowed | Pushed::Dropped => overflowed += 1,
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        if overflowed > 0 {
            self.metrics.outbox_drops.inc_by(overflowed);
        }
    }

    pub fn session(&self, client: &str) -> Option<Arc<SessionHandle>> {
        self.sessions.read().get(client).cloned()
    }

    /// Connections of a user (all of them, or the one with `client` id).
    pub fn user_sessions(&self, user: &str, client: Option<&str>) -> Vec<Arc<SessionHandle>> {
        let users = self.users.read();
        let Some(list) = users.get(user) else {
            return Vec::new();
        };
        list.iter()
            .filter(|h| client.is_none_or(|c| h.client == c))
            .cloned()
            .collect()
    }

    pub fn num_clients(&self) -> usize {
        self.sessions.read().len()
    }

    pub fn num_users(&self) -> usize {
        self.users.read().len()
    }

    /// Channels with local subscribers matching a glob pattern, with their subscriber counts.
    pub fn channels(&self, pattern: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in &self.channels {
            for (name, subs) in shard.read().iter() {
                if crate::channel::pattern_matches(pattern, name) {
                    out.push((name.clone(), subs.len()));
                }
            }
        }
        out.sort();
        out
    }

    pub fn num_channels(&self) -> usize {
        self.channels.iter().map(|s| s.read().len()).sum()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.channels
            .iter()
            .map(|s| s.read().values().map(|subs| subs.len()).sum::<usize>())
            .sum()
    }
}

impl BrokerHandler for Hub {
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>) {
        let bytes = encode_publication_push(channel, &publication);
        let offset = publication.offset;
        self.fan_out(channel, |sub| {
            Some(OutItem::Publication {
                slot: sub.slot,
                offset,
                bytes: bytes.clone(),
            })
        });
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        let mut out = Vec::new();
        encode_push(channel, &PushBody::Join(info), &mut out);
        let bytes = bytes::Bytes::from(out);
        self.fan_out(channel, |sub| {
            sub.join_leave.then(|| OutItem::Push {
                slot: sub.slot,
                bytes: bytes.clone(),
            })
        });
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        let mut out = Vec::new();
        encode_push(channel, &PushBody::Leave(info), &mut out);
        let bytes = bytes::Bytes::from(out);
        self.fan_out(channel, |sub| {
            sub.join_leave.then(|| OutItem::Push {
                slot: sub.slot,
                bytes: bytes.clone(),
            })
        });
    }

    fn handle_control(&self, control: &Control) {
        let (user, client) = match control {
            Control::Subscribe { user, client, .. }
            | Control::Unsubscribe { user, client, .. }
            | Control::Disconnect { user, client, .. } => (user, client.as_deref()),
        };
        let targets = if user.is_empty() {
            client.and_then(|c| self.session(c)).into_iter().collect()
        } else {
            self.user_sessions(user, client)
        };
        for handle in targets {
            handle.outbox.push(OutItem::Control(control.clone()));
        }
    }
}
