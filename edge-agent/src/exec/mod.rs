//! The execution plane: the only way an agent acts on the world.
//!
//! An `act` step becomes an intent: its arguments are typed and checked
//! against the action's schema, its idempotency key is derived from the
//! task, the step and the arguments, the Cedar policy decides (allow, deny,
//! require approval), and intent and decision are written to the outbox
//! ([`outbox`]) before anything is sent. Execution then goes through the
//! connector's circuit breaker and rate limiter, with retries and backoff
//! for retryable errors only; a timeout or a lost reply makes the intent
//! `unknown`, which is resolved by sending again with the same key, never a
//! new one. An intent that exhausts its attempts or meets a permanent error
//! lands in the dead-letter queue with its full error history.
//!
//! The model never decides what is allowed: whatever a model wrote into the
//! arguments, the policy sees the typed arguments and decides.

pub mod connector;
pub mod email;
pub mod file;
pub mod http;
pub mod mcp;
pub mod outbox;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aios_shared::audit::kinds;
use aios_shared::backoff::Backoff;
use aios_shared::bundle::Autonomy;
use aios_shared::exec::{ActionSpec, ConnectorKind, ConnectorSpec};
use aios_shared::memory::Classification;
use aios_shared::policy::{ActionRequest, Decision, PolicyEngine};
use aios_shared::router::{BreakerConfig, CircuitBreaker};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, warn, Instrument};

use self::connector::{Call, Connector, ConnectorError};
use self::outbox::{ApprovalRequest, ApprovalState, Attempt, Intent, IntentEvent, IntentState, NewIntent, Verdict};
use crate::store::EdgeStore;
use crate::sync::identity::Identity;
use aios_daemon::clock::SharedClock;
use aios_daemon::db::DbError;

pub use self::outbox::{Applied, Approval};

/// What an act step asks for, rendered.
#[derive(Debug, Clone)]
pub struct ActRequest {
    /// The task.
    pub task_id: String,
    /// The agent.
    pub agent: String,
    /// The step's position and id.
    pub seq: u32,
    /// The step's id.
    pub step_id: String,
    /// The connector.
    pub connector: String,
    /// The action.
    pub action: String,
    /// The arguments.
    pub args: ActArgs,
    /// For a call an agent step's model proposed, its key
    /// (`aios_shared::agent::tool_loop::call_key`): the intent's key derives
    /// from it, so each call of a loop is its own effect, made once.
    pub call: Option<String>,
    /// The resource: Cedar type, id, attributes.
    pub resource: (String, String, Value),
    /// The agent's reasoning, for the approver.
    pub reasoning: Option<String>,
    /// What the agent relied on (retrieved items), for the approver.
    pub sources: Vec<Value>,
    /// The most sensitive classification among the sources, which the
    /// policy sees as `context.classification`.
    pub classification: Option<String>,
    /// Why earlier results of this task need a person's review (a step that
    /// wanted a bigger model ran on the local one); non-empty turns an
    /// allowed side effect into one that waits for approval.
    pub review: Vec<String>,
}

/// An act request's arguments.
#[derive(Debug, Clone)]
pub enum ActArgs {
    /// An `act` step's rendered templates, typed by the action's schema.
    Rendered(BTreeMap<String, String>),
    /// A model's proposed call: JSON already, checked against the schema
    /// here again before anything is declared.
    Json(Value),
}

/// The typed arguments of `request` for `action`, checked against its schema.
fn request_args(action: &ActionSpec, args: &ActArgs) -> Result<Value, String> {
    match args {
        ActArgs::Rendered(rendered) => connector::typed_args(action, rendered),
        ActArgs::Json(value) => {
            if !value.is_object() {
                return Err("the arguments must be a JSON object".into());
            }
            if let Some(schema) = &action.schema {
                aios_shared::exec::check_args(schema, value)?;
            }
            Ok(value.clone())
        }
    }
}

