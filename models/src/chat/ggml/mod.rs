//! Matrix products over ggml's legacy block quantisations (Q4_0, Q4_1,
//! Q8_0) with the arithmetic of ggml's x86 CPU kernels, so that logits agree
//! with llama.cpp's to float rounding rather than to quantisation noise:
//! activations are quantised per 32-value block exactly as ggml does it
//! (scale `amax / 127`, inverse `127 / amax`, round half to even, the Q8_1
//! block sum computed from the unrounded scale), and each dot product keeps
//! ggml's eight partial sums of four products, fused multiply-adds, and its
//! horizontal reduction order. F32, F16 and BF16 weights are
//! [`dense::PackedMatrix`] panels in their own precision. BF16 weights
//! multiply activations rounded to bf16, as llama.cpp's do (`vdpbf16ps`
//! where the CPU has it); F32 and F16 weights multiply f32 activations
//! (llama.cpp rounds them to f16 for F16 weights; here they are not
//! rounded). With [`Activations::Floats`] every dense product takes the f32
//! activations. Other quantisations use candle's kernels.
//!
//! Weights are repacked at load into separate arrays of block scales, block
//! minimums and packed quants, so a kernel reads each field with one load.
//! Products run on [`crate::cpu::pool`], split into bands of weight rows;
//! the dot products themselves are in `kernels`, one body per
//! [`crate::cpu::Level`].
//!
//! # Layout
//! - `blocks`: the block formats, [`BlockMatrix`]'s repacked layout and its
//!   dequantisation, and the quantisation of activations ([`quantize_rows`]).
//! - `exact`: products against f32 activations (scored choice's
//!   arithmetic): dequantised panels for many rows, a fused
//!   dequantise-and-multiply kernel for a few.
//! - `kernels`: the block dot products, one body per dispatch level.
//! - `tests`: the kernels against a scalar reference, quantisation round trips.
//!
//! This file holds the products: [`Linear`] and [`Matrix`], the fused
//! product job ([`matmul`]) cut into pool chunks, and each chunk's
//! dispatch to the block kernels or to `dense`'s.

mod blocks;
mod exact;
mod kernels;
#[cfg(test)]
mod tests;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use half::{bf16, f16};

pub use blocks::{quantize_rows, ActivationBlock, BlockFormat, BlockMatrix};

use crate::cpu::{dense, Level, Pool};

/// Values per block for every format here.
pub const BLOCK: usize = 32;
/// Rows interleaved in the repacked layout (and computed together).
const GROUP: usize = 4;

/// Weight rows per band when one activation row is multiplied (a band of
/// 576-wide Q4_1 rows is 11 KB: small enough that a helper that loses its
/// core holds back little work).
const DECODE_BAND: usize = 32;
/// Weight rows per band when many activation rows are multiplied.
const PROMPT_BAND: usize = 16;
/// Chunks per thread the largest product of a job is cut into.
const CHUNKS_PER_THREAD: usize = 8;
/// Activation rows per chunk of a dense product over many rows.
const DENSE_ACTS: usize = 72;
/// Multiply-adds a chunk of a dense product over many rows aims at (about
/// 50 us on one core): long enough to repay claiming it, short enough that
/// the pool never mistakes a helper still busy with one for a helper that
/// lost its core (`cpu::pool`'s 400 us).
const DENSE_CHUNK_WORK: usize = 2 << 20;
/// The most products one fused job takes (Q, K, V).
const MAX_FUSED: usize = 4;

/// A weight matrix: computed here for the legacy block formats and the
/// float formats, by candle otherwise.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Q4_0, Q4_1, Q8_0, F32, F16 or BF16 on the CPU, computed here.
    Ggml(std::sync::Arc<Matrix>),
    /// Anything else, computed by candle.
    Candle(QMatMul),
}

/// A matrix the products here compute.
#[derive(Debug)]
pub enum Matrix {
    /// ggml blocks, llama.cpp's arithmetic.
    Blocks(BlockMatrix),
    /// F32, F16 or BF16 weights in `dense`'s panels.
    Dense(dense::PackedMatrix),
}

