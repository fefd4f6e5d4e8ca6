//! The ECS metadata service, on the server itself: who this server is (instance ID, project, region,
//! local IPv4) and its agency's temporary keys.
//!
//! Session tokens (IMDSv2 style) are used when the service offers them; a 404/405/503 on the token
//! request means an older platform without them, remembered so it is asked only once. Reads are
//! retried a few times on transient failures (the service is local; a hiccup is short), and a 401 gets
//! a new session token once (it may have expired); a `Retry-After` is waited out (up to a few seconds).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::{
    CloudError, ERROR_BODY_HEAD, api_error, read_bounded, read_head, retry_after, transport,
};
use crate::ids::{InstanceId, ProjectId};
use crate::secret::Secret;
use crate::sign::SigningKey;

#[derive(Clone)]
pub struct Metadata {
    http: reqwest::Client,
    base: Url,
    /// `None` not asked yet; `Some(None)` the platform has no session tokens.
    session: Arc<Mutex<Option<Option<Secret>>>>,
}

/// `meta_data.json`, the fields that matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: InstanceId,
    pub project_id: Option<ProjectId>,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    pub hostname: Option<String>,
}

#[derive(Deserialize)]
struct RawIdentity {
    uuid: String,
    project_id: Option<String>,
    region_id: Option<String>,
    availability_zone: Option<String>,
    hostname: Option<String>,
}

/// `network_data.json`: one link per NIC.
#[derive(Deserialize)]
struct NetworkData {
    #[serde(default)]
    links: Vec<Link>,
}

#[derive(Deserialize)]
struct Link {
    local_ipv4: Option<String>,
}

#[derive(Deserialize)]
struct SecurityKey {
    credential: RawKey,
}

#[derive(Deserialize)]
struct RawKey {
    access: String,
    secret: String,
    securitytoken: Option<String>,
    expires_at: String,
}

const TOKEN_TTL: &str = "21600";

/// The longest a read waits on a `Retry-After` between its few attempts.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(5);

impl Metadata {
    pub fn new(http: reqwest::Client, base: Url) -> Metadata {
        Metadata {
            http,
            base,
            session: Arc::new(Mutex::new(None)),
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        url
    }

    async fn session_token(&self) -> Result<Option<Secret>, CloudError> {
        if let Some(known) = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(known);
        }
        const OP: &str = "metadata PUT api/token";
        let response = self
            .http
            .request(Method::PUT, self.url("/meta-data/latest/api/token"))
            .header("X-Metadata-Token-Ttl-Seconds", TOKEN_TTL)
            .send()
            .await
            .map_err(|e| transport(OP, &e))?;
        let status = response.status();
        let token = match status {
            s if s.is_success() => {
                let body = read_bounded(response, OP).await?;
                Some(Secret::new(String::from_utf8_lossy(&body).trim()))
            }
            StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::SERVICE_UNAVAILABLE => None,
            _ => {
                let headers = response.headers().clone();
                let body = read_head(response, ERROR_BODY_HEAD).await;
                return Err(api_error(OP, status, &headers, &body));
            }
        };
        *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(token)
    }

