//! Cache channels: a channel's last event is its history's newest publication, so the
//! namespace's `history_size` and `history_ttl` say how many are kept and for how long.

use crate::brokers::BrokerError;
use crate::core::history::HistoryQuery;
use crate::node::Node;
use herald_protocol::Publication;
use std::sync::Arc;

/// The last event of cache channel `herald` (its Herald name), if one is kept; none either when
/// its namespace keeps no history.
pub async fn last_event(
    node: &Node,
    herald: &str,
) -> Result<Option<Arc<Publication>>, BrokerError> {
    let Some(options) = node
        .namespaces
        .resolve(herald)
        .ok()
        .and_then(|ns| node.history_options(&ns))
    else {
        return Ok(None);
    };
    let query = HistoryQuery {
        since: None,
        limit: Some(1),
        reverse: true,
    };
    let page = node.broker.history(herald, &query, options).await?;
    Ok(page.publications.into_iter().next())
}
