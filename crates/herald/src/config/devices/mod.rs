//! `[devices]`: GPS device ingest (docs/devices.md).

mod storage;
mod tls;

pub use storage::{FsyncSetting, StoreSetting};
pub use tls::DeviceTlsConfig;

use super::error::{field, positive, ConfigError};
use super::http::parse_addr;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Start the device listeners, the spool and the database writer.
    pub enabled: bool,
    /// Listen address per protocol (Traccar's ports by default); "" disables that protocol.
    pub listen: DeviceListenConfig,
    /// Accept devices not in `allowed`.
    pub accept_unknown: bool,
    /// IMEIs (device ids) accepted when `accept_unknown` is false.
    pub allowed: Vec<String>,
    /// Each position is published to `<device_channel_prefix><imei>`.
    pub device_channel_prefix: String,
    /// ... and to this channel ("" disables it).
    pub fleet_channel: String,
    /// Directory of the on-disk spool (positions accepted but not yet in the database).
    pub spool_dir: String,
    /// Upper bound of the spool on disk; when full, devices are not read (TCP backpressure).
    pub spool_max_bytes: u64,
    /// When accepted positions are flushed to disk.
    pub fsync: FsyncSetting,
    /// The database positions are written to.
    pub store: StoreSetting,
    /// A new device connection must identify itself (a login, an IMEI handshake, a frame with
    /// the device id) within this time or it is closed.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// An identified device connection that sends nothing for this long is closed (half-open
    /// sockets; trackers report or send heartbeats every few minutes).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open connections per device listener (protocol); more are closed at accept.
    pub max_connections: usize,
    /// Open device connections from one source address, over all device listeners; more are
    /// closed at accept. A fleet behind one carrier NAT or APN gateway shares an address: raise
    /// it for such fleets. 0 is unlimited.
    pub max_connections_per_ip: usize,
    /// Device ids kept in the in-memory registry (last position, connection state). When full,
    /// the disconnected devices seen longest ago are forgotten (their positions stay stored);
    /// when every entry is connected, new ids are refused.
    pub max_devices: usize,
    /// TLS on chosen TCP listeners (`[devices.tls]`).
    pub tls: DeviceTlsConfig,
}

/// Listen addresses of the device protocols.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceListenConfig {
    pub gt06: String,
    pub h02: String,
    pub teltonika: String,
    /// OsmAnd / Traccar Client (HTTP).
    pub osmand: String,
    /// Herald JSON lines.
    pub jsonl: String,
}

impl Default for DeviceListenConfig {
    fn default() -> Self {
        DeviceListenConfig {
            gt06: "0.0.0.0:5023".into(),
            h02: "0.0.0.0:5013".into(),
            teltonika: "0.0.0.0:5027".into(),
            osmand: "0.0.0.0:5055".into(),
            jsonl: "0.0.0.0:5099".into(),
        }
    }
}

impl DeviceListenConfig {
    /// (protocol name, address text) of every protocol, enabled or not.
    fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("gt06", &self.gt06),
            ("h02", &self.h02),
            ("teltonika", &self.teltonika),
            ("osmand", &self.osmand),
            ("jsonl", &self.jsonl),
        ]
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            enabled: false,
            listen: DeviceListenConfig::default(),
            accept_unknown: true,
            allowed: Vec::new(),
            device_channel_prefix: "devices:".into(),
            fleet_channel: "devices:fleet".into(),
            spool_dir: "data/spool".into(),
            spool_max_bytes: 1 << 30,
            fsync: FsyncSetting::Every(Duration::from_millis(100)),
            store: StoreSetting::Sqlite("data/herald.db".into()),
            login_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            max_connections: 50_000,
            max_connections_per_ip: 500,
            max_devices: 100_000,
            tls: DeviceTlsConfig::default(),
        }
    }
}

