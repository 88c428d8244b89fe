//! Loads a GGUF chat model into the matching candle quantized implementation,
//! dispatching on `general.architecture`. The file is checked before any
//! tensor is read: every tensor must lie inside the file (a truncated download
//! is a clear error, not a short read deep inside candle) and use a tensor
//! type this build can run.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_gemma3, quantized_phi3, quantized_qwen2};

use super::llama::{KvCache, LlamaModel, Logits, Precision};

use crate::error::ModelError;

/// The architectures this build can run, as `general.architecture` names them.
pub const SUPPORTED_ARCHITECTURES: [&str; 4] = ["llama", "qwen2", "phi3", "gemma3"];

/// Context length assumed when a file does not state one.
const DEFAULT_CONTEXT: usize = 4096;
/// The rotary base candle's phi3 uses whatever the file says.
const PHI3_ROPE_BASE: f32 = 10_000.0;
/// candle's quantized gemma3 precomputes rotary tables for this many positions.
const GEMMA3_MAX_POSITIONS: usize = quantized_gemma3::MAX_SEQ_LEN;

/// A loaded model of one of the supported architectures together with its
/// KV cache. Cloning is cheap (weights are shared). For every architecture
/// but qwen2 a clone owns an independent copy of the cache
/// ([`ChatWeights::can_fork`]), which is how scored choice evaluates every
/// candidate from one prefill; candle's qwen2 is not `Clone`, so its clones
/// share one model and one cache, and a pass at position 0 starts afresh.
/// (candle's phi3 clones share the buffer their cache was allocated in and
/// write the positions after the fork into it in place, so the forks of one
/// copy must run one after another, as scoring's do.)
#[derive(Debug, Clone)]
pub enum ChatWeights {
    /// `general.architecture = "gemma3"` (candle's implementation).
    Gemma3(quantized_gemma3::ModelWeights),
    /// `general.architecture = "llama"` (this crate's implementation).
    Llama {
        /// Shared weights.
        model: Arc<LlamaModel>,
        /// This copy's cache.
        cache: KvCache,
    },
    /// `general.architecture = "phi3"` (candle's implementation).
    Phi3(quantized_phi3::ModelWeights),
    /// `general.architecture = "qwen2"` (candle's implementation).
    Qwen2(SharedQwen2),
}

/// candle's quantized qwen2 behind a lock, since it implements neither
/// `Clone` nor `Debug`.
#[derive(Clone)]
pub struct SharedQwen2(Arc<Mutex<quantized_qwen2::ModelWeights>>);

impl std::fmt::Debug for SharedQwen2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedQwen2")
    }
}

impl ChatWeights {
    /// Logits for the position after `ids`, whose first token sits at
    /// `index_pos`; the cache must hold exactly the positions before it
    /// (for llama a shorter `index_pos` rolls the cache back).
    pub fn forward_last(&mut self, ids: &[u32], index_pos: usize, device: &Device) -> candle_core::Result<Vec<f32>> {
        let mut logits = Vec::new();
        self.forward_last_into(ids, index_pos, device, &mut logits)?;
        Ok(logits)
    }

    /// [`ChatWeights::forward_last`] into `logits`, whose allocation a
    /// decode loop reuses from one token to the next.
    pub fn forward_last_into(
        &mut self,
        ids: &[u32],
        index_pos: usize,
        device: &Device,
        logits: &mut Vec<f32>,
    ) -> candle_core::Result<()> {
        if let Self::Llama { model, cache } = self {
            cache.truncate(index_pos)?;
            return model.forward_into(ids, cache, Logits::Last, logits);
        }
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let output = match self {
            Self::Gemma3(model) => model.forward(&input, index_pos)?,
            Self::Phi3(model) => model.forward(&input, index_pos)?,
            Self::Qwen2(model) => match model.0.lock() {
                Ok(mut model) => model.forward(&input, index_pos)?,
                Err(_) => candle_core::bail!("the qwen2 model lock is poisoned"),
            },
            Self::Llama { .. } => unreachable!("handled above"),
        };
        logits.clear();
        logits.extend(output.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        Ok(())
    }

    /// Logits after each of `ids` (one row per token), starting at `index_pos`.
    pub fn forward_each(
        &mut self,
        ids: &[u32],
        index_pos: usize,
        device: &Device,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        if let Self::Llama { model, cache } = self {
            cache.truncate(index_pos)?;
            let mut logits = Vec::new();
            model.forward_into(ids, cache, Logits::All, &mut logits)?;
            let vocab = logits.len() / ids.len();
            return Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect());
        }
        ids.iter().enumerate().map(|(offset, id)| self.forward_last(&[*id], index_pos + offset, device)).collect()
    }

