//! One connection kept by a loop between its transactions.
//!
//! A pooled connection costs two round trips per use besides the work: the
//! pool checks it when lending it and again when taking it back. A loop that
//! runs one short transaction after another on its own (a group-commit
//! writer, a batch applier) keeps its connection instead, and bounds every
//! use by a deadline: a use that overruns it (a connection silently dropped
//! by a failover, a lock held for long) is abandoned with its connection,
//! which is closed, and the next use borrows a fresh, checked one from the
//! pool. So does a use that fails, whatever the error: the connection's
//! state is then unknown. Work that may run twice can tell (`lost_while_kept`)
//! when the kept connection turned out to be gone (the server restarted
//! or dropped it while it sat idle) and go again at once, as the pool's check
//! would have found out before lending it.

use std::time::Duration;

use sqlx::{pool::PoolConnection, PgConnection, PgPool, Postgres};

/// A connection kept between uses ([module docs](self)).
pub struct KeptConnection {
    pool: PgPool,
    connection: Option<PoolConnection<Postgres>>,
    deadline: Duration,
    /// The last use ran on a connection kept from an earlier one.
    last_use_kept: bool,
}

impl KeptConnection {
    /// Borrows from `pool` at the first use; every use must end within
    /// `deadline`.
    pub fn new(pool: PgPool, deadline: Duration) -> Self {
        Self {
            pool,
            connection: None,
            deadline,
            last_use_kept: false,
        }
    }

    /// Runs `work` on the kept connection (a fresh one from the pool if
    /// there is none). The connection is kept for the next use only when
    /// `work` succeeded in time; `work` must leave no transaction open.
    /// Overrunning the deadline is an I/O error of kind `TimedOut`: whether
    /// a commit sent before it took effect is unknown.
    pub async fn run<T, E>(
        &mut self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        self.last_use_kept = self.connection.is_some();
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.pool.acquire().await?,
        };
        match tokio::time::timeout(self.deadline, work(&mut connection)).await {
            Ok(Ok(value)) => {
                self.connection = Some(connection);
                Ok(value)
            }
            Ok(Err(error)) => {
                connection.close_on_drop();
                Err(error)
            }
            Err(_) => {
                connection.close_on_drop();
                Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the database did not answer in time",
                ))
                .into())
            }
        }
    }

    /// Whether `error`, from the last use, means the kept connection was
    /// gone before that use (the server restarted or dropped it while it sat
    /// idle): work that may run twice is then worth running once more at
    /// once, on the fresh connection the next use takes, as the pool's check
    /// would have found out before lending it. If the first try took effect
    /// before the connection broke, the second finds its effects.
    pub fn lost_while_kept(&self, error: &sqlx::Error) -> bool {
        self.last_use_kept && is_gone(error)
    }
}

/// The connection itself broke: I/O, TLS or protocol, or the server ended
/// the session (class 08, 57P01 admin shutdown, 57P02 crash shutdown, 57P05
/// idle session timeout).
fn is_gone(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(error) => error.kind() != std::io::ErrorKind::TimedOut,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P05")
        }),
        _ => false,
    }
}
