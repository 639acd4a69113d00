//! A database of its own for each test, dropped when the test ends.

use shared::secret::Secret;
use sqlx::{Connection as _, PgConnection, PgPool};

pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
    admin_url: String,
}

impl TestDb {
    /// Creates `t_<uuid>` and applies the migrations.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        shared::db::MIGRATOR
            .run(&db.pool)
            .await
            .expect("migrations apply");
        db
    }

    /// Creates `t_<uuid>` with the schema as it was before migration
    /// `version`: the migrations older than it, applied.
    pub async fn before(version: i64) -> Self {
        let db = Self::empty().await;
        shared::db::migrations_before(version)
            .run(&db.pool)
            .await
            .expect("older migrations apply");
        db
    }

    /// Creates `t_<uuid>` without applying anything.
    pub async fn empty() -> Self {
        let admin_url = crate::postgres_admin_url();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to the test PostgreSQL server");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let url = Self::url_for(&admin_url, &name, None);
        let pool = shared::db::pool(&Secret::new(url), 8).expect("pool");
        Self {
            name,
            pool,
            admin_url,
        }
    }

    /// The URL of this database, optionally through another port (a proxy).
    pub fn url(&self, port: Option<u16>) -> String {
        Self::url_for(&self.admin_url, &self.name, port)
    }

    fn url_for(admin_url: &str, name: &str, port: Option<u16>) -> String {
        let mut url = reqwest::Url::parse(admin_url).expect("admin url parses");
        url.set_path(name);
        if let Some(port) = port {
            url.set_port(Some(port)).expect("port");
        }
        url.to_string()
    }

    /// The port of the real server.
    pub fn server_port(&self) -> u16 {
        reqwest::Url::parse(&self.admin_url)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(5432)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let pool = self.pool.clone();
        // Drop runs inside the test's runtime; do the async cleanup on a thread
        // with a runtime of its own so it also runs when the test panicked.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                pool.close().await;
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut admin)
                            .await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