    /// Sets the arithmetic of this copy's later forward passes (see
    /// [`Precision`]); only this crate's llama path has a choice, the other
    /// architectures run candle's products.
    pub fn set_precision(&mut self, precision: Precision) {
        if let Self::Llama { cache, .. } = self {
            cache.set_precision(precision);
        }
    }

    /// The llama model, when this is one (the benchmark's roofline reads it).
    pub fn llama(&self) -> Option<&LlamaModel> {
        match self {
            Self::Llama { model, .. } => Some(model),
            _ => None,
        }
    }

    /// Whether a clone owns an independent copy of the KV cache.
    pub fn can_fork(&self) -> bool {
        !matches!(self, Self::Qwen2(_))
    }
}

/// What was read from the file besides the weights.
#[derive(Debug)]
pub struct LoadedGguf {
    /// The model.
    pub weights: ChatWeights,
    /// `general.architecture`.
    pub architecture: String,
    /// Usable context length: the model's, capped by the implementation.
    pub context_length: usize,
    /// All metadata (the tokenizer and template are built from it).
    pub metadata: std::collections::HashMap<String, Value>,
}

/// Reads, checks and loads a GGUF chat model onto `device`.
pub fn load_gguf(path: &Path, device: &Device) -> Result<LoadedGguf, ModelError> {
    let corrupt = |reason: String| ModelError::CorruptFile { file: path.to_path_buf(), reason };
    let file = File::open(path).map_err(|e| corrupt(format!("cannot open: {e}")))?;
    let file_len = file.metadata().map_err(|e| corrupt(e.to_string()))?.len();
    let mut reader = BufReader::new(file);
    let mut content = Content::read(&mut reader).map_err(|e| corrupt(format!("not a readable GGUF file: {e}")))?;
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or_else(|| corrupt("no `general.architecture` in metadata".to_owned()))?;
    if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(ModelError::UnsupportedArchitecture(architecture));
    }
    check_tensors(&content, file_len).map_err(|reason| match reason {
        TensorProblem::Truncated(reason) => corrupt(reason),
        TensorProblem::Unsupported(reason) => ModelError::UnsupportedFormat(reason),
    })?;
    let model_context = content
        .metadata
        .get(&format!("{architecture}.context_length"))
        .and_then(|v| v.to_u64().ok())
        .map(|v| v as usize);
    let metadata = content.metadata.clone();
    let load_error = |e: candle_core::Error| corrupt(format!("cannot load weights: {e}"));
    let (weights, context_length) = match architecture.as_str() {
        "llama" => {
            let model = LlamaModel::from_gguf(&content, &mut reader, device).map_err(load_error)?;
            let context = model.config().context_length;
            let weights = ChatWeights::Llama { model: Arc::new(model), cache: KvCache::default() };
            (weights, context)
        }
        "qwen2" => {
            let model = quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, device).map_err(load_error)?;
            (ChatWeights::Qwen2(SharedQwen2(Arc::new(Mutex::new(model)))), model_context.unwrap_or(DEFAULT_CONTEXT))
        }
        "phi3" => {
            let context = prepare_phi3(&mut content, path)?;
            let model =
                quantized_phi3::ModelWeights::from_gguf(false, content, &mut reader, device).map_err(load_error)?;
            (ChatWeights::Phi3(model), context.unwrap_or(DEFAULT_CONTEXT))
        }
        _ => {
            let window = gemma3_window(&content.metadata, path)?;
            let model = quantized_gemma3::ModelWeights::from_gguf(content, &mut reader, device).map_err(load_error)?;
            let context = model_context.unwrap_or(GEMMA3_MAX_POSITIONS).min(GEMMA3_MAX_POSITIONS);
            (ChatWeights::Gemma3(model), window.map_or(context, |window| context.min(window)))
        }
    };
    Ok(LoadedGguf { weights, architecture, context_length, metadata })
}

