//! The small vector operations of a transformer layer, each in the
//! arithmetic of llama.cpp's CPU backend on an AVX-512 machine, where that is
//! what its logits depend on: RMS norm (squares summed in f64,
//! `x * (1 / sqrt(mean + eps))`, then the weight); the f16 products of
//! attention in the two orders llama.cpp uses (see [`Order`]); and ggml's
//! vectorised `expf` (`ggml_v_expf`, a polynomial with `scalef`) in the
//! softmax, whose sum is taken sixteen exponentials at a time, and in SiLU.
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
    /// All of the above plus AVX-512 BF16 (`vdpbf16ps`, two bf16 products
    /// per lane per instruction).
    Avx512Bf16,
}

impl Level {
    /// The best level this CPU runs, capped by `$AIOS_CPU_LEVEL`
    /// (`portable`, `avx2`, `avx512`, `avx512bf16`) when set; detected once.
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let best = Self::available().into_iter().max().unwrap_or(Self::Portable);
            let cap = match std::env::var("AIOS_CPU_LEVEL").as_deref() {
                Ok("portable") => Self::Portable,
                Ok("avx2") => Self::Avx2,
                Ok("avx512") => Self::Avx512Vnni,
                _ => Self::Avx512Bf16,
            };
            best.min(cap)
        })
    }

    /// Every level this CPU can run (tests check each against the portable one).
    pub fn available() -> Vec<Self> {
        // Only x86 adds levels; elsewhere the list stays as it starts.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
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
                    if std::is_x86_feature_detected!("avx512bf16") {
                        levels.push(Self::Avx512Bf16);
                    }
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
            Self::Avx512Bf16 => "avx512+vnni+bf16",
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

/// How llama.cpp adds up an f16 product on an AVX-512 machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// One query row (decoding): ggml's `vec_dot_f16`, four sixteen-lane
    /// accumulators over runs of 64 (element `i` in accumulator
    /// `i % 64 / 16`, lane `i % 16`), added as `(a0 + a2) + (a1 + a3)`,
    /// then [`reduce16`]; elements past the last full run in f64.
    Gemv,
    /// Several query rows (a prompt): llamafile's `tinyBLAS`, one
    /// sixteen-lane accumulator (element `i` in lane `i % 16`), then
    /// [`reduce16`].
    Gemm,
}

impl Order {
    /// The order llama.cpp uses for a batch of `rows` query rows.
    pub fn for_rows(rows: usize) -> Order {
        if rows < 2 {
            Order::Gemv
        } else {
            Order::Gemm
        }
    }

    /// Accumulator rows one output needs: 64 or 16.
    pub fn lanes(self) -> usize {
        match self {
            Order::Gemv => 64,
            Order::Gemm => 16,
        }
    }

    /// Adds up `lanes()` partial sums (element `i` went to partial
    /// `i % lanes()`) into the product.
    pub fn finish(self, partial: &[f32]) -> f32 {
        let lanes: [f32; 16] = match self {
            Order::Gemv => {
                std::array::from_fn(|l| (partial[l] + partial[32 + l]) + (partial[16 + l] + partial[48 + l]))
            }
            Order::Gemm => std::array::from_fn(|l| partial[l]),
        };
        reduce16(&lanes)
    }
}

/// `q . k` with `q` already rounded to f16 values, added up in `order`.
pub fn dot_f16(level: Level, order: Order, q: &[f32], k: &[f16]) -> f32 {
    debug_assert_eq!(q.len(), k.len());
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx2 {
            // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2, FMA and F16C.
            return unsafe { dot_f16_avx2(order, q, k) };
        }
    }
    let _ = level;
    dot_f16_portable(order, q, k)
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

/// `gate = silu(gate) * up`, with `silu(x) = x / (1 + e^-x)` and `e^x` as
/// [`exp`] computes it (ggml's `ggml_vec_swiglu_f32`).
pub fn swiglu(level: Level, gate: &mut [f32], up: &[f32]) {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2, FMA and F16C.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { swiglu_fma(gate, up) },
        _ => swiglu_body(gate, up),
    }
}

