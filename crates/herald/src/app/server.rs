//! Assembles a node from its configuration, binds its listeners and runs it until shutdown.

use crate::brokers::Backend;
use crate::config::Config;
use crate::edges::devices::{DeviceAddrs, DeviceIngest};
use crate::edges::http::{accept_loop, Role, Routes};
use crate::edges::inherited::Inherited;
use crate::edges::sockets::bind;
use crate::node::Node;
use anyhow::Context as _;
use herald_auth::{Verifier, VerifierConfig};
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub node: Arc<Node>,
    pub addr: SocketAddr,
    pub internal_addr: Option<SocketAddr>,
    /// The device ingest, when `devices.enabled`.
    pub devices: Option<Arc<DeviceIngest>>,
    /// Bound addresses of the device listeners (all `None` when device ingest is off).
    pub device_addrs: DeviceAddrs,
    /// This node's hold on its data directory (device spool), released when the server goes.
    _data_lock: Option<crate::app::datadir::DirLock>,
    /// Feed runners; they release their leases when the node shuts down.
    feeds: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// The webhook worker and what tells it to deliver what is left and end.
    /// The webhook delivery tasks, and what tells them to finish.
    webhooks: (Vec<JoinHandle<()>>, CancellationToken),
    /// The HTTP listeners: stopped first on shutdown, handed to a new process on SIGUSR2.
    listening: Vec<Listening>,
    drain: super::drain::DrainGauges,
    /// Set once a new process took over the listeners (SIGUSR2).
    pub(super) handed_over: bool,
    /// The broker's backend (for the crash hook).
    backend: Backend,
    /// The TLS listeners' certificates (see [`Server::reload_tls`]).
    tls: crate::edges::tls::Certificates,
}

/// An HTTP listener's accept loop, and a copy of its socket to hand over.
struct Listening {
    name: &'static str,
    socket: OwnedFd,
    task: JoinHandle<()>,
}

/// The listener `name` handed over (or passed by systemd), else bound anew; and whether another
/// process shares it (inherited, or `SO_REUSEPORT`).
fn listen(
    inherited: &mut Inherited,
    name: &str,
    addr: SocketAddr,
    reuse_port: bool,
) -> std::io::Result<(tokio::net::TcpListener, bool)> {
    match inherited.take(name, addr) {
        Some(listener) => {
            tracing::info!(listener = name, addr = %listener.local_addr()?, "listener inherited");
            Ok((tokio::net::TcpListener::from_std(listener)?, true))
        }
        None => Ok((bind(addr, reuse_port)?, reuse_port)),
    }
}

