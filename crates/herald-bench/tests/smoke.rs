//! Smoke run of the broadcast scenario against an in-process Herald, so the load generator keeps
//! working as the server evolves. Small numbers: this checks correctness, not speed.

use herald::config::{Config, NamespaceOptions};
use herald::server::Server;
use herald_bench::load::{broadcast, BroadcastArgs};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_scenario_delivers_every_publication_to_every_subscriber() {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.client.token.hmac_secret = "smoke-secret".into();
    config.api.key = "smoke-key".into();
    config.channel.without_namespace = NamespaceOptions {
        allow_subscribe_for_client: true,
        ..Default::default()
    };
    let server = Server::start(config).await.unwrap();
    let args = BroadcastArgs {
        server: server.addr,
        secret: "smoke-secret".into(),
        api_key: "smoke-key".into(),
        channel: "smoke".into(),
        subscribers: 20,
        rate: 200,
        batch: 10,
        payload: 100,
        duration: Duration::from_secs(1).into(),
        ramp_concurrency: 10,
        server_pid: Some(std::process::id()),
        json: None,
    };
    let result = broadcast(args).await.unwrap();
    assert_eq!(result["subscribers"], 20);
    let published = result["publications"].as_u64().unwrap();
    assert!(published >= 100, "{result}");
    assert_eq!(
        result["deliveries"].as_u64().unwrap(),
        published * 20,
        "every subscriber got every publication: {result}"
    );
    assert!(result["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(result["server_rss_mib"].as_f64().unwrap() > 0.0);
    server.shutdown().await;
}
