//! herald-bench: a load generator for Herald.
//!
//! `broadcast`: N WebSocket subscribers of one channel (spread over source addresses 127.0.0.2–101
//! so one host can open more connections than one address allows), and a publisher that sends
//! timestamped publications through the server API at a set rate. Reports deliveries per second and
//! end-to-end latency (HDR histogram) and, given the server's pid, its CPU and RSS from /proc.
//! Everything targets loopback and stops by itself after `--duration`.

use clap::{Parser, Subcommand};
use herald_bench::load;

#[derive(Parser)]
#[command(name = "herald-bench", about = "Load generator for Herald")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One channel, many subscribers, publications at a fixed rate.
    Broadcast(load::BroadcastArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Broadcast(args) => {
            let result = runtime.block_on(load::broadcast(args.clone()))?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
            }
            Ok(())
        }
    }
}
