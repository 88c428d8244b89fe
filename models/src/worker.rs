//! Runs each loaded model on a dedicated OS thread behind a command channel,
//! so no forward pass ever blocks a tokio worker (the shape of
//! text-embeddings-inference's backends). Commands carry the caller's
//! `tracing::Span`, a cancellation flag and a `oneshot` reply; the thread
//! publishes its health on a `watch` channel. Dropping a request's future sets
//! its cancellation flag, and the engine stops at the next token or batch.
//!
//! The thread ends when the last handle is dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::catalog::ModelKind;
use crate::chat::{ChatEngine, GenerateRequest, Generation, Prompt, ScoredChoice};
use crate::device::DeviceConfig;
use crate::embed::{Embedded, EmbedderFiles, EmbeddingEngine};
use crate::error::ModelError;
use crate::store::ModelStore;

/// The state of a model's worker thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The model failed to load or its thread panicked; the message says why.
    Failed(String),
    /// Fetching and loading the weights.
    Loading,
    /// Serving requests.
    Ready,
    /// The thread has exited.
    Stopped,
}

/// Whether loading may fetch missing files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchPolicy {
    /// Use only what is already in the cache.
    CacheOnly,
    /// Fetch missing files from the catalogue's sources.
    #[default]
    Pull,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where it runs.
    pub device: DeviceConfig,
    /// Whether missing files may be fetched.
    pub fetch: FetchPolicy,
    /// Texts per embedding forward pass.
    pub embedding_batch_size: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: DeviceConfig::Cpu, fetch: FetchPolicy::Pull, embedding_batch_size: 32 }
    }
}

/// Sets the shared flag when dropped, so a dropped future cancels its job.
#[derive(Debug)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What every command carries besides its payload.
struct Envelope<T> {
    /// The caller's span, entered while the job runs.
    span: tracing::Span,
    /// Set when the caller gave up.
    cancelled: Arc<AtomicBool>,
    /// Where the result goes.
    reply: oneshot::Sender<Result<T, ModelError>>,
}

enum ChatCommand {
    Generate { request: GenerateRequest, pieces: Option<mpsc::UnboundedSender<String>>, envelope: Envelope<Generation> },
    Score { prompt: Prompt, candidates: Vec<String>, envelope: Envelope<ScoredChoice> },
    Tokenize { prompt: Prompt, envelope: Envelope<(String, Vec<u32>)> },
}

enum EmbedCommand {
    Embed { texts: Vec<String>, envelope: Envelope<Embedded> },
}

/// Facts about a loaded chat model.
#[derive(Debug, Clone)]
pub struct ChatModelInfo {
    /// `general.architecture`.
    pub architecture: String,
    /// Usable context window in tokens.
    pub context_length: usize,
    /// Vocabulary size including added tokens.
    pub vocab_size: usize,
    /// Bytes of weights one generated token reads, when the CPU kernels of
    /// this crate run the model (the benchmark's roofline).
    pub weight_bytes_per_token: Option<usize>,
}

/// An async handle to a chat model running on its own thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChatModel {
    commands: std::sync::mpsc::Sender<ChatCommand>,
    health: watch::Receiver<Health>,
    info: Arc<ChatModelInfo>,
}

impl std::fmt::Debug for ChatCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatCommand")
    }
}

impl std::fmt::Debug for EmbedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbedCommand")
    }
}

impl ChatModel {
    /// Resolves `id` through the store (fetching it if allowed), verifies it
    /// and loads it on a new thread.
    pub async fn load(store: &ModelStore, id: &str, options: &LoadOptions) -> Result<Self, ModelError> {
        let entry = store.catalog().find(id)?.clone();
        if entry.kind != ModelKind::Chat {
            return Err(ModelError::WrongKind { id: id.to_owned(), expected: "chat", actual: entry.kind.as_str() });
        }
        let store = store.clone();
        let id = id.to_owned();
        let fetch = options.fetch;
        let device = options.device;
        Self::spawn(format!("chat-{id}"), move || {
            let resolved = match fetch {
                FetchPolicy::Pull => store.pull(&id)?,
                FetchPolicy::CacheOnly => store.locate(&id)?,
            };
            let path = resolved.file_with_suffix(".gguf").ok_or_else(|| {
                ModelError::UnsupportedFormat(format!("model `{id}` has no .gguf file in the catalogue"))
            })?;
            ChatEngine::load(path, &device.open()?)
        })
        .await
    }

    /// Loads a GGUF file directly (tests, side-loaded experiments). The file
    /// is not verified against any catalogue.
    pub async fn load_file(path: PathBuf, device: DeviceConfig) -> Result<Self, ModelError> {
        Self::spawn("chat-file".to_owned(), move || ChatEngine::load(&path, &device.open()?)).await
    }

    async fn spawn(
        name: String,
        load: impl FnOnce() -> Result<ChatEngine, ModelError> + Send + 'static,
    ) -> Result<Self, ModelError> {
        let (commands, health, info) = spawn_worker(
            name,
            move || {
                let engine = load()?;
                let info = ChatModelInfo {
                    architecture: engine.architecture().to_owned(),
                    context_length: engine.context_length(),
                    vocab_size: engine.tokenizer().vocab_size(),
                    weight_bytes_per_token: engine.weight_bytes_per_token(),
                };
                Ok((engine, info))
            },
            run_chat_command,
        )
        .await?;
        Ok(Self { commands, health, info: Arc::new(info) })
    }

