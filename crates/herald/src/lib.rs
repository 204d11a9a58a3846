//! Herald: a real-time push gateway that speaks the Centrifugo client protocol and server API.
//!
//! The modules are layers; each imports only from the layers below it (checked by
//! `tests/layers.rs`, drawn in `docs/architecture.md`):
//!
//! | layer | modules | what it holds |
//! |---|---|---|
//! | app | [`app`] | the process: starting and stopping a node, the demo, the device simulator |
//! | edges | [`edges`] | what talks to the outside: HTTP routing, the server API, client sessions, device ports, feeds, the map |
//! | node | [`node`] | what one node shares between its edges: the publish path, limits, the broker and the hub |
//! | links | [`brokers`], [`hooks`] | the node's outbound links: other nodes (memory, Redis, NATS) and the application backend |
//! | core | [`core`] | channels, the hub, outboxes, wake-ups, history, presence, metrics, the clock |
//! | settings | [`config`] | the configuration: its sections, defaults, loading and validation |
//!
//! The flow of one publication: a client command, an API call, a device or a feed calls
//! [`node::Node::publish`]; the broker ([`brokers`]) assigns its stream position and delivers it
//! to every node's hub ([`core::hub`]); the hub encodes it once and queues the shared bytes on each
//! subscriber's outbox ([`core::outbox`]); each session task ([`edges::session`]) drains its
//! outbox into batched WebSocket frames.

#![forbid(unsafe_code)]

pub mod app;
pub mod brokers;
pub mod config;
pub mod core;
pub mod edges;
pub mod hooks;
pub mod node;
