//! What the edge serves over HTTP on its local listener.
//!
//! # Layout
//! - [`api`]: `/v1/tasks`, approvals, intents, health; the bearer token.
//! - [`webhook`]: signed inbound webhooks that become tasks.
//! - [`gateway`]: the OpenAI-compatible API over local models and tiers.
//! - [`metrics`]: the edge's figures at `/metrics`.

pub mod api;
pub mod gateway;
pub mod metrics;
pub mod webhook;
