//! Listening sockets this process did not bind itself: handed over by the Herald process it
//! replaces (SIGUSR2: the old process starts this one with `HERALD_HANDOVER=1` and a Unix socket
//! as standard input, see `crate::app::handover`), or passed by systemd socket activation
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`). Adopting the very socket the old process
//! listens on means no connection is refused or reset while the processes change places.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd as _, OwnedFd};

/// Set by the old process for the new one it starts on SIGUSR2.
pub const HANDOVER_ENV: &str = "HERALD_HANDOVER";
/// systemd's first passed descriptor (`SD_LISTEN_FDS_START`).
const SYSTEMD_FIRST_FD: i32 = 3;

/// The listeners found at start, taken one by one as the server binds.
#[derive(Default)]
pub struct Inherited {
    listeners: Vec<(String, TcpListener)>,
    /// The Unix socket to the old process, to tell it when this one serves.
    pub handover: Option<OwnedFd>,
}

impl Inherited {
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// What the environment hands this process: a handover, systemd's sockets, or nothing.
    pub fn from_env() -> anyhow::Result<Inherited> {
        if std::env::var_os(HANDOVER_ENV).is_some() {
            return from_handover();
        }
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            == Some(std::process::id());
        match std::env::var("LISTEN_FDS") {
            Ok(count) if ours => {
                let count: i32 = count
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| anyhow::anyhow!("LISTEN_FDS={count:?} is not a count"))?;
                from_systemd(count)
            }
            _ => Ok(Inherited::none()),
        }
    }

    /// The listener named `name`, or an unnamed one bound to `addr`. A named one is taken only
    /// when it listens on `addr` (or `addr` asks for any port): a changed `http.listen` binds anew.
    pub fn take(&mut self, name: &str, addr: SocketAddr) -> Option<TcpListener> {
        let index = self.listeners.iter().position(|(n, l)| {
            let Ok(local) = l.local_addr() else {
                return false;
            };
            let same_place = local == addr
                || (addr.port() == local.port() && addr.ip().is_unspecified())
                || addr.port() == 0;
            let named = n == name;
            let unnamed = n.is_empty() || n == "unknown";
            (named && same_place) || (unnamed && local == addr)
        })?;
        Some(self.listeners.swap_remove(index).1)
    }

    /// Names of the listeners nothing took (closed when dropped), for a warning.
    pub fn untaken(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|(name, l)| match l.local_addr() {
                Ok(addr) => format!("{name} ({addr})"),
                Err(_) => name.clone(),
            })
            .collect()
    }
}

fn from_handover() -> anyhow::Result<Inherited> {
    let channel = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| anyhow::anyhow!("{HANDOVER_ENV}: standard input: {e}"))?;
    let received = crate::edges::fd_passing::receive(&channel).map_err(|e| {
        anyhow::anyhow!("{HANDOVER_ENV}: no listeners on standard input from the old process: {e}")
    })?;
    let mut listeners = Vec::new();
    for (name, fd) in received {
        listeners.push((
            name.clone(),
            listener(fd).map_err(|e| anyhow::anyhow!("{HANDOVER_ENV}: listener {name:?}: {e}"))?,
        ));
    }
    Ok(Inherited {
        listeners,
        handover: Some(channel),
    })
}

/// systemd's descriptors 3.. are copied with pidfd_getfd(2) on this very process: a safe way to
/// own a descriptor by number. The originals stay open, as systemd keeps its own copy anyway.
fn from_systemd(count: i32) -> anyhow::Result<Inherited> {
    use rustix::process::{getpid, pidfd_getfd, pidfd_open, PidfdFlags, PidfdGetfdFlags};
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(str::to_string)
        .collect();
    let me = pidfd_open(getpid(), PidfdFlags::empty())
        .map_err(|e| anyhow::anyhow!("LISTEN_FDS: pidfd_open: {e}"))?;
    let mut listeners = Vec::new();
    for i in 0..count {
        let number = SYSTEMD_FIRST_FD + i;
        let fd = pidfd_getfd(&me, number, PidfdGetfdFlags::empty())
            .map_err(|e| anyhow::anyhow!("LISTEN_FDS: descriptor {number}: {e}"))?;
        let name = names
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .cloned()
            .unwrap_or_default();
        match listener(fd) {
            Ok(l) => listeners.push((name, l)),
            // Not ours to use (a UDP or Unix socket meant for something else): left alone.
            Err(e) => tracing::warn!(fd = number, error = %e, "LISTEN_FDS: descriptor skipped"),
        }
    }
    Ok(Inherited {
        listeners,
        handover: None,
    })
}

/// A listening TCP socket, non-blocking for tokio; anything else is refused.
fn listener(fd: OwnedFd) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::from(fd);
    let tcp = matches!(
        socket.domain()?,
        socket2::Domain::IPV4 | socket2::Domain::IPV6
    ) && socket.r#type()? == socket2::Type::STREAM;
    if !tcp || !socket.is_listener()? {
        return Err(std::io::Error::other("not a listening TCP socket"));
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
