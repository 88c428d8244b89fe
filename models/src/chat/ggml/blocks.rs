//! The block formats computed here (Q4_0, Q4_1, Q8_0): [`BlockMatrix`],
//! a GGUF matrix repacked at load into groups of four interleaved rows,
//! with its views by group and by row for the kernels and its
//! dequantisation (ggml's `dequantize_row_*`); and the activations' side,
//! ggml's per-block 8-bit quantisation ([`ActivationBlock`],
//! [`quantize_rows`]).

use half::f16;

use super::{BLOCK, GROUP};
use crate::cpu::Level;

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
    /// Bytes per block in the GGUF file.
    pub fn bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    pub(super) fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 => 16,
            Self::Q8_0 => 32,
        }
    }
}

/// A `[rows, cols]` matrix of ggml blocks, repacked at load for the
/// kernels: rows in groups of four (the last group padded with zero
/// blocks), and within a group block-major, so block `b` of the four rows
/// lies side by side; block scales, block minimums (Q4_1) and packed quants
/// in three arrays, each read front to back by a product (three streams the
/// hardware prefetcher follows, where row-major order gives it twelve).
/// f16 to f32 is exact, so widening the scales at load changes no result.
#[derive(Debug)]
pub struct BlockMatrix {
    pub(super) format: BlockFormat,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// `[group][block][4]` scales.
    pub(super) scales: Vec<f32>,
    /// `[group][block][4]` minimums (Q4_1), else empty.
    pub(super) mins: Vec<f32>,
    /// `[group][block][4][quant bytes]` packed quants.
    pub(super) quants: Vec<u8>,
}

/// One quantised block of activations (Q8_0, or Q8_1 with `sum`).
#[derive(Debug, Clone, Copy)]
pub struct ActivationBlock {
    /// The block's scale, rounded to f16 as ggml stores it.
    pub(super) scale: f32,
    /// `scale * sum(quants)` rounded to f16 (Q8_1; Q4_1 products need it).
    pub(super) sum: f32,
    /// The quantised values.
    pub(super) quants: [i8; BLOCK],
}

impl Default for ActivationBlock {
    fn default() -> Self {
        Self { scale: 0.0, sum: 0.0, quants: [0; BLOCK] }
    }
}

impl BlockMatrix {
    /// Repacks GGUF block bytes (`rows * cols / 32` blocks of `format`).
    pub fn from_ggml(format: BlockFormat, rows: usize, cols: usize, data: &[u8]) -> Self {
        let per_row = cols / BLOCK;
        let padded = rows.div_ceil(GROUP) * GROUP;
        let quant_bytes = format.quant_bytes();
        let mut scales = vec![0f32; padded * per_row];
        let mut mins = if format == BlockFormat::Q4_1 { vec![0f32; padded * per_row] } else { Vec::new() };
        let mut quants = vec![0u8; padded * per_row * quant_bytes];
        for (idx, block) in data.chunks_exact(format.bytes()).enumerate() {
            let (row, column) = (idx / per_row, idx % per_row);
            let slot = ((row / GROUP) * per_row + column) * GROUP + row % GROUP;
            scales[slot] = f16::from_le_bytes([block[0], block[1]]).to_f32();
            if format == BlockFormat::Q4_1 {
                mins[slot] = f16::from_le_bytes([block[2], block[3]]).to_f32();
            }
            quants[slot * quant_bytes..(slot + 1) * quant_bytes]
                .copy_from_slice(&block[format.bytes() - quant_bytes..]);
        }
        Self { format, rows, cols, scales, mins, quants }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Bytes of the weights as stored in the file (what one product reads).
    pub fn file_bytes(&self) -> usize {
        self.rows * self.cols / BLOCK * self.format.bytes()
    }

    /// Row `row` as f32, computed as ggml's `dequantize_row_*` does (an
    /// embedding lookup needs one row, so the table stays quantised).
    pub fn dequantize_row(&self, row: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.cols];
        self.dequantize_row_into(row, &mut out);
        out
    }

    /// [`BlockMatrix::dequantize_row`] into `out` (`cols` long).
    pub fn dequantize_row_into(&self, row: usize, out: &mut [f32]) {
        self.dequantize_body(row, out);
    }

