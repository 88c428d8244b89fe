//! The element-wise operations of an encoder layer: the exact GELU (an
//! [`Epilogue`](super::Epilogue) of the products) and its tanh form,
//! [`erf`] and the `e^x` it uses, and [`layer_norm`].

use super::{madd, BASELINE_FMA};
use crate::cpu::Level;

/// The exact GELU, `x / 2 * (1 + erf(x / sqrt 2))`, in place.
pub fn gelu(level: Level, x: &mut [f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2 and FMA.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { gelu_fma(x) },
        _ => gelu_body::<BASELINE_FMA>(x),
    }
}

#[inline(always)]
fn gelu_body<const FUSED: bool>(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf_with::<FUSED>(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_fma(x: &mut [f32]) {
    gelu_body::<true>(x);
}

/// GELU's tanh approximation (`hidden_act = "gelu_new"` and kin).
pub(super) fn gelu_tanh(x: f32) -> f32 {
    let inner = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    0.5 * x * (1.0 + inner.tanh())
}

/// `erf(x)` within 6e-7 absolute (the formula's 1.5e-7 plus f32 rounding):
/// Abramowitz and Stegun's formula 7.1.26,
/// `1 - t (a1 + t (a2 + ...)) e^(-x^2)` with `t = 1 / (1 + p |x|)`. No
/// branches, so the compiler vectorises the loops that call it.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    erf_with::<BASELINE_FMA>(x)
}

/// [`erf`], its multiply-adds fused when `FUSED`.
#[inline(always)]
fn erf_with<const FUSED: bool>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];
    let ax = x.abs();
    let t = 1.0 / madd::<FUSED>(P, ax, 1.0);
    let poly = madd::<FUSED>(madd::<FUSED>(madd::<FUSED>(madd::<FUSED>(A[4], t, A[3]), t, A[2]), t, A[1]), t, A[0]) * t;
    let y = 1.0 - poly * exp_negative::<FUSED>(-(ax * ax));
    y.copysign(x)
}

/// `e^x` for `x <= 0` (below -87 it returns `e^-87`, far under anything
/// [`erf`] can see): `x = n ln 2 + r`, a degree-6 Taylor polynomial in `r`,
/// `2^n` built in the exponent bits. No branches.
#[inline(always)]
pub(crate) fn exp_negative<const FUSED: bool>(x: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.max(-87.0);
    let z = madd::<FUSED>(x, std::f32::consts::LOG2_E, SHIFT);
    let n = z - SHIFT;
    // ln 2 = 0.693359375 - 2.12194440e-4; `n` times the first part is exact.
    let r = madd::<FUSED>(-n, -2.121_944_4e-4, madd::<FUSED>(-n, 0.693_359_4, x));
    let poly = [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0]
        .into_iter()
        .fold(1.0 / 720.0f32, |acc, coefficient| madd::<FUSED>(acc, r, coefficient));
    // `z`'s low bits hold `n` (offset by the shift): `n + 127` in the exponent field.
    let biased = z.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127);
    poly * f32::from_bits(biased << 23)
}

/// Layer normalisation of one row in place: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(level: Level, x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `gelu`.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { layer_norm_fma(x, weight, bias, eps) },
        _ => layer_norm_body::<BASELINE_FMA>(x, weight, bias, eps),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_fma(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    layer_norm_body::<true>(x, weight, bias, eps);
}

#[inline(always)]
fn layer_norm_body<const FUSED: bool>(x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = x.len() as f32;
    let mean = sum16(x.iter().copied()) / width;
    let variance = sum16(x.iter().map(|v| (v - mean) * (v - mean))) / width;
    let scale = 1.0 / (variance + eps).sqrt();
    for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
        *v = madd::<FUSED>((*v - mean) * scale, *w, *b);
    }
}

/// A sum in sixteen lanes (so it vectorises) then added up.
#[inline(always)]
fn sum16(values: impl Iterator<Item = f32>) -> f32 {
    let mut lanes = [0f32; 16];
    for (i, v) in values.enumerate() {
        lanes[i % 16] += v;
    }
    lanes.iter().sum()
}
