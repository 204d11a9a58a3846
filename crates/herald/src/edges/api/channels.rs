//! Methods reading or clearing a channel's state: `presence`, `presence_stats`, `history`,
//! `history_remove`, `channels`, and the cluster's `info`.

use super::params::{require_channel, ChannelParams, ChannelsParams, HistoryParams};
use super::ApiError;
use crate::core::history::{history_limit, HistoryQuery};
use crate::node::{broker_error, Node};
use herald_protocol::ErrorCode;
use serde_json::{json, Value};

fn presence_namespace(node: &Node, channel: &str) -> Result<(), ApiError> {
    require_channel(channel)?;
    if !node.namespaces.resolve(channel)?.presence {
        return Err(ApiError {
            code: ErrorCode::NotAvailable,
            message: "presence is not enabled for this channel".into(),
        });
    }
    Ok(())
}

pub(super) async fn presence(node: &Node, p: ChannelParams) -> Result<Value, ApiError> {
    presence_namespace(node, &p.channel)?;
    let presence = node.presence.get(&p.channel).await.map_err(broker_error)?;
    Ok(json!({"presence": presence}))
}

pub(super) async fn presence_stats(node: &Node, p: ChannelParams) -> Result<Value, ApiError> {
    presence_namespace(node, &p.channel)?;
    let (num_clients, num_users) = node
        .presence
        .stats(&p.channel)
        .await
        .map_err(broker_error)?;
    Ok(json!({"num_clients": num_clients, "num_users": num_users}))
}

pub(super) async fn history(node: &Node, p: HistoryParams) -> Result<Value, ApiError> {
    require_channel(&p.channel)?;
    let ns = node.namespaces.resolve(&p.channel)?;
    let options = node.history_options(&ns).ok_or(ApiError {
        code: ErrorCode::NotAvailable,
        message: "history is not enabled for this channel".into(),
    })?;
    let query = HistoryQuery {
        since: p.since,
        limit: history_limit(p.limit),
        reverse: p.reverse,
    };
    let page = node
        .broker
        .history(&p.channel, &query, options)
        .await
        .map_err(broker_error)?;
    let mut out = json!({"publications": page.publications, "offset": page.position.offset, "epoch": page.position.epoch});
    if page.publications.is_empty() {
        out["publications"] = json!([]);
    }
    Ok(out)
}

pub(super) async fn history_remove(node: &Node, p: ChannelParams) -> Result<Value, ApiError> {
    require_channel(&p.channel)?;
    node.namespaces.resolve(&p.channel)?;
    node.broker
        .remove_history(&p.channel)
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

pub(super) fn channels(node: &Node, p: ChannelsParams) -> Value {
    let channels: serde_json::Map<String, Value> = node
        .hub
        .channels(&p.pattern)
        .into_iter()
        .map(|(name, count)| (name, json!({"num_clients": count})))
        .collect();
    json!({"channels": channels})
}

/// Every live node of the cluster (this one with fresh numbers), from the broker's registry.
pub async fn info(node: &Node) -> Result<Value, ApiError> {
    let mut nodes = node.broker.nodes().await.map_err(broker_error)?;
    let this = node.entry();
    match nodes.iter_mut().find(|n| n.uid == this.uid) {
        Some(entry) => *entry = this,
        None => nodes.push(this),
    }
    Ok(json!({ "nodes": nodes }))
}
