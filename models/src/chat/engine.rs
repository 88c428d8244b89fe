//! The synchronous chat engine: prompt rendering and tokenisation, prefill,
//! decoding with a KV cache, stop conditions and scored choice. It runs on the
//! model's own thread (see `worker`); nothing here is async.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::constrain::{ConstraintEnv, Masking, OutputConstraint};
use super::llama::Precision;
use super::sampling::{log_prob, Sampler, SamplingParams};
use super::template::{ChatMessage, ChatTemplate, CHATML_TEMPLATE};
use super::tokenizer::GgufTokenizer;
use super::weights::{load_gguf, ChatWeights};
use crate::error::ModelError;

/// What the model is asked to continue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// A conversation, rendered with the model's chat template and a
    /// generation prompt for the assistant.
    Chat(Vec<ChatMessage>),
    /// Text passed to the tokenizer as is (special tokens in it are honoured).
    Text(String),
}

/// A generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// What to continue.
    pub prompt: Prompt,
    /// The most tokens to generate.
    pub max_tokens: usize,
    /// How to pick each token.
    pub sampling: SamplingParams,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Keep going past end-of-turn tokens (benchmarks only).
    pub ignore_eos: bool,
    /// What the output must be (see [`OutputConstraint`]); `None`: free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<OutputConstraint>,
}

impl GenerateRequest {
    /// A greedy request for a conversation.
    pub fn chat(messages: Vec<ChatMessage>, max_tokens: usize) -> Self {
        Self {
            prompt: Prompt::Chat(messages),
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
            constraint: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The caller cancelled; the text is what was produced until then.
    Cancelled,
    /// The model produced an end-of-turn token.
    EndOfTurn,
    /// `max_tokens` or the context window was reached.
    Length,
    /// A stop sequence was produced (it is not part of the text).
    Stop,
}

/// The result of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The generated text (stop sequence excluded).
    pub text: String,
    /// Generated token ids (end-of-turn token excluded).
    pub token_ids: Vec<u32>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Time to process the prompt and pick the first token.
    pub time_to_first_token: Duration,
    /// Time spent generating after the first token.
    pub decode_time: Duration,
}

/// One candidate's score in a scored choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    /// The candidate text.
    pub label: String,
    /// Sum of the log-probabilities of the candidate's tokens after the prompt.
    pub log_prob: f64,
    /// `softmax` of `log_prob` over all candidates.
    pub confidence: f64,
    /// How many tokens the candidate has.
    pub tokens: usize,
}

/// The result of scoring a closed set of answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredChoice {
    /// One entry per candidate, in request order.
    pub candidates: Vec<CandidateScore>,
    /// Index of the most likely candidate.
    pub best: usize,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
}

impl ScoredChoice {
    /// The most likely candidate.
    pub fn best(&self) -> &CandidateScore {
        &self.candidates[self.best]
    }
}

/// A loaded chat model with its tokenizer and template.
#[derive(Debug)]
pub struct ChatEngine {
    /// Weights with an empty KV cache; every request works on a clone.
    weights: ChatWeights,
    /// Built from the GGUF metadata.
    tokenizer: GgufTokenizer,
    /// The model's chat template (ChatML when the file has none).
    template: ChatTemplate,
    /// Where the tensors live.
    device: Device,
    /// Usable context window in tokens.
    context_length: usize,
    /// `general.architecture`.
    architecture: String,
    /// The vocabulary indexed for constrained decoding, on first use.
    constraints: std::sync::OnceLock<Result<ConstraintEnv, String>>,
}

