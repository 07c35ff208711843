//! ferry-receiver: the server side of ferry (SPEC §9, docs/PROTOCOL.md).
//!
//! `config` reads receiver.toml; `store` keeps records (SQLite or PostgreSQL) behind
//! one trait; `plan` decides what a write does (pure); `rules` checks records;
//! `service` runs writes (keys in progress, coalescing, metrics); `http` speaks the
//! contract; `daemon` starts and stops it all. Only `main` touches the process.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod rules;
pub mod service;
pub mod store;
pub mod tokens;
pub mod version;
