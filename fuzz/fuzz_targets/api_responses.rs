//! Every answer the cloud client parses, from bytes a hostile or broken endpoint could send: ELB member,
//! pool and list pages, the IAM token answer, the metadata service's identity, addresses and keys, the
//! AS hook list, and the error body of any failed call (AS callbacks included: they answer 204 or an
//! error). The same bytes go through every parser, so a corpus entry found for one helps the others.
//!
//! Checked: no panic; a body that cannot be used is a `Decode` error naming the operation or path; an
//! error body becomes an `Api` error that keeps the status and never an empty code or message.

#![no_main]

use elb_drain::cloud::{CloudError, api_error, autoscaling, elb, iam, metadata};
use elb_drain::drain::{Engine, Plan};
use elb_drain::ids::PoolId;
use libfuzzer_sys::fuzz_target;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use std::time::Duration;

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";

/// A parse that failed must say which call it was.
fn names_op<T>(result: Result<T, CloudError>, op: &str) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(
                matches!(e, CloudError::Decode { .. }),
                "not a decode error: {e:?}"
            );
            let text = e.to_string();
            assert!(text.contains(op), "{text:?} does not name {op:?}");
            None
        }
    }
}

fuzz_target!(|body: &[u8]| {
    let pool = PoolId::parse(POOL).expect("a valid pool id");
    if let Some(m) = names_op(elb::parse_member("ShowMember", body), "ShowMember") {
        let _ = m.health();
        let _ = names_op(elb::membership(&pool, "ShowMember", &m), "ShowMember");
    }
    if let Some(p) = names_op(elb::parse_pool("ShowPool", body), "ShowPool")
        && let Some(t) = p.connection_drain_timeout()
    {
        assert!(!t.is_zero());
        // As the agent does after ShowPool: the timeout may lower the drain deadline, never panic.
        let plan = Plan {
            settle: Duration::from_secs(2),
            timeout: Duration::from_secs(300),
            poll_interval: Duration::from_millis(200),
        };
        let t0 = tokio::time::Instant::now();
        let mut engine = Engine::new(plan, t0);
        engine.deregistered(t0, false);
        engine.lb_connection_drain(POOL, t, t0);
        assert!(engine.deadline() <= t0 + plan.timeout);
    }
    if let Some((members, next)) =
        names_op(elb::parse_members_page("ListMembers", body), "ListMembers")
    {
        if members.is_empty() {
            assert!(next.is_none(), "an empty page must be the last");
        }
        if let Some(n) = &next {
            assert!(!n.is_empty());
        }
        for m in &members {
            let _ = m.health();
            let _ = names_op(elb::membership(&pool, "ListMembers", m), "ListMembers");
        }
    }
    let _ = names_op(elb::parse_pools_page("ListPools", body), "ListPools");
    let _ = names_op(
        autoscaling::parse_hooks("ListHookInstances", body),
        "ListHookInstances",
    );
    let _ = names_op(
        autoscaling::parse_hook_kinds("ListLifeCycleHooks", body),
        "ListLifeCycleHooks",
    );

    let mut headers = HeaderMap::new();
    headers.insert("x-subject-token", HeaderValue::from_static("tok"));
    let _ = names_op(
        iam::parse_token("IAM CreateToken", &headers, body),
        "IAM CreateToken",
    );
    let _ = iam::parse_time(&String::from_utf8_lossy(body));

    let _ = names_op(metadata::parse_identity(body), "meta_data.json");
    let _ = names_op(metadata::parse_local_ipv4(body), "local-ipv4");
    let _ = names_op(metadata::parse_local_ipv4s(body), "network_data.json");
    let _ = names_op(metadata::parse_security_key(body), "securitykey");

    for status in [400u16, 401, 404, 409, 429, 500] {
        let e = api_error(
            "CompleteLifecycleAction",
            StatusCode::from_u16(status).expect("a valid status"),
            &HeaderMap::new(),
            body,
        );
        assert_eq!(e.status(), Some(status));
        assert!(
            e.code()
                .is_none_or(|c| !c.is_empty() && !c.bytes().all(|b| b.is_ascii_digit()))
        );
        assert!(e.message().is_none_or(|m| !m.trim().is_empty()));
        let text = e.to_string();
        assert!(text.starts_with("CompleteLifecycleAction: HTTP "), "{text}");
        // Classification must not panic either; it decides retries.
        let _ = (
            e.is_retryable(),
            e.is_configuration(),
            e.is_auth(),
            e.is_not_found(),
        );
    }
});
