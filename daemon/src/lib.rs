//! Daemon plumbing that the control plane and the edge agent both use, so
//! that neither links the other: SQLite with group commit, the hash-chain
//! table, QUIC framing and settings, tracing set-up, Prometheus helpers, the
//! clock and command-line helpers. Nothing here knows what an edge or a
//! control plane is.
//!
//! # Layout
//! - [`db`]: one writer thread with group commit, a reader, migrations.
//! - [`chain`]: a hash-chained event table (head, append, load) over `db`.
//! - [`cert`]: what a certificate says: its validity, its key, its issuer.
//! - [`transport`]: frames over QUIC streams, the QUIC settings, close codes.
//! - [`telemetry`]: the `tracing` subscriber and OTLP export.
//! - [`metrics`]: HTTP request metrics and the OpenMetrics scrape.
//! - [`clock`]: the one place real time is read; a clock tests can move.
//! - [`cli`]: log format, configuration file, shutdown signal, task input.

pub mod cert;
pub mod chain;
pub mod cli;
pub mod clock;
pub mod db;
pub mod metrics;
pub mod telemetry;
pub mod transport;
