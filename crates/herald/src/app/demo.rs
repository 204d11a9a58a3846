//! `herald serve --demo`: a node with device ingest on loopback, a throw-away data directory and
//! simulated GT06 trackers driving around Berlin, so the map at `/map` moves at once.

use crate::app::server::Server;
use crate::app::simulate::{SimProtocol, SimulateOptions, SimulateReport};
use crate::config::{Config, FsyncSetting, NamespaceOptions, StoreSetting};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where the demo keeps its spool and database: a fresh directory under the system's temporary
/// directory, removed when the demo ends (a demo must not leave data in the working directory).
pub struct DemoDir(PathBuf);

impl DemoDir {
    pub fn create() -> anyhow::Result<DemoDir> {
        let dir = std::env::temp_dir().join(format!("herald-demo-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the demo directory {}", dir.display()))?;
        Ok(DemoDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The public address the demo uses unless one was given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// Turns `config` into the demo's: devices on, every device listener on a free loopback port,
/// storage in `dir`, the map on, and a conflated namespace for the device channels when the
/// configuration has none.
pub fn configure(config: &mut Config, dir: &Path) -> anyhow::Result<()> {
    if config.http.listen == crate::config::HttpConfig::default().listen {
        config.http.listen = DEFAULT_LISTEN.into();
    }
    let devices = &mut config.devices;
    devices.enabled = true;
    let loopback = "127.0.0.1:0".to_string();
    let listen = &mut devices.listen;
    for address in [
        &mut listen.gt06,
        &mut listen.h02,
        &mut listen.teltonika,
        &mut listen.osmand,
        &mut listen.jsonl,
    ] {
        *address = loopback.clone();
    }
    devices.spool_dir = dir.join("spool").display().to_string();
    devices.store = StoreSetting::Sqlite(dir.join("herald.db").display().to_string());
    // A demo's positions are worth no fsync.
    devices.fsync = FsyncSetting::Never;
    if devices.fleet_channel.is_empty() {
        devices.fleet_channel = "devices:fleet".into();
    }
    config.map.enabled = true;
    let fleet = config.devices.fleet_channel.clone();
    if let Some((namespace, _)) = fleet.split_once(':') {
        let defined = config
            .channel
            .namespaces
            .iter()
            .any(|n| n.name == namespace);
        if !defined {
            // The live-map setup of docs/devices.md: one delivery per second, the latest
            // position per device, and a snapshot of every device on subscribe.
            config.channel.namespaces.push(NamespaceOptions {
                name: namespace.to_string(),
                history_size: 1000,
                history_ttl: Duration::from_secs(60),
                batch_window: Duration::from_secs(1),
                conflation_key: "/device".into(),
                ..Default::default()
            });
        }
    }
    config.validate().context("demo configuration")?;
    Ok(())
}

/// Starts `count` simulated GT06 trackers reporting every second to the node's GT06 listener.
pub fn start_devices(
    server: &Server,
    count: usize,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<anyhow::Result<SimulateReport>>> {
    let target = server
        .device_addrs
        .gt06
        .context("the demo needs the GT06 listener")?;
    let options = SimulateOptions {
        protocol: SimProtocol::Gt06,
        target,
        count,
        interval: Duration::from_secs(1),
        duration: None,
        seed: 1,
        first_id: 860_000_000_000_000,
    };
    Ok(tokio::spawn(crate::app::simulate::run(options, stop)))
}

/// The map URL for a browser on this machine.
pub fn map_url(server: &Server, token: &str) -> String {
    let mut addr = server.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}/map#token={token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_config_is_valid_and_local() {
        let dir = Path::new("/tmp/herald-demo-test");
        let mut config = Config::default();
        configure(&mut config, dir).unwrap();
        assert_eq!(config.http.listen, DEFAULT_LISTEN);
        assert!(config.devices.enabled && config.map.enabled);
        assert!(config
            .devices
            .listeners()
            .iter()
            .all(|(_, a)| a.ip().is_loopback() && a.port() == 0));
        assert!(config
            .devices
            .spool_dir
            .starts_with("/tmp/herald-demo-test"));
        let ns = config
            .channel
            .namespaces
            .iter()
            .find(|n| n.name == "devices")
            .expect("devices namespace");
        assert!(ns.conflated());
        let mut config = Config::default();
        config.http.listen = "127.0.0.1:0".into();
        configure(&mut config, dir).unwrap();
        assert_eq!(
            config.http.listen, "127.0.0.1:0",
            "an explicit address is kept"
        );
    }
}
