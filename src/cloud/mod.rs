//! The cloud client: one `reqwest` client (rustls, verified TLS), one request path with a retry policy,
//! typed errors that carry the API's `error_code`, `error_msg` and request id.
//!
//! Every API call goes through [`Service::send`]: the credential authenticates it (token header or AK/SK
//! signature), transient failures (409 busy, 429, 5xx, network, a 2xx body that does not parse) are
//! retried with jittered exponential backoff inside a deadline, a 401 refreshes the credential once,
//! and response bodies are read with a size bound so a hostile or broken endpoint cannot make the
//! agent buffer without limit; a call answered by its status alone (DeleteMember, a lifecycle
//! callback) reads no more than a small head of its 2xx body. The service modules ([`elb`],
//! [`metadata`], [`iam`]) are thin callers.

pub mod autoscaling;
pub mod elb;
pub mod iam;
pub mod metadata;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode, Url};
use tokio::time::Instant;

use crate::credentials::Credential;

pub use elb::{DeleteOutcome, Elb};

/// The most a response body may be. ELB list pages of 2000 members are well below this.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub allow_insecure_http: bool,
}

/// Builds the one HTTP client of the process: rustls with the platform's roots (plus `ca_file`), no
/// proxy discovery surprises, no redirects, bounded timeouts.
pub fn http_client(settings: &HttpSettings) -> Result<reqwest::Client, CloudError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = || {
        reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(concat!("elb-drain/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            // The cloud APIs do not redirect; following one would carry `X-Auth-Token` (which reqwest
            // does not strip across hosts, unlike `Authorization`) to wherever the redirect points,
            // possibly over plain HTTP. A 3xx is reported as an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(50))
            .tcp_nodelay(true)
    };
    let extra = match &settings.ca_file {
        Some(path) => {
            // A system bundle is about 200 KiB.
            let pem = crate::files::read_small(path, 16 * 1024 * 1024).map_err(|e| {
                CloudError::Setup(format!(
                    "cloud.ca_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                CloudError::Setup(format!(
                    "cloud.ca_file: {} is not a PEM bundle: {e}",
                    path.display()
                ))
            })?
        }
        None => Vec::new(),
    };
    match builder().tls_certs_merge(extra.clone()).build() {
        Ok(client) => Ok(client),
        // A server without the system's CA bundle (no ca-certificates package): loopback and
        // `ca_file` endpoints still work, and a public endpoint fails its handshake as untrusted,
        // naming itself and `cloud.ca_file`, instead of the agent refusing to start at all.
        Err(platform) => {
            let client = builder().tls_certs_only(extra).build().map_err(|e| {
                CloudError::Setup(format!("cannot build the HTTP client: {}", causes(&e)))
            })?;
            tracing::warn!(
                reason = %causes(&platform),
                "the system's CA certificates could not be loaded (is ca-certificates installed?): \
                 only cloud.ca_file is trusted for https"
            );
            Ok(client)
        }
    }
}

/// An error with its chain of causes, which reqwest keeps out of its own message.
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An API error, as typed as the API allows.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CloudError {
    #[error("{op}: HTTP {status}{}{}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
        message.as_deref().map(|m| format!(": {m}")).unwrap_or_default(),
        request_id.as_deref().map(|r| format!(" (request id {r})")).unwrap_or_default())]
    Api {
        op: String,
        status: u16,
        code: Option<String>,
        message: Option<String>,
        request_id: Option<String>,
    },
    #[error("{op}: {reason}")]
    Transport { op: String, reason: String },
    /// The endpoint's TLS certificate failed verification: nothing was sent over the connection, and
    /// no retry can change the answer. A configuration error (or someone in the way).
    #[error(
        "{op}: the TLS certificate of {endpoint} is not trusted ({reason}); no request was sent. If \
         the endpoint is right, set cloud.ca_file to the CA that signed its certificate"
    )]
    Untrusted {
        op: String,
        endpoint: String,
        reason: String,
    },
    #[error("{op}: response body larger than {limit} bytes; refused")]
    TooLarge { op: String, limit: usize },
    #[error("{op}: cannot parse the response: {reason}")]
    Decode { op: String, reason: String },
    /// A listing whose pages never ran out: every page named another.
    #[error("{op}: still naming a next page after {pages} pages; refused")]
    Unending { op: String, pages: usize },
    #[error("{op}: pool {pool} does not exist; check [[member]] pool_id and the project")]
    PoolNotFound { op: String, pool: String },
    #[error(
        "config: auth.method = \"metadata\": this server has no agency (the metadata service answered \
         \"Please configure Cloud Service Agency first\"); attach an agency with ELB permissions to this \
         ECS server, or set another auth.method"
    )]
    NoAgency,
    #[error("{0}")]
    Setup(String),
    #[error("{op}: gave up after {attempts} attempts in {} ms: {last}", elapsed.as_millis())]
    GaveUp {
        op: String,
        attempts: u32,
        elapsed: Duration,
        last: Box<CloudError>,
    },
}

