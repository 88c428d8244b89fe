//! The block dot products, one body per dispatch level, all returning the
//! same bits as [`dot_portable`]: ggml's eight lanes of four integer
//! products, `fma(d_w * d_a, lane, acc)` per block, `hsum_float_8`, plus
//! `sum(m * s)` for Q4_1. Integer lane sums are exact, so AVX2's
//! `maddubs`/`madd` pair and AVX-512 VNNI's `dpbusd` give identical lanes.
//!
//! AVX-512 computes two rows per 512-bit register with VNNI's `dpbusd`
//! (about half the instructions of AVX2); its lanes are a permutation of
//! ggml's, put back in order before the horizontal sum.
//!
//! On arm64, NEON computes ggml's eight lanes as two registers of four:
//! `smull` and two pairwise adds make four-product sums where the CPU has
//! nothing better, `sdot` makes them in one instruction where it has the
//! dot-product extension.
//!
//! Every kernel computes a tile: the four rows of a repacked group against
//! one activation row ([`dot_rows4`], the decode shape) or against
//! [`TILE_ACTS`] of them ([`dot_tile`], the prompt shape), so each weight
//! block is unpacked once per tile and each activation block loaded once per
//! group, and the sixteen accumulator chains hide the FMA latency. The
//! order of operations for any one row and activation row is the same as in
//! [`dot_portable`].

use super::blocks::{ActivationBlock, BlockFormat, GroupBlocks, RowBlocks};
use super::{BLOCK, GROUP};
use crate::cpu::Level;

/// Activation rows per prompt tile.
pub(super) const TILE_ACTS: usize = 4;

/// The four rows of `group` against one activation row.
pub(super) fn dot_rows4(level: Level, group: GroupBlocks<'_>, activations: &[ActivationBlock]) -> [f32; 4] {
    dot_tile(level, group, [activations])[0]
}

/// The four rows of `group` against `ACTS` activation rows: `[act][row]`.
pub(super) fn dot_tile<const ACTS: usize>(
    level: Level,
    group: GroupBlocks<'_>,
    activations: [&[ActivationBlock]; ACTS],
) -> [[f32; GROUP]; ACTS] {
    let blocks = group.scales.len() / GROUP;
    assert!(
        group.quants.len() == blocks * GROUP * group.format.quant_bytes()
            && (group.format != BlockFormat::Q4_1 || group.mins.len() == blocks * GROUP)
            && activations.iter().all(|a| a.len() == blocks),
        "tile operands disagree in width"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx512Vnni {
            // SAFETY: `Level::Avx512Vnni` is only produced when the CPU has
            // AVX-512 F/BW/VL and VNNI; operand widths checked above.
            return unsafe { avx512::dot_tile(group, activations) };
        }
        if level >= Level::Avx2 {
            // SAFETY: `Level::Avx2` is only produced when the CPU has AVX2 and FMA; widths checked above.
            return unsafe { avx2::dot_tile(group, activations) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if level >= Level::NeonDot {
            // SAFETY: `Level::NeonDot` is only produced when the CPU has NEON
            // and the dot-product extension; widths checked above.
            return unsafe { neon_dot::dot_tile(group, activations) };
        }
        if level >= Level::Neon {
            // SAFETY: `Level::Neon` is only produced when the CPU has NEON; widths checked above.
            return unsafe { neon::dot_tile(group, activations) };
        }
    }
    let _ = level;
    activations.map(|act| std::array::from_fn(|lane| dot_portable(RowBlocks { group, lane }, act)))
}

/// ggml's `vec_dot_q4_0_q8_0` / `vec_dot_q4_1_q8_1` / `vec_dot_q8_0_q8_0` in
/// portable Rust.
pub(super) fn dot_portable(row: RowBlocks<'_>, activations: &[ActivationBlock]) -> f32 {
    let mut acc = [0f32; 8];
    let mut min_sum = 0f32;
    let format = row.format();
    for (idx, act) in activations.iter().enumerate().take(row.blocks()) {
        let quants = row.quants(idx);
        let mut values = [0i32; BLOCK];
        match format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                let offset = if format == BlockFormat::Q4_0 { 8 } else { 0 };
                for j in 0..16 {
                    values[j] = (quants[j] & 0x0F) as i32 - offset;
                    values[j + 16] = (quants[j] >> 4) as i32 - offset;
                }
                if format == BlockFormat::Q4_1 {
                    min_sum = row.min(idx).mul_add(act.sum, min_sum);
                }
            }
            BlockFormat::Q8_0 => {
                for (value, byte) in values.iter_mut().zip(quants) {
                    *value = *byte as i8 as i32;
                }
            }
        }
        let combined = row.scale(idx) * act.scale;
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

/// The `dot_tile` of a SIMD module, which calls the module's
/// `tile::<ACTS, FORMAT>` with the group's format as a constant (0 Q4_0,
/// 1 Q4_1, 2 Q8_0): one instance per format, so the format's branches fold
/// away.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! dot_tile_by_format {
    ($features:literal) => {
        /// See [`super::dot_tile`]; the caller has checked the widths.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn dot_tile<const ACTS: usize>(
            group: GroupBlocks<'_>,
            activations: [&[ActivationBlock]; ACTS],
        ) -> [[f32; GROUP]; ACTS] {
            match group.format {
                BlockFormat::Q4_0 => tile::<ACTS, 0>(group, activations),
                BlockFormat::Q4_1 => tile::<ACTS, 1>(group, activations),
                BlockFormat::Q8_0 => tile::<ACTS, 2>(group, activations),
            }
        }
    };
}

