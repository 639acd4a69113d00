//! Svix (Standard Webhooks) signature verification: the published test vectors,
//! malformed headers and secrets, the timestamp window, and properties over
//! random deliveries.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use proptest::prelude::*;
use shared::svix::{
    sign, SecretError, SignedRequest, SigningKey, Verified, VerifyError, WebhookSecrets,
    MAX_ID_LEN, TOLERANCE_SECS,
};

// Vector A: the svix and standard-webhooks Rust libraries' `test_sign`.
const A_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const A_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const A_TIMESTAMP: i64 = 1_649_367_553;
const A_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
const A_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
const A_WRONG: &str = "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=";
const A_DECOYS: [&str; 3] = [
    "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
    "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
    "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
];

// Vector B: the `sign` tests of the svix Python and standard-webhooks libraries.
const B_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const B_SECRET_UNPREFIXED: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const B_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const B_TIMESTAMP: i64 = 1_614_265_330;
const B_BODY: &[u8] = br#"{"test": 2432232314}"#;
const B_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
const B_WRONG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
const B_DECOYS: [&str; 2] = [
    "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
];

fn secrets(list: &str) -> WebhookSecrets {
    WebhookSecrets::parse(list).expect("test secret list parses")
}

fn key(secret: &str) -> SigningKey {
    SigningKey::parse(secret).expect("test secret parses")
}

/// A `whsec_` secret whose key is `len` copies of `byte`.
fn secret_of(byte: u8, len: usize) -> String {
    format!("whsec_{}", STANDARD.encode(vec![byte; len]))
}

fn request<'a>(
    id: &'a str,
    timestamp: &'a str,
    signature: &'a str,
    body: &'a [u8],
) -> SignedRequest<'a> {
    SignedRequest {
        id: Some(id.as_bytes()),
        timestamp: Some(timestamp.as_bytes()),
        signature: Some(signature.as_bytes()),
        body,
    }
}

fn verify_a(signature: &str) -> Result<Verified, VerifyError> {
    let timestamp = A_TIMESTAMP.to_string();
    let request = request(A_ID, &timestamp, signature, A_BODY);
    secrets(A_SECRET).verify(&request, A_TIMESTAMP)
}

fn verify_b(signature: &str) -> Result<Verified, VerifyError> {
    let timestamp = B_TIMESTAMP.to_string();
    let request = request(B_ID, &timestamp, signature, B_BODY);
    secrets(B_SECRET).verify(&request, B_TIMESTAMP)
}

/// The bare base64 of vector A's correct signature, decoded.
fn a_signature_bytes() -> Vec<u8> {
    let encoded = A_SIGNATURE
        .strip_prefix("v1,")
        .expect("vector has a v1 prefix");
    STANDARD.decode(encoded).expect("vector is base64")
}

/// Verifies vector A's id, timestamp and body with a raw signature header.
fn verify_a_raw_signature(signature: &[u8]) -> Result<Verified, VerifyError> {
    let timestamp = A_TIMESTAMP.to_string();
    let request = SignedRequest {
        id: Some(A_ID.as_bytes()),
        timestamp: Some(timestamp.as_bytes()),
        signature: Some(signature),
        body: A_BODY,
    };
    secrets(A_SECRET).verify(&request, A_TIMESTAMP)
}

/// Signs vector A's body with vector A's key for an arbitrary id and
/// timestamp, then verifies it at `now`.
fn sign_and_verify_a(id: &str, timestamp: i64, now: i64) -> Result<Verified, VerifyError> {
    let signature = sign(&key(A_SECRET), id, timestamp, A_BODY);
    let timestamp = timestamp.to_string();
    let request = request(id, &timestamp, &signature, A_BODY);
    secrets(A_SECRET).verify(&request, now)
}

// ---------------------------------------------------------------------------
// Published vectors
// ---------------------------------------------------------------------------

#[test]
fn vector_a_verifies_at_its_own_timestamp() {
    // Arrange / Act
    let result = verify_a(A_SIGNATURE);

    // Assert
    assert_eq!(
        result,
        Ok(Verified {
            id: A_ID.to_owned(),
            timestamp: A_TIMESTAMP,
        })
    );
}

