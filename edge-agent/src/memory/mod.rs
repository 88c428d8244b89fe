//! The memory plane: semantic memory with provenance and retention, the
//! authoritative records, and the working context of a model step. The three
//! are kept apart on purpose: retrieved items are evidence with a score and a
//! source, never truth; records are exact, versioned business state an agent
//! reads and writes only through `record_get` / `record_put` steps and tools; the
//! working context is rebuilt for every step within a token budget.
//!
//! # Layout
//! - this file: the schema, the item types, [`Memory`] (the handle the
//!   runtime, the daemon and the CLI use) and the embedders.
//! - [`items`]: writes (add, import, reindex) and erasure (forget, sweep), each
//!   with its audit event in the same transaction; reads for show, stats, export.
//! - [`index`]: the in-memory vector index (int8 codes, exact re-ranking).
//! - [`search`]: conservative retrieval: scope and metadata filters first, then
//!   similarity (optionally blended with FTS5 keyword scores), then a minimum score.
//! - [`records`]: the transactional key-value store with compare-and-set.
//! - [`context`]: the working context of a model step within a token budget.
//! - [`steps`]: the `retrieve`, `record_get` and `record_put` steps, and the
//!   material of a model step's working context, as the runtime calls them.
//! - [`tools`]: the same four as tools of an agent step's loop (`retrieve`,
//!   `remember`, `record_get`, `record_put`), each safe to run again.
//!
//! Embeddings are computed on the models crate's worker thread and cached in
//! `memory_vectors` by (SHA-256 of the text, model id): a text is embedded
//! once per model, and an item's vector is the cache row it points at.

mod context;
mod index;
mod items;
mod records;
mod search;
pub mod steps;
#[cfg(test)]
mod tests;
pub mod tools;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use aios_models::{EmbeddingModel, LoadOptions, ModelStore};
use aios_shared::memory::{Classification, MemorySpec};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use context::{build_context, ContextInput, ContextPart, WorkingContext};
pub use index::VectorIndex;
pub use items::{ExportOptions, Forgotten, Stats};
pub use records::Record;
pub use search::{Hit, SearchRequest};

use crate::store::EdgeStore;
use crate::sync::identity::Identity;
use aios_daemon::db::{Db, DbError};

/// Errors of the memory plane.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The embedding model failed to load or to run.
    #[error("embedding with `{model}` failed: {reason}")]
    Embedding {
        /// The model's catalogue id.
        model: String,
        /// Why.
        reason: String,
    },
    /// A request or an imported line is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A compare-and-set found another version.
    #[error("record `{namespace}/{key}` is at version {found}, not the expected {expected}")]
    Conflict {
        /// The record's namespace.
        namespace: String,
        /// Its key.
        key: String,
        /// The version the writer expected (0: absent).
        expected: u64,
        /// The version stored (0: absent).
        found: u64,
    },
}

/// Who or what added an item, when, from which task and source, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The person or agent that added it (`cli:alice`, `agent:triage`).
    pub added_by: String,
    /// Where the text came from (`cli`, `import:file.jsonl`, a URL, a document id).
    pub source: String,
    /// The task that added it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Why it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the first version was added (ms since the epoch).
    #[serde(default)]
    pub created_ms: i64,
}

impl Provenance {
    /// The five provenance columns (`added_by, source, task_id, reason,
    /// created_ms`, in that order) of a row, starting at column `first`.
    pub(crate) fn from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Provenance> {
        Ok(Provenance {
            added_by: row.get(first)?,
            source: row.get(first + 1)?,
            task_id: row.get(first + 2)?,
            reason: row.get(first + 3)?,
            created_ms: row.get(first + 4)?,
        })
    }
}

/// An item to add (or, with an existing id, a new version of one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewItem {
    /// Stable id; generated when absent. An existing id gets a new version.
    #[serde(default)]
    pub id: Option<String>,
    /// The namespace (`policies`, `customers.acme`).
    pub namespace: String,
    /// The text that is embedded and returned.
    pub text: String,
    /// Metadata, a JSON object; top-level scalar values can be filtered on.
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
    /// How sensitive it is.
    pub classification: Classification,
    /// Data subjects the item is about (what `memory forget --subject` erases).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Where it came from.
    pub provenance: Provenance,
    /// When it must be gone (ms since the epoch), if earlier than retention says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A stored item, as `show` and `export` return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Stable id.
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// The text.
    pub text: String,
    /// Metadata (a JSON object).
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
    /// How sensitive it is.
    pub classification: Classification,
    /// Data subjects it is about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Where it came from.
    pub provenance: Provenance,
    /// Starts at 1; each update adds one.
    #[serde(default)]
    pub version: u64,
    /// When this version was written.
    #[serde(default)]
    pub updated_ms: i64,
    /// Explicit expiry, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// The model whose vector the item has.
    #[serde(default)]
    pub model: String,
    /// The vector, little-endian f32 in base64 (export with vectors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
}

/// What an add or import did to one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Added {
    /// The item's id.
    pub id: String,
    /// Its version now.
    pub version: u64,
    /// Whether its vector came from the cache (no model call).
    pub cached: bool,
}

/// Computes embeddings for memory; the real one runs the models crate's
/// worker thread, tests use a deterministic stand-in.
pub trait Embed: Send + Sync {
    /// The catalogue id that tags stored vectors.
    fn model_id(&self) -> &str;
    /// One unit vector per text, in order.
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, MemoryError>>;
}

