//! Matrix products over ggml's legacy block quantisations (Q4_0, Q4_1,
//! Q8_0) with the arithmetic of ggml's x86 CPU kernels, so that logits agree
//! with llama.cpp's to float rounding rather than to quantisation noise:
//! activations are quantised per 32-value block exactly as ggml does it
//! (scale `amax / 127`, inverse `127 / amax`, round half to even, the Q8_1
//! block sum computed from the unrounded scale), and each dot product keeps
//! ggml's eight partial sums of four products, fused multiply-adds, and its
//! horizontal reduction order. Other quantisations use candle's kernels.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per block for every format here.
const BLOCK: usize = 32;

/// A weight matrix: ggml-exact for the legacy formats, candle otherwise.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Q4_0, Q4_1 or Q8_0 blocks, computed here.
    Ggml(std::sync::Arc<BlockMatrix>),
    /// Anything else, computed by candle.
    Candle(QMatMul),
}

/// The block formats computed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// 4-bit, scale only (18 bytes per block).
    Q4_0,
    /// 4-bit, scale and minimum (20 bytes per block).
    Q4_1,
    /// 8-bit, scale only (34 bytes per block).
    Q8_0,
}

impl BlockFormat {
    fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }
}

/// A `[rows, cols]` matrix of ggml blocks, row after row, split into block
/// scales, block minimums (Q4_1) and packed quants so the kernels read each
/// field with one load. f16 to f32 is exact, so widening the scales at load
/// changes no result.
#[derive(Debug)]
pub struct BlockMatrix {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    scales: Vec<f32>,
    mins: Vec<f32>,
    quants: Vec<u8>,
}

/// One quantised block of activations (Q8_0, or Q8_1 with `sum`).
#[derive(Debug, Clone, Copy)]
struct ActivationBlock {
    scale: f32,
    sum: f32,
    quants: [i8; BLOCK],
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
        match (format, tensor.shape().dims()) {
            (Some(format), &[rows, cols]) if cols % BLOCK == 0 && tensor.device().is_cpu() => {
                let data = tensor.data()?.into_owned();
                if data.len() != rows * cols / BLOCK * format.bytes() {
                    candle_core::bail!(
                        "tensor data has {} bytes, expected {}",
                        data.len(),
                        rows * cols / BLOCK * format.bytes()
                    );
                }
                Ok(Self::Ggml(std::sync::Arc::new(BlockMatrix::from_ggml(format, rows, cols, &data))))
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
}

impl BlockMatrix {
    fn from_ggml(format: BlockFormat, rows: usize, cols: usize, data: &[u8]) -> Self {
        let n_blocks = rows * cols / BLOCK;
        let quant_bytes = format.quant_bytes();
        let mut scales = Vec::with_capacity(n_blocks);
        let mut mins = Vec::new();
        let mut quants = Vec::with_capacity(n_blocks * quant_bytes);
        for block in data.chunks_exact(format.bytes()) {
            scales.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
            if format == BlockFormat::Q4_1 {
                mins.push(f16::from_le_bytes([block[2], block[3]]).to_f32());
            }
            quants.extend_from_slice(&block[format.bytes() - quant_bytes..]);
        }
        Self { format, rows, cols, scales, mins, quants }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `row` as f32, computed as ggml's `dequantize_row_*` does (an
    /// embedding lookup needs one row, so the table stays quantised).
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        let blocks = self.row(row);
        let mut out = Vec::with_capacity(self.cols);
        let quant_bytes = self.format.quant_bytes();
        for (idx, (scale, quants)) in blocks.scales.iter().zip(blocks.quants.chunks_exact(quant_bytes)).enumerate() {
            match self.format {
                BlockFormat::Q8_0 => out.extend(quants.iter().map(|q| *q as i8 as f32 * scale)),
                BlockFormat::Q4_0 => {
                    out.extend(quants.iter().map(|q| ((q & 0x0F) as i32 - 8) as f32 * scale));
                    out.extend(quants.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * scale));
                }
                BlockFormat::Q4_1 => {
                    let min = blocks.mins[idx];
                    out.extend(quants.iter().map(|q| (q & 0x0F) as f32 * scale + min));
                    out.extend(quants.iter().map(|q| (q >> 4) as f32 * scale + min));
                }
            }
        }
        out
    }

    /// The blocks of one row.
    fn row(&self, row: usize) -> RowBlocks<'_> {
        let per_row = self.cols / BLOCK;
        let range = row * per_row..(row + 1) * per_row;
        let quant_bytes = self.format.quant_bytes();
        RowBlocks {
            format: self.format,
            scales: &self.scales[range.clone()],
            mins: if self.mins.is_empty() { &[] } else { &self.mins[range.clone()] },
            quants: &self.quants[range.start * quant_bytes..range.end * quant_bytes],
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.cols {
            candle_core::bail!("matmul width mismatch: input {cols}, weights {}", self.cols);
        }
        let input = x.flatten_to(dims.len().saturating_sub(2))?.to_dtype(candle_core::DType::F32)?;
        let input = input.flatten_all()?.to_vec1::<f32>()?;
        let n_rows = input.len() / cols;
        let with_sum = self.format == BlockFormat::Q4_1;
        let activations: Vec<Vec<ActivationBlock>> =
            input.chunks(cols).map(|row| quantize_row(row, with_sum)).collect();
        let mut out = vec![0f32; n_rows * self.rows];
        // Parallel over bands of weight rows; every band sees every input row.
        const BAND: usize = 64;
        let bands: Vec<(usize, Vec<f32>)> = (0..self.rows.div_ceil(BAND))
            .into_par_iter()
            .map(|band| {
                let start = band * BAND;
                let end = (start + BAND).min(self.rows);
                let width = end - start;
                let mut values = vec![0f32; width * activations.len()];
                // Four input rows at a time share each unpacked weight block.
                let mut first = 0;
                while first + 4 <= activations.len() {
                    let group = [
                        &activations[first][..],
                        &activations[first + 1][..],
                        &activations[first + 2][..],
                        &activations[first + 3][..],
                    ];
                    for row in start..end {
                        for (k, value) in self.row(row).dot4(group).into_iter().enumerate() {
                            values[(first + k) * width + row - start] = value;
                        }
                    }
                    first += 4;
                }
                for (a, act) in activations.iter().enumerate().skip(first) {
                    for row in start..end {
                        values[a * width + row - start] = self.row(row).dot(act);
                    }
                }
                (start, values)
            })
            .collect();
        for (start, values) in bands {
            let width = (self.rows - start).min(BAND);
            for (i, chunk) in values.chunks(width).enumerate() {
                out[i * self.rows + start..i * self.rows + start + width].copy_from_slice(chunk);
            }
        }
        let mut shape = dims;
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Tensor::from_vec(out, shape, x.device())
    }
}

/// One row's blocks, split by field.
#[derive(Debug, Clone, Copy)]
struct RowBlocks<'a> {
    format: BlockFormat,
    scales: &'a [f32],
    mins: &'a [f32],
    quants: &'a [u8],
}

