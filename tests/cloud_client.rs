//! The cloud client's request path against a loopback stub that answers canned HTTP: retries and
//! `Retry-After`, the single 401 refresh, no retry of client errors, transport failures, the body size
//! bound, redirects refused, 404 classification, and what an AK/SK-signed request looks like on the wire.
//!
//! A stub rather than elb-sim where the test needs answers no real API gives (endless bodies,
//! redirects, a cut connection at a chosen moment) and exact control of each answer's bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elb_drain::cloud::{self, CloudError, DeleteOutcome, Elb, HttpSettings, RetryPolicy};
use elb_drain::credentials::{AkSk, Credential, StaticToken};
use elb_drain::ids::{MemberId, PoolId, ProjectId};
use elb_drain::secret::Secret;
use elb_drain::sign::{self, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const MEMBER: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";

/// One request as the stub received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the stub does with the next request.
enum Canned {
    /// These bytes, then close.
    Raw(Vec<u8>),
    /// Close without answering.
    Close,
    /// A 200 whose body never ends (chunked), or that declares `Some(length)` and streams it.
    Endless(Option<u64>),
}

fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Canned {
    let mut text = format!(
        "HTTP/1.1 {status} Canned\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        text.push_str(&format!("{n}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    Canned::Raw(text.into_bytes())
}

fn json(status: u16, body: &str) -> Canned {
    resp(status, &[("Content-Type", "application/json")], body)
}

/// A loopback HTTP stub; stops (its task aborted) on drop.
struct Stub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Body bytes written by `Endless` answers.
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    async fn start(script: Vec<Canned>) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicU64::new(0));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let (s, w) = (seen.clone(), written.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (s, w, script) = (s.clone(), w.clone(), script.clone());
                tokio::spawn(serve(conn, s, w, script));
            }
        });
        Stub {
            addr,
            seen,
            written,
            task,
        }
    }

    fn url(&self) -> reqwest::Url {
        format!("http://{}", self.addr).parse().expect("url")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut conn: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    written: Arc<AtomicU64>,
    script: Arc<Mutex<std::collections::VecDeque<Canned>>>,
) {
    let Some(req) = read_request(&mut conn).await else {
        return;
    };
    seen.lock().unwrap().push(req);
    let next = script.lock().unwrap().pop_front();
    match next {
        None => {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 500 Unscripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
        Some(Canned::Raw(bytes)) => {
            let _ = conn.write_all(&bytes).await;
        }
        Some(Canned::Close) => {}
        Some(Canned::Endless(declared)) => {
            let head = match declared {
                Some(n) => format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n"),
                None => "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            };
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 64 * 1024];
            // Bounded: at most 200 MiB, whatever the client does.
            for _ in 0..3200 {
                let ok = match declared {
                    Some(_) => conn.write_all(&chunk).await.is_ok(),
                    None => {
                        conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                            .await
                            .is_ok()
                            && conn.write_all(&chunk).await.is_ok()
                            && conn.write_all(b"\r\n").await.is_ok()
                    }
                };
                if !ok {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
        }
    }
}

async fn read_request(conn: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = conn.read(&mut tmp).await.ok()?;
        if n == 0 || buf.len() > 1 << 20 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let at = Instant::now();
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Seen {
        method,
        target,
        headers,
        body,
        at,
    })
}

fn http() -> reqwest::Client {
    cloud::http_client(&HttpSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ca_file: None,
        allow_insecure_http: false,
    })
    .expect("client")
}

fn quick(deadline: Duration) -> RetryPolicy {
    RetryPolicy {
        deadline,
        base: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        jitter: true,
    }
}

fn elb_with(url: reqwest::Url, credential: Arc<dyn Credential>, retry: RetryPolicy) -> Elb {
    Elb::new(
        http(),
        url,
        ProjectId::parse(PROJECT).unwrap(),
        credential,
        retry,
    )
}

fn token() -> Arc<dyn Credential> {
    Arc::new(StaticToken::new(Secret::new("tok-1"), None))
}

fn elb(stub: &Stub) -> Elb {
    elb_with(stub.url(), token(), quick(Duration::from_secs(10)))
}

fn ids() -> (PoolId, MemberId) {
    (
        PoolId::parse(POOL).unwrap(),
        MemberId::parse(MEMBER).unwrap(),
    )
}

#[tokio::test]
async fn transient_errors_are_retried_and_retry_after_is_honoured() {
    let stub = Stub::start(vec![
        resp(
            503,
            &[("Retry-After", "1")],
            r#"{"error_code":"ELB.8906","error_msg":"unavailable"}"#,
        ),
        json(
            429,
            r#"{"error_code":"APIGW.0308","error_msg":"throttled"}"#,
        ),
        json(409, r#"{"error_code":"ELB.8907","error_msg":"busy"}"#),
        resp(204, &[], ""),
    ])
    .await;
    let (pool, member) = ids();
    let outcome = elb(&stub).delete_member(&pool, &member).await;
    assert_eq!(outcome.expect("deleted"), DeleteOutcome::Deleted);
    let seen = stub.seen();
    assert_eq!(seen.len(), 4, "503, 429, 409, then 204");
    assert!(seen.iter().all(|s| {
        s.method == "DELETE"
            && s.target == format!("/v3/{PROJECT}/elb/pools/{POOL}/members/{MEMBER}")
            && s.header("X-Auth-Token") == Some("tok-1")
            && s.header("User-Agent")
                .is_some_and(|u| u.starts_with("elb-drain/"))
    }));
    let gap = |i: usize| seen[i + 1].at - seen[i].at;
    assert!(
        gap(0) >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {:?}",
        gap(0)
    );
    assert!(
        gap(1) < Duration::from_millis(500) && gap(2) < Duration::from_millis(500),
        "without Retry-After the backoff is the policy's (ms here): {:?} {:?}",
        gap(1),
        gap(2)
    );
}

#[tokio::test]
async fn client_errors_are_not_retried_and_keep_the_request_id() {
    for (status, code) in [(400, "ELB.8902"), (403, "ELB.9802"), (409, "ELB.8905")] {
        let stub = Stub::start(vec![
            resp(
                status,
                &[
                    ("X-Request-Id", "req-42"),
                    ("Content-Type", "application/json"),
                ],
                &format!(r#"{{"error_code":"{code}","error_msg":"no"}}"#),
            ),
            resp(204, &[], ""),
        ])
        .await;
        let (pool, member) = ids();
        let err = elb(&stub)
            .delete_member(&pool, &member)
            .await
            .expect_err("refused");
        assert_eq!(
            (err.status(), err.code(), err.request_id()),
            (Some(status), Some(code), Some("req-42"))
        );
        assert!(
            err.to_string().starts_with(&format!(
                "DeleteMember pool={POOL} member={MEMBER}: HTTP {status}"
            )),
            "{err}"
        );
        assert_eq!(stub.seen().len(), 1, "{status} {code} is not retried");
    }
}

#[tokio::test]
async fn a_401_refreshes_the_credential_once_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    // The operator rotated the token on disk after the agent read it.
    std::fs::write(&file, "tok-2\n").unwrap();
    let credential = Arc::new(StaticToken::new(Secret::new("tok-1"), Some(file)));
    let unauthorized = || json(401, r#"{"error_code":"APIGW.0301","error_msg":"expired"}"#);
    let stub = Stub::start(vec![unauthorized(), unauthorized(), resp(204, &[], "")]).await;
    let (pool, member) = ids();
    let err = elb_with(stub.url(), credential, quick(Duration::from_secs(10)))
        .delete_member(&pool, &member)
        .await
        .expect_err("still refused after one refresh");
    assert!(err.is_auth(), "{err}");
    let tokens: Vec<_> = stub
        .seen()
        .iter()
        .map(|s| s.header("X-Auth-Token").unwrap_or("").to_owned())
        .collect();
    assert_eq!(tokens, ["tok-1", "tok-2"], "re-read once, then given up");
}

#[tokio::test]
async fn connection_refused_is_retried_until_the_deadline() {
    // A port with nothing listening: bind, note it, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url: reqwest::Url = format!("http://{addr}").parse().unwrap();
    let deadline = Duration::from_millis(400);
    let started = Instant::now();
    let (pool, member) = ids();
    let err = elb_with(url, token(), quick(deadline))
        .delete_member(&pool, &member)
        .await
        .expect_err("nothing listens");
    let took = started.elapsed();
    match &err {
        CloudError::GaveUp { attempts, last, .. } => {
            assert!(*attempts >= 3, "{attempts} attempts");
            assert!(matches!(**last, CloudError::Transport { .. }), "{last}");
        }
        other => panic!("expected GaveUp, got {other}"),
    }
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(2),
        "gave up after {took:?}, the deadline is {deadline:?}"
    );
}

#[tokio::test]
async fn a_connection_cut_without_an_answer_is_retried() {
    let stub = Stub::start(vec![Canned::Close, resp(204, &[], "")]).await;
    let (pool, member) = ids();
    assert_eq!(
        elb(&stub)
            .delete_member(&pool, &member)
            .await
            .expect("deleted"),
        DeleteOutcome::Deleted
    );
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn an_endless_body_is_refused_without_being_buffered_or_fetched_again() {
    for declared in [None, Some(100 * 1024 * 1024)] {
        let stub = Stub::start(vec![Canned::Endless(declared), Canned::Endless(declared)]).await;
        let started = Instant::now();
        let err = elb(&stub)
            .show_pool(&PoolId::parse(POOL).unwrap())
            .await
            .expect_err("too large");
        assert!(
            matches!(err, CloudError::TooLarge { limit, .. } if limit == cloud::MAX_BODY),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(stub.seen().len(), 1, "not retried: {declared:?}");
        // What the stub managed to push is the limit plus the socket buffers, far from 100 MiB.
        let written = stub.written.load(Ordering::SeqCst);
        assert!(written < 40 * 1024 * 1024, "{written} bytes written");
    }
}

#[tokio::test]
async fn a_503_with_a_huge_body_is_still_a_503_and_retried() {
    let mut huge = String::from(r#"{"error_code":"ELB.8906","error_msg":"unavailable","pad":""#);
    huge.push_str(&" ".repeat(6 * 1024 * 1024));
    huge.push_str(r#""}"#);
    let stub = Stub::start(vec![json(503, &huge), resp(204, &[], "")]).await;
    let (pool, member) = ids();
    assert_eq!(
        elb(&stub)
            .delete_member(&pool, &member)
            .await
            .expect("deleted"),
        DeleteOutcome::Deleted
    );
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let elsewhere = Stub::start(vec![resp(204, &[], "")]).await;
    let location = format!(
        "http://{}/v3/{PROJECT}/elb/pools/{POOL}/members/{MEMBER}",
        elsewhere.addr
    );
    let stub = Stub::start(vec![resp(307, &[("Location", &location)], "")]).await;
    let (pool, member) = ids();
    let err = elb(&stub)
        .delete_member(&pool, &member)
        .await
        .expect_err("a redirect is an error");
    assert_eq!(err.status(), Some(307), "{err}");
    assert!(
        elsewhere.seen().is_empty(),
        "the token went nowhere else: {:?}",
        elsewhere.seen()
    );
}

#[tokio::test]
async fn a_404_is_success_for_the_member_and_an_error_for_the_pool_or_a_missing_api() {
    let (pool, member) = ids();
    let gone = json(
        404,
        &format!(
            r#"{{"error_code":"ELB.8904","error_msg":"Member {MEMBER} could not be found."}}"#
        ),
    );
    let no_pool = || {
        json(
            404,
            &format!(
                r#"{{"error_code":"ELB.8904","error_msg":"Pool {POOL} could not be found."}}"#
            ),
        )
    };
    let no_api = || {
        json(
            404,
            r#"{"error_code":"APIGW.0101","error_msg":"The API does not exist or has not been published in the environment"}"#,
        )
    };
    let pool_json = format!(r#"{{"pool":{{"id":"{POOL}","name":"p","protocol":"TCP"}}}}"#);

    let stub = Stub::start(vec![gone]).await;
    let r = elb(&stub).delete_member(&pool, &member).await;
    assert_eq!(r.expect("already gone"), DeleteOutcome::AlreadyGone);
    assert_eq!(stub.seen().len(), 1);

    let stub = Stub::start(vec![no_pool()]).await;
    let err = elb(&stub).delete_member(&pool, &member).await.unwrap_err();
    assert!(matches!(err, CloudError::PoolNotFound { .. }), "{err}");
    assert!(err.is_configuration());

    // The gateway's 404 on the DELETE, and the pool is there: the member is what is missing.
    let stub = Stub::start(vec![no_api(), json(200, &pool_json)]).await;
    let r = elb(&stub).delete_member(&pool, &member).await;
    assert_eq!(r.expect("already gone"), DeleteOutcome::AlreadyGone);
    let seen = stub.seen();
    assert_eq!(
        (seen[1].method.as_str(), seen[1].target.as_str()),
        ("GET", format!("/v3/{PROJECT}/elb/pools/{POOL}").as_str())
    );

    // The gateway's 404 everywhere: a wrong endpoint, neither "already gone" nor the pool's fault.
    let stub = Stub::start(vec![no_api(), no_api()]).await;
    let err = elb(&stub).delete_member(&pool, &member).await.unwrap_err();
    assert_eq!(err.code(), Some("APIGW.0101"), "{err}");
    assert!(!matches!(err, CloudError::PoolNotFound { .. }));
    assert!(err.is_configuration());

    // The gateway's 404, then ShowPool says the pool is gone.
    let stub = Stub::start(vec![no_api(), no_pool()]).await;
    let err = elb(&stub).delete_member(&pool, &member).await.unwrap_err();
    assert!(matches!(err, CloudError::PoolNotFound { .. }), "{err}");
}

#[tokio::test]
async fn aksk_requests_carry_a_signature_computable_from_the_wire() {
    let stub = Stub::start(vec![json(
        200,
        r#"{"members":[],"page_info":{"current_count":0}}"#,
    )])
    .await;
    let key = SigningKey {
        ak: "AKSTUB00000000000000".into(),
        sk: Secret::new("sk-stub"),
        security_token: Some(Secret::new("tmp+/=token")),
    };
    let credential = Arc::new(AkSk::new(
        key.clone(),
        Some(ProjectId::parse(PROJECT).unwrap()),
    ));
    let elb = elb_with(stub.url(), credential, quick(Duration::from_secs(5)));
    let members = elb
        .list_members(
            &PoolId::parse(POOL).unwrap(),
            &[
                ("name", "a b/c~*".to_owned()),
                ("address", "10.0.0.1".to_owned()),
            ],
        )
        .await
        .expect("listed");
    assert!(members.is_empty());
    let seen = &stub.seen()[0];
    // The wire query is the canonical one: sorted, percent-encoded, `~` kept.
    let (path, query) = seen.target.split_once('?').expect("a query");
    assert_eq!(query, "address=10.0.0.1&limit=2000&name=a%20b%2Fc~%2A");
    assert_eq!(seen.header("Host"), Some(stub.addr.to_string().as_str()));
    assert_eq!(seen.header("X-Project-Id"), Some(PROJECT));
    assert_eq!(seen.header("X-Security-Token"), Some("tmp+/=token"));
    assert!(seen.header("X-Auth-Token").is_none());
    // A verifier recomputes the signature from exactly what arrived.
    let authorization = seen.header("Authorization").expect("signed");
    let signed_names = authorization
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("SignedHeaders");
    let headers: Vec<(String, String)> = signed_names
        .split(';')
        .map(|n| (n.to_owned(), seen.header(n).unwrap_or("").to_owned()))
        .collect();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let expected = sign::sign(&seen.method, path, &pairs, &headers, &seen.body, &key);
    assert_eq!(authorization, expected.authorization);
    assert_eq!(
        signed_names,
        "host;x-project-id;x-sdk-date;x-security-token"
    );
}

/// A ListPools page of `ids`, naming `next` as its next page.
fn pools_page(ids: &[&str], next: Option<&str>) -> Canned {
    let pools: Vec<String> = ids
        .iter()
        .map(|i| format!(r#"{{"id":"{i}","name":"","protocol":"TCP"}}"#))
        .collect();
    let next = next
        .map(|n| format!(r#","next_marker":"{n}""#))
        .unwrap_or_default();
    json(
        200,
        &format!(
            r#"{{"pools":[{}],"page_info":{{"current_count":{}{next}}}}}"#,
            pools.join(","),
            ids.len()
        ),
    )
}

fn pool_id(n: u8) -> String {
    format!("{n}{n}{n}{n}{n}{n}{n}{n}-0000-4000-8000-000000000000")
}

async fn listed(elb: Elb) -> Result<Vec<String>, CloudError> {
    let pools = elb
        .list_pools(&[("member_address", "10.0.0.1".to_owned())])
        .await?;
    Ok(pools.into_iter().map(|p| p.id).collect())
}

/// A gateway may serve fewer items than the `limit` asked: a short page that names a next page is not
/// the last. Only a page without `next_marker` ends the listing.
#[tokio::test]
async fn lists_follow_the_marker_past_pages_shorter_than_the_limit() {
    let (a, b, c, d) = (pool_id(1), pool_id(2), pool_id(3), pool_id(4));
    let stub = Stub::start(vec![
        pools_page(&[&a, &b], Some(&b)),
        pools_page(&[&c], Some(&c)),
        pools_page(&[&d], None),
    ])
    .await;
    assert_eq!(
        listed(elb(&stub).with_page_size(2000))
            .await
            .expect("listed"),
        [a.as_str(), b.as_str(), c.as_str(), d.as_str()]
    );
    let targets: Vec<String> = stub.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(
        targets,
        [
            format!("/v3/{PROJECT}/elb/pools?limit=2000&member_address=10.0.0.1"),
            format!("/v3/{PROJECT}/elb/pools?limit=2000&marker={b}&member_address=10.0.0.1"),
            format!("/v3/{PROJECT}/elb/pools?limit=2000&marker={c}&member_address=10.0.0.1"),
        ]
    );
}

/// A marker seen before (a server going round in circles) and an empty page each end a listing with
/// what was listed; neither loops.
#[tokio::test]
async fn a_repeated_marker_or_an_empty_page_ends_a_listing() {
    let (a, b, c) = (pool_id(1), pool_id(2), pool_id(3));
    let circling = Stub::start(vec![
        pools_page(&[&a], Some("m1")),
        pools_page(&[&b], Some("m2")),
        pools_page(&[&c], Some("m1")),
    ])
    .await;
    assert_eq!(
        listed(elb(&circling)).await.expect("listed"),
        [a.as_str(), b.as_str(), c.as_str()]
    );
    assert_eq!(
        circling.seen().len(),
        3,
        "the repeated marker is not asked for"
    );

    let empty = Stub::start(vec![
        pools_page(&[&a], Some("m1")),
        pools_page(&[], Some("m2")),
    ])
    .await;
    assert_eq!(listed(elb(&empty)).await.expect("listed"), [a.as_str()]);
    assert_eq!(empty.seen().len(), 2);
}

/// A listing whose every page names a new next page is refused after the page bound, naming the
/// operation, and not retried: it is an error, not a partial list taken for the whole.
#[tokio::test]
async fn a_listing_that_never_ends_is_refused() {
    let ids: Vec<String> = (1..=9).map(pool_id).collect();
    let script = ids
        .iter()
        .enumerate()
        .map(|(i, id)| pools_page(&[id], Some(&format!("m{i}"))))
        .collect();
    let stub = Stub::start(script).await;
    let e = listed(elb(&stub).with_max_pages(5))
        .await
        .expect_err("refused");
    assert!(matches!(e, CloudError::Unending { pages: 5, .. }), "{e:?}");
    assert!(e.to_string().starts_with("ListPools: "), "{e}");
    assert_eq!(stub.seen().len(), 5);
}
