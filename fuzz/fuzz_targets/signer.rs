//! The `SDK-HMAC-SHA256` signer with arbitrary method, path, query, headers, body and keys.
//!
//! Checked: no panic; signing is deterministic (twice gives the same bytes) and independent of the order
//! headers and query pairs are given in (the canonical form sorts them, and a signature that depended on
//! a `HashMap`'s order would fail at random against the server); the Authorization header names the
//! access key and only the signed headers; the canonical URI ends in `/`; the date format is fixed.

#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use elb_drain::secret::Secret;
use elb_drain::sign::{self, SigningKey};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    ak: String,
    sk: String,
    security_token: Option<String>,
    date_secs: u64,
}

fuzz_target!(|input: Input| {
    let key = SigningKey {
        ak: input.ak.clone(),
        sk: Secret::new(input.sk.clone()),
        security_token: input.security_token.clone().map(Secret::new),
    };
    let sign = |query: &[(String, String)], headers: &[(String, String)]| {
        sign::sign(
            &input.method,
            &input.path,
            query,
            headers,
            &input.body,
            &key,
        )
    };
    let first = sign(&input.query, &input.headers);
    assert_eq!(
        first,
        sign(&input.query, &input.headers),
        "not deterministic"
    );

    let mut query = input.query.clone();
    query.reverse();
    let mut headers = input.headers.clone();
    headers.reverse();
    assert_eq!(
        first,
        sign(&query, &headers),
        "depends on the order of headers or query"
    );

    assert!(first.authorization.starts_with(&format!(
        "{} Access={}, SignedHeaders=",
        sign::ALGORITHM,
        input.ak
    )));
    assert!(first.string_to_sign.starts_with(sign::ALGORITHM));
    assert!(sign::canonical_uri(&input.path).ends_with('/'));
    // Dates up to the last second of year 9999: the only ones an `X-Sdk-Date` can carry.
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(input.date_secs % 253_402_300_800);
    let date = sign::sdk_date(t);
    assert_eq!(date.len(), 16, "{date}");
    assert!(date.ends_with('Z') && date.as_bytes()[8] == b'T', "{date}");
});