    /// Facts about the loaded model.
    pub fn info(&self) -> &ChatModelInfo {
        &self.info
    }

    /// The worker's health.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Generates a complete reply. Dropping the future cancels generation.
    pub async fn generate(&self, request: GenerateRequest) -> Result<Generation, ModelError> {
        self.call(|envelope| ChatCommand::Generate { request, pieces: None, envelope }).await
    }

    /// Generates a reply, streaming text pieces as they are produced.
    /// Dropping the stream cancels generation.
    pub fn generate_stream(&self, request: GenerateRequest) -> GenerationStream {
        let (pieces_tx, pieces) = mpsc::unbounded_channel();
        let (reply, result) = oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let command = ChatCommand::Generate {
            request,
            pieces: Some(pieces_tx),
            envelope: Envelope { span: tracing::Span::current(), cancelled: cancelled.clone(), reply },
        };
        // A send error drops the reply sender, which `finish` reports as WorkerGone.
        let _ = self.commands.send(command);
        GenerationStream { pieces, result, _cancel: CancelOnDrop(cancelled) }
    }

    /// Scores each candidate answer after the prompt (see [`ChatEngine::score`]).
    pub async fn score(&self, prompt: Prompt, candidates: Vec<String>) -> Result<ScoredChoice, ModelError> {
        self.call(|envelope| ChatCommand::Score { prompt, candidates, envelope }).await
    }

    /// The rendered prompt text and its token ids.
    pub async fn tokenize(&self, prompt: Prompt) -> Result<(String, Vec<u32>), ModelError> {
        self.call(|envelope| ChatCommand::Tokenize { prompt, envelope }).await
    }

    async fn call<T>(&self, make: impl FnOnce(Envelope<T>) -> ChatCommand) -> Result<T, ModelError> {
        let (reply, result) = oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancelled.clone());
        self.commands
            .send(make(Envelope { span: tracing::Span::current(), cancelled, reply }))
            .map_err(|_| ModelError::WorkerGone)?;
        result.await.map_err(|_| ModelError::WorkerGone)?
    }
}

/// A reply being generated: text pieces, then the final [`Generation`].
#[derive(Debug)]
pub struct GenerationStream {
    pieces: mpsc::UnboundedReceiver<String>,
    result: oneshot::Receiver<Result<Generation, ModelError>>,
    _cancel: CancelOnDrop,
}

impl GenerationStream {
    /// The next piece of text, or `None` when generation has ended.
    pub async fn next_piece(&mut self) -> Option<String> {
        self.pieces.recv().await
    }

    /// Waits for the end and returns the whole generation.
    pub async fn finish(self) -> Result<Generation, ModelError> {
        let Self { result, _cancel, .. } = self;
        result.await.map_err(|_| ModelError::WorkerGone)?
    }
}

fn run_chat_command(engine: &ChatEngine, command: ChatCommand) {
    match command {
        ChatCommand::Generate { request, pieces, envelope } => {
            let flag = envelope.cancelled.clone();
            let cancelled = move || flag.load(Ordering::Relaxed);
            let mut on_text = |piece: &str| match &pieces {
                Some(sender) => sender.send(piece.to_owned()).is_ok(),
                None => true,
            };
            respond(envelope, |_| engine.generate(&request, &mut on_text, &cancelled));
        }
        ChatCommand::Score { prompt, candidates, envelope } => {
            let flag = envelope.cancelled.clone();
            respond(envelope, |_| engine.score(&prompt, &candidates, &|| flag.load(Ordering::Relaxed)));
        }
        ChatCommand::Tokenize { prompt, envelope } => respond(envelope, |_| {
            let text = engine.render(&prompt)?;
            let ids = engine.tokenizer().encode_prompt(&text)?;
            Ok((text, ids))
        }),
    }
}

/// An async handle to a sentence embedder running on its own thread.
#[derive(Debug, Clone)]
pub struct EmbeddingModel {
    commands: std::sync::mpsc::Sender<EmbedCommand>,
    health: watch::Receiver<Health>,
    dimensions: usize,
}

