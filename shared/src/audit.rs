//! The hash-chained audit log.
//!
//! Every event an edge records carries its sequence number (from 1, no gaps),
//! the hash of the event before it and its own hash over a canonical encoding
//! of (edge id, sequence, time, kind, payload, previous hash). Changing,
//! removing, reordering or splicing in an event therefore breaks the chain at
//! that point. Every so often the edge appends a *checkpoint* event that signs
//! the head of the chain with the edge's ed25519 key, so the control plane can
//! tell an event forged by someone who recomputed the hashes from one the edge
//! wrote.
//!
//! A chain verified with the edge's key must carry a checkpoint within every
//! [`CHECKPOINT_EVERY`] events (the edge writes one after each such run): an
//! event further than that from the last checkpoint is a break
//! ([`ChainBreak::Unsigned`]). Without the rule someone who can write the
//! control plane's database could edit an event, turn the checkpoints after
//! it into ordinary events and recompute every hash.
//!
//! The control plane also remembers the highest sequence it acknowledged, so a
//! truncated tail is caught by comparing the stored chain's head against it.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first event of every chain.
pub const GENESIS_HASH: Hash = [0; 32];

/// An edge appends a signed checkpoint after every this many events, and a
/// chain verified with its key may hold no more than this many events after
/// its last checkpoint.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// Event kinds recorded by the foundation. Later layers add their own; kinds
/// are dotted, lower-case names.
pub mod kinds {
    /// The edge process started.
    pub const STARTED: &str = "edge.started";
    /// The edge enrolled with a control plane.
    pub const ENROLLED: &str = "edge.enrolled";
    /// The edge took a renewed certificate (same key, later expiry).
    pub const CERTIFICATE_RENEWED: &str = "identity.renewed";
    /// The edge took a new set of fleet CAs to trust (a CA rotation).
    pub const TRUST_CHANGED: &str = "identity.trust_changed";
    /// The control plane refused the edge as revoked: all autonomy stops.
    pub const REVOKED: &str = "identity.revoked";
    /// A sync connection completed its handshake.
    pub const CONNECTED: &str = "sync.connected";
    /// A sync connection ended.
    pub const DISCONNECTED: &str = "sync.disconnected";
    /// A policy bundle was verified, persisted and applied.
    pub const BUNDLE_APPLIED: &str = "bundle.applied";
    /// A policy bundle was refused; the last good one stays.
    pub const BUNDLE_REFUSED: &str = "bundle.refused";
    /// The effective autonomy mode changed.
    pub const AUTONOMY_CHANGED: &str = "autonomy.changed";
    /// A signed checkpoint of the chain's head.
    pub const CHECKPOINT: &str = "audit.checkpoint";
    /// An event written by the test entry point.
    pub const DEBUG: &str = "debug.event";
    /// A task was persisted and acknowledged.
    pub const TASK_QUEUED: &str = "task.queued";
    /// A task started (or resumed after a restart) on the runtime.
    pub const TASK_RUNNING: &str = "task.running";
    /// A step's result was checkpointed (kind, tier, reason, tokens, cost,
    /// latency, confidence, validation).
    pub const TASK_STEP: &str = "task.step";
    /// A task is waiting (for approval, or for a tier that is down).
    pub const TASK_WAITING: &str = "task.waiting";
    /// A task finished with a result.
    pub const TASK_SUCCEEDED: &str = "task.succeeded";
    /// A task failed for good (validation, deadline, a refused input).
    pub const TASK_FAILED: &str = "task.failed";
    /// A task was started too many times and set aside for an operator.
    pub const TASK_DEAD_LETTERED: &str = "task.dead_lettered";
    /// A task was cancelled.
    pub const TASK_CANCELLED: &str = "task.cancelled";
    /// A model call made through the edge's OpenAI-compatible gateway.
    pub const GATEWAY_CALL: &str = "gateway.call";
    /// An act step's arguments did not match the action's schema.
    pub const INTENT_INVALID: &str = "intent.invalid";
    /// An intended side effect was written to the outbox.
    pub const INTENT_DECLARED: &str = "intent.declared";
    /// The policy decided an intent (allow, deny, require approval).
    pub const POLICY_DECIDED: &str = "policy.decided";
    /// An approval was asked for; the control plane queues it.
    pub const APPROVAL_REQUESTED: &str = "approval.requested";
    /// An operator approved or rejected (or a command was refused).
    pub const APPROVAL_DECIDED: &str = "approval.decided";
    /// An approval was consumed by the execution it allowed.
    pub const APPROVAL_USED: &str = "approval.used";
    /// An attempt of an intent started.
    pub const INTENT_EXECUTING: &str = "intent.executing";
    /// An intent took effect; its result.
    pub const INTENT_EXECUTED: &str = "intent.executed";
    /// An attempt failed in a way worth retrying (or its outcome is unknown).
    pub const INTENT_RETRYING: &str = "intent.retrying";
    /// An intent exhausted its attempts or failed permanently.
    pub const INTENT_DEAD_LETTERED: &str = "intent.dead_lettered";
    /// An operator sent a dead-lettered intent back, same key.
    pub const INTENT_RETRIED: &str = "intent.retried";
    /// An operator gave up on a dead-lettered intent.
    pub const INTENT_DISCARDED: &str = "intent.discarded";
    /// A completed action was undone by its compensation.
    pub const INTENT_COMPENSATED: &str = "intent.compensated";
    /// A command from the control plane was refused.
    pub const COMMAND_REFUSED: &str = "command.refused";
    /// Items were added to semantic memory (ids, namespace, provenance; never the text).
    pub const MEMORY_ADDED: &str = "memory.added";
    /// A retrieval for a task: the ids, scores and provenance of what was returned.
    pub const MEMORY_RETRIEVED: &str = "memory.retrieved";
    /// Items about a data subject were erased (ids and a hash of the subject; no content).
    pub const MEMORY_FORGOTTEN: &str = "memory.forgotten";
    /// The sweeper removed items past their expiry or retention.
    pub const MEMORY_EXPIRED: &str = "memory.expired";
    /// Stored vectors were rebuilt with another embedding model.
    pub const MEMORY_REINDEXED: &str = "memory.reindexed";
    /// A model turn of an agent step's loop (tier, tokens, cost, the calls it proposed).
    pub const AGENT_TURN: &str = "agent.turn";
    /// What came of one call an agent step's model proposed (done, invalid,
    /// refused, failed); the intent's own events carry the decision.
    pub const AGENT_CALL: &str = "agent.call";
    /// The arguments the local model wrote for a call a plan left to it
    /// (`strategy = "plan"`).
    pub const AGENT_DECIDED: &str = "agent.decided";
    /// An agent step's model asked a person a question (`ask_human`); the task waits.
    pub const QUESTION_ASKED: &str = "question.asked";
    /// Someone answered it (who, and the answer the model will see).
    pub const QUESTION_ANSWERED: &str = "question.answered";
    /// An authoritative record was written (namespace, key, version).
    pub const RECORD_PUT: &str = "memory.record_put";
}

