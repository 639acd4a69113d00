//! Migrations applied by several processes starting at the same time.

use std::time::Duration;

use e2e::db::TestDb;
use shared::secret::Secret;

#[tokio::test(flavor = "multi_thread")]
async fn eight_services_migrating_one_empty_database_at_once_apply_each_migration_once() {
    let db = TestDb::empty().await;
    let url = Secret::new(db.url(None));

    let results = futures_util::future::join_all((0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            shared::db::connect_and_migrate(&url, 2, Duration::from_secs(10))
                .await
                .map(|_| ())
        })
    }))
    .await;

    for result in results {
        result.expect("join").expect("every start succeeds");
    }
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .expect("migrations table");
    let expected: Vec<i64> = shared::db::MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(applied, expected);
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN \
         ('webhook_events','users','memberships','admin_actions','credit_accounts','credit_ledger')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("count");
    assert_eq!(tables, 6);
}

/// `setting` as a session of a service's pool sees it.
async fn service_setting(setting: &str) -> String {
    let db = TestDb::new().await;
    let pool = shared::db::pool(&Secret::new(db.url(None)), 2).expect("pool");
    sqlx::query_scalar(&format!("SHOW {setting}"))
        .fetch_one(&pool)
        .await
        .expect("show")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_session_of_a_service_has_the_statement_timeout() {
    assert_eq!(service_setting("statement_timeout").await, "30s");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_session_of_a_service_plans_each_statement_for_its_parameters() {
    assert_eq!(
        service_setting("plan_cache_mode").await,
        "force_custom_plan"
    );
}
