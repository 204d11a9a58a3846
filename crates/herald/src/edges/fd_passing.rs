//! Listening sockets sent to another process over a Unix `SOCK_SEQPACKET` socket (`SCM_RIGHTS`),
//! through rustix's safe API: the descriptors arrive as `OwnedFd`s, so no `unsafe` claims a raw
//! descriptor number anywhere. One packet carries the listeners' names (one a line) and their
//! descriptors, in the same order; the receiver answers with one packet when it is ready.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{Error, ErrorKind, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Most listeners one handover carries (public, internal, and room to grow).
pub const MAX_FDS: usize = 8;
/// Largest packet of names or of an answer.
const MAX_PACKET: usize = 1024;
/// The receiver's answer once it serves.
pub const READY: &[u8] = b"ready";

/// A connected pair of `SOCK_SEQPACKET` sockets (message boundaries kept), close-on-exec: the
/// end meant for the other process is handed to it explicitly.
pub fn pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends the named descriptors in one packet.
pub fn send(socket: impl AsFd, listeners: &[(&str, BorrowedFd<'_>)]) -> std::io::Result<()> {
    if listeners.is_empty() || listeners.len() > MAX_FDS {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "1 to MAX_FDS listeners",
        ));
    }
    let names: Vec<&str> = listeners.iter().map(|(name, _)| *name).collect();
    let names = names.join("\n");
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| *fd).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Error::other("descriptors do not fit the control buffer"));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(names.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one packet of named descriptors (close-on-exec in this process).
pub fn receive(socket: impl AsFd) -> std::io::Result<Vec<(String, OwnedFd)>> {
    let mut bytes = [0u8; MAX_PACKET];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let text = bytes
        .get(..got.bytes)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "listener names are not UTF-8"))?;
    let names: Vec<String> = text.split('\n').map(str::to_string).collect();
    if got.bytes == 0 || names.len() != fds.len() {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "{} listener names for {} descriptors",
                names.len(),
                fds.len()
            ),
        ));
    }
    Ok(names.into_iter().zip(fds).collect())
}

/// Tells the sender that this process serves.
pub fn send_ready(socket: impl AsFd) -> std::io::Result<()> {
    rustix::net::send(socket, READY, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Waits for the answer: `Ok(true)` when the receiver is ready, `Ok(false)` when it closed its
/// end (it exited) first. Blocking; bounded by the socket's read timeout.
pub fn wait_ready(socket: impl AsFd) -> std::io::Result<bool> {
    let mut bytes = [0u8; MAX_PACKET];
    match rustix::net::recv(socket, &mut bytes, RecvFlags::empty()) {
        Ok((n, _)) => Ok(bytes.get(..n) == Some(READY)),
        // It exited without reading what was sent (it failed before adopting the listeners).
        Err(rustix::io::Errno::CONNRESET) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
