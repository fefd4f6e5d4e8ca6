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
//!
//! # Nothing the stop writes to can hold it
//!
//! A stop must end even when what it talks to stops listening. Every write on the way out, and what
//! bounds it (the tests are in `tests/agent_stalled_readers.rs` and beside each command's own):
//!
//! | writes to | how | bounded by |
//! |---|---|---|
//! | the notify socket ([`notify`]) | non-blocking `sendto`; what does not fit waits in an outbox of one of each field, retried by its own task | 2 s of retries, then dropped, except READY/STOPPING: tried once a second until taken (nothing else would say them); one try at exit |
//! | stderr: log, error lines, progress bar ([`logging`]) | a queue of 1024 lines, written by one thread | lossy when full (the loss counted); 500 ms to write it out at exit |
//! | status socket clients ([`status`]) | a task per client, never the drain; the document rendered once per change, not per client | 1 s per answer, 16 clients at a time, the rest in the kernel's backlog |
//! | the state file ([`state`]) | a temporary file, fsync, rename, after the DELETEs | fails at once on a full disk (ENOSPC): the old file is kept, the stop goes on. Read and written on a thread of its own: a filesystem that stops answering (a hung NFS server, a dead disk) costs the stop [`state::ACCESS_BOUND`] (5 s) once, then the stop goes on without that memory (`drain` reads the file at the stop: an unreadable one is an empty state and the API is asked); later reads and saves of the file are given up at once while that access is stuck |
//! | the cloud: DELETE, weight 0, the hook's EXTEND and answer ([`cloud`], [`hook`]) | HTTP | `cloud.request_timeout` a request (sending included), `cloud.retry_deadline` in all; the hook's heartbeat is dropped when the drain ends |
//! | the cloud: the group's hooks, read when a hook not seen before hangs and no `hook_name` is set ([`hook`]) | HTTP, before the drain starts | [`hook::KINDS_BOUND`] (5 s), then the hook is taken for a scale-in |
//! | the cloud: the discovery at the stop ([`agent::Agent::deregister`]) | HTTP, after the DELETEs (which never wait for it) | [`agent::STOP_DISCOVERY_BOUND`] (5 s), then the stop goes on with the memberships known |
//! | the `exec` child ([`supervise`]) | signals (`kill`, never blocks) | its stop: `--grace`, then SIGKILL, also for a child that blocks on its own stdio (inherited: the agent writes nothing for it) |
//! | the kernel: sock_diag requests, the signal self-pipe | netlink, a non-blocking pipe | the kernel reads at once; a destroy subscription that overflows is recounted |
//!
//! stdout is written only by `check`, `status`, `register` and `connections`, with their result, after
//! their work: no stop writes there.

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
