//! Credentials: how each request proves who we are.
//!
//! Four kinds behind one trait: a ready IAM token, an IAM token from a password, a permanent AK/SK pair,
//! and the server agency's temporary AK/SK from the metadata service. The ones that expire are fetched
//! at start-up and refreshed ahead of expiry by a background task, so when the stop comes the DELETE is
//! the first thing on the wire, not a token request. A 401 triggers one forced refresh (in
//! [`crate::cloud::Service::send`]).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use crate::cloud::{CloudError, Parts, metadata::Metadata};
use crate::ids::ProjectId;
use crate::secret::Secret;
use crate::sign::{self, SigningKey};

/// What `check` and `status` say about the credential; never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialInfo {
    pub kind: &'static str,
    pub expires_at: Option<SystemTime>,
}

impl CredentialInfo {
    pub fn expires_at_rfc3339(&self) -> Option<String> {
        self.expires_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
    }
}

pub trait Credential: Send + Sync {
    /// Authenticates one request (adds a token header, or signs it).
    fn apply<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), CloudError>>;
    /// Fetches a fresh credential now (at start-up, ahead of expiry, after a 401).
    fn refresh(&self) -> BoxFuture<'_, Result<(), CloudError>>;
    fn describe(&self) -> CredentialInfo;
}

/// No authentication (IAM's token request, the metadata service).
pub struct Anonymous;

impl Credential for Anonymous {
    fn apply<'a>(&'a self, _: &'a mut Parts) -> BoxFuture<'a, Result<(), CloudError>> {
        Box::pin(async { Ok(()) })
    }
    fn refresh(&self) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async { Ok(()) })
    }
    fn describe(&self) -> CredentialInfo {
        CredentialInfo {
            kind: "none",
            expires_at: None,
        }
    }
}

/// A ready token, from `token_file` (re-read on refresh, e.g. after a rotation by the operator) or
/// `ELB_DRAIN_TOKEN`.
pub struct StaticToken {
    token: RwLock<Secret>,
    file: Option<PathBuf>,
}

impl StaticToken {
    pub fn new(token: Secret, file: Option<PathBuf>) -> StaticToken {
        StaticToken {
            token: RwLock::new(token),
            file,
        }
    }
}

impl Credential for StaticToken {
    fn apply<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), CloudError>> {
        let token = self
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .expose()
            .to_owned();
        parts.headers.push(("X-Auth-Token".into(), token));
        Box::pin(async { Ok(()) })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move {
            // From the environment there is nothing to re-read: the retry after a 401 reports it.
            let Some(file) = &self.file else {
                return Ok(());
            };
            let text = tokio::fs::read_to_string(file).await.map_err(|e| {
                CloudError::Setup(format!(
                    "auth.token_file: cannot read {}: {e}",
                    file.display()
                ))
            })?;
            *self.token.write().unwrap_or_else(|p| p.into_inner()) = Secret::new(text.trim());
            Ok(())
        })
    }

    fn describe(&self) -> CredentialInfo {
        CredentialInfo {
            kind: "token",
            expires_at: None,
        }
    }
}

/// A value that expires, shared between the request path and its refresher.
struct Expiring<T> {
    value: RwLock<Option<(T, SystemTime)>>,
    /// Serialises fetches so a burst of requests at expiry makes one fetch, not many.
    fetching: tokio::sync::Mutex<()>,
}

impl<T: Clone> Expiring<T> {
    fn new() -> Self {
        Expiring {
            value: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The current value if it is still good for at least `margin`.
    fn fresh(&self, margin: Duration) -> Option<T> {
        let guard = self.value.read().unwrap_or_else(|p| p.into_inner());
        let (v, expires) = guard.as_ref()?;
        (SystemTime::now() + margin < *expires).then(|| v.clone())
    }

    fn expires_at(&self) -> Option<SystemTime> {
        self.value
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(_, e)| *e)
    }

    fn set(&self, v: T, expires: SystemTime) {
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = Some((v, expires));
    }
}

/// Refresh this long before expiry at the latest: 10 minutes, or a fifth of the lifetime when that is
/// shorter (short-lived test credentials).
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(600))
}

/// An IAM token obtained with a password, refreshed ahead of its `expires_at`.
pub struct PasswordToken {
    iam: crate::cloud::iam::Iam,
    user: String,
    domain: String,
    password: Secret,
    project: ProjectId,
    token: Expiring<Secret>,
    lifetime: RwLock<Duration>,
}

