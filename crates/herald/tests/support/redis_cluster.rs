//! A Redis Cluster owned by one test: `redis-server` processes in cluster mode on free ports,
//! joined with `redis-cli --cluster create`, killed when the test ends. Admin commands (slot
//! migration, topology queries) go through `redis-cli`, the tool operators use.

use super::procs::Proc;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    /// (port, process) of every server, primaries first as created.
    servers: Vec<(u16, Proc)>,
    _dir: tempfile::TempDir,
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = super::procs::free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// Runs `redis-cli -p port args…` and returns its output (trimmed); empty when the server does
/// not answer within 2 s (killed or frozen).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["2", "redis-cli", "-p"])
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `redis-server` in cluster mode on `port`, its files (`nodes-<port>.conf`) in `dir`.
fn spawn_server(port: u16, dir: &std::path::Path) -> Proc {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args(["--cluster-node-timeout", "1000"])
        // A replica may take over however long it was cut off (a test's primary dies at
        // any moment, even before the first sync completed).
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--save", "", "--appendonly", "no"])
        // Each server its own snapshot file: a full sync goes through it, and servers
        // sharing one would ship each other's data to their replicas.
        .args(["--dbfilename", &format!("dump-{port}.rdb")])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts (Debian package redis-server)");
    Proc(child)
}

