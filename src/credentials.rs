//! Credentials: how each request proves who we are.
//!
//! Four kinds behind one trait: a ready IAM token, an IAM token from a password, a permanent AK/SK pair,
//! and the server agency's temporary AK/SK from the metadata service. The ones that expire are fetched
//! at start-up and refreshed ahead of expiry by a background task, so when the stop comes the DELETE is
//! the first thing on the wire, not a token request. A 401 triggers one forced refresh (in
//! [`crate::cloud::Service::send`]).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

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
            let path = file.clone();
            let text = tokio::task::spawn_blocking(move || {
                crate::files::read_small_text(&path, crate::config::MAX_SECRET_FILE)
            })
            .await
            .map_err(|e| CloudError::Setup(format!("auth.token_file: {e}")))?
            .map_err(|e| {
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
    /// When the value was last fetched (monotonic), so a forced refresh can tell whether another
    /// caller already replaced the value it saw refused.
    fetched: RwLock<Option<Instant>>,
    /// Serialises fetches so a burst of requests at expiry makes one fetch, not many.
    fetching: tokio::sync::Mutex<()>,
}

impl<T: Clone> Expiring<T> {
    fn new() -> Self {
        Expiring {
            value: RwLock::new(None),
            fetched: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The current value if it is still good for at least `margin`.
    fn fresh(&self, margin: Duration) -> Option<T> {
        let guard = self.value.read().unwrap_or_else(|p| p.into_inner());
        let (v, expires) = guard.as_ref()?;
        (SystemTime::now() + margin < *expires).then(|| v.clone())
    }

    /// The current value if it was fetched after `t`: several requests refused at once (a burst of
    /// 401s after an expiry) then cost one fetch, not one each.
    fn fetched_after(&self, t: Instant) -> Option<T> {
        let fetched = (*self.fetched.read().unwrap_or_else(|p| p.into_inner()))?;
        if fetched <= t {
            return None;
        }
        let guard = self.value.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|(v, _)| v.clone())
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
        *self.fetched.write().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// Refresh this long before expiry: at 80 % of the lifetime or 10 minutes before expiry, whichever
/// comes first (never later than half-way through a very short lifetime). Refreshing early leaves hours,
/// not minutes, to ride out an IAM or metadata outage with the credential still valid.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).max(Duration::from_secs(600).min(lifetime / 2))
}

/// The shortest pause of the refresher, so a credential source that keeps answering with an expiring
/// (or, with clock skew, already expired) credential cannot make it spin.
const MIN_REFRESH_PAUSE: Duration = Duration::from_millis(100);

/// How long the refresher sleeps before its next refresh, given the credential's remaining lifetime and
/// the refreshes failed in a row.
fn refresher_wait(left: Duration, failures: u32) -> Duration {
    if failures > 0 {
        let backoff = Duration::from_secs(1 << failures.min(6));
        // While the credential still works, retry well before it stops; once expired, back off fully
        // (requests fetch on demand meanwhile).
        return if left.is_zero() {
            backoff
        } else {
            backoff.min(left / 2).max(MIN_REFRESH_PAUSE)
        };
    }
    left.saturating_sub(refresh_margin(left))
        .max(MIN_REFRESH_PAUSE)
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
        let asked = Instant::now();
        let _one = self.fetching().await;
        if !force && let Some(t) = self.token.fresh(self.margin()) {
            return Ok(t);
        }
        if force && let Some(t) = self.token.fetched_after(asked) {
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
        let asked = Instant::now();
        let _one = self.keys.fetching.lock().await;
        if !force && let Some(k) = self.keys.fresh(self.margin()) {
            return Ok(k);
        }
        if force && let Some(k) = self.keys.fetched_after(asked) {
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
/// wake-ups otherwise), and retries with a growing pause when the refresh fails. The task holds the
/// credential weakly and ends once its owner drops it, so it never outlives the agent.
pub fn spawn_refresher(credential: Arc<dyn Credential>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(&credential);
    drop(credential);
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let Some(expires) = weak.upgrade().and_then(|c| c.describe().expires_at) else {
                return;
            };
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(refresher_wait(left, failures)).await;
            let Some(credential) = weak.upgrade() else {
                return;
            };
            match credential.refresh().await {
                Ok(()) => {
                    // Renewed: a later expiry, with some life in it (a key "valid" for a few
                    // milliseconds is the source's clock disagreeing with ours).
                    let renewed = credential.describe().expires_at.is_some_and(|e| {
                        e > expires && e > SystemTime::now() + Duration::from_secs(1)
                    });
                    // The same credential again (not rotated yet, or clock skew): try again sooner
                    // than a full lifetime, but with a growing pause rather than in a tight loop.
                    failures = if renewed { 0 } else { failures + 1 };
                    if !renewed {
                        tracing::debug!(
                            failures,
                            "credential source answered with the same expiry; asking again later"
                        );
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "credential refresh failed; will retry");
                }
            }
        }
    })
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
    fn refresh_happens_at_80_percent_or_10_minutes_before_whichever_is_sooner() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        // A 24 h IAM token: at 19.2 h, not 23 h 50.
        assert_eq!(refresh_margin(h(24)), h(24) / 5);
        // A 30 min key: 10 minutes before, sooner than at 24 minutes.
        assert_eq!(
            refresh_margin(Duration::from_secs(1800)),
            Duration::from_secs(600)
        );
        // A few seconds (tests): half-way.
        assert_eq!(
            refresh_margin(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn the_refresher_never_spins() {
        let s = Duration::from_secs;
        assert_eq!(refresher_wait(s(100), 0), s(50));
        // Expired (clock skew, or a source that does not rotate): never a zero pause.
        assert_eq!(refresher_wait(Duration::ZERO, 0), MIN_REFRESH_PAUSE);
        assert_eq!(refresher_wait(Duration::ZERO, 1), s(2));
        assert_eq!(refresher_wait(Duration::ZERO, 3), s(8));
        assert_eq!(refresher_wait(Duration::ZERO, 40), s(64));
        // Failing while still valid: retry before it stops, but not in a tight loop.
        assert_eq!(refresher_wait(s(3600), 2), s(4));
        assert_eq!(refresher_wait(s(2), 5), s(1));
        assert_eq!(
            refresher_wait(Duration::from_millis(10), 5),
            MIN_REFRESH_PAUSE
        );
    }

    /// A credential whose every refresh yields `next_lifetime` (zero: already expired), counting calls.
    struct Fake {
        expires: RwLock<SystemTime>,
        next_lifetime: Duration,
        refreshes: std::sync::atomic::AtomicU32,
        refreshed: tokio::sync::Notify,
    }

    impl Fake {
        fn new(lifetime: Duration, next_lifetime: Duration) -> Arc<Fake> {
            Arc::new(Fake {
                expires: RwLock::new(SystemTime::now() + lifetime),
                next_lifetime,
                refreshes: Default::default(),
                refreshed: Default::default(),
            })
        }
        fn count(&self) -> u32 {
            self.refreshes.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Credential for Fake {
        fn apply<'a>(&'a self, _: &'a mut Parts) -> BoxFuture<'a, Result<(), CloudError>> {
            Box::pin(async { Ok(()) })
        }
        fn refresh(&self) -> BoxFuture<'_, Result<(), CloudError>> {
            Box::pin(async {
                self.refreshes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                *self.expires.write().unwrap() = SystemTime::now() + self.next_lifetime;
                self.refreshed.notify_one();
                Ok(())
            })
        }
        fn describe(&self) -> CredentialInfo {
            CredentialInfo {
                kind: "fake",
                expires_at: Some(*self.expires.read().unwrap()),
            }
        }
    }

    #[tokio::test]
    async fn refreshed_in_the_background_before_expiry_and_stopped_with_its_owner() {
        let lifetime = Duration::from_millis(800);
        let fake = Fake::new(lifetime, lifetime);
        let started = std::time::Instant::now();
        let task = spawn_refresher(fake.clone());
        tokio::time::timeout(Duration::from_secs(5), fake.refreshed.notified())
            .await
            .expect("a refresh within 5 s");
        let at = started.elapsed();
        assert!(
            at >= Duration::from_millis(300) && at < lifetime,
            "refreshed at {at:?}, expected half-way through the {lifetime:?} lifetime"
        );
        drop(fake);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the refresher ends once the credential is dropped")
            .expect("no panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_of_expired_credentials_is_asked_with_a_growing_pause() {
        // Skewed clocks: every refresh answers with a credential that is already expired.
        let fake = Fake::new(Duration::ZERO, Duration::ZERO);
        let task = spawn_refresher(fake.clone());
        // Virtual time: 2 minutes pass instantly.
        tokio::time::sleep(Duration::from_secs(120)).await;
        let n = fake.count();
        // 0.1 s, then 2, 4, 8, 16, 32 and 64 s pauses: about 6 asks in 2 minutes, not thousands.
        assert!((4..=8).contains(&n), "{n} refreshes in 2 minutes");
        task.abort();
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