/// A catalogue embedder loaded on first use, through the verified model store.
pub struct LazyEmbedder {
    /// Where the model comes from.
    models: ModelStore,
    /// How it is loaded.
    load: LoadOptions,
    /// Its catalogue id.
    id: String,
    /// The loaded worker.
    model: tokio::sync::OnceCell<EmbeddingModel>,
}

impl LazyEmbedder {
    /// An embedder for catalogue model `id`; nothing loads until the first text.
    pub fn new(models: ModelStore, load: LoadOptions, id: &str) -> LazyEmbedder {
        LazyEmbedder { models, load, id: id.to_owned(), model: tokio::sync::OnceCell::new() }
    }
}

impl Embed for LazyEmbedder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, MemoryError>> {
        Box::pin(async move {
            let failed = |reason: String| MemoryError::Embedding { model: self.id.clone(), reason };
            let model = self
                .model
                .get_or_try_init(|| EmbeddingModel::load(&self.models, &self.id, &self.load))
                .await
                .map_err(|err| failed(err.to_string()))?;
            model.embed(texts).await.map_err(|err| failed(err.to_string()))
        })
    }
}

/// Where embedders come from when the bundle names a model.
#[derive(Clone)]
pub enum EmbedderSource {
    /// Load catalogue models through this store.
    Catalog {
        /// The model store.
        models: ModelStore,
        /// Load options.
        load: LoadOptions,
    },
    /// Always this embedder (tests, benchmarks); the bundle's choice is ignored.
    Fixed(Arc<dyn Embed>),
}

/// The memory plane of one edge; cheap to clone.
#[derive(Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

struct Inner {
    /// The edge's database.
    db: Db,
    /// Signs the audit events of memory writes; `None` before enrolment
    /// (benchmarks, an export from an unenrolled copy).
    identity: Option<Identity>,
    /// How embedders are made.
    source: EmbedderSource,
    /// The settings in force and the embedder for their model.
    settings: Mutex<Settings>,
    /// The edge's autonomy: at `halted` (the kill switch at `all`) no text
    /// is embedded, as no model is called.
    autonomy: tokio::sync::watch::Receiver<aios_shared::bundle::Autonomy>,
    /// The vector index of the current model's items; rebuilt when the
    /// database's memory generation moves without this process knowing.
    index: RwLock<Option<VectorIndex>>,
}

struct Settings {
    /// Retention per classification, in ms.
    retention: BTreeMap<Classification, i64>,
    /// The embedder of the model in force.
    embedder: Arc<dyn Embed>,
}

impl Memory {
    /// The memory plane over `store`, with the settings of `spec`.
    pub fn new(store: &EdgeStore, identity: Option<Identity>, source: EmbedderSource, spec: &MemorySpec) -> Memory {
        let embedder = make_embedder(&source, spec.embedding_model());
        Memory {
            inner: Arc::new(Inner {
                db: store.db.clone(),
                identity,
                source,
                settings: Mutex::new(Settings { retention: spec.retention_ms(), embedder }),
                autonomy: store.watch_autonomy(),
                index: RwLock::new(None),
            }),
        }
    }

    /// Takes the settings of a newly applied bundle. A new embedding model
    /// takes effect at once: items embedded with another one are left out of
    /// searches until `reindex` rebuilds their vectors.
    pub fn configure(&self, spec: &MemorySpec) {
        let mut settings = self.inner.settings.lock().expect("memory settings lock");
        settings.retention = spec.retention_ms();
        if settings.embedder.model_id() != spec.embedding_model() {
            settings.embedder = make_embedder(&self.inner.source, spec.embedding_model());
            *self.inner.index.write().expect("memory index lock") = None;
        }
    }

    /// The embedding model in force.
    pub fn model_id(&self) -> String {
        self.embedder().model_id().to_owned()
    }

    fn embedder(&self) -> Arc<dyn Embed> {
        self.inner.settings.lock().expect("memory settings lock").embedder.clone()
    }

    /// Refuses to embed while the kill switch is at `all`.
    fn check_not_halted(&self) -> Result<(), MemoryError> {
        if *self.inner.autonomy.borrow() == aios_shared::bundle::Autonomy::Halted {
            return Err(MemoryError::Embedding {
                model: self.model_id(),
                reason: "the kill switch is at `all`: no model is called until an operator lifts it".into(),
            });
        }
        Ok(())
    }

    fn retention(&self) -> BTreeMap<Classification, i64> {
        self.inner.settings.lock().expect("memory settings lock").retention.clone()
    }
}

fn make_embedder(source: &EmbedderSource, model: &str) -> Arc<dyn Embed> {
    match source {
        EmbedderSource::Catalog { models, load } => Arc::new(LazyEmbedder::new(models.clone(), load.clone(), model)),
        EmbedderSource::Fixed(embedder) => embedder.clone(),
    }
}

/// SHA-256 of a text: the embedding cache's key (with the model id).
pub fn content_hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Little-endian f32 bytes of a vector.
pub fn vector_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A vector from its little-endian f32 bytes.
pub fn vector_from_bytes(bytes: &[u8]) -> Result<Vec<f32>, DbError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(DbError::Corrupt(format!("a stored vector has {} bytes, not a multiple of 4", bytes.len())));
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// When an item stops being returned: its explicit expiry or its
/// classification's retention counted from its last write, whichever is first.
pub fn effective_expiry(
    retention: &BTreeMap<Classification, i64>,
    classification: Classification,
    updated_ms: i64,
    expires_ms: Option<i64>,
) -> i64 {
    let by_retention = retention.get(&classification).map_or(i64::MAX, |ms| updated_ms.saturating_add(*ms));
    expires_ms.unwrap_or(i64::MAX).min(by_retention)
}