impl CloudError {
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Api { status, .. } => Some(*status),
            CloudError::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Api { code, .. } => code.as_deref(),
            CloudError::GaveUp { last, .. } => last.code(),
            _ => None,
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            CloudError::Api { message, .. } => message.as_deref(),
            CloudError::GaveUp { last, .. } => last.message(),
            _ => None,
        }
    }

    /// The request id (from the body or `X-Request-Id`), to quote to the cloud's support.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            CloudError::Api { request_id, .. } => request_id.as_deref(),
            CloudError::GaveUp { last, .. } => last.request_id(),
            _ => None,
        }
    }

    /// The credential was refused (401) or lacks a permission (403).
    pub fn is_auth(&self) -> bool {
        matches!(self.status(), Some(401 | 403))
    }

    /// The resource (or, with `APIGW.0101`, the API itself) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CloudError::PoolNotFound { .. }) || self.status() == Some(404)
    }

    /// The API's rate limit (429): back off.
    pub fn is_throttled(&self) -> bool {
        self.status() == Some(429)
    }

    /// Worth another attempt: the condition is expected to pass (busy, throttled, server-side, network).
    /// An oversized body is not: it would be downloaded again, up to the limit, at every attempt.
    pub fn is_retryable(&self) -> bool {
        match self {
            CloudError::Transport { .. } => true,
            CloudError::Decode { .. } => true,
            CloudError::Api { status, code, .. } => match status {
                // Busy (ELB.8907, or no code at all) passes; a quota or a duplicate never will.
                409 => matches!(code.as_deref(), None | Some("ELB.8907")),
                429 | 500 | 502 | 503 | 504 => true,
                _ => false,
            },
            _ => false,
        }
    }

    /// The configuration (or the permissions behind it) is wrong; retrying cannot help. Exit 78.
    pub fn is_configuration(&self) -> bool {
        match self {
            CloudError::Api { status, .. } => matches!(status, 400 | 401 | 403 | 404),
            CloudError::PoolNotFound { .. }
            | CloudError::NoAgency
            | CloudError::Setup(_)
            | CloudError::Untrusted { .. } => true,
            CloudError::GaveUp { .. } => false,
            _ => false,
        }
    }
}

/// When and how often a failed call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// No attempt starts after this much time since the first.
    pub deadline: Duration,
    pub base: Duration,
    pub max_delay: Duration,
    /// Full jitter (the default). Without it a fleet retries in lock-step: only for comparisons.
    pub jitter: bool,
}

impl RetryPolicy {
    pub fn within(deadline: Duration) -> RetryPolicy {
        RetryPolicy {
            deadline,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter: true,
        }
    }

    /// "Full jitter" exponential backoff: a random delay in [0, min(max, base * 2^attempt)]. A server's
    /// `Retry-After` is a floor (plus a little jitter, so a fleet does not come back in lock-step).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, rand01: f64) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let jitter = cap.mul_f64(rand01.clamp(0.0, 1.0));
        match retry_after {
            Some(after) => after + self.base.mul_f64(rand01.clamp(0.0, 1.0)),
            None => jitter,
        }
    }
}

/// One request, described once, sent as often as the policy allows.
#[derive(Debug, Clone)]
pub struct Request {
    /// For errors and logs: "DeleteMember pool=… member=…".
    pub op: String,
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// The 2xx answer's body is of no use (DeleteMember, a lifecycle callback): the status is the
    /// answer, so whatever follows it (too large, cut short) cannot turn a success into a failure.
    pub status_only: bool,
}

impl Request {
    pub fn new(op: impl Into<String>, method: Method, path: impl Into<String>) -> Request {
        Request {
            op: op.into(),
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            status_only: false,
        }
    }

    /// Only the status of a 2xx answer matters; its body is not read beyond a small head.
    pub fn status_only(mut self) -> Request {
        self.status_only = true;
        self
    }

