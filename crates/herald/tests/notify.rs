//! systemd's notification protocol with the real binary: the test plays the service manager,
//! binds a datagram socket and gives its path as `NOTIFY_SOCKET`. It checks `READY=1` once the
//! node is ready, `RELOADING=1` with `MONOTONIC_USEC` then `READY=1` around a SIGHUP,
//! `STOPPING=1` on SIGTERM, and after a SIGUSR2 handover `MAINPID=` of the new process with
//! `READY=1`, and no `STOPPING=1` from the old one as it exits. `READY=1` waits for the broker;
//! an abstract socket works; an unusable one does not keep the server from serving.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};
use support::procs::*;
use support::*;

/// The service manager's end: every datagram Herald sends, as text.
struct Manager {
    socket: UnixDatagram,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        Manager { socket }
    }

    /// The next notification, or `None` after `wait`.
    fn next(&self, wait: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(wait))
            .expect("read timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// The next notification, which must come within `wait`.
    fn expect(&self, wait: Duration, what: &str) -> String {
        self.next(wait)
            .unwrap_or_else(|| panic!("no notification within {wait:?} ({what})"))
    }

    /// Every notification until none came for `quiet`.
    fn rest(&self, quiet: Duration) -> Vec<String> {
        std::iter::from_fn(|| self.next(quiet)).collect()
    }
}

fn has(state: &str, line: &str) -> bool {
    state.lines().any(|l| l == line)
}

/// The value of `KEY=` in a notification.
fn value(state: &str, key: &str) -> Option<u64> {
    state
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[tokio::test]
async fn ready_reload_and_stop_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let manager = Manager::bind(&socket);
    let config = node_config(dir.path(), "a", "127.0.0.1:0", "");
    let mut node =
        start_node_env(&config, &[("NOTIFY_SOCKET", socket.as_os_str())]).expect("herald starts");
    let pid = node.proc.0.id();

    let ready = manager.expect(Duration::from_secs(20), "READY=1 after start");
    assert!(has(&ready, "READY=1"), "first notification: {ready:?}");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=")), "{ready:?}");
    // Ready means ready: the broker is up, /health and /ready answer.
    assert_eq!(http_raw(node.addr, "GET", "/health", &[], "").await.0, 200);
    assert_eq!(http_raw(node.addr, "GET", "/ready", &[], "").await.0, 200);

    // SIGHUP: RELOADING=1 stamped with CLOCK_MONOTONIC between the signal and its receipt.
    let before = monotonic_usec();
    signal(pid, libc::SIGHUP);
    let reloading = manager.expect(Duration::from_secs(10), "RELOADING=1 on SIGHUP");
    let after = monotonic_usec();
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    let stamp = value(&reloading, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(
        before <= stamp && stamp <= after,
        "MONOTONIC_USEC {stamp} not within [{before}, {after}]"
    );
    let reloaded = manager.expect(Duration::from_secs(10), "READY=1 after the reload");
    assert!(has(&reloaded, "READY=1"), "{reloaded:?}");
    assert!(!has(&reloaded, "RELOADING=1"), "{reloaded:?}");

    // A reload that is refused (a broken file) still ends with READY=1: the process serves on.
    std::fs::write(&config, "[http]\nlisten = \"nowhere\"\n").unwrap();
    signal(pid, libc::SIGHUP);
    let reloading = manager.expect(Duration::from_secs(10), "RELOADING=1, refused reload");
    assert!(has(&reloading, "RELOADING=1"), "{reloading:?}");
    let reloaded = manager.expect(Duration::from_secs(10), "READY=1, refused reload");
    assert!(has(&reloaded, "READY=1"), "{reloaded:?}");
    assert_eq!(http_raw(node.addr, "GET", "/health", &[], "").await.0, 200);

    // SIGTERM of a process that was not handed over: STOPPING=1, then a clean exit.
    signal(pid, libc::SIGTERM);
    let stopping = manager.expect(Duration::from_secs(10), "STOPPING=1 on SIGTERM");
    assert!(has(&stopping, "STOPPING=1"), "{stopping:?}");
    assert!(wait_exit(&mut node.proc, Duration::from_secs(15))
        .await
        .success());
    let after_exit = manager.rest(Duration::from_millis(200));
    assert!(after_exit.is_empty(), "after STOPPING=1: {after_exit:?}");
}

#[tokio::test]
async fn a_handover_makes_the_new_process_the_main_one_and_the_old_one_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let manager = Manager::bind(&socket);
    // The memory broker and no devices, as tests/restart.rs hands over.
    let config = node_config(dir.path(), "a", "127.0.0.1:0", "");
    let env = [("NOTIFY_SOCKET", socket.as_os_str())];
    let mut old = start_node_env(&config, &env).expect("herald starts");
    let old_pid = old.proc.0.id();
    let ready = manager.expect(Duration::from_secs(20), "READY=1 after start");
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert!(
        value(&ready, "MAINPID").is_none(),
        "the first process is the main one: {ready:?}"
    );

    signal(old_pid, libc::SIGUSR2);
    let announced = manager.expect(Duration::from_secs(30), "MAINPID= after SIGUSR2");
    let new_pid = value(&announced, "MAINPID")
        .unwrap_or_else(|| panic!("no MAINPID in {announced:?}")) as u32;
    let _successor = Successor(new_pid);
    assert_ne!(new_pid, old_pid, "{announced:?}");
    // MAINPID first, READY=1 after it (one datagram: systemd never sees one without the other).
    let lines: Vec<&str> = announced.lines().collect();
    let main_at = lines.iter().position(|l| l.starts_with("MAINPID="));
    let ready_at = lines.iter().position(|l| *l == "READY=1");
    assert!(
        matches!((main_at, ready_at), (Some(m), Some(r)) if m < r),
        "MAINPID then READY=1: {announced:?}"
    );
    // The pid is the process the old one started, as its log says.
    let deadline = Instant::now() + Duration::from_secs(20);
    let logged = loop {
        let line = old
            .lines
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_default();
        if line.contains("upgrade: the new process serves") {
            break line;
        }
        assert!(Instant::now() < deadline, "no handover log line");
    };
    assert!(logged.contains(&format!("pid={new_pid}")), "{logged}");

    // The old process drains and exits on its own, without telling systemd it stops.
    assert!(wait_exit(&mut old.proc, Duration::from_secs(15))
        .await
        .success());
    let meanwhile = manager.rest(Duration::from_millis(500));
    assert!(
        meanwhile.iter().all(|s| !has(s, "STOPPING=1")),
        "STOPPING=1 after a handover: {meanwhile:?}"
    );
    assert!(
        Path::new(&format!("/proc/{new_pid}")).exists(),
        "new process alive"
    );
    // Only the new process listens now: it serves.
    assert_eq!(http_raw(old.addr, "GET", "/health", &[], "").await.0, 200);
    wait_ready(old.addr).await;

    // The new process was not handed over: its SIGTERM is a stop of the service.
    signal(new_pid, libc::SIGTERM);
    let stopping = manager.expect(Duration::from_secs(10), "STOPPING=1 from the new process");
    assert!(has(&stopping, "STOPPING=1"), "{stopping:?}");
}