/// The SIMD bodies, written once and compiled per level: `$features` is the
/// target feature list, `$unsigned` computes eight lanes of four
/// unsigned-by-signed byte products, `$signed` the signed-by-signed ones.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernels {
    ($name:ident, $features:literal, $unsigned:ident, $signed:ident) => {
        pub(super) mod $name {
            use std::arch::x86_64::*;

            use super::super::blocks::{ActivationBlock, BlockFormat, GroupBlocks};
            use super::super::GROUP;
            use super::lanes::{$signed as signed_lanes, $unsigned as unsigned_lanes};
            use super::{horizontal_sum, lanes::unpack};

            dot_tile_by_format!($features);

            #[target_feature(enable = $features)]
            unsafe fn tile<const ACTS: usize, const FORMAT: u8>(
                group: GroupBlocks<'_>,
                activations: [&[ActivationBlock]; ACTS],
            ) -> [[f32; GROUP]; ACTS] {
                let format = match FORMAT {
                    0 => BlockFormat::Q4_0,
                    1 => BlockFormat::Q4_1,
                    _ => BlockFormat::Q8_0,
                };
                let quant_bytes = format.quant_bytes();
                let blocks = group.scales.len() / GROUP;
                let mut acc = [[_mm256_setzero_ps(); GROUP]; ACTS];
                let mut min_sum = [[0f32; GROUP]; ACTS];
                let quants = group.quants.as_ptr();
                let scales = group.scales.as_ptr();
                let mins = group.mins.as_ptr();
                for idx in 0..blocks {
                    let mut qx = [_mm256_setzero_si256(); GROUP];
                    for (k, qx) in qx.iter_mut().enumerate() {
                        // SAFETY: block `idx` of lane `k` lies inside the group (widths checked by the caller).
                        *qx = unpack(format, quants.add((idx * GROUP + k) * quant_bytes));
                    }
                    for a in 0..ACTS {
                        // SAFETY: every activation row has `blocks` blocks (checked by the caller).
                        let act = activations[a].get_unchecked(idx);
                        let qy = _mm256_loadu_si256(act.quants.as_ptr() as *const __m256i);
                        for k in 0..GROUP {
                            let lanes = if FORMAT == 1 {
                                // SAFETY: Q4_1 groups carry one minimum per block and lane.
                                let min = *mins.add(idx * GROUP + k);
                                min_sum[a][k] = min.mul_add(act.sum, min_sum[a][k]);
                                unsigned_lanes(qx[k], qy)
                            } else {
                                signed_lanes(qx[k], qy)
                            };
                            // SAFETY: one scale per block and lane.
                            let scale = _mm256_set1_ps(*scales.add(idx * GROUP + k) * act.scale);
                            acc[a][k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(lanes), acc[a][k]);
                        }
                    }
                }
                let mut out = [[0f32; GROUP]; ACTS];
                for a in 0..ACTS {
                    for k in 0..GROUP {
                        let mut lanes = [0f32; 8];
                        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[a][k]);
                        out[a][k] = horizontal_sum(&lanes) + min_sum[a][k];
                    }
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
}

#[cfg(target_arch = "x86_64")]
simd_kernels!(avx2, "avx2,fma", unsigned_avx2, signed_avx2);

/// Two rows per 512-bit register, VNNI for the integer products.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::blocks::{ActivationBlock, BlockFormat, GroupBlocks};
    use super::super::GROUP;
    use super::horizontal_sum;

    /// See [`super::dot_tile`]; the caller has checked the widths.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_tile<const ACTS: usize>(
        group: GroupBlocks<'_>,
        activations: [&[ActivationBlock]; ACTS],
    ) -> [[f32; GROUP]; ACTS] {
        match group.format {
            BlockFormat::Q4_0 => nibbles::<ACTS, false>(group, activations),
            BlockFormat::Q4_1 => nibbles::<ACTS, true>(group, activations),
            BlockFormat::Q8_0 => bytes::<ACTS>(group, activations),
        }
    }

    /// Q4_0 and Q4_1. A register holds rows `2p` and `2p + 1` as four
    /// 128-bit lanes `[a low | b low | a high | b high]`, where "low" are the
    /// low nibbles (block elements 0..16, ggml's lanes 0..4) and "high" the
    /// high ones (elements 16..32, ggml's lanes 4..8). Q4_0's `-8` offset is
    /// taken out of the integer sums exactly: `sum((q - 8) y) = sum(q y) - sum(8 y)`.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn nibbles<const ACTS: usize, const WITH_MIN: bool>(
        group: GroupBlocks<'_>,
        activations: [&[ActivationBlock]; ACTS],
    ) -> [[f32; GROUP]; ACTS] {
        let blocks = group.scales.len() / GROUP;
        let mut acc = [[_mm512_setzero_ps(); 2]; ACTS];
        let mut min_sum = [_mm_setzero_ps(); ACTS];
        let low_mask = _mm512_set1_epi8(0x0F);
        // Shift the upper 256 bits (the second copy) by four: high nibbles.
        let shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
        let eight = _mm512_set1_epi8(8);
        let pick = [
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3, 2, 2, 2, 2, 3, 3, 3, 3),
        ];
        let quants = group.quants.as_ptr();
        for idx in 0..blocks {
            let mut qx = [_mm512_setzero_si512(); 2];
            for (pair, qx) in qx.iter_mut().enumerate() {
                // SAFETY: lanes 2p and 2p + 1 of block `idx`: 32 contiguous bytes inside the group.
                let packed = _mm256_loadu_si256(quants.add((idx * GROUP + 2 * pair) * 16) as *const __m256i);
                let both = _mm512_broadcast_i64x4(packed);
                *qx = _mm512_and_si512(_mm512_srlv_epi16(both, shift), low_mask);
            }
            // SAFETY: four scales (and minimums) per block.
            let scales = _mm_loadu_ps(group.scales.as_ptr().add(idx * GROUP));
            for a in 0..ACTS {
                // SAFETY: every activation row has `blocks` blocks.
                let act = activations[a].get_unchecked(idx);
                let y = _mm512_castsi256_si512(_mm256_loadu_si256(act.quants.as_ptr() as *const __m256i));
                let qy = _mm512_shuffle_i64x2(y, y, 0b01_01_00_00);
                if WITH_MIN {
                    let mins = _mm_loadu_ps(group.mins.as_ptr().add(idx * GROUP));
                    min_sum[a] = _mm_fmadd_ps(mins, _mm_set1_ps(act.sum), min_sum[a]);
                }
                let offset = if WITH_MIN {
                    _mm512_setzero_si512()
                } else {
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, qy)
                };
                let combined = _mm512_castps128_ps512(_mm_mul_ps(scales, _mm_set1_ps(act.scale)));
                for pair in 0..2 {
                    let mut lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qx[pair], qy);
                    if !WITH_MIN {
                        lanes = _mm512_sub_epi32(lanes, offset);
                    }
                    let scale = _mm512_permutexvar_ps(pick[pair], combined);
                    acc[a][pair] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes), acc[a][pair]);
                }
            }
        }
        let mut out = [[0f32; GROUP]; ACTS];
        for a in 0..ACTS {
            let mut mins = [0f32; 4];
            _mm_storeu_ps(mins.as_mut_ptr(), min_sum[a]);
            for pair in 0..2 {
                let mut lanes = [0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[a][pair]);
                for (k, (low, high)) in [(0, 8), (4, 12)].into_iter().enumerate() {
                    let mut ggml = [0f32; 8];
                    ggml[..4].copy_from_slice(&lanes[low..low + 4]);
                    ggml[4..].copy_from_slice(&lanes[high..high + 4]);
                    out[a][2 * pair + k] = horizontal_sum(&ggml) + mins[2 * pair + k];
                }
            }
        }
        out
    }

    /// Q8_0. A register holds rows `2p` and `2p + 1` as two 256-bit halves
    /// in ggml's lane order; signed products use ggml's trick (|w| times y
    /// negated where w < 0) so `dpbusd` sees an unsigned operand.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn bytes<const ACTS: usize>(
        group: GroupBlocks<'_>,
        activations: [&[ActivationBlock]; ACTS],
    ) -> [[f32; GROUP]; ACTS] {
        let blocks = group.scales.len() / GROUP;
        let mut acc = [[_mm512_setzero_ps(); 2]; ACTS];
        let pick = [
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
        ];
        let quants = group.quants.as_ptr();
        for idx in 0..blocks {
            let mut magnitude = [_mm512_setzero_si512(); 2];
            let mut negative = [0u64; 2];
            for pair in 0..2 {
                // SAFETY: lanes 2p and 2p + 1 of block `idx`: 64 contiguous bytes inside the group.
                let w = _mm512_loadu_si512(quants.add((idx * GROUP + 2 * pair) * 32) as *const __m512i);
                magnitude[pair] = _mm512_abs_epi8(w);
                negative[pair] = _mm512_movepi8_mask(w);
            }
            // SAFETY: four scales per block.
            let scales = _mm_loadu_ps(group.scales.as_ptr().add(idx * GROUP));
            for a in 0..ACTS {
                // SAFETY: every activation row has `blocks` blocks.
                let act = activations[a].get_unchecked(idx);
                let qy = _mm512_broadcast_i64x4(_mm256_loadu_si256(act.quants.as_ptr() as *const __m256i));
                let combined = _mm512_castps128_ps512(_mm_mul_ps(scales, _mm_set1_ps(act.scale)));
                for pair in 0..2 {
                    let signed = _mm512_mask_sub_epi8(qy, negative[pair], _mm512_setzero_si512(), qy);
                    let lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), magnitude[pair], signed);
                    let scale = _mm512_permutexvar_ps(pick[pair], combined);
                    acc[a][pair] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(lanes), acc[a][pair]);
                }
            }
        }
        let mut out = [[0f32; GROUP]; ACTS];
        for a in 0..ACTS {
            for pair in 0..2 {
                let mut lanes = [0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[a][pair]);
                for k in 0..2 {
                    let mut ggml = [0f32; 8];
                    ggml.copy_from_slice(&lanes[8 * k..8 * k + 8]);
                    out[a][2 * pair + k] = horizontal_sum(&ggml);
                }
            }
        }
        out
    }
}

