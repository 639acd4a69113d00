//! `shared::svix` on arbitrary secrets, headers and bodies: nothing panics, the
//! header checks keep their promises, `verify` is `check_headers` followed by
//! `verify_body`, and a delivery verifies exactly when one of its first 16
//! well-formed `v1` entries is what `sign` gives for a configured key.
//!
//! Input, split on the first five newlines (readable seeds in `fuzz/seeds/`):
//! `secrets \n now \n svix-id \n svix-timestamp \n svix-signature \n body`.
//! A header whose line is missing is absent; an unreadable `now` becomes the
//! timestamp's value (or 0).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::svix::{
    sign, SecretError, SignedRequest, SigningKey, VerifyError, WebhookSecrets, MAX_ID_LEN,
    TOLERANCE_SECS,
};

/// Used when the secrets line does not parse, so the signature checks still run.
const FALLBACK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// `v1` entries beyond this many are not compared (`svix::MAX_SIGNATURES`).
const MAX_SIGNATURES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(6, |b| *b == b'\n');
    let secrets_line = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let now_line = fields.next();
    let id = fields.next();
    let timestamp = fields.next();
    let signature = fields.next();
    let body = fields.next().unwrap_or_default();
    let now = now_line
        .and_then(|raw| std::str::from_utf8(raw).ok()?.trim().parse::<i64>().ok())
        .or_else(|| std::str::from_utf8(timestamp?).ok()?.parse().ok())
        .unwrap_or(0);

    let (secrets, tokens) = match check_secrets(&secrets_line) {
        Some(parsed) => parsed,
        None => (
            WebhookSecrets::parse(FALLBACK_SECRET).expect("the fallback secret parses"),
            vec![FALLBACK_SECRET.to_owned()],
        ),
    };
    let request = SignedRequest {
        id,
        timestamp,
        signature,
        body,
    };

    let checked = request.check_headers(now);
    check_header_promises(&request, now, &checked);
    let verified = secrets.verify(&request, now);
    let in_two_steps = checked.and_then(|headers| secrets.verify_body(&headers, body));
    assert_eq!(verified, in_two_steps, "verify differs from its two steps");

    if let Ok(verified) = &verified {
        assert_eq!(Some(verified.id.as_bytes()), id);
        assert!(within_tolerance(verified.timestamp, now));
    }
    // The reference model needs `sign`, which writes the timestamp in its
    // canonical form; the MAC covers the header's bytes as sent.
    let (Some(id), Some(timestamp), Some(signature)) = (id, timestamp, signature) else {
        return;
    };
    let Ok(parsed) = request.check_headers(now) else {
        return;
    };
    let Ok(id) = std::str::from_utf8(id) else {
        return;
    };
    let canonical = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|t| t.to_string().as_bytes() == timestamp);
    let Some(ts) = canonical else {
        return;
    };
    assert_eq!(parsed.id(), id);
    let expected: Vec<String> = tokens
        .iter()
        .map(|token| {
            sign(
                &SigningKey::parse(token).expect("token parsed"),
                id,
                ts,
                body,
            )
        })
        .collect();
    let matches = v1_entries(signature)
        .iter()
        .any(|entry| expected.iter().any(|e| e.as_bytes() == *entry));
    assert_eq!(
        verified.is_ok(),
        matches,
        "verify disagrees with the reference model"
    );
    if !matches {
        assert_eq!(verified, Err(VerifyError::InvalidSignature));
    }
});

