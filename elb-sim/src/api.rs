//! The HTTP front of the simulated cloud: ELB v3, IAM and Auto Scaling on one listener.
//!
//! Every request passes the same gate, in the real gateway's order: request log, injected faults,
//! per-project rate limit (429 `APIGW.0308`), authentication (`X-Auth-Token` or an AK/SK signature;
//! 401 `APIGW.0301`), project and permission checks (403), then the operation.
//!
//! Error codes the reference leaves open, chosen here: a duplicate member (same address and port in a
//! pool) is 409 `ELB.8911`; a DELETE refused by `member_deletion_protection_enable` is 403 `ELB.8916`;
//! a token or key of another project is 403 `APIGW.0302`; a denied action is 403 `ELB.9802`; an
//! unknown scaling group is 404 `AS.2007`; a callback matching no lifecycle action is 404 `AS.7041`.
//! The quota error is the reference's 409 `ELB.8905`, for a pool's `members_per_pool` (set per pool in
//! the scenario). A field of the wrong JSON type is a 400 `ELB.8902` naming it, never ignored: the
//! real API validates types, and a client that sends `"admin_state_up": "false"` must find out.
//! With `settings.aksk_lockout`, 5 failed signatures in a row lock the access key (401 `APIGW.0301`,
//! even for a correct signature) for `settings.aksk_lockout_duration`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::auth;
use crate::state::{
    AuthKind, FaultAction, HookState, Inner, LoggedRequest, monotonic_ns, new_id, now_rfc3339,
    random_hex,
};

/// A finished answer, plus what the log should record about the caller.
pub struct Answer {
    pub response: Response,
    pub status: u16,
}

fn request_id() -> String {
    random_hex(16)
}

fn with_request_id(mut response: Response, rid: &str) -> Response {
    if let Ok(v) = rid.parse() {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

pub fn json_response(status: StatusCode, mut body: Value) -> Response {
    let rid = request_id();
    if let Value::Object(map) = &mut body {
        map.entry("request_id")
            .or_insert(Value::String(rid.clone()));
    }
    let response = (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body.to_string(),
    )
        .into_response();
    with_request_id(response, &rid)
}

/// The ELB/gateway error body: `{"error_msg", "error_code", "request_id"}`.
pub fn error(status: u16, code: &str, msg: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, json!({"error_msg": msg, "error_code": code}))
}

fn iam_error(status: u16, msg: &str, title: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
    json_response(
        status,
        json!({"error": {"code": status.as_u16(), "message": msg, "title": title}}),
    )
}

/// The body the real API uses for an injected status.
pub fn injected(status: u16, retry_after: Option<u64>) -> Response {
    let (code, msg) = match status {
        400 => ("ELB.8902", "Invalid input (injected)"),
        401 => (
            "APIGW.0301",
            "Incorrect IAM authentication information (injected)",
        ),
        403 => ("ELB.9802", "Policy doesn't allow this action (injected)"),
        404 => ("ELB.8904", "Resource could not be found. (injected)"),
        409 => ("ELB.8907", "Data conflict, resource busy (injected)"),
        429 => (
            "APIGW.0308",
            "The throttling threshold has been reached (injected)",
        ),
        _ => ("ELB.8906", "Internal error (injected)"),
    };
    let mut r = error(status, code, msg);
    if let Some(secs) = retry_after
        && let Ok(v) = secs.to_string().parse()
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Applies an injected action that replaces the answer; `None` to go on handling normally. `host` is
/// the request's `Host` header: its port names the listener whose connection a reset must abort.
pub async fn apply_fault(action: FaultAction, host: Option<&str>) -> Option<Answer> {
    match action {
        FaultAction::Pass => None,
        // Only the API gateway applies requests; elsewhere (metadata) the answer alone is damaged.
        FaultAction::Applied { then } => Box::pin(apply_fault(*then, host)).await,
        FaultAction::Delay { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            None
        }
        FaultAction::Status {
            status,
            retry_after,
        } => Some(Answer {
            response: injected(status, retry_after),
            status,
        }),
        FaultAction::Malformed => Some(Answer {
            response: (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"member\": [not json",
            )
                .into_response(),
            status: 200,
        }),
        FaultAction::Truncated => {
            // Promise more than is sent, then end the stream with an error: the client sees a cut body.
            // The pause lets the server flush the headers and the first bytes before the cut; without it
            // the error aborts the still-buffered answer and the client sees a reset instead.
            let stream = futures_util::stream::unfold(0u8, |step| async move {
                match step {
                    0 => Some((
                        Ok::<Bytes, std::io::Error>(Bytes::from_static(b"{\"members\": [{\"id\"")),
                        1,
                    )),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((
                            Err(std::io::Error::other("truncated by fault injection")),
                            2,
                        ))
                    }
                    _ => None,
                }
            });
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, "4096".parse().expect("number"));
            Some(Answer {
                response: r,
                status: 200,
            })
        }
        FaultAction::Reset => {
            let stream = futures_util::stream::iter(vec![Err::<Bytes, _>(std::io::Error::other(
                "reset by fault injection",
            ))]);
            Some(Answer {
                response: Response::new(Body::from_stream(stream)),
                status: 0,
            })
        }
        FaultAction::ResetMidBody => {
            // The handler never sees its socket, so the connection is found among the process's own
            // sockets by its local port (the listener's, from `Host`) and set to abort on close
            // (SO_LINGER 0). The body then fails after its first bytes: hyper drops the connection
            // and the kernel answers the close with an RST instead of a FIN.
            if let Some(port) = host.and_then(|h| h.rsplit(':').next()?.parse::<u16>().ok()) {
                abort_on_close(port);
            }
            let stream = futures_util::stream::unfold(0u8, |step| async move {
                match step {
                    0 => Some((
                        Ok::<Bytes, std::io::Error>(Bytes::from_static(
                            b"{\"members\": [{\"id\": \"1923923e",
                        )),
                        1,
                    )),
                    1 => {
                        // Let the headers and the first bytes reach the client before the abort.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Err(std::io::Error::other("reset by fault injection")), 2))
                    }
                    _ => None,
                }
            });
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, "4096".parse().expect("number"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("mime"),
            );
            Some(Answer {
                response: r,
                status: 200,
            })
        }
        FaultAction::Oversized { bytes } => {
            const CHUNK: usize = 64 * 1024;
            let chunks = bytes.div_ceil(CHUNK);
            let stream = futures_util::stream::iter((0..chunks).map(move |i| {
                let n = CHUNK.min(bytes - i * CHUNK);
                Ok::<Bytes, std::io::Error>(Bytes::from(vec![b' '; n]))
            }));
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("mime"),
            );
            Some(Answer {
                response: r,
                status: 200,
            })
        }
    }
}

