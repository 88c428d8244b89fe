//! Constrained decoding: before each token is sampled, every token that
//! cannot continue a valid output is masked out, so a constrained
//! generation always parses as JSON and validates against its schema (or
//! stops at the length limit mid-way, which the caller sees as `Length`).
//!
//! The grammar engine is llguidance (an Earley parser over a lexer compiled
//! from the schema, with a token trie of the model's vocabulary), not ours.
//! [`ConstraintEnv`] indexes a vocabulary once per model; each request gets
//! its own [`Masking`]. Special tokens are marked in the trie so no schema
//! can produce them as text; the model's end-of-turn tokens are allowed
//! only where the output is complete.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tokenizer::GgufTokenizer;
use crate::error::ModelError;

/// What a constrained generation must produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "schema")]
pub enum OutputConstraint {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// JSON valid against this JSON Schema.
    JsonSchema(Value),
}

impl OutputConstraint {
    fn schema(&self) -> Value {
        match self {
            OutputConstraint::JsonObject => serde_json::json!({ "type": "object" }),
            OutputConstraint::JsonSchema(schema) => schema.clone(),
        }
    }
}

/// A model's vocabulary indexed for the grammar engine.
pub struct ConstraintEnv {
    factory: ParserFactory,
    /// Tokens in the trie (logits past it are never allowed).
    vocab: usize,
    /// The trie's end token, allowed where the output may end.
    eos: u32,
}

impl std::fmt::Debug for ConstraintEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintEnv").field("vocab", &self.vocab).field("eos", &self.eos).finish()
    }
}

fn engine_error(context: &str, err: impl std::fmt::Display) -> ModelError {
    ModelError::InvalidRequest(format!("{context}: {err}"))
}

impl ConstraintEnv {
    /// Indexes `tokenizer`'s vocabulary.
    pub fn new(tokenizer: &GgufTokenizer) -> Result<ConstraintEnv, ModelError> {
        let text = tokenizer.tokenizer.to_string(false).map_err(|err| ModelError::Tokenizer(err.to_string()))?;
        let json: Value = serde_json::from_str(&text).map_err(|err| ModelError::Tokenizer(err.to_string()))?;
        let words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|err| ModelError::Tokenizer(format!("the vocabulary cannot be indexed: {err}")))?;
        let eos = tokenizer
            .end_of_turn
            .first()
            .copied()
            .or(tokenizer.eos.as_ref().map(|(id, _)| *id))
            .ok_or_else(|| ModelError::Tokenizer("the model has no end-of-turn token".into()))?;
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory =
            ParserFactory::new(&env, InferenceCapabilities::default(), &SlicedBiasComputer::general_slices())
                .map_err(|err| engine_error("the grammar engine cannot start", err))?;
        factory.set_stderr_log_level(0);
        Ok(ConstraintEnv { factory, vocab: words.len(), eos })
    }

    /// A fresh masking for one generation under `constraint`; a schema the
    /// engine cannot enforce is an invalid request, named.
    pub fn masking(&self, constraint: &OutputConstraint, end_of_turn: &[u32]) -> Result<Masking, ModelError> {
        let grammar = TopLevelGrammar::from_json_schema(constraint.schema());
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|err| engine_error("the JSON Schema cannot be enforced", err))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(err) = matcher.get_error() {
            return Err(engine_error("the JSON Schema cannot be enforced", err));
        }
        Ok(Masking { matcher, vocab: self.vocab, eos: self.eos, end_of_turn: end_of_turn.to_vec() })
    }
}

/// One generation's constraint state.
pub struct Masking {
    matcher: Matcher,
    vocab: usize,
    eos: u32,
    end_of_turn: Vec<u32>,
}

impl Masking {
    /// Sets every token that cannot come next to minus infinity; the
    /// end-of-turn tokens stay only where the output may end.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ModelError> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|err| engine_error("constrained decoding", err))?;
        let may_end = allowed.is_allowed(self.eos);
        for (id, logit) in logits.iter_mut().enumerate() {
            let id32 = id as u32;
            let keep = if self.end_of_turn.contains(&id32) {
                may_end
            } else {
                id < self.vocab && id32 != self.eos && allowed.is_allowed(id32)
            };
            if !keep {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Feeds the sampled token (not an end-of-turn token) to the parser.
    pub fn advance(&mut self, token: u32) -> Result<(), ModelError> {
        self.matcher.consume_token(token).map_err(|err| engine_error("constrained decoding", err))
    }

    /// The output is complete and nothing may follow it.
    pub fn finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
