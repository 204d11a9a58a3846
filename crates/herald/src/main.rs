//! The `herald` binary: serve, write and check configuration, mint tokens for trying things out.

#![forbid(unsafe_code)]

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use herald::app::server::Server;
use herald::app::signals::{Request, Signals};
use herald::config::{BrokerKind, Config};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Real-time push gateway (Centrifugo-compatible protocol and API)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults when no config file is given).
    Serve {
        /// TOML configuration file.
        #[arg(short, long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        /// Public listen address (overrides http.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Override any setting: --set client.max_channels=256 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Demo: device ingest on loopback, simulated GT06 trackers, and the map URL with a token.
        #[arg(long)]
        demo: bool,
        /// Number of simulated trackers with --demo.
        #[arg(long, default_value_t = 20, requires = "demo")]
        demo_devices: usize,
    },
    /// Write a commented default configuration with fresh secrets.
    Genconfig {
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Simulate clients of Herald over the real protocols (loopback targets only).
    Simulate {
        #[command(subcommand)]
        what: SimulateWhat,
    },
    /// Validate a configuration file; errors name the field.
    Checkconfig { file: PathBuf },
    /// Print a signed HS256 connection token (uses client.token.hmac_secret of the config).
    Token {
        /// User id (`sub` claim).
        #[arg(long)]
        user: String,
        /// Server-side channels (`channels` claim), comma separated.
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// Lifetime, e.g. 1h, 30m; 0 for a token that never expires.
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
        /// Sign a subscription token for this channel instead of a connection token.
        #[arg(long)]
        channel: Option<String>,
        #[arg(short, long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
        /// Override any setting (same as serve).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Subcommand)]
enum SimulateWhat {
    /// GPS trackers driving plausible routes, sending positions at a fixed interval.
    Devices {
        #[arg(long, value_enum, default_value = "gt06")]
        protocol: herald::app::simulate::SimProtocol,
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[arg(long, default_value = "1s")]
        interval: humantime::Duration,
        /// Device listener to send to (default: 127.0.0.1 and the protocol's default port).
        #[arg(long)]
        target: Option<std::net::SocketAddr>,
        /// Stop after this long (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<humantime::Duration>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// First device id (15 digits, counting up per device).
        #[arg(long, default_value_t = 860_000_000_000_000)]
        first_id: u64,
    },
}

async fn simulate_devices(options: herald::app::simulate::SimulateOptions) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    eprintln!(
        "simulating {} {:?} devices to {} every {:?}",
        options.count, options.protocol, options.target, options.interval
    );
    let report = herald::app::simulate::run(options, stop).await?;
    println!(
        "devices {} positions sent {} acknowledged {} errors {}",
        report.devices, report.positions_sent, report.acknowledged, report.errors
    );
    if report.errors > 0 {
        bail!("{} simulated devices failed (see the log)", report.errors);
    }
    Ok(())
}

fn load(config: Option<&PathBuf>, sets: &[String]) -> anyhow::Result<Config> {
    Ok(Config::load(
        config.map(|p| p.as_path()),
        std::env::vars(),
        sets,
    )?)
}

/// Where `serve` read its configuration, to read it again on SIGHUP.
struct Sources {
    file: Option<PathBuf>,
    sets: Vec<String>,
    log: herald::app::logging::LogLevel,
}

/// SIGHUP: reads the same sources as at start and applies them (TLS certificates reload here too).
fn reload(
    server: &Server,
    sources: &Sources,
    ephemeral_secret: bool,
    demo_dir: Option<&herald::app::demo::DemoDir>,
) {
    let read = reread(sources, server, ephemeral_secret, demo_dir);
    herald::app::reload::apply(server, read, Some(&sources.log));
    // Certificates reload on their own when the files change; SIGHUP does it at once. A bad
    // pair keeps the previous certificate; the TLS code has logged and counted it already.
    let _ = server.reload_tls();
}

/// The same sources as at start (file, `HERALD_…` environment, `--set`), with the adjustments
/// `serve` made at start (an ephemeral secret, the demo's settings).
fn reread(
    sources: &Sources,
    server: &Server,
    ephemeral_secret: bool,
    demo_dir: Option<&herald::app::demo::DemoDir>,
) -> anyhow::Result<Config> {
    let mut config = load(sources.file.as_ref(), &sources.sets)?;
    if ephemeral_secret && config.client.token.has_no_key() {
        // The secret made at start stays, or every token it signed would stop verifying.
        config.client.token.hmac_secret = server.node.config().client.token.hmac_secret.clone();
    }
    if let Some(dir) = demo_dir {
        herald::app::demo::configure(&mut config, dir.path())?;
    }
    Ok(config)
}

async fn serve(mut config: Config, sources: Sources, demo: Option<usize>) -> anyhow::Result<()> {
    // First: from here on a SIGHUP or SIGUSR2 is queued instead of ending the process.
    let mut signals = Signals::install().context("cannot install the signal handlers")?;
    // Listeners handed over by the process this one replaces (SIGUSR2) or by systemd.
    let mut inherited = herald::edges::inherited::Inherited::from_env()?;
    let binary = herald::app::handover::own_binary();
    let demo_dir = match demo {
        Some(_) => {
            let dir = herald::app::demo::DemoDir::create()?;
            herald::app::demo::configure(&mut config, dir.path())?;
            Some(dir)
        }
        None => None,
    };
    let ephemeral_secret = config.client.token.has_no_key();
    if ephemeral_secret {
        // Zero-config runs must be usable: sign tokens with a secret that lives as long as this process.
        config.client.token.hmac_secret = herald::config::sample::random_secret();
        tracing::warn!(
            "client.token: no key configured; using an ephemeral HMAC secret for this run only \
             (run `herald genconfig -o herald.toml` and `herald serve -c herald.toml` for a stable one)"
        );
    }
    let demo_token = if ephemeral_secret {
        Some(token(
            "demo".into(),
            Vec::new(),
            Duration::from_secs(24 * 3600),
            None,
            &config,
        )?)
    } else {
        None
    };
    // The demo's map token lists the fleet channel, so it works whatever the namespace allows.
    let map_token = match demo {
        Some(_) => Some(
            token(
                "demo".into(),
                vec![config.devices.fleet_channel.clone()],
                Duration::from_secs(24 * 3600),
                None,
                &config,
            )
            .context("--demo signs a map token with client.token.hmac_secret")?,
        ),
        None => None,
    };
    let mut server = if demo.is_some() && config.http.listen == herald::app::demo::DEFAULT_LISTEN {
        // A newcomer's port 8000 may be taken (another Herald, a dev server): any port will do.
        let mut fallback = config.clone();
        match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "demo: {} is not available; using a free port", herald::app::demo::DEFAULT_LISTEN);
                fallback.http.listen = "127.0.0.1:0".into();
                Server::start(fallback).await?
            }
        }
    } else {
        Server::start_with(config, &mut inherited).await?
    };
    let node = server.node.clone();
    // systemd (Type=notify): ready once the broker is; a handover's process becomes the main one.
    let notifier = herald::app::notify::Notifier::from_env();
    match inherited.handover.take() {
        Some(channel) => tokio::spawn(herald::app::handover::report_ready(
            node.clone(),
            channel,
            notifier.clone(),
        )),
        None => tokio::spawn(herald::app::notify::report_ready(
            node.clone(),
            notifier.clone(),
        )),
    };
    let api_where = server.internal_addr.unwrap_or(server.addr);
    tracing::info!(node = %node.name, version = env!("CARGO_PKG_VERSION"), "herald started");
    let (public_plain, internal_plain) = {
        let config = node.config();
        let http = &config.http;
        (http.tls_cert.is_empty(), http.internal_tls_cert.is_empty())
    };
    // The internal listener has TLS with its own pair or, without one, the public pair.
    let (ws, web, api) = match (public_plain, internal_plain) {
        (true, true) => ("ws", "http", "http"),
        (true, false) => ("ws", "http", "https"),
        (false, _) => ("wss", "https", "https"),
    };
    tracing::info!("websocket: {ws}://{}/connection/websocket", server.addr);
    tracing::info!(
        "server api: {api}://{api_where}/api/<method>, metrics: {api}://{api_where}/metrics"
    );
    tracing::info!(
        "health: {web}://{}/health, readiness: {web}://{}/ready",
        server.addr,
        server.addr
    );
    if node.config().api.key.is_empty() {
        tracing::warn!("api.key is empty: the server API and /metrics answer only requests made on this host (loopback peer and Host, no foreign Origin, Content-Type: application/json)");
    }
    match node.config().broker.kind {
        BrokerKind::Redis => tracing::info!(
            addresses = ?node.config().broker.redis_addresses,
            prefix = %node.config().broker.prefix,
            "broker: redis (cluster), history and presence: redis"
        ),
        BrokerKind::RedisCluster => tracing::info!(
            seeds = ?node.config().broker.redis_addresses,
            prefix = %node.config().broker.prefix,
            "broker: redis cluster (sharded pub/sub), history and presence: redis cluster"
        ),
        BrokerKind::Nats => tracing::info!(
            urls = ?node.config().broker.nats_urls,
            prefix = %node.config().broker.prefix,
            jetstream = node.config().broker.nats_jetstream,
            "broker: nats (cluster), history: none, presence: nats jetstream kv"
        ),
        BrokerKind::Memory => {
            tracing::info!("broker: memory (single node), history and presence: memory")
        }
    }
    if let Some(demo_token) = demo_token {
        tracing::info!("try it: connect with token {demo_token} (user \"demo\", valid 24h), then");
        tracing::info!(
            "  curl -s -X POST http://{api_where}/api/publish -H 'Content-Type: application/json' -d '{{\"channel\": \"#demo\", \"data\": {{\"text\": \"hello\"}}}}'"
        );
    }
    if node.config().map.enabled && node.config().devices.enabled {
        tracing::info!(
            "map: http://{}/map (token in the fragment: /map#token=…)",
            server.addr
        );
    }
    let stop_devices = tokio_util::sync::CancellationToken::new();
    let simulation = match (demo, &map_token, &demo_dir) {
        (Some(count), Some(map_token), Some(dir)) => {
            let task = herald::app::demo::start_devices(&server, count, stop_devices.clone())?;
            println!(
                "Herald demo: {count} simulated GT06 trackers near Berlin, one position per second \
                 (data in {}, removed on exit)",
                dir.path().display()
            );
            println!(
                "open the map: {}",
                herald::app::demo::map_url(&server, map_token)
            );
            Some(task)
        }
        _ => None,
    };
    loop {
        match signals.next().await {
            Request::Stop => {
                notifier.stopping();
                break;
            }
            Request::Reload => {
                notifier.reloading();
                reload(&server, &sources, ephemeral_secret, demo_dir.as_ref());
                notifier.reloaded();
            }
            Request::Upgrade => {
                let handed = match &binary {
                    Ok(binary) => herald::app::handover::hand_over(&mut server, binary).await,
                    Err(e) => Err(anyhow::anyhow!(
                        "upgrade: cannot tell this binary's path: {e}"
                    )),
                };
                match handed {
                    Ok(pid) => {
                        // No STOPPING=1: the service goes on in the new process, now the main one.
                        tracing::info!(
                            pid,
                            "upgrade: the new process serves; this one drains and exits"
                        );
                        break;
                    }
                    Err(e) => tracing::error!(
                        error = %format!("{e:#}"),
                        "upgrade failed; this process keeps serving"
                    ),
                }
            }
        }
    }
    stop_devices.cancel();
    if let Some(task) = simulation {
        match task.await {
            Ok(Ok(report)) => tracing::info!(
                positions = report.positions_sent,
                acknowledged = report.acknowledged,
                "simulated devices stopped"
            ),
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "simulated devices failed"),
            Err(e) => tracing::warn!(error = %e, "simulated devices panicked"),
        }
    }
    tracing::info!(connections = node.open_connections(), "shutting down");
    server.shutdown().await;
    drop(demo_dir);
    tracing::info!("stopped");
    Ok(())
}

