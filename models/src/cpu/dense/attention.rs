//! Softmax attention of one query row in f32 ([`attend_row`]: the BERT
//! embedder's attention and the llama path's exact one) and the vector
//! operations it is made of, [`dot`] and [`axpy`].

use super::{exp_negative, madd, BASELINE_FMA};
use crate::cpu::Level;

/// `a · b` in sixteen f32 lanes.
pub fn dot(level: Level, a: &[f32], b: &[f32]) -> f32 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2 and FMA.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { dot_fma(a, b) },
        _ => dot_body::<BASELINE_FMA>(a, b),
    }
}

#[inline(always)]
fn dot_body<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a_runs, b_runs) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_runs.remainder().iter().zip(b_runs.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_runs.zip(b_runs) {
        for (lane, (x, y)) in lanes.iter_mut().zip(x.iter().zip(y)) {
            *lane = madd::<FUSED>(*x, *y, *lane);
        }
    }
    // A tree (`_mm512_reduce_add_ps`'s), not sixteen dependent additions:
    // a head of 32 or 64 values takes only two or four steps of products.
    crate::cpu::vector::reduce16(&lanes) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_body::<true>(a, b)
}

/// `out += w * x`.
pub fn axpy(level: Level, w: f32, x: &[f32], out: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot`.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { axpy_fma(w, x, out) },
        _ => axpy_body::<BASELINE_FMA>(w, x, out),
    }
}

#[inline(always)]
fn axpy_body<const FUSED: bool>(w: f32, x: &[f32], out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = madd::<FUSED>(w, *v, *o);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_fma(w: f32, x: &[f32], out: &mut [f32]) {
    axpy_body::<true>(w, x, out);
}

/// Softmax attention of one query row in f32: `out = softmax(q · k_t * scale) v`
/// over `count` positions, key `t` at `keys[t * stride..][..d]` and value
/// `t` at `values[t * stride..][..d]` (`d = out.len()`); `scores` holds at
/// least `count` values.
#[allow(clippy::too_many_arguments)]
pub fn attend_row(
    level: Level,
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    count: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot`.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe {
            attend_row_fma(query, keys, values, stride, count, scale, scores, out)
        },
        _ => attend_row_body::<BASELINE_FMA>(query, keys, values, stride, count, scale, scores, out),
    }
}

/// [`attend_row`] with AVX2 and FMA, so `exp` and the products inline
/// as fused multiply-adds instead of calls to libm's `fmaf`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_row_fma(
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    count: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_row_body::<true>(query, keys, values, stride, count, scale, scores, out);
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_row_body<const FUSED: bool>(
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    stride: usize,
    count: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = out.len();
    let scores = &mut scores[..count];
    let mut max = f32::NEG_INFINITY;
    for (t, score) in scores.iter_mut().enumerate() {
        *score = dot_body::<FUSED>(query, &keys[t * stride..][..d]) * scale;
        max = max.max(*score);
    }
    let mut sum = 0f64;
    for score in scores.iter_mut() {
        *score = exp_negative::<FUSED>(*score - max);
        sum += *score as f64;
    }
    let inverse = (1.0 / sum) as f32;
    out.fill(0.0);
    for (t, score) in scores.iter().enumerate() {
        axpy_body::<FUSED>(score * inverse, &values[t * stride..][..d], out);
    }
}
