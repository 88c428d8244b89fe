//! The task runtime's scheduler: runs agents from the bundle in force as
//! durable tasks.
//!
//! A dispatcher takes due tasks from the database, oldest first, as far as
//! the global and per-agent concurrency limits allow ([`admit`], a pure
//! decision), and runs each on its own tokio task through the step executor
//! (`super::executor`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aios_shared::agent::Definitions;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn, Instrument};

use crate::exec::{Applied, ExecPlane};
use crate::memory::{EmbedderSource, Memory};
use crate::model_calls::ModelCalls;
use crate::store::EdgeStore;
use crate::sync::identity::Identity;
use crate::tasks::{NewTask, RunEnd, SubmitError, TaskRecord};
use aios_daemon::clock::SharedClock;
use aios_daemon::db::DbError;

/// How often the dispatcher looks for due tasks when nothing wakes it.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How long a task waits before retrying when no tier can serve it.
pub(super) const TIER_DOWN_RETRY_MS: i64 = 5_000;

/// What the runtime needs besides the store.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Test hook: a file to which a line `TASK SEQ CALL_ID` is appended just
    /// before every model call, so a test can count calls across crashes.
    pub call_log: Option<PathBuf>,
    /// The edge's labels (`key=value`), which the policy sees.
    pub labels: Vec<String>,
    /// Where the runtime reads the time (the real clock unless a test moves one).
    pub clock: SharedClock,
    /// What bundles may reach on this machine (secrets, files, programs).
    pub access: aios_shared::access::BundleAccess,
}

/// A submission as the API, the CLI or the control plane makes it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct Submission {
    /// The agent to run.
    pub agent: String,
    /// The task's input document.
    pub input: Value,
    /// The task kind, checked against the agent's `accepts`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Repeating a submission with the same key returns the same task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No bundle has arrived yet.
    #[error("no policy bundle is in force yet, so no agent is defined")]
    NoBundle,
    /// The bundle does not define the agent.
    #[error("agent `{agent}` is not defined in bundle version {version}")]
    UnknownAgent {
        /// The agent asked for.
        agent: String,
        /// The bundle in force.
        version: u64,
    },
    /// The agent does not take tasks of this kind.
    #[error("agent `{agent}` does not accept tasks of kind `{kind}` (it accepts {accepts:?})")]
    KindRefused {
        /// The agent.
        agent: String,
        /// The kind submitted.
        kind: String,
        /// What it accepts.
        accepts: Vec<String>,
    },
    /// The submission failed.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The runtime; cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: EdgeStore,
    pub(super) identity: Identity,
    pub(super) options: RuntimeOptions,
    pub(super) tiers: ModelCalls,
    pub(super) exec: ExecPlane,
    pub(super) memory: Memory,
    pub(super) wake: Notify,
    dispatch: Mutex<Dispatch>,
    pub(super) definitions: Mutex<Option<(u64, Arc<Definitions>)>>,
}

#[derive(Default)]
struct Dispatch {
    /// Cancellation flags of running tasks.
    running: HashMap<String, (String, Arc<AtomicBool>)>,
    /// Running tasks per agent.
    per_agent: HashMap<String, usize>,
}

/// What stopped a run before its end.
pub(super) enum Stop {
    /// Record this end.
    End(RunEnd),
    /// The database failed; leave the task for the next start.
    Db(DbError),
}

impl From<DbError> for Stop {
    fn from(err: DbError) -> Self {
        Stop::Db(err)
    }
}

impl Runtime {
    /// A runtime over `store`; nothing runs until [`Runtime::run`].
    pub fn new(store: EdgeStore, identity: Identity, tiers: ModelCalls, options: RuntimeOptions) -> Runtime {
        let exec = ExecPlane::new(store.clone(), identity.clone(), options.labels.clone(), options.clock.clone());
        let (models, load) = tiers.model_source();
        let source = EmbedderSource::Catalog { models, load };
        let memory = Memory::new(&store, Some(identity.clone()), source, &Default::default());
        Runtime {
            inner: Arc::new(Inner {
                exec,
                memory,
                store,
                identity,
                options,
                tiers,
                wake: Notify::new(),
                dispatch: Mutex::new(Dispatch::default()),
                definitions: Mutex::new(None),
            }),
        }
    }

