mod common;
use common::pos;
use herald_store::IdempotencyKey;

#[test]
fn same_report_same_key() {
    let a = pos("dev", 1000, 3);
    assert_eq!(IdempotencyKey::of(&a), IdempotencyKey::of(&a.clone()));
    // Attribute insertion order does not matter (BTreeMap), nor nested object key order.
    let mut b = a.clone();
    let mut c = a.clone();
    b.attributes
        .insert("o".into(), serde_json::json!({"x": 1, "y": 2}));
    c.attributes
        .insert("o".into(), serde_json::json!({"y": 2, "x": 1}));
    assert_eq!(IdempotencyKey::of(&b), IdempotencyKey::of(&c));
    let mut z = a.clone();
    z.course = -0.0;
    let mut z2 = a.clone();
    z2.course = 0.0;
    assert_eq!(IdempotencyKey::of(&z), IdempotencyKey::of(&z2));
}

#[test]
fn distinct_reports_at_same_time_differ() {
    let a = pos("dev", 1000, 3);
    let base = IdempotencyKey::of(&a);
    let mut variants = Vec::new();
    let mut v = a.clone();
    v.latitude += 1e-9;
    variants.push(v);
    let mut v = a.clone();
    v.speed_kmh += 1.0;
    variants.push(v);
    let mut v = a.clone();
    v.altitude_m = Some(1.0);
    variants.push(v);
    let mut v = a.clone();
    v.attributes
        .insert("alarm".into(), serde_json::json!("sos"));
    variants.push(v);
    let mut v = a.clone();
    v.device_id = "dev2".into();
    variants.push(v);
    let mut v = a.clone();
    v.valid = false;
    variants.push(v);
    let mut keys: Vec<_> = variants.iter().map(IdempotencyKey::of).collect();
    keys.push(base);
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), variants.len() + 1);
    assert_eq!(base.to_hex().len(), 32);
}
