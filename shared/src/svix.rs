//! Svix (Standard Webhooks) signature verification: pure functions, no I/O.
//!
//! The signed content is `{id}.{timestamp}.{body}` over the raw body bytes,
//! HMAC-SHA256 keyed with the base64-decoded part of the secret after `whsec_`,
//! sent as standard base64 in a space-separated list of `version,signature`
//! entries. Any matching `v1` entry verifies; other versions are skipped.

use std::fmt;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Accepted distance between the `svix-timestamp` and now, in both directions.
pub const TOLERANCE_SECS: i64 = 300;

/// Longest accepted `svix-id`; Svix ids are about 30 characters.
pub const MAX_ID_LEN: usize = 255;

const PREFIX: &str = "whsec_";
const SIGNATURE_LEN: usize = 32;

/// Why a configured secret was refused. Never carries the secret itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// No secret at all was given.
    #[error("no webhook secret configured (expected one or more whsec_… values)")]
    Empty,
    /// One entry of the list is not valid base64 after `whsec_`.
    #[error("webhook secret #{position} is not valid base64 after the whsec_ prefix")]
    NotBase64 {
        /// 1-based position of the entry in the configured list.
        position: usize,
    },
    /// One entry decodes to no bytes.
    #[error("webhook secret #{position} decodes to an empty key")]
    EmptyKey {
        /// 1-based position of the entry in the configured list.
        position: usize,
    },
}

/// One HMAC key, decoded from a `whsec_…` secret. Its `Debug` is redacted.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

impl SigningKey {
    /// Decodes a secret, with or without the `whsec_` prefix.
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        Self::parse_at(secret, 1)
    }

    fn parse_at(secret: &str, position: usize) -> Result<Self, SecretError> {
        let encoded = secret.strip_prefix(PREFIX).unwrap_or(secret);
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::NotBase64 { position })?;
        if key.is_empty() {
            return Err(SecretError::EmptyKey { position });
        }
        Ok(Self(key))
    }

    fn mac(&self, id: &[u8], timestamp: &[u8], body: &[u8]) -> [u8; SIGNATURE_LEN] {
        #[allow(clippy::expect_used)] // HMAC accepts keys of any length
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id);
        mac.update(b".");
        mac.update(timestamp);
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// The configured secrets: a request verifies if it matches any of them, which
/// lets operators rotate a secret without dropping deliveries.
#[derive(Clone, Debug)]
pub struct WebhookSecrets(Vec<SigningKey>);

impl WebhookSecrets {
    /// Parses one or more secrets separated by spaces or commas.
    pub fn parse(list: &str) -> Result<Self, SecretError> {
        let keys = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
            .map(|(i, s)| SigningKey::parse_at(s, i + 1))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self(keys))
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: parsing refuses an empty list.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Verifies a delivery at the Unix time `now` (seconds): the header
    /// checks of [`SignedRequest::check_headers`], then the signatures.
    pub fn verify(&self, request: &SignedRequest<'_>, now: i64) -> Result<Verified, VerifyError> {
        let headers = request.check_headers(now)?;
        self.verify_body(&headers, request.body)
    }

    /// Verifies `body` against headers that already passed
    /// [`SignedRequest::check_headers`].
    pub fn verify_body(
        &self,
        headers: &CheckedHeaders<'_>,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        for key in &self.0 {
            let expected = key.mac(headers.id_raw, headers.timestamp_raw, body);
            // Every candidate is compared, in constant time, whatever matched.
            let matched = headers
                .signatures
                .iter()
                .fold(subtle::Choice::from(0), |found, candidate| {
                    found | candidate.ct_eq(&expected)
                });
            if bool::from(matched) {
                return Ok(Verified {
                    id: headers.id.clone(),
                    timestamp: headers.timestamp,
                });
            }
        }
        Err(VerifyError::InvalidSignature)
    }
}

/// The three headers of a delivery after the checks that need no body: all
/// present, the id well formed, the timestamp inside the tolerance, and at
/// least one `v1` entry that decodes to a signature of the right length.
#[derive(Clone, Debug)]
pub struct CheckedHeaders<'a> {
    id: String,
    id_raw: &'a [u8],
    timestamp_raw: &'a [u8],
    timestamp: i64,
    signatures: Vec<[u8; SIGNATURE_LEN]>,
}

impl CheckedHeaders<'_> {
    /// The `svix-id`.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The parts of a delivery that verification reads: three header values as raw
