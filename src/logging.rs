//! Log output: human-readable text by default, one JSON object per line for collectors.
//!
//! Everything goes to stderr (stdout is for command output such as `check --json`). The filter comes
//! from `ELB_DRAIN_LOG` in `RUST_LOG`'s `target=level` syntax (e.g. `debug`, `warn,elb_drain=debug`;
//! no regular expressions, which keeps the binary small), default `info`. Secrets never reach here: they are
//! [`crate::secret::Secret`] values, which format as `***`.

use tracing_subscriber::filter::Targets;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. An invalid `ELB_DRAIN_LOG` is reported and the default used.
pub fn init(format: LogFormat) {
    let (filter, bad) = match std::env::var("ELB_DRAIN_LOG") {
        Ok(spec) if !spec.is_empty() => match spec.parse::<Targets>() {
            Ok(f) => (f, None),
            Err(e) => (
                default_filter(),
                Some(format!("ELB_DRAIN_LOG={spec:?} ignored: {e}")),
            ),
        },
        _ => (default_filter(), None),
    };
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let ansi = std::io::stderr().is_terminal();
    let _ = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_target(false),
            )
            .with(filter)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .with(filter)
            .try_init(),
    };
    if let Some(msg) = bad {
        tracing::warn!("{msg}");
    }
}

/// INFO for everything but rustls, whose certificate errors the agent reports itself, with the
/// endpoint and the fix (`ELB_DRAIN_LOG` can turn it back on).
fn default_filter() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("rustls", tracing::level_filters::LevelFilter::OFF)
}
