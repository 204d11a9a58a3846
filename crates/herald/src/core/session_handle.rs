//! What the hub and the wake-ups know of one connection: who it is and its outbox.

use crate::core::outbox::Outbox;

/// What other tasks know of one connection.
pub struct SessionHandle {
    /// Node-unique number, cheaper than the client id as a map key.
    pub seq: u64,
    pub client: String,
    pub user: String,
    pub outbox: Outbox,
}
