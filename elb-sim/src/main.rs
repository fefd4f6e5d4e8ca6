//! `elb-sim --config FILE`: runs the simulator until SIGTERM or Ctrl-C (SIGINT), then shuts down and
//! exits 0. When every listener is up and both signals are handled it prints one JSON line on stdout
//! with the addresses (and, with a generated certificate, the CA file), for a parent process to read:
//! a parent may stop it from the moment it has read that line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use elb_sim::scenario::TokenMode;
use elb_sim::{Scenario, Sim};

#[derive(Parser)]
#[command(
    name = "elb-sim",
    version,
    about = "A local Huawei Cloud ELB v3 / IAM / ECS metadata / Auto Scaling emulator with a real TCP data plane"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Scenario file (TOML); see config/elb-sim.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the API listen address (ELB, IAM, AS).
    #[arg(long, value_name = "ADDR:PORT")]
    api_listen: Option<String>,
    /// Override the metadata service's listen address.
    #[arg(long, value_name = "ADDR:PORT")]
    metadata_listen: Option<String>,
    /// Override the admin API's listen address.
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<String>,
    /// Every listener (API, metadata, admin, data plane) on 127.0.0.1 with a port of the kernel's
    /// choosing: read them from the ready line. For harnesses running several simulators at once.
    #[arg(long)]
    any_port: bool,
    /// IAM token lifetime, e.g. "2s" to watch clients refresh.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    token_lifetime: Option<std::time::Duration>,
    /// How the metadata service treats session tokens.
    #[arg(long, value_name = "MODE", value_parser = ["optional", "required", "unsupported"])]
    metadata_tokens: Option<String>,
    /// Serve the API (ELB, IAM, AS) over https with a certificate for 127.0.0.1, ::1 and localhost,
    /// signed by a CA generated at start and written to DIR/ca.pem (trust it with elb-drain's
    /// cloud.ca_file). Replaces the scenario's [tls]. Metadata and admin stay plain http.
    #[arg(long, value_name = "DIR")]
    tls_self_signed: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// A stop with elb-drain and a naive stop, side by side, on loopback (under a minute).
    Demo,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Demo) = args.command {
        return match elb_sim::demo::run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("elb-sim demo: {e}");
                ExitCode::from(1)
            }
        };
    }
    let filter = std::env::var("ELB_SIM_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let mut scenario = match &args.config {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Scenario::from_toml(&t))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("elb-sim: {}: {e}", path.display());
                return ExitCode::from(78);
            }
        },
        None => Scenario::default(),
    };
    apply_flags(&mut scenario, args);
    let ca_dir = scenario.tls.as_ref().and_then(|t| t.self_signed.clone());
    let sim = match Sim::start(scenario).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            // What the scenario asked for cannot be (a bad certificate, a dangling reference) is a
            // configuration error, as a scenario that does not parse is.
            let config = matches!(
                e,
                elb_sim::SimError::Scenario(_) | elb_sim::SimError::Tls(_)
            );
            return ExitCode::from(if config { 78 } else { 1 });
        }
    };
    let listeners: serde_json::Map<String, serde_json::Value> = sim
        .listeners()
        .iter()
        .map(|(id, a)| (id.clone(), a.to_string().into()))
        .collect();
    let mut ready = serde_json::json!({"api": sim.api_url(), "metadata": sim.metadata_url(), "admin": sim.admin_url(), "listeners": listeners});
    if let Some(dir) = ca_dir {
        ready["ca_file"] = dir
            .join(elb_sim::tls::CA_FILE_NAME)
            .display()
            .to_string()
            .into();
    }
    // Before the ready line: a parent that signals as soon as it has read it must not hit the default
    // action (death without shutdown). `tokio::signal::ctrl_c()` would only register when first polled.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("elb-sim: signals: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{ready}");
    tracing::info!(api = %sim.api_url(), metadata = %sim.metadata_url(), admin = %sim.admin_url(), "elb-sim ready");
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "elb-sim stopping");
    sim.shutdown().await;
    tracing::info!("elb-sim stopped");
    ExitCode::SUCCESS
}

/// Flags win over the scenario file.
fn apply_flags(scenario: &mut Scenario, args: Args) {
    let settings = &mut scenario.settings;
    if args.any_port {
        let any = "127.0.0.1:0".to_owned();
        settings.api_listen = any.clone();
        settings.metadata_listen = any.clone();
        settings.admin_listen = any.clone();
        for l in &mut scenario.listener {
            l.listen = any.clone();
        }
    }
    if let Some(a) = args.api_listen {
        settings.api_listen = a;
    }
    if let Some(a) = args.metadata_listen {
        settings.metadata_listen = a;
    }
    if let Some(a) = args.admin_listen {
        settings.admin_listen = a;
    }
    if let Some(d) = args.token_lifetime {
        settings.token_lifetime = d;
    }
    if let Some(dir) = args.tls_self_signed {
        scenario.tls = Some(elb_sim::TlsConfig::self_signed(dir));
    }
    scenario.metadata.tokens = match args.metadata_tokens.as_deref() {
        Some("required") => TokenMode::Required,
        Some("unsupported") => TokenMode::Unsupported,
        Some(_) => TokenMode::Optional,
        None => scenario.metadata.tokens,
    };
}