    /// GETs a path and parses the answer with `parse`, retrying transient failures (a garbled or cut
    /// answer included) a few times: the service is local, a hiccup is short.
    async fn get<T>(
        &self,
        path: &str,
        parse: impl Fn(&[u8]) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let op = format!("metadata GET {path}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (result, retry_after) = self.get_once(path, &op).await;
            match result.and_then(|body| parse(&body)) {
                Err(e) if e.is_retryable() && attempt < 4 => {
                    // A throttling service's Retry-After is a floor, within the few seconds a local
                    // service's hiccup may cost.
                    let delay = Duration::from_millis(50 << attempt)
                        .max(retry_after.unwrap_or_default().min(RETRY_AFTER_CAP));
                    tracing::debug!(%op, attempt, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(CloudError::Api { status: 401, .. }) if attempt < 2 => {
                    // The session token may have expired: get a new one.
                    *self.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
                }
                other => return other,
            }
        }
    }

    /// One read; also returns the service's `Retry-After`, if any.
    async fn get_once(
        &self,
        path: &str,
        op: &str,
    ) -> (Result<Vec<u8>, CloudError>, Option<Duration>) {
        let mut req = self.http.get(self.url(path));
        match self.session_token().await {
            Ok(Some(token)) => req = req.header("X-Metadata-Token", token.expose()),
            Ok(None) => {}
            Err(e) => return (Err(e), None),
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => return (Err(transport(op, &e)), None),
        };
        let status = response.status();
        if status.is_success() {
            return (read_bounded(response, op).await, None);
        }
        let headers = response.headers().clone();
        let body = read_head(response, ERROR_BODY_HEAD).await;
        (
            Err(api_error(op, status, &headers, &body)),
            retry_after(&headers, SystemTime::now()),
        )
    }

    pub async fn identity(&self) -> Result<Identity, CloudError> {
        self.get(IDENTITY, parse_identity).await
    }

    pub async fn local_ipv4(&self) -> Result<Ipv4Addr, CloudError> {
        self.get(LOCAL_IPV4, parse_local_ipv4).await
    }

    /// The IPv4 addresses of every NIC (`network_data.json`), for a server in pools on several subnets.
    /// Entries that are not addresses are skipped; duplicates kept once, in the service's order.
    pub async fn local_ipv4s(&self) -> Result<Vec<Ipv4Addr>, CloudError> {
        self.get(NETWORK_DATA, parse_local_ipv4s).await
    }

    /// The agency's temporary keys and their expiry.
    pub async fn security_key(&self) -> Result<(SigningKey, SystemTime), CloudError> {
        match self.get(SECURITY_KEY, parse_security_key).await {
            Err(CloudError::Api {
                status: 401,
                message: Some(m),
                ..
            }) if m.contains("Cloud Service Agency") => Err(CloudError::NoAgency),
            other => other,
        }
    }
}

const IDENTITY: &str = "/openstack/latest/meta_data.json";
const LOCAL_IPV4: &str = "/latest/meta-data/local-ipv4";
const NETWORK_DATA: &str = "/openstack/latest/network_data.json";
const SECURITY_KEY: &str = "/openstack/latest/securitykey";

// The pure halves of the reads above, so hostile answers can be fed straight in (tests/hostile_input.rs,
// fuzz/). Every error names the path it came from.

fn decode_error(path: &str) -> impl Fn(String) -> CloudError + '_ {
    move |reason| CloudError::Decode {
        op: format!("metadata GET {path}"),
        reason,
    }
}

/// `meta_data.json`: `uuid` is required; a `project_id` that is not one is treated as absent.
pub fn parse_identity(body: &[u8]) -> Result<Identity, CloudError> {
    let decode = decode_error(IDENTITY);
    let raw: RawIdentity = serde_json::from_slice(body).map_err(|e| decode(e.to_string()))?;
    Ok(Identity {
        instance_id: InstanceId::parse(&raw.uuid).map_err(|e| decode(e.to_string()))?,
        project_id: raw
            .project_id
            .as_deref()
            .and_then(|p| ProjectId::parse(p).ok()),
        region: raw.region_id.filter(|r| !r.is_empty()),
        availability_zone: raw.availability_zone.filter(|z| !z.is_empty()),
        hostname: raw.hostname,
    })
}

/// `local-ipv4`: one address as plain text.
pub fn parse_local_ipv4(body: &[u8]) -> Result<Ipv4Addr, CloudError> {
    let text = String::from_utf8_lossy(body);
    text.trim()
        .parse()
        .map_err(|_| decode_error(LOCAL_IPV4)(format!("{:?} is not an IPv4 address", text.trim())))
}

/// `network_data.json`: every NIC's IPv4, in order, each once; entries that are not addresses skipped.
pub fn parse_local_ipv4s(body: &[u8]) -> Result<Vec<Ipv4Addr>, CloudError> {
    let data: NetworkData =
        serde_json::from_slice(body).map_err(|e| decode_error(NETWORK_DATA)(e.to_string()))?;
    let mut out = Vec::new();
    for ip in data
        .links
        .iter()
        .filter_map(|l| l.local_ipv4.as_deref()?.trim().parse::<Ipv4Addr>().ok())
    {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// `securitykey`: the agency's temporary keys and their expiry.
pub fn parse_security_key(body: &[u8]) -> Result<(SigningKey, SystemTime), CloudError> {
    let decode = decode_error(SECURITY_KEY);
    let raw: SecurityKey = serde_json::from_slice(body).map_err(|e| decode(e.to_string()))?;
    let expires = super::iam::parse_time(&raw.credential.expires_at)
        .ok_or_else(|| decode(format!("bad expires_at {:?}", raw.credential.expires_at)))?;
    Ok((
        SigningKey {
            ak: raw.credential.access,
            sk: Secret::new(raw.credential.secret),
            security_token: raw.credential.securitytoken.map(Secret::new),
        },
        expires,
    ))
}
