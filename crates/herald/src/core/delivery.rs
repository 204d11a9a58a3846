//! What a broker hands a node's hub: publications, joins and leaves, node-wide controls and gap
//! notices, through [`BrokerHandler`]. Defined here, below the brokers, so that the hub that
//! implements it knows nothing of which broker is in use.

use herald_protocol::{ClientInfo, Publication};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Node-wide commands that must reach the connections of a user wherever they are. Serializable:
/// brokers carry them between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    Subscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    Unsubscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    Disconnect {
        user: String,
        client: Option<String>,
        code: u16,
        reason: String,
    },
    /// The server API's `refresh`: extends the connections' lifetime to `expire_at` (Unix seconds;
    /// `None`: no expiry), or ends them as expired.
    Refresh {
        user: String,
        client: Option<String>,
        expired: bool,
        expire_at: Option<i64>,
    },
    /// Commands of an emulated (HTTP-streaming or SSE) connection, POSTed to `/emulation` on any
    /// node: only the node holding `session` (a secret, unique across nodes) acts on them.
    Emulation {
        node: String,
        session: String,
        /// The commands as the transport's format encodes them (JSON text, or Protobuf bytes in
        /// base64: the control travels as JSON).
        data: String,
    },
}

/// What a node does with what the broker delivers, and what the broker may ask of it.
pub trait BrokerHandler: Send + Sync {
    /// `key`: the publication's conflation key, for channels that conflate.
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>, key: Option<&str>);
    fn handle_join(&self, channel: &str, info: &ClientInfo);
    fn handle_leave(&self, channel: &str, info: &ClientInfo);
    fn handle_control(&self, control: &Control);
    /// The broker cannot prove that the node's subscribers of `channel` received every publication
    /// (it lost its connection meanwhile): they must be told, so they resubscribe and recover.
    fn handle_gap(&self, channel: &str);
    /// Whether the node has local subscribers of `channel` (the broker keeps listening while so).
    fn has_subscribers(&self, channel: &str) -> bool;
    /// Every channel with local subscribers (resubscribed after a reconnect).
    fn local_channels(&self) -> Vec<String>;
}
