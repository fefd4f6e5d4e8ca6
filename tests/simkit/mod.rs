//! Helpers for elb-sim's own integration tests (`sim_*.rs`): a raw HTTP client that keeps every detail of
//! an answer (status, headers, body), IAM login, AK/SK-signed requests built with the agent's signer, and
//! the assertions every API error must pass.
//!
//! Raw on purpose: these tests check the simulator's wire behaviour, so they must not go through the
//! agent's client, which would hide status codes, headers and bodies behind its own types.

#![allow(dead_code)]

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use elb_drain::secret::Secret;
use elb_drain::sign::{SigningKey, canonical_query, sdk_date, sign};
use elb_sim::{Shared, Sim};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::http;

/// The HTTP client for one simulator, built once: building a reqwest client costs tens of
/// milliseconds, which a test making a hundred calls would otherwise pay a hundred times. Keyed by the
/// simulator so that a client (and its pooled connections) never outlives the test runtime it ran on.
pub fn client(sim: &Sim) -> reqwest::Client {
    static CACHE: Mutex<Vec<(Weak<Shared>, reqwest::Client)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|(w, _)| w.strong_count() > 0);
    let key = Arc::as_ptr(sim.shared());
    if let Some((_, c)) = cache.iter().find(|(w, _)| std::ptr::eq(w.as_ptr(), key)) {
        return c.clone();
    }
    let c = http();
    cache.push((Arc::downgrade(sim.shared()), c.clone()));
    c
}

/// One answer, whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body, or the raw text as a JSON string when it is not JSON.
    pub body: Value,
    pub raw: String,
}

impl Reply {
    pub async fn from(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&raw).unwrap_or(Value::String(raw.clone())),
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `(status, error_code)`, the pair most error assertions are about.
    pub fn code(&self) -> (u16, &str) {
        (self.status, self.body["error_code"].as_str().unwrap_or(""))
    }

    /// The ids of the objects under `key` (`members`, `pools`), in order.
    pub fn ids(&self, key: &str) -> Vec<String> {
        self.body[key]
            .as_array()
            .unwrap_or_else(|| panic!("no array {key:?} in {}", self.body))
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Asserts the ELB/gateway error shape: `error_code`, `error_msg`, `request_id` (the same as the
    /// `X-Request-Id` header), a JSON content type; returns the message.
    pub fn assert_error(&self, status: u16, code: &str) -> &str {
        assert_eq!(self.code(), (status, code), "{}", self.raw);
        let msg = self.body["error_msg"].as_str().expect("error_msg");
        assert!(!msg.is_empty(), "{}", self.raw);
        let rid = self.body["request_id"].as_str().expect("request_id");
        assert!(!rid.is_empty());
        assert_eq!(
            self.header("x-request-id"),
            Some(rid),
            "X-Request-Id header = body request_id"
        );
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            self.headers
        );
        msg
    }
}

/// A client of the simulated cloud with an IAM token (or none).
pub struct Api {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Api {
    pub fn anonymous(sim: &Sim) -> Api {
        Api {
            base: sim.api_url(),
            token: None,
            http: client(sim),
        }
    }

    pub fn with_token(sim: &Sim, token: &str) -> Api {
        Api {
            base: sim.api_url(),
            token: Some(token.into()),
            http: client(sim),
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::from(req.send().await.expect("the simulator answers")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }
}

/// `POST /v3/auth/tokens` with the password method, as the reference spells it.
pub async fn request_token(
    sim: &Sim,
    user: &str,
    domain: &str,
    password: &str,
    project: &str,
) -> Reply {
    Api::anonymous(sim)
        .post(
            "/v3/auth/tokens?nocatalog=true",
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": user, "password": password, "domain": {"name": domain}}}},
                "scope": {"project": {"id": project}}}}),
        )
        .await
}

/// A token-authenticated client; panics unless IAM answers 201 with `X-Subject-Token`.
pub async fn login(sim: &Sim, user: &str, domain: &str, password: &str, project: &str) -> Api {
    let r = request_token(sim, user, domain, password, project).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let token = r.header("x-subject-token").expect("X-Subject-Token");
    Api::with_token(sim, token)
}

/// An access key as a test holds it.
#[derive(Clone)]
pub struct Key {
    pub ak: String,
    pub sk: String,
    pub security_token: Option<String>,
}

impl Key {
    pub fn permanent(ak: &str, sk: &str) -> Key {
        Key {
            ak: ak.into(),
            sk: sk.into(),
            security_token: None,
        }
    }

