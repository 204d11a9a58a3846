//! `publish` and `broadcast`.

use super::params::{require_channel, BroadcastParams, PublishParams};
use super::ApiError;
use crate::node::Node;
use herald_protocol::StreamPosition;
use serde_json::{json, Value};

pub(super) async fn publish(node: &Node, p: PublishParams) -> Result<Value, ApiError> {
    require_channel(&p.channel)?;
    let data = p
        .data
        .ok_or_else(|| ApiError::bad("field \"data\" is required"))?;
    let position = node.publish(&p.channel, data, None, p.tags, "api").await?;
    Ok(position_json(&position))
}

fn position_json(position: &StreamPosition) -> Value {
    let mut out = serde_json::Map::new();
    if position.offset > 0 {
        out.insert("offset".into(), json!(position.offset));
        out.insert("epoch".into(), json!(position.epoch));
    }
    Value::Object(out)
}

pub(super) async fn broadcast(node: &Node, p: BroadcastParams) -> Result<Value, ApiError> {
    if p.channels.is_empty() {
        return Err(ApiError::bad(
            "field \"channels\" must list at least one channel",
        ));
    }
    let data = p
        .data
        .ok_or_else(|| ApiError::bad("field \"data\" is required"))?;
    let mut responses = Vec::with_capacity(p.channels.len());
    for channel in &p.channels {
        let response = match node
            .publish(channel, data.clone(), None, p.tags.clone(), "api")
            .await
        {
            Ok(position) => json!({"result": position_json(&position)}),
            Err(e) => ApiError::from(e).to_json(),
        };
        responses.push(response);
    }
    Ok(json!({"responses": responses}))
}