/// The activations every product of a job multiplies.
#[derive(Debug, Clone, Copy)]
pub enum Activations<'a> {
    /// f32 rows (`rows * cols` values) and the same rows rounded as
    /// llama.cpp rounds them for each weight type ([`Matrix::rounding`]):
    /// block weights multiply the rows quantised to 8 bits per block
    /// ([`quantize_rows`]), BF16 weights the rows rounded to bf16
    /// ([`dense::round_to_bf16_pairs`]), F32 and F16 weights the f32 rows.
    /// A form no product of the job uses may be left empty.
    Quantised {
        /// The rows.
        floats: &'a [f32],
        /// The rows' blocks.
        blocks: &'a [ActivationBlock],
        /// The rows' bf16 pairs.
        pairs: &'a [u32],
    },
    /// Kept in f32 (`rows * cols` values), against the weights dequantised
    /// to f32: the product of the file's weights without activation
    /// rounding, for scored choice.
    Floats(&'a [f32]),
}

impl Activations<'_> {
    fn floats(&self) -> &[f32] {
        match self {
            Self::Quantised { floats, .. } | Self::Floats(floats) => floats,
        }
    }
}

/// The rounded activations a matrix multiplies in a
/// [`Activations::Quantised`] job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// 8-bit blocks ([`quantize_rows`]).
    Blocks,
    /// bf16 pairs ([`dense::round_to_bf16_pairs`]).
    Bf16,
    /// None: the f32 rows.
    Floats,
}

/// What a product does with the value already in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `out += x @ w^T` (a residual connection folded into the product).
    Add,
    /// `out = x @ w^T`.
    Assign,
}

/// One product of a fused job: every product of a job shares its activations.
#[derive(Debug)]
pub struct Product<'a> {
    /// The weights.
    pub matrix: &'a Matrix,
    /// `[activation rows, matrix rows]`.
    pub out: &'a mut [f32],
    /// Assign or accumulate.
    pub write: Write,
}

impl Linear {
    /// Wraps a tensor read from GGUF.
    pub fn new(tensor: QTensor) -> candle_core::Result<Self> {
        let format = match tensor.dtype() {
            GgmlDType::Q4_0 => Some(BlockFormat::Q4_0),
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        };
        let dense = matches!(tensor.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        match (format, tensor.shape().dims()) {
            (Some(format), &[rows, cols]) if cols % BLOCK == 0 && tensor.device().is_cpu() => {
                let data = tensor.data()?;
                check_bytes(data.len(), rows * cols / BLOCK * format.bytes())?;
                let matrix = BlockMatrix::from_ggml(format, rows, cols, &data);
                Ok(Self::Ggml(std::sync::Arc::new(Matrix::Blocks(matrix))))
            }
            (None, &[rows, cols]) if dense && tensor.device().is_cpu() => {
                let data = tensor.data()?;
                let pairs = || data.chunks_exact(2).map(|b| [b[0], b[1]]);
                let matrix = match tensor.dtype() {
                    GgmlDType::F32 => {
                        check_bytes(data.len(), rows * cols * 4)?;
                        let values: Vec<f32> =
                            data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                        dense::PackedMatrix::new(&values, rows, cols, None)
                    }
                    GgmlDType::F16 => {
                        check_bytes(data.len(), rows * cols * 2)?;
                        let values: Vec<f16> = pairs().map(f16::from_le_bytes).collect();
                        dense::PackedMatrix::new(&values, rows, cols, None)
                    }
                    _ => {
                        check_bytes(data.len(), rows * cols * 2)?;
                        let values: Vec<bf16> = pairs().map(bf16::from_le_bytes).collect();
                        dense::PackedMatrix::new(&values, rows, cols, None)
                    }
                };
                Ok(Self::Ggml(std::sync::Arc::new(Matrix::Dense(matrix))))
            }
            _ => Ok(Self::Candle(QMatMul::from_qtensor(tensor)?)),
        }
    }

    /// `x @ self^T` for `x` of shape `[..., cols]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(matmul) => matmul.forward(x),
            Self::Ggml(matrix) => matrix.forward(x),
        }
    }

    /// The matrix, when this one is computed here.
    pub fn host(&self) -> Option<&std::sync::Arc<Matrix>> {
        match self {
            Self::Ggml(matrix) => Some(matrix),
            Self::Candle(_) => None,
        }
    }
}