impl EmbeddingModel {
    /// Resolves `id` through the store (fetching it if allowed), verifies it
    /// and loads it on a new thread.
    pub async fn load(store: &ModelStore, id: &str, options: &LoadOptions) -> Result<Self, ModelError> {
        let entry = store.catalog().find(id)?.clone();
        if entry.kind != ModelKind::Embedding {
            return Err(ModelError::WrongKind {
                id: id.to_owned(),
                expected: "embedding",
                actual: entry.kind.as_str(),
            });
        }
        let store = store.clone();
        let id = id.to_owned();
        let options = options.clone();
        let (commands, health, dimensions) = spawn_worker(
            format!("embed-{id}"),
            move || {
                let resolved = match options.fetch {
                    FetchPolicy::Pull => store.pull(&id)?,
                    FetchPolicy::CacheOnly => store.locate(&id)?,
                };
                let need = |suffix: &str| {
                    resolved.file_with_suffix(suffix).ok_or_else(|| {
                        ModelError::UnsupportedFormat(format!("model `{id}` has no {suffix} in the catalogue"))
                    })
                };
                let files = EmbedderFiles {
                    weights: need(".safetensors")?,
                    config: need("config.json")?,
                    tokenizer: need("tokenizer.json")?,
                };
                let engine = EmbeddingEngine::load(
                    files,
                    &options.device.open()?,
                    resolved.entry.max_sequence_length,
                    options.embedding_batch_size,
                )?;
                let dimensions = engine.dimensions();
                Ok((engine, dimensions))
            },
            run_embed_command,
        )
        .await?;
        Ok(Self { commands, health, dimensions })
    }

    /// Loads an embedder from explicit files (tests); not verified.
    pub async fn load_files(
        weights: PathBuf,
        config: PathBuf,
        tokenizer: PathBuf,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let options = options.clone();
        let (commands, health, dimensions) = spawn_worker(
            "embed-file".to_owned(),
            move || {
                let files = EmbedderFiles { weights: &weights, config: &config, tokenizer: &tokenizer };
                let engine = EmbeddingEngine::load(files, &options.device.open()?, None, options.embedding_batch_size)?;
                let dimensions = engine.dimensions();
                Ok((engine, dimensions))
            },
            run_embed_command,
        )
        .await?;
        Ok(Self { commands, health, dimensions })
    }

    /// Width of the vectors.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The worker's health.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// One unit vector per text. Dropping the future cancels the remaining batches.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(self.embed_counted(texts).await?.vectors)
    }

    /// [`EmbeddingModel::embed`], with the number of tokens read.
    pub async fn embed_counted(&self, texts: Vec<String>) -> Result<Embedded, ModelError> {
        let (reply, result) = oneshot::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancelled.clone());
        self.commands
            .send(EmbedCommand::Embed {
                texts,
                envelope: Envelope { span: tracing::Span::current(), cancelled, reply },
            })
            .map_err(|_| ModelError::WorkerGone)?;
        result.await.map_err(|_| ModelError::WorkerGone)?
    }
}

fn run_embed_command(engine: &EmbeddingEngine, command: EmbedCommand) {
    match command {
        EmbedCommand::Embed { texts, envelope } => {
            let flag = envelope.cancelled.clone();
            respond(envelope, |_| engine.embed_counted(&texts, &|| flag.load(Ordering::Relaxed)));
        }
    }
}

/// Runs `job` inside the caller's span unless already cancelled, turns a
/// panic into an error, and sends the result.
fn respond<T>(envelope: Envelope<T>, job: impl FnOnce(()) -> Result<T, ModelError>) {
    let Envelope { span, cancelled, reply } = envelope;
    let _entered = span.enter();
    let result = if cancelled.load(Ordering::Relaxed) || reply.is_closed() {
        Err(ModelError::Cancelled)
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(()))).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(%message, "model job panicked");
            Err(ModelError::InvalidRequest(format!("the backend panicked: {message}")))
        })
    };
    let _ = reply.send(result);
}

/// Starts a named thread that loads an engine with `load`, reports the
/// outcome, then serves commands with `handle` until every sender is gone.
async fn spawn_worker<E, I, C>(
    name: String,
    load: impl FnOnce() -> Result<(E, I), ModelError> + Send + 'static,
    handle: fn(&E, C),
) -> Result<(std::sync::mpsc::Sender<C>, watch::Receiver<Health>, I), ModelError>
where
    E: 'static,
    I: Send + 'static,
    C: Send + 'static,
{
    let (commands, receiver) = std::sync::mpsc::channel::<C>();
    let (health_tx, health) = watch::channel(Health::Loading);
    let (loaded_tx, loaded) = oneshot::channel::<Result<I, ModelError>>();
    // A root span: the worker outlives whatever task first asked for it, and
    // a child would keep that task's spans open (and unexported) forever.
    let span = tracing::info_span!(parent: None, "model_worker", name = %name);
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _entered = span.enter();
            let engine = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
                Ok(Ok((engine, info))) => {
                    health_tx.send_replace(Health::Ready);
                    let _ = loaded_tx.send(Ok(info));
                    engine
                }
                Ok(Err(error)) => {
                    health_tx.send_replace(Health::Failed(error.to_string()));
                    let _ = loaded_tx.send(Err(error));
                    return;
                }
                Err(_) => {
                    health_tx.send_replace(Health::Failed("loading panicked".to_owned()));
                    let _ = loaded_tx.send(Err(ModelError::WorkerGone));
                    return;
                }
            };
            tracing::info!("model ready");
            while let Ok(command) = receiver.recv() {
                handle(&engine, command);
            }
            health_tx.send_replace(Health::Stopped);
        })
        .map_err(|e| ModelError::Device(format!("cannot start the model thread: {e}")))?;
    let info = loaded.await.map_err(|_| ModelError::WorkerGone)??;
    Ok((commands, health, info))
}
