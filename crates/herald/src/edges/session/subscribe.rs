//! Subscriptions: the `subscribe`, `unsubscribe` and `sub_refresh` commands, and joining and
//! leaving a channel for client, token and server-side subscriptions alike (hub, broker,
//! presence, join/leave events, and where the subscriber's stream starts).

use super::permissions::{subscribe_access, Access};
use super::positioning::{
    self, conflated_recovery, fresh_start, full_query, plan_start, snapshot_start, start_query,
    Fallback, PositionWish, RecoveryBound, Start, StartPoint,
};
use super::tokens::{seconds_left, sub_refresh_token, subscribe_token, ttl_field};
use super::{Handled, Session};
use crate::brokers::BrokerError;
use crate::config::NamespaceOptions;
use crate::core::clock::unix_secs;
use crate::core::history::HistoryOptions;
use crate::node::{broker_error, conflation_key};
use herald_protocol::command::{ChannelRequest, SubRefreshRequest, SubscribeRequest};
use herald_protocol::{
    single_line, ErrorCode, ReplyBody, StreamPosition, SubRefreshResult, SubscribeResult,
};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One channel this connection is subscribed to.
pub(super) struct Subscription {
    /// Tags this subscription's items in the outbox.
    pub slot: u32,
    pub ns: Arc<NamespaceOptions>,
    /// This subscriber's channel info; with the connection's identity it is how presence and
    /// join/leave events show it (built when needed, not kept per subscription).
    pub chan_info: Option<Box<RawValue>>,
    /// When the subscription token runs out (none: never).
    pub expires_at: Option<Instant>,
}

/// What a subscribe brings, from the client or from the server (token claims, connect hook).
#[derive(Default)]
pub(super) struct SubscribeParams {
    pub position: PositionWish,
    pub join_leave: bool,
    pub chan_info: Option<Box<RawValue>>,
    pub data: Option<Box<RawValue>>,
    /// UNIX seconds.
    pub expires_at: Option<i64>,
    /// Delta compression negotiated (client subscribes only, as in Centrifugo).
    pub delta: bool,
}

impl From<&SubscribeRequest> for SubscribeParams {
    fn from(r: &SubscribeRequest) -> Self {
        SubscribeParams {
            position: PositionWish {
                recover: r.recover,
                recoverable: r.recoverable || r.recover,
                positioned: r.positioned,
                offset: r.offset,
                epoch: r.epoch.clone(),
            },
            join_leave: r.join_leave,
            ..Default::default()
        }
    }
}

impl Session {
    pub(super) async fn subscribe(&mut self, req: SubscribeRequest) -> Handled {
        let ns = self.node.namespaces.resolve(&req.channel)?.clone();
        let mut params = SubscribeParams::from(&req);
        params.delta = super::delta::negotiate(&ns, &req.delta)?;
        if !req.token.is_empty() {
            // A subscription token grants the channel on its own.
            let verified = self.node.verifier.verify_subscribe(&req.token);
            let claims = subscribe_token(verified, &req.channel, &self.user, unix_secs())?;
            params.expires_at = claims.subscription_expires_at();
            params.chan_info = claims.info.map(single_line);
            params.data = claims.data.map(single_line);
        } else {
            let proxy = self.node.hooks.proxy();
            match subscribe_access(&ns, proxy, &self.user, &req.channel) {
                Access::Allowed => {}
                Access::AskBackend(proxy) => {
                    self.subscribe_by_backend(&proxy, &req, &mut params).await?
                }
                Access::Denied(denial) => return Err(denial.into()),
            }
        }
        let result = self.subscribe_channel(&req.channel, params, false).await?;
        Ok(ReplyBody::Subscribe(result))
    }