    /// [`BlockMatrix::dequantize_row_into`] in the vector width `level`
    /// allows (the same values).
    pub(super) fn dequantize_row_level(&self, level: Level, row: usize, out: &mut [f32]) {
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2.
            Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { self.dequantize_avx2(row, out) },
            _ => self.dequantize_body(row, out),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn dequantize_avx2(&self, row: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let blocks = self.row(row);
        for (idx, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (scale, quants) = (blocks.scale(idx), blocks.quants(idx));
            let min = if self.format == BlockFormat::Q4_1 { blocks.min(idx) } else { 0.0 };
            // SAFETY: `quants` holds the block's bytes (16 for the 4-bit
            // formats, 32 for Q8_0) and `out` its 32 values.
            unsafe {
                // Eight values widened to f32 at a time; `scale * q + min`
                // rounded twice, as the portable body computes it.
                let finish = |q: __m128i, signed: bool, offset: f32| {
                    let wide = if signed { _mm256_cvtepi8_epi32(q) } else { _mm256_cvtepu8_epi32(q) };
                    let v = _mm256_sub_ps(_mm256_cvtepi32_ps(wide), _mm256_set1_ps(offset));
                    let v = _mm256_mul_ps(v, _mm256_set1_ps(scale));
                    if self.format == BlockFormat::Q4_1 {
                        _mm256_add_ps(v, _mm256_set1_ps(min))
                    } else {
                        v
                    }
                };
                let parts: [__m256; 4] = match self.format {
                    BlockFormat::Q8_0 => {
                        let q = quants.as_ptr();
                        std::array::from_fn(|i| finish(_mm_loadl_epi64(q.add(8 * i).cast()), true, 0.0))
                    }
                    BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                        let offset = if self.format == BlockFormat::Q4_0 { 8.0 } else { 0.0 };
                        let bytes = _mm_loadu_si128(quants.as_ptr().cast());
                        let nibble = _mm_set1_epi8(0x0F);
                        let low = _mm_and_si128(bytes, nibble);
                        let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);
                        [
                            finish(low, false, offset),
                            finish(_mm_srli_si128(low, 8), false, offset),
                            finish(high, false, offset),
                            finish(_mm_srli_si128(high, 8), false, offset),
                        ]
                    }
                };
                for (i, part) in parts.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *part);
                }
            }
        }
    }

    #[inline(always)]
    fn dequantize_body(&self, row: usize, out: &mut [f32]) {
        let blocks = self.row(row);
        // Fixed-size blocks, so the compiler vectorises each loop.
        for (idx, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            let Ok(out) = <&mut [f32; BLOCK]>::try_from(out) else { continue };
            let (scale, quants) = (blocks.scale(idx), blocks.quants(idx));
            match self.format {
                BlockFormat::Q8_0 => {
                    let Ok(quants) = <&[u8; BLOCK]>::try_from(quants) else { continue };
                    for i in 0..BLOCK {
                        out[i] = quants[i] as i8 as f32 * scale;
                    }
                }
                BlockFormat::Q4_0 => {
                    let Ok(quants) = <&[u8; BLOCK / 2]>::try_from(quants) else { continue };
                    for i in 0..BLOCK / 2 {
                        out[i] = ((quants[i] & 0x0F) as i32 - 8) as f32 * scale;
                        out[i + BLOCK / 2] = ((quants[i] >> 4) as i32 - 8) as f32 * scale;
                    }
                }
                BlockFormat::Q4_1 => {
                    let Ok(quants) = <&[u8; BLOCK / 2]>::try_from(quants) else { continue };
                    let min = blocks.min(idx);
                    for i in 0..BLOCK / 2 {
                        out[i] = (quants[i] & 0x0F) as f32 * scale + min;
                        out[i + BLOCK / 2] = (quants[i] >> 4) as f32 * scale + min;
                    }
                }
            }
        }
    }

    /// The four rows of group `group`.
    pub(super) fn group(&self, group: usize) -> GroupBlocks<'_> {
        let per_row = self.cols / BLOCK;
        let range = group * per_row * GROUP..(group + 1) * per_row * GROUP;
        let quant_bytes = self.format.quant_bytes();
        GroupBlocks {
            format: self.format,
            scales: &self.scales[range.clone()],
            mins: if self.mins.is_empty() { &[] } else { &self.mins[range.clone()] },
            quants: &self.quants[range.start * quant_bytes..range.end * quant_bytes],
        }
    }

    /// One row, as a lane of its group.
    pub(super) fn row(&self, row: usize) -> RowBlocks<'_> {
        RowBlocks { group: self.group(row / GROUP), lane: row % GROUP }
    }
}

/// Four interleaved rows' blocks, split by field (see [`BlockMatrix`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct GroupBlocks<'a> {
    pub(super) format: BlockFormat,
    pub(super) scales: &'a [f32],
    pub(super) mins: &'a [f32],
    pub(super) quants: &'a [u8],
}

/// One row of a group.
#[derive(Debug, Clone, Copy)]
pub(super) struct RowBlocks<'a> {
    pub(super) group: GroupBlocks<'a>,
    pub(super) lane: usize,
}

impl RowBlocks<'_> {
    pub(super) fn format(&self) -> BlockFormat {
        self.group.format
    }

    pub(super) fn blocks(&self) -> usize {
        self.group.scales.len() / GROUP
    }

    pub(super) fn scale(&self, block: usize) -> f32 {
        self.group.scales[block * GROUP + self.lane]
    }

    pub(super) fn min(&self, block: usize) -> f32 {
        self.group.mins[block * GROUP + self.lane]
    }

    pub(super) fn quants(&self, block: usize) -> &[u8] {
        let bytes = self.group.format.quant_bytes();
        &self.group.quants[(block * GROUP + self.lane) * bytes..][..bytes]
    }
}

/// Rounds to the nearest integer, ties to even, as `_mm256_round_ps` does;
/// exact for |x| < 2^22 (activation quants are within ±127). Adding and
/// removing 1.5 * 2^23 avoids a libm call in the hot loop.
#[inline(always)]
pub(super) fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// ggml's x86 `quantize_row_q8_1` over rows of `values` (a whole number of
/// blocks), into `out` (one block per 32 values). The quants and scale are
/// those of `quantize_row_q8_0` too; products with Q4_0 and Q8_0 weights
/// ignore the sum.
pub fn quantize_rows(values: &[f32], out: &mut [ActivationBlock]) {
    for (values, block) in values.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max / 127.0;
        let inverse = if max != 0.0 { 127.0 / max } else { 0.0 };
        let mut total = 0i32;
        for (q, v) in block.quants.iter_mut().zip(values) {
            let rounded = round_half_even(v * inverse) as i32;
            *q = rounded as i8;
            total += rounded;
        }
        block.sum = f16::from_f32(d * total as f32).to_f32();
        block.scale = f16::from_f32(d).to_f32();
    }
}