impl ChatEngine {
    /// Loads a GGUF file onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        let loaded = load_gguf(path, device)?;
        let tokenizer = GgufTokenizer::from_metadata(&loaded.metadata)?;
        let source = loaded
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
            .unwrap_or(CHATML_TEMPLATE);
        let bos = tokenizer.bos.as_ref().map(|(_, t)| t.as_str()).unwrap_or_default();
        let eos = tokenizer.eos.as_ref().map(|(_, t)| t.as_str()).unwrap_or_default();
        let template = ChatTemplate::new(source, bos, eos)?;
        Ok(Self {
            weights: loaded.weights,
            tokenizer,
            template,
            device: device.clone(),
            context_length: loaded.context_length,
            architecture: loaded.architecture,
            constraints: std::sync::OnceLock::new(),
        })
    }

    /// `general.architecture` of the loaded file.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Usable context window in tokens.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The tokenizer built from the file.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The prompt text exactly as the tokenizer will see it.
    pub fn render(&self, prompt: &Prompt) -> Result<String, ModelError> {
        match prompt {
            Prompt::Chat(messages) => self.template.render(messages, true),
            Prompt::Text(text) => Ok(text.clone()),
        }
    }

    /// The prompt's token ids (BOS added when the model asks for it).
    pub fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, ModelError> {
        let text = self.render(prompt)?;
        let ids = self.tokenizer.encode_prompt(&text)?;
        if ids.is_empty() {
            return Err(ModelError::InvalidRequest("the prompt is empty".to_owned()));
        }
        if ids.len() >= self.context_length {
            return Err(ModelError::PromptTooLong { prompt_tokens: ids.len(), context_length: self.context_length });
        }
        Ok(ids)
    }

    /// Runs the prompt through a fresh copy of the model; returns the model
    /// (its KV cache holding the prompt) and the logits for the next token.
    pub fn prefill(&self, ids: &[u32]) -> Result<(ChatWeights, Vec<f32>), ModelError> {
        self.prefill_with(ids, Precision::Quantised)
    }

    /// [`ChatEngine::prefill`] in the given arithmetic, which the returned
    /// copy keeps for the positions run on it later.
    pub fn prefill_with(&self, ids: &[u32], precision: Precision) -> Result<(ChatWeights, Vec<f32>), ModelError> {
        let mut model = self.weights.clone();
        model.set_precision(precision);
        let logits = self.step(&mut model, ids, 0)?;
        Ok((model, logits))
    }

    fn step(&self, model: &mut ChatWeights, ids: &[u32], index_pos: usize) -> Result<Vec<f32>, ModelError> {
        Ok(model.forward_last(ids, index_pos, &self.device)?)
    }

    /// Bytes of weights a decode step reads, when the model's arithmetic is
    /// this crate's (for the benchmark's roofline).
    pub fn weight_bytes_per_token(&self) -> Option<usize> {
        self.weights.llama().filter(|m| m.runs_on_host()).map(|m| m.weight_bytes_per_token())
    }

    /// A fresh constraint state for one generation under `constraint`.
    pub fn masking(&self, constraint: &OutputConstraint) -> Result<Masking, ModelError> {
        let env = self.constraints.get_or_init(|| ConstraintEnv::new(&self.tokenizer).map_err(|err| err.to_string()));
        match env {
            Ok(env) => env.masking(constraint, &self.tokenizer.end_of_turn),
            Err(problem) => Err(ModelError::InvalidRequest(format!("constrained decoding is unavailable: {problem}"))),
        }
    }

    /// Generates a reply. `on_text` receives each new piece of text as soon as
    /// it is final (never a piece of a stop sequence, never half a UTF-8
    /// character) and returns `false` to stop; `cancelled` is polled between
    /// tokens.
    pub fn generate(
        &self,
        request: &GenerateRequest,
        on_text: &mut dyn FnMut(&str) -> bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Generation, ModelError> {
        request.sampling.validate()?;
        let started = Instant::now();
        let prompt = self.prompt_tokens(&request.prompt)?;
        let mut sampler = Sampler::new(request.sampling.clone());
        let mut history = prompt.clone();
        let mut generated: Vec<u32> = Vec::new();
        let mut emitted = 0usize;
        let mut text = String::new();
        let mut first_token_at = None;
        let mut masking = request.constraint.as_ref().map(|c| self.masking(c)).transpose()?;
        let (mut model, mut logits) = self.prefill(&prompt)?;
        let finish_reason = loop {
            if request.max_tokens == 0 {
                break FinishReason::Length;
            }
            if let Some(masking) = masking.as_mut() {
                masking.mask(&mut logits)?;
            }
            let next = sampler.sample(&mut logits, &history);
            first_token_at.get_or_insert_with(|| started.elapsed());
            if (!request.ignore_eos || masking.is_some()) && self.tokenizer.end_of_turn.contains(&next) {
                break FinishReason::EndOfTurn;
            }
            if let Some(masking) = masking.as_mut() {
                masking.advance(next)?;
            }
            generated.push(next);
            history.push(next);
            text = self.tokenizer.decode(&generated)?;
            if let Some(cut) = earliest_stop(&text, &request.stop) {
                text.truncate(cut);
                if cut > emitted {
                    on_text(&text[emitted..]);
                }
                emitted = text.len();
                break FinishReason::Stop;
            }
            let safe = safe_prefix_len(&text, &request.stop);
            if safe > emitted {
                if !on_text(&text[emitted..safe]) {
                    break FinishReason::Cancelled;
                }
                emitted = safe;
            }
            if masking.as_ref().is_some_and(Masking::finished) {
                break FinishReason::EndOfTurn;
            }
            if generated.len() >= request.max_tokens || history.len() >= self.context_length {
                break FinishReason::Length;
            }
            if cancelled() {
                break FinishReason::Cancelled;
            }
            model.forward_last_into(&[next], history.len() - 1, &self.device, &mut logits)?;
        };
        if finish_reason != FinishReason::Stop && finish_reason != FinishReason::Cancelled && text.len() > emitted {
            on_text(&text[emitted..]);
        }
        let time_to_first_token = first_token_at.unwrap_or_else(|| started.elapsed());
        Ok(Generation {
            text,
            completion_tokens: generated.len(),
            token_ids: generated,
            prompt_tokens: prompt.len(),
            finish_reason,
            time_to_first_token,
            decode_time: started.elapsed().saturating_sub(time_to_first_token),
        })
    }

    /// Scores each candidate answer: the sum of its tokens' log-probabilities
    /// after the prompt, and a softmax over candidates. The prompt is
    /// prefilled once; each candidate runs on a copy of that KV cache. On
    /// the host path this runs in [`Precision::Exact`] arithmetic, so the
    /// log-probabilities are the file's model's, not 8-bit activations'.
    pub fn score(
        &self,
        prompt: &Prompt,
        candidates: &[String],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<ScoredChoice, ModelError> {
        if candidates.is_empty() {
            return Err(ModelError::InvalidRequest("no candidates to score".to_owned()));
        }
        let ids = self.prompt_tokens(prompt)?;
        let encoded = candidates
            .iter()
            .map(|candidate| {
                let tokens = self.tokenizer.encode(candidate)?;
                if tokens.is_empty() {
                    return Err(ModelError::InvalidRequest("a candidate is empty".to_owned()));
                }
                if ids.len() + tokens.len() > self.context_length {
                    return Err(ModelError::PromptTooLong {
                        prompt_tokens: ids.len() + tokens.len(),
                        context_length: self.context_length,
                    });
                }
                Ok(tokens)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (mut prefilled, mut first_logits) = self.prefill_with(&ids, Precision::Exact)?;
        let mut log_probs = Vec::with_capacity(candidates.len());
        for (idx, tokens) in encoded.iter().enumerate() {
            if cancelled() {
                return Err(ModelError::Cancelled);
            }
            if idx > 0 && !prefilled.can_fork() {
                // The previous candidate extended the one shared cache: redo the prompt.
                (prefilled, first_logits) = self.prefill_with(&ids, Precision::Exact)?;
            }
            let mut total = log_prob(&first_logits, tokens[0]);
            if tokens.len() > 1 {
                let mut model = prefilled.clone();
                let rows = model.forward_each(&tokens[..tokens.len() - 1], ids.len(), &self.device)?;
                for (logits, next) in rows.iter().zip(&tokens[1..]) {
                    total += log_prob(logits, *next);
                }
            }
            log_probs.push(total);
        }
        let max = log_probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = log_probs.iter().map(|lp| (lp - max).exp()).sum();
        let mut best = 0;
        let scores = candidates
            .iter()
            .zip(&encoded)
            .zip(&log_probs)
            .enumerate()
            .map(|(idx, ((label, tokens), lp))| {
                if *lp > log_probs[best] {
                    best = idx;
                }
                CandidateScore {
                    label: label.clone(),
                    log_prob: *lp,
                    confidence: (lp - max).exp() / sum,
                    tokens: tokens.len(),
                }
            })
            .collect();
        Ok(ScoredChoice { candidates: scores, best, prompt_tokens: ids.len() })
    }
}

/// Byte index of the earliest stop sequence in `text`.
fn earliest_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
}

/// How much of `text` can be shown: not a trailing partial character (shown
/// by the decoder as U+FFFD) and not a suffix that could start a stop sequence.
fn safe_prefix_len(text: &str, stops: &[String]) -> usize {
    let complete = text.trim_end_matches('\u{FFFD}').len();
    let mut end = complete;
    for stop in stops.iter().filter(|s| !s.is_empty()) {
        for (idx, _) in stop.char_indices().skip(1) {
            let head = &stop[..idx];
            if text[..complete].ends_with(head) {
                end = end.min(complete - head.len());
            }
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_prefixes_are_held_back() {
        let stops = vec!["\nUser:".to_owned()];
        assert_eq!(safe_prefix_len("hello\nUs", &stops), 5);
        assert_eq!(safe_prefix_len("hello", &stops), 5);
        assert_eq!(earliest_stop("hi\nUser: x", &stops), Some(2));
    }

    #[test]
    fn partial_characters_are_held_back() {
        assert_eq!(safe_prefix_len("caf\u{FFFD}", &[]), 3);
    }
}