    /// A new subscription token for a channel this connection is subscribed to: extends (or ends)
    /// the subscription's expiry.
    pub(super) fn sub_refresh(&mut self, req: SubRefreshRequest) -> Handled {
        if !self.subs.contains_key(&req.channel) {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let verified = self.node.verifier.verify_subscribe(&req.token);
        let ttl = sub_refresh_token(verified, &req.channel, &self.user, unix_secs())?;
        if let Some(sub) = self.subs.get_mut(&req.channel) {
            sub.expires_at = ttl.map(|secs| Instant::now() + Duration::from_secs(secs));
        }
        Ok(ReplyBody::SubRefresh(SubRefreshResult {
            expires: ttl.is_some(),
            ttl: ttl_field(ttl),
        }))
    }

    pub(super) async fn unsubscribe(&mut self, req: ChannelRequest) -> Handled {
        // Unsubscribing from a channel one is not subscribed to is not an error (idempotent, as in Centrifugo).
        self.unsubscribe_channel(&req.channel).await;
        Ok(ReplyBody::Unsubscribe)
    }

    /// Subscribes this connection; shared by client, token and server-side subscriptions.
    pub(super) async fn subscribe_channel(
        &mut self,
        channel: &str,
        params: SubscribeParams,
        server_side: bool,
    ) -> Result<SubscribeResult, ErrorCode> {
        let node = self.node.clone();
        let ns = node.namespaces.resolve(channel)?.clone();
        let Some(handle) = self.handle.clone() else {
            return Err(ErrorCode::Internal);
        };
        if self.subs.contains_key(channel) {
            return Err(ErrorCode::AlreadySubscribed);
        }
        if self.subs.len() >= node.config().client.max_channels {
            return Err(ErrorCode::LimitExceeded);
        }
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        self.slots.insert(slot, 0);
        let join_leave =
            ns.join_leave && (ns.force_push_join_leave || params.join_leave || server_side);
        // Register before reading history: whatever is published meanwhile arrives through the outbox,
        // and what the reply already carries is skipped there by offset.
        let first = node
            .hub
            .add_subscriber(channel, &handle, slot, join_leave, params.delta);
        // Listening to the channel (across nodes) must hold before the history read below.
        if let Err(e) = node.broker.subscribe(channel).await {
            // Not yet announced as occupied, so no vacated event either.
            self.rollback_subscribe(channel, slot).await;
            return Err(broker_error(e));
        }
        if first {
            node.hooks.channel_occupied(channel);
        }
        let mut result = SubscribeResult {
            data: params.data,
            ..Default::default()
        };
        if let Some(history) = node.history_options(&ns) {
            let start = plan_start(ns.force_recovery, ns.conflated(), &params.position);
            let started = self
                .start_stream(channel, &ns, history, start, slot, &mut result)
                .await;
            if let Err(e) = started {
                self.rollback_subscribe(channel, slot).await;
                return Err(broker_error(e));
            }
        }
        if params.delta {
            self.start_delta(channel, slot, &mut result);
        }
        let chan_info = params.chan_info;
        let info = self.info(chan_info.clone());
        if ns.presence {
            if let Err(e) = node.presence.add(channel, info.clone()).await {
                self.rollback_subscribe(channel, slot).await;
                return Err(broker_error(e));
            }
            node.announce_member(channel, &info.user, true).await;
        }
        if ns.join_leave {
            if let Err(e) = node.broker.publish_join(channel, &info).await {
                tracing::warn!(%channel, error = %e, "join event not published");
            }
        }
        if ns.presence || ns.join_leave {
            node.hooks.join(channel, &info);
        }
        let now = unix_secs();
        let ttl = seconds_left(params.expires_at, now);
        if ttl.is_some() {
            result.expires = true;
            result.ttl = ttl_field(ttl);
        }
        self.subs.insert(
            channel.to_string(),
            Subscription {
                slot,
                ns,
                chan_info,
                expires_at: ttl.map(|secs| Instant::now() + Duration::from_secs(secs)),
            },
        );
        Ok(result)
    }

    /// Reads where a positioned subscriber starts into its reply: the stream position, and the
    /// publications to replay when it recovers. Unpositioned: the reply carries neither.
    async fn start_stream(
        &mut self,
        channel: &str,
        ns: &NamespaceOptions,
        history: HistoryOptions,
        start: Start,
        slot: u32,
        result: &mut SubscribeResult,
    ) -> Result<(), BrokerError> {
        let (recoverable, since) = match start {
            Start::Unpositioned => return Ok(()),
            Start::Current { recoverable } => (recoverable, None),
            Start::Recover(since) => (true, Some(since)),
        };
        let was_recovering = since.is_some();
        let start = if ns.conflated() {
            self.read_conflated_start(channel, ns, since, history)
                .await?
        } else {
            let bound = RecoveryBound {
                publications: ns.recovery_max_publications,
                bytes: self.node.config().client.max_outbox_bytes,
            };
            self.read_plain_start(channel, since, history, bound)
                .await?
        };
        if start.capped {
            self.node.metrics.client_recovery_capped.inc();
        }
        self.slots.insert(slot, start.position.offset);
        result.recovered = start.recovered;
        result.was_recovering = was_recovering;
        result.recoverable = recoverable;
        result.positioned = true;
        result.offset = start.position.offset;
        result.epoch = start.position.epoch;
        result.publications = start.publications;
        Ok(())
    }

    /// Where a subscriber of a plain channel starts: the publications after `since` (recovery) or
    /// just the stream position, which is also where a recovery that cannot be made starts.
    async fn read_plain_start(
        &self,
        channel: &str,
        since: Option<StreamPosition>,
        history: HistoryOptions,
        bound: RecoveryBound,
    ) -> Result<StartPoint, BrokerError> {
        let broker = &self.node.broker;
        let since_offset = since.as_ref().map(|s| s.offset);
        let read = broker
            .history(channel, &start_query(since, bound), history)
            .await;
        match positioning::plain_start(read, since_offset, bound) {
            Ok(start) => Ok(start),
            Err(Fallback::Restart) => {
                let page = broker
                    .history(channel, &start_query(None, bound), history)
                    .await?;
                Ok(fresh_start(page.position))
            }
            Err(Fallback::Failed(e)) => Err(e),
        }
    }

    /// Where a subscriber of a conflated channel starts: the latest value of every key — on a fresh
    /// subscribe, and on recovery when history no longer covers the gap — or, when it does, only the
    /// latest value of each key changed since `since`.
    async fn read_conflated_start(
        &self,
        channel: &str,
        ns: &NamespaceOptions,
        since: Option<StreamPosition>,
        history: HistoryOptions,
    ) -> Result<StartPoint, BrokerError> {
        let broker = &self.node.broker;
        let since_epoch = since.as_ref().map(|s| s.epoch.clone());
        if since.is_some() {
            let read = broker.history(channel, &full_query(since), history).await;
            match conflated_recovery(read, |p| conflation_key(ns, p)) {
                Ok(start) => return Ok(start),
                Err(Fallback::Restart) => {}
                Err(Fallback::Failed(e)) => return Err(e),
            }
        }
        let (latest, position) = broker.latest(channel).await?;
        Ok(snapshot_start(latest, position, since_epoch.as_deref()))
    }

    async fn rollback_subscribe(&mut self, channel: &str, slot: u32) {
        self.slots.remove(&slot);
        self.end_delta(slot);
        if let Some(handle) = &self.handle {
            if self.node.hub.remove_subscriber(channel, handle.seq) {
                self.node.broker.unsubscribe(channel).await;
            }
        }
    }

    /// Removes a subscription; returns false when there was none.
    pub(super) async fn unsubscribe_channel(&mut self, channel: &str) -> bool {
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        self.slots.remove(&sub.slot);
        self.end_delta(sub.slot);
        let node = self.node.clone();
        if let Some(handle) = &self.handle {
            if node.hub.remove_subscriber(channel, handle.seq) {
                node.hooks.channel_vacated(channel);
                node.broker.unsubscribe(channel).await;
            }
        }
        if !sub.ns.presence && !sub.ns.join_leave {
            return true;
        }
        let info = self.info(sub.chan_info);
        node.hooks.leave(channel, &info);
        if sub.ns.presence {
            if let Err(e) = node.presence.remove(channel, &info.client).await {
                tracing::warn!(%channel, error = %e, "presence not removed");
            }
            node.announce_member(channel, &info.user, false).await;
        }
        if sub.ns.join_leave {
            if let Err(e) = node.broker.publish_leave(channel, &info).await {
                tracing::warn!(%channel, error = %e, "leave event not published");
            }
        }
        true
    }
}