/// A side effect built on results that need review waits for a person,
/// whatever the policy would let the agent do alone.
fn gate_on_review(decision: Decision, review: &[String]) -> Decision {
    match decision {
        Decision::Allow { policies } if !review.is_empty() => Decision::RequireApproval {
            policies,
            reason: format!("earlier results need human review: {}", review.join("; ")),
        },
        other => other,
    }
}

/// The most sensitive `classification` among retrieved items.
pub fn highest_classification(sources: &[Value]) -> Option<String> {
    sources
        .iter()
        .filter_map(|item| item.get("classification")?.as_str()?.parse::<Classification>().ok())
        .max()
        .map(|c| c.as_str().to_owned())
}

/// How an act step ended.
#[derive(Debug, Clone)]
pub enum ActOutcome {
    /// The effect happened (now or before): the step's output.
    Done(Value),
    /// Not yet: wait for an approval or a breaker, until `until_ms` at most.
    Park {
        /// Why.
        reason: String,
        /// When to look again.
        until_ms: i64,
    },
    /// It will not happen: bad arguments, a connector the bundle lacks.
    Failed(String),
    /// It will not happen because someone said no: the policy denied it, an
    /// approver rejected it, its approval lapsed, an operator discarded it.
    Refused(String),
    /// It is in the dead-letter queue: an operator decides.
    DeadLettered(String),
}

/// The connectors and policy of one bundle version, built once.
struct Plane {
    version: u64,
    engine: PolicyEngine,
    approval_ttl_ms: i64,
    connectors: HashMap<String, Arc<Live>>,
}

/// A connector with its resilience state.
struct Live {
    spec: ConnectorSpec,
    connector: Box<dyn Connector>,
    limiter: Option<DefaultDirectRateLimiter>,
    breaker: Mutex<CircuitBreaker>,
}

/// The execution plane of one edge.
#[derive(Clone)]
pub struct ExecPlane {
    store: EdgeStore,
    identity: Identity,
    labels: Arc<Vec<String>>,
    plane: Arc<Mutex<Option<Arc<Plane>>>>,
    /// Where approval lapses, breakers and retries read the time.
    clock: SharedClock,
}

/// Hex SHA-256 of the canonical JSON of `args`: object keys sorted at every
/// depth, whatever order they were written or parsed in.
pub fn args_hash(args: &Value) -> String {
    hex::encode(Sha256::digest(canonical(args).to_string().as_bytes()))
}

/// `value` with every object's keys in sorted order.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|key| (key.clone(), canonical(&map[key]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

impl ExecPlane {
    /// The plane for this edge; `labels` are its `key=value` labels.
    pub fn new(store: EdgeStore, identity: Identity, labels: Vec<String>, clock: SharedClock) -> Self {
        Self { store, identity, labels: Arc::new(labels), plane: Arc::new(Mutex::new(None)), clock }
    }

