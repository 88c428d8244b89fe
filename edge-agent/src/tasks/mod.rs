//! Durable tasks: every task and step result is journaled in SQLite in the
//! transaction that advances it, so a crash resumes at the first step
//! without a result and never runs a recorded step again.
//!
//! # Layout
//! - [`journal`]: the tables and every state change of a task, each with its
//!   audit event (states and transitions: `aios_shared::lifecycle::task`).
//! - [`scheduler`]: the runtime's dispatcher: who runs next, within the
//!   bundle's limits ([`scheduler::admit`]).
//! - [`executor`]: one run of a task, step by step.
//! - [`agent_step`]: the driver of an agent step's tool-using loop.
//! - [`loop_journal`]: that loop's journal (each model turn, each call).
//! - [`questions`]: what a loop's model asked a person, and the answers.
//! - [`handoff`]: another agent running a loop's work as a sub-task.

pub mod agent_step;
pub mod executor;
pub mod handoff;
pub mod journal;
pub mod loop_journal;
pub mod questions;
pub(crate) use questions::answer_in;
pub mod scheduler;

pub(crate) use journal::next;
pub use journal::{NewTask, RunEnd, StepRecord, SubmitError, TaskEvent, TaskFilter, TaskRecord, TaskState};
pub use scheduler::{Runtime, RuntimeError, RuntimeOptions, Submission};
