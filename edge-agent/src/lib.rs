//! The aios edge agent: the process on an office machine that runs agents,
//! keeps the hash-chained audit log and syncs with the control plane.
//!
//! # Layout
//! - [`cli`]: the `aios-edge` command line and its client subcommands.
//! - [`daemon`]: `aios-edge run`: start-up, expiry checks, the loops.
//! - [`sync`]: the edge's identity, enrolment and the QUIC uplink.
//! - [`store`]: the edge's SQLite database: schema, identity, audit chain, bundle.
//! - [`tasks`]: durable tasks: the journal, the scheduler, the step executor.
//! - [`model_calls`]: model tiers, routing, retries and budgets; the cloud client.
//! - [`exec`]: the execution plane: intents, approvals, connectors, outbox.
//! - [`memory`]: semantic memory, authoritative records, working context.
//! - [`http`]: the local HTTP API, webhooks, the OpenAI-compatible gateway, metrics.

pub mod cli;
pub mod daemon;
pub mod exec;
pub mod http;
pub mod memory;
pub mod model_calls;
pub mod store;
pub mod sync;
pub mod tasks;
