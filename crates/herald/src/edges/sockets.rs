//! Listening sockets as every edge opens them, and the reset that refuses a connection.

use std::net::SocketAddr;
use tokio::net::TcpListener;

/// A listener with `SO_REUSEADDR` (restarts do not wait for TIME_WAIT) and, when asked,
/// `SO_REUSEPORT` (several processes share one port).
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Closes a refused connection at once with a reset: no TIME_WAIT, no unread data kept.
pub fn close_now(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}