    /// Milliseconds since the Unix epoch, from the runtime's clock.
    pub fn now(&self) -> i64 {
        self.inner.options.clock.unix_ms()
    }

    /// The runtime's clock.
    pub fn access(&self) -> &aios_shared::access::BundleAccess {
        &self.inner.options.access
    }

    /// Where the runtime reads the time.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.options.clock
    }

    /// The store the runtime works on.
    pub fn store(&self) -> &EdgeStore {
        &self.inner.store
    }

    /// The tiers.
    pub fn tiers(&self) -> &ModelCalls {
        &self.inner.tiers
    }

    /// The edge's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The execution plane.
    pub fn exec(&self) -> &ExecPlane {
        &self.inner.exec
    }

    /// Makes the dispatcher look for due tasks now.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Verifies and applies an operator command from the control plane (or a
    /// local approval), once per id. A compensation runs in the background;
    /// its outcome is in the audit log.
    pub async fn apply_command(&self, body: aios_shared::command::CommandBody) -> Result<Applied, DbError> {
        let applied = self.inner.store.apply_command(&self.inner.identity, body, self.now()).await?;
        if let Applied::Compensate { task, step, by } = &applied {
            if let Some((version, defs)) = self.definitions().await? {
                let (runtime, task, step, by) = (self.clone(), task.clone(), step.clone(), by.clone());
                tokio::spawn(async move {
                    match runtime.inner.exec.compensate(version, &defs, &task, &step, &by).await {
                        Ok(outcome) => info!(%task, %step, ?outcome, "compensation finished"),
                        Err(err) => warn!(%task, %step, %err, "compensation stopped by a database error"),
                    }
                });
            }
        }
        self.wake();
        Ok(applied)
    }

    /// The memory plane.
    pub fn memory(&self) -> &Memory {
        &self.inner.memory
    }

    /// The definitions of the bundle in force and its version.
    pub async fn definitions(&self) -> Result<Option<(u64, Arc<Definitions>)>, DbError> {
        let Some(signed) = self.inner.store.bundle().await? else { return Ok(None) };
        let version = signed.peek_version().unwrap_or(0);
        {
            let cached = self.inner.definitions.lock().expect("definitions lock");
            if let Some((v, defs)) = cached.as_ref() {
                if *v == version {
                    return Ok(Some((version, defs.clone())));
                }
            }
        }
        let body = signed.open(&self.inner.identity.bundle_key).map_err(|err| DbError::Corrupt(err.to_string()))?;
        // Checked when offered too; again here, in case the edge's
        // configuration was narrowed since.
        self.inner.options.access.check(&body.definitions).map_err(|err| {
            DbError::Corrupt(format!("the bundle in force reaches further than this edge allows: {err}"))
        })?;
        let defs = Arc::new(body.definitions);
        self.inner.tiers.configure(&defs);
        self.inner.memory.configure(&defs.memory);
        *self.inner.definitions.lock().expect("definitions lock") = Some((version, defs.clone()));
        Ok(Some((version, defs)))
    }

    /// Persists a task (the reply means it is on disk) and wakes the dispatcher.
    pub async fn submit(&self, submission: Submission, source: &str) -> Result<(TaskRecord, bool), RuntimeError> {
        let (version, defs) = self.definitions().await?.ok_or(RuntimeError::NoBundle)?;
        let agent = defs
            .agents
            .get(&submission.agent)
            .ok_or_else(|| RuntimeError::UnknownAgent { agent: submission.agent.clone(), version })?;
        if !agent.accepts(submission.kind.as_deref()) {
            return Err(RuntimeError::KindRefused {
                agent: submission.agent,
                kind: submission.kind.unwrap_or_default(),
                accepts: agent.accepts.clone(),
            });
        }
        let now = self.now();
        let task = NewTask {
            agent: submission.agent.clone(),
            agent_version: agent.version,
            kind: submission.kind,
            input: submission.input,
            idempotency_key: submission.idempotency_key,
            source: source.to_owned(),
            deadline_ms: now.saturating_add(agent.deadline_ms()),
            parent: None,
            budget_usd: None,
        };
        let outcome = self.inner.store.submit_task(&self.inner.identity, task, now).await?;
        let id = &outcome.0.id;
        let trace_id = aios_shared::trace::task_trace_hex(id);
        let span = tracing::info_span!("task.submit", task = %id, agent = %outcome.0.agent, source, %trace_id);
        aios_daemon::telemetry::join_task_trace(&span, id);
        span.in_scope(|| debug!(repeated = outcome.1, "task submitted"));
        self.inner.wake.notify_one();
        Ok(outcome)
    }

    /// Cancels a task in any state; a running one stops at once (its model
    /// call is dropped) and is recorded as cancelled.
    pub async fn cancel(&self, id: &str) -> Result<Option<TaskRecord>, DbError> {
        let task = self.inner.store.cancel_task(&self.inner.identity, id, self.now()).await?;
        if let Some((_, flag)) = self.inner.dispatch.lock().expect("dispatch lock").running.get(id) {
            flag.store(true, Ordering::SeqCst);
        }
        self.inner.wake.notify_one();
        Ok(task)
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.inner.dispatch.lock().expect("dispatch lock").running.len()
    }

    /// Runs the dispatcher until `shutdown` turns true; tasks still running
    /// then are put back in the queue at their last checkpoint.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        match self.inner.store.requeue_interrupted(self.now()).await {
            Ok(0) => {}
            Ok(n) => info!(tasks = n, "resuming tasks interrupted by the last shutdown"),
            Err(err) => warn!(%err, "cannot re-queue interrupted tasks"),
        }
        let mut handles: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(err) = self.dispatch_due(&mut handles).await {
                warn!(%err, "task dispatch failed");
            }
            handles.retain(|h| !h.is_finished());
            let sleep = match self.inner.store.next_wake_ms().await {
                Ok(Some(at)) => Duration::from_millis((at - self.now()).clamp(1, IDLE_POLL.as_millis() as i64) as u64),
                _ => IDLE_POLL,
            };
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
        for handle in &handles {
            handle.abort();
        }
        for handle in handles {
            let _ = handle.await;
        }
        if let Err(err) = self.inner.store.requeue_interrupted(self.now()).await {
            warn!(%err, "cannot re-queue running tasks at shutdown");
        }
    }

    async fn dispatch_due(&self, handles: &mut Vec<tokio::task::JoinHandle<()>>) -> Result<(), DbError> {
        let Some((_, defs)) = self.definitions().await? else { return Ok(()) };
        let global = defs.runtime.max_concurrent_tasks as usize;
        if self.running() >= global {
            return Ok(());
        }
        for (id, agent_name) in self.inner.store.due_tasks(self.now(), 256).await? {
            let limit = defs.agents.get(&agent_name).map_or(1, |a| a.max_concurrent as usize);
            {
                let dispatch = self.inner.dispatch.lock().expect("dispatch lock");
                let load = Load {
                    running: dispatch.running.len(),
                    global_limit: global,
                    already_running: dispatch.running.contains_key(&id),
                    agent_running: dispatch.per_agent.get(&agent_name).copied().unwrap_or(0),
                    agent_limit: limit,
                };
                match admit(load) {
                    Admission::Start => {}
                    Admission::Skip => continue,
                    Admission::Full => break,
                }
            }
            let claimed =
                self.inner.store.claim_task(&self.inner.identity, &id, defs.runtime.max_attempts, self.now()).await?;
            let Some(task) = claimed else { continue };
            let cancel = Arc::new(AtomicBool::new(false));
            {
                let mut dispatch = self.inner.dispatch.lock().expect("dispatch lock");
                dispatch.running.insert(id.clone(), (agent_name.clone(), cancel.clone()));
                *dispatch.per_agent.entry(agent_name.clone()).or_default() += 1;
            }
            let runtime = self.clone();
            let defs = defs.clone();
            let trace_id = aios_shared::trace::task_trace_hex(&id);
            let span = tracing::info_span!("task", task = %id, agent = %agent_name, %trace_id);
            aios_daemon::telemetry::join_task_trace(&span, &id);
            handles.push(tokio::spawn(
                async move {
                    runtime.run_task(task, defs, cancel).await;
                    runtime.finished(&id, &agent_name);
                }
                .instrument(span),
            ));
        }
        Ok(())
    }

    fn finished(&self, id: &str, agent: &str) {
        let mut dispatch = self.inner.dispatch.lock().expect("dispatch lock");
        dispatch.running.remove(id);
        if let Some(count) = dispatch.per_agent.get_mut(agent) {
            *count = count.saturating_sub(1);
        }
        drop(dispatch);
        self.inner.wake.notify_one();
    }
}

