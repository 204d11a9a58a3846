//! Needs PostgreSQL at 127.0.0.1:5432 (override with HERALD_TEST_PG, a conninfo without dbname).
//! Fails, not skips, when it is unreachable.
mod common;
use common::pg::TempDb;
use herald_store::postgres::PgStore;
use herald_store::store::Store;

#[tokio::test]
async fn postgres_store_semantics() {
    let db = TempDb::new().await;
    let store = PgStore::connect(&db.conninfo()).await.unwrap();
    common::check_store(&store).await;
    drop(store);
    // Reconnect: schema creation is idempotent.
    let store = PgStore::connect(&db.conninfo()).await.unwrap();
    assert_eq!(store.latest_positions().await.unwrap().len(), 2);
    drop(store);
    db.drop_db().await;
}

#[tokio::test]
async fn postgres_copy_10k() {
    let db = TempDb::new().await;
    let store = PgStore::connect(&db.conninfo()).await.unwrap();
    let batch = common::many("bulk", 10_000);
    assert_eq!(store.insert_batch(&batch).await.unwrap(), 10_000);
    assert_eq!(store.insert_batch(&batch).await.unwrap(), 0);
    let latest = store.latest_positions().await.unwrap();
    assert_eq!(latest, vec![batch[9_999].clone()]);
    let page = store
        .track("bulk", 0, i64::MAX, 10_000, None)
        .await
        .unwrap();
    assert_eq!(page.positions, batch);
    assert!(page.next.is_none());
    drop(store);
    db.drop_db().await;
}
