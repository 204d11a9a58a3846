//! Herald: a real-time push gateway that speaks the Centrifugo client protocol and server API.
//!
//! The flow of one publication: a client command, an API call (and later a device or feed) calls
//! [`node::Node::publish`]; the [`broker`] assigns its stream position and delivers it to every node's
//! [`hub`]; the hub encodes it once and queues the shared bytes on each subscriber's [`outbox`]; each
//! [`session`] task drains its outbox into batched WebSocket frames.

pub mod api;
pub mod api_request;
pub mod broker;
pub mod channel;
pub mod config;
pub mod config_template;
pub mod datadir;
pub mod demo;
pub mod descriptors;
pub mod devices;
pub mod feeds;
pub mod handshake;
pub mod history;
pub mod hooks;
pub mod hub;
pub mod lease;
pub mod map;
pub mod metrics;
pub mod nats_leases;
pub mod node;
pub mod outbox;
pub mod presence;
pub mod rate;
pub mod server;
pub mod session;
pub mod simulate;
pub mod transport;
pub mod wakes;
pub mod ws;
