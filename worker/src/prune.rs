//! `worker prune`: deletes processed and ignored events older than an age.
//!
//! Only rows that reached a final, successful state (`processed` or
//! `ignored`, with `processed_at` set) are candidates; dead, failed, received
//! and published rows stay however old they are. Rows go in batches, each its
//! own short statement, so a large prune never holds many locks for long.

use std::time::Duration;

use sqlx::PgPool;

/// Rows deleted per statement.
pub const DEFAULT_BATCH_SIZE: i64 = 5000;

/// The longest age accepted: a hundred years.
const MAX_AGE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing given.
    #[error("empty duration: give a number and a unit, e.g. 30d")]
    Empty,
    /// Not `<digits><unit>`.
    #[error(
        "{0:?} is not a duration: give a whole number and one unit of s, m, h, d or w, e.g. 30d"
    )]
    Malformed(String),
    /// Zero would delete everything finished, including what just happened.
    #[error("the duration must be more than zero")]
    Zero,
    /// Beyond any useful age.
    #[error("{0:?} is too long: at most 100 years")]
    TooLong(String),
}

/// Parses an age such as `45s`, `90m`, `12h`, `30d` or `2w`: a positive whole
/// number followed by one unit.
pub fn parse_duration(value: &str) -> Result<Duration, DurationError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(value.to_owned());
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(malformed)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() {
        return Err(malformed());
    }
    let seconds_per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(malformed()),
    };
    let too_long = || DurationError::TooLong(value.to_owned());
    let amount: u64 = digits.parse().map_err(|_| too_long())?;
    if amount == 0 {
        return Err(DurationError::Zero);
    }
    let seconds = amount.checked_mul(seconds_per_unit).ok_or_else(too_long)?;
    let age = Duration::from_secs(seconds);
    if age > MAX_AGE {
        return Err(too_long());
    }
    Ok(age)
}

/// What to prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRequest {
    /// Rows received longer ago than this are candidates.
    pub older_than: Duration,
    /// Count only.
    pub dry_run: bool,
    /// Rows per delete statement.
    pub batch_size: i64,
    /// Who asked, for the audit log.
    pub actor: String,
}

impl PruneRequest {
    /// A request with the default batch size.
    pub fn new(older_than: Duration, dry_run: bool, actor: &str) -> Self {
        Self {
            older_than,
            dry_run,
            batch_size: DEFAULT_BATCH_SIZE,
            actor: actor.to_owned(),
        }
    }
}

/// What a prune did (or, on a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneReport {
    /// Rows deleted, or that a real run would delete.
    pub rows: u64,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

impl std::fmt::Display for PruneReport {
    /// `deleted=N`, or `would_delete=N` on a dry run.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            write!(f, "would_delete={}", self.rows)
        } else {
            write!(f, "deleted={}", self.rows)
        }
    }
}

/// Prune failures.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The age does not fit PostgreSQL's interval arithmetic.
    #[error("the age is out of range")]
    OutOfRange,
    /// A statement failed; rows deleted before it stay deleted.
    #[error("pruning failed after deleting {deleted} event(s)")]
    Database {
        /// Rows deleted before the failure.
        deleted: u64,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
}

/// The rows a prune may delete, older than `$1`.
const CANDIDATES: &str = shared::event_status::PRUNABLE;

/// Deletes (or counts, on a dry run) the finished events older than the
/// request's age. `progress` is called with the running total after each batch.
pub async fn prune(
    pool: &PgPool,
    request: &PruneRequest,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<PruneReport, PruneError> {
    let database = |deleted| move |source| PruneError::Database { deleted, source };
    let seconds =
        i64::try_from(request.older_than.as_secs()).map_err(|_| PruneError::OutOfRange)?;
    // The cut-off is fixed once, on the database's clock, so every batch
    // agrees on it and the host's clock does not matter.
    let cutoff: time::OffsetDateTime =
        sqlx::query_scalar("SELECT now() - make_interval(secs => $1::double precision)")
            .bind(seconds as f64)
            .fetch_one(pool)
            .await
            .map_err(database(0))?;
    if request.dry_run {
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM webhook_events WHERE {CANDIDATES}"
        ))
        .bind(cutoff)
        .fetch_one(pool)
        .await
        .map_err(database(0))?;
        return Ok(PruneReport {
            rows: u64::try_from(count).unwrap_or(0),
            dry_run: true,
        });
    }
    let statement = format!(
        "WITH gone AS (\
             DELETE FROM webhook_event_states WHERE event_id IN (\
                 SELECT s.event_id FROM webhook_event_states s \
                 JOIN webhook_event_bodies b ON b.id = s.event_id WHERE {CANDIDATES} \
                 ORDER BY s.event_id LIMIT $2 FOR UPDATE OF s SKIP LOCKED) \
             RETURNING event_id) \
         DELETE FROM webhook_event_bodies WHERE id IN (SELECT event_id FROM gone)"
    );
    let batch_size = request.batch_size.max(1);
    let mut deleted = 0u64;
    loop {
        let done = sqlx::query(&statement)
            .bind(cutoff)
            .bind(batch_size)
            .execute(pool)
            .await
            .map_err(database(deleted))?
            .rows_affected();
        deleted += done;
        if done == 0 {
            break;
        }
        progress(deleted);
        if i64::try_from(done).unwrap_or(i64::MAX) < batch_size {
            break;
        }
    }
    crate::audit::record(
        pool,
        &crate::audit::Action {
            action_type: "prune",
            actor: &request.actor,
            details: serde_json::json!({
                "older_than_secs": seconds,
                "cutoff": cutoff.format(&time::format_description::well_known::Rfc3339).ok(),
                "deleted": deleted,
            }),
        },
    )
    .await
    .map_err(database(deleted))?;
    Ok(PruneReport {
        rows: deleted,
        dry_run: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses() {
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration(" 1h "), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn zero_negative_and_garbage_are_refused() {
        assert_eq!(parse_duration("0d"), Err(DurationError::Zero));
        assert_eq!(parse_duration("000s"), Err(DurationError::Zero));
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for bad in [
            "-5h", "5", "d", "5x", "5 d", "1.5h", "5dd", "1h30m", "+5h", "5D", "abc",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(DurationError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn absurdly_long_ages_are_refused() {
        assert!(matches!(
            parse_duration("99999999999999999999999d"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("5300w"),
            Err(DurationError::TooLong(_))
        ));
        assert!(parse_duration("5200w").is_ok());
    }

    #[test]
    fn the_report_line_says_what_happened() {
        let report = PruneReport {
            rows: 3,
            dry_run: false,
        };
        assert_eq!(report.to_string(), "deleted=3");
        let report = PruneReport {
            rows: 3,
            dry_run: true,
        };
        assert_eq!(report.to_string(), "would_delete=3");
    }
}
