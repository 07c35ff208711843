//! ferry's development kit: what the integration tests, the benchmark, the torture
//! run, the model check and the receiver's examples share. Never shipped: only
//! dev-dependencies and examples use it.
//!
//! - [`server`]: the loopback test server that stores what it receives, honours
//!   Idempotency-Key, and fails in every way it is told to;
//! - [`receiver`]: the minimal loopback receiver the benchmark measures against;
//! - [`harness`]: whole `ferry` processes (spawn, signal, reap with peak RSS,
//!   NOTIFY_SOCKET, /proc samples) and stores seeded with SQL;
//! - [`http`]: reading one request off a connection, for both servers;
//! - [`notify`]: systemd's end of NOTIFY_SOCKET, every datagram kept;
//! - [`postgres`]: the PostgreSQL server the environment names;
//! - [`rng`]: the one seeded PRNG;
//! - [`bin`]: finding the binaries built beside an example.

pub mod bin;
pub mod harness;
pub mod http;
pub mod notify;
pub mod postgres;
pub mod receiver;
pub mod rng;
pub mod server;

/// The error of the kit's fallible helpers and of the examples' mains.
pub type BoxError = Box<dyn std::error::Error>;
