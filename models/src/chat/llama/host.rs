//! The llama forward pass on the CPU without candle in the loop: the same
//! mathematics as the candle path in `mod.rs`, on plain f32 rows, with the
//! quantised products of `chat::ggml` run on [`crate::cpu::pool`], RMS norm,
//! RoPE, SwiGLU and attention over an f16 KV cache written here, and every
//! intermediate in a scratch arena that lives with the KV cache, so a decode
//! step allocates nothing (the cache itself grows a chunk of positions at a
//! time).
//!
//! Per layer the pool runs five jobs: Q, K and V fused into one, attention
//! (a chunk per head and block of query rows), the output projection with the residual added in
//! place, gate and up fused, and down with the residual.

use std::sync::Arc;

use half::f16;

use super::{LlamaConfig, Precision};
use crate::chat::ggml::{self, ActivationBlock, Activations, Matrix, Product, Rounding, Write, BLOCK};
use crate::cpu::pool::DisjointSlice;
use crate::cpu::{dense, vector, Level, Pool};

/// The widest head the attention kernel keeps on the stack.
pub(super) const MAX_HEAD_DIM: usize = 256;
/// Positions the KV cache grows by when full.
const CACHE_GROWTH: usize = 256;
/// Query rows per attention chunk: a prompt's attention is cut by head and
/// by rows, so no chunk runs long enough (hundreds of microseconds) for the
/// pool to take a helper still busy with it for one that lost its core.
const ATTEND_ROWS: usize = 16;

/// One block's weights.
#[derive(Debug)]
pub(super) struct HostBlock {
    pub attn_norm: Vec<f32>,
    pub wq: Arc<Matrix>,
    pub wk: Arc<Matrix>,
    pub wv: Arc<Matrix>,
    pub wo: Arc<Matrix>,
    pub ffn_norm: Vec<f32>,
    pub gate: Arc<Matrix>,
    pub up: Arc<Matrix>,
    pub down: Arc<Matrix>,
}

/// The whole model in the layout this path reads.
#[derive(Debug)]
pub(super) struct HostModel {
    pub config: LlamaConfig,
    pub embeddings: Arc<Matrix>,
    pub blocks: Vec<HostBlock>,
    pub output_norm: Vec<f32>,
    pub output: Arc<Matrix>,
    /// `[position][head_dim / 2]` pairs of (cos, sin), computed as ggml's
    /// `rope_cache_init` does: `theta` starts at the position and is
    /// multiplied by `base^(-2 / dims)` from one pair to the next.
    pub rope: Vec<(f32, f32)>,
}

/// Keys and values of one block, `[position][kv head][head_dim]`: in f16
/// as llama.cpp keeps them, or in f32 for [`Precision::Exact`] (a sequence
/// uses one pair or the other).
#[derive(Debug, Clone, Default)]
struct LayerCache {
    keys: Vec<f16>,
    values: Vec<f16>,
    exact_keys: Vec<f32>,
    exact_values: Vec<f32>,
}

/// This path's part of a `KvCache`: the keys and values, and a scratch
/// arena that a clone does not copy.
#[derive(Debug, Clone, Default)]
pub(super) struct HostCache {
    layers: Vec<LayerCache>,
    scratch: Scratch,
}

impl HostCache {
    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize, kv_width: usize) {
        for layer in &mut self.layers {
            layer.keys.truncate(len * kv_width);
            layer.values.truncate(len * kv_width);
            layer.exact_keys.truncate(len * kv_width);
            layer.exact_values.truncate(len * kv_width);
        }
    }
}

/// Every intermediate of a forward pass, sized for the longest run so far.
#[derive(Debug, Default)]
struct Scratch {
    /// The residual stream, `[tokens, width]`.
    x: Vec<f32>,
    /// Normalised rows.
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output, `[tokens, width]`.
    attention: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// Rounded activations for the next product.
    rounded: Rounded,
    /// Attention weights, `[head][positions]`.
    scores: Vec<f32>,
}

impl Clone for Scratch {
    /// A fork needs its own arena, not a copy of this one's contents.
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Activations rounded for a product's weights ([`ggml::Rounding`]),
/// sized for the widest product.
#[derive(Debug, Default)]
struct Rounded {
    blocks: Vec<ActivationBlock>,
    pairs: Vec<u32>,
}

/// Resizes without shrinking capacity (no allocation once warm).
fn sized<T: Clone + Default>(buffer: &mut Vec<T>, len: usize) -> &mut [T] {
    buffer.resize(len, T::default());
    &mut buffer[..len]
}

impl HostModel {
    /// `[context][head_dim / 2]` rotary pairs.
    pub fn rope_table(config: &LlamaConfig) -> Vec<(f32, f32)> {
        let half = config.rope_dim / 2;
        let theta_scale = config.rope_base.powf(-2.0 / config.rope_dim as f32);
        let mut table = Vec::with_capacity(config.context_length * half);
        for pos in 0..config.context_length {
            let mut theta = pos as f32;
            for _ in 0..half {
                table.push((theta.cos(), theta.sin()));
                theta *= theta_scale;
            }
        }
        table
    }

