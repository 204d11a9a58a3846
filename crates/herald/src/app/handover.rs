//! SIGUSR2: a zero-downtime restart or upgrade without a supervisor. The old process starts the
//! binary again (the file now at its path: an upgraded binary there is what runs) with its own
//! arguments and environment, and hands it the HTTP listening sockets over a Unix socket given as
//! the new process's standard input (`crate::edges::fd_passing`). The new process adopts them
//! (`crate::edges::inherited`), serves, and answers once its node is ready; only then does the old
//! one stop accepting and drain its clients to it (`crate::app::drain`). A new process that exits
//! or is not ready within `http.upgrade_timeout` is stopped, and the old one keeps serving.
//!
//! Why a Unix socket rather than inherited descriptor numbers: std's `Command` can place a
//! descriptor only at 0, 1 or 2 without `pre_exec` (unsafe), and adopting a descriptor by number
//! is unsafe too; `SCM_RIGHTS` through rustix hands over owned descriptors with safe code only.

use super::server::Server;
use crate::edges::fd_passing;
use crate::edges::inherited::HANDOVER_ENV;
use crate::node::Node;
use anyhow::{bail, Context as _};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The binary to start on SIGUSR2: the path this process was started from, resolved now, at
/// start. (At signal time /proc/self/exe would name the replaced file, "… (deleted)".)
pub fn own_binary() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

/// Starts the new process on this server's listeners and waits until it is ready. Returns its
/// pid; on an error the new process is gone and this one serves on as before.
pub async fn hand_over(server: &mut Server, binary: &Path) -> anyhow::Result<u32> {
    let timeout = server.node.config().http.upgrade_timeout;
    let (ours, theirs) = fd_passing::pair().context("upgrade: socketpair")?;
    let mut command = Command::new(binary);
    command
        .args(std::env::args_os().skip(1))
        .env(HANDOVER_ENV, "1")
        // systemd's variables were for this process, not for its successor.
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        // NOTIFY_SOCKET stays: the new process tells systemd it is the main one now.
        .stdin(Stdio::from(theirs));
    let mut child = command
        .spawn()
        .with_context(|| format!("upgrade: cannot start {}", binary.display()))?;
    // Our copy of its end goes, so its exit reads as the end of the socket.
    drop(command);
    let pid = child.id();
    tracing::info!(pid, binary = %binary.display(), "upgrade: new process started; handing over the listeners");
    let outcome = match fd_passing::send(&ours, &server.listeners()) {
        Ok(()) => wait_ready(ours, timeout).await,
        Err(e) => Err(anyhow::anyhow!(
            "upgrade: cannot hand over the listeners: {e}"
        )),
    };
    match outcome {
        Ok(()) => {
            server.handed_over = true;
            Ok(pid)
        }
        Err(e) => {
            let _ = child.kill();
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            match status {
                Some(status) => bail!("{e:#} (new process {pid}: {status})"),
                None => bail!("{e:#} (new process {pid})"),
            }
        }
    }
}

async fn wait_ready(ours: OwnedFd, timeout: Duration) -> anyhow::Result<()> {
    socket2::SockRef::from(&ours)
        .set_read_timeout(Some(timeout))
        .context("upgrade: socket timeout")?;
    let answer = tokio::task::spawn_blocking(move || fd_passing::wait_ready(&ours))
        .await
        .context("upgrade: waiting task")?;
    match answer {
        Ok(true) => Ok(()),
        Ok(false) => bail!("upgrade: the new process exited before it was ready (see its log)"),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            bail!(
                "upgrade: the new process was not ready within http.upgrade_timeout ({timeout:?})"
            )
        }
        Err(e) => bail!("upgrade: waiting for the new process: {e}"),
    }
}

/// In a process started by a handover: tells the old process once the node is ready (its broker
/// connected), so the old one drains its clients to a node that can serve them. Under systemd it
/// first becomes the service's main process, before the old one can exit.
pub async fn report_ready(node: Arc<Node>, channel: OwnedFd, notifier: super::notify::Notifier) {
    let deadline = Instant::now() + node.config().http.upgrade_timeout;
    while !node.is_ready() {
        if Instant::now() >= deadline || node.shutdown.is_cancelled() {
            // Closing the channel tells the old process, which stops this one and serves on.
            tracing::error!(
                "upgrade: not ready within http.upgrade_timeout; the old process keeps serving"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    notifier.ready_as_main();
    match fd_passing::send_ready(&channel) {
        Ok(()) => tracing::info!("upgrade: ready; the old process drains its clients to this one"),
        Err(e) => tracing::warn!(error = %e, "upgrade: cannot tell the old process"),
    }
}
