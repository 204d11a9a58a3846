//! herald-bench as a library, so its scenarios can be smoke-tested against an in-process server.

// Two socket options have no safe wrapper (net.rs, hostile/raw.rs); every other line is safe.
#![deny(unsafe_code)]

pub mod broadcast;
pub mod capacity;
pub mod chat;
pub mod client_publish;
pub mod common;
pub mod hostile;
pub mod idle;
pub mod lite;
pub mod livemap;
pub mod market;
pub mod net;
pub mod procstat;
pub mod publish;
pub mod pusher;
pub mod ramp;
pub mod stats;
pub mod summary;
pub mod wsclient;
