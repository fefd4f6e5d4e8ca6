//! Log output: human-readable text by default, one JSON object per line for collectors.
//!
//! Everything goes to stderr (stdout is for command output such as `check --json`). The filter comes
//! from `ELB_DRAIN_LOG` in `RUST_LOG` syntax, default `info`. Secrets never reach here: they are
//! [`crate::secret::Secret`] values, which format as `***`.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. An invalid `ELB_DRAIN_LOG` is reported and the default used.
pub fn init(format: LogFormat) {
    let (filter, bad) = match std::env::var("ELB_DRAIN_LOG") {
        Ok(spec) if !spec.is_empty() => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!("ELB_DRAIN_LOG={spec:?} ignored: {e}")),
            ),
        },
        _ => (EnvFilter::new("info"), None),
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if let Some(msg) = bad {
        tracing::warn!("{msg}");
    }
}
