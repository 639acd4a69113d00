//! `worker migrate`: applies the pending migrations and exits (its command
//! line is `crate::commands::migrate`).
//!
//! The services' own PostgreSQL roles may not run DDL (`deploy/postgres/roles.sql`);
//! an operator runs this once per upgrade with the schema owner's
//! `DATABASE_URL`, then re-runs the grants file. It needs no broker.

use std::fmt;

use shared::{
    config::DatabaseConfig,
    db::{self, DbError},
};

/// What `worker migrate` applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versions applied now (by this run or a concurrent one), oldest first.
    pub applied: Vec<i64>,
}

impl fmt::Display for MigrateReport {
    /// One line per applied migration, then `applied=N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for version in &self.applied {
            let description = db::MIGRATOR
                .iter()
                .find(|m| m.version == *version)
                .map_or("", |m| m.description.as_ref());
            writeln!(f, "applied {version} {description}")?;
        }
        write!(f, "applied={}", self.applied.len())
    }
}

/// Connects (waiting up to the configured patience) and applies what is pending.
pub async fn run(database: &DatabaseConfig) -> Result<MigrateReport, DbError> {
    let pool = db::connect(&database.database_url, 1, database.patience()).await?;
    let applied = db::migrate(&pool).await;
    pool.close().await;
    Ok(MigrateReport { applied: applied? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_each_applied_migration_and_ends_with_the_count() {
        let first = db::MIGRATOR.iter().next().expect("a migration");
        let report = MigrateReport {
            applied: vec![first.version],
        };

        let text = report.to_string();

        assert_eq!(
            text,
            format!("applied {} {}\napplied=1", first.version, first.description)
        );
        assert_eq!(
            MigrateReport {
                applied: Vec::new()
            }
            .to_string(),
            "applied=0"
        );
    }
}
