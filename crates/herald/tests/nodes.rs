//! Several real `herald` processes on one host: a data directory refuses a second process,
//! SO_REUSEPORT lets nodes share one port, and the nginx configuration of docs/operations.md
//! spreads clients over two nodes linked by Redis, delivers across them, and moves clients to
//! the survivor when one dies, where they recover what they missed; a SIGKILLed node's presence
//! and registry entry expire.

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

use support::procs::*;

#[test]
fn a_data_directory_refuses_a_second_node_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let devices = format!(
        r#"[devices]
enabled = true
spool_dir = "{spool}"
store = "sqlite:{db}"
[devices.listen]
gt06 = "127.0.0.1:0"
h02 = ""
teltonika = ""
osmand = ""
jsonl = ""
"#,
        spool = dir.path().join("spool").display(),
        db = dir.path().join("herald.db").display()
    );
    let first = start_node(&node_config(dir.path(), "a", "127.0.0.1:0", &devices))
        .expect("first node starts");
    let err = match start_node(&node_config(dir.path(), "b", "127.0.0.1:0", &devices)) {
        Ok(_) => panic!("a second node started on the same data directory"),
        Err(e) => e,
    };
    let pid = first.proc.0.id();
    assert!(
        err.contains("devices.spool_dir") && err.contains(&format!("pid {pid}")),
        "the error names the setting and the holder: {err}"
    );
    // Once the holder is gone (even by SIGKILL) the directory is free again.
    let mut first = first;
    first.proc.kill9();
    start_node(&node_config(dir.path(), "c", "127.0.0.1:0", &devices))
        .expect("a node starts after the holder died");
}

#[tokio::test]
async fn nodes_share_one_port_with_reuse_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let extra = "";
    let config = |name: &str| {
        let path = node_config(dir.path(), name, &listen, extra);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("[http]\n", "[http]\nreuse_port = true\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let a = start_node(&config("a")).expect("node a");
    let b = start_node(&config("b")).expect("node b");
    assert_eq!(a.addr, b.addr);
    let url = format!("ws://{listen}/connection/websocket");
    let mut clients = Vec::new();
    for i in 0..40 {
        let mut c = Client::open(&url).await;
        c.connect(&token(&format!("u{i}"))).await;
        clients.push(c);
    }
    // The kernel spreads connections over both processes; which node answers an API call is
    // the kernel's choice too, so ask until both names were seen.
    let mut counts = std::collections::BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while counts.len() < 2 && Instant::now() < deadline {
        let info = api_ok(a.addr, "info", json!({})).await;
        let node = &info["nodes"][0];
        counts.insert(
            node["name"].as_str().unwrap_or("").to_string(),
            node["num_clients"].as_u64().unwrap_or(0),
        );
    }
    assert_eq!(counts.len(), 2, "both nodes answered: {counts:?}");
    assert!(
        counts.values().all(|&n| n > 0),
        "both hold clients: {counts:?}"
    );
    assert_eq!(counts.values().sum::<u64>(), 40, "{counts:?}");
    drop((a.lines, b.lines));
}

/// The fenced block of docs/operations.md that starts with `# herald-cluster`.
fn documented_nginx_block() -> String {
    documented_block("herald-cluster")
}

/// The fenced nginx block of docs/operations.md that starts with `# <name>`.
fn documented_block(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .expect("docs/operations.md");
    let start = doc
        .find(&format!("```nginx\n# {name}:"))
        .unwrap_or_else(|| panic!("docs/operations.md has the {name} nginx block"));
    let body = &doc[start + "```nginx\n".len()..];
    body[..body.find("```").expect("block ends")].to_string()
}

struct Nginx {
    proc: Proc,
    port: u16,
}

fn start_nginx(dir: &Path, block: &str) -> Nginx {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is installed (Debian package nginx-light; .ci/run installs it)");
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    std::fs::create_dir_all(prefix.join("tmp")).unwrap();
    // Workers may run as nobody when the test runs as root.
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("0777")
        .arg(&prefix)
        .status();
    let port = free_port();
    let conf = format!(
        r#"daemon off;
master_process on;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
{block}
}}
"#,
        p = prefix.display(),
        block = block
            .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
            .replace("listen 8081;", &format!("listen 127.0.0.1:{port};")),
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    Nginx {
        proc: Proc(child),
        port,
    }
}

