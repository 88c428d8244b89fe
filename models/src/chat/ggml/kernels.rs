//! The block dot products, one body per dispatch level, all returning the
//! same bits as [`dot_portable`]: ggml's eight lanes of four integer
//! products, `fma(d_w * d_a, lane, acc)` per block, `hsum_float_8`, plus
//! `sum(m * s)` for Q4_1. Integer lane sums are exact, so AVX2's
//! `maddubs`/`madd` pair and AVX-512 VNNI's `dpbusd` give identical lanes.
//!
//! Two shapes: [`dot_rows4`] (four weight rows against one activation row,
//! the decode shape: the activation block is loaded once, four independent
//! accumulator chains hide the FMA latency) and [`dot_acts4`] (one weight
//! row against four activation rows, the prompt shape: each weight block is
//! unpacked once).

use super::{ActivationBlock, BlockFormat, RowBlocks, BLOCK};
use crate::cpu::Level;

/// `row . activations`, dispatched by `level`.
pub(super) fn dot(level: Level, row: RowBlocks<'_>, activations: &[ActivationBlock]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx2 {
            let rows = [row; 4];
            // SAFETY: `Level::Avx2` is only produced when the CPU has AVX2 and FMA.
            return unsafe { avx2::dot_rows(row.format, &rows[..1], activations) }[0];
        }
    }
    let _ = level;
    dot_portable(row, activations)
}

/// Four weight rows against one activation row.
pub(super) fn dot_rows4(level: Level, rows: [RowBlocks<'_>; 4], activations: &[ActivationBlock]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        let format = rows[0].format;
        if level >= Level::Avx512Vnni {
            // SAFETY: `Level::Avx512Vnni` is only produced when the CPU has AVX-512 F/BW/VL and VNNI.
            return unsafe { vnni::dot_rows(format, &rows, activations) };
        }
        if level >= Level::Avx2 {
            // SAFETY: as in `dot`.
            return unsafe { avx2::dot_rows(format, &rows, activations) };
        }
    }
    let _ = level;
    rows.map(|row| dot_portable(row, activations))
}

/// One weight row against four activation rows.
pub(super) fn dot_acts4(level: Level, row: RowBlocks<'_>, activations: [&[ActivationBlock]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx512Vnni {
            // SAFETY: as in `dot_rows4`.
            return unsafe { vnni::dot_acts4(row, activations) };
        }
        if level >= Level::Avx2 {
            // SAFETY: as in `dot`.
            return unsafe { avx2::dot_acts4(row, activations) };
        }
    }
    let _ = level;
    activations.map(|act| dot_portable(row, act))
}

