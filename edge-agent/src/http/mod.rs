//! What the edge serves over HTTP on its local listener.
//!
//! # Layout
//! - [`api`]: `/v1/tasks`, approvals, intents, health.
//! - [`guard`]: the bearer token (made at first start when none is
//!   configured) and the loopback `Host`/`Origin` check.
//! - [`webhook`]: signed inbound webhooks that become tasks.
//! - [`gateway`]: the OpenAI-compatible API over local models and tiers.
//! - [`metrics`]: the edge's figures at `/metrics`.
//! - [`mcp`]: the bundle's tools served to MCP clients at `/mcp`.

pub mod api;
pub mod gateway;
pub mod guard;
pub mod mcp;
pub mod metrics;
pub mod webhook;