#[tokio::test]
async fn nginx_spreads_clients_over_two_nodes_and_moves_them_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    // Both nodes on one Redis: one system behind nginx.
    let broker = format!(
        "[broker]\nkind = \"redis\"\nredis_addresses = [\"{}\"]\nprefix = \"herald-test.nginx-{}\"\n",
        std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into()),
        uuid::Uuid::new_v4().simple()
    );
    let block = documented_nginx_block()
        .replace("127.0.0.1:8001", &format!("127.0.0.1:{}", ports[0]))
        .replace("127.0.0.1:8002", &format!("127.0.0.1:{}", ports[1]));
    let a = start_node(&node_config(
        dir.path(),
        "a",
        &format!("127.0.0.1:{}", ports[0]),
        &broker,
    ))
    .expect("node a");
    let mut b = start_node(&node_config(
        dir.path(),
        "b",
        &format!("127.0.0.1:{}", ports[1]),
        &broker,
    ))
    .expect("node b");
    let nginx = start_nginx(dir.path(), &block);
    let front: SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(front).await.is_ok() {
            let (status, body) = http_request(front, "GET", "/health", &[], "").await;
            assert_eq!(status, 200, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "nginx never answered /health");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The API is not exposed through nginx.
    let (status, _) =
        http_request(front, "POST", "/api/info", &[("X-API-Key", API_KEY)], "{}").await;
    assert_eq!(status, 404);

    let url = format!("ws://{front}/connection/websocket");
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = Client::open(&url).await;
        c.connect(&token(&format!("u{i}"))).await;
        c.subscribe("chat:room").await;
        clients.push(c);
    }
    let (on_a, on_b) = (clients_on(a.addr, "a").await, clients_on(b.addr, "b").await);
    assert_eq!((on_a, on_b), (5, 5), "least_conn spreads evenly");
    // A publication on node a reaches the clients of both nodes.
    api_ok(
        a.addr,
        "publish",
        json!({"channel": "chat:room", "data": {"n": 1}}),
    )
    .await;
    let mut position = json!(null);
    for c in clients.iter_mut() {
        let p = c.publication("chat:room").await;
        assert_eq!(p["data"]["n"], 1);
        position = p["offset"].clone();
    }
    let epoch = api_ok(
        a.addr,
        "history",
        json!({"channel": "chat:room", "limit": 0}),
    )
    .await["epoch"]
        .clone();

    // Node b dies without a word: nginx drops its clients, and their reconnects land on a.
    b.proc.kill9();
    let mut dropped = 0;
    for c in clients.iter_mut() {
        if c.closed_within(Duration::from_millis(300)).await.is_some() {
            dropped += 1;
        }
    }
    assert_eq!(dropped, 5, "the dead node's clients were disconnected");
    // Published while they are away; they recover it from history on the surviving node.
    for n in 2..=4 {
        api_ok(
            a.addr,
            "publish",
            json!({"channel": "chat:room", "data": {"n": n}}),
        )
        .await;
    }
    let started = Instant::now();
    for i in 0..5 {
        let mut c = Client::open(&url).await;
        let reply = c.connect(&token(&format!("r{i}"))).await;
        assert!(reply.get("client").is_some(), "{reply}");
        let reply = c
            .call(
                "subscribe",
                json!({"channel": "chat:room", "recover": true, "offset": position, "epoch": epoch}),
            )
            .await;
        assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
        let missed: Vec<i64> = reply["subscribe"]["publications"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["data"]["n"].as_i64()).collect())
            .unwrap_or_default();
        assert_eq!(missed, vec![2, 3, 4], "{reply}");
        clients.push(c);
    }
    eprintln!(
        "5 reconnects through nginx after a node died: {:?}",
        started.elapsed()
    );
    assert_eq!(clients_on(a.addr, "a").await, 10);
    drop(nginx.proc);
}