/// ggml's `vec_dot_q4_0_q8_0` / `vec_dot_q4_1_q8_1` / `vec_dot_q8_0_q8_0` in
/// portable Rust.
pub(super) fn dot_portable(row: RowBlocks<'_>, activations: &[ActivationBlock]) -> f32 {
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

/// ggml's `hsum_float_8`.
pub(super) fn horizontal_sum(acc: &[f32; 8]) -> f32 {
    let r = [acc[4] + acc[0], acc[5] + acc[1], acc[6] + acc[2], acc[7] + acc[3]];
    let a = r[0] + r[2];
    let b = r[1] + r[3];
    a + b
}

/// The SIMD bodies, written once and compiled per level: `$features` is the
/// target feature list, `$unsigned` computes eight lanes of four
/// unsigned-by-signed byte products, `$signed` the signed-by-signed ones.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernels {
    ($name:ident, $features:literal, $unsigned:ident, $signed:ident) => {
        pub(super) mod $name {
            use std::arch::x86_64::*;

            use super::super::{ActivationBlock, BlockFormat, RowBlocks};
            use super::lanes::{$signed as signed_lanes, $unsigned as unsigned_lanes};
            use super::{horizontal_sum, lanes::unpack};

            /// `rows.len()` (at most four) weight rows against one activation row.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn dot_rows(
                format: BlockFormat,
                rows: &[RowBlocks<'_>],
                activations: &[ActivationBlock],
            ) -> [f32; 4] {
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut min_sum = [0f32; 4];
                let n = rows.len().min(4);
                let quant_bytes = format.quant_bytes();
                for (idx, act) in activations.iter().enumerate() {
                    // SAFETY: 32 activation quants; unaligned load.
                    let qy = _mm256_loadu_si256(act.quants.as_ptr() as *const __m256i);
                    for k in 0..n {
                        let row = &rows[k];
                        // SAFETY: the row has a block `idx` (rows and activations have equal widths).
                        let qx = unpack(format, row.quants.as_ptr().add(idx * quant_bytes));
                        let lanes = match format {
                            BlockFormat::Q4_1 => {
                                min_sum[k] = row.mins[idx].mul_add(act.sum, min_sum[k]);
                                unsigned_lanes(qx, qy)
                            }
                            BlockFormat::Q4_0 | BlockFormat::Q8_0 => signed_lanes(qx, qy),
                        };
                        let scale = _mm256_set1_ps(row.scales[idx] * act.scale);
                        acc[k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(lanes), acc[k]);
                    }
                }
                let mut out = [0f32; 4];
                for k in 0..n {
                    let mut lanes = [0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k]);
                    out[k] = horizontal_sum(&lanes) + min_sum[k];
                }
                out
            }

            /// One weight row against four activation rows.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn dot_acts4(row: RowBlocks<'_>, activations: [&[ActivationBlock]; 4]) -> [f32; 4] {
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut min_sum = [0f32; 4];
                let format = row.format;
                let quant_bytes = format.quant_bytes();
                for (idx, scale) in row.scales.iter().enumerate() {
                    // SAFETY: the row has a block `idx`.
                    let qx = unpack(format, row.quants.as_ptr().add(idx * quant_bytes));
                    for k in 0..4 {
                        let act = &activations[k][idx];
                        // SAFETY: 32 activation quants; unaligned load.
                        let qy = _mm256_loadu_si256(act.quants.as_ptr() as *const __m256i);
                        let lanes = match format {
                            BlockFormat::Q4_1 => {
                                min_sum[k] = row.mins[idx].mul_add(act.sum, min_sum[k]);
                                unsigned_lanes(qx, qy)
                            }
                            BlockFormat::Q4_0 | BlockFormat::Q8_0 => signed_lanes(qx, qy),
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
        }
    };
}

/// Weight unpacking and the lane products of each level.
#[cfg(target_arch = "x86_64")]
mod lanes {
    use std::arch::x86_64::*;

    use super::BlockFormat;

    /// One block's 32 weight quants as bytes: nibbles split (low nibbles
    /// first, as ggml orders them) and, for Q4_0, offset by -8.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unpack(format: BlockFormat, quants: *const u8) -> __m256i {
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                // SAFETY: 16 bytes of packed nibbles; unaligned load.
                let packed = _mm_loadu_si128(quants as *const __m128i);
                let unpacked = _mm256_insertf128_si256(_mm256_castsi128_si256(packed), _mm_srli_epi16(packed, 4), 1);
                let qx = _mm256_and_si256(_mm256_set1_epi8(0x0F), unpacked);
                if format == BlockFormat::Q4_0 {
                    _mm256_sub_epi8(qx, _mm256_set1_epi8(8))
                } else {
                    qx
                }
            }
            // SAFETY: 32 weight quants; unaligned load.
            BlockFormat::Q8_0 => _mm256_loadu_si256(quants as *const __m256i),
        }
    }

    /// `x` unsigned, `y` signed: `maddubs` then `madd` with ones.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unsigned_avx2(x: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }

    /// ggml's `mul_sum_i8_pairs` before the float conversion.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn signed_avx2(x: __m256i, y: __m256i) -> __m256i {
        unsigned_avx2(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
    }

    /// `x` unsigned, `y` signed, in one `dpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn unsigned_vnni(x: __m256i, y: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
    }

    /// Signed by signed through the same sign trick, then `dpbusd`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn signed_vnni(x: __m256i, y: __m256i) -> __m256i {
        unsigned_vnni(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
    }
}

#[cfg(target_arch = "x86_64")]
simd_kernels!(avx2, "avx2,fma", unsigned_avx2, signed_avx2);
#[cfg(target_arch = "x86_64")]
simd_kernels!(vnni, "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni", unsigned_vnni, signed_vnni);
