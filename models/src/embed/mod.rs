//! The embedding backend: a BERT-family sentence embedder (weights in
//! safetensors, `config.json`, `tokenizer.json`). Token vectors are
//! mean-pooled and L2-normalised, which is what sentence-transformers does
//! for models such as all-MiniLM-L6-v2.
//!
//! Texts are tokenised, sorted by length and cut into batches of similar
//! length, and the vectors are put back in input order. On the CPU the
//! encoder is this crate's own forward pass ([`host`]), which packs a batch
//! without padding; on a GPU it is candle's `BertModel` on a padded batch
//! with an attention mask.

mod host;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use crate::cpu::{pool, Level};
use crate::error::ModelError;

/// The files an embedder needs.
#[derive(Debug, Clone, Copy)]
pub struct EmbedderFiles<'a> {
    /// `model.safetensors`.
    pub weights: &'a Path,
    /// `config.json` (BERT configuration).
    pub config: &'a Path,
    /// `tokenizer.json`.
    pub tokenizer: &'a Path,
}

/// Which forward pass runs the encoder.
enum Encoder {
    /// This crate's CPU path.
    Host(host::HostBert),
    /// candle's `BertModel` on the device.
    Candle { model: BertModel, device: Device, pad_id: u32 },
}

/// A loaded sentence embedder.
pub struct EmbeddingEngine {
    encoder: Encoder,
    /// Tokenizer with truncation set (batches are packed or padded here).
    tokenizer: Tokenizer,
    /// Width of the output vectors.
    dimensions: usize,
    /// Texts per forward pass.
    batch_size: usize,
}

impl std::fmt::Debug for EmbeddingEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingEngine")
            .field("dimensions", &self.dimensions)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl EmbeddingEngine {
    /// Loads the model; `max_tokens` caps each text's length (the model's
    /// position limit when `None`), `batch_size` texts run per forward pass.
    pub fn load(
        files: EmbedderFiles<'_>,
        device: &Device,
        max_tokens: Option<usize>,
        batch_size: usize,
    ) -> Result<Self, ModelError> {
        let corrupt = |file: &Path, reason: String| ModelError::CorruptFile { file: file.to_path_buf(), reason };
        let config_text = std::fs::read_to_string(files.config).map_err(|e| corrupt(files.config, e.to_string()))?;
        let config: Config =
            serde_json::from_str(&config_text).map_err(|e| corrupt(files.config, format!("not a BERT config: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(files.tokenizer)
            .map_err(|e| corrupt(files.tokenizer, format!("not a tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        let max_length = max_tokens.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..TruncationParams::default() }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let tensors = candle_core::safetensors::load(files.weights, device)
            .map_err(|e| corrupt(files.weights, format!("not a readable safetensors file: {e}")))?;
        let mismatch = |e: String| corrupt(files.weights, format!("weights do not match config.json: {e}"));
        let encoder = if device.is_cpu() {
            Encoder::Host(host::HostBert::load(&tensors, &config).map_err(mismatch)?)
        } else {
            let builder = VarBuilder::from_tensors(tensors, DType::F32, device);
            let model = BertModel::load(builder, &config).map_err(|e| mismatch(e.to_string()))?;
            Encoder::Candle { model, device: device.clone(), pad_id: config.pad_token_id as u32 }
        };
        Ok(Self { encoder, tokenizer, dimensions: config.hidden_size, batch_size: batch_size.max(1) })
    }

    /// Width of the output vectors.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// One unit-length vector per text, in input order. `cancelled` is
    /// polled between batches.
    pub fn embed(&self, texts: &[String], cancelled: &dyn Fn() -> bool) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(self.embed_counted(texts, cancelled)?.vectors)
    }

    /// [`EmbeddingEngine::embed`], with the number of tokens the model read
    /// (special tokens included, padding not; after truncation).
    pub fn embed_counted(&self, texts: &[String], cancelled: &dyn Fn() -> bool) -> Result<Embedded, ModelError> {
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let tokens = encodings.iter().map(|e| e.len() as u64).sum();
        // Longest first, as sentence-transformers batches: similar lengths
        // share a batch, so a padded batch wastes little.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let mut vectors = vec![Vec::new(); encodings.len()];
        for batch in order.chunks(self.batch_size) {
            if cancelled() {
                return Err(ModelError::Cancelled);
            }
            let batch_encodings: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            let batch_vectors = self.embed_batch(&batch_encodings)?;
            for (&i, vector) in batch.iter().zip(batch_vectors) {
                vectors[i] = vector;
            }
        }
        Ok(Embedded { vectors, tokens })
    }

    fn embed_batch(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, ModelError> {
        let (model, device, pad_id) = match &self.encoder {
            Encoder::Host(host) => {
                let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
                return host.embed(pool::global(), Level::detect(), &ids).map_err(ModelError::Tokenizer);
            }
            Encoder::Candle { model, device, pad_id } => (model, device, *pad_id),
        };
        let rows = encodings.len();
        let width = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![pad_id; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (row, encoding) in encodings.iter().enumerate() {
            ids[row * width..][..encoding.len()].copy_from_slice(encoding.get_ids());
            mask[row * width..][..encoding.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = model.forward(&ids, &type_ids, Some(&mask))?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
        let normalised = mean.broadcast_div(&norms)?;
        Ok(normalised.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// Vectors and the tokens it took to make them.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    /// One unit vector per text, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the model read.
    pub tokens: u64,
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm_a: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let norm_b: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm_a * norm_b).max(f32::MIN_POSITIVE)
}
