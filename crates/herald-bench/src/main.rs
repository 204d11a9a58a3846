//! herald-bench: a load generator for Herald and, in raw mode, for the Node.js peers.
//!
//! Scenarios: `idle`, `broadcast` (also the cluster scenario, given several `--server`s), `chat`,
//! `market`, `livemap`, `capacity`, `hostile`. Connections come from source addresses 127.0.0.2–101 (so one host can
//! open far more than one address allows); `idle` spreads them over several processes. Results
//! are JSON (standard output and `--json`) and a one-screen summary on standard error. Everything
//! targets loopback and stops by itself (durations and counts are bounded).

use clap::{Parser, Subcommand};
use herald_bench::{broadcast, capacity, chat, hostile, idle, livemap, market, summary};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "herald-bench", about = "Load generator for Herald")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hold N idle connections: memory per connection and CPU at rest.
    Idle(idle::IdleArgs),
    /// One channel, N subscribers, publications at one or more rates (several --server: cluster).
    Broadcast(broadcast::BroadcastArgs),
    /// Many rooms; every member publishes and receives its room's messages.
    Chat(chat::ChatArgs),
    /// Ticks over many symbols; each client follows some, conflated by the server.
    Market(market::MarketArgs),
    /// GT06 trackers over TCP and viewers of the fleet channel.
    Livemap(livemap::LiveMapArgs),
    /// Memory per connection, per subscription and per channel with history (capacity planning).
    Capacity(capacity::CapacityArgs),
    /// Hostile clients of every kind against one node while honest subscribers must receive
    /// everything; exits non-zero on any honest loss or disconnect.
    Hostile(hostile::HostileArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    herald_bench::net::raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (result, json_path): (serde_json::Value, Option<PathBuf>) = match cli.command {
        Command::Idle(args) if args.child => return runtime.block_on(idle::child(args)),
        Command::Idle(args) => {
            let path = args.common.json.clone();
            (runtime.block_on(idle::run(args))?, path)
        }
        Command::Broadcast(args) => {
            let path = args.common.json.clone();
            (runtime.block_on(broadcast::run(args))?, path)
        }
        Command::Chat(args) => {
            let path = args.common.json.clone();
            (runtime.block_on(chat::run(args))?, path)
        }
        Command::Market(args) => {
            let path = args.common.json.clone();
            (runtime.block_on(market::run(args))?, path)
        }
        Command::Livemap(args) => {
            let path = args.common.json.clone();
            (runtime.block_on(livemap::run(args))?, path)
        }
        Command::Capacity(args) => {
            let path = args.common.json.clone();
            (runtime.block_on(capacity::run(args))?, path)
        }
        Command::Hostile(args) => {
            let path = args.common.json.clone();
            (runtime.block_on(hostile::run(args))?, path)
        }
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_vec_pretty(&result)?)?;
    }
    summary::print(&result);
    // Connections are closed; do not wait for stragglers in the runtime's blocking pool.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    if result["passed"] == false {
        std::process::exit(1);
    }
    Ok(())
}
