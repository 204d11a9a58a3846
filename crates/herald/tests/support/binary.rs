//! The real `herald` binary as a child process: started from a TOML config with JSON logs on
//! port 0, its addresses read from its log, its memory read from /proc, and killed with SIGKILL
//! when a test wants a crash (or when the test ends: see [`Proc`]).

use super::procs::{serve, Proc};
use serde_json::Value;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Herald {
    proc: Proc,
    /// Server API and metrics (`/api/<method>`).
    pub api: SocketAddr,
    /// Device listeners by protocol name.
    pub devices: HashMap<String, SocketAddr>,
    /// Log lines seen so far (for failure messages).
    pub log: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl Herald {
    /// Starts `herald serve -c <config>` and waits until it listens. `config` is the TOML body;
    /// `[log]` and `[http]` are added (JSON logs, loopback port 0). Blocks the calling thread:
    /// in a test whose runtime also serves the binary (a proxy), use a multi-threaded runtime.
    pub fn start(dir: &Path, config: &str) -> Herald {
        Herald::start_http(dir, "", config)
    }

    /// [`Herald::start`] with more `[http]` settings (`http` is TOML lines of that table).
    pub fn start_http(dir: &Path, http: &str, config: &str) -> Herald {
        let file = dir.join("herald.toml");
        let full = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n{http}\n\n[log]\nformat = \"json\"\nlevel = \"info\"\n\n{config}"
        );
        std::fs::write(&file, full).expect("config written");
        Herald::start_file(&file)
    }

    /// Starts `herald serve -c <file>` as the file is (it must ask for JSON logs) and waits until
    /// it listens.
    pub fn start_file(file: &Path) -> Herald {
        Herald::start_file_with(file, &[])
    }

    /// [`Herald::start_file`] with more arguments to `serve` (e.g. `--set` overrides).
    pub fn start_file_with(file: &Path, args: &[&str]) -> Herald {
        let mut all = vec![OsStr::new("-c"), file.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        let (proc, lines) = serve(all, None).expect("herald starts");
        let mut h = Herald {
            proc,
            api: "127.0.0.1:1".parse().expect("addr"),
            devices: HashMap::new(),
            log: Vec::new(),
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "herald did not start:\n{}",
                h.log.join("\n")
            );
            let Some(line) = h.next_line(Duration::from_millis(100)) else {
                if let Ok(Some(status)) = h.proc.0.try_wait() {
                    panic!("herald exited with {status}:\n{}", h.log.join("\n"));
                }
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let fields = &v["fields"];
            let message = fields["message"].as_str().unwrap_or_default();
            if message == "device listener" {
                if let (Some(p), Some(a)) = (fields["protocol"].as_str(), fields["addr"].as_str()) {
                    h.devices
                        .insert(p.to_string(), a.parse().expect("listener addr"));
                }
            }
            let api = message
                .strip_prefix("server api: http://")
                .or_else(|| message.strip_prefix("server api: https://"));
            if let Some(rest) = api {
                let addr = rest.split('/').next().unwrap_or_default();
                h.api = addr.parse().expect("api addr");
                return h;
            }
        }
    }

    fn next_line(&mut self, wait: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(wait).ok()?;
        self.log.push(line.clone());
        Some(line)
    }

    /// Waits up to `wait` for a JSON log line that `wanted` accepts; returns it.
    pub fn wait_log(&mut self, wait: Duration, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some(line) = self.next_line(left) else {
                break;
            };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if wanted(&v) {
                    return Some(v);
                }
            }
        }
        None
    }

    /// Sends SIGHUP (what `systemctl reload` sends) with kill(1).
    pub fn hup(&self) {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.proc.0.try_wait(), Ok(None))
    }

    /// Collects the log lines written so far.
    pub fn drain_log(&mut self) {
        while self.next_line(Duration::ZERO).is_some() {}
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// SIGKILL, as a crash or the OOM killer would; waits for the process to be gone.
    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// Calls a server API method; returns `result`, panicking on an error reply.
    pub async fn api(&self, method: &str, body: Value) -> Value {
        super::api_ok(self.api, method, body).await
    }

    /// The `devices` API's writer and spool counters.
    pub async fn device_stats(&self) -> Value {
        self.api("devices", serde_json::json!({})).await["stats"].clone()
    }

    /// Waits until the spool is drained into the database (no pending records, none in flight).
    pub async fn wait_drained(&self, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let stats = self.device_stats().await;
            if stats["spool_pending_records"] == 0 && stats["consecutive_errors"] == 0 {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spool not drained within {within:?}: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Bytes of the spool's segment files in `dir` (what the spool holds on disk).
pub fn spool_disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
