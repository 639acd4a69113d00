//! What happens to a delivery, decided in one place: [`Decision`], the
//! classification of errors ([`classify`], with the table of database errors
//! in [`classify_database`]) and what a counted failure leads to
//! ([`after_failure`]). No I/O here: the consumer carries decisions out.

use shared::event_status::Recorded;

use crate::handlers::{Applied, HandlerError};

/// What happens to a delivery. Every attempt ends in one of these, and the
/// consumer carries it out ([`super::handle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Done with it: ack.
    Ack(Done),
    /// The failure is counted: publish a copy into the delay queue of its
    /// step, and ack once the broker confirmed it (else requeue).
    RetryLater {
        /// Failed attempts so far.
        attempts: i32,
        /// Why the last attempt failed.
        reason: String,
    },
    /// Publish to the dead-letter queue with the attempts and the reason, and
    /// ack once the broker confirmed it (else requeue).
    DeadLetter {
        /// Attempts made (0 for a message that is not a stored event).
        attempts: i32,
        /// Why: the last error, or why the message was refused.
        reason: String,
        /// Whether it is an event the ingress stored: a refused message is
        /// counted under the metric label `unverified`, not its routing key.
        verified: bool,
    },
    /// PostgreSQL is unavailable: nothing is counted; the delivery waits in
    /// the worker, unacked, and is tried again.
    WaitForDatabase {
        /// What failed.
        reason: String,
    },
    /// Back to the queue at once, unacked (shutdown while waiting).
    Requeue,
}

/// How a delivery was done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Its handler committed (or nobody handles its type).
    Applied {
        /// What the handler did.
        applied: Applied,
        /// When the ingress received the event.
        received_at: time::OffsetDateTime,
    },
    /// A copy of an event already processed.
    Duplicate,
}

/// How a failure is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retrying cannot help: dead-letter now.
    Permanent,
    /// This event failed: count an attempt and retry after a backoff.
    Transient,
    /// The database is unavailable: nothing is counted, retry when it is back.
    Outage,
}

/// The one place that decides how a handler's error is treated.
pub fn classify(error: &HandlerError) -> Failure {
    match error {
        HandlerError::Malformed(_) => Failure::Permanent,
        HandlerError::Database(e) => classify_database(e),
    }
}

/// Database errors: which mean "PostgreSQL is unavailable, wait" and which
/// "this event failed". The table is the test below.
///
/// - outage: the connection broke or could not be had (I/O, TLS, protocol,
///   pool timeout or closed), and the SQLSTATEs of an unavailable server:
///   class 08 (connection exception), 57P01–57P03 (shut down, crashed, not
///   accepting connections yet), 57P05 (an idle session the server closed,
///   `idle_session_timeout`), class 53 (insufficient resources: disk full,
///   out of memory, too many connections);
/// - permanent: class 22 (data exception) and class 23 (integrity
///   violation): the same event fails the same way every time;
/// - transient: anything else, e.g. 40001 and 40P01 (serialization failure,
///   deadlock), 57014 (statement timeout), P0001 (an exception raised by a
///   trigger), 42501 (a missing grant), and sqlx's own decoding errors.
pub fn classify_database(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Outage,
        sqlx::Error::Database(db) => classify_sqlstate(db.code().as_deref()),
        _ => Failure::Transient,
    }
}

/// A deadlock (40P01) or a serialization failure (40001): the transaction
/// lost a conflict with another one, which is no fault of the event. Such an
/// attempt is made again at once (a few times) before it counts.
pub fn lost_a_conflict(error: &HandlerError) -> bool {
    match error {
        HandlerError::Database(error) => error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "40P01" || code == "40001"),
        HandlerError::Malformed(_) => false,
    }
}

fn classify_sqlstate(code: Option<&str>) -> Failure {
    let Some(code) = code else {
        return Failure::Transient;
    };
    match code.get(..2) {
        Some("08" | "53") => Failure::Outage,
        Some("22" | "23") => Failure::Permanent,
        _ if matches!(code, "57P01" | "57P02" | "57P03" | "57P05") => Failure::Outage,
        _ => Failure::Transient,
    }
}

/// Where counting a failed attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    /// The row (or, for a message no row stores, the message) counts this
    /// many failed attempts now.
    Attempts(i32),
    /// A copy of the event committed meanwhile: the failure is moot.
    AlreadyProcessed,
    /// The count could not be written because the database is unavailable (why).
    Unrecorded(String),
}

impl Counted {
    /// What recording the failure on the row returned; `before` is what the
    /// message itself counts (its retry header), for a message no row stores.
    pub fn from_record(recorded: Result<Recorded, sqlx::Error>, before: i32) -> Self {
        match recorded {
            Ok(Recorded::Attempts(attempts)) => Counted::Attempts(attempts),
            Ok(Recorded::NotStored) => Counted::Attempts(before.saturating_add(1)),
            Ok(Recorded::AlreadyProcessed) => Counted::AlreadyProcessed,
            // Only an outage waits; any other failure to count falls back to
            // the message's own count, so the event still ends in the DLQ.
            Err(error) if classify_database(&error) == Failure::Outage => Counted::Unrecorded(
                format!("counting the failure: {}", shared::error::Chain(&error)),
            ),
            Err(error) => {
                tracing::warn!(error.message = %shared::error::Chain(&error),
                    "the failure could not be counted on its row; the message counts it");
                Counted::Attempts(before.saturating_add(1))
            }
        }
    }
}