fn check_bytes(actual: usize, expected: usize) -> candle_core::Result<()> {
    if actual != expected {
        candle_core::bail!("tensor data has {actual} bytes, expected {expected}");
    }
    Ok(())
}

impl Matrix {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        match self {
            Self::Blocks(matrix) => matrix.rows,
            Self::Dense(matrix) => matrix.rows(),
        }
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        match self {
            Self::Blocks(matrix) => matrix.cols,
            Self::Dense(matrix) => matrix.cols(),
        }
    }

    /// Bytes of weights one product reads.
    pub fn file_bytes(&self) -> usize {
        match self {
            Self::Blocks(matrix) => matrix.file_bytes(),
            Self::Dense(matrix) => matrix.weight_bytes(),
        }
    }

    /// Row `row` as f32 into `out` (`cols` long): an embedding lookup.
    pub fn dequantize_row_into(&self, row: usize, out: &mut [f32]) {
        match self {
            Self::Blocks(matrix) => matrix.dequantize_row_into(row, out),
            Self::Dense(matrix) => matrix.row_into(row, out),
        }
    }

    /// What this matrix multiplies in an [`Activations::Quantised`] job.
    pub fn rounding(&self) -> Rounding {
        match self {
            Self::Blocks(_) => Rounding::Blocks,
            Self::Dense(matrix) if matrix.kind() == dense::Kind::BF16 => Rounding::Bf16,
            Self::Dense(_) => Rounding::Floats,
        }
    }

    /// How a product with `n_acts` activation rows is cut into pool
    /// chunks, given the job's band of weight rows.
    fn cut(&self, band: usize, n_acts: usize, exact: bool) -> Cut {
        let (rows, acts) = match self {
            // The block kernels tile activations themselves: a chunk takes them all.
            Self::Blocks(_) if !exact => (band.next_multiple_of(GROUP), n_acts),
            // Exact products dequantise the band's rows in every chunk, a
            // small cost beside the products of up to DENSE_ACTS rows, and
            // pack them into panels: whole panels, or the last panel's
            // padding columns are multiplied too.
            Self::Blocks(_) if n_acts > exact::UNPACKED => {
                (band.next_multiple_of(dense::PANEL), n_acts.min(DENSE_ACTS))
            }
            Self::Blocks(_) => (band.next_multiple_of(GROUP), n_acts),
            Self::Dense(_) if n_acts == 1 => (band.next_multiple_of(dense::PANEL), 1),
            // Many rows: a few panels by a block of activation rows, sized by work.
            Self::Dense(matrix) => {
                let acts = n_acts.min(DENSE_ACTS);
                let panels = (DENSE_CHUNK_WORK / (acts * dense::PANEL * matrix.cols().max(1))).max(1);
                (panels * dense::PANEL, acts)
            }
        };
        Cut { rows, acts, bands: self.rows().div_ceil(rows), blocks: n_acts.div_ceil(acts.max(1)) }
    }

    /// Rows `rows` (starting on a group of interleaved rows, or a panel) of
    /// the product with activation rows `acts` (all of them for block
    /// matrices with quantised activations; see [`Matrix::cut`]).
    fn band(
        &self,
        level: Level,
        activations: Activations<'_>,
        rows: std::ops::Range<usize>,
        acts: std::ops::Range<usize>,
        out: OutBand<'_>,
    ) {
        match (self, activations) {
            (Self::Blocks(matrix), Activations::Quantised { blocks, .. }) => {
                matrix.band(level, blocks, rows.start / GROUP..rows.end.div_ceil(GROUP), out)
            }
            (Self::Blocks(matrix), Activations::Floats(values)) => {
                let values = &values[acts.start * matrix.cols..acts.end * matrix.cols];
                matrix.band_exact(
                    level,
                    values,
                    rows.start / GROUP..rows.end.div_ceil(GROUP),
                    out.skip_acts(acts.start),
                )
            }
            (Self::Dense(matrix), activations) => {
                let panels = rows.start / dense::PANEL..rows.end.div_ceil(dense::PANEL);
                let start = match out.write {
                    Write::Assign => dense::Start::Bias,
                    Write::Add => dense::Start::Output,
                };
                let (ptr, width) = (out.ptr, out.width);
                // SAFETY: `out` has a row of `width` columns per activation
                // row (checked in `matmul`, as are the pairs), and this
                // chunk's rows and columns are its own.
                unsafe {
                    match activations {
                        Activations::Quantised { pairs, .. } if self.rounding() == Rounding::Bf16 => {
                            dense::products_bf16(level, pairs, matrix, acts, panels, ptr, width, start)
                        }
                        _ => dense::products(level, activations.floats(), matrix, acts, panels, ptr, width, start),
                    }
                }
            }
        }
    }

    /// `x @ self^T` through candle tensors (the candle forward path).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.cols() {
            candle_core::bail!("matmul width mismatch: input {cols}, weights {}", self.cols());
        }
        let input = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let n_rows = input.len() / cols.max(1);
        let mut out = vec![0f32; n_rows * self.rows()];
        let product = &mut [Product { matrix: self, out: &mut out, write: Write::Assign }];
        let (pool, level) = (crate::cpu::pool::global(), Level::detect());
        let (mut blocks, mut pairs) = (Vec::new(), Vec::new());
        match self.rounding() {
            Rounding::Blocks => {
                blocks.resize(input.len() / BLOCK, ActivationBlock::default());
                quantize_rows(&input, &mut blocks);
            }
            Rounding::Bf16 => {
                pairs.resize(n_rows * cols.div_ceil(2), 0);
                dense::round_to_bf16_pairs(&input, cols, &mut pairs);
            }
            Rounding::Floats => {}
        }
        matmul(pool, level, Activations::Quantised { floats: &input, blocks: &blocks, pairs: &pairs }, product);
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.rows();
        }
        Tensor::from_vec(out, shape, x.device())
    }
}

