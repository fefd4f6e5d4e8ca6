//! The configuration file as an attacker (or a careless editor) writes it: arbitrary bytes through the
//! real parse path, `Config::parse`, with an environment taken from the input too.
//!
//! Input: the TOML text, optionally followed by a NUL byte and `NAME=value` lines for the environment
//! (`ELB_DRAIN_TOKEN` is set unless the input overrides it, so a seed gets past `[auth]` to the rest).
//! Checked: no panic; a syntax error gives the TOML position; a validation error names its field.

#![no_main]

use std::collections::HashMap;
use std::path::Path;

use elb_drain::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

#[path = "clock.rs"]
mod clock;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (text, env_lines) = input.split_once('\0').unwrap_or((input, ""));
    let mut env: HashMap<&str, &str> = HashMap::from([("ELB_DRAIN_TOKEN", "tok")]);
    for line in env_lines.lines() {
        if let Some((k, v)) = line.split_once('=') {
            env.insert(k, v);
        }
    }
    // Paths the environment could point at are kept in a scratch directory, never a system one.
    env.insert("STATE_DIRECTORY", "/tmp/elb-drain-fuzz");
    env.insert("RUNTIME_DIRECTORY", "/tmp/elb-drain-fuzz");
    let lookup = |name: &str| {
        env.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
    };
    match Config::parse(text, Path::new("fuzz.toml"), &lookup) {
        Ok(config) => {
            // A valid configuration keeps the invariants the drain relies on.
            assert!(config.drain.settle < config.drain.timeout);
            assert!(!config.drain.poll_interval.is_zero());
            assert!((1..=2000).contains(&config.cloud.page_size));
            assert!(!config.drain_ports().contains(&0));
            clock::assert_durations_fit(&config);
        }
        Err(ConfigError::Syntax { path, message }) => {
            assert_eq!(path, Path::new("fuzz.toml"));
            assert!(
                message.contains("line "),
                "a syntax error without a position: {message}"
            );
        }
        Err(ConfigError::Invalid { field, reason }) => {
            assert!(
                !field.trim().is_empty(),
                "an error naming no field: {reason}"
            );
            assert!(
                !reason.trim().is_empty(),
                "an error saying nothing: {field}"
            );
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse never reads the file: {e}"),
    }
});
