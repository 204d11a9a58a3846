//! Readings of the process an operator alerts on, taken when `/metrics` is rendered: resident
//! memory and the memory it may use (its cgroup's limit, or the machine's memory when none).

use crate::core::metrics::Metrics;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};

pub fn register(metrics: &Metrics) {
    metrics.register(
        "process_resident_memory_bytes",
        "Resident memory of the process (VmRSS of /proc/self/status)",
        Reading(resident_bytes),
    );
    metrics.register(
        "memory_limit_bytes",
        "Memory the process may use: its cgroup's memory.max, or the machine's memory when unlimited",
        Reading(limit_bytes),
    );
}

/// A gauge read from the system each time it is scraped.
#[derive(Debug)]
struct Reading(fn() -> Option<u64>);

impl TypedMetric for Reading {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Reading {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let value = (self.0)().map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        encoder.encode_gauge(&value)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmRSS:")
}

fn limit_bytes() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    match cgroup.as_deref().map(str::trim) {
        Some(max) if max != "max" => max.parse().ok(),
        _ => kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:"),
    }
}

/// `Name:   1234 kB` → bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kib_fields_are_read_as_bytes() {
        let text = "Name:\therald\nVmRSS:\t   10240 kB\nVmSwap:\t0 kB\n";
        assert_eq!(kib_field(text, "VmRSS:"), Some(10 * 1024 * 1024));
        assert_eq!(kib_field(text, "VmHWM:"), None);
        assert_eq!(kib_field("VmRSS: lots kB", "VmRSS:"), None);
    }

    #[test]
    fn this_process_has_resident_memory_below_its_limit() {
        let resident = resident_bytes().expect("VmRSS");
        let limit = limit_bytes().expect("a limit");
        assert!(resident > 0 && resident < limit, "{resident} of {limit}");
    }
}