impl DevicesConfig {
    /// (protocol name, address) of every enabled listener.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listen
            .all()
            .into_iter()
            .filter(|(_, a)| !a.is_empty())
            .filter_map(|(name, a)| parse_addr(a).ok().map(|addr| (name, addr)))
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in self.listen.all() {
            if !value.is_empty() {
                parse_addr(value).map_err(|m| {
                    field(
                        format!("devices.listen.{name}"),
                        format!("{m} (or \"\" to disable)"),
                    )
                })?;
            }
        }
        if self.spool_max_bytes == 0 {
            return Err(positive("devices.spool_max_bytes"));
        }
        if self.spool_dir.trim().is_empty() {
            return Err(field("devices.spool_dir", "must not be empty"));
        }
        if self.device_channel_prefix.is_empty() {
            return Err(field("devices.device_channel_prefix", "must not be empty"));
        }
        if self.login_timeout.is_zero() {
            return Err(positive("devices.login_timeout"));
        }
        if self.idle_timeout.is_zero() {
            return Err(positive("devices.idle_timeout"));
        }
        if self.max_connections == 0 {
            return Err(field(
                "devices.max_connections",
                "must be greater than zero (disable a protocol with devices.listen.<protocol> = \"\")",
            ));
        }
        if self.max_devices == 0 {
            return Err(positive("devices.max_devices"));
        }
        for (i, id) in self.allowed.iter().enumerate() {
            if id.trim().is_empty() || id.trim() != id {
                return Err(field(
                    format!("devices.allowed[{i}]"),
                    format!("{id:?} is not a device id (no spaces, not empty)"),
                ));
            }
        }
        if self.enabled && !self.accept_unknown && self.allowed.is_empty() {
            return Err(field(
                "devices.allowed",
                "is empty while accept_unknown = false: no device could connect",
            ));
        }
        self.tls.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::load_str;

    #[test]
    fn devices_settings_are_validated() {
        let c = load_str("", &[], &[]).unwrap();
        assert_eq!(
            c.devices.fsync,
            FsyncSetting::Every(Duration::from_millis(100))
        );
        assert_eq!(
            c.devices.store,
            StoreSetting::Sqlite("data/herald.db".into())
        );
        assert_eq!(c.devices.listeners().len(), 5);
        for (text, want) in [
            ("always", FsyncSetting::Always),
            ("never", FsyncSetting::Never),
            ("every 1s", FsyncSetting::Every(Duration::from_secs(1))),
        ] {
            let c = load_str(&format!("[devices]\nfsync = \"{text}\"\n"), &[], &[]).unwrap();
            assert_eq!(c.devices.fsync, want);
        }
        for bad in ["sometimes", "every", "every 0s", "100ms"] {
            let e = load_str(&format!("[devices]\nfsync = \"{bad}\"\n"), &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some("devices.fsync"), "{e}");
        }
        let e = load_str("[devices]\nstore = \"mysql://x\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("devices.store"), "{e}");
        let c = load_str("[devices]\nstore = \"postgres://u@h/db\"\n", &[], &[]).unwrap();
        assert_eq!(
            c.devices.store,
            StoreSetting::Postgres("postgres://u@h/db".into())
        );
        let e = load_str("[devices.listen]\ngt06 = \"port 5023\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("devices.listen.gt06"), "{e}");
        let c = load_str("[devices.listen]\ngt06 = \"\"\n", &[], &[]).unwrap();
        assert_eq!(c.devices.listeners().len(), 4);
        let e = load_str("[devices]\nspool_max_bytes = 0\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("devices.spool_max_bytes"), "{e}");
        let closed = "[devices]\nenabled = true\naccept_unknown = false\n";
        let e = load_str(closed, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("devices.allowed"), "{e}");
        for (text, name) in [
            ("login_timeout = \"0s\"", "devices.login_timeout"),
            ("idle_timeout = \"0s\"", "devices.idle_timeout"),
            ("max_connections = 0", "devices.max_connections"),
            ("max_devices = 0", "devices.max_devices"),
        ] {
            let e = load_str(&format!("[devices]\n{text}\n"), &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some(name), "{e}");
        }
        let c = load_str("[devices]\nmax_connections_per_ip = 0\n", &[], &[]).unwrap();
        assert_eq!(c.devices.max_connections_per_ip, 0, "0 is unlimited");
        assert_eq!(c.devices.login_timeout, Duration::from_secs(30));
    }
}
