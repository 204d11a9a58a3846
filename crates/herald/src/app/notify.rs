//! systemd's service notification protocol (sd_notify(3)), written with std: when the service
//! manager sets `NOTIFY_SOCKET`, one datagram of `KEY=VALUE` lines tells it that this process is
//! ready (`Type=notify`), reloading (`Type=notify-reload`), stopping, or that a handover made a
//! new process the service's main one (`MAINPID=`). Without `NOTIFY_SOCKET` every call does
//! nothing. Sending never fails the process: the manager may be gone or its queue full.
//!
//! `NOTIFY_SOCKET` stays in the environment on purpose: the process a SIGUSR2 handover starts
//! inherits it and announces itself as the new main process.

use crate::node::Node;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// A handle on the service manager's notification socket; does nothing without one.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// READY=1 was sent: before it, a reload's READY=1 would end the start too early.
    ready: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`: a path, or `@name` for an abstract socket. Anything else (unset,
    /// empty, `vsock:` addresses) gives a notifier that sends nothing.
    pub fn from_env() -> Notifier {
        match std::env::var_os(NOTIFY_SOCKET_ENV) {
            Some(value) => Notifier::to(value.as_encoded_bytes()),
            None => Notifier::default(),
        }
    }

    fn to(value: &[u8]) -> Notifier {
        let target = address(value).and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            // A full queue must not stall the runtime: the notification is dropped instead.
            socket.set_nonblocking(true)?;
            Ok(Target {
                socket,
                addr,
                ready: AtomicBool::new(false),
            })
        });
        match target {
            Ok(target) => Notifier {
                target: Some(Arc::new(target)),
            },
            Err(e) => {
                tracing::debug!(error = %e, "NOTIFY_SOCKET: not usable; no systemd notifications");
                Notifier::default()
            }
        }
    }

    /// Startup finished: the node serves and its broker is connected.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
        self.mark_ready();
    }

    /// A process started by a SIGUSR2 handover is ready: it becomes the service's main process
    /// (systemd accepts this from a process other than the main one only with
    /// `NotifyAccess=all`), so the old one's exit does not end the service.
    pub fn ready_as_main(&self) {
        self.send(&format!(
            "MAINPID={}\nREADY=1\nSTATUS=serving (took over by SIGUSR2)",
            std::process::id()
        ));
        self.mark_ready();
    }

    /// A SIGHUP reload begins; [`Notifier::reloaded`] must follow. `MONOTONIC_USEC` lets a
    /// `Type=notify-reload` manager match this to the signal it sent. Nothing while starting.
    pub fn reloading(&self) {
        if !self.is_ready() {
            return;
        }
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
            monotonic_usec()
        ));
    }

    /// The reload is over (applied or refused: either way the process serves).
    pub fn reloaded(&self) {
        if !self.is_ready() {
            return;
        }
        self.send("READY=1\nSTATUS=serving");
    }

    /// A graceful stop begins (not after a handover: the service goes on in the new process).
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining and stopping");
    }

    fn mark_ready(&self) {
        if let Some(target) = &self.target {
            target.ready.store(true, Ordering::Relaxed);
        }
    }

    fn is_ready(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|t| t.ready.load(Ordering::Relaxed))
    }

    fn send(&self, state: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = target.socket.send_to_addr(state.as_bytes(), &target.addr) {
            tracing::debug!(error = %e, state, "NOTIFY_SOCKET: notification not sent");
        }
    }
}

/// `/path` or `@abstract` (sd_notify(3)); the abstract form is Linux only.
fn address(value: &[u8]) -> std::io::Result<SocketAddr> {
    use std::io::{Error, ErrorKind};
    match value.first() {
        Some(b'/') => {
            use std::os::unix::ffi::OsStrExt as _;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value))
        }
        #[cfg(target_os = "linux")]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(&value[1..])
        }
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        )),
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64) * 1_000_000 + (now.tv_nsec as u64) / 1_000
}

/// Sends `READY=1` once the node is ready (its broker connected: what `/ready` and a handover
/// wait for). No deadline here: systemd's `TimeoutStartSec=` decides how long a start may take.
pub async fn report_ready(node: Arc<Node>, notifier: Notifier) {
    while !node.is_ready() {
        if node.shutdown.is_cancelled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    notifier.ready();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_addresses() {
        let path = address(b"/run/systemd/notify").expect("path");
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abstract_name = address(b"@herald/notify").expect("abstract");
        use std::os::linux::net::SocketAddrExt as _;
        assert_eq!(
            abstract_name.as_abstract_name(),
            Some(&b"herald/notify"[..])
        );
        assert!(address(b"").is_err());
        assert!(address(b"relative").is_err());
        assert!(address(b"vsock:2:1234").is_err());
    }

    #[test]
    fn an_abstract_socket_receives_the_notification() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("herald-notify-test-{}", std::process::id());
        let receiver = UnixDatagram::bind_addr(
            &SocketAddr::from_abstract_name(name.as_bytes()).expect("name"),
        )
        .expect("bind");
        Notifier::to(format!("@{name}").as_bytes()).stopping();
        let mut buf = [0u8; 256];
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = receiver.recv(&mut buf).expect("datagram");
        let text = std::str::from_utf8(&buf[..n]).expect("utf-8");
        assert!(text.lines().any(|l| l == "STOPPING=1"), "{text}");
    }

    #[test]
    fn monotonic_time_counts_up_in_microseconds() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(5));
        let b = monotonic_usec();
        assert!(b >= a + 4_000 && b < a + 5_000_000, "{a} {b}");
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        // Sends nothing and does not panic.
        Notifier::default().ready();
        Notifier::to(b"not a socket").ready();
    }
}
