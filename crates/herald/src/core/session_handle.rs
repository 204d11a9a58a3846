//! What the hub and the wake-ups know of one connection: who it is, the wire format it reads, and
//! its outbox.

use crate::core::outbox::Outbox;
use herald_protocol::Format;

/// What other tasks know of one connection.
pub struct SessionHandle {
    /// Node-unique number, cheaper than the client id as a map key.
    pub seq: u64,
    pub client: String,
    pub user: String,
    /// What the hub encodes this connection's pushes in.
    pub format: Format,
    pub outbox: Outbox,
}

/// Commands for an emulated connection (HTTP streaming, SSE) that arrive as separate HTTP requests
/// (`/emulation`), on this node or through the broker, waiting for the connection's task.
/// Bounded in requests and bytes: a client that sends faster than its connection answers is
/// refused (HTTP 429) instead of making the server hold its commands.
pub struct Inbox {
    queue: parking_lot::Mutex<InboxQueue>,
    notify: tokio::sync::Notify,
    max_messages: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct InboxQueue {
    messages: std::collections::VecDeque<bytes::Bytes>,
    bytes: usize,
    closed: bool,
}

/// Why an inbox did not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InboxRefusal {
    #[error("too many commands waiting for this connection")]
    Full,
    #[error("the connection is closed")]
    Closed,
}

impl Inbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Inbox {
        Inbox {
            queue: parking_lot::Mutex::new(InboxQueue::default()),
            notify: tokio::sync::Notify::new(),
            max_messages,
            max_bytes,
        }
    }

    /// Queues one request's commands for the connection.
    pub fn push(&self, data: bytes::Bytes) -> Result<(), InboxRefusal> {
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(InboxRefusal::Closed);
        }
        if queue.messages.len() >= self.max_messages || queue.bytes + data.len() > self.max_bytes {
            return Err(InboxRefusal::Full);
        }
        queue.bytes += data.len();
        queue.messages.push_back(data);
        drop(queue);
        self.notify.notify_one();
        Ok(())
    }

    /// Moves every waiting request to `out`.
    pub fn take(&self, out: &mut Vec<bytes::Bytes>) {
        let mut queue = self.queue.lock();
        queue.bytes = 0;
        out.extend(queue.messages.drain(..));
    }

    pub fn has_waiting(&self) -> bool {
        !self.queue.lock().messages.is_empty()
    }

    /// Waits until a request may be waiting. Cancel-safe (a wake-up is kept until the next call).
    pub async fn wait(&self) {
        if self.has_waiting() {
            return;
        }
        self.notify.notified().await;
    }

    /// Refuses every later request and drops the waiting ones.
    pub fn close(&self) {
        let mut queue = self.queue.lock();
        queue.closed = true;
        queue.messages.clear();
        queue.bytes = 0;
    }
}
