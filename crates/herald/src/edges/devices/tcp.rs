//! TCP device protocols (GT06, H02, Teltonika, JSON lines): one task per connection.

use super::admission::Admission;
use super::{DeviceIngest, Protocol, WRITE_TIMEOUT};
use crate::edges::tls::{Endpoint, Socket};
use herald_devices::{
    gt06, h02, jsonl, teltonika, DecodeError, Decoded, FrameError, FrameStatus, SessionState,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 4096;

fn max_frame(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Gt06 => gt06::MAX_FRAME_LEN,
        Protocol::H02 => h02::MAX_TEXT_LEN,
        Protocol::Teltonika => teltonika::MAX_DATA_LEN + 12,
        Protocol::Jsonl | Protocol::Osmand => jsonl::MAX_LINE_LEN + 1,
    }
}

fn frame(
    protocol: Protocol,
    buf: &[u8],
    session: &mut SessionState,
) -> Result<FrameStatus, FrameError> {
    match protocol {
        Protocol::Gt06 => gt06::frame(buf),
        Protocol::H02 => h02::frame(buf, session),
        Protocol::Teltonika => teltonika::frame(buf),
        Protocol::Jsonl | Protocol::Osmand => jsonl::frame(buf),
    }
}

fn decode(
    protocol: Protocol,
    frame: &[u8],
    session: &mut SessionState,
) -> Result<Decoded, DecodeError> {
    match protocol {
        Protocol::Gt06 => gt06::decode(frame, session),
        Protocol::H02 => h02::decode(frame, session),
        Protocol::Teltonika => teltonika::decode(frame, session),
        Protocol::Jsonl | Protocol::Osmand => jsonl::decode(frame, session),
    }
}

/// Why a connection ends.
enum End {
    /// Closed by the peer, the idle timeout or shutdown.
    Quiet,
    /// Closed by us for a reason worth a debug line.
    Because(String),
}

struct Conn {
    ingest: Arc<DeviceIngest>,
    protocol: Protocol,
    stream: Socket,
    peer: SocketAddr,
    session: SessionState,
    /// Device ids registered as connected through this connection (empty: not identified yet).
    devices: HashSet<String>,
    /// Until then the connection must identify itself (`devices.login_timeout`).
    login_deadline: Instant,
}

pub(super) async fn serve(
    ingest: Arc<DeviceIngest>,
    protocol: Protocol,
    stream: TcpStream,
    tls: Option<Arc<Endpoint>>,
    peer: SocketAddr,
    // Held for the connection's life: its descriptor and its place in the per-address count.
    _admission: Admission,
) {
    let login_deadline = Instant::now() + ingest.node.config().devices.login_timeout;
    // The handshake is part of logging in: it spends the same `devices.login_timeout`.
    let stream = match tls {
        None => Socket::Plain(stream),
        Some(tls) => {
            let within = login_deadline.saturating_duration_since(Instant::now());
            let handshake = tokio::select! {
                handshake = tls.accept(stream, within) => handshake,
                _ = ingest.stop.cancelled() => None,
            };
            match handshake {
                Some(stream) => Socket::Tls(Box::new(stream)),
                None => return,
            }
        }
    };
    let mut conn = Conn {
        ingest,
        protocol,
        stream,
        peer,
        session: SessionState::new(),
        devices: HashSet::new(),
        login_deadline,
    };
    match conn.run().await {
        End::Quiet => {}
        End::Because(why) => {
            tracing::debug!(protocol = protocol.name(), %peer, reason = %why, "device connection closed")
        }
    }
    for id in &conn.devices {
        conn.ingest.registry.disconnected(id);
    }
}

impl Conn {
    async fn run(&mut self) -> End {
        let mut buf: Vec<u8> = Vec::new();
        let max = max_frame(self.protocol);
        loop {
            // Handle every complete frame before reading more: while a frame waits for the spool,
            // nothing is read from this socket (backpressure).
            loop {
                match frame(self.protocol, &buf, &mut self.session) {
                    Err(e) => return End::Because(format!("unframeable stream: {e}")),
                    Ok(FrameStatus::NeedMore) => break,
                    Ok(FrameStatus::Skip(n)) => {
                        buf.drain(..n.min(buf.len()));
                    }
                    Ok(FrameStatus::Complete(n)) => {
                        let n = n.min(buf.len());
                        let handled = self.handle(&buf[..n]).await;
                        buf.drain(..n);
                        if let Err(end) = handled {
                            return end;
                        }
                    }
                }
            }
            if buf.len() > max {
                return End::Because(format!("frame longer than {max} bytes"));
            }
            if buf.is_empty() && buf.capacity() > READ_CHUNK {
                buf = Vec::new();
            }
            buf.reserve(READ_CHUNK);
            // Before identifying, the whole connection has `login_timeout` (a trickle of bytes
            // does not extend it); after, each read waits at most `idle_timeout`.
            let identified = !self.devices.is_empty();
            let deadline = if identified {
                Instant::now() + self.ingest.node.config().devices.idle_timeout
            } else {
                self.login_deadline
            };
            let read = tokio::select! {
                _ = self.ingest.stop.cancelled() => return End::Quiet,
                r = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut buf)) => r,
            };
            match read {
                Err(_) if !identified => {
                    self.ingest.login_timed_out(self.protocol);
                    return End::Because("no login within devices.login_timeout".into());
                }
                Err(_) => return End::Because("idle timeout".into()),
                Ok(Ok(0)) => return End::Quiet,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return End::Because(format!("read: {e}")),
            }
        }
    }

    async fn handle(&mut self, frame: &[u8]) -> Result<(), End> {
        let now = DeviceIngest::now();
        self.session.now_ms = now;
        let decoded = match decode(self.protocol, frame, &mut self.session) {
            Ok(d) => d,
            Err(e) => {
                // No reply is owed for an undecodable frame; the device retransmits.
                tracing::debug!(protocol = self.protocol.name(), peer = %self.peer, error = %e, "undecodable device frame");
                return Ok(());
            }
        };
        let mut ids: Vec<String> = Vec::new();
        for id in decoded
            .device_id
            .iter()
            .chain(self.session.device_id.iter())
            .chain(decoded.positions.iter().map(|p| &p.device_id))
        {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        for id in &ids {
            if !self.ingest.allowed(id) {
                if self.protocol == Protocol::Teltonika && decoded.positions.is_empty() {
                    let _ = self.write(&teltonika::IMEI_REJECT).await;
                }
                return Err(End::Because(format!("device {id:?} is not allowed")));
            }
            let registered = if !self.devices.contains(id) {
                let r = self
                    .ingest
                    .registry
                    .connected(id, self.protocol, self.peer, now);
                if r.is_ok() {
                    self.devices.insert(id.clone());
                }
                r
            } else {
                self.ingest
                    .registry
                    .seen(id, self.protocol, Some(self.peer), now)
            };
            if let Err(full) = registered {
                self.ingest.refused(self.protocol, "registry_full");
                return Err(End::Because(full.to_string()));
            }
        }
        let live = if decoded.positions.is_empty() {
            Vec::new()
        } else {
            self.ingest
                .accept(decoded.positions, self.protocol)
                .await
                .map_err(|e| End::Because(format!("positions not accepted: {e}")))?
        };
        // Acknowledge only now: the positions are in the spool, flushed per `devices.fsync`.
        if let Some(reply) = &decoded.reply {
            self.write(reply).await?;
        }
        self.ingest.publish(live).await;
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        // The flush matters over TLS only: records rustls still holds go out with it.
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Because(format!("write: {e}"))),
            Err(_) => Err(End::Because("write timeout".into())),
        }
    }
}