impl RowBlocks<'_> {
    fn dot(self, activations: &[ActivationBlock]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { dot_avx2(self, activations) };
            }
        }
        dot_portable(self, activations)
    }
}

impl RowBlocks<'_> {
    /// [`RowBlocks::dot`] against four activation rows at once; each result
    /// is bit-for-bit the single-row result (every pair keeps its own
    /// accumulators and operation order), only the weight unpacking is shared.
    fn dot4(self, activations: [&[ActivationBlock]; 4]) -> [f32; 4] {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { dot4_avx2(self, activations) };
            }
        }
        activations.map(|act| dot_portable(self, act))
    }
}

/// [`dot_avx2`] for four activation rows sharing each weight block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2(row: RowBlocks<'_>, activations: [&[ActivationBlock]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut min_sum = [0f32; 4];
    let low_mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let quant_bytes = row.format.quant_bytes();
    for (idx, (scale, quants)) in row.scales.iter().zip(row.quants.chunks_exact(quant_bytes)).enumerate() {
        let qx = match row.format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                // SAFETY: 16 bytes of packed nibbles; unaligned load.
                let packed = _mm_loadu_si128(quants.as_ptr() as *const __m128i);
                let unpacked = _mm256_insertf128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1);
                let qx = _mm256_and_si256(low_mask, unpacked);
                if row.format == BlockFormat::Q4_0 {
                    _mm256_sub_epi8(qx, _mm256_set1_epi8(8))
                } else {
                    qx
                }
            }
            // SAFETY: 32 weight quants; unaligned load.
            BlockFormat::Q8_0 => _mm256_loadu_si256(quants.as_ptr() as *const __m256i),
        };
        for k in 0..4 {
            let act = &activations[k][idx];
            // SAFETY: 32 activation quants; unaligned load.
            let qy = _mm256_loadu_si256(act.quants.as_ptr() as *const __m256i);
            let lanes = if row.format == BlockFormat::Q4_1 {
                min_sum[k] = row.mins[idx].mul_add(act.sum, min_sum[k]);
                _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones)
            } else {
                signed_lanes(qx, qy, ones)
            };
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(scale * act.scale), _mm256_cvtepi32_ps(lanes), acc[k]);
        }
    }
    let mut out = [0f32; 4];
    for k in 0..4 {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k]);
        out[k] = horizontal_sum(&lanes) + min_sum[k];
    }
    out
}

