//! Verified TLS by default, against an elb-sim that serves its API over https with a throwaway CA:
//! without `cloud.ca_file` (or with the wrong CA) the agent refuses the endpoint at once, says the
//! certificate is not trusted and where, exits 78 and sends nothing, the credential least of all; with
//! the right CA it deregisters and drains. A `ca_file` that cannot be used is a configuration error
//! found before any connection is made.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use elb_sim::{SelfSigned, TlsConfig};

const QUICK: &str = "settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"20s\"";

/// elb-sim with its API on https, signed by a CA written to `<tempdir>/ca.pem`.
struct TlsSetup {
    s: Setup,
    ca_dir: tempfile::TempDir,
}

impl TlsSetup {
    async fn start() -> TlsSetup {
        let ca_dir = tempfile::tempdir().unwrap();
        let tls = TlsConfig::self_signed(ca_dir.path());
        let s = setup_with(|scenario| scenario.tls(tls)).await;
        assert!(s.sim.api_url().starts_with("https://127.0.0.1:"));
        TlsSetup { s, ca_dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.ca_dir.path().join(elb_sim::tls::CA_FILE_NAME)
    }

    /// The harness's config, with `ca_file` (if any) added to `[cloud]`.
    fn config(&self, ca_file: Option<&Path>) -> PathBuf {
        let path = self.s.config(QUICK);
        if let Some(ca) = ca_file {
            let text = std::fs::read_to_string(&path).unwrap().replacen(
                "[cloud]\n",
                &format!("[cloud]\nca_file = \"{}\"\n", ca.display()),
                1,
            );
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    /// Runs `drain` to its end.
    fn drain(&self, config: &Path) -> (Option<i32>, String) {
        let mut agent = ProcGuard::spawn(agent(config, &["drain"]));
        let exit = agent
            .wait_timeout(Duration::from_secs(20))
            .expect("the agent exits");
        (exit.code(), agent.stderr())
    }

    /// The agent reached the endpoint, refused it in the handshake (once: no retries), and no request
    /// at all arrived: the credential was never sent over the unverified connection.
    fn assert_refused_in_the_handshake_only(&self, stderr: &str) {
        assert!(
            wait_until(Duration::from_secs(5), || self
                .s
                .sim
                .tls_handshake_failures()
                >= 1),
            "the agent never tried the endpoint:\n{stderr}"
        );
        assert_eq!(
            self.s.sim.tls_handshake_failures(),
            1,
            "an untrusted certificate is not retried:\n{stderr}"
        );
        assert!(
            self.s.sim.request_log().is_empty(),
            "{:?}",
            self.s.sim.request_log()
        );
        assert!(self.s.sim.member_exists(POOL, MEMBER));
    }
}

fn assert_untrusted_message(stderr: &str, endpoint: &str) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("elb-drain:") && l.contains("not trusted"))
        .unwrap_or_else(|| panic!("no clear error line:\n{stderr}"));
    assert!(line.contains(endpoint), "names the endpoint: {line}");
    assert!(line.contains("cloud.ca_file"), "names the fix: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_serves_https_that_verifies_only_with_its_ca() {
    let t = TlsSetup::start().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{}/v3/{PROJECT}/elb/pools", t.s.sim.api_url());
    let pem = std::fs::read(t.ca_file()).unwrap();
    assert_eq!(
        Some(String::from_utf8_lossy(&pem).as_ref()),
        t.s.sim.tls_ca_pem()
    );
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let reply = trusting.get(&url).send().await.expect("verified https");
    assert_eq!(reply.status(), 401, "the API answers, asking for a token");
    assert_eq!(t.s.sim.request_log().len(), 1);
    let err = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .expect_err("a stranger's CA is not trusted by default");
    assert!(err.is_connect(), "{err:?}");
    assert!(wait_until(Duration::from_secs(5), || t
        .s
        .sim
        .tls_handshake_failures()
        == 1));
    assert_eq!(
        t.s.sim.request_log().len(),
        1,
        "the refused one never arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ca_file_the_certificate_is_refused_at_once_and_nothing_is_sent() {
    let t = TlsSetup::start().await;
    let (code, stderr) = t.drain(&t.config(None));
    assert_eq!(code, Some(78), "{stderr}");
    assert_untrusted_message(&stderr, &t.s.sim.api_url());
    t.assert_refused_in_the_handshake_only(&stderr);
    // The daemon and `check` fail the same way at start-up, each after one handshake.
    for (n, command) in [(2, "check"), (3, "run")] {
        let mut cmd = agent(&t.config(None), &[command]);
        if command == "check" {
            // At the default log level the error is said once, by the agent, not again by rustls.
            cmd.env_remove("ELB_DRAIN_LOG");
        }
        let mut agent = ProcGuard::spawn(cmd);
        let exit = agent
            .wait_timeout(Duration::from_secs(20))
            .expect("exits at start-up");
        let stderr = agent.stderr();
        assert_eq!(exit.code(), Some(78), "{command}: {stderr}");
        assert_untrusted_message(&stderr, &t.s.sim.api_url());
        if command == "check" {
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
        assert!(
            wait_until(Duration::from_secs(5), || t.s.sim.tls_handshake_failures()
                >= n),
            "{command}: {stderr}"
        );
        assert_eq!(t.s.sim.tls_handshake_failures(), n, "{command}: {stderr}");
    }
    assert!(t.s.sim.request_log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ca_file_the_agent_deregisters_and_drains() {
    let t = TlsSetup::start().await;
    let held = t.s.connections_to_us(1);
    let mut agent = ProcGuard::spawn(agent(&t.config(Some(&t.ca_file())), &["drain"]));
    assert!(
        wait_until(Duration::from_secs(15), || !t
            .s
            .sim
            .member_exists(POOL, MEMBER)),
        "deregistered over verified https:\n{}",
        agent.stderr()
    );
    assert!(agent.is_running(), "still draining the held connection");
    drop(held);
    let exit = agent
        .wait_timeout(Duration::from_secs(15))
        .expect("drained");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    assert_eq!(deletes(&t.s.sim).len(), 1);
    assert_eq!(t.s.sim.tls_handshake_failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_of_another_ca_is_refused_like_none() {
    let t = TlsSetup::start().await;
    let other = SelfSigned::generate().unwrap();
    let wrong = write_file(t.s.dir.path(), "other-ca.pem", other.ca_pem());
    let (code, stderr) = t.drain(&t.config(Some(&wrong)));
    assert_eq!(code, Some(78), "{stderr}");
    assert_untrusted_message(&stderr, &t.s.sim.api_url());
    t.assert_refused_in_the_handshake_only(&stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_ca_file_is_a_configuration_error_before_any_connection() {
    let t = TlsSetup::start().await;
    let dir = t.s.dir.path();
    let garbage = write_file(
        dir,
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    for (what, ca) in [
        ("missing", dir.join("nope.pem")),
        ("not PEM", garbage),
        ("a directory", dir.to_owned()),
    ] {
        for command in ["check", "drain", "run"] {
            let mut agent = ProcGuard::spawn(agent(&t.config(Some(&ca)), &[command]));
            let exit = agent
                .wait_timeout(Duration::from_secs(10))
                .expect("exits at once");
            let stderr = agent.stderr();
            assert_eq!(exit.code(), Some(78), "{what} ({command}): {stderr}");
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with("elb-drain:") && l.contains("cloud.ca_file")),
                "{what} ({command}): names cloud.ca_file:\n{stderr}"
            );
        }
    }
    assert_eq!(t.s.sim.tls_handshake_failures(), 0, "no connection made");
    assert!(t.s.sim.request_log().is_empty());
}

/// A server without the system's CA bundle (no ca-certificates package; here: the paths rustls reads
/// it from point nowhere) still starts: plain http to loopback works (with a warning), and so does https
/// with `ca_file`; an https endpoint it cannot verify fails as untrusted, as anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_system_ca_certificates_only_the_ca_file_is_trusted() {
    let no_system_roots = |mut cmd: std::process::Command| {
        cmd.env("SSL_CERT_FILE", "/nonexistent/ca-certificates.crt")
            .env("SSL_CERT_DIR", "/nonexistent/certs");
        cmd
    };
    let run = |config: &Path| {
        let mut agent = ProcGuard::spawn(no_system_roots(agent(config, &["drain"])));
        let exit = agent.wait_timeout(Duration::from_secs(20)).expect("exits");
        (exit.code(), agent.stderr())
    };
    let warned = |stderr: &str| stderr.contains("only cloud.ca_file is trusted for https");

    let plain = setup().await;
    let (code, stderr) = run(&plain.config(QUICK));
    assert_eq!(code, Some(0), "loopback http needs no CA: {stderr}");
    assert!(warned(&stderr), "{stderr}");
    assert!(!plain.sim.member_exists(POOL, MEMBER));

    let t = TlsSetup::start().await;
    let (code, stderr) = run(&t.config(None));
    assert_eq!(code, Some(78), "{stderr}");
    assert_untrusted_message(&stderr, &t.s.sim.api_url());
    t.assert_refused_in_the_handshake_only(&stderr);

    // With a ca_file the system's roots are merely extra: nothing to warn about.
    let (code, stderr) = run(&t.config(Some(&t.ca_file())));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!t.s.sim.member_exists(POOL, MEMBER));
}
