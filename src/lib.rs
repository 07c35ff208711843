//! ferry: a store-and-forward record daemon for single-board computers.
//!
//! Local programs keep records in a store ([`store`], SQLite or JSON files); ferry
//! pushes each one to a remote HTTP server exactly once in effect. [`config`] is the
//! user's one file; [`cli`] is the command line over them.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod log;
pub mod store;
pub mod sync;