/// One entry of an edge's audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the edge's chain, from 1, without gaps.
    pub seq: u64,
    /// When the edge recorded it, in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// What happened (see [`kinds`]).
    pub kind: String,
    /// Details, as a JSON document.
    pub payload: String,
    /// Hash of the previous event, [`GENESIS_HASH`] for the first.
    pub prev_hash: Hash,
    /// Hash of this event, see [`event_hash`].
    pub hash: Hash,
}

/// The head of a chain: the last event's sequence and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Sequence of the last event (0 for an empty chain).
    pub seq: u64,
    /// Hash of the last event ([`GENESIS_HASH`] for an empty chain).
    pub hash: Hash,
}

impl ChainHead {
    /// The head of a chain with no events.
    pub const EMPTY: ChainHead = ChainHead { seq: 0, hash: GENESIS_HASH };
}

/// Hash of an event over its canonical encoding.
///
/// The encoding is fixed-width integers in big-endian and length-prefixed
/// strings, so it has exactly one byte sequence per event and needs no
/// serializer whose output could change between versions.
pub fn event_hash(edge_id: &str, seq: u64, ts_ms: i64, kind: &str, payload: &str, prev_hash: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(b"aios-audit-v1\0");
    for field in [edge_id.as_bytes(), kind.as_bytes(), payload.as_bytes()] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hasher.update(seq.to_be_bytes());
    hasher.update(ts_ms.to_be_bytes());
    hasher.update(prev_hash);
    hasher.finalize().into()
}

