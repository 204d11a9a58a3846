//! Opening many loopback connections: source addresses, IP_BIND_ADDRESS_NO_PORT, the clock.

use anyhow::bail;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

/// Wall-clock microseconds: publications carry this, subscribers subtract it (same machine).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Load only ever targets this machine.
pub fn require_loopback(addr: &SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("{addr} is not a loopback address: load tests only target this machine");
    }
    Ok(())
}

/// Source address for the i-th connection: 127.0.0.2 .. 127.0.0.101. One (source, destination)
/// pair has ~28,000 ephemeral ports; a hundred sources make room for a million connections.
pub fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 100) as u8))
}

/// Connects to `server` from `source` with a kernel-chosen port.
pub async fn connect_from(server: SocketAddr, source: IpAddr) -> anyhow::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    set_bind_address_no_port(&socket);
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT: defer the port choice to connect(), so a bound source address does
/// not reserve a port per socket up front (the 4-tuple is then what must be unique, not the
/// port). Best effort: without it, binding still works, with fewer ports.
#[allow(unsafe_code)] // no safe wrapper offers IP_BIND_ADDRESS_NO_PORT
pub fn set_bind_address_no_port(socket: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for the given length; the fd is owned by `socket`.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Raises this process' open-file limit to its hard limit; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}
