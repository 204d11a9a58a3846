//! Listeners and HTTP routing: the WebSocket endpoint, health, readiness, metrics and the server API.
//!
//! Each accepted socket is served by hyper; a WebSocket upgrade hands the socket to one session task,
//! after which hyper's task ends — one task per idle connection.

pub mod handshake;
pub mod listener;
mod pusher_upgrade;
pub mod response;
mod router;
mod streaming;
mod websocket;

pub use listener::accept_loop;

use crate::edges::devices::DeviceIngest;
use crate::node::Node;
use std::sync::Arc;

pub const WEBSOCKET_PATH: &str = "/connection/websocket";
pub const UNI_WEBSOCKET_PATH: &str = "/connection/uni_websocket";
pub const EMULATION_PATH: &str = "/emulation";

/// Put in every request's extensions by the listener: cancelling it drops the HTTP connection the
/// request came on (a streaming client that does not read is not waited for).
#[derive(Clone)]
pub(crate) struct ConnectionAbort(pub tokio_util::sync::CancellationToken);
const MAX_API_BODY: usize = 4 << 20;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// WebSocket, health, and also the API and metrics (no internal listener configured).
    Everything,
    /// WebSocket and health only.
    Public,
    /// API, metrics and health only.
    Internal,
}

/// What the HTTP listeners serve: the node, and the device ingest when it runs (for the device
/// methods of the API, the map, and the device gauges of `/metrics`).
pub struct Routes {
    pub node: Arc<Node>,
    pub devices: Option<Arc<DeviceIngest>>,
    /// The admin console's state (its routes answer only when `admin.active()`).
    pub admin: Arc<crate::edges::admin::Admin>,
}