/// Sets SO_LINGER 0 (close = RST) on every connected TCP socket of this process whose local port is
/// `port`: the accepted connections of that listener. Each simulator has its own ports, so only its
/// own clients' connections are touched; a connection that stays open is not affected until it
/// closes.
fn abort_on_close(port: u16) {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if local_port(fd) != Some(port) || !connected(fd) {
            continue;
        }
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads the `linger` we own for its stated size; on an fd that is not (or no
        // longer) a socket it fails harmlessly.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// The local port of a TCP/IP socket, `None` for anything else.
fn local_port(fd: libc::c_int) -> Option<u16> {
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname writes at most `len` bytes into it.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: see above; fails with ENOTSOCK for fds that are not sockets.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

/// Whether a socket has a peer (an accepted connection, not the listener itself).
fn connected(fd: libc::c_int) -> bool {
    // SAFETY: as in `local_port`.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into the storage we own.
    unsafe {
        libc::getpeername(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) == 0
    }
}

/// Who is calling, once authenticated.
struct Caller {
    kind: AuthKind,
    project_id: String,
    deny: Vec<String>,
}

/// The single entry point for ELB, IAM and AS requests.
pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let arrived_mono = monotonic_ns();
    let arrived = SystemTime::now();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let method = parts.method.clone();
    let service = if path.starts_with("/v3/auth/") {
        "iam"
    } else if path.starts_with("/autoscaling-api/") {
        "as"
    } else {
        "elb"
    };
    let (mut answer, kind) = gate(&shared, &method, &path, &query, &parts.headers, &body).await;
    // The gateway stamps every answer, bodiless ones (204) and refusals included.
    if !answer.response.headers().contains_key("x-request-id") {
        answer.response = with_request_id(answer.response, &request_id());
    }
    shared.log(LoggedRequest {
        service: service.into(),
        method: method.to_string(),
        path,
        query,
        auth: kind,
        status: answer.status,
        at: arrived,
        mono_ns: arrived_mono,
        sim_ns: shared.since_start(arrived_mono),
    });
    answer.response
}

async fn gate(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Answer, AuthKind) {
    let fault = shared.lock().next_fault(method.as_str(), path);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match fault {
        Some(FaultAction::Applied { then }) => {
            let (handled, kind) = past_faults(shared, method, path, query, headers, body).await;
            let answer = Box::pin(apply_fault(*then, host)).await;
            (answer.unwrap_or(handled), kind)
        }
        Some(action) => match apply_fault(action, host).await {
            Some(answer) => (answer, AuthKind::None),
            None => past_faults(shared, method, path, query, headers, body).await,
        },
        None => past_faults(shared, method, path, query, headers, body).await,
    }
}

/// A request past the fault injector: IAM, or an authenticated ELB/AS call.
async fn past_faults(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Answer, AuthKind) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.first() == Some(&"v3") && segments.get(1) == Some(&"auth") {
        let r = iam(shared, method, &segments, body);
        let status = r.status().as_u16();
        return (
            Answer {
                response: r,
                status,
            },
            AuthKind::None,
        );
    }
    // The project is in the path of every ELB and AS call.
    let project = match segments.as_slice() {
        ["v3", project, "elb", ..] => *project,
        ["autoscaling-api", "v1", project, ..] => *project,
        _ => {
            let r = error(
                404,
                "APIGW.0101",
                "The API does not exist or has not been published in the environment",
            );
            return (
                Answer {
                    response: r,
                    status: 404,
                },
                AuthKind::None,
            );
        }
    };
    if let Some(r) = rate_limit(shared, project) {
        return (
            Answer {
                response: r,
                status: 429,
            },
            AuthKind::None,
        );
    }
    let caller = match authenticate(shared, method, path, query, headers, body) {
        Ok(c) => c,
        Err((r, kind)) => {
            let status = r.status().as_u16();
            return (
                Answer {
                    response: r,
                    status,
                },
                kind,
            );
        }
    };
    let kind = caller.kind;
    if caller.project_id != project {
        let r = error(
            403,
            "APIGW.0302",
            &format!("The credential is not valid for project {project}"),
        );
        return (
            Answer {
                response: r,
                status: 403,
            },
            kind,
        );
    }
    let query = parse_query(query);
    let body: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    let r = match segments.as_slice() {
        ["v3", _, "elb", rest @ ..] => elb(shared, &caller, method, rest, &query, body),
        [
            "autoscaling-api",
            "v1",
            _,
            resource @ ("scaling_instance_hook" | "scaling_lifecycle_hook"),
            group,
            op,
        ] => autoscaling(shared, &caller, method, (resource, group, op), &query, body),
        _ => error(
            404,
            "APIGW.0101",
            "The API does not exist or has not been published in the environment",
        ),
    };
    let status = r.status().as_u16();
    (
        Answer {
            response: r,
            status,
        },
        kind,
    )
}

fn rate_limit(shared: &Shared, project: &str) -> Option<Response> {
    let mut inner = shared.lock();
    let bucket = inner.buckets.get_mut(project)?;
    match bucket.take(std::time::Instant::now()) {
        Ok(()) => None,
        Err(wait) => {
            let mut r = error(
                429,
                "APIGW.0308",
                "The throttling threshold has been reached: policy user over ratelimit",
            );
            if let Ok(v) = (wait.ceil() as u64).max(1).to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Some(r)
        }
    }
}

fn unauthorized(msg: &str) -> Response {
    error(
        401,
        "APIGW.0301",
        &format!("Incorrect IAM authentication information: {msg}"),
    )
}

fn authenticate(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Caller, (Response, AuthKind)> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut inner = shared.lock();
    if let Some(token) = header("x-auth-token") {
        if token.is_empty() {
            return Err((
                error(403, "ELB.1102", "The token is empty"),
                AuthKind::Token,
            ));
        }
        let record = inner
            .tokens
            .get(&token)
            .ok_or_else(|| (unauthorized("token invalid"), AuthKind::Token))?;
        if record.expires <= SystemTime::now() {
            return Err((unauthorized("token expired"), AuthKind::Token));
        }
        return Ok(Caller {
            kind: AuthKind::Token,
            project_id: record.project_id.clone(),
            deny: record.deny.clone(),
        });
    }
    let Some(authz) = header("authorization") else {
        return Err((
            unauthorized("no X-Auth-Token and no signature"),
            AuthKind::None,
        ));
    };
    let parsed = auth::parse_authorization(&authz)
        .ok_or_else(|| (unauthorized("malformed Authorization"), AuthKind::Aksk))?;
    let key = inner
        .keys
        .get(&parsed.access)
        .cloned()
        .ok_or_else(|| (unauthorized("unknown access key"), AuthKind::Aksk))?;
    let now = SystemTime::now();
    let lockout = inner
        .settings
        .aksk_lockout
        .then_some(inner.settings.aksk_lockout_duration);
    let kind = if key.security_token.is_some() {
        AuthKind::AkskTemporary
    } else {
        AuthKind::Aksk
    };
    if let Some(expected) = &key.security_token {
        if key.expires.is_some_and(|e| e <= SystemTime::now()) {
            return Err((unauthorized("temporary access key expired"), kind));
        }
        let signed = parsed
            .signed_headers
            .iter()
            .any(|h| h == "x-security-token");
        if header("x-security-token").as_deref() != Some(expected.as_str()) || !signed {
            return Err((
                unauthorized("temporary access key without its (signed) security token"),
                kind,
            ));
        }
    }
    if lockout.is_some()
        && let Some((_, Some(until))) = inner.signature_failures.get(&parsed.access)
        && *until > now
    {
        let left = until.duration_since(now).unwrap_or_default().as_secs() + 1;
        return Err((
            unauthorized(&format!(
                "the access key is locked for {left} s after 5 failed signatures"
            )),
            kind,
        ));
    }
    let verified = auth::verify(
        &parsed,
        method.as_str(),
        path,
        query,
        &header,
        body,
        &key.sk,
        now,
        inner.settings.max_clock_skew,
    );
    if let Some(lock_for) = lockout {
        let entry = inner
            .signature_failures
            .entry(parsed.access.clone())
            .or_default();
        match &verified {
            Ok(()) => *entry = (0, None),
            Err(_) => {
                entry.0 += 1;
                if entry.0 >= 5 {
                    *entry = (0, Some(now + lock_for));
                }
            }
        }
    }
    verified.map_err(|e| (unauthorized(&e.to_string()), kind))?;
    let project = header("x-project-id").unwrap_or_else(|| key.project_id.clone());
    if project != key.project_id {
        return Err((
            error(
                403,
                "APIGW.0302",
                "X-Project-Id does not match the access key's project",
            ),
            kind,
        ));
    }
    Ok(Caller {
        kind,
        project_id: key.project_id.clone(),
        deny: key.deny.clone(),
    })
}

/// Query pairs, percent-decoded, in order (repeated keys kept).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn denied(caller: &Caller, action: &str) -> Option<Response> {
    caller.deny.iter().any(|d| d == action).then(|| {
        error(
            403,
            "ELB.9802",
            &format!("Policy doesn't allow {action} to be performed."),
        )
    })
}

