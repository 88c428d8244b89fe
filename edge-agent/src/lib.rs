//! The aios edge agent: the process on an office machine that runs agents,
//! keeps the hash-chained audit log and syncs with the control plane.
//!
//! # Layout
//! - [`cli`]: the `aios-edge` command line.
//! - [`daemon`]: `aios-edge run`: start-up, expiry checks, the uplink task.
//! - [`uplink`]: the QUIC sync driver around `aios_shared::sync::EdgeSync`.
//! - [`enroll`]: trading a one-time token for a certificate.
//! - [`identity`]: the edge's key and pins, and TLS client configurations.
//! - [`store`]: the edge's SQLite state: identity, audit chain, bundle.
//! - [`memory`]: semantic memory, authoritative records, working context;
//!   [`memory_cli`] is `aios-edge memory ...`.

pub mod api;
pub mod cli;
pub mod daemon;
pub mod enroll;
pub mod exec;
pub mod exec_cli;
pub mod gateway;
pub mod identity;
pub mod memory;
pub mod memory_cli;
pub mod metrics;
pub mod model_calls;
pub mod runtime;
pub mod store;
pub mod task_cli;
pub mod tasks;
pub mod uplink;
pub mod webhook;
