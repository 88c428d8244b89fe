//! Error types for the two boundaries of this crate: the model store (finding,
//! fetching and verifying files) and the model backends (loading weights and
//! running inference). Each variant says what went wrong and, where the user can
//! act, what to do about it.

use std::path::PathBuf;

/// Failures of the model store: catalogue, cache, sources and verification.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Every source of the model failed; each attempt is listed.
    #[error("could not fetch model `{id}` from any source:\n{}", attempts.join("\n"))]
    AllSourcesFailed {
        /// The model id.
        id: String,
        /// One line per source tried, with its failure.
        attempts: Vec<String>,
    },
    /// The catalogue TOML could not be parsed or is inconsistent.
    #[error("invalid model catalogue: {0}")]
    Catalog(String),
    /// A file's SHA-256 differs from the catalogue; the file was not used.
    #[error("SHA-256 mismatch for {file}: expected {expected}, found {actual}; the file was not used")]
    HashMismatch {
        /// The file that failed verification.
        file: PathBuf,
        /// The digest the catalogue names.
        expected: String,
        /// The digest of the bytes on disk.
        actual: String,
    },
    /// A filesystem operation on the cache failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The model's files are not in the cache and pulling was not allowed.
    #[error("model `{id}` is not in the cache at {cache}; fetch it with `aios-edge models pull {id}`")]
    NotCached {
        /// The model id.
        id: String,
        /// The cache root that was searched.
        cache: PathBuf,
    },
    /// A source failed (network, subprocess, archive); the message names it.
    #[error("{0}")]
    Source(String),
    /// No catalogue entry has this id.
    #[error("unknown model `{id}`; `aios-edge models list` shows the catalogue")]
    UnknownModel {
        /// The id that was asked for.
        id: String,
    },
}

impl StoreError {
    /// Wraps an I/O error with a description of the operation.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Failures of the model backends: loading, tokenising and inference.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The request was cancelled by the caller.
    #[error("the request was cancelled")]
    Cancelled,
    /// A candle tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A weights file is malformed or truncated; the message names it.
    #[error("corrupt model file {file}: {reason}")]
    CorruptFile {
        /// The file that could not be read.
        file: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The configured device is not compiled in or not available.
    #[error("device unavailable: {0}")]
    Device(String),
    /// The request is malformed (empty candidate list, bad sampling values...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt does not fit in the model's context window.
    #[error("prompt of {prompt_tokens} tokens does not fit the context window of {context_length} tokens")]
    PromptTooLong {
        /// Tokens in the rendered prompt.
        prompt_tokens: usize,
        /// The usable context length.
        context_length: usize,
    },
    /// Fetching or verifying the model's files failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chat template could not be rendered.
    #[error("chat template error: {0}")]
    Template(String),
    /// The tokenizer could not be built or failed on the input.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The GGUF architecture is not supported by this build.
    #[error("unsupported model architecture `{0}` (supported: llama, qwen2, phi3, gemma3)")]
    UnsupportedArchitecture(String),
    /// The file uses a tensor type or tokenizer model this build cannot run.
    #[error("unsupported model format: {0}")]
    UnsupportedFormat(String),
    /// The backend worker thread stopped (it panicked or was shut down).
    #[error("the model worker thread has stopped")]
    WorkerGone,
    /// The catalogue entry is the wrong kind for this backend.
    #[error("model `{id}` is a {actual} model, not a {expected} model")]
    WrongKind {
        /// The model id.
        id: String,
        /// The kind the backend needs.
        expected: &'static str,
        /// The kind the catalogue declares.
        actual: &'static str,
    },
}