fn iam(shared: &Shared, method: &Method, segments: &[&str], body: &[u8]) -> Response {
    if method != Method::POST || segments != ["v3", "auth", "tokens"] {
        return iam_error(
            404,
            "The requested resource could not be found.",
            "Not Found",
        );
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return iam_error(400, "The request body is not JSON.", "Bad Request");
    };
    let user = &v["auth"]["identity"]["password"]["user"];
    let (Some(name), Some(password), Some(domain)) = (
        user["name"].as_str(),
        user["password"].as_str(),
        user["domain"]["name"].as_str(),
    ) else {
        return iam_error(
            400,
            "auth.identity.password.user: name, password and domain.name are required",
            "Bad Request",
        );
    };
    let Some(project) = v["auth"]["scope"]["project"]["id"].as_str() else {
        return iam_error(400, "auth.scope.project.id is required", "Bad Request");
    };
    let mut inner = shared.lock();
    let Some(u) = inner
        .users
        .iter()
        .find(|u| u.name == name && u.domain == domain && u.password == password)
        .cloned()
    else {
        return iam_error(401, "The username or password is wrong.", "Unauthorized");
    };
    if !inner.projects.iter().any(|p| p == project)
        || (!u.projects.is_empty() && !u.projects.iter().any(|p| p == project))
    {
        return iam_error(
            401,
            &format!("The user has no access to project {project}."),
            "Unauthorized",
        );
    }
    let token = format!("MII{}", random_hex(96));
    let issued = SystemTime::now();
    let expires = issued + inner.settings.token_lifetime;
    inner.tokens.insert(
        token.clone(),
        crate::state::TokenRecord {
            project_id: project.into(),
            user: name.into(),
            expires,
            deny: u.deny.clone(),
        },
    );
    let body = json!({"token": {
        "expires_at": humantime::format_rfc3339_micros(expires).to_string(),
        "issued_at": humantime::format_rfc3339_micros(issued).to_string(),
        "methods": ["password"],
        "project": {"id": project, "name": inner.settings.region, "domain": {"name": domain}},
        "user": {"name": name, "domain": {"name": domain}, "id": random_hex(16)},
    }});
    let mut r = json_response(StatusCode::CREATED, body);
    if let Ok(v) = token.parse() {
        r.headers_mut().insert("x-subject-token", v);
    }
    r
}

