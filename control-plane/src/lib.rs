//! The aios control plane: enrols edges, signs and publishes policy bundles,
//! ingests and verifies every edge's audit chain, and serves the admin API.
//!
//! # Layout
//! - [`app`]: assembles a running control plane.
//! - [`server`]: the QUIC endpoint: enrolment and the sync driver.
//! - [`admission`]: limits on peers not yet authenticated (connections, enrolment failures).
//! - [`api`]: the admin HTTP API (axum).
//! - [`admin_tls`]: HTTPS for the admin API and console.
//! - [`auth`]: bearer tokens, console sessions, CSRF, login limits, permissions.
//! - [`console`]: the server-rendered fleet console.
//! - [`store`]: the SQLite state (one schema): tokens, edges, bundles, audit, alarms.
//! - [`accounts`]: operator accounts, roles, tokens, sessions, operator log.
//! - [`dispatch`]: tasks dispatched to edges, and their results.
//! - [`commands`]: signed operator commands and the approval queue.
//! - [`redact`]: what a role that may not see contents (the viewer) is shown.
//! - [`resend`]: the resend-until-receipt queue behind dispatches and commands.
//! - [`ingest`]: audit ingest: verify, store, raise alarms, project the views.
//! - [`views`]: task and metrics read models derived from the audit log.
//! - [`metrics`]: `/metrics` in OpenMetrics text.
//! - [`pki`]: the control plane's keys: the fleet CA and the bundle-signing key.
//! - [`fleet_ca`]: the fleet CA, the server certificate, and CA rotation with an overlap.
//! - [`key_rotation`]: rotating the bundle-signing key (announced in a bundle) and the fleet CA.
//! - [`renewal`]: edge certificate renewal over the sync connection.
//! - [`client`]: the admin API client the CLI uses.
//! - [`cli`]: the `aios-control-plane` command line.

pub mod accounts;
pub mod admin_tls;
pub mod admission;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod commands;
pub mod console;
pub mod dispatch;
pub mod fleet_ca;
pub mod ingest;
pub mod key_rotation;
pub mod metrics;
pub mod pki;
pub mod redact;
pub mod renewal;
pub mod resend;
pub mod server;
pub mod store;
pub mod views;