#[tokio::test]
async fn nginx_backup_node_takes_the_clients_only_when_the_primary_dies() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let broker = format!(
        "[broker]\nkind = \"redis\"\nredis_addresses = [\"{}\"]\nprefix = \"herald-test.backup-{}\"\n",
        std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into()),
        uuid::Uuid::new_v4().simple()
    );
    let block = documented_block("herald-failover")
        .replace("127.0.0.1:8001", &format!("127.0.0.1:{}", ports[0]))
        .replace("127.0.0.1:8002", &format!("127.0.0.1:{}", ports[1]));
    let mut primary = start_node(&node_config(
        dir.path(),
        "primary",
        &format!("127.0.0.1:{}", ports[0]),
        &broker,
    ))
    .expect("primary");
    let backup = start_node(&node_config(
        dir.path(),
        "backup",
        &format!("127.0.0.1:{}", ports[1]),
        &broker,
    ))
    .expect("backup");
    wait_ready(primary.addr).await;
    wait_ready(backup.addr).await;
    let nginx = start_nginx(dir.path(), &block);
    let front: SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(front).await.is_err() {
        assert!(Instant::now() < deadline, "nginx never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("ws://{front}/connection/websocket");
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = Client::open(&url).await;
        c.connect(&token(&format!("p{i}"))).await;
        c.subscribe("chat:room").await;
        clients.push(c);
    }
    assert_eq!(
        (
            clients_on(primary.addr, "primary").await,
            clients_on(backup.addr, "backup").await
        ),
        (6, 0),
        "while the primary lives, the backup gets nobody"
    );
    primary.proc.kill9();
    for c in clients.iter_mut() {
        assert!(
            c.closed_within(WAIT).await.is_some(),
            "the dead primary's clients are disconnected"
        );
    }
    clients.clear();
    for i in 0..6 {
        let mut c = Client::open(&url).await;
        let reply = c.connect(&token(&format!("b{i}"))).await;
        assert!(reply.get("client").is_some(), "{reply}");
        c.subscribe("chat:room").await;
        clients.push(c);
    }
    assert_eq!(clients_on(backup.addr, "backup").await, 6);
    api_ok(
        backup.addr,
        "publish",
        json!({"channel": "chat:room", "data": {"n": 1}}),
    )
    .await;
    for c in clients.iter_mut() {
        assert_eq!(c.publication("chat:room").await["data"]["n"], 1);
    }
    drop(nginx.proc);
}

#[tokio::test]
async fn a_killed_nodes_presence_and_registry_entry_expire() {
    let dir = tempfile::tempdir().unwrap();
    let broker = format!(
        "[broker]\nkind = \"redis\"\nredis_addresses = [\"{}\"]\nprefix = \"herald-test.crash-{}\"\npresence_ttl = \"2s\"\nnode_announce_interval = \"500ms\"\n[[channel.namespaces]]\nname = \"room\"\nallow_subscribe_for_client = true\npresence = true\nallow_presence_for_subscriber = true\n",
        std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into()),
        uuid::Uuid::new_v4().simple()
    );
    let a = start_node(&node_config(dir.path(), "a", "127.0.0.1:0", &broker)).expect("node a");
    let mut b = start_node(&node_config(dir.path(), "b", "127.0.0.1:0", &broker)).expect("node b");
    wait_ready(a.addr).await;
    wait_ready(b.addr).await;
    let mut on_b = Client::open(&format!("ws://{}/connection/websocket", b.addr)).await;
    on_b.connect(&token("bob")).await;
    on_b.subscribe("room:1").await;
    let presence = || async {
        api_ok(a.addr, "presence", json!({"channel": "room:1"})).await["presence"]
            .as_object()
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let names = || async {
        let info = api_ok(a.addr, "info", json!({})).await;
        let mut names: Vec<String> = info["nodes"]
            .as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|n| n["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let deadline = Instant::now() + WAIT;
    while presence().await != 1 || names().await != ["a", "b"] {
        assert!(
            Instant::now() < deadline,
            "b's client and entry never showed on a"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL: no cleanup. Its entries must vanish by expiry alone.
    b.proc.kill9();
    let killed = Instant::now();
    while presence().await != 0 || names().await != ["a"] {
        assert!(
            killed.elapsed() < Duration::from_secs(8),
            "a dead node's presence or registry entry outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("dead node's entries gone after {:?}", killed.elapsed());
}
