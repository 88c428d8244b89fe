//! A llama-family transformer over GGUF quantized weights, written for this
//! crate instead of using `candle_transformers::models::quantized_llama`
//! because the edge needs three things that one lacks:
//!
//! - numerics that follow llama.cpp on CPU, the reference the models are
//!   validated against: keys and values are kept in an f16 cache, and the
//!   query and attention weights are rounded to f16 before their matrix
//!   products, as ggml does when one operand of a product is f16;
//! - a KV cache outside the model, so a prefill can be forked or rolled back
//!   (scored choice evaluates every candidate from one prefill);
//! - rotary tables sized from the file's context length rather than a fixed
//!   4096 positions, and logits for every position when asked.
//!
//! On the CPU, when every product is one of `chat::ggml`'s formats, the pass
//! runs in `host` instead: the same mathematics without candle tensors,
//! allocation or candle's thread pool in the loop. The candle path remains
//! for GPUs and for files with other quantisations.

mod host;

use candle_core::quantized::gguf_file::Content;

use super::ggml::Linear;
use candle_core::{DType, Device, IndexOp, Module, Tensor};

/// Hyper-parameters read from `llama.*` metadata.
#[derive(Debug, Clone)]
pub struct LlamaConfig {
    /// Attention heads for queries.
    pub n_head: usize,
    /// Attention heads for keys and values (grouped-query attention).
    pub n_kv_head: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// RMS-norm epsilon.
    pub rms_eps: f32,
    /// Rotary base frequency.
    pub rope_base: f32,
    /// Rotary dimensions per head.
    pub rope_dim: usize,
    /// Positions the rotary tables cover (the model's context length).
    pub context_length: usize,
}

/// One transformer block.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The model's weights; immutable once loaded and shared between requests.
#[derive(Debug)]
pub struct LlamaModel {
    config: LlamaConfig,
    embeddings: Embeddings,
    blocks: Vec<Block>,
    output_norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    device: Device,
    /// The candle-free CPU path, when every product is computed by `ggml`.
    host: Option<host::HostModel>,
}

/// Keys and values of the positions processed so far, one pair per block,
/// shaped `[1, n_kv_head, len, head_dim]` in f16. Cloning is cheap (tensors
/// are reference-counted and never written in place), which is what makes
/// forking a prefill free.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// The candle path's tensors.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// The host path's f16 rows and scratch arena.
    host: host::HostCache,
    /// Positions held.
    len: usize,
    /// Width of one position's keys (kv heads times head width).
    kv_width: usize,
    /// The arithmetic of the host path's products for this sequence.
    precision: Precision,
}

/// How the host path multiplies activations by quantised weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Precision {
    /// Activations quantised to 8 bits per block, as llama.cpp does: the
    /// fast path, and the one whose greedy output matches llama.cpp's.
    #[default]
    Quantised,
    /// Activations kept in f32 against the weights dequantised to f32: the
    /// file's model without activation rounding (about half the prompt
    /// speed). Scored choice runs this way, because 8-bit activations move
    /// a candidate's log-probability by up to a few tenths.
    Exact,
}

impl KvCache {
    /// Sets the arithmetic of later forward passes on the host path (the
    /// candle path's products are candle's either way).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) -> candle_core::Result<()> {
        if len >= self.len {
            return Ok(());
        }
        self.host.truncate(len, self.kv_width);
        for layer in self.layers.iter_mut() {
            if let Some((k, v)) = layer.take() {
                if len > 0 {
                    *layer = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
                }
            }
        }
        self.len = len;
        Ok(())
    }
}

/// The token embedding table: kept as stored (quantised blocks, or f16
/// panels) when the ggml kernels handle the format (saving the f32 copy,
/// 113 MB for SmolLM2), dequantised otherwise.
#[derive(Debug)]
enum Embeddings {
    Host(std::sync::Arc<super::ggml::Matrix>),
    Dense(candle_nn::Embedding),
}

impl Embeddings {
    /// `[1, tokens, width]` embeddings.
    fn lookup(&self, tokens: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(table) => table.forward(&Tensor::new(tokens, device)?.unsqueeze(0)?),
            Self::Host(table) => {
                let mut values = Vec::new();
                for &token in tokens {
                    if token as usize >= table.rows() {
                        candle_core::bail!("token id {token} is outside the vocabulary of {}", table.rows());
                    }
                    let start = values.len();
                    values.resize(start + table.cols(), 0.0);
                    table.dequantize_row_into(token as usize, &mut values[start..]);
                }
                let width = table.cols();
                Tensor::from_vec(values, (1, tokens.len(), width), device)
            }
        }
    }
}