impl AuditEvent {
    /// Builds the event that follows `head`.
    pub fn next(edge_id: &str, head: ChainHead, ts_ms: i64, kind: &str, payload: String) -> AuditEvent {
        let seq = head.seq + 1;
        let hash = event_hash(edge_id, seq, ts_ms, kind, &payload, &head.hash);
        AuditEvent { seq, ts_ms, kind: kind.to_owned(), payload, prev_hash: head.hash, hash }
    }

    /// Builds a checkpoint event that signs `head` with the edge's key.
    pub fn checkpoint(edge_id: &str, head: ChainHead, ts_ms: i64, key: &SigningKey) -> AuditEvent {
        let signature = key.sign(&checkpoint_message(edge_id, head));
        let payload = serde_json::json!({
            "covers_seq": head.seq,
            "signature": hex::encode(signature.to_bytes()),
        });
        AuditEvent::next(edge_id, head, ts_ms, kinds::CHECKPOINT, payload.to_string())
    }

    /// The head of the chain ending at this event.
    pub fn head(&self) -> ChainHead {
        ChainHead { seq: self.seq, hash: self.hash }
    }
}

fn checkpoint_message(edge_id: &str, head: ChainHead) -> Vec<u8> {
    let mut message = b"aios-checkpoint-v1\0".to_vec();
    message.extend_from_slice(&(edge_id.len() as u64).to_be_bytes());
    message.extend_from_slice(edge_id.as_bytes());
    message.extend_from_slice(&head.seq.to_be_bytes());
    message.extend_from_slice(&head.hash);
    message
}

/// Where and how a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ChainBreak {
    /// A sequence number is missing or out of order.
    #[error("gap: expected event {expected}, found {found}")]
    Gap {
        /// The sequence the chain needed next.
        expected: u64,
        /// The sequence that came instead.
        found: u64,
    },
    /// An event's `prev_hash` is not the previous event's hash.
    #[error("event {seq} does not link to the event before it")]
    BrokenLink {
        /// Sequence of the event that does not link.
        seq: u64,
    },
    /// An event's stored hash does not match its contents.
    #[error("event {seq} was altered: its hash does not match its contents")]
    Altered {
        /// Sequence of the altered event.
        seq: u64,
    },
    /// A checkpoint is malformed or its signature is not the edge's.
    #[error("checkpoint {seq} is invalid: {reason}")]
    BadCheckpoint {
        /// Sequence of the checkpoint event.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// More than [`CHECKPOINT_EVERY`] events follow the last checkpoint.
    #[error("event {seq} is more than {CHECKPOINT_EVERY} events after the last signed checkpoint ({since})")]
    Unsigned {
        /// The first event past the bound.
        seq: u64,
        /// The last checkpoint's sequence (0: none yet).
        since: u64,
    },
    /// The chain ends before the head the control plane acknowledged.
    #[error("chain truncated: ends at event {found}, expected at least {expected}")]
    Truncated {
        /// The acknowledged head.
        expected: u64,
        /// Where the stored chain ends.
        found: u64,
    },
}

/// Verifies events one at a time, in order, as they arrive or are read back.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    /// The edge whose chain this is (part of every hash).
    edge_id: String,
    /// The edge's key, for checkpoints; `None` skips signature checks.
    key: Option<VerifyingKey>,
    /// The head verified so far.
    head: ChainHead,
    /// The sequence of the last checkpoint verified (0: none yet).
    last_checkpoint: u64,
}

