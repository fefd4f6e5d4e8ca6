//! elb-sim's authentication, as the real gateway and IAM answer: password tokens (201, `X-Subject-Token`,
//! `expires_at`) and their expiry, missing or bad credentials (401 `APIGW.0301`), wrong project and
//! denied actions (403), and AK/SK `SDK-HMAC-SHA256` signatures made by the agent's signer: accepted
//! when right, refused for a wrong key, a stale or future `X-Sdk-Date`, a changed request, or a
//! temporary key without its security token. A property test shows the agent's signer and elb-sim's
//! verifier agree on random requests, in-process and over the wire.

mod common;
mod simkit;

use std::time::{Duration, SystemTime};

use common::PROJECT;
use elb_drain::secret::Secret;
use elb_drain::sign::{SigningKey, sdk_date, sign};
use elb_sim::scenario::AccessKey;
use elb_sim::{AuthKind, Scenario, Sim};
use proptest::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use simkit::{Api, Key, Signed, eventually, login, request_token};

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const MEMBER: &str = "00000000-0000-4000-8000-000000000001";
const OTHER_PROJECT: &str = "00a3fff0d03c428eac3678da6a7d0f24";
const AK: &str = "AKPERMANENT000000000";
const SK: &str = "permanent-sk-0123456789";
const OTHER_AK: &str = "AKOTHERPROJECT000000";
const DENIED_AK: &str = "AKREADONLY0000000000";

fn scenario() -> Scenario {
    let mut s = Scenario::builder()
        .project(PROJECT)
        .project(OTHER_PROJECT)
        .user("alice", "acme", "pw")
        .user_denied("bob", "acme", "pw2", &["elb:members:delete"])
        .access_key(AK, SK, PROJECT)
        .access_key(OTHER_AK, SK, OTHER_PROJECT)
        .pool(POOL, |p| p)
        .member(POOL, MEMBER, "127.0.1.1", 80)
        .member(
            POOL,
            "00000000-0000-4000-8000-000000000002",
            "127.0.1.2",
            80,
        )
        .instance(elb_sim::scenario::Instance {
            uuid: "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55".into(),
            project_id: PROJECT.into(),
            local_ipv4: "127.0.1.1".into(),
            region_id: None,
            hostname: "web-1".into(),
            name: "web-1".into(),
            agency: true,
            scaling_group_id: None,
        });
    s.access_key.push(AccessKey {
        ak: DENIED_AK.into(),
        sk: SK.into(),
        project_id: PROJECT.into(),
        deny: vec!["elb:members:delete".into(), "elb:members:create".into()],
    });
    s
}

fn pool_path() -> String {
    format!("/v3/{PROJECT}/elb/pools/{POOL}")
}