/// Which positions to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Every input position: `[len, vocab]`.
    All,
    /// Only the last input position: `[1, vocab]`.
    Last,
}

impl LlamaModel {
    /// Reads the weights named as llama.cpp names them; the output layer
    /// falls back to the token embeddings when the file ties them.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        content: &Content,
        reader: &mut R,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let get = |key: &str| {
            content
                .metadata
                .get(&format!("llama.{key}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("no `llama.{key}` in metadata")))
        };
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let n_kv_head = get("attention.head_count_kv").and_then(|v| v.to_u32()).map(|v| v as usize).unwrap_or(n_head);
        let embedding_length = get("embedding_length")?.to_u32()? as usize;
        if n_head == 0
            || n_kv_head == 0
            || !embedding_length.is_multiple_of(n_head)
            || !n_head.is_multiple_of(n_kv_head)
        {
            candle_core::bail!(
                "inconsistent head counts: {n_head} heads, {n_kv_head} kv heads, width {embedding_length}"
            );
        }
        let head_dim = embedding_length / n_head;
        let config = LlamaConfig {
            n_head,
            n_kv_head,
            head_dim,
            n_layer: get("block_count")?.to_u32()? as usize,
            rms_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()?,
            rope_base: get("rope.freq_base").and_then(|v| v.to_f32()).unwrap_or(10_000.0),
            rope_dim: get("rope.dimension_count").and_then(|v| v.to_u32()).map(|v| v as usize).unwrap_or(head_dim),
            context_length: get("context_length").and_then(|v| v.to_u32()).map(|v| v as usize).unwrap_or(4096),
        };
        if config.rope_dim != head_dim {
            candle_core::bail!("partial rotary embeddings ({} of {head_dim} dims) are not supported", config.rope_dim);
        }
        let mut tensor = |name: &str| content.tensor(reader, name, device);
        let token_embd = Linear::new(tensor("token_embd.weight")?)?;
        let embeddings = match &token_embd {
            Linear::Ggml(table) => Embeddings::Host(table.clone()),
            Linear::Candle(_) => Embeddings::Dense(candle_nn::Embedding::new(
                tensor("token_embd.weight")?.dequantize(device)?,
                embedding_length,
            )),
        };
        let output = match content.tensor_infos.contains_key("output.weight") {
            true => Linear::new(tensor("output.weight")?)?,
            false => token_embd,
        };
        let output_norm = tensor("output_norm.weight")?.dequantize(device)?;
        let mut blocks = Vec::with_capacity(config.n_layer);
        for layer in 0..config.n_layer {
            let mut weight = |suffix: &str| tensor(&format!("blk.{layer}.{suffix}.weight"));
            let attn_norm = weight("attn_norm")?.dequantize(device)?;
            let ffn_norm = weight("ffn_norm")?.dequantize(device)?;
            blocks.push(Block {
                attn_norm,
                wq: Linear::new(weight("attn_q")?)?,
                wk: Linear::new(weight("attn_k")?)?,
                wv: Linear::new(weight("attn_v")?)?,
                wo: Linear::new(weight("attn_output")?)?,
                ffn_norm,
                gate: Linear::new(weight("ffn_gate")?)?,
                up: Linear::new(weight("ffn_up")?)?,
                down: Linear::new(weight("ffn_down")?)?,
            });
        }
        let (cos, sin) = rotary_tables(&config, device)?;
        let host = host_model(&config, &embeddings, &blocks, &output_norm, &output)?;
        Ok(Self { config, embeddings, blocks, output, output_norm, cos, sin, device: device.clone(), host })
    }

    /// Whether forward passes run on the candle-free CPU path.
    pub fn runs_on_host(&self) -> bool {
        self.host.is_some()
    }

    /// Bytes of weights one decode step reads: every block's products and
    /// the output layer (the embedding row read per token is negligible).
    pub fn weight_bytes_per_token(&self) -> usize {
        let linear = |l: &Linear| l.host().map(|m| m.file_bytes()).unwrap_or(0);
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| [&b.wq, &b.wk, &b.wv, &b.wo, &b.gate, &b.up, &b.down].into_iter().map(linear).sum::<usize>())
            .sum();
        blocks + linear(&self.output)
    }