    /// Runs `tokens` at positions `start..`, appending to `cache`, and
    /// writes logits for the last position (`all == false`) or every
    /// position into `logits`. Token ids must be below the vocabulary size.
    pub fn forward(
        &self,
        tokens: &[u32],
        start: usize,
        cache: &mut HostCache,
        all: bool,
        precision: Precision,
        logits: &mut Vec<f32>,
    ) {
        let pool = crate::cpu::pool::global();
        let level = Level::detect();
        let LlamaConfig { n_head, n_kv_head, head_dim, rms_eps, .. } = self.config;
        let n = tokens.len();
        let width = n_head * head_dim;
        let kv_width = n_kv_head * head_dim;
        let ffn = self.blocks.first().map(|b| b.gate.rows()).unwrap_or(0);
        let total = start + n;
        if cache.layers.len() != self.blocks.len() {
            cache.layers = vec![LayerCache::default(); self.blocks.len()];
        }
        let HostCache { layers, scratch } = cache;
        let x = sized(&mut scratch.x, n * width);
        for (row, token) in x.chunks_exact_mut(width).zip(tokens) {
            self.embeddings.dequantize_row_into(*token as usize, row);
        }
        sized(&mut scratch.h, n * width);
        sized(&mut scratch.q, n * width);
        sized(&mut scratch.k, n * kv_width);
        sized(&mut scratch.v, n * kv_width);
        sized(&mut scratch.attention, n * width);
        sized(&mut scratch.gate, n * ffn);
        sized(&mut scratch.up, n * ffn);
        sized(&mut scratch.rounded.blocks, n * width.max(ffn) / BLOCK);
        sized(&mut scratch.rounded.pairs, n * width.max(ffn).div_ceil(2));
        sized(&mut scratch.scores, n_head * n.div_ceil(ATTEND_ROWS) * total);
        for (block, layer) in self.blocks.iter().zip(layers.iter_mut()) {
            let s = &mut *scratch;
            normalise(&s.x, &block.attn_norm, rms_eps, width, &mut s.h);
            let acts = &mut s.rounded;
            multiply(
                pool,
                level,
                precision,
                &s.h,
                acts,
                &mut [
                    Product { matrix: &block.wq, out: &mut s.q, write: Write::Assign },
                    Product { matrix: &block.wk, out: &mut s.k, write: Write::Assign },
                    Product { matrix: &block.wv, out: &mut s.v, write: Write::Assign },
                ],
            );
            self.rotate(level, &mut s.q, start, n_head);
            self.rotate(level, &mut s.k, start, n_kv_head);
            match precision {
                Precision::Quantised => {
                    append(&mut layer.keys, &s.k, kv_width);
                    append(&mut layer.values, &s.v, kv_width);
                    self.attend(pool, level, layer, start, n, &s.q, &mut s.scores, &mut s.attention);
                }
                Precision::Exact => {
                    layer.exact_keys.extend_from_slice(&s.k);
                    layer.exact_values.extend_from_slice(&s.v);
                    self.attend_exact(pool, level, layer, start, n, &s.q, &mut s.scores, &mut s.attention);
                }
            }
            let wo = &mut [Product { matrix: &block.wo, out: &mut s.x, write: Write::Add }];
            multiply(pool, level, precision, &s.attention, acts, wo);
            normalise(&s.x, &block.ffn_norm, rms_eps, width, &mut s.h);
            multiply(
                pool,
                level,
                precision,
                &s.h,
                acts,
                &mut [
                    Product { matrix: &block.gate, out: &mut s.gate, write: Write::Assign },
                    Product { matrix: &block.up, out: &mut s.up, write: Write::Assign },
                ],
            );
            vector::swiglu(level, &mut s.gate, &s.up);
            let down = &mut [Product { matrix: &block.down, out: &mut s.x, write: Write::Add }];
            multiply(pool, level, precision, &s.gate, acts, down);
        }
        let rows = if all { 0..n } else { n - 1..n };
        let out_rows = rows.len();
        let h = &mut scratch.h[..out_rows * width];
        normalise(&scratch.x[rows.start * width..rows.end * width], &self.output_norm, rms_eps, width, h);
        let acts = &mut scratch.rounded;
        logits.resize(out_rows * self.output.rows(), 0.0);
        let output = &mut [Product { matrix: &self.output, out: logits, write: Write::Assign }];
        multiply(pool, level, precision, h, acts, output);
    }

