//! Arguments every scenario shares.

use std::net::SocketAddr;

#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// WebSocket server address; repeat for several nodes (connections are spread round-robin).
    #[arg(long = "server", default_value = "127.0.0.1:8000", num_args = 1)]
    pub servers: Vec<SocketAddr>,
    /// Where the publisher sends (default: the first --server).
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// HMAC secret for connection tokens (client.token.hmac_secret).
    #[arg(long, default_value = "bench-secret")]
    pub secret: String,
    /// Server API key (empty: none).
    #[arg(long, default_value = "bench-key")]
    pub api_key: String,
    /// Handshakes in flight at once while ramping up.
    #[arg(long, default_value_t = 200)]
    pub ramp_concurrency: usize,
    /// New connections per second while ramping up (0: as fast as the concurrency allows).
    #[arg(long, default_value_t = 0)]
    pub connect_rate: u64,
    /// Server pid(s), to report CPU and RSS from /proc; repeat or comma-separate for a node group.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Write the JSON result here (it is printed to standard output too).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

impl Common {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.servers.is_empty() {
            anyhow::bail!("at least one --server is needed");
        }
        for s in self.servers.iter().chain(self.api.iter()) {
            crate::net::require_loopback(s)?;
        }
        Ok(())
    }

    pub fn server_for(&self, i: usize) -> SocketAddr {
        self.servers[i % self.servers.len()]
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.unwrap_or(self.servers[0])
    }

    pub fn token(&self, user: &str) -> anyhow::Result<String> {
        Ok(herald_auth::sign_hs256(
            &serde_json::json!({"sub": user}),
            &self.secret,
        )?)
    }
}