#[inline(always)]
fn swiglu_body(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(0.0 - *g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_fma(gate: &mut [f32], up: &[f32]) {
    swiglu_body(gate, up);
}

/// `e^(x - max)` of each score in place (the softmax numerators); returns
/// their sum as ggml's `ggml_vec_soft_max_f32` takes it: each run of sixteen
/// reduced in f32 by [`reduce16`] (a short last run padded with the zeros of
/// masked positions), the runs added in f64.
pub fn softmax_numerators(level: Level, scores: &mut [f32], max: f32) -> f64 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `swiglu`.
        Level::Avx2 | Level::Avx512Vnni | Level::Avx512Bf16 => unsafe { softmax_numerators_fma(scores, max) },
        _ => softmax_numerators_body(scores, max),
    }
}

#[inline(always)]
fn softmax_numerators_body(scores: &mut [f32], max: f32) -> f64 {
    let mut sum = 0f64;
    for run in scores.chunks_mut(16) {
        let mut lanes = [0f32; 16];
        for (lane, score) in lanes.iter_mut().zip(run.iter_mut()) {
            *score = exp(*score - max);
            *lane = *score;
        }
        sum += reduce16(&lanes) as f64;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_numerators_fma(scores: &mut [f32], max: f32) -> f64 {
    softmax_numerators_body(scores, max)
}

/// `e^x` as ggml's AVX-512 `ggml_v_expf` computes it (within 1.5 ulp of
/// the true value): `x = n ln 2 + b` with `n` rounded through `1.5 * 2^23`,
/// a degree-5 polynomial in `b`, then `scalef` by `2^n`; beyond
/// `|n| > 192` the result is 0 or infinity.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let shift = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), shift); // log2(e)
    let n = z - shift;
    let b = (-n).mul_add(f32::from_bits(0x35bf_be8e), (-n).mul_add(f32::from_bits(0x3f31_7200), x)); // ln 2, hi and lo
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(u, f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)))
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    if n.is_nan() {
        return f32::NAN;
    }
    // `scalef`: one rounding of `j * 2^n`, also into the subnormals.
    let scale = f64::from_bits(((n as i64 + 1023) as u64) << 52);
    (j as f64 * scale) as f32
}

/// `_mm512_reduce_add_ps`: the halves added lane by lane, then the
/// quarters, then `(t0 + t2) + (t1 + t3)`.
pub fn reduce16(lanes: &[f32; 16]) -> f32 {
    let eighths: [f32; 8] = std::array::from_fn(|i| lanes[i] + lanes[i + 8]);
    let t: [f32; 4] = std::array::from_fn(|i| eighths[i] + eighths[i + 4]);
    (t[0] + t[2]) + (t[1] + t[3])
}

