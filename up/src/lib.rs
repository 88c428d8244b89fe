//! `aios up`: a control plane, the sample shop and two edges in one
//! process, with the reference workloads published and sample work
//! dispatched. This crate is the only one that links both daemons.
//!
//! # Layout
//! - [`cli`]: the `aios` command line.
//! - [`up`]: starts everything, enrols the edges, publishes, dispatches.
//! - [`shop`]: the sample shop the triage workload's connector talks to.

pub mod cli;
pub mod shop;
pub mod up;
