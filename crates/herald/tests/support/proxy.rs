//! A fault-injecting TCP proxy: forwards both ways until told to
//! * blackhole traffic (bytes are read and dropped, nothing is closed), which is how a peer that
//!   vanished without a FIN looks to the server; or
//! * stall (nothing is read or forwarded, sockets stay open, so the peers' windows fill up) until
//!   resumed, which is how a hung or overloaded database looks to its client. New connections
//!   made while stalled are accepted and stall too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    stalled: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let blackhole = Arc::new(AtomicBool::new(false));
        let (stalled, stall_rx) = watch::channel(false);
        let flag = blackhole.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, flag.clone(), stall_rx.clone()));
                tokio::spawn(pipe(ro, wi, flag.clone(), stall_rx.clone()));
            }
        });
        Proxy {
            addr,
            blackhole,
            stalled,
            task,
        }
    }

    /// From now on, traffic in both directions is swallowed; connections stay open.
    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }

    /// Forwards again (new connections, and old ones that are still open).
    pub fn restore(&self) {
        self.blackhole.store(false, Ordering::SeqCst);
    }

    /// Stop forwarding (and reading) in both directions; connections stay open.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forward again, starting with whatever the peers queued meanwhile.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Not reading while stalled is what makes the sender's window fill.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = stalled.wait_for(|s| *s) => continue,
        };
        let n = match n {
            Ok(0) | Err(_) => {
                if !blackhole.load(Ordering::SeqCst) {
                    let _ = to.shutdown().await;
                }
                // A blackholed peer never says goodbye: keep the other side open.
                std::future::pending::<()>().await;
                return;
            }
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        // Bytes read just before a stall are held until it ends.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
