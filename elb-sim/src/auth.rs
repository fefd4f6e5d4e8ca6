//! Server-side verification of `SDK-HMAC-SHA256` signatures, from the request as it arrived.
//!
//! Written from the reference algorithm independently of the agent's signer (the agent's tests check
//! that the two agree): the canonical request is rebuilt from the raw path, the raw query and the
//! headers the client listed in `SignedHeaders`.
//!
//! Repeated query keys: the official SDKs disagree on the order of their values (Go sorts them as
//! strings, Python as numbers when they are numbers: `protocol_port=9001&protocol_port=10000`), and
//! both send the query in the order they signed it. Both work against the real service, so a
//! signature is accepted over either canonical query: keys and values sorted as strings, or keys
//! sorted with each key's values in their order on the wire. Both are built from the query as it
//! arrived, so a query changed after signing still fails.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A parsed `Authorization: SDK-HMAC-SHA256 Access=…, SignedHeaders=…, Signature=…` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn parse_authorization(value: &str) -> Option<Authorization> {
    let rest = value.trim().strip_prefix("SDK-HMAC-SHA256")?.trim();
    let (mut access, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            "Access" => access = Some(v.trim().to_owned()),
            "SignedHeaders" => {
                signed = Some(
                    v.trim()
                        .split(';')
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                )
            }
            "Signature" => signature = Some(v.trim().to_ascii_lowercase()),
            _ => return None,
        }
    }
    Some(Authorization {
        access: access?,
        signed_headers: signed?,
        signature: signature?,
    })
}

/// `20261128T120000Z` to a time.
pub fn parse_sdk_date(s: &str) -> Option<SystemTime> {
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    humantime::parse_rfc3339(&iso).ok()
}

fn reencode(s: &str) -> String {
    let decoded = percent_decode_str(s).decode_utf8_lossy();
    utf8_percent_encode(&decoded, UNRESERVED).to_string()
}

pub fn canonical_uri(raw_path: &str) -> String {
    let mut out = raw_path
        .split('/')
        .map(reencode)
        .collect::<Vec<_>>()
        .join("/");
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

fn query_pairs(raw_query: &str) -> Vec<(String, String)> {
    raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let plus = |s: &str| s.replace('+', "%20");
            (reencode(&plus(k)), reencode(&plus(v)))
        })
        .collect()
}

fn join(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The reference's canonical query: pairs sorted by key, then value, as strings.
pub fn canonical_query(raw_query: &str) -> String {
    let mut pairs = query_pairs(raw_query);
    pairs.sort();
    join(&pairs)
}

/// Pairs sorted by key only, a key's values kept in their wire order (how the Python SDK's numeric
/// value order reaches the server).
pub fn canonical_query_wire_values(raw_query: &str) -> String {
    let mut pairs = query_pairs(raw_query);
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    join(&pairs)
}

/// Why a signature was refused (for the 401 message and the sim's log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the request has no valid SDK-HMAC-SHA256 Authorization header")]
    Malformed,
    #[error("X-Sdk-Date is missing or malformed")]
    NoDate,
    #[error("X-Sdk-Date is more than {0:?} away from the server's clock")]
    Skew(Duration),
    #[error("signed header {0} is missing from the request")]
    MissingHeader(String),
    #[error("the signature does not match")]
    Mismatch,
}

