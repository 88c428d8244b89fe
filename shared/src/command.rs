//! Operator commands the control plane sends down to one edge: approval
//! decisions, dead-letter retries and discards, compensations, answers to
//! an agent's questions.
//!
//! A command is signed with the control plane's bundle key (the key every
//! edge already trusts for policy), names the edge it is for, and has a
//! unique id. The edge verifies the signature and the edge id, and records
//! the id in the transaction that applies the command, so a replayed or
//! misdirected command does nothing.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

const SIGNING_CONTEXT: &[u8] = b"aios-command-v1\0";

/// What an operator asked an edge to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// An approval request was decided.
    Decide {
        /// The approval request's id.
        approval: String,
        /// Hash of the exact arguments that were approved.
        args_hash: String,
        /// Approved (true) or rejected.
        approve: bool,
        /// Until when an approval may be used (ms since the epoch).
        expires_ms: i64,
    },
    /// Run a dead-lettered intent again, with the same idempotency key.
    RetryIntent {
        /// The intent's idempotency key.
        key: String,
    },
    /// Give up on a dead-lettered intent.
    DiscardIntent {
        /// The intent's idempotency key.
        key: String,
    },
    /// Undo a completed act step with its connector's compensation.
    Compensate {
        /// The task.
        task: String,
        /// The act step's id.
        step: String,
    },
    /// Answer the question an agent asked (`ask_human`); the task resumes.
    Answer {
        /// The task.
        task: String,
        /// The question's key (its call's place in the loop).
        question: String,
        /// The answer.
        answer: String,
    },
}

/// A command with who issued it, for which edge, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBody {
    /// Unique at the control plane.
    pub id: String,
    /// The edge it is for.
    pub edge_id: String,
    /// The operator account that issued it.
    pub by: String,
    /// The operator's comment.
    #[serde(default)]
    pub comment: String,
    /// When it was issued (ms since the epoch).
    pub issued_ms: i64,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

/// A command as it travels: the body's JSON and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The command id (also inside the body), for acknowledgements.
    pub id: String,
    /// The body as JSON text, exactly as signed.
    pub body: String,
    /// Ed25519 signature over the domain-separated body.
    pub signature: Vec<u8>,
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not signed by the control plane's key.
    #[error("the command's signature does not verify")]
    BadSignature,
    /// It does not decode.
    #[error("the command does not decode: {0}")]
    Malformed(String),
    /// It is for another edge.
    #[error("the command is for edge `{0}`, not this one")]
    WrongEdge(String),
    /// The outer id does not match the signed one.
    #[error("the command's id does not match its signed body")]
    IdMismatch,
}

impl CommandBody {
    /// Signs the command.
    pub fn sign(&self, key: &SigningKey) -> SignedCommand {
        let body = serde_json::to_string(self).expect("a command serialises");
        let signature = key.sign(&message(&body)).to_bytes().to_vec();
        SignedCommand { id: self.id.clone(), body, signature }
    }
}

impl SignedCommand {
    /// Verifies the signature and that the command is for `edge_id`.
    pub fn open(&self, key: &VerifyingKey, edge_id: &str) -> Result<CommandBody, CommandError> {
        let signature = Signature::from_slice(&self.signature).map_err(|_| CommandError::BadSignature)?;
        key.verify(&message(&self.body), &signature).map_err(|_| CommandError::BadSignature)?;
        let body: CommandBody =
            serde_json::from_str(&self.body).map_err(|err| CommandError::Malformed(err.to_string()))?;
        if body.id != self.id {
            return Err(CommandError::IdMismatch);
        }
        if body.edge_id != edge_id {
            return Err(CommandError::WrongEdge(body.edge_id));
        }
        Ok(body)
    }
}

fn message(body: &str) -> Vec<u8> {
    let mut message = SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(body.as_bytes());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> CommandBody {
        CommandBody {
            id: "c1".into(),
            edge_id: "e1".into(),
            by: "alice".into(),
            comment: "ok".into(),
            issued_ms: 5,
            command: Command::Decide { approval: "a1".into(), args_hash: "h".into(), approve: true, expires_ms: 9 },
        }
    }

    #[test]
    fn a_signed_command_opens_only_with_the_key_and_for_its_edge() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let signed = body().sign(&key);
        assert_eq!(signed.open(&key.verifying_key(), "e1").unwrap(), body());
        assert_eq!(signed.open(&key.verifying_key(), "e2"), Err(CommandError::WrongEdge("e1".into())));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(signed.open(&other, "e1"), Err(CommandError::BadSignature));
        let mut tampered = signed.clone();
        tampered.body = tampered.body.replace("\"approve\":true", "\"approve\":false");
        assert_eq!(tampered.open(&key.verifying_key(), "e1"), Err(CommandError::BadSignature));
        let mut relabelled = signed;
        relabelled.id = "c2".into();
        assert_eq!(relabelled.open(&key.verifying_key(), "e1"), Err(CommandError::IdMismatch));
    }
}
