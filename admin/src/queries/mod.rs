//! What the admin API and the console read: the same queries for both, each
//! returning typed rows that serialise as the API's JSON (and document
//! themselves in the OpenAPI document). Nothing here changes state: changes
//! go through the worker's operations (`worker::credits::adjust`,
//! `worker::replay`, `worker::dlq`, `worker::sync_users`).

pub mod audit;
pub mod events;
pub mod users;

use time::OffsetDateTime;

/// Rows a list answers when no `limit` is given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest `limit` a list accepts.
pub const MAX_LIMIT: i64 = 500;

/// A query parameter a list refuses; the route answers 400 with `code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct BadParameter {
    /// The stable machine code (`bad_limit`, `bad_cursor`, …).
    pub code: &'static str,
    /// What is wrong, for people.
    pub detail: String,
}

/// Parses `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn parse_limit(value: Option<&str>) -> Result<i64, BadParameter> {
    parse_limit_within(value, DEFAULT_LIMIT, MAX_LIMIT)
}

/// Parses `limit`: 1 to `max`, `default` when absent.
pub fn parse_limit_within(
    value: Option<&str>,
    default: i64,
    max: i64,
) -> Result<i64, BadParameter> {
    let Some(value) = value else {
        return Ok(default);
    };
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| BadParameter {
            code: "bad_limit",
            detail: format!("limit must be an integer from 1 to {max}"),
        })
}

/// Parses an RFC 3339 instant named `name`.
pub fn parse_instant(
    name: &str,
    value: Option<&str>,
) -> Result<Option<OffsetDateTime>, BadParameter> {
    value
        .filter(|value| !value.is_empty())
        .map(|value| {
            OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).map_err(
                |_| BadParameter {
                    code: "bad_timestamp",
                    detail: format!(
                        "{name} must be an RFC 3339 instant, e.g. 2024-05-01T00:00:00Z"
                    ),
                },
            )
        })
        .transpose()
}

/// Whether PostgreSQL can hold `text`: no stored id or type contains a NUL
/// character, so a filter or an id with one matches nothing (rather than
/// failing the statement).
pub fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// A text filter: absent when empty.
pub fn filter(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(ToOwned::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_outside_its_range_or_not_a_number_is_refused() {
        assert_eq!(parse_limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("7")), Ok(7));
        for bad in ["0", "-1", "501", "x", "1.5", ""] {
            assert_eq!(
                parse_limit(Some(bad)).unwrap_err().code,
                "bad_limit",
                "{bad}"
            );
        }
    }

    #[test]
    fn an_instant_must_be_rfc_3339() {
        assert!(parse_instant("since", Some("2024-05-01T00:00:00Z"))
            .unwrap()
            .is_some());
        assert_eq!(parse_instant("since", Some("")), Ok(None));
        assert_eq!(
            parse_instant("since", Some("yesterday")).unwrap_err().code,
            "bad_timestamp"
        );
    }
}