/// ggml's AVX2 kernels, instruction for instruction: nibbles unpacked to
/// bytes, `maddubs` / `madd` into eight lanes of four products, `fmadd` with
/// the combined block scale, `hsum_float_8`. Integer sums are exact, so this
/// returns exactly what [`dot_portable`] returns, only faster.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(row: RowBlocks<'_>, activations: &[ActivationBlock]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = _mm256_setzero_ps();
    let mut min_sum = 0f32;
    let low_mask = _mm256_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let quant_bytes = row.format.quant_bytes();
    let blocks = row.scales.iter().zip(row.quants.chunks_exact(quant_bytes)).zip(activations);
    match row.format {
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let with_min = row.format == BlockFormat::Q4_1;
            for (idx, ((scale, quants), act)) in blocks.enumerate() {
                // SAFETY: 16 bytes of packed nibbles and 32 activation quants; unaligned loads.
                let packed = _mm_loadu_si128(quants.as_ptr() as *const __m128i);
                let qy = _mm256_loadu_si256(act.quants.as_ptr() as *const __m256i);
                let unpacked = _mm256_insertf128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1);
                let qx = _mm256_and_si256(low_mask, unpacked);
                let lanes = if with_min {
                    min_sum = row.mins[idx].mul_add(act.sum, min_sum);
                    _mm256_madd_epi16(_mm256_maddubs_epi16(qx, qy), ones)
                } else {
                    signed_lanes(_mm256_sub_epi8(qx, _mm256_set1_epi8(8)), qy, ones)
                };
                acc = _mm256_fmadd_ps(_mm256_set1_ps(scale * act.scale), _mm256_cvtepi32_ps(lanes), acc);
            }
        }
        BlockFormat::Q8_0 => {
            for ((scale, quants), act) in blocks {
                // SAFETY: 32 weight quants and 32 activation quants; unaligned loads.
                let qx = _mm256_loadu_si256(quants.as_ptr() as *const __m256i);
                let qy = _mm256_loadu_si256(act.quants.as_ptr() as *const __m256i);
                let lanes = signed_lanes(qx, qy, ones);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(scale * act.scale), _mm256_cvtepi32_ps(lanes), acc);
            }
        }
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    horizontal_sum(&lanes) + min_sum
}

/// ggml's `mul_sum_i8_pairs` before the float conversion.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn signed_lanes(
    x: std::arch::x86_64::__m256i,
    y: std::arch::x86_64::__m256i,
    ones: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones)
}

/// ggml's `vec_dot_q4_0_q8_0` / `vec_dot_q4_1_q8_1` / `vec_dot_q8_0_q8_0` in
/// portable Rust: eight lanes of four products, `fma(d_w * d_a, lane, acc)`,
/// then `hsum_float_8`, plus `sum(m * s)` for Q4_1.
fn dot_portable(row: RowBlocks<'_>, activations: &[ActivationBlock]) -> f32 {
    let mut acc = [0f32; 8];
    let mut min_sum = 0f32;
    let quant_bytes = row.format.quant_bytes();
    let blocks = row.scales.iter().zip(row.quants.chunks_exact(quant_bytes)).zip(activations);
    for (idx, ((scale, quants), act)) in blocks.enumerate() {
        let mut values = [0i32; BLOCK];
        match row.format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let offset = if row.format == BlockFormat::Q4_0 { 8 } else { 0 };
                for j in 0..16 {
                    values[j] = (quants[j] & 0x0F) as i32 - offset;
                    values[j + 16] = (quants[j] >> 4) as i32 - offset;
                }
                if row.format == BlockFormat::Q4_1 {
                    min_sum = row.mins[idx].mul_add(act.sum, min_sum);
                }
            }
            BlockFormat::Q8_0 => {
                for (value, byte) in values.iter_mut().zip(quants) {
                    *value = *byte as i8 as i32;
                }
            }
        }
        let combined = scale * act.scale;
        for ((acc, weights), quants) in acc.iter_mut().zip(values.chunks_exact(4)).zip(act.quants.chunks_exact(4)) {
            let sum: i32 = weights.iter().zip(quants).map(|(w, q)| w * *q as i32).sum();
            *acc = combined.mul_add(sum as f32, *acc);
        }
    }
    horizontal_sum(&acc) + min_sum
}

