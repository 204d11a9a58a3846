//! `herald simulate devices` against a real server: every protocol's simulated devices connect,
//! are acknowledged where the protocol acknowledges, and their positions are stored.

mod support;

use herald::app::simulate::{run, SimProtocol, SimulateOptions};
use herald::config::StoreSetting;
use serde_json::json;
use std::time::Duration;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_devices_of_every_protocol_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with(|c| {
        c.devices.enabled = true;
        let l = &mut c.devices.listen;
        for a in [
            &mut l.gt06,
            &mut l.h02,
            &mut l.teltonika,
            &mut l.osmand,
            &mut l.jsonl,
        ] {
            *a = "127.0.0.1:0".into();
        }
        c.devices.spool_dir = dir.path().join("spool").display().to_string();
        c.devices.store = StoreSetting::Sqlite(dir.path().join("herald.db").display().to_string());
        c.channel.namespaces.push(open_namespace("devices"));
    })
    .await;
    let addrs = server.server.as_ref().unwrap().device_addrs;
    let targets = [
        (SimProtocol::Gt06, addrs.gt06),
        (SimProtocol::H02, addrs.h02),
        (SimProtocol::Teltonika, addrs.teltonika),
        (SimProtocol::Osmand, addrs.osmand),
        (SimProtocol::Jsonl, addrs.jsonl),
    ];
    let mut first_id = 860_000_000_000_000u64;
    for (protocol, target) in targets {
        let options = SimulateOptions {
            protocol,
            target: target.expect("listener bound"),
            count: 3,
            interval: Duration::from_millis(100),
            duration: Some(Duration::from_millis(700)),
            seed: 7,
            first_id,
        };
        first_id += 100;
        let report = run(options, CancellationToken::new()).await.unwrap();
        assert_eq!(report.devices, 3, "{protocol:?}: {report:?}");
        assert_eq!(report.errors, 0, "{protocol:?}: {report:?}");
        assert!(report.positions_sent >= 3 * 4, "{protocol:?}: {report:?}");
        if matches!(
            protocol,
            SimProtocol::Gt06 | SimProtocol::Teltonika | SimProtocol::Osmand
        ) {
            assert_eq!(
                report.acknowledged, report.positions_sent,
                "{protocol:?}: every report acknowledged"
            );
        }
    }
    // 15 devices, each with its latest position stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let positions = server.api_ok("device_positions", json!({})).await;
        let count = positions["positions"].as_array().map_or(0, Vec::len);
        if count == 15 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stored devices: {positions}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_simulator_only_targets_loopback() {
    let options = SimulateOptions {
        protocol: SimProtocol::Gt06,
        target: "192.0.2.1:5023".parse().unwrap(),
        count: 1,
        interval: Duration::from_secs(1),
        duration: Some(Duration::from_secs(1)),
        seed: 1,
        first_id: 1,
    };
    let error = run(options, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("loopback"), "{error}");
}