/// bytes (absent when the header is missing) and the raw body.
#[derive(Clone, Copy, Debug)]
pub struct SignedRequest<'a> {
    /// `svix-id` (or `webhook-id`).
    pub id: Option<&'a [u8]>,
    /// `svix-timestamp` (or `webhook-timestamp`), Unix seconds.
    pub timestamp: Option<&'a [u8]>,
    /// `svix-signature` (or `webhook-signature`).
    pub signature: Option<&'a [u8]>,
    /// The body exactly as received.
    pub body: &'a [u8],
}

impl<'a> SignedRequest<'a> {
    /// The checks that need only the headers, in the order of `SPEC.md`
    /// section 4: every header present, the id well formed, the timestamp an
    /// integer within [`TOLERANCE_SECS`] of `now`, and at least one `v1` entry
    /// that decodes to a 32-byte signature. A request that fails here can be
    /// refused before its body is read.
    pub fn check_headers(&self, now: i64) -> Result<CheckedHeaders<'a>, VerifyError> {
        let (id_raw, timestamp_raw, signatures) = match (self.id, self.timestamp, self.signature) {
            (Some(i), Some(t), Some(s)) if !i.is_empty() && !t.is_empty() && !s.is_empty() => {
                (i, t, s)
            }
            _ => return Err(VerifyError::MissingHeaders),
        };
        let id = parse_id(id_raw)?;
        let timestamp = parse_timestamp(timestamp_raw)?;
        if timestamp < now.saturating_sub(TOLERANCE_SECS) {
            return Err(VerifyError::TimestampTooOld);
        }
        if timestamp > now.saturating_add(TOLERANCE_SECS) {
            return Err(VerifyError::TimestampTooNew);
        }
        let signatures = v1_signatures(signatures);
        if signatures.is_empty() {
            return Err(VerifyError::InvalidSignature);
        }
        Ok(CheckedHeaders {
            id,
            id_raw,
            timestamp_raw,
            timestamp,
            signatures,
        })
    }
}

/// What a verified delivery proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The `svix-id`: stable across retries, the idempotency key.
    pub id: String,
    /// The attempt's timestamp, Unix seconds.
    pub timestamp: i64,
}

/// Why a delivery failed verification.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A required header is absent or empty.
    #[error("missing one of the svix-id, svix-timestamp, svix-signature headers")]
    MissingHeaders,
    /// The id is not printable ASCII, or too long.
    #[error("svix-id must be 1 to 255 printable ASCII characters")]
    InvalidId,
    /// The timestamp is not a non-negative integer.
    #[error("svix-timestamp is not an integer number of seconds")]
    InvalidTimestamp,
    /// The timestamp is more than the tolerance in the past.
    #[error("svix-timestamp is more than 300 seconds in the past")]
    TimestampTooOld,
    /// The timestamp is more than the tolerance in the future.
    #[error("svix-timestamp is more than 300 seconds in the future")]
    TimestampTooNew,
    /// No `v1` signature matches any configured secret.
    #[error("no v1 signature matches")]
    InvalidSignature,
}

fn parse_id(id: &[u8]) -> Result<String, VerifyError> {
    if id.len() > MAX_ID_LEN || !id.iter().all(|b| b.is_ascii_graphic()) {
        return Err(VerifyError::InvalidId);
    }
    String::from_utf8(id.to_vec()).map_err(|_| VerifyError::InvalidId)
}

fn parse_timestamp(raw: &[u8]) -> Result<i64, VerifyError> {
    if raw.len() > 18 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(VerifyError::InvalidTimestamp);
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(VerifyError::InvalidTimestamp)
}

/// At most this many `v1` entries of one header are kept: Svix sends one per
/// active secret, so a few; a longer list only costs HMAC comparisons.
const MAX_SIGNATURES: usize = 16;

/// The decoded signatures of the `v1` entries; entries that do not decode to
/// 32 bytes are dropped (they can never match).
fn v1_signatures(header: &[u8]) -> Vec<[u8; SIGNATURE_LEN]> {
    header
        .split(|b| *b == b' ')
        .filter_map(|entry| {
            let comma = entry.iter().position(|b| *b == b',')?;
            let (version, signature) = (&entry[..comma], &entry[comma + 1..]);
            if version != b"v1" {
                return None;
            }
            STANDARD.decode(signature).ok()?.try_into().ok()
        })
        .take(MAX_SIGNATURES)
        .collect()
}

/// Signs a delivery the way Svix does: returns the `v1,<base64>` entry for the
/// `svix-signature` header. Used by tests and by the example sender.
pub fn sign(key: &SigningKey, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mac = key.mac(id.as_bytes(), timestamp.to_string().as_bytes(), body);
    format!("v1,{}", STANDARD.encode(mac))
}
