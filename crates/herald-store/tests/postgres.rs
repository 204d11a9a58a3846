//! Needs PostgreSQL at 127.0.0.1:5432 (override with HERALD_TEST_PG, a conninfo without dbname).
//! Fails, not skips, when it is unreachable.
mod common;
use herald_store::postgres::PgStore;
use herald_store::store::Store;
use tokio_postgres::NoTls;

fn base() -> String {
    std::env::var("HERALD_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

struct TempDb {
    name: String,
    admin: tokio_postgres::Client,
}

impl TempDb {
    async fn new() -> Self {
        let conninfo = format!("{} dbname=test", base());
        let (admin, conn) = tokio_postgres::connect(&conninfo, NoTls).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at `{conninfo}` ({e}); start it (CI does) or set HERALD_TEST_PG")
        });
        tokio::spawn(conn);
        let name = format!("herald_store_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TempDb { name, admin }
    }
    fn conninfo(&self) -> String {
        format!("{} dbname={}", base(), self.name)
    }
    async fn drop_db(self) {
        self.admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

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
