//! A unique PostgreSQL database per test, at 127.0.0.1:5432 (override with HERALD_TEST_PG, a
//! conninfo without dbname). Fails, not skips, when PostgreSQL is unreachable. The tests of
//! herald-store use this file too (by path).

use std::net::SocketAddr;
use tokio_postgres::NoTls;

fn base() -> String {
    std::env::var("HERALD_TEST_PG")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

pub struct TempDb {
    pub name: String,
    config: tokio_postgres::Config,
    admin: tokio_postgres::Client,
}

impl TempDb {
    pub async fn new() -> TempDb {
        let conninfo = format!("{} dbname=test", base());
        let config: tokio_postgres::Config = conninfo.parse().expect("HERALD_TEST_PG parses");
        let (admin, conn) = config.connect(NoTls).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at `{conninfo}` ({e}); start it (CI does) or set HERALD_TEST_PG")
        });
        tokio::spawn(conn);
        let name = format!("herald_it_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        TempDb {
            name,
            config,
            admin,
        }
    }

    /// A conninfo for this database (`PgStore::connect`).
    pub fn conninfo(&self) -> String {
        format!("{} dbname={}", base(), self.name)
    }

    /// The server's TCP address (for a proxy in front of it).
    pub fn addr(&self) -> SocketAddr {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
            .parse()
            .expect("PostgreSQL at a TCP address")
    }

    /// A `devices.store` URL for this database, reached at `addr` (the server or a proxy).
    pub fn store_url(&self, addr: SocketAddr) -> String {
        let user = self.config.get_user().unwrap_or("postgres");
        match self.config.get_password() {
            Some(p) => format!(
                "postgres://{user}:{}@{addr}/{}",
                String::from_utf8_lossy(p),
                self.name
            ),
            None => format!("postgres://{user}@{addr}/{}", self.name),
        }
    }

    /// A client on this database, for checks.
    pub async fn client(&self) -> tokio_postgres::Client {
        let mut config = self.config.clone();
        config.dbname(&self.name);
        let (client, conn) = config.connect(NoTls).await.expect("connect test database");
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
            .expect("drop database");
    }
}
