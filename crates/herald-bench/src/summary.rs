//! The one-screen text summary printed after a run (the JSON has everything).

use serde_json::Value;

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

/// One broadcast/market/chat step: offered rate, deliveries/s, latency, server CPU.
pub fn step_line(step: &Value) -> String {
    let l = &step["latency_ms"];
    format!(
        "rate {:>7} pub/s  deliveries {:>10}/s ({} of {})  p50 {} p99 {} p99.9 {} max {} ms  cpu {}%  rss {} MiB",
        num(&step["rate"]),
        num(&step["deliveries_per_second"]),
        step["deliveries"],
        step["expected_deliveries"],
        num(&l["p50"]),
        num(&l["p99"]),
        num(&l["p999"]),
        num(&l["max"]),
        num(&step["server_cpu_percent"]),
        num(&step["server_rss_mib"]),
    )
}

pub fn print(result: &Value) {
    if result["scenario"] == "hostile" {
        return eprint!("{}", crate::hostile::report::render(result));
    }
    let mut out = String::new();
    out.push_str(&format!(
        "== {} ({}) ==\n",
        result["scenario"].as_str().unwrap_or("?"),
        result["target"].as_str().unwrap_or("herald")
    ));
    if let Some(obj) = result.as_object() {
        for (k, v) in obj {
            if matches!(k.as_str(), "steps" | "scenario" | "target" | "processes") {
                continue;
            }
            let shown = match v {
                Value::Number(_) => num(v),
                Value::Object(_) | Value::Array(_) => v.to_string(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {k:<32} {shown}\n"));
        }
    }
    if let Some(steps) = result["steps"].as_array() {
        for step in steps {
            out.push_str("  ");
            out.push_str(&step_line(step));
            out.push('\n');
        }
    }
    eprint!("{out}");
}
