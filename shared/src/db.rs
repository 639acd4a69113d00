//! The PostgreSQL pool and the embedded migrations of `migrations/`.

use std::{str::FromStr, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use sqlx::{
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    PgPool,
};

use crate::secret::{redact_url, Secret};

/// Every migration of `migrations/`, compiled into the binary.
///
/// sqlx takes a PostgreSQL advisory lock before it reads or applies anything,
/// so several processes starting at once apply each migration exactly once.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a request waits for a pooled connection before it fails. Kept well
/// under Svix's 15 s response deadline so a database outage answers 500 in time.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Database errors at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection string does not parse.
    #[error("DATABASE_URL is not a valid PostgreSQL connection string")]
    InvalidUrl,
    /// The server did not answer in time.
    #[error("PostgreSQL at {url} is unreachable: {source}")]
    Unreachable {
        /// The URL with its password hidden.
        url: String,
        /// The last error.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("applying migrations failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The session for the migrations could not be prepared.
    #[error("opening a session for the migrations failed")]
    Session(#[source] sqlx::Error),
}

/// The longest any statement of a service may run. A query stuck behind a
/// lock or a runaway plan fails with SQLSTATE 57014 instead of holding a
/// pooled connection (and a request, or a delivery) forever. Migrations run
/// without it: building an index may take longer.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a pool without connecting yet. Every session it opens has
/// [`STATEMENT_TIMEOUT`].
pub fn pool(url: &Secret<String>, max_connections: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|_| DbError::InvalidUrl)?
        .options([(
            "statement_timeout",
            format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
        )]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Builds a pool, waits up to `patience` for the server to answer, and applies
/// pending migrations.
pub async fn connect_and_migrate(
    url: &Secret<String>,
    max_connections: u32,
    patience: Duration,
) -> Result<PgPool, DbError> {
    let pool = pool(url, max_connections)?;
    wait_until_reachable(&pool, patience)
        .await
        .map_err(|source| DbError::Unreachable {
            url: redact_url(url.expose()),
            source,
        })?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Applies pending migrations on one session without the statement timeout.
/// That session is closed afterwards rather than returned to the pool.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let mut connection = pool.acquire().await.map_err(DbError::Session)?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *connection)
        .await
        .map_err(DbError::Session)?;
    // `run` with a borrowed connection trips "Acquire is not general enough"
    // in spawned futures; sqlx offers `run_direct` for exactly this.
    MIGRATOR.run_direct(&mut *connection).await?;
    let _ = connection.close().await;
    Ok(())
}

/// Retries `SELECT 1` with backoff until it succeeds or `patience` runs out.
pub async fn wait_until_reachable(pool: &PgPool, patience: Duration) -> Result<(), sqlx::Error> {
    let ping = || async { sqlx::query("SELECT 1").execute(pool).await.map(|_| ()) };
    let retried = ping
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_total_delay(Some(patience))
                .without_max_times(),
        )
        .notify(|err, after| {
            tracing::warn!(error.message = %err, retry_in = ?after, "PostgreSQL not reachable yet");
        });
    match tokio::time::timeout(patience, retried).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

/// Whether PostgreSQL answers now; for readiness probes.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
