//! CPU time and RSS of server processes and the kernel's socket memory, read from /proc.

use serde_json::{json, Value};
use std::time::Instant;

pub struct Sample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    Some(Sample {
        cpu_ticks: utime + stime,
        rss_kib,
    })
}

/// Clock ticks per second (USER_HZ), 100 on Linux.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// The sum over several server processes (a node group sharing a port), taken at one instant.
pub struct GroupSample {
    pub at: Instant,
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    /// Processes that answered; a dead server shows up as a smaller number.
    pub alive: usize,
}

pub fn sample_group(pids: &[u32]) -> Option<GroupSample> {
    if pids.is_empty() {
        return None;
    }
    let mut group = GroupSample {
        at: Instant::now(),
        cpu_ticks: 0,
        rss_kib: 0,
        alive: 0,
    };
    for pid in pids {
        if let Some(s) = sample(*pid) {
            group.cpu_ticks += s.cpu_ticks;
            group.rss_kib += s.rss_kib;
            group.alive += 1;
        }
    }
    Some(group)
}

/// Server CPU (percent of one core, summed over the group) between two samples, and RSS at the end.
pub fn usage_json(before: &Option<GroupSample>, after: &Option<GroupSample>) -> Value {
    match (before, after) {
        (Some(b), Some(a)) => {
            let seconds = a.at.duration_since(b.at).as_secs_f64().max(1e-3);
            let cpu = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / TICKS_PER_SECOND / seconds;
            json!({
                "server_cpu_percent": cpu * 100.0,
                "server_rss_mib": a.rss_kib as f64 / 1024.0,
                "server_processes": a.alive,
            })
        }
        _ => json!({}),
    }
}

/// Kernel memory that grows with sockets: slab (socket, inode, dentry, epoll objects) and the TCP
/// buffer pages of /proc/net/sockstat. System-wide, so it counts both ends of loopback connections.
pub struct KernelSample {
    pub slab_kib: u64,
    pub tcp_pages: u64,
    pub tcp_inuse: u64,
}

pub fn kernel() -> Option<KernelSample> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let slab_kib = meminfo
        .lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())?;
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = tcp.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let at = words.iter().position(|w| *w == name)?;
        words.get(at + 1)?.parse().ok()
    };
    Some(KernelSample {
        slab_kib,
        tcp_pages: field("mem")?,
        tcp_inuse: field("inuse")?,
    })
}

/// A `kB` field of /proc/<pid>/status (`VmRSS`, `VmHWM`: the peak RSS the kernel recorded).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Open descriptors of a process: the entries of /proc/<pid>/fd.
pub fn open_fds(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}
