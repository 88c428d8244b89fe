//! The aios control plane: enrols edges, signs and publishes policy bundles,
//! ingests and verifies every edge's audit chain, and serves the admin API.
//!
//! # Layout
//! - [`app`]: assembles a running control plane.
//! - [`server`]: the QUIC endpoint: enrolment and the sync driver.
//! - [`api`]: the admin HTTP API (axum).
//! - [`store`]: the SQLite state: tokens, edges, bundles, audit, alarms.
//! - [`pki`]: the fleet CA, server certificate and bundle-signing key.
//! - [`client`]: the admin API client the CLI uses.
//! - [`cli`]: the `aios-control-plane` command line.
//! - [`accounts`]: operator accounts, roles, tokens, sessions, operator log.
//! - [`views`]: task and metrics read models derived from the audit log.

pub mod accounts;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod commands;
pub mod console;
pub mod dispatch;
pub mod metrics;
pub mod pki;
pub mod resend;
pub mod server;
pub mod store;
pub mod views;