/// candle's phi3 rotates every dimension of each head with plain rotary
/// embeddings of base 10 000 (it reads neither `phi3.rope.freq_base` nor any
/// rope scaling), and sizes its rotary tables and its KV cache, allocated in
/// full on the first pass, by `phi3.context_length`. A file it would run with
/// other arithmetic is refused. A long-rope file (Phi-3.5-mini states 131072
/// positions, trained on 4096 and stretched by rope scaling that candle does
/// not implement) is limited to its `rope.scaling.original_context_length`,
/// written back as its `context_length` so that candle allocates no more than
/// that. Returns the usable context, when the file states one.
fn prepare_phi3(content: &mut Content, path: &Path) -> Result<Option<usize>, ModelError> {
    let metadata = &mut content.metadata;
    let number = |key: &str| metadata.get(key).and_then(|v| v.to_u64().ok());
    if let (Some(width), Some(heads)) = (number("phi3.embedding_length"), number("phi3.attention.head_count")) {
        if heads == 0 {
            let reason = "`phi3.attention.head_count` is 0".to_owned();
            return Err(ModelError::CorruptFile { file: path.to_path_buf(), reason });
        }
        let head_dim = width / heads;
        if let Some(rotated) = number("phi3.rope.dimension_count").filter(|&rotated| rotated != head_dim) {
            return Err(ModelError::UnsupportedFormat(format!(
                "phi3 file rotates {rotated} of the {head_dim} dimensions of each head (`phi3.rope.dimension_count`); \
                 candle's phi3 rotates whole heads only"
            )));
        }
    }
    if let Some(base) = metadata.get("phi3.rope.freq_base").and_then(|v| v.to_f32().ok()) {
        if base != PHI3_ROPE_BASE {
            return Err(ModelError::UnsupportedFormat(format!(
                "phi3 file has `phi3.rope.freq_base` {base}; candle's phi3 rotates with base {PHI3_ROPE_BASE} only"
            )));
        }
    }
    let rope_factors = ["rope_factors_short.weight", "rope_factors_long.weight"];
    if rope_factors.iter().any(|name| content.tensor_infos.contains_key(*name)) {
        tracing::warn!(
            file = %path.display(),
            "candle's phi3 ignores this file's long-rope factors; its output differs from llama.cpp's"
        );
    }
    let Some(context) = metadata.get("phi3.context_length").and_then(|v| v.to_u32().ok()) else { return Ok(None) };
    let usable = match number("phi3.rope.scaling.original_context_length") {
        // Below a u32, so the cast is lossless.
        Some(original) if original > 0 && original < u64::from(context) => original as u32,
        _ => context,
    };
    if usable < context {
        metadata.insert("phi3.context_length".to_owned(), Value::U32(usable));
    }
    Ok(Some(usable as usize))
}

/// candle's gemma3 masks the sliding window of its local layers when it
/// prefills a prompt but not when it decodes from its KV cache (and its
/// prefill window holds one position more than llama.cpp's and
/// transformers'), so it computes the file's model only while no two
/// positions are `attention.sliding_window` or more apart. Returns that
/// window when some layer is local, as a cap on the usable context.
fn gemma3_window(metadata: &HashMap<String, Value>, path: &Path) -> Result<Option<usize>, ModelError> {
    let number = |key: &str| metadata.get(key).and_then(|v| v.to_u32().ok()).map(|v| v as usize);
    // candle's rule: layer `i` is global when `(i + 1) % sliding_window_type == 0`.
    let every = number("gemma3.attention.sliding_window_type").unwrap_or(quantized_gemma3::DEFAULT_SLIDING_WINDOW_TYPE);
    if every == 0 {
        let reason = "`gemma3.attention.sliding_window_type` is 0".to_owned();
        return Err(ModelError::CorruptFile { file: path.to_path_buf(), reason });
    }
    let any_local = every > 1 && number("gemma3.block_count").is_some_and(|layers| layers > 0);
    Ok(number("gemma3.attention.sliding_window").filter(|_| any_local))
}

enum TensorProblem {
    Truncated(String),
    Unsupported(String),
}

/// Every tensor must use a runnable type and end inside the file.
fn check_tensors(content: &Content, file_len: u64) -> Result<(), TensorProblem> {
    for (name, info) in &content.tensor_infos {
        let runnable = matches!(
            info.ggml_dtype,
            GgmlDType::F32
                | GgmlDType::F16
                | GgmlDType::BF16
                | GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q8_0
                | GgmlDType::Q2K
                | GgmlDType::Q3K
                | GgmlDType::Q4K
                | GgmlDType::Q5K
                | GgmlDType::Q6K
        );
        if !runnable {
            return Err(TensorProblem::Unsupported(format!("tensor `{name}` has quantisation {:?}", info.ggml_dtype)));
        }
        let elements = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if elements % block != 0 {
            return Err(TensorProblem::Unsupported(format!(
                "tensor `{name}` has {elements} elements, not a multiple of the {:?} block size {block}",
                info.ggml_dtype
            )));
        }
        let bytes = (elements / block) as u64 * info.ggml_dtype.type_size() as u64;
        let end = content.tensor_data_offset.saturating_add(info.offset).saturating_add(bytes);
        if end > file_len {
            return Err(TensorProblem::Truncated(format!(
                "tensor `{name}` ends at byte {end} but the file has {file_len} bytes (truncated download?)"
            )));
        }
    }
    Ok(())
}