    fn plane(&self, version: u64, defs: &aios_shared::agent::Definitions) -> Result<Arc<Plane>, String> {
        let mut cached = self.plane.lock().expect("plane lock");
        if let Some(plane) = cached.as_ref().filter(|p| p.version == version) {
            return Ok(plane.clone());
        }
        let engine = match &defs.policy {
            Some(policy) => PolicyEngine::new(policy).map_err(|err| err.to_string())?,
            None => PolicyEngine::deny_all(),
        };
        let mut connectors = HashMap::new();
        for (name, spec) in &defs.connectors {
            let limiter = spec.rate_per_second.and_then(|rate| {
                let rate = std::num::NonZeroU32::new(rate)?;
                let burst = spec.burst.and_then(std::num::NonZeroU32::new).unwrap_or(rate);
                Some(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)))
            });
            let breaker = CircuitBreaker::new(BreakerConfig {
                failure_threshold: spec.breaker_failures,
                cool_down: Duration::from_millis(spec.breaker_cooldown_ms()),
            });
            let live = Live {
                spec: spec.clone(),
                connector: connector::build(name, spec)?,
                limiter,
                breaker: Mutex::new(breaker),
            };
            connectors.insert(name.clone(), Arc::new(live));
        }
        let approval_ttl_ms =
            defs.policy.as_ref().map_or(aios_shared::exec::DEFAULT_APPROVAL_TTL_MS, |p| p.approval_ttl_ms());
        let plane = Arc::new(Plane { version, engine, approval_ttl_ms, connectors });
        *cached = Some(plane.clone());
        Ok(plane)
    }

    /// Runs an act step: declare (once), decide, wait for approval, execute.
    pub async fn act(
        &self,
        version: u64,
        defs: &aios_shared::agent::Definitions,
        request: ActRequest,
    ) -> Result<ActOutcome, DbError> {
        let plane = match self.plane(version, defs) {
            Ok(plane) => plane,
            Err(err) => return Ok(ActOutcome::Failed(err)),
        };
        let Some(live) = plane.connectors.get(&request.connector).cloned() else {
            return Ok(ActOutcome::Failed(format!("connector `{}` is not in the bundle in force", request.connector)));
        };
        let Some(action) = live.spec.actions.get(&request.action).cloned() else {
            return Ok(ActOutcome::Failed(format!(
                "connector `{}` has no action `{}`",
                request.connector, request.action
            )));
        };
        let now = self.clock.unix_ms();
        let args = match request_args(&action, &request.args) {
            Ok(args) => args,
            Err(problem) => {
                let rendered = match &request.args {
                    ActArgs::Rendered(rendered) => json!(rendered),
                    ActArgs::Json(value) => value.clone(),
                };
                let payload = json!({
                    "task": request.task_id,
                    "step": request.step_id,
                    "connector": request.connector,
                    "action": request.action,
                    "rendered_args": rendered,
                    "problem": problem,
                });
                self.store.append_audit(&self.identity, now, kinds::INTENT_INVALID, payload.to_string()).await?;
                return Ok(ActOutcome::Failed(problem));
            }
        };
        let hash = args_hash(&args);
        let key = match &request.call {
            Some(call) => hex::encode(Sha256::digest(format!("{}\0{call}\0{hash}", request.task_id).as_bytes())),
            None => hex::encode(Sha256::digest(format!("{}\0{}\0{hash}", request.task_id, request.seq).as_bytes())),
        };
        let intent = match self.store.intent_for_step(&request.task_id, &request.step_id).await? {
            Some(existing) if existing.key != key => {
                return Ok(ActOutcome::Failed(format!(
                    "the step's arguments changed since intent {} was declared; refusing a second intent",
                    existing.key
                )))
            }
            Some(existing) => existing,
            None => {
                let autonomy = self.store.autonomy().await?;
                let decision = gate_on_review(self.decide(&plane, &request, &args, autonomy, false), &request.review);
                self.declare(&plane, &live.spec, &request, key, args, hash, decision, None, now).await?
            }
        };
        self.drive(&plane, &live, &action, intent).await
    }

    fn decide(
        &self,
        plane: &Plane,
        request: &ActRequest,
        args: &Value,
        autonomy: Autonomy,
        approved: bool,
    ) -> Decision {
        let (ty, id, attrs) = &request.resource;
        let kind = plane.connectors.get(&request.connector).map_or(ConnectorKind::Http, |live| live.spec.kind);
        let action_request = ActionRequest {
            agent: &request.agent,
            edge: &self.identity.edge_id,
            labels: &self.labels,
            connector: &request.connector,
            kind,
            action: &request.action,
            resource: (ty, id, attrs),
            args,
            classification: request.classification.as_deref(),
            autonomy,
        };
        if approved {
            plane.engine.decide_approved(&action_request)
        } else {
            plane.engine.decide(&action_request)
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn declare(
        &self,
        plane: &Plane,
        spec: &ConnectorSpec,
        request: &ActRequest,
        key: String,
        args: Value,
        hash: String,
        decision: Decision,
        compensates: Option<String>,
        now: i64,
    ) -> Result<Intent, DbError> {
        let state = IntentState::declared(match decision {
            Decision::Allow { .. } => Verdict::Allow,
            Decision::Deny { .. } => Verdict::Deny,
            Decision::RequireApproval { .. } => Verdict::RequireApproval,
        });
        let (ty, id, attrs) = &request.resource;
        let resource = json!({ "type": ty, "id": id, "attrs": attrs, "classification": request.classification });
        let approval = matches!(decision, Decision::RequireApproval { .. }).then(|| ApprovalRequest {
            id: format!("ap-{}", &key[..20]),
            request: json!({
                "approval": format!("ap-{}", &key[..20]),
                "edge": self.identity.edge_id,
                "task": request.task_id,
                "agent": request.agent,
                "step": request.step_id,
                "key": key,
                "connector": request.connector,
                "connector_version": spec.version,
                "action": request.action,
                "args": args,
                "args_hash": hash,
                "resource": resource,
                "decision": decision,
                "reasoning": request.reasoning,
                "sources": request.sources,
                "review": request.review,
                "expires_ms": now + plane.approval_ttl_ms,
            }),
            expires_ms: now + plane.approval_ttl_ms,
        });
        let decision_event = json!({
            "key": key,
            "task": request.task_id,
            "agent": request.agent,
            "connector": request.connector,
            "action": request.action,
            "bundle_version": plane.version,
            "decision": decision,
        });
        let intent = Intent {
            key: key.clone(),
            task_id: request.task_id.clone(),
            step_seq: request.seq,
            step_id: request.step_id.clone(),
            agent: request.agent.clone(),
            connector: request.connector.clone(),
            connector_version: spec.version,
            action: request.action.clone(),
            args,
            args_hash: hash,
            resource,
            state,
            decision: serde_json::to_value(&decision).expect("json"),
            approval_id: approval.as_ref().map(|a| a.id.clone()),
            attempts: 0,
            errors: Vec::new(),
            result: None,
            compensates,
            created_ms: now,
            updated_ms: now,
        };
        self.store.declare_intent(&self.identity, NewIntent { intent, approval, decision_event }).await
    }

    /// Moves an intent on from whatever state it is in.
    async fn drive(
        &self,
        plane: &Plane,
        live: &Live,
        action: &ActionSpec,
        mut intent: Intent,
    ) -> Result<ActOutcome, DbError> {
        let now = self.clock.unix_ms();
        match intent.state {
            IntentState::Done => return Ok(ActOutcome::Done(step_output(&intent))),
            IntentState::Denied => {
                let reason = intent.decision["reason"].as_str().unwrap_or("denied by policy").to_owned();
                return Ok(ActOutcome::Refused(format!("denied by policy: {reason}")));
            }
            IntentState::Rejected => return Ok(ActOutcome::Refused(self.rejection(&intent).await?)),
            IntentState::Expired => return Ok(ActOutcome::Refused("the approval request lapsed unanswered".into())),
            IntentState::Discarded => return Ok(ActOutcome::Refused("the intent was discarded by an operator".into())),
            IntentState::DeadLettered => return Ok(ActOutcome::DeadLettered(last_error(&intent))),
            IntentState::AwaitingApproval => {
                let approval_id = intent.approval_id.clone().unwrap_or_default();
                let Some(approval) = self.store.approval(&approval_id).await? else {
                    return Ok(ActOutcome::Failed(format!("approval {approval_id} is missing")));
                };
                match approval.state {
                    ApprovalState::Pending if now <= approval.expires_ms => {
                        return Ok(ActOutcome::Park {
                            reason: format!("waiting for approval {approval_id}"),
                            until_ms: approval.expires_ms + 1,
                        })
                    }
                    ApprovalState::Approved => {
                        // The approval still has to pass the policy as it
                        // stands now (a forbid, the kill switch).
                        let autonomy = self.store.autonomy().await?;
                        let request = replay_request(&intent);
                        let decision = self.decide(plane, &request, &intent.args, autonomy, true);
                        if let Decision::Deny { .. } = decision {
                            return self.deny(&intent, decision).await;
                        }
                        match self.store.use_approval(&self.identity, &approval_id, &intent, now).await? {
                            Ok(()) => intent.state = IntentState::Pending,
                            Err(reason) => {
                                self.store.expire_approval(&self.identity, &approval_id, now).await?;
                                self.store
                                    .settle_intent(
                                        &self.identity,
                                        &intent.key,
                                        IntentEvent::Lapse,
                                        kinds::POLICY_DECIDED,
                                        json!({ "decision": "deny", "reason": reason }),
                                        now,
                                    )
                                    .await?;
                                return Ok(ActOutcome::Refused(reason));
                            }
                        }
                    }
                    ApprovalState::Rejected => return Ok(ActOutcome::Refused(self.rejection(&intent).await?)),
                    ApprovalState::Pending | ApprovalState::Expired | ApprovalState::Used => {
                        self.store.expire_approval(&self.identity, &approval_id, now).await?;
                        let details = json!({ "decision": "deny", "reason": "approval request lapsed" });
                        self.store
                            .settle_intent(
                                &self.identity,
                                &intent.key,
                                IntentEvent::Lapse,
                                kinds::POLICY_DECIDED,
                                details,
                                now,
                            )
                            .await?;
                        return Ok(ActOutcome::Refused("the approval request lapsed unanswered".into()));
                    }
                }
            }
            IntentState::Pending | IntentState::InFlight | IntentState::Unknown => {}
        }
        // pending, in_flight or unknown: (re)send under the same key.
        let autonomy = self.store.autonomy().await?;
        if autonomy <= Autonomy::Off {
            if intent.state == IntentState::Pending {
                let decision = Decision::Deny {
                    policies: Vec::new(),
                    reason: format!("autonomy is {autonomy} (the kill switch): every side effect is denied"),
                };
                return self.deny(&intent, decision).await;
            }
            // It may already have happened: an operator resolves it.
            let attempt = Attempt::Failed {
                error: "the kill switch was engaged while the outcome was unknown".into(),
                unknown: true,
                dead: true,
            };
            self.store.end_attempt(&self.identity, &intent.key, attempt, now).await?;
            return Ok(ActOutcome::DeadLettered("kill switch engaged with the outcome unknown".into()));
        }
        self.execute(live, action, intent).await
    }

    async fn deny(&self, intent: &Intent, decision: Decision) -> Result<ActOutcome, DbError> {
        let reason = match &decision {
            Decision::Deny { reason, .. } => reason.clone(),
            _ => "denied".into(),
        };
        let details = json!({ "task": intent.task_id, "decision": decision });
        self.store
            .settle_intent(
                &self.identity,
                &intent.key,
                IntentEvent::Deny,
                kinds::POLICY_DECIDED,
                details,
                self.clock.unix_ms(),
            )
            .await?;
        Ok(ActOutcome::Refused(format!("denied by policy: {reason}")))
    }

    async fn rejection(&self, intent: &Intent) -> Result<String, DbError> {
        let approval = match &intent.approval_id {
            Some(id) => self.store.approval(id).await?,
            None => None,
        };
        Ok(match approval {
            Some(a) => format!(
                "rejected by {}{}",
                a.decided_by.unwrap_or_default(),
                a.comment.filter(|c| !c.is_empty()).map(|c| format!(": {c}")).unwrap_or_default()
            ),
            None => "rejected".into(),
        })
    }

    /// Attempts until done, dead-lettered, or parked behind an open breaker.
    async fn execute(&self, live: &Live, action: &ActionSpec, intent: Intent) -> Result<ActOutcome, DbError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let timeout = Duration::from_millis(live.spec.timeout_ms());
        loop {
            let permit = match live.breaker.lock().expect("breaker lock").try_acquire(self.clock.instant()) {
                Ok(permit) => permit,
                Err(open) => {
                    return Ok(ActOutcome::Park {
                        reason: format!("connector `{}` is failing: {open}", intent.connector),
                        until_ms: self.clock.unix_ms() + open.retry_in.as_millis() as i64 + 1,
                    })
                }
            };
            if let Some(limiter) = &live.limiter {
                limiter.until_ready().await;
            }
            let attempts = self.store.begin_attempt(&self.identity, &intent.key, self.clock.unix_ms()).await?;
            let call = Call { action: &intent.action, spec: action, args: &intent.args, key: &intent.key, timeout };
            let span = tracing::info_span!(
                "connector.call",
                connector = %intent.connector,
                action = %intent.action,
                key = %intent.key,
                attempt = attempts
            );
            let outcome = match tokio::time::timeout(timeout, live.connector.execute(call).instrument(span)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(ConnectorError::Unknown(format!("no answer within {} ms", timeout.as_millis()))),
            };
            let now = self.clock.unix_ms();
            match outcome {
                Ok(result) => {
                    live.breaker.lock().expect("breaker lock").record_success(permit);
                    self.store.end_attempt(&self.identity, &intent.key, Attempt::Done(result), now).await?;
                    let done = self.store.intent(&intent.key).await?.expect("intent exists");
                    return Ok(ActOutcome::Done(step_output(&done)));
                }
                Err(err) => {
                    live.breaker.lock().expect("breaker lock").record_failure(permit, self.clock.instant());
                    let permanent = matches!(err, ConnectorError::Permanent(_));
                    let unknown = matches!(err, ConnectorError::Unknown(_));
                    let dead = permanent || attempts >= live.spec.max_attempts;
                    debug!(key = %intent.key, attempts, %err, dead, "intent attempt failed");
                    let attempt = Attempt::Failed { error: err.to_string(), unknown, dead };
                    self.store.end_attempt(&self.identity, &intent.key, attempt, now).await?;
                    if dead {
                        warn!(key = %intent.key, %err, "intent dead-lettered");
                        return Ok(ActOutcome::DeadLettered(format!("{}.{}: {err}", intent.connector, intent.action)));
                    }
                    tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
                }
            }
        }
    }

    /// Undoes a completed act step with its connector's compensation: a new
    /// intent with its own key, decided by the policy as an operator-approved
    /// request (the operator's command is the approval), and executed.
    pub async fn compensate(
        &self,
        version: u64,
        defs: &aios_shared::agent::Definitions,
        task_id: &str,
        step_id: &str,
        by: &str,
    ) -> Result<ActOutcome, DbError> {
        let plane = match self.plane(version, defs) {
            Ok(plane) => plane,
            Err(err) => return Ok(ActOutcome::Failed(err)),
        };
        let Some(original) = self.store.intent_for_step(task_id, step_id).await? else {
            return Ok(ActOutcome::Failed(format!("task {task_id} has no intent for step `{step_id}`")));
        };
        if original.state != IntentState::Done {
            return Ok(ActOutcome::Failed(format!("intent {} is {}, not done", original.key, original.state)));
        }
        let Some(live) = plane.connectors.get(&original.connector).cloned() else {
            return Ok(ActOutcome::Failed(format!("connector `{}` is not in the bundle in force", original.connector)));
        };
        let Some(undo_name) = live.spec.actions.get(&original.action).and_then(|a| a.compensation.clone()) else {
            return Ok(ActOutcome::Failed(format!(
                "action `{}.{}` declares no compensation",
                original.connector, original.action
            )));
        };
        let undo = live.spec.actions[&undo_name].clone();
        let template_args = &live.spec.actions[&original.action].compensation_args;
        let context = json!({ "args": original.args, "result": original.result });
        let mut rendered = BTreeMap::new();
        if template_args.is_empty() {
            for (name, value) in original.args.as_object().into_iter().flatten() {
                rendered.insert(name.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_owned));
            }
        } else {
            for (name, template) in template_args {
                match connector::render(template, &context) {
                    Ok(text) => rendered.insert(name.clone(), text),
                    Err(err) => return Ok(ActOutcome::Failed(err.to_string())),
                };
            }
        }
        let args = match connector::typed_args(&undo, &rendered) {
            Ok(args) => args,
            Err(problem) => return Ok(ActOutcome::Failed(problem)),
        };
        let key = hex::encode(Sha256::digest(format!("{}\0compensate", original.key).as_bytes()));
        let intent = match self.store.intent(&key).await? {
            Some(existing) => existing,
            None => {
                let mut request = replay_request(&original);
                request.action = undo_name.clone();
                request.reasoning = Some(format!("compensation of {} requested by {by}", original.key));
                let autonomy = self.store.autonomy().await?;
                let decision = self.decide(&plane, &request, &args, autonomy, true);
                let hash = args_hash(&args);
                let compensates = Some(original.key.clone());
                self.declare(&plane, &live.spec, &request, key, args, hash, decision, compensates, self.clock.unix_ms())
                    .await?
            }
        };
        self.drive(&plane, &live, &undo, intent).await
    }
}

