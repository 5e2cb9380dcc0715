//! ferry: deploy release tarballs to instances in regions, on the local machine or
//! fleets of SSH hosts, from the `fly.toml` people already have. `main.rs` is a thin
//! shell around [`run`]; everything else lives in these modules.

pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod deploy;
pub mod error;
pub mod fleet;
pub mod health;
pub mod history;
pub mod host;
pub mod postgres;
pub mod redact;
pub mod release;
pub mod report;
pub mod run;
pub mod settings;
pub mod transport;
