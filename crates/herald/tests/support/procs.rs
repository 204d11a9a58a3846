//! Real `herald` processes for tests: start one from a config file, wait for its address, kill it
//! (SIGKILL, SIGSTOP/SIGCONT) and ask its API.

use super::{API_KEY, SECRET};
use serde_json::json;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A child process killed when the test ends, however it ends.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn kill9(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.0.wait();
    }

    /// Freezes (true) or resumes (false) the process, as a long pause or a VM migration would.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as libc::pid_t, signal) };
    }
}

/// Sends `sig` to a process a test started (or to its handover successor).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started (or its handover successor).
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// The process a handover started (not the test's child): killed when the test ends.
pub struct Successor(pub u32);

impl Drop for Successor {
    fn drop(&mut self) {
        signal(self.0, libc::SIGKILL);
    }
}

/// Waits until the process exits, at most `wait` (then the test fails).
pub async fn wait_exit(proc: &mut Proc, wait: std::time::Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(status) = proc.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process still running after {wait:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub struct Node {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub lines: mpsc::Receiver<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The `chat` namespace of [`node_config`]: open, with history.
pub const CHAT_WITH_HISTORY: &str = r#"[[channel.namespaces]]
name = "chat"
allow_subscribe_for_client = true
history_size = 100
history_ttl = "5m"
force_recovery = true"#;

/// The `chat` namespace for brokers without history (NATS): open, nothing kept.
pub const CHAT_WITHOUT_HISTORY: &str = r#"[[channel.namespaces]]
name = "chat"
allow_subscribe_for_client = true"#;

/// A node config: known secrets, an open `chat` namespace with history, extra TOML appended.
pub fn node_config(dir: &Path, name: &str, listen: &str, extra: &str) -> PathBuf {
    node_config_with(dir, name, listen, CHAT_WITH_HISTORY, extra)
}

/// [`node_config`] with another `chat` namespace (`CHAT_WITHOUT_HISTORY` on NATS).
pub fn node_config_with(dir: &Path, name: &str, listen: &str, chat: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"[node]
name = "{name}"
[http]
listen = "{listen}"
shutdown_timeout = "1s"
[api]
key = "{API_KEY}"
[client.token]
hmac_secret = "{SECRET}"
{chat}
{extra}
"#
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// Starts `herald serve <args>` (stdout dropped, `HERALD_CONFIG` unset, `RUST_LOG` set to
/// `rust_log` or unset); its stderr lines arrive on the receiver as they are written.
pub fn serve<A: AsRef<OsStr>>(
    args: impl IntoIterator<Item = A>,
    rust_log: Option<&str>,
) -> std::io::Result<(Proc, mpsc::Receiver<String>)> {
    serve_env(args, rust_log, &[])
}

/// [`serve`] with more environment variables (e.g. `NOTIFY_SOCKET`).
pub fn serve_env<A: AsRef<OsStr>>(
    args: impl IntoIterator<Item = A>,
    rust_log: Option<&str>,
    env: &[(&str, &OsStr)],
) -> std::io::Result<(Proc, mpsc::Receiver<String>)> {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .args(args)
        // A manager that runs the tests must not hear from the servers they start.
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .env_remove("HERALD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match rust_log {
        Some(level) => command.env("RUST_LOG", level),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command.spawn()?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok((Proc(child), lines))
}

/// Starts `herald serve --config <config>` with its stderr written to `log` (no colours,
/// `HERALD_CONFIG` and `RUST_LOG` unset) and, when given, at most `fd_limit` open descriptors
/// (RLIMIT_NOFILE, set before exec).
pub fn serve_logged(config: &Path, log: &Path, fd_limit: Option<u64>) -> Proc {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("HERALD_CONFIG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    if let Some(limit) = fd_limit {
        // SAFETY: only async-signal-safe setrlimit between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Proc(command.spawn().expect("spawn herald"))
}

/// Starts `herald serve -c config`; returns once it logs its WebSocket address.
pub fn start_node(config: &Path) -> Result<Node, String> {
    start_node_env(config, &[])
}

/// [`start_node`] with more environment variables.
pub fn start_node_env(config: &Path, env: &[(&str, &OsStr)]) -> Result<Node, String> {
    let (mut proc, lines) = serve_env([OsStr::new("-c"), config.as_os_str()], Some("info"), env)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(rest) = line.split("websocket: ws://").nth(1) {
                    let addr = rest
                        .trim_end_matches("/connection/websocket")
                        .trim()
                        .trim_end_matches("/connection/websocket")
                        .parse()
                        .map_err(|e| format!("{e}: {line}"))?;
                    return Ok(Node { proc, addr, lines });
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = proc.0.try_wait() {
                    return Err(format!("exited with {status}:\n{}", seen.join("\n")));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = proc.0.wait();
                return Err(seen.join("\n"));
            }
        }
    }
    proc.kill9();
    Err(format!("never started:\n{}", seen.join("\n")))
}

/// Waits until the node at `addr` reports ready (its broker connected and listening): a node
/// answers as soon as it listens, before its broker is up.
pub async fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while super::http_raw(addr, "GET", "/ready", &[], "").await.0 != 200 {
        assert!(Instant::now() < deadline, "node {addr} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Clients of the node named `name`, as the `info` API of the node at `addr` lists it (with a
/// shared broker, every node lists the whole cluster).
pub async fn clients_on(addr: SocketAddr, name: &str) -> u64 {
    let info = super::api_ok(addr, "info", json!({})).await;
    info["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
        .and_then(|n| n["num_clients"].as_u64())
        .unwrap_or(0)
}
