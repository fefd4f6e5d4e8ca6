//! Optional TLS on the API listener (ELB, IAM, Auto Scaling), so clients can be tested against https
//! endpoints as they are in the real cloud, including the failure a client must get right: a
//! certificate it has no reason to trust.
//!
//! Two ways to get a certificate ([`TlsConfig`], `[tls]` in a scenario file):
//! * `cert` + `key`: PEM files, e.g. from the user's own test CA;
//! * `self_signed = "DIR"`: a fresh CA and a server certificate for `127.0.0.1`, `::1` and `localhost`
//!   made at start ([`SelfSigned`]), the CA written to `DIR/ca.pem` for clients to trust.
//!
//! The metadata service stays plain HTTP (the real one is `http://169.254.169.254`), and so does the
//! admin API, which is test tooling on loopback. Handshakes run in their own tasks, so one stalled
//! client cannot hold up the others, and every failed one is counted: a test can prove that a client
//! reached the endpoint and refused it, rather than never having tried.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// The file [`TlsConfig::self_signed`] writes the generated CA to, inside its directory.
pub const CA_FILE_NAME: &str = "ca.pem";

/// How long a client may take to complete its handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[tls]` of a scenario: either `cert` and `key`, or `self_signed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain, the server's certificate first.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert`.
    pub key: Option<PathBuf>,
    /// Generate a CA and a server certificate at start; write the CA to `DIR/ca.pem`.
    pub self_signed: Option<PathBuf>,
}

impl TlsConfig {
    /// A fresh self-signed CA, its PEM written to `dir/ca.pem` when the simulator starts.
    pub fn self_signed(dir: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            self_signed: Some(dir.into()),
            ..TlsConfig::default()
        }
    }

    /// A certificate chain and key from PEM files.
    pub fn files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: Some(cert.into()),
            key: Some(key.into()),
            self_signed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {0}")]
    Config(String),
    #[error("tls: {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("tls: cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls: the certificate and key do not make a server configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A CA made up on the spot and a server certificate it signed for `127.0.0.1`, `::1` and
/// `localhost`. Two of them are two unrelated CAs: the one a client trusts and the wrong one.
pub struct SelfSigned {
    ca_pem: String,
    chain_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_pem: String,
}

impl SelfSigned {
    pub fn generate() -> Result<SelfSigned, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        // A name of its own: a client holding another elb-sim CA is told "unknown issuer", not "bad
        // signature" from a CA whose name matches but whose key does not.
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("elb-sim throwaway test CA {:016x}", fastrand::u64(..)),
        );
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let mut leaf = CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        leaf.distinguished_name.push(DnType::CommonName, "elb-sim");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        Ok(SelfSigned {
            ca_pem: ca_cert.pem(),
            // The root is not sent, as a real server would not: the client must already have it.
            chain_pem: leaf_cert.pem(),
            chain: vec![leaf_cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM: what a client puts in its trust store (elb-drain's `cloud.ca_file`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server's certificate, PEM: what `[tls] cert` takes.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The server's private key, PKCS#8 PEM: what `[tls] key` takes. A throwaway test key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// What the API listener needs to speak TLS.
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    /// The generated CA, for [`TlsConfig::self_signed`].
    pub(crate) ca_pem: Option<String>,
}

impl Tls {
    /// Loads or generates the certificate; with `self_signed`, writes the CA file.
    pub(crate) fn from_config(config: &TlsConfig) -> Result<Tls, TlsError> {
        let (chain, key, ca_pem) = match config {
            TlsConfig {
                cert: Some(cert),
                key: Some(key),
                self_signed: None,
            } => (read_chain(cert)?, read_key(key)?, None),
            TlsConfig {
                cert: None,
                key: None,
                self_signed: Some(dir),
            } => {
                let made = SelfSigned::generate()?;
                write_ca(dir, made.ca_pem())?;
                (made.chain, made.key, Some(made.ca_pem))
            }
            _ => {
                return Err(TlsError::Config(
                    "set either cert and key, or self_signed (not both, not one of cert/key)"
                        .into(),
                ));
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // axum serves HTTP/1.1 here (no http2 feature): say so, so clients do not offer h2 in vain.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            ca_pem,
        })
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_err = |reason: String| TlsError::File {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err("no PEM certificate in it".into()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes the CA under a temporary name and renames it, so a client never reads half a file.
fn write_ca(dir: &Path, pem: &str) -> Result<(), TlsError> {
    let err = |path: &Path, e: io::Error| TlsError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let tmp = dir.join(format!(".{CA_FILE_NAME}.{}", std::process::id()));
    let path = dir.join(CA_FILE_NAME);
    std::fs::write(&tmp, pem).map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, e))
}

/// A TCP listener whose connections come out as finished TLS sessions, for `axum::serve`.
pub(crate) struct TlsListener {
    sessions: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; every failed handshake adds one to `failures`. Stops at `cancel`.
    pub(crate) fn start(
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        failures: Arc<AtomicU64>,
        cancel: CancellationToken,
    ) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, sessions) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: pass, as axum's own loop does.
                            tracing::warn!(error = %e, "api: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = cancel.cancelled() => return,
                };
                let (acceptor, tx, failures) = (acceptor.clone(), tx.clone(), failures.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(session)) => {
                            let _ = tx.send((session, peer)).await;
                        }
                        Ok(Err(e)) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%peer, error = %e, "api: TLS handshake failed");
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%peer, "api: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { sessions, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.sessions.recv().await {
            Some(session) => session,
            // The accept loop has stopped (shutdown): nothing more will come, and axum's graceful
            // shutdown ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_either_files_or_self_signed() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            TlsConfig::default(),
            TlsConfig {
                cert: Some("c.pem".into()),
                ..TlsConfig::default()
            },
            TlsConfig {
                self_signed: Some(dir.path().into()),
                ..TlsConfig::files("c.pem", "k.pem")
            },
        ] {
            let err = Tls::from_config(&bad).err().expect("refused");
            assert!(matches!(err, TlsError::Config(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn self_signed_writes_its_ca_and_files_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::from_config(&TlsConfig::self_signed(dir.path().join("sub"))).unwrap();
        let written = std::fs::read_to_string(dir.path().join("sub").join(CA_FILE_NAME)).unwrap();
        assert_eq!(Some(written.as_str()), tls.ca_pem.as_deref());
        assert!(written.starts_with("-----BEGIN CERTIFICATE-----"));

        let made = SelfSigned::generate().unwrap();
        assert_ne!(made.ca_pem(), written, "every CA is a new one");
        // The same material as files, the way a user would bring their own.
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, made.chain_pem()).unwrap();
        std::fs::write(&key, made.key_pem().as_bytes()).unwrap();
        let loaded = Tls::from_config(&TlsConfig::files(&cert, &key)).unwrap();
        assert!(loaded.ca_pem.is_none());

        let missing = Tls::from_config(&TlsConfig::files(dir.path().join("nope.pem"), &key))
            .err()
            .expect("refused");
        assert!(missing.to_string().contains("nope.pem"), "{missing}");
        std::fs::write(&cert, "not a certificate\n").unwrap();
        let empty = Tls::from_config(&TlsConfig::files(&cert, &key))
            .err()
            .expect("refused");
        assert!(empty.to_string().contains("no PEM certificate"), "{empty}");
    }
}
