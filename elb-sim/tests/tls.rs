//! The `elb-sim` binary serving its API over https, as a user would run it: `--tls-self-signed DIR`
//! (the ready line names the CA file, and a client trusting it gets answers), `[tls]` with a
//! certificate and key of the user's own, and a `[tls]` that cannot work refused at start.

mod proc;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proc::*;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/elb-sim.toml");

/// The sample scenario on ports of the kernel's choosing, plus `extra`.
fn scenario(dir: &Path, extra: &str) -> String {
    let text = std::fs::read_to_string(SAMPLE).unwrap() + extra;
    let path = dir.join("sim.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Asks the API for a token over TLS, trusting only `ca_pem`; returns the status line, or the
/// handshake's error.
async fn token_over_tls(api: &str, ca_pem: &[u8]) -> Result<String, std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = api.strip_prefix("https://").expect("an https URL");
    let tcp = tokio::net::TcpStream::connect(host).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let body =
        serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "deployer", "password": "change-me", "domain": {"name": "acme"}}}},
        "scope": {"project": {"id": PROJECT}}}})
        .to_string();
    let request = format!(
        "POST /v3/auth/tokens HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    // The server may end the session without close_notify after `Connection: close`.
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn tls_self_signed_serves_https_trusted_through_the_ca_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let sim = Proc::sim(&[
        "--config",
        SAMPLE,
        "--any-port",
        "--tls-self-signed",
        ca_dir.to_str().unwrap(),
    ]);
    let ready = sim.ready();
    let api = ready["api"].as_str().unwrap();
    assert!(api.starts_with("https://127.0.0.1:"), "{ready}");
    for plain in ["metadata", "admin"] {
        let url = ready[plain].as_str().unwrap();
        assert!(url.starts_with("http://"), "{plain} stays plain: {url}");
    }
    let ca_file = ready["ca_file"].as_str().unwrap();
    assert_eq!(Path::new(ca_file), ca_dir.join("ca.pem"));
    let ca = std::fs::read(ca_file).unwrap();
    assert_eq!(
        token_over_tls(api, &ca).await.unwrap(),
        "HTTP/1.1 201 Created"
    );
    let stranger = elb_sim::SelfSigned::generate().unwrap();
    let refused = token_over_tls(api, stranger.ca_pem().as_bytes())
        .await
        .expect_err("another CA's certificate is not trusted");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
}

#[tokio::test]
async fn tls_cert_and_key_files_from_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let made = elb_sim::SelfSigned::generate().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.chain_pem()).unwrap();
    std::fs::write(&key, made.key_pem()).unwrap();
    let config = scenario(
        dir.path(),
        &format!(
            "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let sim = Proc::sim(&["--config", &config, "--any-port"]);
    let ready = sim.ready();
    let api = ready["api"].as_str().unwrap();
    assert!(ready.get("ca_file").is_none(), "{ready}");
    assert_eq!(
        token_over_tls(api, made.ca_pem().as_bytes()).await.unwrap(),
        "HTTP/1.1 201 Created"
    );
}

#[test]
fn a_tls_section_that_cannot_work_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    for (extra, says) in [
        (
            format!(
                "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                missing.display(),
                missing.display()
            ),
            "missing.pem",
        ),
        (
            "\n[tls]\ncert = \"c.pem\"\n".to_owned(),
            "either cert and key",
        ),
    ] {
        let config = scenario(dir.path(), &extra);
        let mut sim = Proc::sim(&["--config", &config, "--any-port"]);
        let exit = sim.wait_timeout(Duration::from_secs(10)).expect("exits");
        assert_eq!(exit.code(), Some(78), "{}", sim.stderr());
        assert!(sim.stderr().contains(says), "{}", sim.stderr());
    }
}
