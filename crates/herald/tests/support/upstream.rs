//! A fake upstream WebSocket feed (an exchange's stream): records what clients send, broadcasts
//! what the test tells it to, and can drop every connection.

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_websockets::{Message, ServerBuilder};

#[derive(Clone, Debug)]
enum Command {
    Text(String),
    DropAll,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    /// Text messages received from clients, in order.
    pub received: Arc<Mutex<Vec<String>>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    tx: broadcast::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let (tx, _) = broadcast::channel(4096);
        let received = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let task = {
            let (tx, received, accepted, open) =
                (tx.clone(), received.clone(), accepted.clone(), open.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let mut rx = tx.subscribe();
                    let (received, open) = (received.clone(), open.clone());
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let Ok((_request, mut ws)) = ServerBuilder::new().accept(stream).await
                        else {
                            return;
                        };
                        open.fetch_add(1, Ordering::SeqCst);
                        loop {
                            tokio::select! {
                                m = ws.next() => match m {
                                    Some(Ok(m)) => {
                                        if let Some(t) = m.as_text() {
                                            received.lock().push(t.to_string());
                                        }
                                    }
                                    _ => break,
                                },
                                c = rx.recv() => match c {
                                    Ok(Command::Text(t)) => {
                                        if ws.send(Message::text(t)).await.is_err() {
                                            break;
                                        }
                                    }
                                    Ok(Command::DropAll) | Err(_) => break,
                                },
                            }
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        FakeUpstream {
            addr,
            received,
            accepted,
            open,
            tx,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/stream", self.addr)
    }

    /// Sends a text message to every open connection.
    pub fn send(&self, text: &str) {
        let _ = self.tx.send(Command::Text(text.to_string()));
    }

    /// Closes every open connection (an upstream restart).
    pub fn drop_all(&self) {
        let _ = self.tx.send(Command::DropAll);
    }

    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_all();
    }
}