const MEMBER_FILTERS: &[&str] = &[
    "name",
    "weight",
    "admin_state_up",
    "subnet_cidr_id",
    "address",
    "protocol_port",
    "id",
    "operating_status",
    "enterprise_project_id",
    "ip_version",
    "member_type",
    "instance_id",
    "availability_zone",
];
const ALL_MEMBER_FILTERS: &[&str] = &[
    "name",
    "weight",
    "admin_state_up",
    "subnet_cidr_id",
    "address",
    "protocol_port",
    "id",
    "operating_status",
    "enterprise_project_id",
    "ip_version",
    "pool_id",
    "loadbalancer_id",
];
/// Every filter of the SDK's ListPoolsRequest (huaweicloudsdkelb 3.1.219).
const POOL_FILTERS: &[&str] = &[
    "id",
    "name",
    "protocol",
    "loadbalancer_id",
    "listener_id",
    "member_address",
    "member_instance_id",
    "member_device_id",
    "description",
    "lb_algorithm",
    "enterprise_project_id",
    "ip_version",
    "healthmonitor_id",
    "admin_state_up",
    "member_deletion_protection_enable",
    "vpc_id",
    "type",
    "protection_status",
    "connection_drain",
    "pool_health",
    "any_port_enable",
    "public_border_group",
    "quic_cid_len",
    "quic_cid_offset",
    "az_affinity",
];

/// A filter the generic field comparison cannot express: `Some(answer)` decides, `None` defers.
type ExtraFilter<'a> = dyn Fn(&Value, &str, &[&str]) -> Option<bool> + 'a;

/// Renders a JSON value the way a query string would spell it.
fn spelled(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Applies `filters` (repeated keys are OR-ed, different keys AND-ed) to JSON objects.
fn filter(
    items: Vec<Value>,
    query: &[(String, String)],
    allowed: &[&str],
    extra: &ExtraFilter<'_>,
) -> Result<Vec<Value>, Response> {
    let mut by_key: Vec<(&str, Vec<&str>)> = Vec::new();
    for (k, v) in query {
        if matches!(k.as_str(), "limit" | "marker" | "page_reverse") {
            continue;
        }
        if !allowed.contains(&k.as_str()) {
            return Err(error(
                400,
                "ELB.8902",
                &format!("Invalid input for filter: {k} is not a supported filter here"),
            ));
        }
        match by_key.iter_mut().find(|(key, _)| key == k) {
            Some((_, vals)) => vals.push(v),
            None => by_key.push((k, vec![v])),
        }
    }
    Ok(items
        .into_iter()
        .filter(|item| {
            by_key.iter().all(|(k, vals)| match extra(item, k, vals) {
                Some(answer) => answer,
                None => vals.iter().any(|v| spelled(&item[*k]) == *v),
            })
        })
        .collect())
}

/// One page of `items` and its `page_info`.
///
/// As the real API documents it: `marker` and `page_reverse` only count with `limit`; `limit` is
/// 0-2000, 0 meaning the default page of 2000; `page_reverse=true` with a page's `previous_marker`
/// gives the page before it (the last page without a marker), still in ascending order.
/// `previous_marker` is the page's first id, `next_marker` its last id when anything follows it.
fn page(
    shared: &Shared,
    items: Vec<Value>,
    query: &[(String, String)],
) -> Result<(Vec<Value>, Value), Response> {
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let cap = shared.lock().settings.page_size_cap.unwrap_or(2000);
    let Some(limit) = get("limit") else {
        let n = items.len();
        return Ok((items, json!({"current_count": n})));
    };
    let limit: usize = match limit.parse() {
        Ok(0) => 2000,
        Ok(n) if n <= 2000 => n,
        _ => {
            return Err(error(
                400,
                "ELB.8902",
                &format!("Invalid input for limit: {limit:?} (0-2000)"),
            ));
        }
    };
    let limit = limit.min(cap);
    let reverse = match get("page_reverse") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(error(
                400,
                "ELB.8902",
                &format!("Invalid input for page_reverse: {other:?} (true or false)"),
            ));
        }
    };
    let marker = match get("marker") {
        Some(m) => Some(items.iter().position(|i| i["id"] == m).ok_or_else(|| {
            error(
                400,
                "ELB.8902",
                &format!("Invalid input for marker: {m} does not exist"),
            )
        })?),
        None => None,
    };
    let (start, end) = if reverse {
        let end = marker.unwrap_or(items.len());
        (end.saturating_sub(limit), end)
    } else {
        let start = marker.map_or(0, |p| p + 1);
        (start, (start + limit).min(items.len()))
    };
    let slice: Vec<Value> = items[start..end].to_vec();
    let mut info = json!({"current_count": slice.len()});
    if let Some(first) = slice.first() {
        info["previous_marker"] = first["id"].clone();
    }
    if end < items.len()
        && let Some(last) = slice.last()
    {
        info["next_marker"] = last["id"].clone();
    }
    Ok((slice, info))
}