fn dot_f16_portable(order: Order, q: &[f32], k: &[f16]) -> f32 {
    let n = q.len().min(k.len());
    let mut partial = [0f32; 64];
    let width = order.lanes();
    let full = match order {
        Order::Gemv => n - n % 64,
        Order::Gemm => n,
    };
    for i in 0..full {
        partial[i % width] = q[i].mul_add(k[i].to_f32(), partial[i % width]);
    }
    let mut total = order.finish(&partial) as f64;
    for i in full..n {
        total += (q[i] * k[i].to_f32()) as f64;
    }
    total as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_avx2(order: Order, q: &[f32], k: &[f16]) -> f32 {
    use std::arch::x86_64::*;
    let n = q.len().min(k.len());
    let width = order.lanes();
    let full = n - n % width;
    // `width` accumulator lanes as eight-lane registers.
    let mut sums = [_mm256_setzero_ps(); 8];
    let registers = width / 8;
    let qp = q.as_ptr();
    let kp = k.as_ptr() as *const u16;
    let mut i = 0;
    while i < full {
        for (r, sum) in sums[..registers].iter_mut().enumerate() {
            // SAFETY: `i + width <= full <= n` for both slices; unaligned loads.
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(kp.add(i + r * 8) as *const __m128i));
            *sum = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + r * 8)), kv, *sum);
        }
        i += width;
    }
    let mut partial = [0f32; 64];
    for (r, sum) in sums[..registers].iter().enumerate() {
        _mm256_storeu_ps(partial.as_mut_ptr().add(r * 8), *sum);
    }
    match order {
        Order::Gemm => {
            for idx in full..n {
                partial[idx % 16] = q[idx].mul_add(k[idx].to_f32(), partial[idx % 16]);
            }
            order.finish(&partial)
        }
        Order::Gemv => {
            let mut total = order.finish(&partial) as f64;
            for idx in full..n {
                total += (q[idx] * k[idx].to_f32()) as f64;
            }
            total as f32
        }
    }
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
            for order in [Order::Gemv, Order::Gemm] {
                let portable = dot_f16(Level::Portable, order, &q, &k);
                assert!((portable as f64 - reference).abs() < 1e-4 * (1.0 + reference.abs()), "len {len}");
                for level in Level::available() {
                    let bits = dot_f16(level, order, &q, &k).to_bits();
                    assert_eq!(bits, portable.to_bits(), "{level:?} {order:?} len {len}");
                }
            }
            for level in Level::available() {
                let mut out = values(len as u64 + 7, len, 1.0);
                let mut expected = out.clone();
                axpy_f16(level, 0.37, &k, &mut out);
                axpy_f16(Level::Portable, 0.37, &k, &mut expected);
                assert_eq!(out, expected, "{level:?} len {len}");
            }
        }
    }

    #[test]
    fn exp_is_ggml_v_expf() {
        // Bits of ggml's AVX-512 `ggml_v_expf` (llama.cpp's `vec.h` built
        // with gcc -O2 and run on an AVX-512 machine), subnormals included.
        let reference: [(f32, u32); 16] = [
            (0.0, 0x3f80_0000),
            (1.0, 0x402d_f855),
            (-1.0, 0x3ebc_5ab3),
            (0.5, 0x3fd3_094c),
            (-0.5, 0x3f1b_4597),
            (2.5, 0x4142_eb7f),
            (-3.25, 0x3d1e_d1b4),
            (10.0, 0x46ac_14f0),
            (-10.0, 0x383e_6bce),
            (-87.5, 0x006c_b2bc),
            (-95.0, 0x0000_0f64),
            (-103.0, 0x0000_0001),
            (88.0, 0x7ef8_82b7),
            (0.1, 0x3f8d_763c),
            (-0.1, 0x3f67_a36c),
            (-20.3, 0x30d1_dc78),
        ];
        for (x, bits) in reference {
            assert_eq!(exp(x).to_bits(), bits, "e^{x}");
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        for i in -8000..8000 {
            let x = i as f32 / 100.0;
            let relative = (exp(x) as f64 / (x as f64).exp() - 1.0).abs();
            assert!(relative < 4.0 * f32::EPSILON as f64, "e^{x}: {} against {}", exp(x), (x as f64).exp());
        }
    }

    #[test]
    fn level_kernels_return_the_portable_bits() {
        let up = values(11, 100, 1.0);
        let mut expected = values(12, 100, 6.0);
        let mut scores = values(13, 37, 9.0);
        let mut expected_scores = scores.clone();
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = softmax_numerators(Level::Portable, &mut expected_scores, max);
        let gate = expected.clone();
        swiglu(Level::Portable, &mut expected, &up);
        for level in Level::available() {
            let mut out = gate.clone();
            swiglu(level, &mut out, &up);
            assert_eq!(out, expected, "{level:?}");
            let mut numerators = scores.clone();
            assert_eq!(softmax_numerators(level, &mut numerators, max).to_bits(), sum.to_bits(), "{level:?}");
            assert_eq!(numerators, expected_scores, "{level:?}");
        }
        scores.iter_mut().for_each(|s| *s = (*s - max).exp());
        let reference: f64 = scores.iter().map(|s| *s as f64).sum();
        assert!((sum - reference).abs() < 1e-5 * reference, "{sum} against {reference}");
    }

    #[test]
    fn reduce16_adds_in_the_tree_order_of_mm512_reduce_add_ps() {
        // 1 + 2^-24 rounds differently depending on the order of additions.
        let mut lanes = [0f32; 16];
        lanes[0] = 1.0;
        lanes[8] = f32::EPSILON / 2.0;
        lanes[4] = f32::EPSILON / 2.0;
        // (1 + e/2) rounds to 1, then + e/2 rounds to 1 again.
        assert_eq!(reduce16(&lanes), 1.0);
        lanes[8] = 0.0;
        lanes[12] = f32::EPSILON / 2.0;
        // Lanes 4 and 12 meet first (e/2 + e/2 = e), then 1 + e is exact;
        // adding from left to right would give 1.
        assert_eq!(reduce16(&lanes), 1.0 + f32::EPSILON);
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
