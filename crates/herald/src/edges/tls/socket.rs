//! An accepted connection, plain TCP or TLS over it. The WebSocket session reads and writes
//! without waiting (readiness, then `try_read`/`try_write`), so the TLS side offers the same
//! calls; the plain side is the `TcpStream` call itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Socket {
    Plain(TcpStream),
    /// Boxed: the TLS state is large and the plain variant is the common one.
    Tls(Box<TlsStream<TcpStream>>),
}

/// Polls once without a task to wake: `Pending` means the socket would block. Readiness is then
/// awaited through the TCP stream (`readable`, `writable`), as for a plain socket.
fn once<T>(poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>) -> io::Result<T> {
    match poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Socket {
    /// The TCP connection underneath (socket options, readiness).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Socket::Plain(tcp) => tcp,
            Socket::Tls(tls) => tls.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }

    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.try_read(buf),
            Socket::Tls(tls) => {
                let mut read = ReadBuf::new(buf);
                once(|cx| Pin::new(&mut **tls).poll_read(cx, &mut read))?;
                Ok(read.filled().len())
            }
        }
    }

    /// Writes what the connection takes without waiting. Over TLS, bytes taken may still sit
    /// encrypted in rustls' buffer: see [`Socket::has_pending_output`] and [`Socket::try_flush`].
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(tcp) => tcp.try_write(buf),
            Socket::Tls(tls) => once(|cx| Pin::new(&mut **tls).poll_write(cx, buf)),
        }
    }

    /// Hands the kernel what TLS still holds, without waiting (nothing to do on a plain socket).
    /// Returns the bytes the kernel took, so a caller timing stalls sees this progress too.
    pub fn try_flush(&mut self) -> io::Result<usize> {
        match self {
            Socket::Plain(_) => Ok(0),
            Socket::Tls(tls) => {
                let (tcp, session) = tls.get_mut();
                // A fatal error rustls met earlier.
                io::Write::flush(&mut session.writer())?;
                let mut total = 0;
                while session.wants_write() {
                    match session.write_tls(&mut TryWriter(tcp)) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => total += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(total)
            }
        }
    }

    /// Whether TLS records are waiting for the kernel to take them.
    pub fn has_pending_output(&self) -> bool {
        match self {
            Socket::Plain(_) => false,
            Socket::Tls(tls) => tls.get_ref().1.wants_write(),
        }
    }

    /// Waits until a read can make progress. Cancel-safe. Over TLS, plaintext rustls already
    /// decrypted (or a close it received) is ready without the socket.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Socket::Plain(tcp) => tcp.readable().await,
            Socket::Tls(tls) => {
                if !tls.get_ref().1.wants_read() {
                    return Ok(());
                }
                tls.get_ref().0.readable().await
            }
        }
    }

    /// Waits until the socket can take more bytes. Cancel-safe.
    pub async fn writable(&self) -> io::Result<()> {
        self.tcp().writable().await
    }
}

/// The TCP stream as a `Write` that never waits: `WouldBlock` clears tokio's readiness, so a
/// later `writable()` waits for the kernel to make room.
struct TryWriter<'a>(&'a TcpStream);

impl io::Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Socket::Tls(tls) => Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Socket::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Socket::Tls(tls) => Pin::new(&mut **tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(tcp) => tcp.is_write_vectored(),
            Socket::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Socket::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Socket::Tls(tls) => Pin::new(&mut **tls).poll_shutdown(cx),
        }
    }
}