/// The NEON bodies, written once and compiled per level: `$features` is the
/// target feature list and `$lanes` computes four lanes of four
/// signed-by-signed byte products. A row's eight ggml lanes are two
/// registers: the low sixteen block elements and the high sixteen.
#[cfg(target_arch = "aarch64")]
macro_rules! neon_kernels {
    ($name:ident, $features:literal, $lanes:ident) => {
        mod $name {
            use std::arch::aarch64::*;

            use super::super::blocks::{ActivationBlock, BlockFormat, GroupBlocks};
            use super::super::GROUP;
            use super::horizontal_sum;
            use super::neon_lanes::$lanes as lanes;

            dot_tile_by_format!($features);

            #[target_feature(enable = $features)]
            unsafe fn tile<const ACTS: usize, const FORMAT: u8>(
                group: GroupBlocks<'_>,
                activations: [&[ActivationBlock]; ACTS],
            ) -> [[f32; GROUP]; ACTS] {
                let blocks = group.scales.len() / GROUP;
                let mut acc = [[[vdupq_n_f32(0.0); 2]; GROUP]; ACTS];
                let mut min_sum = [[0f32; GROUP]; ACTS];
                let quants = group.quants.as_ptr();
                let (low_mask, eight) = (vdupq_n_u8(0x0F), vdupq_n_s8(8));
                for idx in 0..blocks {
                    let mut qx = [[vdupq_n_s8(0); 2]; GROUP];
                    for (k, qx) in qx.iter_mut().enumerate() {
                        if FORMAT == 2 {
                            // SAFETY: block `idx` of lane `k` (32 bytes) lies inside the group.
                            let block = quants.add((idx * GROUP + k) * 32) as *const i8;
                            *qx = [vld1q_s8(block), vld1q_s8(block.add(16))];
                        } else {
                            // SAFETY: block `idx` of lane `k` (16 bytes of nibbles) lies inside the group.
                            let packed = vld1q_u8(quants.add((idx * GROUP + k) * 16));
                            let low = vreinterpretq_s8_u8(vandq_u8(packed, low_mask));
                            let high = vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed));
                            *qx = if FORMAT == 0 { [vsubq_s8(low, eight), vsubq_s8(high, eight)] } else { [low, high] };
                        }
                    }
                    for a in 0..ACTS {
                        // SAFETY: every activation row has `blocks` blocks (checked by the caller).
                        let act = activations[a].get_unchecked(idx);
                        let qy = [vld1q_s8(act.quants.as_ptr()), vld1q_s8(act.quants.as_ptr().add(16))];
                        for k in 0..GROUP {
                            // SAFETY: one scale (and for Q4_1 one minimum) per block and lane.
                            let scale = *group.scales.get_unchecked(idx * GROUP + k) * act.scale;
                            if FORMAT == 1 {
                                let min = *group.mins.get_unchecked(idx * GROUP + k);
                                min_sum[a][k] = min.mul_add(act.sum, min_sum[a][k]);
                            }
                            for half in 0..2 {
                                let sums = vcvtq_f32_s32(lanes(qx[k][half], qy[half]));
                                acc[a][k][half] = vfmaq_n_f32(acc[a][k][half], sums, scale);
                            }
                        }
                    }
                }
                let mut out = [[0f32; GROUP]; ACTS];
                for a in 0..ACTS {
                    for k in 0..GROUP {
                        let mut ggml = [0f32; 8];
                        vst1q_f32(ggml.as_mut_ptr(), acc[a][k][0]);
                        vst1q_f32(ggml.as_mut_ptr().add(4), acc[a][k][1]);
                        out[a][k] = horizontal_sum(&ggml) + min_sum[a][k];
                    }
                }
                out
            }
        }
    };
}