    /// The agency's temporary key, from the simulator's metadata service.
    pub async fn from_metadata(sim: &Sim) -> Key {
        let v: Value = client(sim)
            .get(format!(
                "{}/openstack/latest/securitykey",
                sim.metadata_url()
            ))
            .send()
            .await
            .expect("metadata answers")
            .json()
            .await
            .expect("securitykey is JSON");
        let c = &v["credential"];
        Key {
            ak: c["access"].as_str().expect("access").into(),
            sk: c["secret"].as_str().expect("secret").into(),
            security_token: Some(c["securitytoken"].as_str().expect("securitytoken").into()),
        }
    }
}

/// One AK/SK-signed request, signed by `elb_drain::sign` the way the official SDK signs, with knobs
/// to break it in each way the gateway must notice.
pub struct Signed {
    pub method: Method,
    /// The path, with a query the signer sorts and encodes (what then goes on the wire).
    pub path: String,
    pub body: Option<Value>,
    pub key: Key,
    pub date: SystemTime,
    pub project: Option<String>,
    /// Sign the security token but do not send it; or send it without signing it.
    pub token_sent: bool,
    pub token_signed: bool,
    /// Changes to apply after signing: a different body or query on the wire.
    pub wire_body: Option<Vec<u8>>,
    pub wire_query: Option<String>,
    pub sk_override: Option<String>,
}

impl Signed {
    pub fn new(method: Method, path: &str, key: &Key) -> Signed {
        Signed {
            method,
            path: path.into(),
            body: None,
            key: key.clone(),
            date: SystemTime::now(),
            project: None,
            token_sent: true,
            token_signed: true,
            wire_body: None,
            wire_query: None,
            sk_override: None,
        }
    }

    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn project(mut self, project: &str) -> Self {
        self.project = Some(project.into());
        self
    }

    pub fn dated(mut self, offset_secs: i64) -> Self {
        let now = SystemTime::now();
        let d = Duration::from_secs(offset_secs.unsigned_abs());
        self.date = if offset_secs < 0 { now - d } else { now + d };
        self
    }

    pub async fn send(self, sim: &Sim) -> Reply {
        let url: reqwest::Url = format!("{}{}", sim.api_url(), self.path)
            .parse()
            .expect("url");
        let host = format!(
            "{}:{}",
            url.host_str().expect("host"),
            url.port().expect("port")
        );
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let body = self
            .body
            .as_ref()
            .map(|b| b.to_string().into_bytes())
            .unwrap_or_default();
        let mut headers = vec![
            ("Host".to_owned(), host),
            ("X-Sdk-Date".to_owned(), sdk_date(self.date)),
        ];
        if self.body.is_some() {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        if let Some(p) = &self.project {
            headers.push(("X-Project-Id".to_owned(), p.clone()));
        }
        let token = self.key.security_token.clone();
        if let (Some(t), true) = (&token, self.token_signed) {
            headers.push(("X-Security-Token".to_owned(), t.clone()));
        }
        let signing = SigningKey {
            ak: self.key.ak.clone(),
            sk: Secret::new(self.sk_override.unwrap_or(self.key.sk.clone())),
            security_token: token.clone().map(Secret::new),
        };
        let s = sign(
            self.method.as_str(),
            url.path(),
            &pairs,
            &headers,
            &body,
            &signing,
        );
        let query = self.wire_query.unwrap_or_else(|| canonical_query(&pairs));
        let mut wire = format!("{}{}", sim.api_url(), url.path());
        if !query.is_empty() {
            wire = format!("{wire}?{query}");
        }
        let mut req = client(sim).request(self.method, wire);
        for (k, v) in headers.iter().filter(|(k, _)| k != "Host") {
            if k == "X-Security-Token" && !self.token_sent {
                continue;
            }
            req = req.header(k.as_str(), v.as_str());
        }
        if let (Some(t), false) = (&token, self.token_signed) {
            req = req.header("X-Security-Token", t.as_str());
        }
        req = req
            .header("Authorization", s.authorization)
            .body(self.wire_body.unwrap_or(body));
        Reply::from(req.send().await.expect("the simulator answers")).await
    }
}

/// Polls an async condition every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