/// Rounds to the nearest integer, ties to even, as `_mm256_round_ps` does;
/// exact for |x| < 2^22 (activation quants are within ±127). Adding and
/// removing 1.5 * 2^23 avoids a libm call in the hot loop.
#[inline(always)]
fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// ggml's `hsum_float_8`.
fn horizontal_sum(acc: &[f32; 8]) -> f32 {
    let r = [acc[4] + acc[0], acc[5] + acc[1], acc[6] + acc[2], acc[7] + acc[3]];
    let a = r[0] + r[2];
    let b = r[1] + r[3];
    a + b
}

/// ggml's x86 `quantize_row_q8_0` / `quantize_row_q8_1`.
fn quantize_row(row: &[f32], with_sum: bool) -> Vec<ActivationBlock> {
    row.chunks_exact(BLOCK)
        .map(|values| {
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max / 127.0;
            let inverse = if max != 0.0 { 127.0 / max } else { 0.0 };
            let mut quants = [0i8; BLOCK];
            let mut total = 0i32;
            for (q, v) in quants.iter_mut().zip(values) {
                let rounded = round_half_even(v * inverse) as i32;
                *q = rounded as i8;
                total += rounded;
            }
            let sum = if with_sum { f16::from_f32(d * total as f32).to_f32() } else { 0.0 };
            ActivationBlock { scale: f16::from_f32(d).to_f32(), sum, quants }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn matrix(format: GgmlDType) -> (QTensor, Tensor) {
        let values: Vec<f32> = (0..64 * 96).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.3).collect();
        let weights = Tensor::from_vec(values, (64, 96), &Device::Cpu).expect("tensor");
        let quantized = QTensor::quantize(&weights, format).expect("quantize");
        let dequantized = quantized.dequantize(&Device::Cpu).expect("dequantize");
        (quantized, dequantized)
    }

    #[test]
    fn simd_and_portable_kernels_agree_bit_for_bit_and_approximate_f32() {
        // Five rows: one group of four plus a single row.
        let input: Vec<f32> = (0..5 * 96).map(|i| ((i * 104729 % 997) as f32 / 498.5 - 1.0) * 2.0).collect();
        let x = Tensor::from_vec(input.clone(), (5, 96), &Device::Cpu).expect("input");
        for format in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (quantized, dequantized) = matrix(format);
            let Linear::Ggml(block_matrix) = Linear::new(quantized).expect("linear") else {
                panic!("{format:?} should use the ggml kernels");
            };
            let fast = block_matrix.forward(&x).expect("forward").to_vec2::<f32>().expect("vec");
            let table = dequantized.to_vec2::<f32>().expect("vec");
            for (row, expected) in table.iter().enumerate() {
                assert_eq!(&block_matrix.dequantize_row(row), expected, "{format:?} row {row}");
            }
            let exact = x.matmul(&dequantized.t().expect("t")).expect("matmul").to_vec2::<f32>().expect("vec");
            for (r, row) in input.chunks(96).enumerate() {
                let act = quantize_row(row, block_matrix.format == BlockFormat::Q4_1);
                for c in 0..block_matrix.rows {
                    let portable = dot_portable(block_matrix.row(c), &act);
                    assert_eq!(portable.to_bits(), fast[r][c].to_bits(), "{format:?} [{r}, {c}]");
                    assert!((fast[r][c] - exact[r][c]).abs() < 0.05 * (1.0 + exact[r][c].abs()), "{format:?}");
                }
            }
        }
    }

    #[test]
    fn activation_quantisation_rounds_half_to_even() {
        let mut row = vec![0f32; BLOCK];
        row[0] = 127.0;
        row[1] = 2.5;
        row[2] = -3.5;
        let block = &quantize_row(&row, true)[0];
        assert_eq!(&block.quants[..3], &[127, 2, -4]);
        for x in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.49, -126.51, 3.0] {
            assert_eq!(round_half_even(x), x.round_ties_even(), "{x}");
        }
        assert_eq!(block.scale, 1.0);
        assert_eq!(block.sum, 125.0);
    }
}
