//! A unique PostgreSQL database per test, at 127.0.0.1:5432 (override with HERALD_TEST_PG, a
//! conninfo without dbname). Fails, not skips, when PostgreSQL is unreachable.
use tokio_postgres::NoTls;

pub fn base() -> String {
    std::env::var("HERALD_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

pub struct TempDb {
    pub name: String,
    admin: tokio_postgres::Client,
}

impl TempDb {
    pub async fn new() -> Self {
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

    pub fn conninfo(&self) -> String {
        format!("{} dbname={}", base(), self.name)
    }

    /// A plain client on the test database (for DDL the test adds and for checks).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.conninfo(), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    pub async fn drop_db(self) {
        self.admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}