/// `NOTIFY_SOCKET=@name`: an abstract socket, as systemd may give (no file on disk).
#[tokio::test]
async fn an_abstract_notify_socket_is_used() {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("herald-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let manager = Manager {
        socket: UnixDatagram::bind_addr(&addr).expect("bind the abstract socket"),
    };
    let dir = tempfile::tempdir().unwrap();
    let config = node_config(dir.path(), "a", "127.0.0.1:0", "");
    let value = format!("@{name}");
    let node =
        start_node_env(&config, &[("NOTIFY_SOCKET", value.as_ref())]).expect("herald starts");
    let ready = manager.expect(Duration::from_secs(20), "READY=1 on the abstract socket");
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert_eq!(http_raw(node.addr, "GET", "/health", &[], "").await.0, 200);
}

/// A `NOTIFY_SOCKET` nobody listens on (or that is no address) is no reason not to serve.
#[tokio::test]
async fn an_unusable_notify_socket_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = node_config(dir.path(), "a", "127.0.0.1:0", "");
    let nowhere = dir.path().join("nobody-listens.sock");
    for value in [nowhere.as_os_str(), "not-an-address".as_ref()] {
        let mut node = start_node_env(&config, &[("NOTIFY_SOCKET", value)]).expect("herald starts");
        wait_ready(node.addr).await;
        signal(node.proc.0.id(), libc::SIGHUP);
        signal(node.proc.0.id(), libc::SIGTERM);
        assert!(wait_exit(&mut node.proc, Duration::from_secs(15))
            .await
            .success());
    }
}

/// READY=1 waits for the broker: with Redis refusing connections the node listens (and /ready
/// says 503) but systemd is not told, not even by a reload; once Redis answers, READY=1 comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_broker() {
    let redis: std::net::SocketAddr = test_redis()
        .trim_start_matches("redis://")
        .parse()
        .expect("HERALD_TEST_REDIS is host:port");
    let proxy = proxy::Proxy::start(redis).await;
    proxy.refuse(true);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let manager = Manager::bind(&socket);
    let broker = format!(
        "[broker]\nkind = \"redis\"\nredis_addresses = [\"{}\"]\nprefix = \"{}\"\n",
        proxy.addr,
        unique_prefix("notify-ready")
    );
    let config = node_config(dir.path(), "a", "127.0.0.1:0", &broker);
    let node =
        start_node_env(&config, &[("NOTIFY_SOCKET", socket.as_os_str())]).expect("herald starts");
    assert_eq!(http_raw(node.addr, "GET", "/health", &[], "").await.0, 200);
    assert_eq!(http_raw(node.addr, "GET", "/ready", &[], "").await.0, 503);
    // A SIGHUP while starting reloads, but says nothing: READY=1 would end the start early.
    signal(node.proc.0.id(), libc::SIGHUP);
    let early = manager.next(Duration::from_millis(1500));
    assert!(early.is_none(), "notified before the broker: {early:?}");
    proxy.refuse(false);
    let ready = manager.expect(Duration::from_secs(30), "READY=1 once Redis answers");
    assert!(has(&ready, "READY=1"), "{ready:?}");
    assert_eq!(http_raw(node.addr, "GET", "/ready", &[], "").await.0, 200);
}