impl PasswordToken {
    pub fn new(
        iam: crate::cloud::iam::Iam,
        user: String,
        domain: String,
        password: Secret,
        project: ProjectId,
    ) -> Self {
        PasswordToken {
            iam,
            user,
            domain,
            password,
            project,
            token: Expiring::new(),
            lifetime: RwLock::new(Duration::from_secs(86_400)),
        }
    }

    fn margin(&self) -> Duration {
        refresh_margin(*self.lifetime.read().unwrap_or_else(|p| p.into_inner()))
    }

    async fn fetch(&self, force: bool) -> Result<Secret, CloudError> {
        let _one = self.fetching().await;
        if !force && let Some(t) = self.token.fresh(self.margin()) {
            return Ok(t);
        }
        let (token, expires) = self
            .iam
            .password_token(&self.user, &self.domain, &self.password, &self.project)
            .await?;
        let lifetime = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        *self.lifetime.write().unwrap_or_else(|p| p.into_inner()) = lifetime;
        tracing::info!(expires_at = %humantime::format_rfc3339_seconds(expires), "IAM token obtained");
        self.token.set(token.clone(), expires);
        Ok(token)
    }

    async fn fetching(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.token.fetching.lock().await
    }
}

impl Credential for PasswordToken {
    fn apply<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), CloudError>> {
        Box::pin(async move {
            let token = match self.token.fresh(Duration::ZERO) {
                Some(t) => t,
                None => self.fetch(false).await?,
            };
            parts
                .headers
                .push(("X-Auth-Token".into(), token.expose().to_owned()));
            Ok(())
        })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move { self.fetch(true).await.map(|_| ()) })
    }

    fn describe(&self) -> CredentialInfo {
        CredentialInfo {
            kind: "password (IAM token)",
            expires_at: self.token.expires_at(),
        }
    }
}

/// Adds the AK/SK signature headers to a request.
fn sign_parts(parts: &mut Parts, key: &SigningKey, project: Option<&ProjectId>) {
    let host = match (parts.url.host_str(), parts.url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    };
    parts.headers.push(("Host".into(), host));
    parts
        .headers
        .push(("X-Sdk-Date".into(), sign::sdk_date(SystemTime::now())));
    if let Some(p) = project {
        parts.headers.push(("X-Project-Id".into(), p.to_string()));
    }
    if let Some(token) = &key.security_token {
        parts
            .headers
            .push(("X-Security-Token".into(), token.expose().to_owned()));
    }
    let query: Vec<(String, String)> = parts
        .url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let signed = sign::sign(
        parts.method.as_str(),
        parts.url.path(),
        &query,
        &parts.headers,
        &parts.body,
        key,
    );
    parts
        .headers
        .push(("Authorization".into(), signed.authorization));
}

/// A permanent (or externally managed temporary) access key pair.
pub struct AkSk {
    key: SigningKey,
    project: Option<ProjectId>,
}

impl AkSk {
    pub fn new(key: SigningKey, project: Option<ProjectId>) -> AkSk {
        AkSk { key, project }
    }
}

impl Credential for AkSk {
    fn apply<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), CloudError>> {
        sign_parts(parts, &self.key, self.project.as_ref());
        Box::pin(async { Ok(()) })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<(), CloudError>> {
        // A refused permanent key stays refused; the retry after this one reports it.
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> CredentialInfo {
        CredentialInfo {
            kind: "aksk",
            expires_at: None,
        }
    }
}

/// The server agency's temporary keys from the metadata service, refreshed before `expires_at`.
pub struct AgencyKeys {
    metadata: Metadata,
    project: Option<ProjectId>,
    keys: Expiring<SigningKey>,
    lifetime: RwLock<Duration>,
}

impl AgencyKeys {
    pub fn new(metadata: Metadata, project: Option<ProjectId>) -> AgencyKeys {
        AgencyKeys {
            metadata,
            project,
            keys: Expiring::new(),
            lifetime: RwLock::new(Duration::from_secs(3600)),
        }
    }

    fn margin(&self) -> Duration {
        refresh_margin(*self.lifetime.read().unwrap_or_else(|p| p.into_inner()))
    }

    async fn fetch(&self, force: bool) -> Result<SigningKey, CloudError> {
        let _one = self.keys.fetching.lock().await;
        if !force && let Some(k) = self.keys.fresh(self.margin()) {
            return Ok(k);
        }
        let (key, expires) = self.metadata.security_key().await?;
        *self.lifetime.write().unwrap_or_else(|p| p.into_inner()) = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tracing::info!(expires_at = %humantime::format_rfc3339_seconds(expires), "agency credentials obtained");
        self.keys.set(key.clone(), expires);
        Ok(key)
    }
}

impl Credential for AgencyKeys {
    fn apply<'a>(&'a self, parts: &'a mut Parts) -> BoxFuture<'a, Result<(), CloudError>> {
        Box::pin(async move {
            let key = match self.keys.fresh(Duration::ZERO) {
                Some(k) => k,
                None => self.fetch(false).await?,
            };
            sign_parts(parts, &key, self.project.as_ref());
            Ok(())
        })
    }

    fn refresh(&self) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async move { self.fetch(true).await.map(|_| ()) })
    }

    fn describe(&self) -> CredentialInfo {
        CredentialInfo {
            kind: "metadata (agency)",
            expires_at: self.keys.expires_at(),
        }
    }
}