    pub fn query(mut self, key: &str, value: impl ToString) -> Request {
        self.query.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn json(mut self, body: &serde_json::Value) -> Request {
        self.body = Some(body.to_string().into_bytes());
        self
    }
}

/// A successful (2xx) reply.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json<T: serde::de::DeserializeOwned>(&self, op: &str) -> Result<T, CloudError> {
        serde_json::from_slice(&self.body).map_err(|e| CloudError::Decode {
            op: op.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The parts of a request a credential may add to before it is sent.
#[derive(Debug)]
pub struct Parts {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One API endpoint with its credential and retry policy: the single request path.
#[derive(Clone)]
pub struct Service {
    http: reqwest::Client,
    base: Url,
    credential: Arc<dyn Credential>,
    retry: RetryPolicy,
}

impl Service {
    pub fn new(
        http: reqwest::Client,
        base: Url,
        credential: Arc<dyn Credential>,
        retry: RetryPolicy,
    ) -> Service {
        Service {
            http,
            base,
            credential,
            retry,
        }
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Sends with retries; `Ok` only for a 2xx answer.
    pub async fn send(&self, req: &Request) -> Result<Reply, CloudError> {
        self.send_then(req, Ok).await
    }

    /// Sends with retries and parses the 2xx answer's JSON body as `T`. A body that does not parse
    /// (cut short by a proxy, garbled) is retried like any other transient failure.
    pub async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        req: &Request,
    ) -> Result<T, CloudError> {
        self.send_then(req, |reply| reply.json(&req.op)).await
    }

    /// Sends with retries; a 2xx answer is handed to `accept`, whose error (a [`CloudError::Decode`]
    /// is retryable) counts as the attempt's.
    pub async fn send_then<T>(
        &self,
        req: &Request,
        accept: impl Fn(Reply) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let (result, retry_after) = self.once(req).await;
            let err = match result.and_then(&accept) {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if err.status() == Some(401) && !refreshed {
                refreshed = true;
                tracing::info!(op = %req.op, "credential refused (401); refreshing it once");
                self.credential.refresh().await?;
                continue;
            }
            if !err.is_retryable() {
                return Err(err);
            }
            let elapsed = started.elapsed();
            if elapsed >= self.retry.deadline {
                return Err(CloudError::GaveUp {
                    op: req.op.clone(),
                    attempts: attempt,
                    elapsed,
                    last: Box::new(err),
                });
            }
            // Use the whole budget: the last attempt happens at the deadline, not one backoff before it.
            let delay = self
                .retry
                .delay(
                    attempt - 1,
                    retry_after,
                    if self.retry.jitter {
                        fastrand::f64()
                    } else {
                        1.0
                    },
                )
                .min(self.retry.deadline - elapsed);
            tracing::debug!(op = %req.op, attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    fn url(&self, req: &Request) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}{}", self.base.path().trim_end_matches('/'), req.path);
        url.set_path(&path);
        let query = crate::sign::canonical_query(&req.query);
        url.set_query(if query.is_empty() { None } else { Some(&query) });
        url
    }

    /// One attempt. Also returns the server's `Retry-After`, if any.
    async fn once(&self, req: &Request) -> (Result<Reply, CloudError>, Option<Duration>) {
        let mut parts = Parts {
            method: req.method.clone(),
            url: self.url(req),
            headers: Vec::new(),
            body: req.body.clone().unwrap_or_default(),
        };
        if req.body.is_some() {
            parts.headers.push((
                "Content-Type".into(),
                "application/json;charset=UTF-8".into(),
            ));
        }
        if let Err(e) = self.credential.apply(&mut parts).await {
            return (Err(e), None);
        }
        let mut builder = self.http.request(parts.method, parts.url);
        for (name, value) in &parts.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if !parts.body.is_empty() {
            builder = builder.body(parts.body);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return (Err(transport(&req.op, &e)), None),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let retry_after = retry_after(&headers, SystemTime::now());
        if !status.is_success() {
            // An error body is only read for its code and message: its head is enough, and a huge one
            // must not turn a retryable 503 into a "too large" that is not.
            let body = read_head(response, ERROR_BODY_HEAD).await;
            return (
                Err(api_error(&req.op, status, &headers, &body)),
                retry_after,
            );
        }
        let body = if req.status_only {
            read_head(response, ERROR_BODY_HEAD).await
        } else {
            match read_bounded(response, &req.op).await {
                Ok(b) => b,
                Err(e) => return (Err(e), retry_after),
            }
        };
        (
            Ok(Reply {
                status: status.as_u16(),
                headers,
                body,
            }),
            None,
        )
    }
}

/// A server's `Retry-After`, in either of its forms (RFC 9110: delay-seconds or an HTTP-date), capped at
/// five minutes so a hostile or confused server cannot park a stop; a date in the past is "now".
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(300);
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let after = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(after.min(CAP))
}

pub(crate) fn transport(op: &str, e: &reqwest::Error) -> CloudError {
    use std::error::Error;
    if let Some(cert) = certificate_error(e) {
        return CloudError::Untrusted {
            op: op.to_owned(),
            endpoint: e.url().map_or_else(
                || "the endpoint".to_owned(),
                |u| u.origin().ascii_serialization(),
            ),
            reason: cert.to_string(),
        };
    }
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        reason = format!("timed out ({reason})");
    }
    CloudError::Transport {
        op: op.to_owned(),
        reason,
    }
}

/// The certificate verification failure somewhere in `e`'s causes, if that is what it is. An
/// `io::Error` hides the error it wraps from `source()` (it skips to that error's own source), and the
/// connector nests them, so an `io::Error` is opened with `get_ref()` instead.
fn certificate_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    use std::error::Error;
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) =
            err.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// How much of an error body is read: real ones are a few hundred bytes.
pub const ERROR_BODY_HEAD: usize = 64 * 1024;

/// The first `limit` bytes of a body (or fewer, if it ends or breaks first); the rest is not read.
pub(crate) async fn read_head(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// Reads a body, refusing more than [`MAX_BODY`] bytes without buffering them.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    op: &str,
) -> Result<Vec<u8>, CloudError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(CloudError::TooLarge {
            op: op.to_owned(),
            limit: MAX_BODY,
        });
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(CloudError::TooLarge {
                        op: op.to_owned(),
                        limit: MAX_BODY,
                    });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(transport(op, &e)),
        }
    }
}

