//! The monitoring files operators load (deploy/prometheus, deploy/grafana) are checked against
//! Prometheus's own tool and against what a running Herald serves: the alert rules parse and fire
//! as their unit tests say, every dashboard query parses, and every metric either names is one
//! that `/metrics` shows after ordinary traffic.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs promtool (Debian's `prometheus` package; scripts/setup.sh installs it).
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (scripts/setup.sh installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// Every query of the dashboard, with Grafana's variables replaced by values Prometheus takes.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/herald-dashboard.json")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard, not a stub");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
        })
        .collect()
}

/// `herald_…` metric names in PromQL, without the suffixes a histogram or counter adds.
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in exprs {
        for (start, _) in expr.match_indices("herald_") {
            let name: String = expr[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

fn alert_exprs() -> Vec<String> {
    read("deploy/prometheus/herald-alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let checked = promtool(&["check", "rules", "herald-alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "herald-alerts.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_dashboard_query_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Recording rules are the one input promtool parses PromQL from.
    let rules: Vec<Value> = dashboard_queries()
        .iter()
        .enumerate()
        .map(|(i, expr)| json!({"record": format!("dashboard:query_{i}"), "expr": expr}))
        .collect();
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(dir.path().join("queries.yml"), file.to_string()).expect("write");
    let checked = promtool(&["check", "rules", "queries.yml"], dir.path());
    assert!(checked.contains("SUCCESS"), "{checked}");
}

/// Families that exist only where their feature is configured; the reference lists them.
const ONLY_WHEN_CONFIGURED: &[(&str, &str)] = &[
    (
        "herald_tls_certificate_expiry_timestamp_seconds",
        "native TLS",
    ),
    ("herald_broker_shards", "the Redis Cluster broker"),
    ("herald_proxy_calls_total", "proxy hooks"),
    ("herald_proxy_errors_total", "proxy hooks"),
    ("herald_proxy_duration_seconds_bucket", "proxy hooks"),
    ("herald_webhooks_dropped_total", "webhooks"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_served() {
    let server = TestServer::start().await;
    // Ordinary traffic, so the labelled families have samples: a subscriber, an API publication,
    // a command error, a refused API call, a refused handshake and a disconnect.
    let mut client = server.client("alice").await;
    client.subscribe("chat:monitoring").await;
    server
        .api_ok(
            "publish",
            json!({"channel": "chat:monitoring", "data": {"n": 1}}),
        )
        .await;
    client.publication("chat:monitoring").await;
    let unknown = client.call("no_such_method", json!({})).await;
    assert!(unknown.get("error").is_some(), "{unknown}");
    let (status, _) = http_request(server.addr, "POST", "/api/publish", &[], "{}").await;
    assert_eq!(status, 401);
    let (status, _) = http_raw(
        server.addr,
        "GET",
        "/connection/websocket",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "12"),
        ],
        "",
    )
    .await;
    assert_ne!(status, 101);
    drop(client);
    let node = server.node().clone();
    assert!(
        eventually(WAIT, || node.hub.num_clients() == 0).await,
        "the client is gone"
    );

    let served: BTreeSet<String> = server
        .metrics()
        .await
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let mut exprs = alert_exprs();
    assert!(exprs.len() >= 10, "alert rules read: {exprs:?}");
    exprs.extend(dashboard_queries());
    // The metrics reference names every family a node serves.
    let reference = read("docs/api.md");
    let family = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name)
            .to_string()
    };
    let undocumented: BTreeSet<String> = served
        .iter()
        .map(|name| family(name))
        .filter(|name| !reference.contains(&format!("`{name}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/api.md: {undocumented:?}"
    );
    let mut missing = Vec::new();
    for name in metric_names(&exprs) {
        if served.contains(&name) {
            continue;
        }
        match ONLY_WHEN_CONFIGURED.iter().find(|(n, _)| *n == name) {
            Some((_, feature)) => {
                let family = family(&name);
                assert!(
                    reference.contains(&format!("`{family}`")),
                    "{family} (only with {feature}) is in docs/api.md"
                );
            }
            None => missing.push(name),
        }
    }
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but not served: {missing:?}"
    );
}
