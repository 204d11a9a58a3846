//! What one node does with publications, with no knowledge of brokers, sockets or protocols on
//! the wire: channel names and options, the hub that fans publications out, the per-connection
//! outboxes, batched wake-ups, in-memory history, metrics, the clock and conflation keys read out of
//! JSON, and the wires connections read (`wire`).

pub mod channel;
pub mod clock;
pub mod delivery;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod outbox;
pub mod pointer_key;
pub mod rate;
pub mod session_handle;
pub mod wakes;
pub mod wire;