fn not_found(kind: &str, id: &str) -> Response {
    error(404, "ELB.8904", &format!("{kind} {id} could not be found."))
}

fn elb(
    shared: &Shared,
    caller: &Caller,
    method: &Method,
    rest: &[&str],
    query: &[(String, String)],
    body: Option<Value>,
) -> Response {
    let result = match (method.clone(), rest) {
        (Method::GET, ["pools"]) => list_pools(shared, caller, query),
        (Method::GET, ["pools", pool]) => show_pool(shared, caller, pool),
        (Method::GET, ["pools", pool, "members"]) => list_members(shared, caller, pool, query),
        (Method::POST, ["pools", pool, "members"]) => create_member(shared, caller, pool, body),
        (Method::POST, ["pools", pool, "members", "batch-delete"]) => {
            batch_delete(shared, caller, pool, body)
        }
        (Method::GET, ["pools", pool, "members", member]) => {
            show_member(shared, caller, pool, member)
        }
        (Method::PUT, ["pools", pool, "members", member]) => {
            update_member(shared, caller, pool, member, body)
        }
        (Method::DELETE, ["pools", pool, "members", member]) => {
            delete_member(shared, caller, pool, member)
        }
        (Method::GET, ["members"]) => list_all_members(shared, caller, query),
        _ => Err(error(
            404,
            "APIGW.0101",
            "The API does not exist or has not been published in the environment",
        )),
    };
    result.unwrap_or_else(|r| r)
}

type Handled = Result<Response, Response>;

fn check(caller: &Caller, action: &str) -> Result<(), Response> {
    denied(caller, action).map_or(Ok(()), Err)
}

fn list_pools(shared: &Shared, caller: &Caller, query: &[(String, String)]) -> Handled {
    check(caller, "elb:pools:list")?;
    let items = {
        let inner = shared.lock();
        inner
            .pools
            .iter()
            .filter(|p| p.project_id == caller.project_id)
            .map(|p| p.to_json(&inner.members))
            .collect::<Vec<_>>()
    };
    let members_of = |pool: &Value| -> Vec<crate::state::Member> {
        let inner = shared.lock();
        inner
            .members
            .iter()
            .filter(|m| pool["id"] == m.pool_id.as_str())
            .cloned()
            .collect()
    };
    let extra = |pool: &Value, key: &str, vals: &[&str]| -> Option<bool> {
        match key {
            "member_address" => Some(
                members_of(pool)
                    .iter()
                    .any(|m| vals.contains(&m.address.as_str())),
            ),
            "member_instance_id" | "member_device_id" => Some(
                members_of(pool)
                    .iter()
                    .any(|m| m.instance_id.as_deref().is_some_and(|i| vals.contains(&i))),
            ),
            "loadbalancer_id" => Some(pool["loadbalancers"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|l| vals.contains(&l["id"].as_str().unwrap_or("")))
            })),
            "listener_id" => Some(pool["listeners"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|l| vals.contains(&l["id"].as_str().unwrap_or("")))
            })),
            "connection_drain" => {
                Some(vals.contains(&spelled(&pool["connection_drain"]["enable"]).as_str()))
            }
            // `pool_health=minimum_healthy_member_count=0`, as the documentation spells it.
            "pool_health" => Some(vals.iter().any(|v| {
                v.strip_prefix("minimum_healthy_member_count=")
                    == Some(spelled(&pool["pool_health"]["minimum_healthy_member_count"]).as_str())
            })),
            // Only QUIC pools have these; every simulated pool is TCP, UDP, HTTP or the like.
            "quic_cid_len" | "quic_cid_offset" => Some(false),
            "az_affinity" => Some(vals.iter().any(|v| v.contains("false"))),
            _ => None,
        }
    };
    let items = filter(items, query, POOL_FILTERS, &extra)?;
    let (pools, info) = page(shared, items, query)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"pools": pools, "page_info": info}),
    ))
}

fn pool_of<'a>(
    inner: &'a Inner,
    caller: &Caller,
    pool: &str,
) -> Result<&'a crate::state::Pool, Response> {
    inner
        .pool(pool)
        .filter(|p| p.project_id == caller.project_id)
        .ok_or_else(|| not_found("Pool", pool))
}

fn show_pool(shared: &Shared, caller: &Caller, pool: &str) -> Handled {
    check(caller, "elb:pools:get")?;
    let inner = shared.lock();
    let p = pool_of(&inner, caller, pool)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"pool": p.to_json(&inner.members)}),
    ))
}