    /// [`LlamaModel::forward`] into a caller's buffer (reused across decode
    /// steps): `[positions, vocab]` logits, row after row.
    pub fn forward_into(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        logits: &mut Vec<f32>,
    ) -> candle_core::Result<()> {
        let Some(host) = &self.host else {
            let tensor = self.forward(tokens, cache, which)?;
            logits.clear();
            logits.extend(tensor.flatten_all()?.to_vec1::<f32>()?);
            return Ok(());
        };
        self.check_positions(tokens, cache)?;
        let vocab = self.embeddings_rows();
        if let Some(bad) = tokens.iter().find(|t| **t as usize >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        cache.kv_width = self.config.n_kv_head * self.config.head_dim;
        let precision = cache.precision;
        host.forward(tokens, cache.len, &mut cache.host, which == Logits::All, precision, logits);
        cache.len += tokens.len();
        Ok(())
    }

    fn embeddings_rows(&self) -> usize {
        match &self.embeddings {
            Embeddings::Host(table) => table.rows(),
            Embeddings::Dense(table) => table.embeddings().dims()[0],
        }
    }

    fn check_positions(&self, tokens: &[u32], cache: &KvCache) -> candle_core::Result<()> {
        if tokens.is_empty() {
            candle_core::bail!("no tokens to run");
        }
        if cache.len + tokens.len() > self.config.context_length {
            candle_core::bail!(
                "positions up to {} exceed the context length {}",
                cache.len + tokens.len(),
                self.config.context_length
            );
        }
        Ok(())
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Runs `tokens` at positions `cache.len()..`, appending to the cache,
    /// and returns f32 logits for the positions asked for.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> candle_core::Result<Tensor> {
        if self.host.is_some() {
            let mut logits = Vec::new();
            self.forward_into(tokens, cache, which, &mut logits)?;
            let rows = logits.len() / self.embeddings_rows().max(1);
            return Tensor::from_vec(logits, (rows, self.embeddings_rows()), &self.device);
        }
        let seq_len = tokens.len();
        let start = cache.len;
        self.check_positions(tokens, cache)?;
        if cache.layers.len() != self.blocks.len() {
            cache.layers = vec![None; self.blocks.len()];
        }
        let mut x = self.embeddings.lookup(tokens, &self.device)?;
        let cos = self.cos.narrow(0, start, seq_len)?;
        let sin = self.sin.narrow(0, start, seq_len)?;
        let mask = if seq_len > 1 { Some(causal_mask(seq_len, start, &self.device)?) } else { None };
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, self.config.rms_eps)?;
            let attention = self.attention(block, &h, slot, &cos, &sin, mask.as_ref())?;
            x = (x + attention)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, self.config.rms_eps)?;
            let gate = candle_nn::ops::silu(&block.gate.forward(&h)?)?;
            let ffn = block.down.forward(&(gate * block.up.forward(&h)?)?)?;
            x = (x + ffn)?;
        }
        cache.len = start + seq_len;
        let x = match which {
            Logits::All => x,
            Logits::Last => x.i((.., seq_len - 1.., ..))?,
        };
        let x = candle_nn::ops::rms_norm(&x, &self.output_norm, self.config.rms_eps)?;
        self.output.forward(&x)?.squeeze(0)?.to_dtype(DType::F32)
    }

    fn attention(
        &self,
        block: &Block,
        h: &Tensor,
        slot: &mut Option<(Tensor, Tensor)>,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let LlamaConfig { n_head, n_kv_head, head_dim, .. } = self.config;
        let (_, seq_len, width) = h.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((1, seq_len, n, head_dim))?.transpose(1, 2)?.contiguous();
        let q = heads(block.wq.forward(h)?, n_head)?;
        let k = heads(block.wk.forward(h)?, n_kv_head)?;
        let v = heads(block.wv.forward(h)?, n_kv_head)?;
        let q = candle_nn::rotary_emb::rope_i(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cos, sin)?;
        // The cache holds f16, as llama.cpp's does.
        let k = k.to_dtype(DType::F16)?;
        let v = v.to_dtype(DType::F16)?;
        let (k, v) = match slot.take() {
            Some((k_past, v_past)) => (Tensor::cat(&[&k_past, &k], 2)?, Tensor::cat(&[&v_past, &v], 2)?),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        let group = n_head / n_kv_head;
        let k = repeat_kv(&k.to_dtype(DType::F32)?, group)?;
        let v = repeat_kv(&v.to_dtype(DType::F32)?, group)?;
        // ggml converts the f32 operand of a product with an f16 one to f16.
        let q = q.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
        let scores = match mask {
            Some(mask) => scores.broadcast_add(mask)?,
            None => scores,
        };
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let weights = weights.to_dtype(DType::F16)?.to_dtype(DType::F32)?;
        let y = weights.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((1, seq_len, width))?;
        block.wo.forward(&y)
    }
}

