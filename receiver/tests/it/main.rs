//! ferry-receiver's tests: one binary (`cargo nextest run -p ferry-receiver`).
//! PostgreSQL tests need a server: run them inside `pg_virtualenv` (see support.rs).

mod api;
mod conformance;
mod process;
mod support;
