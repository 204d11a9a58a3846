//! What the hub and the wake-ups know of one connection: who it is, the wire format it reads, and
//! its outbox.

use crate::core::outbox::Outbox;
use crate::core::wire::Wire;
use herald_protocol::Format;

/// What other tasks know of one connection.
pub struct SessionHandle {
    /// Node-unique number, cheaper than the client id as a map key.
    pub seq: u64,
    pub client: String,
    pub user: String,
    /// What the hub encodes this connection's pushes in.
    pub wire: Wire,
    /// The transport it is served over (`websocket`, `sse`, …), for the `connections` API.
    pub transport: &'static str,
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
    /// The connection's format: how the commands of a forwarded request are spelled.
    format: Format,
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
    pub fn new(max_messages: usize, max_bytes: usize, format: Format) -> Inbox {
        Inbox {
            queue: parking_lot::Mutex::new(InboxQueue::default()),
            notify: tokio::sync::Notify::new(),
            max_messages,
            max_bytes,
            format,
        }
    }

    /// Queues the commands of a request another node forwarded: JSON text as it is, Protobuf bytes
    /// from base64 (a control travels as JSON). What is not base64 is queued as it came: the
    /// session fails to decode it and ends the connection, as for the same request sent here.
    pub fn push_forwarded(&self, data: &str) -> Result<(), InboxRefusal> {
        use base64::Engine as _;
        let decoded = match self.format {
            Format::Json => None,
            Format::Protobuf => base64::engine::general_purpose::STANDARD.decode(data).ok(),
        };
        let data = decoded.map_or_else(
            || bytes::Bytes::copy_from_slice(data.as_bytes()),
            bytes::Bytes::from,
        );
        self.push(data)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(format: Format, data: &str) -> Vec<u8> {
        let inbox = Inbox::new(4, 1024, format);
        inbox.push_forwarded(data).unwrap();
        let mut out = Vec::new();
        inbox.take(&mut out);
        out.concat()
    }

    #[test]
    fn forwarded_commands_are_decoded_in_the_connection_format() {
        assert_eq!(forwarded(Format::Json, "{\"id\":1}"), b"{\"id\":1}");
        assert_eq!(forwarded(Format::Protobuf, "AAEC"), [0, 1, 2]);
        // Not base64: queued as it came, for the session to refuse.
        assert_eq!(forwarded(Format::Protobuf, "{}"), b"{}");
    }
}