/// What the dispatcher knows when a due task comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Tasks running now, all agents.
    pub running: usize,
    /// The bundle's `max_concurrent_tasks`.
    pub global_limit: usize,
    /// This task is already running (a wake-up raced its start).
    pub already_running: bool,
    /// Tasks of this task's agent running now.
    pub agent_running: usize,
    /// The agent's `max_concurrent`.
    pub agent_limit: usize,
}

/// What to do with a due task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// No room at all: stop looking at due tasks in this pass.
    Full,
    /// Not this one (already running, or its agent is at its limit); the
    /// next due task may still start.
    Skip,
    /// Claim it and run it.
    Start,
}

/// Whether a due task may start: the global limit first, then the task's
/// own agent's limit. Oldest-first order is the caller's (the due list).
pub fn admit(load: Load) -> Admission {
    if load.running >= load.global_limit {
        Admission::Full
    } else if load.already_running || load.agent_running >= load.agent_limit {
        Admission::Skip
    } else {
        Admission::Start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(running: usize, agent_running: usize) -> Load {
        Load { running, global_limit: 4, already_running: false, agent_running, agent_limit: 2 }
    }

    #[test]
    fn the_global_limit_stops_the_pass_and_an_agent_limit_skips_one_task() {
        assert_eq!(admit(load(0, 0)), Admission::Start);
        assert_eq!(admit(load(3, 1)), Admission::Start);
        assert_eq!(admit(load(3, 2)), Admission::Skip, "the agent is at its limit; others may start");
        assert_eq!(admit(load(4, 0)), Admission::Full, "no room for anyone");
        assert_eq!(admit(Load { already_running: true, ..load(0, 0) }), Admission::Skip);
        assert_eq!(admit(Load { agent_limit: 0, ..load(0, 0) }), Admission::Skip, "a paused agent never starts");
    }

    /// Over a queue of mixed agents, the admitted set never passes either
    /// limit and keeps the queue's order within each agent.
    #[test]
    fn a_pass_over_a_queue_respects_both_limits() {
        let queue = ["a", "b", "a", "a", "c", "b", "a", "c"];
        let (global_limit, agent_limit) = (5, 2);
        let mut per_agent = std::collections::HashMap::<&str, usize>::new();
        let mut started = Vec::new();
        for (idx, agent) in queue.iter().enumerate() {
            let load = Load {
                running: started.len(),
                global_limit,
                already_running: false,
                agent_running: per_agent.get(agent).copied().unwrap_or(0),
                agent_limit,
            };
            match admit(load) {
                Admission::Full => break,
                Admission::Skip => continue,
                Admission::Start => {
                    *per_agent.entry(agent).or_default() += 1;
                    started.push(idx);
                }
            }
        }
        assert_eq!(started, [0, 1, 2, 4, 5], "a's third and later wait; the fifth start fills the edge");
    }
}
