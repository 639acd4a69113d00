//! Signs arbitrary deliveries with `shared::svix::sign` and checks that:
//! a correctly signed delivery verifies (also among decoys and other versions,
//! and with a second, rotated secret configured), exactly when its id is well
//! formed and its timestamp is within the tolerance; and that any single-byte
//! change of the body (replaced, removed or inserted), or another timestamp,
//! makes it fail with `InvalidSignature`.
#![no_main]

use base64::{engine::general_purpose::STANDARD, Engine as _};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use shared::svix::{
    sign, SignedRequest, SigningKey, Verified, VerifyError, WebhookSecrets, MAX_ID_LEN,
    TOLERANCE_SECS,
};

/// The largest timestamp the header accepts: 18 digits.
const MAX_TIMESTAMP: i64 = 999_999_999_999_999_999;

fuzz_target!(|data: &[u8]| {
    let _ = run(Unstructured::new(data));
});

fn run(mut u: Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<()> {
    let mut key: Vec<u8> = u.arbitrary()?;
    if key.is_empty() {
        key.push(0);
    }
    let other_key: [u8; 24] = u.arbitrary()?;
    let id: String = u.arbitrary()?;
    let timestamp = u.int_in_range(0..=MAX_TIMESTAMP)?;
    let skew = u.int_in_range(-2 * TOLERANCE_SECS..=2 * TOLERANCE_SECS)?;
    let now = timestamp + skew;
    let decoys_before = u.int_in_range(0..=3)?;
    let decoys_after = u.int_in_range(0..=3)?;
    let rotated_first: bool = u.arbitrary()?;
    let position: usize = u.arbitrary()?;
    let flip = u.int_in_range(1..=255u8)?;
    let body = u.take_rest().to_vec();

    let secret = format!("whsec_{}", STANDARD.encode(&key));
    let other = format!("whsec_{}", STANDARD.encode(other_key));
    let list = if rotated_first {
        format!("{other}, {secret}")
    } else {
        format!("{secret} {other}")
    };
    let secrets = WebhookSecrets::parse(&list).expect("two base64 secrets parse");
    let signing_key = SigningKey::parse(&secret).expect("a base64 secret parses");
    let signature = sign(&signing_key, &id, timestamp, &body);
    let encoded = signature.strip_prefix("v1,").expect("sign writes v1");

    let mut entries = Vec::new();
    for i in 0..decoys_before {
        entries.push(decoy(i, encoded));
    }
    entries.push(signature.clone());
    for i in 0..decoys_after {
        entries.push(decoy(i + 3, encoded));
    }
    let header = entries.join(" ");
    let ts = timestamp.to_string();
    let verify = |body: &[u8], ts: &str| {
        secrets.verify(
            &SignedRequest {
                id: Some(id.as_bytes()),
                timestamp: Some(ts.as_bytes()),
                signature: Some(header.as_bytes()),
                body,
            },
            now,
        )
    };

    let expected = if id.is_empty() {
        Err(VerifyError::MissingHeaders)
    } else if id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        Err(VerifyError::InvalidId)
    } else if skew > TOLERANCE_SECS {
        Err(VerifyError::TimestampTooOld)
    } else if skew < -TOLERANCE_SECS {
        Err(VerifyError::TimestampTooNew)
    } else {
        Ok(Verified {
            id: id.clone(),
            timestamp,
        })
    };
    assert_eq!(verify(&body, &ts), expected);
    if expected.is_err() {
        return Ok(());
    }

    // Alone, with this secret only, it verifies too.
    let alone = WebhookSecrets::parse(&secret).expect("a base64 secret parses");
    let request = SignedRequest {
        id: Some(id.as_bytes()),
        timestamp: Some(ts.as_bytes()),
        signature: Some(signature.as_bytes()),
        body: &body,
    };
    assert_eq!(alone.verify(&request, now), expected);

    // Every single-byte change of the body fails.
    if !body.is_empty() {
        let at = position % body.len();
        let mut changed = body.clone();
        changed[at] ^= flip;
        assert_eq!(verify(&changed, &ts), Err(VerifyError::InvalidSignature));
        let mut shorter = body.clone();
        shorter.remove(at);
        assert_eq!(verify(&shorter, &ts), Err(VerifyError::InvalidSignature));
    }
    let mut longer = body.clone();
    longer.insert(position % (body.len() + 1), flip);
    assert_eq!(verify(&longer, &ts), Err(VerifyError::InvalidSignature));

    // So does the same delivery under another timestamp inside the window.
    let other_ts = if timestamp == 0 { 1 } else { timestamp - 1 };
    let other_ts = other_ts.to_string();
    let moved = verify(&body, &other_ts);
    assert!(
        matches!(
            moved,
            Err(VerifyError::InvalidSignature
                | VerifyError::TimestampTooOld
                | VerifyError::TimestampTooNew)
        ),
        "{moved:?}"
    );
    Ok(())
}

/// An entry that must never match: the right signature under another
/// version, cut short, or another valid-looking signature.
fn decoy(i: usize, encoded: &str) -> String {
    match i % 4 {
        0 => format!("v2,{encoded}"),
        1 => format!("v1,{}", &encoded[..40]),
        2 => format!("v1a,{encoded}"),
        _ => format!("v1,{}", STANDARD.encode([i as u8; 32])),
    }
}
