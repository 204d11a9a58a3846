//! One streaming connection (HTTP streaming or SSE, bidirectional or not) as its session sees it:
//! output goes into the HTTP response body through a one-chunk channel, input comes from the
//! connect request and, for the bidirectional ones, from `/emulation` requests through the inbox.

use super::framing::{disconnect_push, frame, Framing};
use crate::core::hub::Hub;
use crate::core::session_handle::Inbox;
use crate::edges::ws::{Incoming, WsError};
use bytes::Bytes;
use hyper::body::Frame;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The response body of a stream: chunks as the session hands them over.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Where an emulated connection is registered, so it leaves the hub with the connection.
struct Registration {
    hub: Arc<Hub>,
    session: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.remove_emulated(&self.session);
    }
}

pub struct StreamConn {
    tx: mpsc::Sender<Bytes>,
    inbox: Arc<Inbox>,
    framing: Framing,
    uni: bool,
    /// A chunk the body has not taken yet (empty: nothing being written).
    out: Vec<u8>,
    progress_at: Instant,
    /// Ends the HTTP connection under the response (a client that does not read).
    abort: Option<CancellationToken>,
    _registration: Option<Registration>,
}

/// At most this many chunks wait in the body channel: the rest stays in the session's bounded
/// output, so a client that does not read fills its outbox and is closed as slow.
const BODY_CHUNKS: usize = 1;

impl StreamConn {
    /// A stream and the body of its response. `first`: what the body starts with (SSE: a line
    /// break, so intermediaries pass the headers on at once).
    pub fn new(
        framing: Framing,
        uni: bool,
        inbox: Arc<Inbox>,
        first: &'static [u8],
        abort: Option<CancellationToken>,
    ) -> (StreamConn, ChannelBody) {
        let (tx, rx) = mpsc::channel(BODY_CHUNKS);
        let conn = StreamConn {
            tx,
            inbox,
            framing,
            uni,
            out: first.to_vec(),
            progress_at: Instant::now(),
            abort,
            _registration: None,
        };
        (conn, ChannelBody { rx })
    }

    /// Registers the stream for `/emulation` requests under `session` until it ends.
    pub fn register(&mut self, hub: Arc<Hub>, session: String) {
        hub.add_emulated(&session, self.inbox.clone());
        self._registration = Some(Registration { hub, session });
    }

    pub fn is_unidirectional(&self) -> bool {
        self.uni
    }

    pub async fn writable(&self) -> io::Result<()> {
        match self.tx.reserve().await {
            Ok(_permit) => Ok(()),
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    pub fn queued_out(&self) -> usize {
        self.out.len()
    }

    pub fn is_writing(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn stalled_since(&self) -> Option<Instant> {
        self.is_writing().then_some(self.progress_at)
    }

    /// Input waiting (the connect request, emulation requests), or the client gone.
    pub async fn readable(&self) -> io::Result<()> {
        tokio::select! {
            _ = self.inbox.wait() => Ok(()),
            _ = self.tx.closed() => Ok(()),
        }
    }

    pub fn has_buffered(&self) -> bool {
        self.inbox.has_waiting()
    }

    /// Takes the waiting requests as messages; `Eof` once the client is gone.
    pub fn read_available(&mut self, out: &mut Vec<Incoming>) -> Result<usize, WsError> {
        if self.tx.is_closed() {
            return Err(WsError::Eof);
        }
        let mut requests = Vec::new();
        self.inbox.take(&mut requests);
        let mut total = 0;
        for request in requests {
            total += request.len();
            out.push(Incoming::Message(request.to_vec()));
        }
        Ok(total)
    }

    /// Queues `messages` as one chunk of the response. Returns (payload bytes, chunks).
    pub fn queue_messages(&mut self, messages: &[Bytes]) -> (usize, usize) {
        let was_idle = self.out.is_empty();
        let payload = frame(messages, self.framing, self.uni, &mut self.out);
        if was_idle && !self.out.is_empty() {
            self.progress_at = Instant::now();
        }
        (payload, usize::from(!self.out.is_empty()))
    }

    /// Hands the queued chunk to the body when it has room. Returns the bytes handed over.
    pub fn try_write(&mut self) -> io::Result<usize> {
        if self.out.is_empty() {
            return Ok(0);
        }
        match self.tx.try_reserve() {
            Ok(permit) => {
                let chunk = std::mem::take(&mut self.out);
                let n = chunk.len();
                permit.send(Bytes::from(chunk));
                self.progress_at = Instant::now();
                Ok(n)
            }
            Err(mpsc::error::TrySendError::Full(())) => Ok(0),
            Err(mpsc::error::TrySendError::Closed(())) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Writes what is queued, giving up once the body has taken nothing for `stall`.
    pub async fn write_queued(&mut self, stall: Duration) -> io::Result<()> {
        loop {
            self.try_write()?;
            let Some(since) = self.stalled_since() else {
                return Ok(());
            };
            let deadline = tokio::time::Instant::from_std(since + stall);
            match tokio::time::timeout_at(deadline, self.writable()).await {
                Ok(ready) => ready?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
        }
    }

    /// Queues the disconnect push (the stream's close frame) behind what is owed.
    pub fn queue_close(&mut self, code: u16, reason: &str) {
        self.queue_messages(&[disconnect_push(code, reason, self.framing)]);
    }

    /// Ends the HTTP connection at once: a client that does not read is not waited for.
    pub fn abort(&mut self) {
        self.out = Vec::new();
        if let Some(abort) = &self.abort {
            abort.cancel();
        }
    }

    /// Ends the response after what was written (the body's end).
    pub fn shutdown(&mut self) {
        self.inbox.close();
    }
}

impl Drop for StreamConn {
    fn drop(&mut self) {
        self.inbox.close();
    }
}
