//! A wrapper that keeps secrets out of logs, errors and `Debug` output.

use std::fmt;

/// A value that must never be printed. `Debug` and `Display` show a fixed
/// placeholder; the value is reachable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The wrapped value. Call it only where the value is used, never to log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// What [`redact_url`] returns for a string it cannot name safely.
pub const UNPARSEABLE_URL: &str = "[unparseable url]";

/// Returns `url` with any password replaced by `***`, for log lines and
/// errors that name the server being connected to: scheme, user, host, port
/// and path. The query (which may hold `password=`) and the fragment are left
/// out. Anything the `url` crate cannot parse, or parses into something whose
/// password may have spilled past the host, gives [`UNPARSEABLE_URL`].
///
/// A comma-separated list of `amqp://` and `amqps://` URLs (the nodes of a
/// RabbitMQ cluster in `AMQP_URL`) is redacted entry by entry. A comma that
/// does not separate such URLs (one inside a password) makes the string one
/// URL, redacted whole.
pub fn redact_url(url: &str) -> String {
    let entries: Vec<&str> = url.split(',').map(str::trim).collect();
    let list = entries.len() > 1
        && entries.iter().all(|entry| {
            url::Url::parse(entry).is_ok_and(|parsed| {
                matches!(parsed.scheme(), "amqp" | "amqps") && nameable(&parsed)
            })
        });
    if list {
        entries
            .into_iter()
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    } else {
        redact_one(url)
    }
}

fn redact_one(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if nameable(&parsed) => {
            let mut redacted = format!("{}://", parsed.scheme());
            if !parsed.username().is_empty() || parsed.password().is_some() {
                redacted.push_str(parsed.username());
                if parsed.password().is_some() {
                    redacted.push_str(":***");
                }
                redacted.push('@');
            }
            redacted.push_str(&parsed[url::Position::BeforeHost..url::Position::AfterPath]);
            redacted
        }
        _ => UNPARSEABLE_URL.to_owned(),
    }
}

/// Whether the parts [`redact_url`] shows hold nothing of the password.
///
/// A password with an unescaped `/`, `?` or `#` ends the authority early: the
/// parser then reads the start of the password as a port (`user:12/x@host`)
/// and the rest, up to its `@`, as the path, query or fragment. An `@` after
/// the host is the sign of that, so such a URL is not shown at all.
fn nameable(parsed: &url::Url) -> bool {
    parsed.has_host()
        && !parsed.cannot_be_a_base()
        && !parsed[url::Position::BeforePath..].contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("whsec_topsecret".to_owned());
        assert!(!format!("{s:?}").contains("topsecret"));
        assert!(!format!("{s}").contains("topsecret"));
        assert_eq!(s.expose(), "whsec_topsecret");
    }

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("amqp://guest:hunter2@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/db"),
            "postgres://postgres@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("amqps://[::1]:5671/vhost"),
            "amqps://[::1]:5671/vhost"
        );
    }

    #[test]
    fn redact_url_hides_odd_and_percent_encoded_passwords() {
        for (url, shown) in [
            (
                "amqp://guest:p@ss@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "amqp://guest:a:b@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            (
                "postgres://app:se%2Fcr3t-pw@db:5432/app",
                "postgres://app:***@db:5432/app",
            ),
            (
                "postgres://app:p%40ss%3Aw%2Fo%3Frd@db/app",
                "postgres://app:***@db/app",
            ),
            ("amqp://:only-a-password@rabbit/", "amqp://:***@rabbit/"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn redact_url_leaves_out_the_query_and_the_fragment() {
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/db?password=x&sslmode=require"),
            "postgres://postgres@127.0.0.1:5432/db"
        );
        assert_eq!(
            redact_url("amqps://guest:pw@rabbit/%2f?cacertfile=/ca.pem#frag"),
            "amqps://guest:***@rabbit/%2f"
        );
    }

    #[test]
    fn a_password_that_spills_past_the_host_gives_the_placeholder() {
        for url in [
            // The port does not parse.
            "amqp://guest:se/cr3t-pw@127.0.0.1:1/%2f",
            "postgres://postgres:se/cr@t@127.0.0.1:5432/db",
            // The port parses ("12"), the rest of the password is the path,
            // the query or the fragment.
            "amqp://guest:12/secret@rabbit:5672/%2f",
            "amqp://guest:12?secret@rabbit:5672/%2f",
            "amqp://guest:12#secret@rabbit:5672/%2f",
            // No host: everything is the path.
            "amqp:guest:secret@rabbit/%2f",
            "amqp:/guest:secret@rabbit/%2f",
            "nonsense",
            "",
        ] {
            assert_eq!(redact_url(url), UNPARSEABLE_URL, "{url}");
        }
    }

    #[test]
    fn redact_url_hides_every_password_of_a_list() {
        assert_eq!(
            redact_url(
                "amqp://guest:hunter2@rabbit-1:5672/%2f, amqps://app:s3cr3t@rabbit-2/%2f?cacertfile=/ca.pem"
            ),
            "amqp://guest:***@rabbit-1:5672/%2f,amqps://app:***@rabbit-2/%2f"
        );
        // A comma inside a password is not a separator: the URL is one.
        assert_eq!(
            redact_url("amqp://guest:12,34@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("amqp://guest:pa,ss@rabbit:5672/%2f,amqp://b/%2f"),
            "amqp://guest:***@rabbit:5672/%2f,amqp://b/%2f"
        );
    }

    fn percent_encode(text: &str) -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn no_password_is_ever_shown(password in "[ -~]{1,24}") {
            let shown = "amqp://guest:***@127.0.0.1:5672/%2f";
            let raw = redact_url(&format!("amqp://guest:{password}@127.0.0.1:5672/%2f"));
            proptest::prop_assert!(raw == shown || raw == UNPARSEABLE_URL, "{password:?}: {raw}");
            let encoded = format!("amqp://guest:{}@127.0.0.1:5672/%2f", percent_encode(&password));
            proptest::prop_assert_eq!(redact_url(&encoded), shown);
        }
    }
}
