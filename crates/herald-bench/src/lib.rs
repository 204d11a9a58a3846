//! herald-bench as a library, so its scenarios can be smoke-tested against an in-process server.

pub mod broadcast;
pub mod chat;
pub mod common;
pub mod hostile;
pub mod idle;
pub mod lite;
pub mod livemap;
pub mod market;
pub mod net;
pub mod procstat;
pub mod publish;
pub mod ramp;
pub mod stats;
pub mod summary;
pub mod wsclient;