impl RedisCluster {
    /// `primaries` shards with `replicas` replicas each; returns once every slot is served.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut servers = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            let port = cluster_port();
            servers.push((port, spawn_server(port, dir.path())));
        }
        let cluster = RedisCluster { servers, _dir: dir };
        for (port, _) in &cluster.servers {
            cluster.wait(|| cli(*port, &["PING"]) == "PONG", "redis-server answers");
        }
        let addresses: Vec<String> = cluster
            .servers
            .iter()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli --cluster create runs");
        assert!(status.success(), "cluster created");
        cluster.wait_healthy(primaries);
        cluster
    }

    fn wait(&self, mut check: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live server reports the cluster ok with `primaries` serving primaries,
    /// all of them live (a killed primary replaced by its replica).
    pub fn wait_healthy(&self, primaries: usize) {
        self.wait(
            || {
                let live = self.live_ports();
                live.iter().all(|port| {
                    let seen = self.primary_ports_seen_by(*port);
                    cli(*port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                        && seen.len() == primaries
                        && seen.iter().all(|p| live.contains(p))
                })
            },
            "cluster ok",
        );
    }

    fn live_ports(&self) -> Vec<u16> {
        self.servers
            .iter()
            .map(|(port, _)| *port)
            .filter(|port| cli(*port, &["PING"]) == "PONG")
            .collect()
    }

    /// Seed addresses for `broker.redis_addresses`.
    pub fn seeds(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The primaries serving slots, as one server sees them (from `CLUSTER SHARDS`-free output of
    /// `CLUSTER NODES`: `id addr flags master - ... connected slots…`).
    fn primary_ports_seen_by(&self, port: u16) -> Vec<u16> {
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                fields.len() > 8 && fields[2].contains("master") && !fields[2].contains("fail")
            })
            .filter_map(|l| node_port(l.split_whitespace().nth(1)?))
            .collect()
    }

    /// The hash slot of a key (or of a channel's tag).
    pub fn slot(&self, key: &str) -> u16 {
        cli(self.any_port(), &["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("a slot number")
    }

    fn any_port(&self) -> u16 {
        *self.live_ports().first().expect("a live server")
    }

    /// The port of the primary serving `slot`.
    pub fn primary_of(&self, slot: u16) -> u16 {
        let nodes = cli(self.any_port(), &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let mut bounds = range.split('-').filter_map(|b| b.parse::<u16>().ok());
                match (bounds.next(), bounds.next()) {
                    (Some(a), Some(b)) => (a..=b).contains(&slot),
                    (Some(a), None) => a == slot,
                    _ => false,
                }
            });
            if serves {
                return node_port(fields[1]).expect("a node address");
            }
        }
        panic!("no primary serves slot {slot}: {nodes}");
    }

    /// Every primary's port.
    pub fn primaries(&self) -> Vec<u16> {
        self.primary_ports_seen_by(self.any_port())
    }

    /// Moves `slot` (and its keys) to the primary at `to`, as `redis-cli --cluster reshard` does.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.primary_of(slot);
        assert_ne!(from, to, "slot {slot} already on {to}");
        let from_id = cli(from, &["CLUSTER", "MYID"]);
        let to_id = cli(to, &["CLUSTER", "MYID"]);
        let slot_text = slot.to_string();
        cli(
            to,
            &["CLUSTER", "SETSLOT", &slot_text, "IMPORTING", &from_id],
        );
        cli(
            from,
            &["CLUSTER", "SETSLOT", &slot_text, "MIGRATING", &to_id],
        );
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1"];
            let to_text = to.to_string();
            args.push(&to_text);
            args.extend(["", "0", "5000", "KEYS"]);
            args.extend(keys.iter().copied());
            let reply = cli(from, &args);
            assert!(reply.contains("OK"), "MIGRATE: {reply}");
        }
        for port in self.primaries() {
            cli(port, &["CLUSTER", "SETSLOT", &slot_text, "NODE", &to_id]);
        }
        self.wait(|| self.primary_of(slot) == to, "slot moved");
    }

    /// Waits until every live replica has everything its primary wrote (replication is
    /// asynchronous: a primary killed before that loses its latest writes, by Redis's design).
    pub fn wait_replicated(&self) {
        self.wait(
            || {
                self.live_ports().iter().all(|port| {
                    let info = cli(*port, &["INFO", "replication"]);
                    if !info.contains("role:slave") {
                        return true;
                    }
                    let field = |text: &str, name: &str| -> Option<u64> {
                        text.lines()
                            .find_map(|l| l.strip_prefix(name))
                            .and_then(|v| v.trim().parse().ok())
                    };
                    let (Some(master), Some(have)) = (
                        field(&info, "master_port:"),
                        field(&info, "slave_repl_offset:"),
                    ) else {
                        return false;
                    };
                    let primary = cli(master as u16, &["INFO", "replication"]);
                    info.contains("master_link_status:up")
                        && field(&primary, "master_repl_offset:") == Some(have)
                })
            },
            "replicas caught up",
        );
    }

    /// SIGKILLs the server on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some((_, proc)) = self.servers.iter_mut().find(|(p, _)| *p == port) {
            proc.kill9();
        }
    }

    /// Starts the (killed) server on `port` again with its cluster config, so it rejoins with
    /// the slots it had (empty: nothing is persisted); returns once the cluster is ok again.
    pub fn restart(&mut self, port: u16) {
        let dir = self._dir.path().to_path_buf();
        if let Some((_, proc)) = self.servers.iter_mut().find(|(p, _)| *p == port) {
            *proc = spawn_server(port, &dir);
        }
        self.wait(
            || cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"),
            "restarted server rejoined",
        );
    }

    /// SIGSTOPs (true) or SIGCONTs (false) the server on `port`.
    pub fn freeze(&self, port: u16, frozen: bool) {
        if let Some((_, proc)) = self.servers.iter().find(|(p, _)| *p == port) {
            proc.freeze(frozen);
        }
    }
}

/// The port of a `CLUSTER NODES` address (`ip:port@bus`).
fn node_port(address: &str) -> Option<u16> {
    address.split('@').next()?.rsplit(':').next()?.parse().ok()
}

impl RedisCluster {
    /// Configures a node to join this cluster under `prefix`, with the short timers of
    /// [`super::brokers::short_timers`].
    pub fn configure(&self, config: &mut herald::config::Config, prefix: &str) {
        super::brokers::short_timers(config);
        config.broker.kind = herald::config::BrokerKind::RedisCluster;
        config.broker.redis_addresses = self.seeds();
        config.broker.prefix = prefix.to_string();
    }
}
