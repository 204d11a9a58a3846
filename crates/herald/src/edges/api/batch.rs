//! `batch`: many commands in one request, replies written one by one.

use super::{call, ApiError};
use crate::core::metrics::ReasonLabel;
use crate::edges::devices::DeviceIngest;
use crate::node::Node;
use herald_protocol::ErrorCode;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Runs a `batch` (at most `api.max_batch_commands` commands; a malformed or oversized batch fails
/// before any command runs) and writes `{"replies": [...]}`, one reply per command, in order.
pub(super) async fn batch(
    node: &Node,
    devices: Option<&DeviceIngest>,
    raw: &RawValue,
) -> Result<String, ApiError> {
    let max = node.config().api.max_batch_commands;
    let request = crate::edges::api::request::parse_batch(raw, max).map_err(|e| {
        if e.contains("api.max_batch_commands") {
            node.metrics
                .api_refused
                .get_or_create(&ReasonLabel {
                    reason: "batch size",
                })
                .inc();
        }
        ApiError::bad(e)
    })?;
    let calls = &request.commands;
    let mut out = String::from("{\"replies\":[");
    let mut push = |reply: Value, first: bool| {
        if !first {
            out.push(',');
        }
        out.push_str(&reply.to_string());
    };
    if request.parallel {
        // At most max_batch_commands futures; each reply is written as soon as its turn comes.
        let all = calls
            .iter()
            .map(|(method, raw)| Box::pin(batch_reply(node, devices, method, raw)));
        for (i, reply) in futures_util::future::join_all(all)
            .await
            .into_iter()
            .enumerate()
        {
            push(reply, i == 0);
        }
    } else {
        for (i, (method, raw)) in calls.iter().enumerate() {
            push(
                Box::pin(batch_reply(node, devices, method, raw)).await,
                i == 0,
            );
        }
    }
    out.push_str("]}");
    Ok(out)
}

/// One command of a batch: `{"<method>": result}` or `{"error": {...}}`.
async fn batch_reply(
    node: &Node,
    devices: Option<&DeviceIngest>,
    method: &str,
    raw: &RawValue,
) -> Value {
    match call(node, devices, method, raw).await {
        Ok(result) => json!({ method: result }),
        Err(Some(e)) => e.to_json(),
        Err(None) => ApiError {
            code: ErrorCode::MethodNotFound,
            message: format!("unknown method {method:?}"),
        }
        .to_json(),
    }
}
