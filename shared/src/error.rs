//! An error with its causes on one line, for the one place that reports it
//! (a log line, a command's last line). Each error's own message names what
//! failed and leaves the why to its `source()`, so the chain is written once.

use std::{error::Error, fmt};

/// Displays `error: cause: cause of the cause …`.
pub struct Chain<'a>(pub &'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("replay stopped")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("PostgreSQL failed")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_is_written_once_in_order() {
        let error = Outer(Middle(std::io::Error::other("connection reset")));
        assert_eq!(
            Chain(&error).to_string(),
            "replay stopped: PostgreSQL failed: connection reset"
        );
    }
}