/// The host path's view of the weights, when every product is computed by
/// `ggml` on the CPU (`Linear::Ggml` exists only there).
fn host_model(
    config: &LlamaConfig,
    embeddings: &Embeddings,
    blocks: &[Block],
    output_norm: &Tensor,
    output: &Linear,
) -> candle_core::Result<Option<host::HostModel>> {
    let Embeddings::Host(table) = embeddings else {
        return Ok(None);
    };
    if config.head_dim > host::MAX_HEAD_DIM || !config.head_dim.is_multiple_of(2) {
        return Ok(None);
    }
    let Some(output) = output.host() else {
        return Ok(None);
    };
    let width = config.n_head * config.head_dim;
    if output.cols() != width || table.cols() != width || !width.is_multiple_of(ggml_block()) {
        return Ok(None);
    }
    let mut host_blocks = Vec::with_capacity(blocks.len());
    for block in blocks {
        let linears = [&block.wq, &block.wk, &block.wv, &block.wo, &block.gate, &block.up, &block.down];
        let Some(matrices) = linears.map(|l| l.host().cloned()).into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(None);
        };
        let Ok::<[_; 7], _>([wq, wk, wv, wo, gate, up, down]) = matrices.try_into() else {
            return Ok(None);
        };
        let width = config.n_head * config.head_dim;
        let kv_width = config.n_kv_head * config.head_dim;
        let ffn = gate.rows();
        let shapes = [(&wq, width, width), (&wk, kv_width, width), (&wv, kv_width, width), (&wo, width, width)];
        let ffn_shapes = [(&gate, ffn, width), (&up, ffn, width), (&down, width, ffn)];
        if shapes.iter().chain(&ffn_shapes).any(|(m, rows, cols)| m.rows() != *rows || m.cols() != *cols)
            || !ffn.is_multiple_of(ggml_block())
        {
            return Ok(None);
        }
        host_blocks.push(host::HostBlock {
            attn_norm: block.attn_norm.to_dtype(DType::F32)?.to_vec1()?,
            wq,
            wk,
            wv,
            wo,
            ffn_norm: block.ffn_norm.to_dtype(DType::F32)?.to_vec1()?,
            gate,
            up,
            down,
        });
    }
    Ok(Some(host::HostModel {
        config: config.clone(),
        embeddings: table.clone(),
        blocks: host_blocks,
        output_norm: output_norm.to_dtype(DType::F32)?.to_vec1()?,
        output: output.clone(),
        rope: host::HostModel::rope_table(config),
    }))
}

fn ggml_block() -> usize {
    super::ggml::BLOCK
}

/// `[len, head_dim / 2]` cosine and sine tables for interleaved rotary
/// embeddings, computed as ggml does (angle = pos * base^(-2i/d)).
fn rotary_tables(config: &LlamaConfig, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = config.rope_dim / 2;
    let inv_freq: Vec<f32> =
        (0..half).map(|i| config.rope_base.powf(-2.0 * i as f32 / config.rope_dim as f32)).collect();
    let mut cos = Vec::with_capacity(config.context_length * half);
    let mut sin = Vec::with_capacity(config.context_length * half);
    for pos in 0..config.context_length {
        for freq in &inv_freq {
            let angle = pos as f32 * freq;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (config.context_length, half), device)?,
        Tensor::from_vec(sin, (config.context_length, half), device)?,
    ))
}

/// Additive mask `[seq_len, start + seq_len]`: 0 where a query may look, -inf after it.
fn causal_mask(seq_len: usize, start: usize, device: &Device) -> candle_core::Result<Tensor> {
    let total = start + seq_len;
    let values: Vec<f32> = (0..seq_len)
        .flat_map(|i| (0..total).map(move |j| if j > start + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (seq_len, total), device)
}

fn repeat_kv(x: &Tensor, group: usize) -> candle_core::Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (batch, n_kv, len, dim) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((batch, n_kv, group, len, dim))?.reshape((batch, n_kv * group, len, dim))
}