fn members_path() -> String {
    format!("{}/members", pool_path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_issues_tokens_that_open_the_elb_api() {
    let lifetime = Duration::from_secs(7200);
    let sim = Sim::start(scenario().settings(|s| s.token_lifetime = lifetime))
        .await
        .unwrap();
    let before = SystemTime::now();
    let r = request_token(&sim, "alice", "acme", "pw", PROJECT).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let token = r.header("x-subject-token").expect("X-Subject-Token");
    assert!(token.len() > 32, "{token}");
    assert!(
        r.body["token"].get("id").is_none() && !r.raw.contains(token),
        "the token travels in the header only"
    );
    let expires_at = r.body["token"]["expires_at"].as_str().unwrap();
    // "2026-11-29T12:00:00.000000Z": microseconds and a Z, as IAM writes it.
    assert!(
        expires_at.ends_with('Z') && expires_at.len() == 27,
        "{expires_at}"
    );
    let expires = humantime::parse_rfc3339(expires_at).unwrap();
    let ahead = expires.duration_since(before).unwrap();
    assert!(
        ahead >= lifetime && ahead <= lifetime + Duration::from_secs(5),
        "{ahead:?}"
    );
    assert_eq!(r.body["token"]["project"]["id"], PROJECT);
    assert_eq!(r.body["token"]["methods"], json!(["password"]));

    let api = Api::with_token(&sim, token);
    assert_eq!(api.get(&pool_path()).await.status, 200);
    let log = sim.request_log();
    assert_eq!(
        (log[0].service.as_str(), log[0].auth, log[0].status),
        ("iam", AuthKind::None, 201)
    );
    assert_eq!(
        (log[1].service.as_str(), log[1].auth, log[1].status),
        ("elb", AuthKind::Token, 200)
    );
    // Each login is a new token.
    let again = request_token(&sim, "alice", "acme", "pw", PROJECT).await;
    assert_ne!(again.header("x-subject-token"), Some(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_refuses_bad_logins_in_its_own_error_shape() {
    let sim = Sim::start(scenario()).await.unwrap();
    for (user, domain, password, project) in [
        ("alice", "acme", "wrong", PROJECT),
        ("mallory", "acme", "pw", PROJECT),
        ("alice", "other-domain", "pw", PROJECT),
        ("alice", "acme", "pw", "ffffffffffffffffffffffffffffffff"),
    ] {
        let r = request_token(&sim, user, domain, password, project).await;
        assert_eq!(r.status, 401, "{user}/{domain}/{project}: {}", r.raw);
        assert_eq!(r.body["error"]["code"], 401);
        assert_eq!(r.body["error"]["title"], "Unauthorized");
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(r.header("x-subject-token").is_none());
        assert!(r.body.get("error_code").is_none(), "IAM's shape, not ELB's");
    }
    let anon = Api::anonymous(&sim);
    let r = anon.post("/v3/auth/tokens", json!({"auth": {}})).await;
    assert_eq!(
        (r.status, &r.body["error"]["title"]),
        (400, &json!("Bad Request"))
    );
    let r = anon.get("/v3/auth/tokens").await;
    assert_eq!(r.status, 404);
    assert!(sim.issued_secrets().is_empty(), "no token was issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_after_their_lifetime_and_a_new_one_works() {
    let sim = Sim::start(scenario().settings(|s| s.token_lifetime = Duration::from_secs(1)))
        .await
        .unwrap();
    let r = request_token(&sim, "alice", "acme", "pw", PROJECT).await;
    let expires =
        humantime::parse_rfc3339(r.body["token"]["expires_at"].as_str().unwrap()).unwrap();
    let api = Api::with_token(&sim, r.header("x-subject-token").unwrap());
    assert_eq!(api.get(&pool_path()).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            api.get(&pool_path()).await.status == 401
        })
        .await,
        "the token never expired"
    );
    assert!(SystemTime::now() >= expires, "not before its expires_at");
    let r = api.get(&pool_path()).await;
    assert!(r.assert_error(401, "APIGW.0301").contains("expired"));
    // A refresh: a new token works again.
    let fresh = login(&sim, "alice", "acme", "pw", PROJECT).await;
    assert_eq!(fresh.get(&pool_path()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_tokens_ends_every_token_at_once() {
    let sim = Sim::start(scenario()).await.unwrap();
    let a = login(&sim, "alice", "acme", "pw", PROJECT).await;
    let b = login(&sim, "bob", "acme", "pw2", PROJECT).await;
    assert_eq!(a.get(&pool_path()).await.status, 200);
    sim.expire_tokens();
    for api in [&a, &b] {
        api.get(&pool_path()).await.assert_error(401, "APIGW.0301");
    }
    // Through the admin API as well.
    let c = login(&sim, "alice", "acme", "pw", PROJECT).await;
    assert_eq!(c.get(&pool_path()).await.status, 200);
    let r = simkit::client(&sim)
        .post(format!("{}/tokens/expire", sim.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    c.get(&pool_path()).await.assert_error(401, "APIGW.0301");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_invalid_foreign_and_denied_credentials() {
    let sim = Sim::start(scenario()).await.unwrap();
    // No credential at all, a made-up token: 401 APIGW.0301.
    let r = Api::anonymous(&sim).get(&pool_path()).await;
    r.assert_error(401, "APIGW.0301");
    assert_eq!(sim.request_log()[0].auth, AuthKind::None);
    let r = Api::with_token(&sim, "MIIbogus").get(&pool_path()).await;
    r.assert_error(401, "APIGW.0301");
    // An empty token is ELB's own 403.
    let r = Api::with_token(&sim, "").get(&pool_path()).await;
    r.assert_error(403, "ELB.1102");

    // A token scoped to another project, on this project's path: 403.
    let other = login(&sim, "alice", "acme", "pw", OTHER_PROJECT).await;
    let r = other.get(&pool_path()).await;
    assert!(r.assert_error(403, "APIGW.0302").contains(PROJECT));
    // It does work for its own project.
    let r = other.get(&format!("/v3/{OTHER_PROJECT}/elb/pools")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // An access key of another project, and an X-Project-Id that is not the key's.
    let r = Signed::new(Method::GET, &pool_path(), &Key::permanent(OTHER_AK, SK))
        .send(&sim)
        .await;
    r.assert_error(403, "APIGW.0302");
    let r = Signed::new(Method::GET, &pool_path(), &Key::permanent(AK, SK))
        .project(OTHER_PROJECT)
        .send(&sim)
        .await;
    r.assert_error(403, "APIGW.0302");

    // A policy that denies an action: 403 ELB.9802 naming it; other actions still work.
    let bob = login(&sim, "bob", "acme", "pw2", PROJECT).await;
    let r = bob.delete(&format!("{}/{MEMBER}", members_path())).await;
    assert!(
        r.assert_error(403, "ELB.9802")
            .contains("elb:members:delete")
    );
    assert!(sim.member_exists(POOL, MEMBER));
    assert_eq!(bob.get(&members_path()).await.status, 200);
    let readonly = Key::permanent(DENIED_AK, SK);
    let r = Signed::new(
        Method::DELETE,
        &format!("{}/{MEMBER}", members_path()),
        &readonly,
    )
    .send(&sim)
    .await;
    assert!(
        r.assert_error(403, "ELB.9802")
            .contains("elb:members:delete")
    );
    let r = Signed::new(Method::POST, &members_path(), &readonly)
        .body(json!({"member": {"address": "127.0.1.9", "protocol_port": 80}}))
        .send(&sim)
        .await;
    assert!(
        r.assert_error(403, "ELB.9802")
            .contains("elb:members:create")
    );
    let r = Signed::new(Method::GET, &members_path(), &readonly)
        .send(&sim)
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ak_sk_signed_requests_are_accepted() {
    let sim = Sim::start(scenario()).await.unwrap();
    let key = Key::permanent(AK, SK);
    // A query with repeated keys, out of order, and characters that need encoding.
    let r = Signed::new(
        Method::GET,
        &format!(
            "{}?protocol_port=80&address=127.0.1.2&address=127.0.1.1&name=&limit=10",
            members_path()
        ),
        &key,
    )
    .project(PROJECT)
    .send(&sim)
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = Signed::new(
        Method::GET,
        &format!("{}?address=127.0.1.2&address=127.0.1.1", members_path()),
        &key,
    )
    .send(&sim)
    .await;
    assert_eq!(r.ids("members").len(), 2, "{}", r.raw);
    // Writes with a JSON body, signed over its SHA-256.
    let r = Signed::new(Method::POST, &members_path(), &key)
        .body(json!({"member": {"address": "127.0.1.9", "protocol_port": 8080, "name": "é ü/+&="}}))
        .project(PROJECT)
        .send(&sim)
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(r.body["member"]["name"], "é ü/+&=");
    let id = r.body["member"]["id"].as_str().unwrap().to_owned();
    let r = Signed::new(Method::PUT, &format!("{}/{id}", members_path()), &key)
        .body(json!({"member": {"weight": 0}}))
        .send(&sim)
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // A query value with spaces, slashes and non-ASCII, as a filter: decoded to what was signed.
    let r = Signed::new(
        Method::GET,
        &format!("{}?name=%C3%A9%20%C3%BC%2F%2B%26%3D", members_path()),
        &key,
    )
    .send(&sim)
    .await;
    assert_eq!(r.ids("members"), [id.as_str()], "{}", r.raw);
    let r = Signed::new(Method::DELETE, &format!("{}/{id}", members_path()), &key)
        .send(&sim)
        .await;
    assert_eq!(r.status, 204, "{}", r.raw);
    // Up to 15 minutes of clock difference either way is tolerated.
    for offset in [-14 * 60, 14 * 60] {
        let r = Signed::new(Method::GET, &pool_path(), &key)
            .dated(offset)
            .send(&sim)
            .await;
        assert_eq!(r.status, 200, "{offset}s: {}", r.raw);
    }
    let log = sim.request_log();
    assert!(log.iter().all(|e| e.auth == AuthKind::Aksk), "{log:?}");
    assert_eq!(log.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_bad_signatures_lock_the_key_when_lockout_is_on() {
    let sim = Sim::start(scenario().settings(|s| {
        s.aksk_lockout = true;
        s.aksk_lockout_duration = Duration::from_secs(1);
    }))
    .await
    .unwrap();
    let key = Key::permanent(AK, SK);
    let good = || Signed::new(Method::GET, &pool_path(), &key);
    let bad = || {
        let mut s = Signed::new(Method::GET, &pool_path(), &key);
        s.sk_override = Some("not-the-sk".into());
        s
    };
    // Four failures, then a success: the count starts again.
    for _ in 0..4 {
        bad().send(&sim).await.assert_error(401, "APIGW.0301");
    }
    assert_eq!(good().send(&sim).await.status, 200);
    for _ in 0..4 {
        bad().send(&sim).await.assert_error(401, "APIGW.0301");
    }
    assert_eq!(
        good().send(&sim).await.status,
        200,
        "4 in a row do not lock"
    );
    // Five in a row lock the key: even a correct signature is refused, other keys are not.
    for _ in 0..5 {
        bad().send(&sim).await.assert_error(401, "APIGW.0301");
    }
    let r = good().send(&sim).await;
    assert!(
        r.assert_error(401, "APIGW.0301").contains("locked"),
        "{}",
        r.raw
    );
    let other = Key::permanent(DENIED_AK, SK);
    assert_eq!(
        Signed::new(Method::GET, &pool_path(), &other)
            .send(&sim)
            .await
            .status,
        200
    );
    // The lock ends after aksk_lockout_duration.
    assert!(
        eventually(Duration::from_secs(5), || async {
            good().send(&sim).await.status == 200
        })
        .await,
        "the key stayed locked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_with_401() {
    let sim = Sim::start(scenario()).await.unwrap();
    let key = Key::permanent(AK, SK);
    let path = format!("{}?address=127.0.1.1", members_path());
    let refused = |s: Signed, why: &'static str| {
        let sim = &sim;
        async move {
            let r = s.send(sim).await;
            assert_eq!(r.code(), (401, "APIGW.0301"), "{why}: {}", r.raw);
            r.assert_error(401, "APIGW.0301");
        }
    };
    let mut wrong_sk = Signed::new(Method::GET, &path, &key);
    wrong_sk.sk_override = Some("not-the-sk".into());
    refused(wrong_sk, "wrong SK").await;
    refused(
        Signed::new(
            Method::GET,
            &path,
            &Key::permanent("AKUNKNOWN00000000000", SK),
        ),
        "unknown AK",
    )
    .await;
    refused(
        Signed::new(Method::GET, &path, &key).dated(-16 * 60),
        "X-Sdk-Date 16 min old",
    )
    .await;
    refused(
        Signed::new(Method::GET, &path, &key).dated(16 * 60),
        "X-Sdk-Date 16 min ahead",
    )
    .await;
    let mut other_query = Signed::new(Method::GET, &path, &key);
    other_query.wire_query = Some("address=127.0.1.2".into());
    refused(other_query, "query changed after signing").await;
    let mut other_body = Signed::new(Method::POST, &members_path(), &key)
        .body(json!({"member": {"address": "127.0.1.9", "protocol_port": 80}}));
    other_body.wire_body =
        Some(br#"{"member": {"address": "127.0.1.9", "protocol_port": 81}}"#.to_vec());
    refused(other_body, "body changed after signing").await;
    // A different method or path under the same signature.
    let s = Signed::new(Method::GET, &path, &key);
    let date = sdk_date(s.date);
    let signature = sign(
        "GET",
        &members_path(),
        &[("address".into(), "127.0.1.1".into())],
        &[
            (
                "Host".into(),
                sim.api_url().trim_start_matches("http://").into(),
            ),
            ("X-Sdk-Date".into(), date.clone()),
        ],
        b"",
        &SigningKey {
            ak: AK.into(),
            sk: Secret::new(SK),
            security_token: None,
        },
    );
    for (method, url) in [
        (
            Method::DELETE,
            format!("{}{}/{MEMBER}", sim.api_url(), members_path()),
        ),
        (
            Method::GET,
            format!("{}{}?address=127.0.1.1", sim.api_url(), pool_path()),
        ),
        (
            Method::GET,
            format!("{}{}?address=127.0.1.1", sim.api_url(), members_path()),
        ),
    ] {
        let r = simkit::Reply::from(
            simkit::client(&sim)
                .request(method.clone(), &url)
                .header("X-Sdk-Date", &date)
                .header("Authorization", &signature.authorization)
                .send()
                .await
                .unwrap(),
        )
        .await;
        if url.ends_with("members?address=127.0.1.1") {
            assert_eq!(r.status, 200, "the genuine request passes: {}", r.raw);
        } else {
            r.assert_error(401, "APIGW.0301");
        }
    }
    // Malformed or missing pieces.
    for (authz, date) in [
        (
            "SDK-HMAC-SHA256 Access=AKPERMANENT000000000",
            Some(date.as_str()),
        ),
        ("Bearer abc", Some(date.as_str())),
        (signature.authorization.as_str(), None),
        (
            signature.authorization.as_str(),
            Some("2026-11-28 12:00:00"),
        ),
    ] {
        let mut req = simkit::client(&sim)
            .get(format!(
                "{}{}?address=127.0.1.1",
                sim.api_url(),
                members_path()
            ))
            .header("Authorization", authz);
        if let Some(d) = date {
            req = req.header("X-Sdk-Date", d);
        }
        simkit::Reply::from(req.send().await.unwrap())
            .await
            .assert_error(401, "APIGW.0301");
    }
    assert!(sim.member_exists(POOL, MEMBER), "nothing was deleted");
    assert_eq!(sim.members(POOL).len(), 2, "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_keys_need_their_signed_security_token() {
    let sim = Sim::start(scenario()).await.unwrap();
    let key = Key::from_metadata(&sim).await;
    let r = Signed::new(Method::GET, &members_path(), &key)
        .project(PROJECT)
        .send(&sim)
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        sim.request_log().last().unwrap().auth,
        AuthKind::AkskTemporary
    );
    let r = Signed::new(
        Method::DELETE,
        &format!("{}/{MEMBER}", members_path()),
        &key,
    )
    .send(&sim)
    .await;
    assert_eq!(r.status, 204, "{}", r.raw);

    // Without the token; with a forged one; with the token sent but left out of the signature.
    let mut none = key.clone();
    none.security_token = None;
    let r = Signed::new(Method::GET, &members_path(), &none)
        .send(&sim)
        .await;
    assert!(r.assert_error(401, "APIGW.0301").contains("security token"));
    let mut forged = key.clone();
    forged.security_token = Some("gQforged==".into());
    Signed::new(Method::GET, &members_path(), &forged)
        .send(&sim)
        .await
        .assert_error(401, "APIGW.0301");
    let mut unsigned = Signed::new(Method::GET, &members_path(), &key);
    unsigned.token_signed = false;
    unsigned.send(&sim).await.assert_error(401, "APIGW.0301");
    let mut signed_not_sent = Signed::new(Method::GET, &members_path(), &key);
    signed_not_sent.token_sent = false;
    signed_not_sent
        .send(&sim)
        .await
        .assert_error(401, "APIGW.0301");
    assert!(
        sim.request_log()
            .iter()
            .skip(3)
            .all(|e| e.auth == AuthKind::AkskTemporary && e.status == 401)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_temporary_key_is_refused() {
    let sim = Sim::start(scenario().settings(|s| s.temp_key_lifetime = Duration::from_secs(1)))
        .await
        .unwrap();
    let key = Key::from_metadata(&sim).await;
    let r = Signed::new(Method::GET, &pool_path(), &key)
        .send(&sim)
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(
        eventually(Duration::from_secs(5), || async {
            Signed::new(Method::GET, &pool_path(), &key)
                .send(&sim)
                .await
                .status
                == 401
        })
        .await,
        "the temporary key never expired"
    );
    let r = Signed::new(Method::GET, &pool_path(), &key)
        .send(&sim)
        .await;
    assert!(r.assert_error(401, "APIGW.0301").contains("expired"));
}

fn segment() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9._~ %+=*!$&é/-]{0,12}").expect("regex")
}

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[A-Za-z0-9._~ %+=*!$&é/?#-]{0,16}").expect("regex")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The agent signs the path as it goes on the wire (segments percent-encoded) and the query it
    /// sends; elb-sim's verifier, seeing exactly that, accepts it, and refuses another body or key.
    #[test]
    fn signer_and_verifier_agree(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        segments in prop::collection::vec(segment(), 1..5),
        query in prop::collection::vec((text(), text()), 0..4),
        body in prop::collection::vec(any::<u8>(), 0..64),
        token in prop::option::of("[A-Za-z0-9+/=]{8,32}"),
        extra in prop::option::of(("X-[A-Za-z]{1,8}(_[a-z]{1,4})?", "[ -~]{0,12}")),
    ) {
        let wire_path: String = segments
            .iter()
            .map(|s| format!("/{}", elb_drain::sign::encode(s)))
            .collect();
        let key = SigningKey {
            ak: "AKPROP".into(),
            sk: Secret::new("sk-prop"),
            security_token: token.clone().map(Secret::new),
        };
        let now = SystemTime::now();
        let mut headers = vec![
            ("Host".to_owned(), "127.0.0.1:1".to_owned()),
            ("X-Sdk-Date".to_owned(), sdk_date(now)),
        ];
        if let Some(t) = &token {
            headers.push(("X-Security-Token".to_owned(), t.clone()));
        }
        if let Some((name, value)) = &extra {
            headers.push((name.clone(), value.clone()));
        }
        let signed = sign(method, &wire_path, &query, &headers, &body, &key);
        let wire_query = elb_drain::sign::canonical_query(&query);
        let auth = elb_sim::auth::parse_authorization(&signed.authorization).expect("parses");
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let skew = Duration::from_secs(900);
        let verify = |body: &[u8], sk: &str| {
            elb_sim::auth::verify(&auth, method, &wire_path, &wire_query, &lookup, body, sk, now, skew)
        };
        prop_assert_eq!(verify(&body, "sk-prop"), Ok(()));
        let mut other = body.clone();
        other.push(b'x');
        prop_assert!(verify(&other, "sk-prop").is_err());
        prop_assert!(verify(&body, "sk-other").is_err());
        // A header name with `_` is never signed.
        if let Some((name, _)) = &extra {
            prop_assert_eq!(auth.signed_headers.contains(&name.to_ascii_lowercase()), !name.contains('_'));
        }
    }
}

/// The same agreement end to end: random names are stored through a signed POST, then found again by
/// a signed GET filtering on them, so the query's wire encoding survives HTTP both ways.
#[test]
fn signed_requests_with_random_text_pass_over_the_wire() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = rt.block_on(Sim::start(scenario())).unwrap();
    let key = Key::permanent(AK, SK);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    let port = std::sync::atomic::AtomicU16::new(10_000);
    runner
        .run(&text(), |name| {
            let port = port.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(async {
                let r = Signed::new(Method::POST, &members_path(), &key)
                    .body(json!({"member": {"address": "127.0.3.1", "protocol_port": port, "name": name}}))
                    .send(&sim)
                    .await;
                prop_assert_eq!(r.status, 201, "{}", r.raw);
                let id = r.body["member"]["id"].clone();
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("name", &name)
                    .append_pair("protocol_port", &port.to_string())
                    .finish();
                let r = Signed::new(Method::GET, &format!("{}?{query}", members_path()), &key)
                    .send(&sim)
                    .await;
                prop_assert_eq!(r.status, 200, "{}", r.raw);
                let found: Vec<Value> = r.body["members"].as_array().cloned().unwrap_or_default();
                prop_assert_eq!(found.len(), 1, "{:?}: {}", name, r.raw);
                prop_assert_eq!(&found[0]["id"], &id);
                Ok(())
            })
        })
        .unwrap();
}