impl BlockMatrix {
    /// Groups `groups` against every activation row, written to
    /// `out[a * rows + r]` for the real (unpadded) rows.
    fn band(&self, level: Level, activations: &[ActivationBlock], groups: std::ops::Range<usize>, out: OutBand<'_>) {
        let per_row = self.cols / BLOCK;
        let n_acts = activations.len() / per_row;
        let act = |a: usize| &activations[a * per_row..(a + 1) * per_row];
        for group in groups {
            let blocks = self.group(group);
            let rows = (group * GROUP..(group + 1) * GROUP).take_while(|r| *r < self.rows);
            let mut first = 0;
            // Tiles of four rows by several activation rows share every load.
            while first + kernels::TILE_ACTS <= n_acts {
                let tile =
                    kernels::dot_tile::<{ kernels::TILE_ACTS }>(level, blocks, std::array::from_fn(|k| act(first + k)));
                for (a, values) in tile.iter().enumerate() {
                    for (row, value) in rows.clone().zip(values) {
                        out.write(first + a, row, *value);
                    }
                }
                first += kernels::TILE_ACTS;
            }
            for a in first..n_acts {
                let values = kernels::dot_rows4(level, blocks, act(a));
                for (row, value) in rows.clone().zip(&values) {
                    out.write(a, row, *value);
                }
            }
        }
    }
}