/// Parses any of the error shapes this cloud uses: `error_code/error_msg`, `errorCode/errorMsg`,
/// `code/message`, at the top level or nested under `error`; anything else keeps the status alone.
pub fn api_error(
    op: &str,
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> CloudError {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let pick = |v: &serde_json::Value, keys: &[&str]| -> Option<String> {
        keys.iter().find_map(|k| match v.get(*k)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let (mut code, mut message, mut request_id) = (None, None, None);
    if let Some(v) = &json {
        for scope in [Some(v), v.get("error")].into_iter().flatten() {
            code = code.or_else(|| pick(scope, &["error_code", "errorCode", "code"]));
            message = message.or_else(|| pick(scope, &["error_msg", "errorMsg", "message"]));
            request_id = request_id.or_else(|| pick(scope, &["request_id", "requestId"]));
        }
    }
    let request_id = request_id.or_else(|| {
        headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    // A number as "code" (IAM's {"error": {"code": 401}}) is the status again, not an error code.
    if code
        .as_deref()
        .is_some_and(|c| c.bytes().all(|b| b.is_ascii_digit()))
    {
        code = None;
    }
    if message.is_none() && json.is_none() && !body.is_empty() {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_owned();
        if !text.is_empty() {
            message = Some(text);
        }
    }
    CloudError::Api {
        op: op.to_owned(),
        status: status.as_u16(),
        code,
        message,
        request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;

    fn parse(status: u16, body: &str) -> CloudError {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", "hdr-id".parse().unwrap());
        api_error(
            "Op",
            StatusCode::from_u16(status).unwrap(),
            &headers,
            body.as_bytes(),
        )
    }

    #[test]
    fn every_error_shape_is_understood() {
        let e = parse(
            404,
            r#"{"error_msg":"Member x could not be found.","error_code":"ELB.8904","request_id":"r1"}"#,
        );
        assert_eq!(
            e.to_string(),
            "Op: HTTP 404 ELB.8904: Member x could not be found. (request id r1)"
        );
        let e = parse(400, r#"{"errorCode":"AS.7042","errorMsg":"not hanging"}"#);
        assert_eq!(
            (e.code(), e.to_string().contains("hdr-id")),
            (Some("AS.7042"), true)
        );
        let e = parse(
            401,
            r#"{"error":{"code":401,"message":"The password is incorrect","title":"Unauthorized"}}"#,
        );
        assert_eq!(e.code(), None);
        assert!(e.to_string().contains("The password is incorrect"));
        let e = parse(
            429,
            r#"{"error":{"error_code":"APIGW.0308","error_msg":"throttled"}}"#,
        );
        assert_eq!(e.code(), Some("APIGW.0308"));
        let e = parse(502, "<html>Bad Gateway</html>");
        assert!(e.to_string().contains("Bad Gateway"));
        let e = parse(503, "{\"truncated");
        assert_eq!(e.status(), Some(503));
    }

    #[test]
    fn classification_follows_the_reference_table() {
        assert!(parse(409, r#"{"error_code":"ELB.8907"}"#).is_retryable());
        assert!(!parse(409, r#"{"error_code":"ELB.8905"}"#).is_retryable());
        assert!(!parse(409, r#"{"error_code":"ELB.8911"}"#).is_retryable());
        for s in [429, 500, 503] {
            assert!(parse(s, "{}").is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404] {
            let e = parse(s, "{}");
            assert!(!e.is_retryable() && e.is_configuration(), "{s}");
        }
        assert!(
            CloudError::Transport {
                op: "x".into(),
                reason: "reset".into()
            }
            .is_retryable()
        );
        assert!(
            !CloudError::TooLarge {
                op: "x".into(),
                limit: MAX_BODY
            }
            .is_retryable()
        );
        let throttled = parse(429, r#"{"error_code":"APIGW.0308"}"#);
        assert!(throttled.is_throttled() && !throttled.is_auth());
        assert!(parse(401, "{}").is_auth() && parse(403, "{}").is_auth());
        assert!(parse(404, "{}").is_not_found() && !parse(404, "{}").is_auth());
        let gave_up = CloudError::GaveUp {
            op: "x".into(),
            attempts: 3,
            elapsed: Duration::from_secs(1),
            last: Box::new(parse(
                503,
                r#"{"error_code":"ELB.8906","error_msg":"busy","request_id":"r9"}"#,
            )),
        };
        assert_eq!(
            (
                gave_up.status(),
                gave_up.code(),
                gave_up.message(),
                gave_up.request_id()
            ),
            (Some(503), Some("ELB.8906"), Some("busy"), Some("r9"))
        );
        assert!(!gave_up.is_retryable(), "the budget is spent");
        let untrusted = CloudError::Untrusted {
            op: "x".into(),
            endpoint: "https://elb.example.com".into(),
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        assert!(!untrusted.is_retryable() && untrusted.is_configuration());
    }

    #[test]
    fn an_unusable_ca_file_is_a_setup_error_naming_the_field() {
        let settings = |ca_file: &str| HttpSettings {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            ca_file: Some(PathBuf::from(ca_file)),
            allow_insecure_http: false,
        };
        let missing = http_client(&settings("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            matches!(&missing, CloudError::Setup(m) if m.starts_with("cloud.ca_file: cannot read /nonexistent/ca.pem")),
            "{missing}"
        );
        assert!(missing.is_configuration());
        let dir = std::env::temp_dir().join(format!("elb-drain-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("ca.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = http_client(&settings(garbage.to_str().unwrap())).unwrap_err();
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            matches!(&bad, CloudError::Setup(m) if m.contains("is not a PEM bundle")),
            "{bad}"
        );
        assert!(
            http_client(&HttpSettings {
                ca_file: None,
                ..settings("")
            })
            .is_ok()
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_an_http_date_and_capped() {
        use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h, now)
        };
        assert_eq!(with("7"), Some(Duration::from_secs(7)));
        assert_eq!(with(" 2 "), Some(Duration::from_secs(2)));
        assert_eq!(
            with("Wed, 21 Oct 2015 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            with("Wed, 21 Oct 2015 07:00:00 GMT"),
            Some(Duration::ZERO),
            "a date already past means now"
        );
        assert_eq!(with("86400"), Some(Duration::from_secs(300)), "capped");
        assert_eq!(with("soon"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_is_jittered_exponential_with_retry_after_as_a_floor() {
        let p = RetryPolicy {
            deadline: Duration::from_secs(30),
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter: true,
        };
        assert_eq!(p.delay(0, None, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(3, None, 1.0), Duration::from_millis(800));
        assert_eq!(p.delay(10, None, 1.0), Duration::from_secs(2));
        assert_eq!(p.delay(10, None, 0.0), Duration::ZERO);
        assert_eq!(p.delay(0, None, 0.5), Duration::from_millis(50));
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3)), 0.5),
            Duration::from_millis(3050)
        );
    }
}