fn list_members(
    shared: &Shared,
    caller: &Caller,
    pool: &str,
    query: &[(String, String)],
) -> Handled {
    check(caller, "elb:members:list")?;
    let items = {
        let inner = shared.lock();
        let p = pool_of(&inner, caller, pool)?;
        inner
            .members
            .iter()
            .filter(|m| m.pool_id == pool)
            .map(|m| m.to_json(p))
            .collect::<Vec<_>>()
    };
    let items = filter(items, query, MEMBER_FILTERS, &|_, _, _| None)?;
    let (members, info) = page(shared, items, query)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"members": members, "page_info": info}),
    ))
}

fn list_all_members(shared: &Shared, caller: &Caller, query: &[(String, String)]) -> Handled {
    check(caller, "elb:members:list")?;
    let items = {
        let inner = shared.lock();
        inner
            .members
            .iter()
            .filter(|m| m.project_id == caller.project_id)
            .filter_map(|m| {
                let pool = inner.pool(&m.pool_id)?;
                let mut v = m.to_json(pool);
                // Filterable, but like the real service not promised in the answer.
                v["__pool_id"] = json!(m.pool_id);
                v["__loadbalancer_id"] = json!(pool.loadbalancer_id);
                Some(v)
            })
            .collect::<Vec<_>>()
    };
    let extra = |m: &Value, key: &str, vals: &[&str]| -> Option<bool> {
        match key {
            "pool_id" => Some(vals.contains(&m["__pool_id"].as_str().unwrap_or(""))),
            "loadbalancer_id" => {
                Some(vals.contains(&m["__loadbalancer_id"].as_str().unwrap_or("")))
            }
            _ => None,
        }
    };
    let mut items = filter(items, query, ALL_MEMBER_FILTERS, &extra)?;
    for m in &mut items {
        if let Value::Object(map) = m {
            map.remove("__pool_id");
            map.remove("__loadbalancer_id");
        }
    }
    let (members, info) = page(shared, items, query)?;
    Ok(json_response(
        StatusCode::OK,
        json!({"members": members, "page_info": info}),
    ))
}

fn show_member(shared: &Shared, caller: &Caller, pool: &str, member: &str) -> Handled {
    check(caller, "elb:members:get")?;
    let inner = shared.lock();
    let p = pool_of(&inner, caller, pool)?;
    let m = inner
        .members
        .iter()
        .find(|m| m.pool_id == pool && m.id == member)
        .ok_or_else(|| not_found("Member", member))?;
    Ok(json_response(
        StatusCode::OK,
        json!({"member": m.to_json(p)}),
    ))
}

fn invalid(msg: &str) -> Response {
    error(400, "ELB.8902", &format!("Invalid input: {msg}"))
}

/// `member.admin_state_up`: absent, or a JSON boolean.
fn admin_state_up(m: &Value) -> Result<Option<bool>, Response> {
    match &m["admin_state_up"] {
        Value::Null => Ok(None),
        Value::Bool(up) => Ok(Some(*up)),
        other => Err(invalid(&format!(
            "member.admin_state_up must be true or false, not {other}"
        ))),
    }
}

/// `member.name`: absent, or a string.
fn member_name(m: &Value) -> Result<Option<&str>, Response> {
    match &m["name"] {
        Value::Null => Ok(None),
        Value::String(name) => Ok(Some(name)),
        other => Err(invalid(&format!(
            "member.name must be a string, not {other}"
        ))),
    }
}

fn create_member(shared: &Shared, caller: &Caller, pool: &str, body: Option<Value>) -> Handled {
    check(caller, "elb:members:create")?;
    let m = body
        .as_ref()
        .map(|b| &b["member"])
        .filter(|m| m.is_object())
        .ok_or_else(|| invalid("body must be {\"member\": {...}}"))?;
    let address = m["address"]
        .as_str()
        .ok_or_else(|| invalid("member.address is required"))?;
    if address.parse::<std::net::IpAddr>().is_err() {
        return Err(invalid(&format!(
            "member.address {address:?} is not an IP address"
        )));
    }
    let port = m["protocol_port"]
        .as_u64()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| invalid("member.protocol_port must be 1-65535"))?;
    let weight = match &m["weight"] {
        Value::Null => 1,
        w => w
            .as_u64()
            .filter(|w| *w <= 100)
            .ok_or_else(|| invalid("member.weight must be 0-100"))?,
    };
    let up = admin_state_up(m)?;
    let name = member_name(m)?.unwrap_or("");
    let mut inner = shared.lock();
    let quota = pool_of(&inner, caller, pool)?.members_per_pool;
    if inner
        .members
        .iter()
        .any(|x| x.pool_id == pool && x.address == address && u64::from(x.protocol_port) == port)
    {
        return Err(error(
            409,
            "ELB.8911",
            &format!("Member with address {address} and port {port} already exists in pool {pool}"),
        ));
    }
    if let Some(quota) = quota
        && inner.members.iter().filter(|x| x.pool_id == pool).count() >= quota
    {
        return Err(error(
            409,
            "ELB.8905",
            &format!(
                "Quota exceeded for resources: ['member'] (members_per_pool {quota} in pool {pool})"
            ),
        ));
    }
    let instance = inner
        .instances
        .iter()
        .find(|i| i.local_ipv4 == address)
        .map(|i| i.uuid.clone());
    let id = inner
        .add_member(&crate::scenario::MemberConfig {
            id: None,
            pool_id: pool.into(),
            address: address.into(),
            protocol_port: port as u16,
            weight: weight as u32,
            instance_id: instance,
            name: name.into(),
            subnet_cidr_id: m["subnet_cidr_id"].as_str().map(str::to_owned),
        })
        .map_err(|e| invalid(&e))?;
    if let Some(up) = up
        && let Some(x) = inner.members.iter_mut().find(|x| x.id == id)
    {
        x.admin_state_up = up;
    }
    inner.publish();
    let p = inner.pool(pool).expect("checked");
    let created = inner
        .members
        .iter()
        .find(|x| x.id == id)
        .expect("just added");
    Ok(json_response(
        StatusCode::CREATED,
        json!({"member": created.to_json(p)}),
    ))
}

