//! The command line: parse, set up logging, run one command, turn its outcome into an exit code.
//!
//! Library code returns typed errors; only here is it decided how they look to a person (one line on
//! stderr) and which documented exit code they map to.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::exit::Exit;
use crate::logging::{self, LogFormat, eprintln};

/// What `--version` prints: the crate's version and the commit it was built from (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ELB_DRAIN_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "elb-drain",
    version = VERSION,
    about = "Take this server out of its Huawei Cloud ELB pools on stop, \
    and keep it alive until its connections have drained."
)]
pub struct Args {
    /// Configuration file.
    #[arg(long, global = true, env = "ELB_DRAIN_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Log line format (logs go to stderr; filter with ELB_DRAIN_LOG, RUST_LOG syntax).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The daemon: resolve memberships and credentials now, wait for SIGTERM/SIGINT, then deregister and
    /// drain, and exit.
    Run,
    /// Deregister and drain now, then exit (for ExecStop=, hook scripts, deploy tools).
    Drain,
    /// Supervise CMD (for hosts without systemd): on SIGTERM/SIGINT deregister and drain while CMD keeps
    /// serving, then stop CMD; if CMD dies on its own, deregister at once. Exits with CMD's status.
    Exec {
        /// The signal CMD gets once the drain is over.
        #[arg(long, default_value = "TERM", value_parser = crate::supervise::parse_signal)]
        stop_signal: i32,
        /// How long CMD may take to exit after its stop signal before SIGKILL.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Put this server back into its pools (what the state file says it had, and every [[member]] with
    /// an address and port), idempotently; wait until the members are healthy.
    Register {
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and credentials, resolve and print the memberships; changes nothing.
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Memberships, their health and the live connection count.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the live connection census for the drain ports.
    Connections {
        #[arg(long)]
        json: bool,
        /// Count these ports instead of the configured ones (no configuration file needed).
        #[arg(long, value_delimiter = ',')]
        ports: Vec<u16>,
    },
    /// Whether the configuration file describes this server yet (the systemd unit's ExecCondition=).
    ///
    /// Exit 0 when it does, 1 while it is absent or still the example (`example = true`), so that an
    /// install that is not configured yet starts nothing; the unit fails its start on any other exit.
    /// Reads that file only and validates nothing (`check` does): a broken or unreadable file counts
    /// as a configuration, which `run` then refuses.
    IsConfigured,
    /// Install the systemd unit and the example configuration, and enable the unit (static binary).
    ///
    /// What the Debian package does: the unit goes to /usr/local/lib/systemd/system, naming this binary
    /// by the path it runs from (install it where it stays first: a binary in /tmp or a home directory,
    /// which the unit's sandbox hides, is refused; so is the package's own), the example to
    /// /etc/elb-drain/elb-drain.toml (mode 0640) unless a file is there already, then `systemctl
    /// enable`. The unit starts once the configuration describes this server.
    InstallUnits {
        /// Install into this root (an image being built) instead of the running system. This binary
        /// must be in it: run the copy inside the root, or put a copy at the same path there.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

/// The whole program, for `main`.
pub fn main() -> ExitCode {
    // Before anything else: a stop signal during start-up waits for the handlers instead of killing us.
    crate::signals::hold();
    let args = Args::parse();
    logging::init(args.log_format);
    let exit = if matches!(args.command, Command::IsConfigured) {
        // Without a runtime: the unit skips its start when this exits 1, so 1 must mean "not
        // configured" and nothing else, and a runtime that cannot start exits 1 too.
        crate::signals::release();
        crate::install::is_configured(&args).unwrap_or_else(|e| e)
    } else {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(run(args)),
            Err(e) => {
                eprintln!("elb-drain: cannot start the runtime: {e}");
                Exit::Failure
            }
        }
    };
    // Neither waits on a reader that has stalled: see their modules.
    crate::notify::finish();
    logging::flush(logging::FLUSH_AT_EXIT);
    exit.into()
}

/// Loads the configuration, printing the error (and returning exit 78) when it is bad.
pub fn load_config(args: &Args) -> Result<Config, Exit> {
    match Config::load(&args.config, &config::process_env) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                tracing::warn!("{w}");
            }
            Ok(cfg)
        }
        Err(e) => {
            eprintln!("elb-drain: {e}");
            Err(Exit::Config)
        }
    }
}

async fn run(args: Args) -> Exit {
    if !matches!(
        args.command,
        Command::Run | Command::Drain | Command::Exec { .. }
    ) {
        // These install no handlers: the signals get their default action back.
        crate::signals::release();
    }
    let result = match &args.command {
        Command::Connections { json, ports } => crate::commands::connections(&args, ports, *json),
        Command::Run => crate::commands::run(&args).await,
        Command::Drain => crate::commands::drain(&args).await,
        Command::Exec {
            stop_signal,
            grace,
            command,
        } => crate::commands::exec(&args, command, *stop_signal, *grace).await,
        Command::Register { json } => crate::commands::register(&args, *json).await,
        Command::Check { json } => crate::commands::check(&args, *json).await,
        Command::Status { json } => crate::commands::status(&args, *json).await,
        // `main` runs it before this, without a runtime.
        Command::IsConfigured => crate::install::is_configured(&args),
        Command::InstallUnits { root } => crate::install::install_units(root),
    };
    result.unwrap_or_else(|e| e)
}
