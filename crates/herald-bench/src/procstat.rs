//! CPU time and RSS of a process, read from /proc.

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
