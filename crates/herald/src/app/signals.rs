//! What the operator asks of a running process by signal: stop (SIGTERM, SIGINT), reload the
//! configuration (SIGHUP, what `systemctl reload` sends) or hand the listeners to a new process
//! (SIGUSR2, a zero-downtime restart or upgrade).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// One request from the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Stop,
    Reload,
    Upgrade,
}

/// The process's signal handlers, installed once at start so a signal that arrives while the
/// node works is queued rather than killing the process.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr2: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Waits for the next request.
    pub async fn next(&mut self) -> Request {
        tokio::select! {
            _ = self.term.recv() => Request::Stop,
            _ = self.int.recv() => Request::Stop,
            _ = self.hup.recv() => Request::Reload,
            _ = self.usr2.recv() => Request::Upgrade,
        }
    }
}
