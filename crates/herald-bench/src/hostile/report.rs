//! The hostile soak's summary: the honest side, the server's peaks, and one Markdown table row per
//! hostile kind (pasted as is into docs/benchmarks.md).

use serde_json::Value;

fn n(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

/// `label: count` pairs of an object, most frequent first.
fn counts(v: &Value) -> String {
    let Some(map) = v.as_object() else {
        return String::new();
    };
    let mut pairs: Vec<(&String, u64)> = map
        .iter()
        .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
        .collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    pairs
        .iter()
        .map(|(k, c)| format!("{k} ×{c}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn render(result: &Value) -> String {
    let h = &result["honest"];
    let s = &result["server"];
    let l = &h["latency_ms"];
    let mut out = format!("== hostile soak, {} s ==\n", n(&result["seconds"]));
    out.push_str(&format!(
        "honest: {} of {} subscribers connected ({} on the busy channel), {} publications ({} /s)\n",
        h["connected"], h["subscribers"], h["busy_subscribers"], h["publications"],
        n(&h["publication_rate"])
    ));
    out.push_str(&format!(
        "  deliveries {} of {} expected: lost {}, duplicated {}, disconnected {} {}\n",
        h["received_deliveries"],
        h["expected_deliveries"],
        h["lost"],
        h["duplicates"],
        h["disconnects"],
        h["disconnect_reasons"]
    ));
    out.push_str(&format!(
        "  latency ms: p50 {} / p99 {} / p99.9 {} / max {}\n",
        n(&l["p50"]),
        n(&l["p99"]),
        n(&l["p999"]),
        n(&l["max"])
    ));
    out.push_str(&format!(
        "server: RSS MiB idle {} / before attacks {} / peak {} / end {} (VmHWM {}); descriptors idle {} / before {} / peak {} / end {}\n",
        n(&s["server_rss_idle_mib"]), n(&s["server_rss_before_mib"]), n(&s["server_rss_peak_mib"]),
        n(&s["server_rss_end_mib"]), n(&s["server_rss_hwm_mib"]), n(&s["server_fds_idle"]),
        n(&s["server_fds_before"]), n(&s["server_fds_peak"]), n(&s["server_fds_end"])
    ));
    out.push_str(&format!(
        "  kernel TCP memory MiB (system-wide) before {} / peak {} / end {}; server CPU {}% during the run\n",
        n(&s["kernel_tcp_mem_before_mib"]), n(&s["kernel_tcp_mem_peak_mib"]),
        n(&s["kernel_tcp_mem_end_mib"]), n(&s["server_cpu_percent"])
    ));
    out.push_str("\n| hostile kind | opened | closed by the server during the run | s to close p50 / max | how they ended | answers, counters |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    if let Some(kinds) = result["hostile"].as_object() {
        for (name, k) in kinds {
            let mut extra = counts(&k["responses"]);
            let counters = counts(&k["counters"]);
            if !counters.is_empty() {
                if !extra.is_empty() {
                    extra.push_str("; ");
                }
                extra.push_str(&counters);
            }
            out.push_str(&format!(
                "| {name} | {} | {} | {} / {} | {} | {} |\n",
                k["opened"],
                k["closed_by_server_during_run"],
                n(&k["seconds_to_close_p50"]),
                n(&k["seconds_to_close_max"]),
                counts(&k["outcomes"]),
                extra.replace(" ×", ": ")
            ));
        }
    }
    if let Some(metrics) = result["limit_metrics"].as_object() {
        if !metrics.is_empty() {
            out.push_str("\nlimit metrics (non-zero):\n");
            for (k, v) in metrics {
                out.push_str(&format!("  {k} {}\n", n(v)));
            }
        }
    }
    match result["failures"].as_array() {
        Some(f) if !f.is_empty() => {
            out.push_str("\nFAILED:\n");
            for failure in f {
                out.push_str(&format!("  {}\n", failure.as_str().unwrap_or("?")));
            }
        }
        _ => out.push_str("\npassed: every honest publication delivered, no honest disconnect\n"),
    }
    out
}