fn update_member(
    shared: &Shared,
    caller: &Caller,
    pool: &str,
    member: &str,
    body: Option<Value>,
) -> Handled {
    check(caller, "elb:members:update")?;
    let m = body
        .as_ref()
        .map(|b| &b["member"])
        .filter(|m| m.is_object())
        .ok_or_else(|| invalid("body must be {\"member\": {...}}"))?;
    let up = admin_state_up(m)?;
    let name = member_name(m)?;
    let mut inner = shared.lock();
    pool_of(&inner, caller, pool)?;
    let weight = match &m["weight"] {
        Value::Null => None,
        w => Some(
            w.as_u64()
                .filter(|w| *w <= 100)
                .ok_or_else(|| invalid("member.weight must be 0-100"))? as u32,
        ),
    };
    let x = inner
        .members
        .iter_mut()
        .find(|x| x.pool_id == pool && x.id == member)
        .ok_or_else(|| not_found("Member", member))?;
    if let Some(w) = weight {
        x.weight = w;
    }
    if let Some(up) = up {
        x.admin_state_up = up;
    }
    if let Some(name) = name {
        x.name = name.into();
    }
    x.updated_at = SystemTime::now();
    inner.publish();
    let p = inner.pool(pool).expect("checked");
    let x = inner
        .members
        .iter()
        .find(|x| x.id == member)
        .expect("exists");
    Ok(json_response(
        StatusCode::OK,
        json!({"member": x.to_json(p)}),
    ))
}

