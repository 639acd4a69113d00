//! What every console page shares: rendering a template, the HTML error
//! page, the parsed form of a POST, path and query extractors whose errors
//! are pages, and the small formatting helpers the templates call.

use askama::Template;
use axum::{
    extract::{FromRequestParts, Path, Query},
    http::request::Parts,
    response::{Html, IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::error::AdminError;

/// Renders `template` as a 200 page.
pub fn render<T: Template>(template: &T) -> Result<Response, PageError> {
    template
        .render()
        .map(|html| Html(html).into_response())
        .map_err(|error| PageError(AdminError::Internal(format!("a template failed: {error}"))))
}

/// An error answered as an HTML page with the error's status.
#[derive(Debug)]
pub struct PageError(pub AdminError);

impl From<AdminError> for PageError {
    fn from(error: AdminError) -> Self {
        Self(error)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(error: sqlx::Error) -> Self {
        Self(AdminError::Database(error))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    code: &'a str,
    detail: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, code, detail) = self.0.answer();
        let page = ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            code,
            detail: detail
                .as_deref()
                .unwrap_or("something went wrong on our side"),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, code.to_owned()).into_response(),
        }
    }
}

/// The fields of a POSTed form (`application/x-www-form-urlencoded`), in order.
#[derive(Debug, Clone, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Parses a form body.
    pub fn parse(body: &[u8]) -> Self {
        Self(
            url::form_urlencoded::parse(body)
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value of `name` (checkboxes).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, value)| value.clone())
            .collect()
    }
}

/// The path parameters as `T`, or a 400 page.
pub struct PagePath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PagePath<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PagePath(value))
            .map_err(|rejection| {
                PageError(AdminError::BadRequest {
                    code: "bad_path",
                    detail: rejection.body_text(),
                })
            })
    }
}

/// The query string as `T`, or a 400 page.
pub struct PageQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for PageQuery<T> {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| PageQuery(value))
            .map_err(|rejection| {
                PageError(AdminError::BadRequest {
                    code: "bad_query",
                    detail: rejection.body_text(),
                })
            })
    }
}

/// `?done=…` after a change: which notice the page shows.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Done {
    /// What was done.
    pub done: Option<String>,
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn segment(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `path?name=value&…` with the non-empty parameters, form-encoded.
pub fn href(path: &str, params: &[(&str, Option<&str>)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            query.append_pair(name, value);
        }
    }
    let query = query.finish();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// A 303 to `location` (after a POST).
pub fn see_other(location: &str) -> Response {
    axum::response::Redirect::to(location).into_response()
}

/// Instants as pages show them: `2026-12-10 09:30:00 UTC`.
pub trait When {
    /// The instant in UTC, to the second; `—` when absent.
    fn when(&self) -> String;
}

impl When for OffsetDateTime {
    fn when(&self) -> String {
        let utc = self.to_offset(time::UtcOffset::UTC);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            utc.year(),
            u8::from(utc.month()),
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second()
        )
    }
}

impl When for Option<OffsetDateTime> {
    fn when(&self) -> String {
        self.as_ref().map_or_else(|| "—".to_owned(), When::when)
    }
}

/// Optional texts as pages show them.
pub trait OrDash {
    /// The text; `—` when absent.
    fn or_dash(&self) -> &str;
}

impl OrDash for Option<String> {
    fn or_dash(&self) -> &str {
        self.as_deref().unwrap_or("—")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_escapes_what_a_path_cannot_carry() {
        assert_eq!(segment("user_1-a.b~"), "user_1-a.b~");
        assert_eq!(segment("a/b c?\0"), "a%2Fb%20c%3F%00");
    }

    #[test]
    fn href_leaves_out_empty_parameters_and_encodes_the_rest() {
        assert_eq!(href("/x", &[("a", None), ("b", Some(""))]), "/x");
        assert_eq!(
            href("/x", &[("a", Some("1 & 2")), ("b", Some("z"))]),
            "/x?a=1+%26+2&b=z"
        );
    }

    #[test]
    fn a_form_keeps_repeated_fields() {
        let form = Form::parse(b"ids=a&ids=b&csrf=x%2By");
        assert_eq!(form.all("ids"), ["a", "b"]);
        assert_eq!(form.get("csrf"), Some("x+y"));
        assert_eq!(form.get("none"), None);
    }
}
