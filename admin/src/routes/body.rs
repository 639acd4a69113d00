//! Strict reading of JSON bodies: a key that is present counts as given,
//! even with `null`, so the body the route accepts is exactly the one its
//! OpenAPI schema (`oneOf` objects without extra properties) describes.

use serde_json::{Map, Value};

use crate::error::AdminError;

/// A JSON object body whose keys are all among `allowed`.
pub struct Body {
    fields: Map<String, Value>,
    expected: &'static str,
}

impl Body {
    /// Reads `bytes` as a JSON object with only `allowed` keys; otherwise
    /// 400 `malformed_body`, saying what was `expected`.
    pub fn parse(
        bytes: &[u8],
        allowed: &[&str],
        expected: &'static str,
    ) -> Result<Self, AdminError> {
        let malformed = |why: String| AdminError::BadRequest {
            code: "malformed_body",
            detail: format!("expected {expected}: {why}"),
        };
        let fields: Map<String, Value> =
            serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        if let Some(unknown) = fields.keys().find(|key| !allowed.contains(&key.as_str())) {
            return Err(malformed(format!("unknown field \"{unknown}\"")));
        }
        Ok(Self { fields, expected })
    }

    /// Whether `key` is present (`null` included).
    pub fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }

    fn wrong(&self, key: &str, what: &str) -> AdminError {
        AdminError::BadRequest {
            code: "malformed_body",
            detail: format!("expected {}: \"{key}\" must be {what}", self.expected),
        }
    }

    /// `key` as an integer, when present. As in JSON Schema, a number with a
    /// zero fraction (`3.0`) is an integer.
    pub fn integer(&self, key: &str) -> Result<Option<i64>, AdminError> {
        self.fields
            .get(key)
            .map(|value| {
                value
                    .as_i64()
                    .or_else(|| {
                        value
                            .as_f64()
                            .filter(|n| n.fract() == 0.0 && n.abs() < 9.0e15)
                            .map(|n| n as i64)
                    })
                    .ok_or_else(|| self.wrong(key, "an integer"))
            })
            .transpose()
    }

    /// `key` as text, when present.
    pub fn text(&self, key: &str) -> Result<Option<String>, AdminError> {
        self.fields
            .get(key)
            .map(|value| {
                value
                    .as_str()
                    .map(ToOwned::to_owned)
                    .ok_or_else(|| self.wrong(key, "a string"))
            })
            .transpose()
    }

    /// `key` as a boolean, when present.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, AdminError> {
        self.fields
            .get(key)
            .map(|value| {
                value
                    .as_bool()
                    .ok_or_else(|| self.wrong(key, "true or false"))
            })
            .transpose()
    }

    /// `key` as a list of texts, when present.
    pub fn texts(&self, key: &str) -> Result<Option<Vec<String>>, AdminError> {
        self.fields
            .get(key)
            .map(|value| {
                value
                    .as_array()
                    .and_then(|items| {
                        items
                            .iter()
                            .map(|item| item.as_str().map(ToOwned::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| self.wrong(key, "a list of strings"))
            })
            .transpose()
    }
}

/// Whether `text` has something besides white space and holds no NUL
/// character (which PostgreSQL cannot store).
pub fn is_meaningful(text: &str) -> bool {
    !text.trim().is_empty() && !text.contains('\0')
}
