//! The agent's signer and elb-sim's verifier are two implementations of the same algorithm from the
//! reference; on random requests they must agree (and both reproduce the official vectors, in their
//! own unit tests).

use std::time::{Duration, SystemTime};

use elb_drain::secret::Secret;
use elb_drain::sign::{SigningKey, sdk_date, sign};
use proptest::prelude::*;

fn segment() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9._~ %+=*!$-]{0,12}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn signer_and_verifier_agree(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        segments in prop::collection::vec(segment(), 1..5),
        query in prop::collection::vec((segment(), segment()), 0..4),
        body in prop::collection::vec(any::<u8>(), 0..64),
        token in prop::option::of("[A-Za-z0-9+/=]{8,32}"),
    ) {
        // The agent signs the URL path as it goes on the wire (segments percent-encoded), and the
        // verifier sees exactly that.
        let wire_path: String = segments.iter().map(|s| format!("/{}", elb_drain::sign::encode(s))).collect();
        let key = SigningKey { ak: "AKPROP".into(), sk: Secret::new("sk-prop"), security_token: token.clone().map(Secret::new) };
        let now = SystemTime::now();
        let mut headers = vec![("Host".to_owned(), "127.0.0.1:1".to_owned()), ("X-Sdk-Date".to_owned(), sdk_date(now))];
        if let Some(t) = &token {
            headers.push(("X-Security-Token".to_owned(), t.clone()));
        }
        let signed = sign(method, &wire_path, &query, &headers, &body, &key);
        let wire_query = elb_drain::sign::canonical_query(&query);
        let auth = elb_sim::auth::parse_authorization(&signed.authorization).expect("parses");
        let lookup = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let verified = elb_sim::auth::verify(&auth, method, &wire_path, &wire_query, &lookup, &body, "sk-prop", now, Duration::from_secs(900));
        prop_assert_eq!(verified, Ok(()));
        // And a different body or key is refused.
        let mut other = body.clone();
        other.push(b'x');
        prop_assert!(elb_sim::auth::verify(&auth, method, &wire_path, &wire_query, &lookup, &other, "sk-prop", now, Duration::from_secs(900)).is_err());
        prop_assert!(elb_sim::auth::verify(&auth, method, &wire_path, &wire_query, &lookup, &body, "sk-other", now, Duration::from_secs(900)).is_err());
    }
}