/// What a counted failure leads to: a permanent one, or one that used the
/// last of `max_attempts`, is dead-lettered; any other is retried later.
pub fn after_failure(
    failure: Failure,
    counted: Counted,
    max_attempts: u32,
    reason: String,
) -> Decision {
    let attempts = match counted {
        Counted::AlreadyProcessed => return Decision::Ack(Done::Duplicate),
        Counted::Unrecorded(why) => return Decision::WaitForDatabase { reason: why },
        Counted::Attempts(attempts) => attempts,
    };
    let max = i32::try_from(max_attempts).unwrap_or(i32::MAX);
    if failure == Failure::Permanent || attempts >= max {
        Decision::DeadLetter {
            attempts,
            reason,
            verified: true,
        }
    } else {
        Decision::RetryLater { attempts, reason }
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, error::Error as StdError, fmt};

    use sqlx::error::{DatabaseError, ErrorKind};

    use super::*;

    /// A server error with a SQLSTATE, as PostgreSQL sends them.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl fmt::Display for ServerError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl StdError for ServerError {}

    impl DatabaseError for ServerError {
        fn message(&self) -> &str {
            "server error"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ServerError(code)))
    }

    #[test]
    fn the_classification_table_of_database_errors() {
        use Failure::{Outage, Permanent, Transient};
        let table: Vec<(&str, sqlx::Error, Failure)> = vec![
            (
                "connection refused",
                sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
                Outage,
            ),
            ("TLS", sqlx::Error::Tls("handshake".into()), Outage),
            ("protocol", sqlx::Error::Protocol("eof".into()), Outage),
            ("pool timed out", sqlx::Error::PoolTimedOut, Outage),
            ("pool closed", sqlx::Error::PoolClosed, Outage),
            (
                "connection worker crashed",
                sqlx::Error::WorkerCrashed,
                Outage,
            ),
            ("08006 connection failure", server("08006"), Outage),
            ("08001 cannot connect", server("08001"), Outage),
            ("57P01 admin shutdown", server("57P01"), Outage),
            ("57P02 crash shutdown", server("57P02"), Outage),
            ("57P03 cannot connect now", server("57P03"), Outage),
            ("57P05 idle session timeout", server("57P05"), Outage),
            ("53300 too many connections", server("53300"), Outage),
            ("53100 disk full", server("53100"), Outage),
            ("53200 out of memory", server("53200"), Outage),
            ("22P02 invalid text", server("22P02"), Permanent),
            ("22001 string too long", server("22001"), Permanent),
            ("23505 unique violation", server("23505"), Permanent),
            ("23503 foreign key violation", server("23503"), Permanent),
            ("23514 check violation", server("23514"), Permanent),
            ("40001 serialization failure", server("40001"), Transient),
            ("40P01 deadlock", server("40P01"), Transient),
            ("57014 statement timeout", server("57014"), Transient),
            ("P0001 raised by a trigger", server("P0001"), Transient),
            ("42501 insufficient privilege", server("42501"), Transient),
            ("42P01 undefined table", server("42P01"), Transient),
            ("XX000 internal error", server("XX000"), Transient),
            ("row not found", sqlx::Error::RowNotFound, Transient),
            (
                "column not found",
                sqlx::Error::ColumnNotFound("x".into()),
                Transient,
            ),
        ];
        for (what, error, expected) in table {
            assert_eq!(classify_database(&error), expected, "{what}");
            assert_eq!(
                classify(&HandlerError::Database(error)),
                expected,
                "{what} from a handler"
            );
        }
        assert_eq!(
            classify(&HandlerError::Malformed("no id".into())),
            Permanent
        );
    }

    #[test]
    fn a_counted_failure_is_retried_until_the_last_attempt_then_dead_lettered() {
        let reason = || "boom".to_owned();
        let retry = |attempts| Decision::RetryLater {
            attempts,
            reason: reason(),
        };
        let dead = |attempts| Decision::DeadLetter {
            attempts,
            reason: reason(),
            verified: true,
        };
        let transient = |counted| after_failure(Failure::Transient, counted, 5, reason());
        assert_eq!(transient(Counted::Attempts(1)), retry(1));
        assert_eq!(transient(Counted::Attempts(4)), retry(4));
        assert_eq!(transient(Counted::Attempts(5)), dead(5));
        assert_eq!(transient(Counted::Attempts(7)), dead(7));
        assert_eq!(
            after_failure(Failure::Permanent, Counted::Attempts(1), 5, reason()),
            dead(1)
        );
        assert_eq!(
            transient(Counted::AlreadyProcessed),
            Decision::Ack(Done::Duplicate)
        );
        assert_eq!(
            transient(Counted::Unrecorded("pool timed out".to_owned())),
            Decision::WaitForDatabase {
                reason: "pool timed out".to_owned()
            }
        );
        assert_eq!(
            after_failure(Failure::Transient, Counted::Attempts(1), 1, reason()),
            dead(1),
            "one attempt allowed: no retry"
        );
    }

    #[test]
    fn a_message_no_row_stores_counts_its_attempts_in_its_header() {
        assert_eq!(
            Counted::from_record(Ok(Recorded::NotStored), 0),
            Counted::Attempts(1)
        );
        assert_eq!(
            Counted::from_record(Ok(Recorded::NotStored), 3),
            Counted::Attempts(4)
        );
        assert_eq!(
            Counted::from_record(Ok(Recorded::Attempts(2)), 9),
            Counted::Attempts(2),
            "the row is the authority"
        );
        assert_eq!(
            Counted::from_record(Ok(Recorded::AlreadyProcessed), 0),
            Counted::AlreadyProcessed
        );
        assert!(matches!(
            Counted::from_record(Err(sqlx::Error::PoolTimedOut), 0),
            Counted::Unrecorded(why) if why.starts_with("counting the failure: ")
        ));
        assert_eq!(
            Counted::from_record(Err(server("57014")), 3),
            Counted::Attempts(4),
            "a count refused for another reason than an outage falls back to the header"
        );
    }
}