/// A listener another process shares accepts only once this node is ready (its broker
/// connected): until then its connections wait in the backlog, or the kernel gives them to the
/// other process, instead of landing on a node that would refuse their publications. Bounded by
/// `http.upgrade_timeout`, after which it accepts anyway (health checks must get an answer).
async fn accept_when_ready(
    node: Arc<Node>,
    shared: bool,
    accepting: impl std::future::Future<Output = ()>,
) {
    if shared {
        let deadline = Instant::now() + node.config().http.upgrade_timeout;
        while !node.is_ready() && Instant::now() < deadline && !node.shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    accepting.await
}

fn optional(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn read_key(field: &str, path: &str) -> anyhow::Result<Option<String>> {
    if path.is_empty() {
        return Ok(None);
    }
    std::fs::read_to_string(path)
        .map(Some)
        .with_context(|| format!("{field}: cannot read {path:?}"))
}

/// Builds the token verifier; errors name the config field.
pub fn verifier(config: &Config) -> anyhow::Result<Verifier> {
    Ok(Verifier::new(&verifier_config(config)?)?)
}

/// The verifier's keys, key files read now (a reload compares them with the running ones).
pub fn verifier_config(config: &Config) -> anyhow::Result<VerifierConfig> {
    let t = &config.client.token;
    Ok(VerifierConfig {
        hmac_secret: optional(&t.hmac_secret),
        rsa_public_key_pem: read_key("client.token.rsa_public_key", &t.rsa_public_key)?,
        ecdsa_public_key_pem: read_key("client.token.ecdsa_public_key", &t.ecdsa_public_key)?,
        jwks_json: read_key("client.token.jwks_file", &t.jwks_file)?,
        audience: optional(&t.audience),
        issuer: optional(&t.issuer),
    })
}

impl Server {
    /// Binds and starts serving. Port 0 picks a free port (see `addr`).
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        Server::start_with(config, &mut Inherited::none()).await
    }

    /// [`Server::start`] on the listeners it is handed where they fit (see [`Inherited::take`]).
    pub async fn start_with(config: Config, inherited: &mut Inherited) -> anyhow::Result<Server> {
        // Also for configs built in code: forwarding credentials without an Origin policy is unsafe.
        config.check_origin_policy()?;
        let verifier = crate::node::TokenKeys::new(&verifier_config(&config)?)?;
        let links = crate::brokers::build(&config).map_err(|e| anyhow::anyhow!("broker: {e}"))?;
        let backend = links.backend;
        let node = Node::new(config, verifier, links.broker, links.presence, links.leases);
        // Connects in the background, now that the node is the broker's handler.
        backend.start();
        let config = &node.config();
        super::process_metrics::register(&node.metrics);
        let tls_metrics = crate::edges::tls::TlsMetrics::default();
        let tls = crate::edges::tls::Certificates::open(config, &tls_metrics)
            .map_err(anyhow::Error::msg)?;
        tls_metrics.register(&node.metrics);
        let budget = descriptor_budget(&node);
        let share = |name: &str| {
            budget
                .share(name)
                .context("listener missing from the descriptor plan")
        };
        let (public, public_shared) = listen(
            inherited,
            PUBLIC,
            config.listen_addr(),
            config.http.reuse_port,
        )
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
        let addr = public.local_addr()?;
        node.set_address(addr.to_string());
        let internal = match config.internal_addr() {
            Some(internal) => Some(
                listen(inherited, INTERNAL, internal, config.http.reuse_port).with_context(
                    || format!("http.internal_listen: cannot listen on {internal}"),
                )?,
            ),
            None => None,
        };
        // Devices start before the HTTP listeners, which serve their API methods and the map.
        let (data_lock, devices) = if config.devices.enabled {
            let dir = std::path::Path::new(&config.devices.spool_dir);
            let lock = crate::app::datadir::lock(dir).map_err(|e| {
                node.stop();
                anyhow::anyhow!("devices.spool_dir: {e}")
            })?;
            match DeviceIngest::start(node.clone(), &budget, tls.devices.clone()).await {
                Ok(d) => (Some(lock), Some(d)),
                Err(e) => {
                    node.stop();
                    return Err(e);
                }
            }
        } else {
            (None, None)
        };
        let routes = Arc::new(Routes {
            node: node.clone(),
            devices: devices.clone(),
            admin: crate::edges::admin::Admin::new(&node),
        });
        let untaken = inherited.untaken();
        if !untaken.is_empty() {
            tracing::warn!(listeners = ?untaken, "inherited listeners not in the configuration; closed");
        }
        let mut tasks = Vec::new();
        let mut listening = Vec::new();
        let mut internal_addr = None;
        let public_role = match internal {
            Some((listener, shared)) => {
                internal_addr = Some(listener.local_addr()?);
                let socket = listener.as_fd().try_clone_to_owned()?;
                listening.push(Listening {
                    name: INTERNAL,
                    socket,
                    task: tokio::spawn(accept_when_ready(
                        node.clone(),
                        shared,
                        accept_loop(
                            routes.clone(),
                            listener,
                            Role::Internal,
                            share(INTERNAL)?,
                            tls.internal.clone(),
                        ),
                    )),
                });
                Role::Public
            }
            None => Role::Everything,
        };
        let socket = public.as_fd().try_clone_to_owned()?;
        listening.push(Listening {
            name: PUBLIC,
            socket,
            task: tokio::spawn(accept_when_ready(
                node.clone(),
                public_shared,
                accept_loop(
                    routes,
                    public,
                    public_role,
                    share(PUBLIC)?,
                    tls.public.clone(),
                ),
            )),
        });
        if tls.any() {
            tasks.push(tokio::spawn(tls.clone().watch(node.shutdown.clone())));
        }
        let device_addrs = devices.as_ref().map(|d| d.addrs).unwrap_or_default();
        tasks.push(tokio::spawn(sweeper(node.clone())));
        tasks.push(tokio::spawn(announcer(node.clone())));
        // The webhook worker outlives the connections: their disconnects are delivered at shutdown.
        let finish = CancellationToken::new();
        let budget = node.config().http.shutdown_timeout;
        let webhook_tasks = node
            .hooks
            .take_workers()
            .into_iter()
            .map(|worker| tokio::spawn(worker.run(finish.clone(), budget)))
            .collect();
        let webhooks = (webhook_tasks, finish);
        let feeds = crate::edges::feeds::start(&node);
        let drain = super::drain::DrainGauges::register(&node.metrics);
        Ok(Server {
            listening,
            drain,
            handed_over: false,
            backend,
            _data_lock: data_lock,
            feeds,
            node,
            addr,
            internal_addr,
            devices,
            device_addrs,
            tasks,
            webhooks,
            tls,
        })
    }

    /// Reads every TLS listener's certificate and key again (for SIGHUP): new handshakes
    /// get the new certificate, open connections keep theirs. A listener whose files are bad
    /// keeps its certificate; the error names the field. Files are also polled for changes.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        self.tls.reload().map_err(anyhow::Error::msg)
    }

    /// The HTTP listeners by name (`public`, `internal`), for a new process to adopt.
    pub fn listeners(&self) -> Vec<(&'static str, BorrowedFd<'_>)> {
        self.listening
            .iter()
            .map(|l| (l.name, l.socket.as_fd()))
            .collect()
    }

    /// Stops accepting: the HTTP listeners close (unless another process holds them too, after a
    /// handover), so the kernel sends new connections to whoever else listens on the port.
    async fn stop_accepting(&mut self, keep_internal: bool) {
        let (kept, stopped) = self
            .listening
            .drain(..)
            .partition(|l| keep_internal && l.name == INTERNAL);
        self.listening = kept;
        for listening in stopped {
            listening.task.abort();
            // Awaited: the listener is closed once the aborted task is gone, before any client
            // is told to reconnect (which must not land in this node's backlog).
            let _ = listening.task.await;
        }
    }

    /// Graceful stop: stop accepting and report not ready, tell clients to reconnect elsewhere
    /// (`shutdown`, 3001) spread over `http.drain_period`, and wait for them to leave, at most
    /// `http.shutdown_timeout` more.
    pub async fn shutdown(mut self) {
        let node = self.node.clone();
        // The internal listener (API, metrics) stays through the drain when no other process
        // shares it, so the operator can watch the drain.
        let keep_internal = !self.handed_over && !node.config().http.reuse_port;
        self.stop_accepting(keep_internal).await;
        node.stop_being_ready();
        super::drain::drain(&node, node.config().http.drain_period, &self.drain).await;
        self.stop_accepting(false).await;
        node.stop();
        let deadline = Instant::now() + node.config().http.shutdown_timeout;
        while node.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = node.open_connections();
        if left > 0 {
            tracing::warn!(left, "shutdown timeout reached with connections still open");
        }
        if let Some(devices) = &self.devices {
            devices.shutdown().await;
        }
        for feed in self.feeds {
            // Bounded: a lease release that hangs on a dead broker must not hold the exit.
            let abort = feed.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), feed)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let (webhook_tasks, finish) = self.webhooks;
        // Bounded by the workers' own budget (the shutdown timeout), which they spend together.
        finish.cancel();
        for task in webhook_tasks {
            let _ = task.await;
        }
        for task in self.tasks {
            task.abort();
        }
        // After the sessions left (each removed its own presence): the registry entry and
        // whatever presence is left go now rather than at their expiry.
        node.broker.close().await;
    }

    /// Test hook: stops like a killed process. The broker connections drop without any cleanup
    /// (presence, registry entry stay in the broker until they expire), then connections close.
    pub async fn crash(self) {
        self.backend.abandon();
        self.node.stop_being_ready();
        self.node.stop();
        for task in self.tasks {
            task.abort();
        }
        for task in self.webhooks.0 {
            task.abort();
        }
        if let Some(devices) = &self.devices {
            devices.shutdown().await;
        }
    }
}