/// The request an intent was declared with, rebuilt from the outbox.
fn replay_request(intent: &Intent) -> ActRequest {
    ActRequest {
        task_id: intent.task_id.clone(),
        agent: intent.agent.clone(),
        seq: intent.step_seq,
        step_id: intent.step_id.clone(),
        connector: intent.connector.clone(),
        action: intent.action.clone(),
        args: ActArgs::Json(intent.args.clone()),
        call: None,
        resource: (
            intent.resource["type"].as_str().unwrap_or("Connector").to_owned(),
            intent.resource["id"].as_str().unwrap_or_default().to_owned(),
            intent.resource["attrs"].clone(),
        ),
        reasoning: None,
        sources: Vec::new(),
        classification: intent.resource["classification"].as_str().map(str::to_owned),
        review: Vec::new(),
    }
}

fn step_output(intent: &Intent) -> Value {
    json!({
        "intent": intent.key,
        "connector": intent.connector,
        "action": intent.action,
        "args": intent.args,
        "decision": intent.decision["decision"],
        "approval": intent.approval_id,
        "attempts": intent.attempts,
        "result": intent.result,
    })
}

fn last_error(intent: &Intent) -> String {
    intent.errors.last().and_then(|e| e["error"].as_str()).unwrap_or("dead-lettered").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_hash_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, {"d": 0, "c": 1}], "x": 2}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a": {"x": 2, "y": [1, {"c": 1, "d": 0}]}, "b": 1}"#).unwrap();
        assert_eq!(args_hash(&a), args_hash(&b));
        assert_ne!(args_hash(&a), args_hash(&serde_json::json!({ "b": 2 })));
    }

    #[test]
    fn results_needing_review_turn_an_allowed_effect_into_an_approval() {
        let allow = || Decision::Allow { policies: vec!["posts".into()] };
        assert_eq!(gate_on_review(allow(), &[]), allow());
        let review = ["step `review` ran on `local`: no escalation tier usable".to_owned()];
        match gate_on_review(allow(), &review) {
            Decision::RequireApproval { policies, reason } => {
                assert_eq!(policies, ["posts"]);
                assert!(reason.contains("step `review` ran on `local`"), "{reason}");
            }
            other => panic!("expected an approval, got {other:?}"),
        }
        // A denial stays a denial; an approval stays an approval.
        let deny = Decision::Deny { policies: vec![], reason: "kill switch".into() };
        assert_eq!(gate_on_review(deny.clone(), &review), deny);
    }
}