/// Keeps an expiring credential fresh: wakes once per refresh, a margin before expiry (no periodic
/// wake-ups otherwise), and retries with a growing pause when the refresh fails.
pub fn spawn_refresher(credential: Arc<dyn Credential>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let info = credential.describe();
            let Some(expires) = info.expires_at else {
                return;
            };
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let wait = if failures > 0 {
                Duration::from_secs(1 << failures.min(6)).min(left / 2)
            } else {
                left.saturating_sub(refresh_margin(left.max(Duration::from_secs(1))))
            };
            tokio::time::sleep(wait).await;
            match credential.refresh().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "credential refresh failed; will retry");
                }
            }
        }
    });
}

/// The credential the configuration asks for, fetched now (so a bad password or a missing agency is
/// found at start-up) and kept fresh from here on.
pub async fn from_config(
    config: &crate::config::Config,
    http: &reqwest::Client,
    project: &ProjectId,
    metadata: Metadata,
    region: Option<&str>,
) -> Result<Arc<dyn Credential>, CloudError> {
    use crate::config::Auth;
    let credential: Arc<dyn Credential> = match &config.auth {
        Auth::Token { token, file } => Arc::new(StaticToken::new(token.clone(), file.clone())),
        Auth::AkSk {
            ak,
            sk,
            security_token,
        } => Arc::new(AkSk::new(
            SigningKey {
                ak: ak.clone(),
                sk: sk.clone(),
                security_token: security_token.clone(),
            },
            Some(project.clone()),
        )),
        Auth::Password {
            user,
            domain,
            password,
        } => {
            let endpoint = config.cloud.iam_endpoint(region).ok_or_else(|| {
                CloudError::Setup("config: cloud.iam_endpoint: needed (or cloud.region) for password authentication".into())
            })?;
            let iam = crate::cloud::iam::Iam::new(
                http.clone(),
                endpoint,
                crate::cloud::RetryPolicy::within(config.cloud.retry_deadline),
            );
            Arc::new(PasswordToken::new(
                iam,
                user.clone(),
                domain.clone(),
                password.clone(),
                project.clone(),
            ))
        }
        Auth::Metadata => Arc::new(AgencyKeys::new(metadata, Some(project.clone()))),
    };
    credential.refresh().await?;
    spawn_refresher(credential.clone());
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_happens_well_before_expiry() {
        assert_eq!(
            refresh_margin(Duration::from_secs(86_400)),
            Duration::from_secs(600)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn signing_adds_the_sdk_headers() {
        let mut parts = Parts {
            method: reqwest::Method::DELETE,
            url: "http://127.0.0.1:8443/v3/p/elb/pools/a/members/b?x=1"
                .parse()
                .unwrap(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let key = SigningKey {
            ak: "AK".into(),
            sk: Secret::new("SK"),
            security_token: Some(Secret::new("ST")),
        };
        sign_parts(
            &mut parts,
            &key,
            Some(&ProjectId::parse("99a3fff0d03c428eac3678da6a7d0f24").unwrap()),
        );
        let names: Vec<&str> = parts.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Host",
                "X-Sdk-Date",
                "X-Project-Id",
                "X-Security-Token",
                "Authorization"
            ]
        );
        assert_eq!(parts.headers[0].1, "127.0.0.1:8443");
        assert!(
            parts.headers[4]
                .1
                .contains("SignedHeaders=host;x-project-id;x-sdk-date;x-security-token")
        );
    }
}