const PUBLIC: &str = "public";
const INTERNAL: &str = "internal";
/// Connections on the public listener beyond `client.max_connections`: plain HTTP requests
/// (health, the API without an internal listener) and handshakes in progress.
const PUBLIC_HTTP_SLACK: usize = 1024;
/// Connections of the internal listener (API callers, metrics scrapers, health checks).
const INTERNAL_MAX: usize = 4096;

/// Plans the node's descriptor budget over its listeners (crate::edges::descriptors) and logs the
/// bound that applies to WebSocket clients when the descriptor limit is below
/// `client.max_connections`.
fn descriptor_budget(node: &Arc<Node>) -> crate::edges::descriptors::Budget {
    use crate::edges::descriptors::{Budget, Limits, ListenerPlan};
    let config = &node.config();
    let weak = Arc::downgrade(node);
    let mut plan = vec![ListenerPlan {
        name: PUBLIC.into(),
        wanted: config
            .client
            .max_connections
            .saturating_add(PUBLIC_HTTP_SLACK),
        // Upgraded WebSocket sessions hold the public listener's descriptors after hyper let go.
        external: Some(Box::new(move || {
            weak.upgrade().map_or(0, |n| n.open_connections())
        })),
    }];
    if config.internal_addr().is_some() {
        plan.push(ListenerPlan {
            name: INTERNAL.into(),
            wanted: INTERNAL_MAX,
            external: None,
        });
    }
    if config.devices.enabled {
        for (name, _) in config.devices.listeners() {
            plan.push(ListenerPlan {
                name: name.into(),
                wanted: config.devices.max_connections,
                external: None,
            });
        }
    }
    let budget = Budget::new(Limits::of_process(), plan, &node.metrics);
    if let Some(public) = budget.share(PUBLIC) {
        let websockets = public
            .max()
            .saturating_sub(PUBLIC_HTTP_SLACK.min(public.max() / 2));
        if websockets < config.client.max_connections {
            tracing::warn!(
                max_connections = config.client.max_connections,
                effective = websockets,
                descriptor_limit = budget.limit(),
                "the descriptor limit allows fewer WebSocket connections than client.max_connections; \
                 the public listener closes connections beyond its share at accept (raise the limit: \
                 ulimit -n, LimitNOFILE=)"
            );
        }
    }
    budget
}

/// Writes this node's registry entry every `broker.node_announce_interval`, and at once when the
/// broker becomes ready (at start, after an outage), so `info` lists the node without waiting.
async fn announcer(node: Arc<Node>) {
    let interval = node.config().broker.node_announce_interval;
    let mut poll = tokio::time::interval(interval.min(Duration::from_millis(100)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = poll.tick() => {}
        }
        if !node.broker.is_ready() {
            last = None;
            continue;
        }
        if last.is_some_and(|at| at.elapsed() < interval) {
            continue;
        }
        match node.broker.announce(&node.entry()).await {
            Ok(()) => last = Some(Instant::now()),
            Err(e) => tracing::debug!(error = %e, "node entry not announced"),
        }
    }
}
/// Periodic housekeeping: enforce the node-wide outbox budget (often), forget idle history streams
/// and full per-IP buckets (every minute).
async fn sweeper(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        node.hub.shed_slowest(node.config().client.outbox_budget);
        ticks += 1;
        if ticks.is_multiple_of(600) {
            node.broker.sweep(node.config().channel.history_meta_ttl);
            node.forget_idle_ip_buckets();
        }
    }
}