impl ChainVerifier {
    /// Starts verifying after `head` (use [`ChainHead::EMPTY`] for a whole
    /// chain); a verifier that starts mid-chain is told where the last
    /// checkpoint is with [`ChainVerifier::after_checkpoint`].
    pub fn new(edge_id: &str, key: Option<VerifyingKey>, head: ChainHead) -> ChainVerifier {
        ChainVerifier { edge_id: edge_id.to_owned(), key, head, last_checkpoint: head.seq }
    }

    /// Counts the unsigned run from checkpoint `seq` (0: the chain's start).
    pub fn after_checkpoint(mut self, seq: u64) -> ChainVerifier {
        self.last_checkpoint = seq;
        self
    }

    /// The head verified so far.
    pub fn head(&self) -> ChainHead {
        self.head
    }

    /// Where the current unsigned run starts: the last checkpoint verified
    /// (or the event a reported [`ChainBreak::Unsigned`] was at).
    pub fn last_checkpoint(&self) -> u64 {
        self.last_checkpoint
    }

    /// Checks that `event` extends the chain; on success it becomes the head.
    pub fn push(&mut self, event: &AuditEvent) -> Result<(), ChainBreak> {
        let expected = self.head.seq + 1;
        if event.seq != expected {
            return Err(ChainBreak::Gap { expected, found: event.seq });
        }
        if event.prev_hash != self.head.hash {
            return Err(ChainBreak::BrokenLink { seq: event.seq });
        }
        let hash = event_hash(&self.edge_id, event.seq, event.ts_ms, &event.kind, &event.payload, &event.prev_hash);
        if hash != event.hash {
            return Err(ChainBreak::Altered { seq: event.seq });
        }
        if event.kind == kinds::CHECKPOINT {
            self.check_checkpoint(event)?;
            self.last_checkpoint = event.seq;
        } else if self.key.is_some() && event.seq - self.last_checkpoint > CHECKPOINT_EVERY {
            let since = self.last_checkpoint;
            // Reported once per run, not for every event after it.
            self.last_checkpoint = event.seq;
            return Err(ChainBreak::Unsigned { seq: event.seq, since });
        }
        self.head = event.head();
        Ok(())
    }

    /// Accepts `event` as the new head without checking it, so verification
    /// can go on after a break has been recorded.
    pub fn skip_to(&mut self, event: &AuditEvent) {
        self.head = event.head();
    }

    fn check_checkpoint(&self, event: &AuditEvent) -> Result<(), ChainBreak> {
        let bad = |reason: &str| ChainBreak::BadCheckpoint { seq: event.seq, reason: reason.to_owned() };
        #[derive(Deserialize)]
        struct Payload {
            covers_seq: u64,
            signature: String,
        }
        let payload: Payload = serde_json::from_str(&event.payload).map_err(|_| bad("malformed payload"))?;
        if payload.covers_seq != self.head.seq {
            return Err(bad("does not cover the event before it"));
        }
        let Some(key) = &self.key else { return Ok(()) };
        let bytes = hex::decode(&payload.signature).map_err(|_| bad("signature is not hex"))?;
        let signature = Signature::from_slice(&bytes).map_err(|_| bad("signature has the wrong length"))?;
        key.verify(&checkpoint_message(&self.edge_id, self.head), &signature)
            .map_err(|_| bad("signature does not verify with the chain's key"))
    }
}

/// Verifies a whole stored chain from its first event, and that it reaches at
/// least `acked_seq`. Returns every break found (verification continues past
/// each one), so an empty vector means the chain is intact.
pub fn verify_chain(
    edge_id: &str,
    key: Option<VerifyingKey>,
    events: &[AuditEvent],
    acked_seq: u64,
) -> Vec<ChainBreak> {
    let mut verifier = ChainVerifier::new(edge_id, key, ChainHead::EMPTY);
    let mut breaks = Vec::new();
    for event in events {
        if let Err(chain_break) = verifier.push(event) {
            breaks.push(chain_break);
            verifier.skip_to(event);
        }
    }
    if verifier.head().seq < acked_seq {
        breaks.push(ChainBreak::Truncated { expected: acked_seq, found: verifier.head().seq });
    }
    breaks
}

#[cfg(test)]
mod tests;
