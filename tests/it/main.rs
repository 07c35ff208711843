//! ferry's integration tests: one binary (fast to link), one module per area.

mod support;

// The test server (devkit/src/server.rs), shared with `examples/torture`.
use ferry_devkit::server;

mod backup_leftovers;
mod batches;
mod cli;
mod every_path;
mod json_interop;
mod migrate;
mod operator;
mod run_lock;
mod sqlite_tables;
mod store_conformance;
mod sync;
mod systemd;