#[test]
fn vector_a_must_fail_signature_is_rejected() {
    // Arrange / Act
    let result = verify_a(A_WRONG);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn vector_b_verifies_at_its_own_timestamp() {
    // Arrange / Act
    let result = verify_b(B_SIGNATURE);

    // Assert
    assert_eq!(
        result,
        Ok(Verified {
            id: B_ID.to_owned(),
            timestamp: B_TIMESTAMP,
        })
    );
}

#[test]
fn vector_b_verifies_with_the_secret_without_its_whsec_prefix() {
    // Arrange
    let secrets = secrets(B_SECRET_UNPREFIXED);
    let timestamp = B_TIMESTAMP.to_string();
    let request = request(B_ID, &timestamp, B_SIGNATURE, B_BODY);

    // Act
    let result = secrets.verify(&request, B_TIMESTAMP);

    // Assert
    assert_eq!(result.map(|v| v.id), Ok(B_ID.to_owned()));
}

#[test]
fn vector_b_must_fail_signature_is_rejected() {
    // Arrange / Act
    let result = verify_b(B_WRONG);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn vector_a_decoys_followed_by_the_right_signature_verify() {
    // Arrange
    let header = format!("{} {}", A_DECOYS.join(" "), A_SIGNATURE);

    // Act
    let result = verify_a(&header);

    // Assert
    assert_eq!(result.map(|v| v.timestamp), Ok(A_TIMESTAMP));
}

#[test]
fn vector_a_decoys_alone_fail() {
    // Arrange
    let header = A_DECOYS.join(" ");

    // Act
    let result = verify_a(&header);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn vector_b_decoys_followed_by_the_right_signature_verify() {
    // Arrange
    let header = format!("{} {}", B_DECOYS.join(" "), B_SIGNATURE);

    // Act
    let result = verify_b(&header);

    // Assert
    assert_eq!(result.map(|v| v.timestamp), Ok(B_TIMESTAMP));
}

#[test]
fn vector_b_decoys_alone_fail() {
    // Arrange
    let header = B_DECOYS.join(" ");

    // Act
    let result = verify_b(&header);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn sign_reproduces_the_vector_a_signature() {
    // Arrange
    let key = key(A_SECRET);

    // Act
    let signature = sign(&key, A_ID, A_TIMESTAMP, A_BODY);

    // Assert
    assert_eq!(signature, A_SIGNATURE);
}

#[test]
fn sign_reproduces_the_vector_b_signature_with_and_without_the_prefix() {
    // Arrange
    let prefixed = key(B_SECRET);
    let unprefixed = key(B_SECRET_UNPREFIXED);

    // Act
    let from_prefixed = sign(&prefixed, B_ID, B_TIMESTAMP, B_BODY);
    let from_unprefixed = sign(&unprefixed, B_ID, B_TIMESTAMP, B_BODY);

    // Assert
    assert_eq!(from_prefixed, B_SIGNATURE);
    assert_eq!(from_unprefixed, B_SIGNATURE);
}

// ---------------------------------------------------------------------------
// Signature header entries
// ---------------------------------------------------------------------------

#[test]
fn a_bare_v1_entry_never_verifies() {
    // Arrange / Act
    let result = verify_a("v1,");

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn a_truncated_signature_that_is_still_valid_base64_fails() {
    // Arrange: the first 31 of the 32 correct bytes, and the first byte only.
    let correct = a_signature_bytes();
    let short = format!("v1,{}", STANDARD.encode(&correct[..31]));
    let one_byte = format!("v1,{}", STANDARD.encode(&correct[..1]));

    // Act
    let short_result = verify_a(&short);
    let one_byte_result = verify_a(&one_byte);

    // Assert
    assert_eq!(short_result, Err(VerifyError::InvalidSignature));
    assert_eq!(one_byte_result, Err(VerifyError::InvalidSignature));
}

#[test]
fn a_signature_cut_mid_base64_fails() {
    // Arrange: the correct header with its last four characters removed.
    let cut = &A_SIGNATURE[..A_SIGNATURE.len() - 4];

    // Act
    let result = verify_a(cut);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn a_signature_with_extra_bytes_after_the_correct_ones_fails() {
    // Arrange: the 32 correct bytes followed by one and by 32 more bytes.
    let correct = a_signature_bytes();
    let mut one_more = correct.clone();
    one_more.push(0);
    let doubled = [correct.clone(), correct].concat();
    let one_more = format!("v1,{}", STANDARD.encode(one_more));
    let doubled = format!("v1,{}", STANDARD.encode(doubled));

    // Act
    let one_more_result = verify_a(&one_more);
    let doubled_result = verify_a(&doubled);

    // Assert
    assert_eq!(one_more_result, Err(VerifyError::InvalidSignature));
    assert_eq!(doubled_result, Err(VerifyError::InvalidSignature));
}

#[test]
fn the_correct_signature_without_base64_padding_is_not_accepted() {
    // Arrange: Svix always sends padded standard base64.
    let unpadded = A_SIGNATURE.trim_end_matches('=');

    // Act
    let result = verify_a(unpadded);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn the_correct_signature_under_version_v2_alone_fails() {
    // Arrange
    let header = A_SIGNATURE.replacen("v1,", "v2,", 1);

    // Act
    let result = verify_a(&header);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn the_correct_signature_under_version_v1a_alone_fails() {
    // Arrange
    let header = A_SIGNATURE.replacen("v1,", "v1a,", 1);

    // Act
    let result = verify_a(&header);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn the_correct_signature_under_an_uppercase_version_fails() {
    // Arrange
    let header = A_SIGNATURE.replacen("v1,", "V1,", 1);

    // Act
    let result = verify_a(&header);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

#[test]
fn garbage_entries_around_the_right_signature_are_skipped() {
    // Arrange: no comma, empty entries, double spaces, undecodable base64,
    // and leading and trailing spaces.
    let header = format!(" nocomma  ,  v1,  v1,!!!notbase64!!!   v2  {A_SIGNATURE}  , ");

    // Act
    let result = verify_a(&header);

    // Assert
    assert_eq!(result.map(|v| v.id), Ok(A_ID.to_owned()));
}

#[test]
fn a_header_of_garbage_entries_only_fails_without_panicking() {
    // Arrange
    let headers = [
        " ", "   ", ",", ",,,", "v1", "v1 v1 v1", "nocomma", "v1,,,,", "v1,=", "v1,====", ",v1",
        "  v1,  ",
    ];

    for header in headers {
        // Act
        let result = verify_a(header);

        // Assert
        assert_eq!(
            result,
            Err(VerifyError::InvalidSignature),
            "header {header:?}"
        );
    }
}

#[test]
fn the_signature_of_another_delivery_fails() {
    // Arrange: vector B's correct signature presented for vector A.
    let result = verify_a(B_SIGNATURE);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

// ---------------------------------------------------------------------------
// Several configured secrets
// ---------------------------------------------------------------------------

fn verify_signed_with(configured: &str, signing_secret: &str) -> Result<Verified, VerifyError> {
    let signature = sign(&key(signing_secret), A_ID, A_TIMESTAMP, A_BODY);
    let timestamp = A_TIMESTAMP.to_string();
    let request = request(A_ID, &timestamp, &signature, A_BODY);
    secrets(configured).verify(&request, A_TIMESTAMP)
}

#[test]
fn two_space_separated_secrets_accept_a_delivery_signed_with_either() {
    // Arrange
    let (first, second) = (secret_of(0xA1, 24), secret_of(0xB2, 24));
    let configured = format!("{first} {second}");

    // Act
    let with_first = verify_signed_with(&configured, &first);
    let with_second = verify_signed_with(&configured, &second);

    // Assert
    assert_eq!(secrets(&configured).len(), 2);
    assert!(with_first.is_ok(), "{with_first:?}");
    assert!(with_second.is_ok(), "{with_second:?}");
}

#[test]
fn two_comma_separated_secrets_accept_a_delivery_signed_with_either() {
    // Arrange
    let (first, second) = (secret_of(0xA1, 24), secret_of(0xB2, 24));
    let configured = format!("{first},{second}");

    // Act
    let with_first = verify_signed_with(&configured, &first);
    let with_second = verify_signed_with(&configured, &second);

    // Assert
    assert_eq!(secrets(&configured).len(), 2);
    assert!(with_first.is_ok(), "{with_first:?}");
    assert!(with_second.is_ok(), "{with_second:?}");
}

#[test]
fn a_comma_and_spaces_together_separate_secrets() {
    // Arrange
    let (first, second) = (secret_of(0xA1, 24), secret_of(0xB2, 24));
    let configured = format!("  {first} ,\t{second}\n");

    // Act
    let parsed = secrets(&configured);
    let with_second = verify_signed_with(&configured, &second);

    // Assert
    assert_eq!(parsed.len(), 2);
    assert!(!parsed.is_empty());
    assert!(with_second.is_ok(), "{with_second:?}");
}

#[test]
fn a_delivery_signed_with_a_third_secret_fails_against_two_configured() {
    // Arrange
    let (first, second, third) = (
        secret_of(0xA1, 24),
        secret_of(0xB2, 24),
        secret_of(0xC3, 24),
    );

    // Act
    let spaced = verify_signed_with(&format!("{first} {second}"), &third);
    let comma = verify_signed_with(&format!("{first},{second}"), &third);

    // Assert
    assert_eq!(spaced, Err(VerifyError::InvalidSignature));
    assert_eq!(comma, Err(VerifyError::InvalidSignature));
}

// ---------------------------------------------------------------------------
// Timestamp window
// ---------------------------------------------------------------------------

#[test]
fn the_tolerance_is_three_hundred_seconds() {
    // Assert
    assert_eq!(TOLERANCE_SECS, 300);
}

#[test]
fn a_timestamp_exactly_three_hundred_seconds_old_is_accepted() {
    // Arrange
    let now = A_TIMESTAMP;
    let timestamp = now - 300;

    // Act
    let result = sign_and_verify_a(A_ID, timestamp, now);

    // Assert
    assert_eq!(result.map(|v| v.timestamp), Ok(timestamp));
}

#[test]
fn a_timestamp_exactly_three_hundred_seconds_ahead_is_accepted() {
    // Arrange
    let now = A_TIMESTAMP;
    let timestamp = now + 300;

    // Act
    let result = sign_and_verify_a(A_ID, timestamp, now);

    // Assert
    assert_eq!(result.map(|v| v.timestamp), Ok(timestamp));
}

#[test]
fn a_correctly_signed_timestamp_three_hundred_and_one_seconds_old_is_too_old() {
    // Arrange
    let now = A_TIMESTAMP;

    // Act
    let result = sign_and_verify_a(A_ID, now - 301, now);

    // Assert
    assert_eq!(result, Err(VerifyError::TimestampTooOld));
}

#[test]
fn a_correctly_signed_timestamp_three_hundred_and_one_seconds_ahead_is_too_new() {
    // Arrange
    let now = A_TIMESTAMP;

    // Act
    let result = sign_and_verify_a(A_ID, now + 301, now);

    // Assert
    assert_eq!(result, Err(VerifyError::TimestampTooNew));
}

#[test]
fn the_published_vectors_are_too_old_for_a_present_day_clock() {
    // Arrange: a clock well after both vectors were made.
    let now = 1_800_000_000;
    let timestamp = A_TIMESTAMP.to_string();
    let request = request(A_ID, &timestamp, A_SIGNATURE, A_BODY);

    // Act
    let result = secrets(A_SECRET).verify(&request, now);

    // Assert
    assert_eq!(result, Err(VerifyError::TimestampTooOld));
}

#[test]
fn a_clock_at_the_extremes_of_i64_does_not_overflow() {
    // Arrange
    let timestamp = A_TIMESTAMP.to_string();
    let request = request(A_ID, &timestamp, A_SIGNATURE, A_BODY);
    let secrets = secrets(A_SECRET);

    // Act
    let at_max = secrets.verify(&request, i64::MAX);
    let at_min = secrets.verify(&request, i64::MIN);

    // Assert
    assert_eq!(at_max, Err(VerifyError::TimestampTooOld));
    assert_eq!(at_min, Err(VerifyError::TimestampTooNew));
}

#[test]
fn a_timestamp_that_is_not_a_non_negative_integer_is_invalid() {
    // Arrange
    let timestamps = [
        "abc",
        "12.5",
        "-5",
        "+5",
        " 123",
        "123 ",
        "1e9",
        "0x10",
        "1649367553\n",
        "1_649_367_553",
        "99999999999999999999999",
        // Within range, but longer than 18 characters.
        "0000000001649367553",
    ];

    for timestamp in timestamps {
        let request = request(A_ID, timestamp, A_SIGNATURE, A_BODY);

        // Act
        let result = secrets(A_SECRET).verify(&request, A_TIMESTAMP);

        // Assert
        assert_eq!(
            result,
            Err(VerifyError::InvalidTimestamp),
            "timestamp {timestamp:?}"
        );
    }
}

#[test]
fn an_empty_timestamp_counts_as_a_missing_header() {
    // Arrange
    let request = request(A_ID, "", A_SIGNATURE, A_BODY);

    // Act
    let result = secrets(A_SECRET).verify(&request, A_TIMESTAMP);

    // Assert
    assert_eq!(result, Err(VerifyError::MissingHeaders));
}

#[test]
fn the_signature_covers_the_timestamp_as_sent() {
    // Arrange: the same instant with a leading zero is different signed text.
    let padded = format!("0{A_TIMESTAMP}");
    let request = request(A_ID, &padded, A_SIGNATURE, A_BODY);

    // Act
    let result = secrets(A_SECRET).verify(&request, A_TIMESTAMP);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

// ---------------------------------------------------------------------------
// Missing headers
// ---------------------------------------------------------------------------

#[test]
fn an_absent_or_empty_header_gives_missing_headers() {
    // Arrange
    let timestamp = A_TIMESTAMP.to_string();
    let complete = request(A_ID, &timestamp, A_SIGNATURE, A_BODY);
    let cases = [
        (
            "no id",
            SignedRequest {
                id: None,
                ..complete
            },
        ),
        (
            "no timestamp",
            SignedRequest {
                timestamp: None,
                ..complete
            },
        ),
        (
            "no signature",
            SignedRequest {
                signature: None,
                ..complete
            },
        ),
        (
            "empty id",
            SignedRequest {
                id: Some(b""),
                ..complete
            },
        ),
        (
            "empty timestamp",
            SignedRequest {
                timestamp: Some(b""),
                ..complete
            },
        ),
        (
            "empty signature",
            SignedRequest {
                signature: Some(b""),
                ..complete
            },
        ),
        (
            "nothing",
            SignedRequest {
                id: None,
                timestamp: None,
                signature: None,
                body: b"",
            },
        ),
    ];
    let secrets = secrets(A_SECRET);

    for (case, request) in cases {
        // Act
        let result = secrets.verify(&request, A_TIMESTAMP);

        // Assert
        assert_eq!(result, Err(VerifyError::MissingHeaders), "{case}");
    }
    assert!(secrets.verify(&complete, A_TIMESTAMP).is_ok());
}

// ---------------------------------------------------------------------------
// Odd header bytes
// ---------------------------------------------------------------------------

#[test]
fn an_id_with_non_ascii_or_non_printable_bytes_is_invalid() {
    // Arrange
    let ids: [&[u8]; 7] = [
        b"msg_\xff\xfe",
        b"\x80",
        "msg_é".as_bytes(),
        b"msg 1",
        b"msg\t1",
        b"msg\x001",
        b"msg\x7f",
    ];
    let timestamp = A_TIMESTAMP.to_string();
    let complete = request(A_ID, &timestamp, A_SIGNATURE, A_BODY);

    for id in ids {
        let request = SignedRequest {
            id: Some(id),
            ..complete
        };

        // Act
        let result = secrets(A_SECRET).verify(&request, A_TIMESTAMP);

        // Assert
        assert_eq!(result, Err(VerifyError::InvalidId), "id {id:?}");
    }
}

#[test]
fn an_id_of_the_maximum_length_verifies() {
    // Arrange
    let id = "m".repeat(MAX_ID_LEN);

    // Act
    let result = sign_and_verify_a(&id, A_TIMESTAMP, A_TIMESTAMP);

    // Assert
    assert_eq!(MAX_ID_LEN, 255);
    assert_eq!(result.map(|v| v.id), Ok(id));
}

#[test]
fn an_id_longer_than_255_bytes_is_invalid_even_when_signed() {
    // Arrange
    let id = "m".repeat(MAX_ID_LEN + 1);

    // Act
    let result = sign_and_verify_a(&id, A_TIMESTAMP, A_TIMESTAMP);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidId));
}

#[test]
fn a_timestamp_with_non_ascii_or_non_utf8_bytes_is_invalid() {
    // Arrange
    let timestamps: [&[u8]; 5] = [
        b"16493\xff67553",
        b"\xff",
        b"\xc3\xa9",
        "١٦٤٩٣٦٧٥٥٣".as_bytes(),
        "１６４９３６７５５３".as_bytes(),
    ];
    let complete = request(A_ID, "0", A_SIGNATURE, A_BODY);

    for timestamp in timestamps {
        let request = SignedRequest {
            timestamp: Some(timestamp),
            ..complete
        };

        // Act
        let result = secrets(A_SECRET).verify(&request, A_TIMESTAMP);

        // Assert
        assert_eq!(
            result,
            Err(VerifyError::InvalidTimestamp),
            "timestamp {timestamp:?}"
        );
    }
}

#[test]
fn a_signature_header_with_non_ascii_or_non_utf8_bytes_is_an_invalid_signature() {
    // Arrange
    let headers: [&[u8]; 6] = [
        b"\xff\xfe\xfd",
        b"v1,\xff\xfe",
        b"v1\xff,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        b"v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=\xff",
        "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=é".as_bytes(),
        "v1,ｔZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=".as_bytes(),
    ];

    for header in headers {
        // Act
        let result = verify_a_raw_signature(header);

        // Assert
        assert_eq!(
            result,
            Err(VerifyError::InvalidSignature),
            "header {header:?}"
        );
    }
}

#[test]
fn a_non_utf8_entry_beside_the_right_signature_does_not_hide_it() {
    // Arrange
    let mut header = b"v1,\xff\xfe \xc0\xc1 ".to_vec();
    header.extend_from_slice(A_SIGNATURE.as_bytes());

    // Act
    let result = verify_a_raw_signature(&header);

    // Assert
    assert_eq!(result.map(|v| v.id), Ok(A_ID.to_owned()));
}

// ---------------------------------------------------------------------------
// Body
// ---------------------------------------------------------------------------

#[test]
fn a_correctly_signed_non_utf8_body_verifies() {
    // Arrange: verification is over bytes; JSON parsing comes later.
    let body: &[u8] = b"\xff\xfe{\"not\": json}\x00\xc3\x28";
    assert!(String::from_utf8(body.to_vec()).is_err());
    let signature = sign(&key(A_SECRET), A_ID, A_TIMESTAMP, body);
    let timestamp = A_TIMESTAMP.to_string();
    let request = request(A_ID, &timestamp, &signature, body);

    // Act
    let result = secrets(A_SECRET).verify(&request, A_TIMESTAMP);

    // Assert
    assert_eq!(result.map(|v| v.id), Ok(A_ID.to_owned()));
}

#[test]
fn a_correctly_signed_empty_body_verifies() {
    // Arrange
    let signature = sign(&key(A_SECRET), A_ID, A_TIMESTAMP, b"");
    let timestamp = A_TIMESTAMP.to_string();
    let request = request(A_ID, &timestamp, &signature, b"");

    // Act
    let result = secrets(A_SECRET).verify(&request, A_TIMESTAMP);

    // Assert
    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn a_reserialised_body_does_not_verify() {
    // Arrange: vector B's body without the space after the colon.
    let body: &[u8] = br#"{"test":2432232314}"#;
    let timestamp = B_TIMESTAMP.to_string();
    let request = request(B_ID, &timestamp, B_SIGNATURE, body);

    // Act
    let result = secrets(B_SECRET).verify(&request, B_TIMESTAMP);

    // Assert
    assert_eq!(result, Err(VerifyError::InvalidSignature));
}

// ---------------------------------------------------------------------------
// Secret parsing
// ---------------------------------------------------------------------------

#[test]
fn an_empty_secret_list_is_refused_as_empty() {
    // Arrange
    let lists = ["", " ", "  , ", ",,,", "\t\n"];

    for list in lists {
        // Act
        let result = WebhookSecrets::parse(list);

        // Assert
        assert_eq!(result.err(), Some(SecretError::Empty), "list {list:?}");
    }
}

#[test]
fn a_malformed_entry_is_reported_with_its_one_based_position() {
    // Arrange
    let good = secret_of(0xA1, 24);
    let cases = [
        ("whsec_not*base64".to_owned(), 1),
        (format!("{good} whsec_not*base64"), 2),
        (format!("{good},{good},whsec_%%%%"), 3),
        // Empty entries between separators are not counted.
        (format!(" , {good} ,, whsec_abc"), 2),
    ];

    for (list, position) in cases {
        // Act
        let result = WebhookSecrets::parse(&list);

        // Assert
        assert_eq!(
            result.err(),
            Some(SecretError::NotBase64 { position }),
            "list {list:?}"
        );
    }
}

#[test]
fn a_single_malformed_key_is_not_base64_at_position_one() {
    // Arrange / Act
    let result = SigningKey::parse("whsec_!!!!");

    // Assert
    assert_eq!(result.err(), Some(SecretError::NotBase64 { position: 1 }));
}

#[test]
fn a_prefix_with_nothing_after_it_is_an_empty_key() {
    // Arrange
    let good = secret_of(0xA1, 24);

    // Act
    let alone = WebhookSecrets::parse("whsec_");
    let second = WebhookSecrets::parse(&format!("{good} whsec_"));
    let key = SigningKey::parse("whsec_");

    // Assert
    assert_eq!(alone.err(), Some(SecretError::EmptyKey { position: 1 }));
    assert_eq!(second.err(), Some(SecretError::EmptyKey { position: 2 }));
    assert_eq!(key.err(), Some(SecretError::EmptyKey { position: 1 }));
}

#[test]
fn secret_errors_do_not_reveal_the_secret() {
    // Arrange: a malformed secret whose text is recognisable.
    let material = "Sup3rS3cretMaterial";
    let list = format!("{A_SECRET} whsec_{material}!");

    // Act
    let error = WebhookSecrets::parse(&list).expect_err("malformed secret is refused");
    let shown = error.to_string();
    let debugged = format!("{error:?}");

    // Assert
    assert_eq!(error, SecretError::NotBase64 { position: 2 });
    for text in [&shown, &debugged] {
        assert!(!text.contains(material), "{text}");
        assert!(!text.contains("C2FVsBQIhrscChlQIMV"), "{text}");
    }
}

#[test]
fn debug_output_of_keys_and_secret_lists_does_not_reveal_the_secret() {
    // Arrange
    let encoded = A_SECRET
        .strip_prefix("whsec_")
        .expect("vector has a prefix");
    let decoded = STANDARD.decode(encoded).expect("vector is base64");
    let forbidden = [
        encoded.to_owned(),
        format!("{decoded:?}"),
        format!("{:?}", &decoded[..4])
            .trim_end_matches(']')
            .to_owned(),
        decoded
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    ];

    // Act
    let key = format!("{:?}", key(A_SECRET));
    let list = format!("{:?}", secrets(&format!("{A_SECRET} {B_SECRET}")));
    let pretty = format!("{:#?}", secrets(A_SECRET));

    // Assert
    for text in [&key, &list, &pretty] {
        assert!(text.contains("REDACTED"), "{text}");
        assert!(!text.contains("MfKQ9r8GKYqrTwjUPD8"), "{text}");
        for secret in &forbidden {
            assert!(!text.contains(secret.as_str()), "{text} contains {secret}");
        }
    }
}

#[test]
fn the_key_is_the_decoded_secret_not_its_text() {
    // Arrange: a key made of the secret's ASCII text instead of its bytes.
    let text_as_key = format!("whsec_{}", STANDARD.encode(A_SECRET.as_bytes()));

    // Act
    let signature = sign(&key(&text_as_key), A_ID, A_TIMESTAMP, A_BODY);

    // Assert
    assert_ne!(signature, A_SIGNATURE);
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// A random delivery: key bytes, id, timestamp, clock and body, where the clock
/// is within the tolerance of the timestamp.
#[derive(Debug, Clone)]
struct Delivery {
    key: Vec<u8>,
    id: String,
    timestamp: i64,
    now: i64,
    body: Vec<u8>,
}

impl Delivery {
    fn secret(&self) -> String {
        format!("whsec_{}", STANDARD.encode(&self.key))
    }

    fn signature(&self) -> String {
        sign(&key(&self.secret()), &self.id, self.timestamp, &self.body)
    }

    /// Verifies the delivery's own signature over the given parts.
    fn verify_with(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<Verified, VerifyError> {
        let signature = self.signature();
        let timestamp = timestamp.to_string();
        let request = request(id, &timestamp, &signature, body);
        secrets(&self.secret()).verify(&request, self.now)
    }
}

fn delivery(min_body: usize) -> impl Strategy<Value = Delivery> {
    (
        prop::collection::vec(any::<u8>(), 1..=64),
        "[!-~]{1,80}",
        600_i64..=4_102_444_800,
        -TOLERANCE_SECS..=TOLERANCE_SECS,
        prop::collection::vec(any::<u8>(), min_body..=256),
    )
        .prop_map(|(key, id, timestamp, skew, body)| Delivery {
            key,
            id,
            timestamp,
            now: timestamp + skew,
            body,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_signed_delivery_always_verifies(delivery in delivery(0)) {
        let result = delivery.verify_with(&delivery.id, delivery.timestamp, &delivery.body);

        prop_assert_eq!(
            result,
            Ok(Verified { id: delivery.id.clone(), timestamp: delivery.timestamp })
        );
    }

    #[test]
    fn a_signed_delivery_verifies_among_other_secrets_and_entries(
        delivery in delivery(0),
        other_key in prop::collection::vec(any::<u8>(), 1..=64),
    ) {
        let configured = format!("whsec_{} {}", STANDARD.encode(&other_key), delivery.secret());
        let header = format!("v1a,abc v1,{} {}", STANDARD.encode([0_u8; 32]), delivery.signature());
        let timestamp = delivery.timestamp.to_string();
        let request = request(&delivery.id, &timestamp, &header, &delivery.body);

        let result = secrets(&configured).verify(&request, delivery.now);

        prop_assert!(result.is_ok(), "{:?}", result);
    }

    #[test]
    fn flipping_bits_of_any_body_byte_breaks_the_signature(
        delivery in delivery(1),
        index in any::<prop::sample::Index>(),
        mask in 1_u8..=255,
    ) {
        let mut body = delivery.body.clone();
        let at = index.index(body.len());
        body[at] ^= mask;

        let result = delivery.verify_with(&delivery.id, delivery.timestamp, &body);

        prop_assert_eq!(result, Err(VerifyError::InvalidSignature));
    }

    #[test]
    fn appending_to_the_body_breaks_the_signature(
        delivery in delivery(0),
        extra in prop::collection::vec(any::<u8>(), 1..=16),
    ) {
        let body = [delivery.body.as_slice(), &extra].concat();

        let result = delivery.verify_with(&delivery.id, delivery.timestamp, &body);

        prop_assert_eq!(result, Err(VerifyError::InvalidSignature));
    }

    #[test]
    fn truncating_the_body_breaks_the_signature(
        delivery in delivery(1),
        cut in any::<prop::sample::Index>(),
    ) {
        let keep = cut.index(delivery.body.len());

        let result = delivery.verify_with(&delivery.id, delivery.timestamp, &delivery.body[..keep]);

        prop_assert_eq!(result, Err(VerifyError::InvalidSignature));
    }

    #[test]
    fn a_different_id_breaks_the_signature(
        delivery in delivery(0),
        other_id in "[!-~]{1,80}",
    ) {
        prop_assume!(other_id != delivery.id);

        let result = delivery.verify_with(&other_id, delivery.timestamp, &delivery.body);

        prop_assert_eq!(result, Err(VerifyError::InvalidSignature));
    }

    #[test]
    fn a_different_timestamp_within_tolerance_breaks_the_signature(
        delivery in delivery(0),
        offset in -TOLERANCE_SECS..=TOLERANCE_SECS,
    ) {
        let other = delivery.now + offset;
        prop_assume!(other != delivery.timestamp);

        let result = delivery.verify_with(&delivery.id, other, &delivery.body);

        prop_assert_eq!(result, Err(VerifyError::InvalidSignature));
    }

    #[test]
    fn a_different_key_breaks_the_signature(
        delivery in delivery(0),
        other_key in prop::collection::vec(any::<u8>(), 1..=64),
    ) {
        // HMAC pads short keys with zeros, so trailing zeros do not change a key.
        let trimmed = |key: &[u8]| key.iter().rposition(|b| *b != 0).map(|end| key[..=end].to_vec());
        prop_assume!(trimmed(&other_key) != trimmed(&delivery.key));
        let configured = format!("whsec_{}", STANDARD.encode(&other_key));
        let signature = delivery.signature();
        let timestamp = delivery.timestamp.to_string();
        let request = request(&delivery.id, &timestamp, &signature, &delivery.body);

        let result = secrets(&configured).verify(&request, delivery.now);

        prop_assert_eq!(result, Err(VerifyError::InvalidSignature));
    }

    #[test]
    fn arbitrary_header_bytes_never_panic(
        id in prop::collection::vec(any::<u8>(), 0..=300),
        timestamp in prop::collection::vec(any::<u8>(), 0..=24),
        signature in prop::collection::vec(any::<u8>(), 0..=200),
        body in prop::collection::vec(any::<u8>(), 0..=64),
        now in any::<i64>(),
    ) {
        let request = SignedRequest {
            id: Some(&id),
            timestamp: Some(&timestamp),
            signature: Some(&signature),
            body: &body,
        };

        let result = secrets(A_SECRET).verify(&request, now);

        prop_assert!(result.is_err());
    }
}
