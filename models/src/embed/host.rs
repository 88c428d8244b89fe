//! The BERT encoder on the CPU without candle in the loop: the mathematics
//! of candle's (and Hugging Face's) `BertModel`, on plain f32 rows, with the
//! products of [`crate::cpu::dense`] run on [`crate::cpu::pool`].
//!
//! A batch is packed, not padded: the token rows of every text sit one after
//! another, the linear layers run once over all of them, and attention runs
//! per text over its own rows, so no work is spent on padding and no mask is
//! needed. Per layer the pool runs six jobs: Q, K and V fused into one
//! product, attention (one chunk per text and head), the output projection
//! with the residual added, layer norm, the intermediate product with GELU
//! fused, and the output product with the residual, then layer norm again.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Tensor};
use candle_transformers::models::bert::{Config, HiddenAct};
use half::{bf16, f16};

use crate::cpu::dense::{self, Epilogue, PackedMatrix};
use crate::cpu::pool::DisjointSlice;
use crate::cpu::{Level, Pool};

/// Rows per layer-norm chunk.
const NORM_ROWS: usize = 32;

/// A layer norm's parameters.
#[derive(Debug)]
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// One encoder layer's weights.
#[derive(Debug)]
struct HostLayer {
    /// Query, key and value stacked: `[3 * hidden][hidden]`.
    qkv: PackedMatrix,
    output: PackedMatrix,
    attention_norm: Norm,
    intermediate: PackedMatrix,
    down: PackedMatrix,
    output_norm: Norm,
}

/// Every intermediate of a forward pass, sized for the largest batch so far.
#[derive(Debug, Default)]
struct Scratch {
    /// The residual stream, `[tokens][hidden]`.
    x: Vec<f32>,
    /// `[tokens][3 * hidden]`.
    qkv: Vec<f32>,
    /// Attention output, `[tokens][hidden]`.
    context: Vec<f32>,
    /// The stream after attention, `[tokens][hidden]`.
    y: Vec<f32>,
    /// `[tokens][intermediate]`.
    inner: Vec<f32>,
}

/// The whole encoder in the layout this path reads.
#[derive(Debug)]
pub(super) struct HostBert {
    hidden: usize,
    heads: usize,
    eps: f32,
    activation: HiddenAct,
    vocab: usize,
    positions: usize,
    /// `[vocab][hidden]`.
    word: Vec<f32>,
    /// `[positions][hidden]`.
    position: Vec<f32>,
    /// Token type 0's row (every text is one segment).
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<HostLayer>,
    scratch: Mutex<Scratch>,
}

/// Resizes without shrinking capacity.
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    &mut buffer[..len]
}