fn token(
    user: String,
    channels: Vec<String>,
    ttl: Duration,
    channel: Option<String>,
    config: &Config,
) -> anyhow::Result<String> {
    let secret = &config.client.token.hmac_secret;
    if secret.is_empty() {
        bail!(
            "client.token.hmac_secret is empty: give --config with a secret (see herald genconfig)"
        );
    }
    let mut claims = serde_json::json!({ "sub": user });
    if !ttl.is_zero() {
        claims["exp"] = serde_json::json!(herald::core::clock::unix_secs() + ttl.as_secs() as i64);
    }
    if let Some(channel) = channel {
        claims["channel"] = serde_json::json!(channel);
    } else if !channels.is_empty() {
        claims["channels"] = serde_json::json!(channels);
    }
    if !config.client.token.audience.is_empty() {
        claims["aud"] = serde_json::json!(config.client.token.audience);
    }
    if !config.client.token.issuer.is_empty() {
        claims["iss"] = serde_json::json!(config.client.token.issuer);
    }
    Ok(herald_auth::sign_hs256(&claims, secret)?)
}

/// Errors end the process with one line naming each cause once (no backtrace, no repeats).
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            mut sets,
            demo,
            demo_devices,
        } => {
            if let Some(listen) = listen {
                sets.push(format!("http.listen=\"{listen}\""));
            }
            let loaded = load(config.as_ref(), &sets)?;
            let log = herald::app::logging::init(&loaded);
            let sources = Sources {
                file: config,
                sets,
                log,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(serve(loaded, sources, demo.then_some(demo_devices)))
        }
        Command::Genconfig { output, force } => {
            let text = herald::config::sample::render(
                &herald::config::sample::random_secret(),
                &herald::config::sample::random_secret(),
            );
            match output {
                Some(path) => {
                    if path.exists() && !force {
                        bail!("{} exists; use --force to overwrite", path.display());
                    }
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Simulate {
            what:
                SimulateWhat::Devices {
                    protocol,
                    count,
                    interval,
                    target,
                    duration,
                    seed,
                    first_id,
                },
        } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            let target = target.unwrap_or_else(|| {
                std::net::SocketAddr::from(([127, 0, 0, 1], protocol.default_port()))
            });
            let options = herald::app::simulate::SimulateOptions {
                protocol,
                target,
                count,
                interval: interval.into(),
                duration: duration.map(Into::into),
                seed,
                first_id,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(simulate_devices(options))
        }
        Command::Checkconfig { file } => {
            let config = Config::load(Some(&file), std::env::vars(), &[])?;
            herald::app::server::verifier(&config)?;
            herald::edges::tls::check(&config)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Token {
            user,
            channels,
            ttl,
            channel,
            config,
            sets,
        } => {
            let config = load(config.as_ref(), &sets)?;
            println!("{}", token(user, channels, ttl.into(), channel, &config)?);
            Ok(())
        }
    }
}
