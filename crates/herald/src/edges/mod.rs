//! What talks to the outside world, each edge on top of the node: the HTTP listener and its
//! routes, the server API, the Pusher HTTP API, client sessions over WebSocket, device ports, upstream feeds, the
//! live map and the admin console.

pub mod admin;
pub mod api;
pub mod descriptors;
pub mod devices;
pub mod fd_passing;
pub mod feeds;
pub mod http;
pub mod inherited;
pub mod map;
pub mod pusher;
pub mod session;
pub mod sockets;
pub mod spare;
pub mod stream;
pub mod tls;
pub mod ws;