fn delete_member(shared: &Shared, caller: &Caller, pool: &str, member: &str) -> Handled {
    check(caller, "elb:members:delete")?;
    let mut inner = shared.lock();
    let p = pool_of(&inner, caller, pool)?;
    if p.member_deletion_protection {
        return Err(error(
            403,
            "ELB.8916",
            &format!("Member deletion protection is enabled on pool {pool}"),
        ));
    }
    let i = inner
        .members
        .iter()
        .position(|m| m.pool_id == pool && m.id == member)
        .ok_or_else(|| not_found("Member", member))?;
    inner.members.remove(i);
    inner.publish();
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn batch_delete(shared: &Shared, caller: &Caller, pool: &str, body: Option<Value>) -> Handled {
    check(caller, "elb:members:delete")?;
    let items = body
        .as_ref()
        .and_then(|b| b["members"].as_array().cloned())
        .ok_or_else(|| invalid("body must be {\"members\": [...]}"))?;
    if items.len() > 200 {
        return Err(invalid("at most 200 members per batch"));
    }
    let mut inner = shared.lock();
    let p = pool_of(&inner, caller, pool)?;
    if p.member_deletion_protection {
        return Err(error(
            403,
            "ELB.8916",
            &format!("Member deletion protection is enabled on pool {pool}"),
        ));
    }
    let mut out = Vec::new();
    for item in items {
        let pos = inner.members.iter().position(|m| {
            m.pool_id == pool
                && match item["id"].as_str() {
                    Some(id) => m.id == id,
                    None => {
                        item["address"].as_str() == Some(m.address.as_str())
                            && item["protocol_port"].as_u64() == Some(m.protocol_port.into())
                    }
                }
        });
        let status = match pos {
            Some(i) => {
                let m = inner.members.remove(i);
                out.push(json!({"id": m.id, "address": m.address, "protocol_port": m.protocol_port, "ret_status": "successful"}));
                continue;
            }
            None => "not found",
        };
        out.push(json!({"id": item["id"], "address": item["address"], "protocol_port": item["protocol_port"], "ret_status": status}));
    }
    inner.publish();
    Ok(json_response(StatusCode::OK, json!({"members": out})))
}

/// `(resource, group, op)`: `scaling_instance_hook/{group}/list|callback` (an instance's hooks) or
/// `scaling_lifecycle_hook/{group}/list` (the group's hooks and their types).
fn autoscaling(
    shared: &Shared,
    caller: &Caller,
    method: &Method,
    (resource, group, op): (&str, &str, &str),
    query: &[(String, String)],
    body: Option<Value>,
) -> Response {
    let as_error = error;
    let mut inner = shared.lock();
    if !inner
        .groups
        .iter()
        .any(|g| g.id == group && g.project_id == caller.project_id)
    {
        return as_error(
            404,
            "AS.2007",
            &format!("The scaling group {group} does not exist."),
        );
    }
    match (method.clone(), resource, op) {
        (Method::GET, "scaling_lifecycle_hook", "list") => {
            if let Some(r) = denied(caller, "as:lifecycleHooks:list") {
                return r;
            }
            let Some(g) = inner.groups.iter().find(|g| g.id == group) else {
                unreachable!("checked above");
            };
            let hook = |name: &String, kind: &str| {
                json!({
                    "lifecycle_hook_name": name,
                    "lifecycle_hook_type": kind,
                    "default_result": g.default_result,
                    "default_timeout": g.hook_timeout.as_secs(),
                    "notification_topic_urn": null,
                    "notification_topic_name": null,
                    "notification_metadata": null,
                    "create_time": "2026-01-01T00:00:00Z",
                })
            };
            let hooks: Vec<Value> = g
                .terminating_hooks()
                .iter()
                .map(|n| hook(n, "INSTANCE_TERMINATING"))
                .chain(
                    g.launching_hooks
                        .iter()
                        .map(|n| hook(n, "INSTANCE_LAUNCHING")),
                )
                .collect();
            json_response(StatusCode::OK, json!({"lifecycle_hooks": hooks}))
        }
        (Method::GET, "scaling_instance_hook", "list") => {
            if let Some(r) = denied(caller, "as:instanceHooks:list") {
                return r;
            }
            let instance = query
                .iter()
                .find(|(k, _)| k == "instance_id")
                .map(|(_, v)| v.clone());
            let hanging: Vec<Value> = inner
                .hooks
                .iter()
                .filter(|h| {
                    h.scaling_group_id == group
                        && instance.as_ref().is_none_or(|i| *i == h.instance_id)
                })
                .map(hook_json)
                .collect();
            json_response(StatusCode::OK, json!({"instance_hanging_info": hanging}))
        }
        (Method::PUT, "scaling_instance_hook", "callback") => {
            if let Some(r) = denied(caller, "as:instanceHooks:action") {
                return r;
            }
            let Some(b) = body else {
                return as_error(400, "AS.0001", "The request body is not JSON.");
            };
            let result = b["lifecycle_action_result"].as_str().unwrap_or("");
            if !matches!(result, "CONTINUE" | "ABANDON" | "EXTEND") {
                return as_error(
                    400,
                    "AS.0001",
                    "lifecycle_action_result must be CONTINUE, ABANDON or EXTEND",
                );
            }
            let extend = inner.settings.hook_extend;
            let found = inner.hooks.iter().position(|h| {
                h.scaling_group_id == group
                    && match b["lifecycle_action_key"].as_str() {
                        Some(k) => h.lifecycle_action_key == k,
                        None => {
                            b["instance_id"].as_str() == Some(h.instance_id.as_str())
                                && b["lifecycle_hook_name"].as_str()
                                    == Some(h.lifecycle_hook_name.as_str())
                        }
                    }
            });
            let Some(index) = found else {
                return as_error(404, "AS.7041", "No such lifecycle action.");
            };
            let hook = &mut inner.hooks[index];
            hook.callbacks.push((
                result.into(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            ));
            if hook.status != "HANGING" {
                return as_error(
                    400,
                    "AS.7042",
                    "The lifecycle hook is not in the HANGING state.",
                );
            }
            match result {
                "EXTEND" => hook.deadline += extend,
                other => inner.end_hook(index, other, false),
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(
            404,
            "APIGW.0101",
            "The API does not exist or has not been published in the environment",
        ),
    }
}

pub fn hook_json(h: &HookState) -> Value {
    json!({
        "lifecycle_hook_name": h.lifecycle_hook_name,
        "lifecycle_action_key": h.lifecycle_action_key,
        "instance_id": h.instance_id,
        "scaling_group_id": h.scaling_group_id,
        "lifecycle_hook_status": h.status,
        "timeout": now_rfc3339(h.deadline),
        "default_result": h.default_result,
    })
}

/// Hangs the hooks `names` of `group` on an instance, one action key each: `launching` ones, or
/// terminating ones.
fn hang(
    inner: &mut Inner,
    group: &crate::scenario::ScalingGroup,
    instance_id: &str,
    names: &[String],
    launching: bool,
) {
    let deadline = SystemTime::now() + group.hook_timeout;
    for name in names {
        inner.hooks.push(HookState {
            scaling_group_id: group.id.clone(),
            instance_id: instance_id.into(),
            lifecycle_hook_name: name.clone(),
            lifecycle_action_key: new_id(),
            status: "HANGING".into(),
            default_result: group.default_result.clone(),
            deadline,
            callbacks: Vec::new(),
            timed_out: false,
            launching,
        });
    }
}

/// The scaling group of an instance.
fn group_of(
    inner: &Inner,
    instance_id: &str,
) -> Result<(crate::scenario::Instance, crate::scenario::ScalingGroup), String> {
    let instance = inner
        .instances
        .iter()
        .find(|i| i.uuid == instance_id)
        .cloned()
        .ok_or_else(|| format!("no instance {instance_id}"))?;
    let group_id = instance
        .scaling_group_id
        .clone()
        .ok_or_else(|| format!("instance {instance_id} is in no scaling group"))?;
    let group = inner
        .groups
        .iter()
        .find(|g| g.id == group_id)
        .cloned()
        .ok_or_else(|| format!("no scaling group {group_id}"))?;
    Ok((instance, group))
}

/// What Auto Scaling does on a scale-in, in its order: the instance's members leave their pools, then
/// its terminating hooks hang.
pub fn start_scale_in(inner: &mut Inner, instance_id: &str) -> Result<(), String> {
    let (instance, group) = group_of(inner, instance_id)?;
    inner.members.retain(|m| {
        !(m.instance_id.as_deref() == Some(instance_id) || m.address == instance.local_ipv4)
    });
    inner.publish();
    hang(
        inner,
        &group,
        instance_id,
        &group.terminating_hooks(),
        false,
    );
    Ok(())
}

/// A launch: the instance's launching hooks hang while it is set up (its pools are left as they are).
pub fn start_launch(inner: &mut Inner, instance_id: &str) -> Result<(), String> {
    let (_, group) = group_of(inner, instance_id)?;
    hang(inner, &group, instance_id, &group.launching_hooks, true);
    Ok(())
}
