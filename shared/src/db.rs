//! The PostgreSQL pool and the embedded migrations of `migrations/`.
//!
//! A service applies pending migrations at start only when there are some:
//! it reads `_sqlx_migrations` first, so a role without DDL rights (the
//! services' own roles, `deploy/postgres/roles.sql`) starts on an up-to-date
//! schema, and says in one line what to do when it is not.
//!
//! TLS follows libpq's URL parameters: `sslmode` (`disable`, `allow`,
//! `prefer` (the default), `require`, `verify-ca`, `verify-full`) and
//! `sslrootcert` (a PEM file of trusted CAs, or `system`). The verifying
//! modes also trust the public CAs built into the binary (Mozilla's list, as
//! browsers do; `system` means those alone), never the files of
//! `/etc/ssl/certs`, where Debian keeps its self-signed snakeoil certificate.
//! As in libpq, `require` with an `sslrootcert` verifies the chain like
//! `verify-ca`. A certificate that does not verify stops a service at once
//! with one line saying why: waiting cannot fix it.

pub mod kept;

use std::{str::FromStr, time::Duration};

use backon::Retryable;
use sqlx::{
    migrate::{Migrate as _, MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
    PgConnection, PgPool,
};

use crate::{
    backoff::RetryPolicy,
    secret::{redact_url, Secret},
    tls,
};

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
    /// The TLS parameters of the connection string cannot be used.
    #[error("DATABASE_URL: {0}")]
    InvalidTls(String),
    /// The server did not answer in time.
    #[error("PostgreSQL at {url} is unreachable: {reason}")]
    Unreachable {
        /// The URL with its password hidden.
        url: String,
        /// The last error, on one line.
        reason: String,
    },
    /// The server's certificate did not verify (or TLS could not be set up):
    /// not retried, the configuration or the certificate has to change.
    #[error("PostgreSQL at {url}: {reason}")]
    TlsRefused {
        /// The URL with its password hidden.
        url: String,
        /// What was refused and against which roots.
        reason: String,
    },
    /// A migration failed.
    #[error("applying migrations failed")]
    Migrate(#[from] MigrateError),
    /// Migrations are pending and the connected role may not run DDL: the
    /// schema's owner has to apply them first.
    #[error(
        "migrations are pending ({}) and role {role} cannot apply them ({refusal}): run them with the owner role: `worker migrate` with the owner's DATABASE_URL",
        versions(pending)
    )]
    CannotMigrate {
        /// The connected role.
        role: String,
        /// Versions not applied yet.
        pending: Vec<i64>,
        /// PostgreSQL's refusal, e.g. "permission denied for schema public".
        refusal: String,
    },
    /// The migrations table exists but this role may not read it.
    #[error("role {role} cannot read _sqlx_migrations ({refusal}): grant it SELECT, see deploy/postgres/roles.sql")]
    MigrationsUnreadable {
        /// The connected role.
        role: String,
        /// PostgreSQL's refusal.
        refusal: String,
    },
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
/// [`STATEMENT_TIMEOUT`] and plans each execution of a prepared statement
/// for its parameters (`plan_cache_mode = force_custom_plan`). Otherwise,
/// after five executions, a session may keep one generic plan for good, and
/// a plan made while a table was nearly empty scans the whole table once it
/// has grown (a batch's `= ANY($1)` update became a sequential scan and
/// cost twenty times more, until the next `ANALYZE`). Planning these short
/// statements costs far less.
pub fn pool(url: &Secret<String>, max_connections: u32) -> Result<PgPool, DbError> {
    let options = connect_options(url.expose())?.options([
        (
            "statement_timeout",
            format!("{}ms", STATEMENT_TIMEOUT.as_millis()),
        ),
        ("plan_cache_mode", "force_custom_plan".to_owned()),
    ]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// Builds a pool and waits up to `patience` for the server to answer.
pub async fn connect(
    url: &Secret<String>,
    max_connections: u32,
    patience: Duration,
) -> Result<PgPool, DbError> {
    let pool = pool(url, max_connections)?;
    wait_until_reachable(&pool, patience)
        .await
        .map_err(|error| unreachable(url.expose(), &error))?;
    Ok(pool)
}

/// The connection options of `url` with libpq's TLS semantics: the file of
/// `sslrootcert` must be readable, `sslrootcert=system` means the system
/// public roots (and `verify-full`), `require` with a root file verifies the chain.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let parsed = url::Url::parse(url).map_err(|_| DbError::InvalidUrl)?;
    let root = parsed
        .query_pairs()
        .find(|(key, _)| matches!(key.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
        .map(|(_, value)| value.into_owned());
    let system_roots = root.as_deref() == Some("system");
    let options = if system_roots {
        let mut without = parsed.clone();
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(key, _)| !matches!(key.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        without.query_pairs_mut().clear().extend_pairs(kept);
        PgConnectOptions::from_str(without.as_str())
    } else {
        PgConnectOptions::from_str(url)
    }
    .map_err(|_| DbError::InvalidUrl)?;
    let mode = options.get_ssl_mode();
    if system_roots {
        return match mode {
            PgSslMode::VerifyFull => Ok(options),
            PgSslMode::Prefer if !has_sslmode(&parsed) => {
                Ok(options.ssl_mode(PgSslMode::VerifyFull))
            }
            _ => Err(DbError::InvalidTls(
                "sslrootcert=system needs sslmode=verify-full".to_owned(),
            )),
        };
    }
    let Some(path) = root else {
        return Ok(options);
    };
    // sqlx reads the file at each handshake and would report a missing one
    // as an I/O error, like a server that is down.
    if !path.starts_with("-----BEGIN") {
        tls::roots_from_file(&path)
            .map_err(|e| DbError::InvalidTls(format!("sslrootcert: {e}")))?;
    }
    Ok(match mode {
        PgSslMode::Require => options.ssl_mode(PgSslMode::VerifyCa),
        _ => options,
    })
}

fn has_sslmode(url: &url::Url) -> bool {
    url.query_pairs()
        .any(|(key, _)| matches!(key.as_ref(), "sslmode" | "ssl-mode"))
}

/// What to say when the server could not be reached or refused TLS.
fn unreachable(url: &str, error: &sqlx::Error) -> DbError {
    let shown = redact_url(url);
    match tls_failure(url, error) {
        Some(reason) => DbError::TlsRefused { url: shown, reason },
        None => DbError::Unreachable {
            url: shown,
            reason: error.to_string(),
        },
    }
}

/// A one-line account of a TLS failure in `error`, if it is one.
fn tls_failure(url: &str, error: &sqlx::Error) -> Option<String> {
    let roots = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.query_pairs()
                .find(|(key, _)| matches!(key.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
                .map(|(_, value)| value.into_owned())
        })
        .filter(|root| root != "system")
        .map_or_else(
            || "the built-in public roots".to_owned(),
            |root| format!("sslrootcert {root}"),
        );
    if let Some(refused) = tls::find_tls_error(error) {
        return Some(tls::describe(refused, &roots));
    }
    match error {
        sqlx::Error::Tls(cause) => Some(format!("TLS: {cause}")),
        _ => None,
    }
}

/// Whether waiting cannot help: the server's certificate was refused, or
/// TLS cannot be set up as asked (e.g. the server does not offer it).
fn permanent(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Tls(_) | sqlx::Error::Configuration(_))
        || tls::find_tls_error(error).is_some_and(tls::certificate_refused)
}

/// Builds a pool, waits up to `patience` for the server to answer, and applies
/// pending migrations.
pub async fn connect_and_migrate(
    url: &Secret<String>,
    max_connections: u32,
    patience: Duration,
) -> Result<PgPool, DbError> {
    let pool = connect(url, max_connections, patience).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Applies pending migrations and returns their versions (empty when the
/// schema was up to date).
///
/// Nothing is locked or created when nothing is pending, so a role without
/// DDL rights starts normally. Otherwise the migrations run on one session
/// without the statement timeout, closed afterwards rather than returned to
/// the pool. A role that may not run them gets [`DbError::CannotMigrate`],
/// unless another process (the owner) applied them while it waited for
/// sqlx's migration lock.
pub async fn migrate(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    let mut connection = pool.acquire().await.map_err(DbError::Session)?;
    let pending = pending_migrations(&mut connection).await?;
    if pending.is_empty() {
        return Ok(pending);
    }
    let applied = apply(&mut connection).await;
    let _ = connection.close().await;
    if let Ok(versions) = &applied {
        if !versions.is_empty() {
            tracing::info!(versions = ?versions, "migrations applied");
        }
    }
    applied
}

/// Serialises the services that find migrations pending, before sqlx's own
/// lock ("clerk_mg"). Waiting for it polls with `pg_try_advisory_lock`
/// instead of blocking in `pg_advisory_lock`: a session blocked in a
/// statement holds a snapshot, and `CREATE INDEX CONCURRENTLY` in a migration
/// waits for every snapshot of the database, so blocked waiters would
/// deadlock with it.
const MIGRATION_TURN: i64 = 0x636c_6572_6b5f_6d67;

/// How often a service waiting for its turn to migrate asks again.
const TURN_POLL: Duration = Duration::from_millis(100);

async fn apply(connection: &mut PgConnection) -> Result<Vec<i64>, DbError> {
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *connection)
        .await
        .map_err(DbError::Session)?;
    loop {
        let turn: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_TURN)
            .fetch_one(&mut *connection)
            .await
            .map_err(DbError::Session)?;
        if turn {
            break;
        }
        tokio::time::sleep(TURN_POLL).await;
    }
    // Whoever had the turn before may have applied everything.
    let pending = pending_migrations(connection).await?;
    if pending.is_empty() {
        return Ok(pending);
    }
    let applied = stages(connection, &pending).await;
    let error = match applied {
        Ok(()) => return Ok(pending),
        Err(StageError::Copy(error)) => return Err(DbError::Session(error)),
        Err(StageError::Migrate(error)) => error,
    };
    let Some(refusal) = refusal(&error) else {
        return Err(error.into());
    };
    // This session holds the migration lock now: what it reads is final.
    let still_pending = pending_migrations(connection).await?;
    if still_pending.is_empty() {
        return Ok(Vec::new());
    }
    Err(DbError::CannotMigrate {
        role: current_role(connection).await,
        pending: still_pending,
        refusal,
    })
}

/// The contract step of the split of `webhook_events` into bodies and
/// states: applied only after [`event_status::copy_states`] has copied the
/// state of every row the expand step found.
///
/// [`event_status::copy_states`]: crate::event_status::copy_states
pub const EVENT_STATE_CONTRACT: i64 = 20261217000002;

/// The migrations of [`MIGRATOR`] older than `version`: the schema as it was
/// before that migration.
pub fn migrations_before(version: i64) -> Migrator {
    Migrator {
        migrations: std::borrow::Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// How many times the contract step is tried when a long transaction keeps
/// its lock out of reach (its `lock_timeout`).
const LOCK_ATTEMPTS: u32 = 30;

enum StageError {
    Migrate(MigrateError),
    Copy(sqlx::Error),
}

/// Applies what is pending in stages: the migrations before a contract
/// step, then the copy that step needs (in short batches, while the services
/// keep running), then the rest. A contract step that cannot take its lock in
/// time is tried again.
async fn stages(connection: &mut PgConnection, pending: &[i64]) -> Result<(), StageError> {
    if pending.contains(&EVENT_STATE_CONTRACT) {
        // `run` with a borrowed connection trips "Acquire is not general
        // enough" in spawned futures; sqlx offers `run_direct` for this.
        migrations_before(EVENT_STATE_CONTRACT)
            .run_direct(&mut *connection)
            .await
            .map_err(StageError::Migrate)?;
        let copied = crate::event_status::copy_states(connection)
            .await
            .map_err(StageError::Copy)?;
        tracing::info!(copied, "event states copied");
    }
    let mut attempt = 1;
    loop {
        match MIGRATOR.run_direct(&mut *connection).await {
            Err(MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _))
                if attempt < LOCK_ATTEMPTS && lock_not_available(&error) =>
            {
                tracing::warn!(
                    attempt,
                    "a migration could not take its lock in time; trying again"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            result => return result.map_err(StageError::Migrate),
        }
    }
}

fn lock_not_available(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

/// The versions of [`MIGRATOR`] the database has not applied, read without
/// taking any lock. Fails like sqlx would on a dirty migration, on an applied
/// migration whose file changed, and on one this binary does not know.
pub async fn pending_migrations(connection: &mut PgConnection) -> Result<Vec<i64>, DbError> {
    let known = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration());
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *connection)
        .await
        .map_err(DbError::Session)?;
    if !exists {
        return Ok(known.map(|m| m.version).collect());
    }
    let applied = match read_applied(connection).await {
        Ok(applied) => applied,
        Err(error) => {
            return Err(match refusal(&error) {
                Some(refusal) => DbError::MigrationsUnreadable {
                    role: current_role(connection).await,
                    refusal,
                },
                None => error.into(),
            })
        }
    };
    if !MIGRATOR.ignore_missing {
        if let Some(unknown) = applied.iter().find(|a| !MIGRATOR.version_exists(a.version)) {
            return Err(MigrateError::VersionMissing(unknown.version).into());
        }
    }
    let mut pending = Vec::new();
    for migration in known {
        match applied.iter().find(|a| a.version == migration.version) {
            Some(done) if done.checksum != migration.checksum => {
                return Err(MigrateError::VersionMismatch(migration.version).into());
            }
            Some(_) => {}
            None => pending.push(migration.version),
        }
    }
    Ok(pending)
}

async fn read_applied(
    connection: &mut PgConnection,
) -> Result<Vec<sqlx::migrate::AppliedMigration>, MigrateError> {
    if let Some(version) = connection.dirty_version().await? {
        return Err(MigrateError::Dirty(version));
    }
    connection.list_applied_migrations().await
}

/// PostgreSQL's message when it refused for want of a privilege or of
/// ownership (SQLSTATE 42501).
fn refusal(error: &MigrateError) -> Option<String> {
    let (MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _)) = error else {
        return None;
    };
    source
        .as_database_error()
        .filter(|e| e.code().is_some_and(|code| code == "42501"))
        .map(|e| e.message().to_owned())
}

async fn current_role(connection: &mut PgConnection) -> String {
    sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(connection)
        .await
        .unwrap_or_else(|_| "?".to_owned())
}

fn versions(list: &[i64]) -> String {
    list.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Retries `SELECT 1` with backoff until it succeeds or `patience` runs out;
/// a TLS refusal is returned at once.
pub async fn wait_until_reachable(pool: &PgPool, patience: Duration) -> Result<(), sqlx::Error> {
    let ping = || async { sqlx::query("SELECT 1").execute(pool).await.map(|_| ()) };
    let retried = ping
        .retry(
            RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2))
                .delays_within(patience),
        )
        .when(|err| !permanent(err))
        .notify(|err, after| {
            tracing::warn!(error.message = %crate::error::Chain(&err), retry_in = ?after, "PostgreSQL not reachable yet");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA certificate (P-256), only for reading as a root file.
    const UNIT_TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIUTr87u6CLdLEW9GL3UBdkVGomNQIwCgYIKoZIzj0EAwIw\nFzEVMBMGA1UEAwwMdW5pdC10ZXN0LWNhMCAXDTI2MTIwMzA5NTkyMFoYDzIxMjYx\nMTA5MDk1OTIwWjAXMRUwEwYDVQQDDAx1bml0LXRlc3QtY2EwWTATBgcqhkjOPQIB\nBggqhkjOPQMBBwNCAAR2dG318YIGQS3xJK2qeKRS6gwfo71y/vfJ1/jiwfGbQJzW\nJ2E0zkNdnLZ0ge8bNjVNuAGqVEQnnle2ZQYzGJ/Ko1MwUTAdBgNVHQ4EFgQUO6yG\nWaNN01E6nrDIGCbsxyNO9dMwHwYDVR0jBBgwFoAUO6yGWaNN01E6nrDIGCbsxyNO\n9dMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEA9Piib0oSjuoS\n0lY07tYkRxOfyesqzC64iQIaqgjZ5FoCIECNUznVuxb2lBEhx/4gRcsz/pchX17a\ncE2kno7RrDuj\n-----END CERTIFICATE-----\n";

    #[test]
    fn tls_parameters_follow_libpq() {
        let mode = |url: &str| connect_options(url).map(|o| o.get_ssl_mode());

        assert!(matches!(mode("postgres://u@db/app"), Ok(PgSslMode::Prefer)));
        assert!(matches!(
            mode("postgres://u@db/app?sslrootcert=system"),
            Ok(PgSslMode::VerifyFull)
        ));
        assert!(matches!(
            mode("postgres://u@db/app?sslmode=require&sslrootcert=system"),
            Err(DbError::InvalidTls(_))
        ));
        let root = std::env::temp_dir().join(format!("db-root-{}.pem", std::process::id()));
        std::fs::write(&root, UNIT_TEST_CA).unwrap();
        let with_root = format!(
            "postgres://u@db/app?sslmode=require&sslrootcert={}",
            root.display()
        );
        assert!(matches!(mode(&with_root), Ok(PgSslMode::VerifyCa)));
        std::fs::remove_file(&root).unwrap();
    }

    #[test]
    fn an_unreadable_root_file_is_named_without_the_password() {
        let Err(error) = connect_options(
            "postgres://u:hunter2@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        ) else {
            panic!("an unreadable root file is refused");
        };

        assert_eq!(
            error.to_string(),
            "DATABASE_URL: sslrootcert: cannot read CA file /nonexistent/ca.pem (entity not found)"
        );
    }
}
