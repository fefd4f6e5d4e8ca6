//! elb-drain: take this server out of its Huawei Cloud ELB pools when it stops, and keep it alive
//! until the connections it already has are gone.
//!
//! The flow is a straight line; each module knows nothing of the stages after it:
//!
//! ```text
//! config ─▶ credentials ─▶ cloud (ELB, IAM, metadata, AS)
//!                              │
//! trigger (signals | hook | command) ─▶ drain engine ─▶ census (netlink sock_diag; /proc fallback)
//!                              │
//!                       events ─▶ sinks: log, systemd notify, progress, status
//! ```
//!
//! * [`config`]: the TOML file and environment, parsed once into typed values.
//! * [`ids`], [`secret`]: validated identifiers and a redacting secret type.
//! * [`files`]: bounded reads of the local files the agent is pointed at.
//! * [`install`]: the unit and example configuration the static binary installs itself.

pub mod agent;
pub mod census;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod drain;
pub mod exit;
pub mod files;
pub mod hook;
pub mod ids;
pub mod install;
pub mod logging;
pub mod notify;
pub mod register;
pub mod report;
pub mod secret;
pub mod sign;
pub mod signals;
pub mod state;
pub mod status;
pub mod supervise;
