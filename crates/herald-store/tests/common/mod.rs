#![allow(dead_code)]
/// The PostgreSQL test databases of the herald crate's tests.
#[path = "../../../herald/tests/support/pg.rs"]
pub mod pg;

use herald_devices::Position;

pub fn pos(device: &str, time_ms: i64, n: u32) -> Position {
    let mut p = Position::new(device);
    p.time_ms = time_ms;
    p.latitude = 52.0 + f64::from(n) * 1e-5;
    p.longitude = 13.0 + f64::from(n) * 1e-5;
    p.speed_kmh = f64::from(n % 120);
    p.course = f64::from(n % 360);
    p.valid = true;
    p.satellites = Some(n % 12);
    p.attributes.insert("n".into(), serde_json::json!(n));
    p
}

pub fn many(device: &str, count: u32) -> Vec<Position> {
    (0..count)
        .map(|i| pos(device, 1_000 + i64::from(i), i))
        .collect()
}

use herald_store::store::Store;

/// Assertions every backend must pass.
pub async fn check_store(store: &dyn Store) {
    let batch = many("a", 25);
    assert_eq!(store.insert_batch(&batch).await.unwrap(), 25);
    // Replay stores nothing new; duplicates inside a batch too.
    assert_eq!(store.insert_batch(&batch).await.unwrap(), 0);
    let dup = vec![pos("b", 50, 1), pos("b", 50, 1)];
    assert_eq!(store.insert_batch(&dup).await.unwrap(), 1);
    // A distinct report at the same time is stored.
    let mut alarm = pos("b", 50, 1);
    alarm
        .attributes
        .insert("alarm".into(), serde_json::json!("sos"));
    assert_eq!(store.insert_batch(&[alarm]).await.unwrap(), 1);
    // Out-of-order older position: stored, but the latest stays.
    assert_eq!(store.insert_batch(&[pos("a", 10, 999)]).await.unwrap(), 1);
    let latest = store.latest_positions().await.unwrap();
    assert_eq!(latest.len(), 2);
    assert_eq!(latest[0], batch[24]);
    assert_eq!(latest[1], pos("b", 50, 1));
    // Track paging: 26 positions of "a", pages of 10.
    let mut all = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.track("a", 0, i64::MAX, 10, after).await.unwrap();
        pages += 1;
        all.extend(page.positions.clone());
        if pages == 1 {
            let gj = herald_store::geojson::page_to_geojson(&page);
            assert_eq!(gj["type"], "FeatureCollection");
            assert_eq!(gj["features"][0]["geometry"]["type"], "LineString");
            assert_eq!(gj["features"].as_array().unwrap().len(), 11);
            assert!(gj["next_cursor"].is_string());
        }
        match page.next {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(all.len(), 26);
    assert_eq!(all[0], pos("a", 10, 999));
    assert!(all.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    // Time window.
    let page = store.track("a", 1_005, 1_009, 100, None).await.unwrap();
    assert_eq!(page.positions.len(), 5);
    assert!(page.next.is_none());
}