    /// Interleaved rotary embedding of every head of every row, in place,
    /// with the fused multiply-adds gcc contracts ggml's rope into.
    fn rotate(&self, level: Level, rows: &mut [f32], start: usize, heads: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if level >= Level::Avx2 {
                // SAFETY: `Level::Avx2` and above are only produced when the CPU has FMA.
                return unsafe { self.rotate_fma(rows, start, heads) };
            }
        }
        let _ = level;
        self.rotate_body(rows, start, heads);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn rotate_fma(&self, rows: &mut [f32], start: usize, heads: usize) {
        self.rotate_body(rows, start, heads);
    }

    #[inline(always)]
    fn rotate_body(&self, rows: &mut [f32], start: usize, heads: usize) {
        let head_dim = self.config.head_dim;
        let half = head_dim / 2;
        for (i, row) in rows.chunks_exact_mut(heads * head_dim).enumerate() {
            let table = &self.rope[(start + i) * half..(start + i + 1) * half];
            for head in row.chunks_exact_mut(head_dim) {
                for (pair, (cos, sin)) in head.chunks_exact_mut(2).zip(table) {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0.mul_add(*cos, -(x1 * sin));
                    pair[1] = x0.mul_add(*sin, x1 * cos);
                }
            }
        }
    }

    /// Causal attention of `n` query rows (positions `start..start + n`)
    /// over the cached keys and values ([`HostModel::per_query_row`]): scores
    /// `q . k` with `q` rounded to f16, scaled by `1 / sqrt(head_dim)`,
    /// softmax ([`vector::softmax_numerators`]), weights rounded to f16, then
    /// `sum(w * v)`. Both products add up in the order llama.cpp uses for
    /// this many rows ([`vector::Order`]): position `t` of the values goes to
    /// accumulator row `t % lanes`, and the rows are combined per output.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        pool: &Pool,
        level: Level,
        layer: &LayerCache,
        start: usize,
        n: usize,
        q: &[f32],
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let order = vector::Order::for_rows(n);
        self.per_query_row(pool, start, n, q, scores, out, |row| {
            let QueryRow { query, column, stride, scale, scores, out } = row;
            let (keys, values) = (&layer.keys[column..], &layer.values[column..]);
            let mut rounded = [0f32; MAX_HEAD_DIM];
            let rounded = &mut rounded[..query.len()];
            rounded.copy_from_slice(query);
            vector::round_to_f16(rounded);
            let max = vector::scores_f16(level, order, rounded, keys, stride, scale, scores);
            let sum = vector::softmax_numerators(level, scores, max);
            let inverse = (1.0 / sum) as f32;
            for score in scores.iter_mut() {
                *score = f16::from_f32(*score * inverse).to_f32();
            }
            vector::weighted_sum_f16(level, order, scores, values, stride, out);
        });
    }

    /// [`HostModel::attend`] in f32 throughout, over the f32 cache: no
    /// rounding of queries or weights to f16 ([`Precision::Exact`]).
    #[allow(clippy::too_many_arguments)]
    fn attend_exact(
        &self,
        pool: &Pool,
        level: Level,
        layer: &LayerCache,
        start: usize,
        n: usize,
        q: &[f32],
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        self.per_query_row(pool, start, n, q, scores, out, |row| {
            let QueryRow { query, column, stride, scale, scores, out } = row;
            let (keys, values) = (&layer.exact_keys[column..], &layer.exact_values[column..]);
            dense::attend_row(level, query, keys, values, stride, scores.len(), scale, scores, out);
        });
    }

