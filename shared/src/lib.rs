//! The sans-IO core of aios, shared by the control plane and the edge agent.
//!
//! Nothing here opens a socket or a file or reads a clock: time comes in as
//! arguments, bytes come in and go out as values. That keeps the protocol and
//! the security checks deterministic and testable on a virtual clock.
//!
//! # Layout
//! - [`wire`]: frames and their length-delimited encoding.
//! - [`sync`]: the edge and control-plane sync state machines.
//! - [`agent`]: agent definitions, model tiers and runtime settings carried
//!   in bundles, their validation, prompt templates and validate checks.
//! - [`audit`]: the hash-chained audit log and its verification.
//! - [`bundle`]: signed policy bundles, their verification and freshness rules.
//! - [`exec`]: connectors, webhooks and the Cedar policy carried in bundles.
//! - [`access`]: which secrets, files and programs an edge lets bundles reach.
//! - [`webhook`]: webhook signature headers: strict parsing and HMAC checks.
//! - [`served`]: agents the edge offers to MCP clients as tools.
//! - [`policy`]: the Cedar decision (allow, deny, require approval) for a side effect.
//! - [`rotation`]: bundle-signing key rotation: endorsements and the chain edges follow.
//! - [`command`]: signed operator commands sent down to one edge.
//! - [`token`]: one-time enrolment tokens that pin the CA.
//! - [`identity`]: when edge certificates are renewed and granted; which fleet CAs are trusted.
//! - [`login`]: the console login form before authentication: decoding and screening.
//! - [`router`]: model tiering decisions, circuit breakers, budget ledger.
//! - [`backoff`]: the one backoff with jitter (reconnects, retries).
//! - [`lifecycle`]: task, intent and approval states and their transitions.
//! - [`duration`]: `30d`-style durations for flags and files.
//! - [`memory`]: memory classifications, retention and agents' memory access.
//! - [`trace`]: the trace id a task carries, derived from its id.

pub mod access;
pub mod agent;
pub mod audit;
pub mod backoff;
pub mod bundle;
pub mod command;
pub mod duration;
pub mod exec;
pub mod identity;
pub mod lifecycle;
pub mod login;
pub mod memory;
pub mod policy;
pub mod rotation;
pub mod router;
pub mod served;
pub mod sync;
pub mod token;
pub mod trace;
pub mod webhook;
pub mod wire;