/// Parses the secrets line and checks what `WebhookSecrets::parse` promises;
/// returns the secrets with their tokens when they parse.
fn check_secrets(line: &str) -> Option<(WebhookSecrets, Vec<String>)> {
    let tokens: Vec<String> = line
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    match WebhookSecrets::parse(line) {
        Ok(secrets) => {
            assert_eq!(secrets.len(), tokens.len());
            assert!(!secrets.is_empty());
            let redacted = vec!["SigningKey([REDACTED])"; tokens.len()].join(", ");
            assert_eq!(
                format!("{secrets:?}"),
                format!("WebhookSecrets([{redacted}])"),
                "a key leaked into Debug"
            );
            Some((secrets, tokens))
        }
        Err(SecretError::Empty) => {
            assert!(tokens.is_empty());
            None
        }
        Err(SecretError::NotBase64 { position } | SecretError::EmptyKey { position }) => {
            assert!((1..=tokens.len()).contains(&position));
            assert!(SigningKey::parse(&tokens[position - 1]).is_err());
            assert!(tokens[..position - 1]
                .iter()
                .all(|t| SigningKey::parse(t).is_ok()));
            None
        }
    }
}

/// What a result of `check_headers` implies about the headers it read.
fn check_header_promises(
    request: &SignedRequest<'_>,
    now: i64,
    checked: &Result<shared::svix::CheckedHeaders<'_>, VerifyError>,
) {
    let present = |h: Option<&[u8]>| h.is_some_and(|h| !h.is_empty());
    let all_present =
        present(request.id) && present(request.timestamp) && present(request.signature);
    match checked {
        Err(VerifyError::MissingHeaders) => assert!(!all_present),
        Err(VerifyError::InvalidId) => {
            let id = request.id.unwrap_or_default();
            assert!(id.len() > MAX_ID_LEN || !id.iter().all(u8::is_ascii_graphic));
        }
        Err(VerifyError::InvalidTimestamp) => {
            let ts = request.timestamp.unwrap_or_default();
            assert!(ts.len() > 18 || !ts.iter().all(u8::is_ascii_digit));
        }
        Err(VerifyError::TimestampTooOld) => {
            assert!(i128::from(timestamp(request)) < i128::from(now) - i128::from(TOLERANCE_SECS));
        }
        Err(VerifyError::TimestampTooNew) => {
            assert!(i128::from(timestamp(request)) > i128::from(now) + i128::from(TOLERANCE_SECS));
        }
        Err(VerifyError::InvalidSignature) => {
            assert!(v1_entries(request.signature.unwrap_or_default()).is_empty());
        }
        Ok(headers) => {
            assert!(all_present);
            let id = request.id.unwrap_or_default();
            assert!((1..=MAX_ID_LEN).contains(&id.len()));
            assert_eq!(headers.id().as_bytes(), id);
            assert!(within_tolerance(timestamp(request), now));
            assert!(!v1_entries(request.signature.unwrap_or_default()).is_empty());
        }
    }
}

/// Whether `timestamp` is within the tolerance of `now`, in both directions.
fn within_tolerance(timestamp: i64, now: i64) -> bool {
    (i128::from(timestamp) - i128::from(now)).abs() <= i128::from(TOLERANCE_SECS)
}

/// The timestamp header of a request that got past the format check.
fn timestamp(request: &SignedRequest<'_>) -> i64 {
    let raw = request.timestamp.expect("timestamp present");
    std::str::from_utf8(raw)
        .expect("digits")
        .parse()
        .expect("at most 18 digits")
}

/// The `v1,<base64>` entries that decode to 32 bytes, in order, at most
/// [`MAX_SIGNATURES`]: written independently of `shared::svix`.
fn v1_entries(header: &[u8]) -> Vec<&[u8]> {
    header
        .split(|b| *b == b' ')
        .filter(|entry| {
            entry.strip_prefix(b"v1,").is_some_and(|sig| {
                sig.len() == 44
                    && sig.ends_with(b"=")
                    && !sig[..43].contains(&b'=')
                    && decodes_to_32_bytes(&sig[..43])
            })
        })
        .take(MAX_SIGNATURES)
        .collect()
}

/// Whether 43 base64 characters (before a single `=`) are a canonical
/// encoding of 32 bytes: every character is in the standard alphabet and the
/// last one leaves no stray bits.
fn decodes_to_32_bytes(sig: &[u8]) -> bool {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    sig.iter().all(|c| value(*c).is_some()) && value(sig[42]).is_some_and(|v| v & 0b11 == 0)
}