/// Runs every product of `products` against the same activations as one
/// pool job, so a layer's Q, K and V (or gate and up) cost one
/// synchronisation. Every matrix must have the activations' width.
pub fn matmul(pool: &Pool, level: Level, activations: Activations<'_>, products: &mut [Product<'_>]) {
    let Some(first) = products.first() else {
        return;
    };
    let cols = first.matrix.cols();
    let n_acts = activations.floats().len() / cols.max(1);
    if let Activations::Quantised { blocks, pairs, .. } = activations {
        for product in products.iter() {
            match product.matrix.rounding() {
                Rounding::Blocks => {
                    assert_eq!(blocks.len() * BLOCK, n_acts * cols, "one activation block per 32 values")
                }
                Rounding::Bf16 => assert_eq!(pairs.len(), n_acts * cols.div_ceil(2), "one bf16 pair per 2 values"),
                Rounding::Floats => {}
            }
        }
    }
    // Bands of at least the minimum, and at most about CHUNKS_PER_THREAD per
    // thread for the largest matrix (every claimed chunk is an atomic
    // operation on a line both cores write), rounded up to whole groups or
    // panels.
    let largest = products.iter().map(|p| p.matrix.rows()).max().unwrap_or(0);
    let minimum = if n_acts == 1 { DECODE_BAND } else { PROMPT_BAND };
    let band = minimum.max(largest / (pool.threads() * CHUNKS_PER_THREAD));
    // Chunk boundaries: product p owns chunks starts[p]..starts[p + 1].
    let mut starts = [0usize; MAX_FUSED + 1];
    assert!(products.len() <= MAX_FUSED, "at most {MAX_FUSED} fused products");
    let mut total = 0;
    let mut targets: [Option<(&Matrix, OutBand<'_>, Cut)>; MAX_FUSED] = [None; MAX_FUSED];
    for (p, product) in products.iter_mut().enumerate() {
        assert_eq!(product.matrix.cols(), cols, "fused products must share a width");
        assert_eq!(product.out.len(), n_acts * product.matrix.rows(), "output size");
        let cut = product.matrix.cut(band, n_acts, matches!(activations, Activations::Floats(_)));
        starts[p] = total;
        total += cut.bands * cut.blocks;
        let width = product.matrix.rows();
        let out = OutBand { ptr: product.out.as_mut_ptr(), width, write: product.write, _out: Default::default() };
        targets[p] = Some((product.matrix, out, cut));
    }
    let starts = &mut starts[..=products.len()];
    starts[products.len()] = total;
    pool.run(total, &|chunk| {
        let p = starts.partition_point(|s| *s <= chunk) - 1;
        let Some((matrix, out, cut)) = targets[p] else {
            return;
        };
        let (band, block) = ((chunk - starts[p]) / cut.blocks, (chunk - starts[p]) % cut.blocks);
        let rows = band * cut.rows..((band + 1) * cut.rows).min(matrix.rows());
        let acts = block * cut.acts..((block + 1) * cut.acts).min(n_acts);
        matrix.band(level, activations, rows, acts, out);
    });
}

/// How one product of a job is cut into chunks: bands of `rows` weight
/// rows by blocks of `acts` activation rows.
#[derive(Debug, Clone, Copy)]
struct Cut {
    rows: usize,
    acts: usize,
    bands: usize,
    blocks: usize,
}

/// A product's output as bands see it: each band writes only its own
/// columns of every activation row, so bands never overlap.
#[derive(Debug, Clone, Copy)]
struct OutBand<'a> {
    ptr: *mut f32,
    width: usize,
    write: Write,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: bands write disjoint elements (see `OutBand`).
unsafe impl Sync for OutBand<'_> {}
// SAFETY: as above.
unsafe impl Send for OutBand<'_> {}

impl OutBand<'_> {
    /// The same output seen from activation row `first` on.
    fn skip_acts(self, first: usize) -> Self {
        // SAFETY: `first` is at most the activation rows `matmul` checked
        // the output against.
        Self { ptr: unsafe { self.ptr.add(first * self.width) }, ..self }
    }

    #[inline(always)]
    fn write(self, act: usize, row: usize, value: f32) {
        // SAFETY: `act < n_acts` and `row < width`, checked against the
        // output length in `matmul`; each element belongs to one band.
        unsafe {
            let slot = self.ptr.add(act * self.width + row);
            match self.write {
                Write::Assign => *slot = value,
                Write::Add => *slot += value,
            }
        }
    }
}
