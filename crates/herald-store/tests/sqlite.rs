mod common;
use herald_store::sqlite::SqliteStore;

#[tokio::test]
async fn sqlite_store_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("positions.db"))
        .await
        .unwrap();
    common::check_store(&store).await;
    // Reopen keeps the data and the schema creation is idempotent.
    drop(store);
    let store = SqliteStore::open(dir.path().join("positions.db"))
        .await
        .unwrap();
    use herald_store::store::Store;
    assert_eq!(store.latest_positions().await.unwrap().len(), 2);
}