    /// Runs `body` for every head and every one of the `n` query rows at
    /// positions `start..start + n` (`q` and `out` hold `n` rows of
    /// `n_head * head_dim`), on the pool: a chunk per head and block of
    /// [`ATTEND_ROWS`] rows, with its own row of `start + n` values of
    /// `scores` and that head's columns of those rows of `out`.
    #[allow(clippy::too_many_arguments)]
    fn per_query_row(
        &self,
        pool: &Pool,
        start: usize,
        n: usize,
        q: &[f32],
        scores: &mut [f32],
        out: &mut [f32],
        body: impl Fn(QueryRow<'_>) + Sync,
    ) {
        let LlamaConfig { n_head, n_kv_head, head_dim, .. } = self.config;
        let width = n_head * head_dim;
        let group = n_head / n_kv_head;
        let total = start + n;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (scores, out) = (DisjointSlice::new(scores), DisjointSlice::new(out));
        let blocks = n.div_ceil(ATTEND_ROWS);
        pool.run(n_head * blocks, &|chunk| {
            let (head, block) = (chunk / blocks, chunk % blocks);
            // SAFETY: every chunk has its own score row.
            let scores = unsafe { scores.piece(chunk * total..(chunk + 1) * total) };
            for i in block * ATTEND_ROWS..((block + 1) * ATTEND_ROWS).min(n) {
                let columns = i * width + head * head_dim..i * width + (head + 1) * head_dim;
                body(QueryRow {
                    query: &q[columns.clone()],
                    column: (head / group) * head_dim,
                    stride: n_kv_head * head_dim,
                    scale,
                    scores: &mut scores[..start + i + 1],
                    // SAFETY: this chunk owns this head's columns of its rows.
                    out: unsafe { out.piece(columns) },
                });
            }
        });
    }
}

/// One query row of one head, as [`HostModel::per_query_row`] hands it to
/// the attention bodies.
struct QueryRow<'a> {
    /// The head's query (`head_dim` values).
    query: &'a [f32],
    /// Where the head's KV head starts in a cache row.
    column: usize,
    /// Values per cache row (`n_kv_head * head_dim`).
    stride: usize,
    /// `1 / sqrt(head_dim)`.
    scale: f32,
    /// The row's scores: one per position it sees (`start + i + 1`).
    scores: &'a mut [f32],
    /// The head's columns of the row's output.
    out: &'a mut [f32],
}

/// Runs `products` on `input`: with [`Precision::Quantised`], rounded
/// first into the forms the products' weights take ([`ggml::Rounding`]);
/// with [`Precision::Exact`], in f32.
fn multiply(
    pool: &Pool,
    level: Level,
    precision: Precision,
    input: &[f32],
    rounded: &mut Rounded,
    products: &mut [Product<'_>],
) {
    let cols = products[0].matrix.cols();
    let rows = input.len() / cols.max(1);
    let needs = |form| products.iter().any(|p| p.matrix.rounding() == form);
    let (blocks_needed, pairs_needed) = (needs(Rounding::Blocks), needs(Rounding::Bf16));
    if precision == Precision::Exact || !(blocks_needed || pairs_needed) {
        return ggml::matmul(pool, level, Activations::Floats(input), products);
    }
    let blocks = &mut rounded.blocks[..if blocks_needed { input.len() / BLOCK } else { 0 }];
    let pairs = &mut rounded.pairs[..if pairs_needed { rows * cols.div_ceil(2) } else { 0 }];
    by_rows(pool, input, cols, blocks, ggml::quantize_rows);
    by_rows(pool, input, cols, pairs, |values, out| dense::round_to_bf16_pairs(values, cols, out));
    ggml::matmul(pool, level, Activations::Quantised { floats: input, blocks, pairs }, products);
}

/// `round(rows, out)` over every `cols`-wide row of `input` into `out`
/// (`out.len() / rows` items a row; nothing when `out` is empty), a
/// prompt's rows spread over the pool: rows are rounded independently, so
/// the result is the same.
fn by_rows<T: Send>(pool: &Pool, input: &[f32], cols: usize, out: &mut [T], round: impl Fn(&[f32], &mut [T]) + Sync) {
    const ROWS_PER_CHUNK: usize = 16;
    let rows = input.len() / cols.max(1);
    if out.is_empty() || rows == 0 {
        return;
    }
    if rows <= ROWS_PER_CHUNK {
        return round(input, out);
    }
    let per_row = out.len() / rows;
    let out = DisjointSlice::new(out);
    pool.run_ranges(rows, ROWS_PER_CHUNK, 1, &|start, end| {
        // SAFETY: ranges of rows are disjoint, so are their outputs.
        let piece = unsafe { out.piece(start * per_row..end * per_row) };
        round(&input[start * cols..end * cols], piece);
    });
}

/// RMS norm of every `width`-wide row of `x` into `out`.
fn normalise(x: &[f32], weight: &[f32], eps: f32, width: usize, out: &mut [f32]) {
    for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        vector::rms_norm(row, weight, eps, out);
    }
}

/// Appends rows to an f16 cache, growing it a chunk of positions at a time.
fn append(cache: &mut Vec<f16>, rows: &[f32], kv_width: usize) {
    let old = cache.len();
    if cache.capacity() < old + rows.len() {
        cache.reserve(rows.len().max(CACHE_GROWTH * kv_width));
    }
    cache.resize(old + rows.len(), f16::ZERO);
    vector::to_f16(rows, &mut cache[old..]);
}
