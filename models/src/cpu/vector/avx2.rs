//! The f16 attention kernels with AVX2, FMA and F16C, in the same orders
//! and with the same bits as the portable bodies and the AVX-512 ones: a
//! sixteen-lane accumulator is two eight-lane registers, and
//! [`reduce16`](super::reduce16)'s tree is kept lane for lane.
//!
//! Scores take eight keys at a time and reduce them together (the
//! one-key-at-a-time loop waited on each key's chain of fused
//! multiply-adds and its own reduction). The weighted sum of values keeps
//! eight accumulator rows of eight columns in registers per pass and
//! combines the passes' rows in [`Order::finish`](super::Order::finish)'s
//! tree.

use std::arch::x86_64::*;

use half::f16;

/// Eight f16 values at `p` as f32.
///
/// # Safety
/// `p` points at eight values; F16C.
#[inline(always)]
unsafe fn load8(p: *const u16) -> __m256 {
    // SAFETY: the caller's bounds and features.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

/// Eight `reduce16`s at once from eight keys' eighths: the quarters
/// (`e[i] + e[i + 4]`), then `(t0 + t2) + (t1 + t3)`, each in the scalar
/// tree's order; the keys come back in the order 0, 2, 4, 6, 1, 3, 5, 7.
///
/// # Safety
/// AVX.
#[inline(always)]
unsafe fn reduce8x8(e: [__m256; 8]) -> __m256 {
    // SAFETY: register operations only.
    unsafe {
        // [t of key 2p | t of key 2p + 1]: the 128-bit halves added.
        let p: [__m256; 4] = std::array::from_fn(|i| {
            let (a, b) = (e[2 * i], e[2 * i + 1]);
            _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
        });
        // [t0 + t2, t1 + t3 of keys a, c | of keys b, d].
        let q: [__m256; 2] = std::array::from_fn(|i| {
            let (a, b) = (p[2 * i], p[2 * i + 1]);
            _mm256_add_ps(_mm256_shuffle_ps::<0x44>(a, b), _mm256_shuffle_ps::<0xee>(a, b))
        });
        _mm256_add_ps(_mm256_shuffle_ps::<0x88>(q[0], q[1]), _mm256_shuffle_ps::<0xdd>(q[0], q[1]))
    }
}

/// The eighths of one key's product with `q` (`Q` sixteen-lane quarters)
/// in llama.cpp's Gemm order (one sixteen-lane accumulator) or, with
/// `GEMV`, its Gemv order (four accumulators over runs of 64, added as
/// `(a0 + a2) + (a1 + a3)`).
///
/// # Safety
/// `q` has `16 * Q` values and `key` as many; AVX2, FMA, F16C.
#[inline(always)]
unsafe fn eighths<const Q: usize, const GEMV: bool>(q: *const f32, key: *const u16) -> __m256 {
    // SAFETY: the caller's bounds.
    unsafe {
        let product = |j: usize, acc: [__m256; 2]| {
            [
                _mm256_fmadd_ps(_mm256_loadu_ps(q.add(16 * j)), load8(key.add(16 * j)), acc[0]),
                _mm256_fmadd_ps(_mm256_loadu_ps(q.add(16 * j + 8)), load8(key.add(16 * j + 8)), acc[1]),
            ]
        };
        let zero = [_mm256_setzero_ps(); 2];
        let sum = if GEMV {
            let mut acc = [zero; 4];
            for j in 0..Q {
                acc[j % 4] = product(j, acc[j % 4]);
            }
            let add = |a: [__m256; 2], b: [__m256; 2]| [_mm256_add_ps(a[0], b[0]), _mm256_add_ps(a[1], b[1])];
            add(add(acc[0], acc[2]), add(acc[1], acc[3]))
        } else {
            (0..Q).fold(zero, |acc, j| product(j, acc))
        };
        _mm256_add_ps(sum[0], sum[1])
    }
}

/// [`scores_f16`](super::scores_f16) for `Q` sixteen-lane quarters, eight
/// keys at a time; the last `count % 8` keys go through `rest(t)`. Returns
/// the largest score (NaN scores aside).
///
/// # Safety
/// `q` has `16 * Q` values; every key `t < scores.len()` has them at
/// `keys[t * stride..]`; AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scores<const Q: usize, const GEMV: bool>(
    q: &[f32],
    keys: &[f16],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    rest: impl Fn(usize) -> f32,
) -> f32 {
    let count = scores.len();
    let full = count - count % 8;
    let (qp, kp) = (q.as_ptr(), keys.as_ptr().cast::<u16>());
    // SAFETY: the caller's bounds; `first + 8 <= full <= count`.
    let mut max = unsafe {
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        for first in (0..full).step_by(8) {
            let e: [__m256; 8] = std::array::from_fn(|l| eighths::<Q, GEMV>(qp, kp.add((first + l) * stride)));
            let scaled = _mm256_mul_ps(reduce8x8(e), _mm256_set1_ps(scale));
            // Back in key order.
            let ordered = _mm256_permutevar8x32_ps(scaled, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_ps(scores.as_mut_ptr().add(first), ordered);
            // A NaN score leaves the maximum alone, as `f32::max` does.
            max = _mm256_max_ps(ordered, max);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), max);
        lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
    };
    for (t, score) in scores.iter_mut().enumerate().skip(full) {
        *score = rest(t) * scale;
        max = max.max(*score);
    }
    max
}

/// [`weighted_sum_f16`](super::weighted_sum_f16) with `ROWS` accumulator
/// rows (16 for the Gemm order, 64 for Gemv), eight columns at a time.
/// Each pass over the positions keeps eight of the rows in registers; the
/// rows are then combined lane by lane as `Order::finish` combines them.
///
/// # Safety
/// Value `t < weights.len()` has `out.len()` values at `values[t * stride..]`;
/// `out.len()` is a multiple of eight; AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn weighted_sum<const ROWS: usize>(weights: &[f32], values: &[f16], stride: usize, out: &mut [f32]) {
    let count = weights.len();
    let vp = values.as_ptr().cast::<u16>();
    for column in (0..out.len()).step_by(8) {
        // SAFETY: value `t < count` has the columns `column..column + 8`
        // (the caller's bounds).
        unsafe {
            let mut rows = [_mm256_setzero_ps(); ROWS];
            for pass in 0..ROWS / 8 {
                let mut acc = [_mm256_setzero_ps(); 8];
                for first in (8 * pass..count).step_by(ROWS) {
                    for (r, sum) in acc.iter_mut().enumerate() {
                        let t = first + r;
                        if t < count {
                            let v = load8(vp.add(t * stride + column));
                            *sum = _mm256_fmadd_ps(_mm256_set1_ps(weights[t]), v, *sum);
                        }
                    }
                }
                rows[8 * pass..8 * pass + 8].copy_from_slice(&acc);
            }
            let lanes: [__m256; 16] = std::array::from_fn(|l| match ROWS {
                64 => _mm256_add_ps(_mm256_add_ps(rows[l], rows[32 + l]), _mm256_add_ps(rows[16 + l], rows[48 + l])),
                _ => rows[l],
            });
            // `reduce16`'s tree, lane by lane.
            let halves: [__m256; 8] = std::array::from_fn(|i| _mm256_add_ps(lanes[i], lanes[i + 8]));
            let quarters: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(halves[i], halves[i + 4]));
            let total = _mm256_add_ps(_mm256_add_ps(quarters[0], quarters[2]), _mm256_add_ps(quarters[1], quarters[3]));
            _mm256_storeu_ps(out.as_mut_ptr().add(column), total);
        }
    }
}
