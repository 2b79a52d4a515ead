//! nodegate: a security gateway for distributed-ledger nodes. See shared/design.md for the request
//! flow; each step is a module named after it.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod bans;
pub mod body;
pub mod cluster;
pub mod cold;
pub mod config;
pub mod conn;
pub mod demo;
pub mod error;
pub mod events;
pub mod gateway;
pub mod health;
pub mod host;
pub mod http;
pub mod init;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod procnet;
pub mod profile;
pub mod proxy;
pub mod shutdown;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use gateway::Gateway;

/// How many cases a property test runs: `NODEGATE_FUZZ_CASES`, 256 by default (the same knob as
/// tests/fuzz.rs).
#[cfg(test)]
pub(crate) fn fuzz_config() -> proptest::test_runner::Config {
    let cases = std::env::var("NODEGATE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256);
    proptest::test_runner::Config { cases, ..Default::default() }
}
