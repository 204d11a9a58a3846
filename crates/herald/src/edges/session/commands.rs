//! The channel commands besides subscribing: `publish`, `presence`, `presence_stats` and
//! `history`. (`rpc` and `send` go to the backend: `backend.rs`.)

use super::permissions::{history_access, presence_access, publish_access, Access};
use super::{Handled, Session};
use crate::core::history::{client_history_limit, history_limit, HistoryQuery};
use crate::node::broker_error;
use herald_protocol::command::{ChannelRequest, HistoryRequest, PublishRequest};
use herald_protocol::{
    ErrorCode, HistoryResult, PresenceResult, PresenceStatsResult, ReplyBody, ReplyError,
};
use std::collections::BTreeMap;

impl Session {
    pub(super) async fn publish(&mut self, req: PublishRequest) -> Handled {
        let ns = self.node.namespaces.resolve(&req.channel)?.clone();
        let Some(mut data) = req.data else {
            return Err(ErrorCode::BadRequest.into());
        };
        let mut skip_history = false;
        let proxy = self.node.hooks.proxy();
        let subscribed = self.subs.contains_key(&req.channel);
        match publish_access(&ns, proxy, &self.user, subscribed, &req.channel) {
            Access::Allowed => {}
            Access::AskBackend(proxy) => {
                skip_history = self
                    .publish_by_backend(&proxy, &req.channel, &mut data)
                    .await?;
            }
            Access::Denied(denial) => return Err(denial.into()),
        }
        let chan_info = self
            .subs
            .get(&req.channel)
            .and_then(|s| s.chan_info.clone());
        let info = self.info(chan_info);
        self.node
            .publish_with(
                &req.channel,
                data,
                Some(info),
                BTreeMap::new(),
                "client",
                skip_history,
            )
            .await
            .map_err(ReplyError::from)?;
        Ok(ReplyBody::Publish)
    }

    pub(super) async fn presence(&mut self, req: ChannelRequest) -> Handled {
        self.check_presence(&req.channel)?;
        let presence = self
            .node
            .presence
            .get(&req.channel)
            .await
            .map_err(broker_error)?;
        Ok(ReplyBody::Presence(PresenceResult { presence }))
    }

    pub(super) async fn presence_stats(&mut self, req: ChannelRequest) -> Handled {
        self.check_presence(&req.channel)?;
        let (num_clients, num_users) = self
            .node
            .presence
            .stats(&req.channel)
            .await
            .map_err(broker_error)?;
        Ok(ReplyBody::PresenceStats(PresenceStatsResult {
            num_clients,
            num_users,
        }))
    }

    fn check_presence(&self, channel: &str) -> Handled<()> {
        let ns = self.node.namespaces.resolve(channel)?;
        let subscribed = self.subs.contains_key(channel);
        presence_access(&ns, &self.user, subscribed, channel)?;
        Ok(())
    }

    pub(super) async fn history(&mut self, req: HistoryRequest) -> Handled {
        let ns = self.node.namespaces.resolve(&req.channel)?.clone();
        let subscribed = self.subs.contains_key(&req.channel);
        let history = self.node.history_options(&ns);
        let options = history_access(&ns, history, &self.user, subscribed, &req.channel)?;
        let limit = client_history_limit(req.limit, ns.client_history_max_limit);
        if limit != history_limit(req.limit) {
            self.node.metrics.client_history_capped.inc();
        }
        let query = HistoryQuery {
            since: req.since,
            limit,
            reverse: req.reverse,
        };
        let page = self
            .node
            .broker
            .history(&req.channel, &query, options)
            .await
            .map_err(broker_error)?;
        Ok(ReplyBody::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        }))
    }
}