impl HostBert {
    /// Takes the encoder's weights out of a safetensors map, as candle's
    /// `BertModel::load` finds them (names with or without a `bert.` or
    /// `<model_type>.` prefix).
    pub fn load(tensors: &HashMap<String, Tensor>, config: &Config) -> Result<Self, String> {
        let word_name = "embeddings.word_embeddings.weight";
        let mut prefixes = vec![String::new(), "bert.".to_owned()];
        if let Some(model_type) = &config.model_type {
            prefixes.push(format!("{model_type}."));
        }
        let prefix = prefixes
            .into_iter()
            .find(|p| tensors.contains_key(&format!("{p}{word_name}")))
            .ok_or_else(|| format!("no tensor `{word_name}`"))?;
        let tensor = |name: &str, shape: &[usize]| -> Result<&Tensor, String> {
            let full = format!("{prefix}{name}");
            let tensor = tensors.get(&full).ok_or_else(|| format!("no tensor `{full}`"))?;
            if tensor.dims() != shape {
                return Err(format!("tensor `{full}` has shape {:?}, config.json says {shape:?}", tensor.dims()));
            }
            Ok(tensor)
        };
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
            let values =
                tensor(name, shape)?.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1());
            values.map_err(|e| format!("tensor `{prefix}{name}`: {e}"))
        };
        // Weights stay in the checkpoint's precision (f16 and bf16 panels
        // are widened as the kernel reads them); biases and norms are f32.
        let pack = |weights: &[&Tensor], bias: &[f32]| -> Result<PackedMatrix, String> {
            let rows = weights.iter().map(|w| w.dims()[0]).sum();
            let cols = weights[0].dims()[1];
            let dtype = weights[0].dtype();
            let same = weights.iter().all(|w| w.dtype() == dtype);
            let joined = Tensor::cat(weights, 0).and_then(|t| t.flatten_all());
            let packed = match (dtype, same) {
                (DType::F16, true) => {
                    joined.and_then(|t| t.to_vec1::<f16>()).map(|w| PackedMatrix::new(&w, rows, cols, Some(bias)))
                }
                (DType::BF16, true) => {
                    joined.and_then(|t| t.to_vec1::<bf16>()).map(|w| PackedMatrix::new(&w, rows, cols, Some(bias)))
                }
                _ => {
                    let widened: candle_core::Result<Vec<Tensor>> =
                        weights.iter().map(|w| w.to_dtype(DType::F32)).collect();
                    widened
                        .and_then(|w| Tensor::cat(&w, 0)?.flatten_all()?.to_vec1::<f32>())
                        .map(|w| PackedMatrix::new(&w, rows, cols, Some(bias)))
                }
            };
            packed.map_err(|e| format!("weights of {rows}x{cols}: {e}"))
        };
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        if config.num_attention_heads == 0 || hidden % config.num_attention_heads != 0 {
            return Err(format!("hidden size {hidden} is not a multiple of {} heads", config.num_attention_heads));
        }
        let norm = |name: &str| -> Result<Norm, String> {
            Ok(Norm {
                weight: get(&format!("{name}.weight"), &[hidden])?,
                bias: get(&format!("{name}.bias"), &[hidden])?,
            })
        };
        let linear = |name: &str, rows: usize, cols: usize| -> Result<PackedMatrix, String> {
            let weight = tensor(&format!("{name}.weight"), &[rows, cols])?;
            pack(&[weight], &get(&format!("{name}.bias"), &[rows])?)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{layer}");
            let mut weights = Vec::with_capacity(3);
            let mut bias = Vec::with_capacity(3 * hidden);
            for part in ["query", "key", "value"] {
                weights.push(tensor(&format!("{p}.attention.self.{part}.weight"), &[hidden, hidden])?);
                bias.extend(get(&format!("{p}.attention.self.{part}.bias"), &[hidden])?);
            }
            layers.push(HostLayer {
                qkv: pack(&weights, &bias)?,
                output: linear(&format!("{p}.attention.output.dense"), hidden, hidden)?,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&format!("{p}.intermediate.dense"), inner, hidden)?,
                down: linear(&format!("{p}.output.dense"), hidden, inner)?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let types = get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, hidden])?;
        Ok(Self {
            hidden,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            activation: config.hidden_act,
            vocab: config.vocab_size,
            positions: config.max_position_embeddings,
            word: get(word_name, &[config.vocab_size, hidden])?,
            position: get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, hidden])?,
            token_type: types.get(..hidden).ok_or("no token type embeddings")?.to_vec(),
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// One mean-pooled, L2-normalised vector per sequence of token ids.
    pub fn embed(&self, pool: &Pool, level: Level, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, String> {
        let h = self.hidden;
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for ids in sequences {
            if ids.len() > self.positions {
                return Err(format!("{} tokens, more than the model's {} positions", ids.len(), self.positions));
            }
            if let Some(id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(format!("token id {id} is outside the vocabulary of {}", self.vocab));
            }
            offsets.push(offsets.last().copied().unwrap_or(0) + ids.len());
        }
        let tokens = offsets.last().copied().unwrap_or(0);
        let mut guard = self.scratch.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Scratch { x, qkv, context, y, inner } = &mut *guard;
        let x = sized(x, tokens * h);
        let qkv = sized(qkv, tokens * 3 * h);
        let context = sized(context, tokens * h);
        let y = sized(y, tokens * h);
        let inner_width = self.layers.first().map(|l| l.intermediate.rows()).unwrap_or(0);
        let inner = sized(inner, tokens * inner_width);

        let mut rows = x.chunks_exact_mut(h);
        for ids in sequences {
            for (position, (&id, row)) in ids.iter().zip(&mut rows).enumerate() {
                let word = &self.word[id as usize * h..][..h];
                let place = &self.position[position * h..][..h];
                for (((out, w), p), t) in row.iter_mut().zip(word).zip(place).zip(&self.token_type) {
                    *out = w + t + p;
                }
            }
        }
        self.normalise(pool, level, x, &self.embedding_norm);
        let activation = match self.activation {
            HiddenAct::Gelu => Epilogue::Gelu,
            HiddenAct::GeluApproximate => Epilogue::GeluTanh,
            HiddenAct::Relu => Epilogue::Relu,
        };
        for layer in &self.layers {
            dense::matmul(pool, level, x, tokens, &layer.qkv, Epilogue::Bias, qkv);
            self.attention(pool, level, &offsets, qkv, context);
            dense::matmul(pool, level, context, tokens, &layer.output, Epilogue::Residual(x), y);
            self.normalise(pool, level, y, &layer.attention_norm);
            dense::matmul(pool, level, y, tokens, &layer.intermediate, activation, inner);
            dense::matmul(pool, level, inner, tokens, &layer.down, Epilogue::Residual(y), x);
            self.normalise(pool, level, x, &layer.output_norm);
        }
        Ok(offsets
            .windows(2)
            .map(|span| {
                let mut mean = vec![0f32; h];
                for row in x[span[0] * h..span[1] * h].chunks_exact(h) {
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                }
                // As sentence-transformers: the sum over at least 1e-9 tokens,
                // then divided by the norm, at least 1e-12.
                let count = ((span[1] - span[0]) as f32).max(1e-9);
                mean.iter_mut().for_each(|m| *m /= count);
                let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
                mean.iter_mut().for_each(|m| *m /= norm);
                mean
            })
            .collect())
    }

    /// Layer norm of every row of `rows` in place.
    fn normalise(&self, pool: &Pool, level: Level, rows: &mut [f32], norm: &Norm) {
        let h = self.hidden;
        let count = rows.len() / h;
        let rows = DisjointSlice::new(rows);
        pool.run_ranges(count, NORM_ROWS, 1, &|start, end| {
            // SAFETY: ranges are disjoint runs of whole rows.
            let rows = unsafe { rows.piece(start * h..end * h) };
            for row in rows.chunks_exact_mut(h) {
                dense::layer_norm(level, row, &norm.weight, &norm.bias, self.eps);
            }
        });
    }

    /// Scaled dot-product attention of each text over its own rows, one
    /// pool chunk per text and head.
    fn attention(&self, pool: &Pool, level: Level, offsets: &[usize], qkv: &[f32], context: &mut [f32]) {
        let (h, heads) = (self.hidden, self.heads);
        let texts = offsets.len() - 1;
        let context = DisjointSlice::new(context);
        pool.run(texts * heads, &|chunk| {
            let (text, head) = (chunk / heads, chunk % heads);
            let rows = offsets[text]..offsets[text + 1];
            let d = h / heads;
            let scale = 1.0 / (d as f32).sqrt();
            let mut scores = vec![0f32; rows.len()];
            for row in rows.clone() {
                // SAFETY: this chunk alone writes this head's columns of its text's rows.
                let out = unsafe { context.piece(row * h + head * d..row * h + (head + 1) * d) };
                let query = &qkv[row * 3 * h + head * d..][..d];
                let keys = &qkv[rows.start * 3 * h + h + head * d..];
                let values = &qkv[rows.start * 3 * h + 2 * h + head * d..];
                dense::attend_row(level, query, keys, values, 3 * h, rows.len(), scale, &mut scores, out);
            }
        });
    }
}
