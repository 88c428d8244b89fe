//! The small vector operations of a transformer layer, each in the
//! arithmetic of ggml's CPU backend where that is what llama.cpp's logits
//! depend on: RMS norm (squares summed in f64, `x * (1 / sqrt(mean + eps))`,
//! then the weight), the f16 dot product of attention scores (ggml's AVX2
//! `vec_dot_f16`: four accumulators of eight lanes, fused multiply-adds, its
//! reduction order, leftovers in f64), and the f16 value accumulation.
//!
//! Each kernel has a portable body and an AVX2 body that returns the same
//! bits; [`Level`] picks one at run time.

use half::f16;

/// Which instruction sets the kernels may use, detected once at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX2 plus AVX-512 (F, BW, VL) with VNNI.
    Avx512Vnni,
}

impl Level {
    /// The best level this CPU runs, capped by `$AIOS_CPU_LEVEL`
    /// (`portable`, `avx2`, `avx512`) when set; detected once.
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Self::available().into_iter().max().unwrap_or(Self::Portable);
            let cap = match std::env::var("AIOS_CPU_LEVEL").as_deref() {
                Ok("portable") => Self::Portable,
                Ok("avx2") => Self::Avx2,
                _ => Self::Avx512Vnni,
            };
            best.min(cap)
        })
    }

    /// Every level this CPU can run (tests check each against the portable one).
    pub fn available() -> Vec<Self> {
        let mut levels = vec![Self::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                levels.push(Self::Avx2);
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
                {
                    levels.push(Self::Avx512Vnni);
                }
            }
        }
        levels
    }

    /// A short name for bench output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2+fma",
            Self::Avx512Vnni => "avx512+vnni",
        }
    }
}

/// `out = x * (1 / sqrt(mean(x^2) + eps)) * weight`, as ggml's `rms_norm`
/// followed by `mul`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    // Four f64 partial sums; f64 makes the order immaterial to the f32 mean.
    let mut partial = [0f64; 4];
    let mut chunks = x.chunks_exact(4);
    for chunk in &mut chunks {
        for (p, v) in partial.iter_mut().zip(chunk) {
            *p += (v * v) as f64;
        }
    }
    let mut sum = (partial[0] + partial[1]) + (partial[2] + partial[3]);
    for v in chunks.remainder() {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// `q . k` with `q` already rounded to f16 values, in ggml's AVX2
/// `vec_dot_f16` order.
pub fn dot_f16(level: Level, q: &[f32], k: &[f16]) -> f32 {
    debug_assert_eq!(q.len(), k.len());
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx2 {
            // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2, FMA and F16C.
            return unsafe { dot_f16_avx2(q, k) };
        }
    }
    let _ = level;
    dot_f16_portable(q, k)
}

/// `out += w * v` for an f16 `v`, with fused multiply-adds.
pub fn axpy_f16(level: Level, w: f32, v: &[f16], out: &mut [f32]) {
    debug_assert_eq!(v.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx2 {
            // SAFETY: as in `dot_f16`.
            return unsafe { axpy_f16_avx2(w, v, out) };
        }
    }
    let _ = level;
    for (o, v) in out.iter_mut().zip(v) {
        *o = w.mul_add(v.to_f32(), *o);
    }
}

