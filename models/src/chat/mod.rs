//! The chat backend: GGUF chat models run with candle's quantized
//! implementations.
//!
//! # Layout
//! - `weights`: file checks and dispatch on `general.architecture`.
//! - `ggml`: matrix products over ggml's block quantisations and float
//!   weights with llama.cpp's arithmetic, on our CPU kernels.
//! - `llama`: this crate's llama transformer (llama.cpp numerics, external KV cache).
//! - `tokenizer`: the byte-level BPE tokenizer rebuilt from GGUF metadata.
//! - `template`: the model's Jinja chat template, rendered with minijinja.
//! - `sampling`: greedy / temperature / top-k / top-p / repetition penalty.
//! - `engine`: prefill, decode, stop conditions, scored choice.
//! - `constrain`: decoding masked to a JSON Schema (llguidance).

pub mod constrain;
pub mod engine;
pub mod ggml;
pub mod llama;
pub mod sampling;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use constrain::OutputConstraint;
pub use engine::{CandidateScore, ChatEngine, FinishReason, GenerateRequest, Generation, Prompt, ScoredChoice};
pub use sampling::SamplingParams;
pub use template::{ChatMessage, ChatTemplate, Role};