/// The canonical request and string to sign, exactly as the client must have built them, for a
/// canonical query already built (see [`canonical_query`]).
pub fn string_to_sign(
    method: &str,
    raw_path: &str,
    canonical_query: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    signed: &[String],
) -> Result<(String, String), Refused> {
    let date = header("x-sdk-date").ok_or(Refused::NoDate)?;
    let mut canonical_headers = String::new();
    for name in signed {
        let value = header(name).ok_or_else(|| Refused::MissingHeader(name.clone()))?;
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let payload = match header("x-sdk-content-sha256") {
        Some(v) if v == "UNSIGNED-PAYLOAD" => v,
        _ => hex::encode(Sha256::digest(body)),
    };
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        canonical_uri(raw_path),
        canonical_query,
        canonical_headers,
        signed.join(";"),
        payload
    );
    let sts = format!(
        "SDK-HMAC-SHA256\n{date}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    Ok((canonical, sts))
}

/// Verifies a signed request against `sk`, with the clock at `now`.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    auth: &Authorization,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    sk: &str,
    now: SystemTime,
    max_skew: Duration,
) -> Result<(), Refused> {
    let date = header("x-sdk-date")
        .and_then(|d| parse_sdk_date(&d))
        .ok_or(Refused::NoDate)?;
    let skew = now
        .duration_since(date)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > max_skew {
        return Err(Refused::Skew(max_skew));
    }
    if !auth.signed_headers.iter().any(|h| h == "x-sdk-date")
        || !auth.signed_headers.iter().any(|h| h == "host")
    {
        return Err(Refused::Malformed);
    }
    let expected = hex::decode(&auth.signature).map_err(|_| Refused::Mismatch)?;
    let strict = canonical_query(raw_query);
    let wire_values = canonical_query_wire_values(raw_query);
    let mut queries = vec![strict];
    if wire_values != queries[0] {
        queries.push(wire_values);
    }
    for query in &queries {
        let (_, sts) = string_to_sign(method, raw_path, query, header, body, &auth.signed_headers)?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(sk.as_bytes()).map_err(|_| Refused::Mismatch)?;
        mac.update(sts.as_bytes());
        if mac.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(Refused::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!("../../tests/fixtures/signing-vectors.txt");
    const SK: &str = "SKTESTEXAMPLESECRETKEY0000000000000000000";

    /// Re-reads each official vector as a request and verifies it with the clock at its date.
    #[test]
    fn every_official_vector_verifies() {
        let mut checked = 0;
        for block in VECTORS.split("\n=== ").skip(1) {
            let canonical = block
                .split("--- canonical request\n")
                .nth(1)
                .unwrap()
                .split("\n--- ")
                .next()
                .unwrap();
            let auth = block
                .split("--- Authorization\n")
                .nth(1)
                .unwrap()
                .lines()
                .next()
                .unwrap();
            let lines: Vec<&str> = canonical.split('\n').collect();
            let (method, uri, query) = (lines[0], lines[1], lines[2]);
            let headers: Vec<(String, String)> = lines[3..]
                .iter()
                .take_while(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once(':').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            let body: &[u8] = if method == "POST" {
                br#"{"member":{"address":"192.168.0.10","protocol_port":8080}}"#
            } else {
                b""
            };
            let lookup = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let auth = parse_authorization(auth).unwrap();
            let now = parse_sdk_date("20261128T120000Z").unwrap();
            let path = uri.trim_end_matches('/');
            verify(
                &auth,
                method,
                path,
                query,
                &lookup,
                body,
                SK,
                now,
                Duration::from_secs(900),
            )
            .unwrap();
            assert_eq!(
                verify(
                    &auth,
                    method,
                    path,
                    query,
                    &lookup,
                    body,
                    "wrong",
                    now,
                    Duration::from_secs(900)
                ),
                Err(Refused::Mismatch)
            );
            let later = now + Duration::from_secs(901);
            assert!(matches!(
                verify(
                    &auth,
                    method,
                    path,
                    query,
                    &lookup,
                    body,
                    SK,
                    later,
                    Duration::from_secs(900)
                ),
                Err(Refused::Skew(_))
            ));
            checked += 1;
        }
        assert_eq!(checked, 4);
    }

    /// Signs like the Python SDK: repeated numeric values in numeric order, sent in that order.
    fn python_style(query: &str, sk: &str) -> Authorization {
        let headers = [
            ("host", "127.0.0.1:8443"),
            ("x-sdk-date", "20261128T120000Z"),
        ];
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let signed: Vec<String> = vec!["host".into(), "x-sdk-date".into()];
        let (_, sts) = string_to_sign("GET", "/v3/p/elb/members", query, &lookup, b"", &signed)
            .expect("headers present");
        let mut mac = Hmac::<Sha256>::new_from_slice(sk.as_bytes()).unwrap();
        mac.update(sts.as_bytes());
        Authorization {
            access: "AK".into(),
            signed_headers: signed,
            signature: hex::encode(mac.finalize().into_bytes()),
        }
    }

    #[test]
    fn repeated_values_in_numeric_wire_order_verify_and_tampering_does_not() {
        let headers = [
            ("host", "127.0.0.1:8443"),
            ("x-sdk-date", "20261128T120000Z"),
        ];
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let now = parse_sdk_date("20261128T120000Z").unwrap();
        let check = |auth: &Authorization, wire: &str| {
            verify(
                auth,
                "GET",
                "/v3/p/elb/members",
                wire,
                &lookup,
                b"",
                "sk",
                now,
                Duration::from_secs(900),
            )
        };
        let numeric = "limit=10&protocol_port=9001&protocol_port=10000";
        let auth = python_style(numeric, "sk");
        assert_eq!(check(&auth, numeric), Ok(()), "the Python SDK's order");
        // Keys out of order on the wire still canonicalise to the signed form.
        assert_eq!(
            check(&auth, "protocol_port=9001&protocol_port=10000&limit=10"),
            Ok(())
        );
        for tampered in [
            "limit=10&protocol_port=10000&protocol_port=9001",
            "limit=10&protocol_port=9001",
            "limit=11&protocol_port=9001&protocol_port=10000",
        ] {
            assert_eq!(check(&auth, tampered), Err(Refused::Mismatch), "{tampered}");
        }
        // The reference's order (strings) verifies too, whatever the wire order.
        let strings = "limit=10&protocol_port=10000&protocol_port=9001";
        let auth = python_style(strings, "sk");
        assert_eq!(check(&auth, strings), Ok(()));
        assert_eq!(check(&auth, numeric), Ok(()));
    }

    #[test]
    fn queries_are_recanonicalised_from_the_wire() {
        assert_eq!(
            canonical_query("name=a%20b%2Fc~%2A&address=1&limit=10"),
            "address=1&limit=10&name=a%20b%2Fc~%2A"
        );
        assert_eq!(canonical_query("b=2&a=1&a=0"), "a=0&a=1&b=2");
        assert_eq!(canonical_query_wire_values("b=2&a=1&a=0"), "a=1&a=0&b=2");
        assert_eq!(
            canonical_query("p=9001&p=10000"),
            "p=10000&p=9001",
            "values sort as strings"
        );
        assert_eq!(canonical_uri("/v3/x/elb/members"), "/v3/x/elb/members/");
    }
}