/// The four-product lane sums of each NEON level. Integer sums are exact,
/// so both give the portable body's lanes.
#[cfg(target_arch = "aarch64")]
mod neon_lanes {
    use std::arch::aarch64::*;

    /// Lane `i` is `sum(x[4i..4i + 4] * y[4i..4i + 4])`: widening products
    /// (an i8 product fits in i16), then two pairwise adds.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn mull(x: int8x16_t, y: int8x16_t) -> int32x4_t {
        let low = vpaddlq_s16(vmull_s8(vget_low_s8(x), vget_low_s8(y)));
        let high = vpaddlq_s16(vmull_high_s8(x, y));
        vpaddq_s32(low, high)
    }

    /// The same lanes with one `sdot` (its intrinsic is not stable Rust yet).
    #[inline]
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn sdot(x: int8x16_t, y: int8x16_t) -> int32x4_t {
        let mut sums = vdupq_n_s32(0);
        // SAFETY: `sdot` only reads its vector operands; the CPU has the
        // dot-product extension (this function's target feature).
        unsafe {
            std::arch::asm!(
                "sdot {sums:v}.4s, {x:v}.16b, {y:v}.16b",
                sums = inout(vreg) sums,
                x = in(vreg) x,
                y = in(vreg) y,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        sums
    }
}

#[cfg(target_arch = "aarch64")]
neon_kernels!(neon, "neon", mull);
#[cfg(target_arch = "aarch64")]
neon_kernels!(neon_dot, "neon,dotprod", sdot);
