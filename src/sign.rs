//! The `SDK-HMAC-SHA256` request signature of Huawei Cloud APIs (AK/SK authentication), implemented from
//! the algorithm in the reference and checked byte for byte against the official SDK's output
//! (`signing-vectors.txt`, in the tests below).
//!
//! Pure functions, no I/O: the caller supplies the date, so signing is deterministic and testable.

use std::time::SystemTime;

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

pub const ALGORITHM: &str = "SDK-HMAC-SHA256";

/// Everything but the unreserved characters `A-Z a-z 0-9 - _ . ~` is percent-encoded.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An access key pair; `security_token` for temporary keys (agency credentials).
#[derive(Clone, Debug)]
pub struct SigningKey {
    pub ak: String,
    pub sk: Secret,
    pub security_token: Option<Secret>,
}

/// The intermediate strings and the header value, so tests can compare every step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub authorization: String,
}

/// `YYYYMMDDTHHMMSSZ` in UTC, the `X-Sdk-Date` format.
pub fn sdk_date(t: SystemTime) -> String {
    // humantime gives "2026-11-28T12:00:00Z"; drop the separators.
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

/// The canonical URI: each path segment percent-encoded, always ending in `/`. Segments are decoded
/// first, as the official SDK does, so an already-encoded URL path (what goes on the wire) and its raw
/// form canonicalise alike.
pub fn canonical_uri(path: &str) -> String {
    let mut out: String = path
        .split('/')
        .map(|seg| encode(&percent_encoding::percent_decode_str(seg).decode_utf8_lossy()))
        .collect::<Vec<_>>()
        .join("/");
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// The canonical query, which is also what goes on the wire: pairs percent-encoded, sorted by key and
/// then by value (as strings, byte-wise), joined by `&`.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> =
        pairs.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Signs a request. `headers` must already hold every header that will be sent and signed, including
/// `Host`, `X-Sdk-Date` and (for temporary keys) `X-Security-Token`; names are matched case-insensitively,
/// names containing `_` are not signed.
pub fn sign(
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    body: &[u8],
    key: &SigningKey,
) -> Signed {
    let mut canon: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !name.contains('_'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    canon.sort();
    let signed_headers = canon
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = canon.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let payload_hash = match canon.iter().find(|(n, _)| n == "x-sdk-content-sha256") {
        Some((_, v)) if v == "UNSIGNED-PAYLOAD" => v.clone(),
        _ => sha256_hex(body),
    };
    let date = canon
        .iter()
        .find(|(n, _)| n == "x-sdk-date")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        canonical_uri(path),
        canonical_query(query),
        canonical_headers,
        signed_headers,
        payload_hash
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{date}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key.sk.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let authorization = format!(
        "{ALGORITHM} Access={}, SignedHeaders={signed_headers}, Signature={signature}",
        key.ak
    );
    Signed {
        canonical_request,
        string_to_sign,
        authorization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!("../tests/fixtures/signing-vectors.txt");

    fn key(token: Option<&str>) -> SigningKey {
        SigningKey {
            ak: "AKTESTEXAMPLE0000000".into(),
            sk: Secret::new("SKTESTEXAMPLESECRETKEY0000000000000000000"),
            security_token: token.map(Secret::new),
        }
    }

    fn s(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    /// The expected sections of the `n`th vector (canonical request, string to sign, Authorization).
    fn vector(n: usize) -> (String, String, String) {
        let block = VECTORS.split("\n=== ").nth(n + 1).expect("vector present");
        let section = |name: &str| {
            let start = block.find(&format!("--- {name}\n")).expect(name) + name.len() + 5;
            let rest = &block[start..];
            let end = rest
                .find("\n--- ")
                .unwrap_or(rest.trim_end_matches('\n').len());
            rest[..end].to_owned()
        };
        (
            section("canonical request"),
            section("string to sign"),
            section("Authorization"),
        )
    }

    fn check(n: usize, signed: Signed) {
        let (canonical, sts, auth) = vector(n);
        assert_eq!(
            signed.canonical_request, canonical,
            "vector {n}: canonical request"
        );
        assert_eq!(signed.string_to_sign, sts, "vector {n}: string to sign");
        assert_eq!(signed.authorization, auth, "vector {n}: Authorization");
    }

    const PID: &str = "99a3fff0d03c428eac3678da6a7d0f24";
    const DATE: &str = "20261128T120000Z";

    #[test]
    fn vector_1_delete_member() {
        let path = "/v3/99a3fff0d03c428eac3678da6a7d0f24/elb/pools/36ce7086-a496-4666-9064-5ba0e6840c75/members/1923923e-fe8a-484f-bdbc-e11559b1f48f";
        let headers = [
            s("Host", "127.0.0.1:8443"),
            s("X-Project-Id", PID),
            s("X-Sdk-Date", DATE),
        ];
        check(0, sign("DELETE", path, &[], &headers, b"", &key(None)));
    }

    #[test]
    fn vector_2_list_all_members() {
        let query = [
            s("address", "192.168.0.10"),
            s("limit", "2000"),
            s("protocol_port", "8080"),
        ];
        let headers = [
            s("Content-Type", "application/json"),
            s("Host", "127.0.0.1:8443"),
            s("X-Project-Id", PID),
            s("X-Sdk-Date", DATE),
        ];
        check(
            1,
            sign(
                "GET",
                &format!("/v3/{PID}/elb/members"),
                &query,
                &headers,
                b"",
                &key(None),
            ),
        );
    }

    #[test]
    fn vector_3_create_member_with_a_security_token() {
        let body = br#"{"member":{"address":"192.168.0.10","protocol_port":8080}}"#;
        let headers = [
            s("Content-Type", "application/json;charset=UTF-8"),
            s("Host", "127.0.0.1:8443"),
            s("X-Project-Id", PID),
            s("X-Sdk-Date", DATE),
            s("X-Security-Token", "TEMPTOKENEXAMPLE"),
        ];
        let path = format!("/v3/{PID}/elb/pools/36ce7086-a496-4666-9064-5ba0e6840c75/members");
        check(
            2,
            sign(
                "POST",
                &path,
                &[],
                &headers,
                body,
                &key(Some("TEMPTOKENEXAMPLE")),
            ),
        );
    }

    #[test]
    fn vector_4_query_needing_percent_encoding() {
        let query = [
            s("protocol_port", "8080"),
            s("address", "192.168.0.10"),
            s("limit", "10"),
            s("name", "a b/c~*"),
        ];
        let headers = [
            s("Content-Type", "application/json"),
            s("Host", "127.0.0.1:8443"),
            s("X-Project-Id", PID),
            s("X-Sdk-Date", DATE),
            s("X-Security-Token", "gQpjbi1ub3J0aC00EXAMPLE+/="),
        ];
        let path = format!("/v3/{PID}/elb/pools/36ce7086-a496-4666-9064-5ba0e6840c75/members");
        check(
            3,
            sign(
                "GET",
                &path,
                &query,
                &headers,
                b"",
                &key(Some("gQpjbi1ub3J0aC00EXAMPLE+/=")),
            ),
        );
    }

    #[test]
    fn sdk_date_is_compact_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_867_200);
        assert_eq!(sdk_date(t), "20261128T120000Z");
    }

    #[test]
    fn headers_with_underscores_are_not_signed_and_the_unsigned_payload_marker_is_honoured() {
        let headers = [
            s("Host", "h"),
            s("X_Custom", "x"),
            s("X-Sdk-Date", DATE),
            s("X-Sdk-Content-Sha256", "UNSIGNED-PAYLOAD"),
        ];
        let signed = sign("PUT", "/a", &[], &headers, b"body", &key(None));
        assert!(
            signed
                .authorization
                .contains("SignedHeaders=host;x-sdk-content-sha256;x-sdk-date,")
        );
        assert!(signed.canonical_request.ends_with("\nUNSIGNED-PAYLOAD"));
    }

    proptest::proptest! {
        #[test]
        fn canonicalisation_never_panics(path in ".{0,64}", k in ".{0,16}", v in ".{0,16}", body in proptest::collection::vec(0u8.., 0..64)) {
            let signed = sign("GET", &path, &[(k, v)], &[s("Host", "h")], &body, &key(None));
            proptest::prop_assert!(signed.authorization.starts_with(ALGORITHM));
            proptest::prop_assert!(canonical_uri(&path).ends_with('/'));
        }

        /// The client puts the canonical query on the wire and the signer reads the pairs back from the
        /// URL: that round trip must give the same canonical query, whatever the keys and values.
        #[test]
        fn the_wire_query_is_the_canonical_query(pairs in proptest::collection::vec((".{1,12}", ".{0,12}"), 0..6)) {
            let canonical = canonical_query(&pairs);
            let mut url = url::Url::parse("https://elb.example.com/v3/p/elb/pools").unwrap();
            url.set_query(if canonical.is_empty() { None } else { Some(&canonical) });
            proptest::prop_assert_eq!(url.query().unwrap_or(""), canonical.as_str());
            let back: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            proptest::prop_assert_eq!(canonical_query(&back), canonical);
        }
    }
}