/// Rounds `x` to f16 and back, in place (ggml converts the f32 operand of a
/// product with an f16 one to f16).
pub fn round_to_f16(x: &mut [f32]) {
    for v in x {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// Writes `x` as f16.
pub fn to_f16(x: &[f32], out: &mut [f16]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = f16::from_f32(*v);
    }
}

/// `gate = silu(gate) * up`, with `silu(x) = x / (1 + e^-x)`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// ggml's `hsum` of a `GGML_F32x8_REDUCE`d register: lanes added across the
/// two halves, then two horizontal adds.
fn reduce_lanes(lanes: &[f32; 8]) -> f32 {
    let t = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

fn dot_f16_portable(q: &[f32], k: &[f16]) -> f32 {
    let n = q.len();
    let full = n - n % 32;
    let mut sums = [[0f32; 8]; 4];
    for i in (0..full).step_by(32) {
        for (j, sum) in sums.iter_mut().enumerate() {
            for (lane, s) in sum.iter_mut().enumerate() {
                let idx = i + j * 8 + lane;
                *s = q[idx].mul_add(k[idx].to_f32(), *s);
            }
        }
    }
    let [x0, x1, x2, x3] = sums;
    let reduced: [f32; 8] = std::array::from_fn(|lane| (x0[lane] + x2[lane]) + (x1[lane] + x3[lane]));
    let mut total = reduce_lanes(&reduced) as f64;
    for idx in full..n {
        total += (q[idx] * k[idx].to_f32()) as f64;
    }
    total as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(q: &[f32], k: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    let n = q.len().min(k.len());
    let full = n - n % 32;
    let mut sums = [_mm256_setzero_ps(); 4];
    let qp = q.as_ptr();
    let kp = k.as_ptr() as *const u16;
    let mut i = 0;
    while i < full {
        for (j, sum) in sums.iter_mut().enumerate() {
            // SAFETY: `i + j * 8 + 8 <= full <= n` for both slices; unaligned loads.
            let qv = _mm256_loadu_ps(qp.add(i + j * 8));
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(kp.add(i + j * 8) as *const __m128i));
            *sum = _mm256_fmadd_ps(qv, kv, *sum);
        }
        i += 32;
    }
    let a = _mm256_add_ps(sums[0], sums[2]);
    let b = _mm256_add_ps(sums[1], sums[3]);
    let x = _mm256_add_ps(a, b);
    let t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    let mut total = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
    for idx in full..n {
        total += (q[idx] * k[idx].to_f32()) as f64;
    }
    total as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpy_f16_avx2(w: f32, v: &[f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = v.len().min(out.len());
    let full = n - n % 8;
    let wv = _mm256_set1_ps(w);
    let vp = v.as_ptr() as *const u16;
    let op = out.as_mut_ptr();
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 8 <= n` for both slices; unaligned loads and stores.
        let x = _mm256_cvtph_ps(_mm_loadu_si128(vp.add(i) as *const __m128i));
        _mm256_storeu_ps(op.add(i), _mm256_fmadd_ps(wv, x, _mm256_loadu_ps(op.add(i))));
        i += 8;
    }
    for idx in full..n {
        out[idx] = w.mul_add(v[idx].to_f32(), out[idx]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values as values;

    #[test]
    fn f16_kernels_agree_with_the_portable_ones_and_a_scalar_reference() {
        for len in [1, 7, 31, 32, 33, 64, 95, 130] {
            let mut q = values(len as u64, len, 3.0);
            round_to_f16(&mut q);
            let k: Vec<f16> = values(len as u64 + 99, len, 2.0).into_iter().map(f16::from_f32).collect();
            let reference: f64 = q.iter().zip(&k).map(|(a, b)| *a as f64 * b.to_f64()).sum();
            let portable = dot_f16(Level::Portable, &q, &k);
            assert!((portable as f64 - reference).abs() < 1e-4 * (1.0 + reference.abs()), "len {len}");
            for level in Level::available() {
                assert_eq!(dot_f16(level, &q, &k).to_bits(), portable.to_bits(), "{level:?} len {len}");
                let mut out = values(len as u64 + 7, len, 1.0);
                let mut expected = out.clone();
                axpy_f16(level, 0.37, &k, &mut out);
                axpy_f16(Level::Portable, 0.37, &k, &mut expected);
                assert_eq!(out, expected, "{level:?} len {len}");
            }
        }
    }

    #[test]
    fn rms_norm_matches_a_scalar_reference() {
        for len in [1, 5, 576, 577] {
            let x = values(3, len, 4.0);
            let w = values(4, len, 1.0);
            let mut out = vec![0f32; len];
            rms_norm(&x, &w, 1e-5, &mut out);
            let mean: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / len as f64;
            for ((o, v), w) in out.iter().zip(&x).zip(&w) {
                let expected = *v as f64 / (mean + 1e-5).sqrt() * *w as f64;
                assert!((*o as f64 - expected).abs() < 1e-5 * (1.0 + expected.abs()), "len {len}");
            }
        }
    }
}
