//! The official Huawei Cloud Python SDK, pointed at elb-sim with AK/SK signing, creates, lists (paged),
//! shows, updates and deletes members, and parses every answer (tests/sdk/compat.py).
//!
//! The SDK is installed into `.venv` by `.ci/run`; `ELB_SIM_SDK_PYTHON` names another interpreter.
//! Without it the test says so loudly and passes: PyPI may be unreachable, elb-sim's own tests still run.

use std::path::PathBuf;
use std::process::Command;

use elb_sim::{AuthKind, Scenario, Sim};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";

fn python() -> Option<PathBuf> {
    let path = std::env::var_os("ELB_SIM_SDK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    let ok = Command::new(&path)
        .args(["-c", "import huaweicloudsdkelb.v3, huaweicloudsdkcore"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_against_elb_sim() {
    let Some(python) = python() else {
        eprintln!(
            "\n!!!!!!!! SKIPPED: the official Huawei Cloud Python SDK is not installed (.venv); run .ci/run !!!!!!!!\n"
        );
        return;
    };
    let sim = Sim::start(
        Scenario::builder()
            .project(PROJECT)
            .access_key("AKSDKCOMPAT000000000", "sdk-compat-secret-key", PROJECT)
            .pool(POOL, |p| p.connection_drain(30))
            .build(),
    )
    .await
    .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/compat.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .env("ELB_SIM_ENDPOINT", sim.api_url())
        .env("ELB_SIM_AK", "AKSDKCOMPAT000000000")
        .env("ELB_SIM_SK", "sdk-compat-secret-key")
        .env("ELB_SIM_PROJECT", PROJECT)
        .env("ELB_SIM_POOL", POOL)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("SDK compat ok: 13 calls, 2 pages, 404 ELB.8904"),
        "{stdout}"
    );
    let log = sim.request_log();
    assert_eq!(log.len(), 13, "{log:?}");
    assert!(
        log.iter().all(|r| r.auth == AuthKind::Aksk),
        "every call signed and verified: {log:?}"
    );
}
