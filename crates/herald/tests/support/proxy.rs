//! A fault-injecting TCP proxy. Faults:
//! - `blackhole` / `restore`: bytes are read and dropped, nothing is closed — a peer that vanished
//!   without a FIN;
//! - `stall` / `resume`: forwarding pauses (bytes wait in kernel buffers) and later continues — a
//!   hung server or network;
//! - `kill_connections`: every open connection is cut — a server restart;
//! - `refuse` / `accept`: new connections are closed at once while refusing — a server that is down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
    stalled: watch::Sender<bool>,
    pipes: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let blackhole = Arc::new(AtomicBool::new(false));
        let refusing = Arc::new(AtomicBool::new(false));
        let (stalled, stall_rx) = watch::channel(false);
        let pipes: Arc<parking_lot::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (flag, refuse, tasks) = (blackhole.clone(), refusing.clone(), pipes.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if refuse.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                let mut tasks = tasks.lock();
                tasks.retain(|t| !t.is_finished());
                tasks.push(tokio::spawn(pipe(ri, wo, flag.clone(), stall_rx.clone())));
                tasks.push(tokio::spawn(pipe(ro, wi, flag.clone(), stall_rx.clone())));
            }
        });
        Proxy {
            addr,
            blackhole,
            refusing,
            stalled,
            pipes,
            task,
        }
    }

    /// From now on, traffic in both directions is swallowed; connections stay open.
    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }

    /// Pauses forwarding on every connection (new ones too) until `resume`.
    /// Forwards again after `blackhole` (new connections, and old ones that are still open).
    pub fn restore(&self) {
        self.blackhole.store(false, Ordering::SeqCst);
    }

    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Cuts every open connection (both sides see the socket close).
    pub fn kill_connections(&self) {
        for task in self.pipes.lock().drain(..) {
            task.abort();
        }
    }

    /// New connections are closed at once (`true`) or forwarded again (`false`).
    pub fn refuse(&self, refuse: bool) {
        self.refusing.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.kill_connections();
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
        // While stalled nothing is read, so the sender's bytes wait in the kernel buffers.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
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
        // Bytes read just before a stall are held back until the resume.
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A broker fault the proxy injects and lifts.
pub enum Fault {
    /// Every connection cut and new ones refused (the server restarting), then accepted again.
    Restart,
    /// Forwarding paused (the server or the network hung), then resumed.
    Stall,
}

impl Proxy {
    pub fn inject(&self, fault: &Fault) {
        match fault {
            Fault::Restart => {
                self.refuse(true);
                self.kill_connections();
            }
            Fault::Stall => self.stall(),
        }
    }

    pub fn lift(&self, fault: &Fault) {
        match fault {
            Fault::Restart => self.refuse(false),
            Fault::Stall => self.resume(),
        }
    }
}
