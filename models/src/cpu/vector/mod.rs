//! The small vector operations of a transformer layer, each in the
//! arithmetic of llama.cpp's CPU backend on an AVX-512 machine, where that is
//! what its logits depend on: RMS norm (squares summed in f64,
//! `x * (1 / sqrt(mean + eps))`, then the weight); the f16 products of
//! attention in the two orders llama.cpp uses (see [`Order`]); and ggml's
//! vectorised `expf` (`ggml_v_expf`, a polynomial with `scalef`) in the
//! softmax, whose sum is taken sixteen exponentials at a time, and in SiLU.
//!
//! Each kernel has a portable body and an AVX2 body that returns the same
//! bits (the f16 attention kernels' AVX2 bodies are in `avx2`, the AVX-512
//! ones here); [`Level`] picks one at run time. On arm64 these run the
//! portable bodies, which the compiler vectorises for the baseline NEON.
//!
//! # Layout
//! - `avx2`: the f16 attention kernels (scores, weighted sums of values) with AVX2.
//! - `tests`: every level against the portable bodies and scalar references.

use half::f16;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Which instruction sets the kernels may use, detected once at run time.
///
/// One order serves both architectures because a CPU only ever runs the
/// levels of its own: an arm64 machine runs `Portable`, `Neon` and
/// `NeonDot`; an x86-64 one `Portable` and the AVX levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain Rust, any CPU.
    Portable,
    /// arm64's Advanced SIMD (every arm64 CPU has it).
    Neon,
    /// NEON plus the dot-product extension (`sdot`, four byte products
    /// per lane per instruction; Armv8.4 and many 8.2 cores).
    NeonDot,
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
    /// (`portable`, `neon`, `neondot`, `avx2`, `avx512`, `avx512bf16`)
    /// when set; detected once. Any other value is warned about and caps
    /// nothing.
    pub fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let cap = match std::env::var("AIOS_CPU_LEVEL") {
                Ok(name) => Self::from_cap_name(&name).unwrap_or_else(|| {
                    tracing::warn!(
                        value = %name,
                        "AIOS_CPU_LEVEL is not one of portable, neon, neondot, avx2, avx512, avx512bf16; kernels are not capped"
                    );
                    Self::Avx512Bf16
                }),
                Err(_) => Self::Avx512Bf16,
            };
            // The best this CPU has at or below the cap (an x86 name caps
            // nothing on arm64, and `neon` caps x86 to portable).
            Self::available().into_iter().filter(|level| *level <= cap).max().unwrap_or(Self::Portable)
        })
    }

    /// The level an `$AIOS_CPU_LEVEL` value caps at.
    pub fn from_cap_name(name: &str) -> Option<Self> {
        [Self::Portable, Self::Neon, Self::NeonDot, Self::Avx2, Self::Avx512Vnni, Self::Avx512Bf16]
            .into_iter()
            .find(|level| level.cap_name() == name)
    }

    /// The `$AIOS_CPU_LEVEL` value that caps the kernels at this level.
    pub fn cap_name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Neon => "neon",
            Self::NeonDot => "neondot",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512",
            Self::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Every level this CPU can run (tests check each against the portable one).
    pub fn available() -> Vec<Self> {
        // Only x86-64 and arm64 add levels; elsewhere the list stays as it starts.
        #[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(unused_mut))]
        let mut levels = vec![Self::Portable];
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") {
                levels.push(Self::Neon);
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    levels.push(Self::NeonDot);
                }
            }
        }
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
            Self::Neon => "neon",
            Self::NeonDot => "neon+dotprod",
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

/// Attention scores of one query row `q` (already rounded to f16 values)
/// against `scores.len()` f16 keys, key `t` at `keys[t * stride..][..q.len()]`:
/// `scores[t] = dot_f16(level, order, q, key_t) * scale`, bit for bit.
/// Returns the largest score (NaN scores aside). With AVX-512, sixteen keys
/// are taken at a time and their sixteen-lane sums reduced together.
pub fn scores_f16(
    level: Level,
    order: Order,
    q: &[f32],
    keys: &[f16],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
) -> f32 {
    let d = q.len();
    if let Some(last) = scores.len().checked_sub(1) {
        assert!(keys.len() >= last * stride + d, "{} keys of {d} need more than {} values", scores.len(), keys.len());
    }
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx512Vnni {
        macro_rules! fast {
            ($quarters:literal, $gemv:literal) => {
                // SAFETY: the CPU has AVX-512F at this level; the keys were checked above.
                return unsafe { scores_avx512::<$quarters, $gemv>(q, keys, stride, scale, scores) }
            };
        }
        match (order, d) {
            (Order::Gemv, 64) => fast!(4, true),
            (Order::Gemv, 128) => fast!(8, true),
            (Order::Gemm, 16) => fast!(1, false),
            (Order::Gemm, 32) => fast!(2, false),
            (Order::Gemm, 48) => fast!(3, false),
            (Order::Gemm, 64) => fast!(4, false),
            (Order::Gemm, 80) => fast!(5, false),
            (Order::Gemm, 96) => fast!(6, false),
            (Order::Gemm, 112) => fast!(7, false),
            (Order::Gemm, 128) => fast!(8, false),
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        let rest = |t: usize| dot_f16(level, order, q, &keys[t * stride..][..d]);
        macro_rules! fast {
            ($quarters:literal, $gemv:literal) => {
                // SAFETY: the CPU has AVX2, FMA and F16C at this level; the keys were checked above.
                return unsafe { avx2::scores::<$quarters, $gemv>(q, keys, stride, scale, scores, rest) }
            };
        }
        match (order, d) {
            (Order::Gemv, 64) => fast!(4, true),
            (Order::Gemv, 128) => fast!(8, true),
            (Order::Gemm, 16) => fast!(1, false),
            (Order::Gemm, 32) => fast!(2, false),
            (Order::Gemm, 48) => fast!(3, false),
            (Order::Gemm, 64) => fast!(4, false),
            (Order::Gemm, 80) => fast!(5, false),
            (Order::Gemm, 96) => fast!(6, false),
            (Order::Gemm, 112) => fast!(7, false),
            (Order::Gemm, 128) => fast!(8, false),
            _ => {}
        }
    }
    let mut max = f32::NEG_INFINITY;
    for (t, score) in scores.iter_mut().enumerate() {
        *score = dot_f16(level, order, q, &keys[t * stride..][..d]) * scale;
        max = max.max(*score);
    }
    max
}

/// `out = sum_t weights[t] * value_t` over f16 values (value `t` at
/// `values[t * stride..][..out.len()]`), added up as llama.cpp adds them
/// for `order`: position `t` into accumulator row `t % order.lanes()` with
/// fused multiply-adds, the rows combined by [`Order::finish`].
pub fn weighted_sum_f16(level: Level, order: Order, weights: &[f32], values: &[f16], stride: usize, out: &mut [f32]) {
    let d = out.len();
    if let Some(last) = weights.len().checked_sub(1) {
        assert!(values.len() >= last * stride + d, "{} values of {d} need more than {}", weights.len(), values.len());
    }
    #[cfg(target_arch = "x86_64")]
    {
        if level >= Level::Avx512Vnni && d.is_multiple_of(16) {
            // SAFETY: the CPU has AVX-512F at this level; the values were checked above.
            return unsafe {
                match order {
                    Order::Gemm => weighted_sum_avx512::<16>(weights, values, stride, out),
                    Order::Gemv => weighted_sum_avx512::<64>(weights, values, stride, out),
                }
            };
        }
        if level >= Level::Avx2 && d.is_multiple_of(8) {
            // SAFETY: `Level::Avx2` and above are only produced when the CPU has AVX2, FMA and F16C; the values were checked above.
            return unsafe {
                match order {
                    Order::Gemm => avx2::weighted_sum::<16>(weights, values, stride, out),
                    Order::Gemv => avx2::weighted_sum::<64>(weights, values, stride, out),
                }
            };
        }
        if level >= Level::Avx2 {
            // SAFETY: as above.
            return unsafe { weighted_sum_fma(order, weights, values, stride, out) };
        }
    }
    let _ = level;
    weighted_sum_body(order, weights, values, stride, out)
}

/// [`weighted_sum_f16`] sixteen columns at a time, the accumulator rows of
/// a group on the stack.
#[inline(always)]
fn weighted_sum_body(order: Order, weights: &[f32], values: &[f16], stride: usize, out: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let rows = order.lanes();
    // Rows past the positions stay zero.
    let used = rows.min(weights.len());
    for (group, out) in out.chunks_mut(16).enumerate() {
        let (first, width) = (group * 16, out.len());
        let mut lanes = [[0f32; 16]; 64];
        let mut value = [0f32; 16];
        for (t, weight) in weights.iter().enumerate() {
            values[t * stride + first..][..width].convert_to_f32_slice(&mut value[..width]);
            for (sum, v) in lanes[t % rows].iter_mut().zip(&value[..width]) {
                *sum = weight.mul_add(*v, *sum);
            }
        }
        let mut partial = [0f32; 64];
        for (i, out) in out.iter_mut().enumerate() {
            for (p, lane) in partial[..used].iter_mut().zip(&lanes) {
                *p = lane[i];
            }
            *out = order.finish(&partial);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_sum_fma(order: Order, weights: &[f32], values: &[f16], stride: usize, out: &mut [f32]) {
    weighted_sum_body(order, weights, values, stride, out);
}

/// [`scores_f16`] with AVX-512 for `Q` sixteen-lane quarters of `q` in
/// llama.cpp's Gemm order, or (`GEMV`) for `Q / 4` runs of 64 in its Gemv
/// order.
///
/// # Safety
/// The CPU has AVX-512F; `keys` holds every key.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scores_avx512<const Q: usize, const GEMV: bool>(
    q: &[f32],
    keys: &[f16],
    stride: usize,
    scale: f32,
    scores: &mut [f32],
) -> f32 {
    use std::arch::x86_64::*;
    let count = scores.len();
    // SAFETY: `q` has 16 * Q values; every key `t < count` has them at
    // `t * stride` (checked by the caller); scores are stored under a mask
    // of the positions that exist.
    unsafe {
        let query: [__m512; Q] = std::array::from_fn(|j| _mm512_loadu_ps(q.as_ptr().add(16 * j)));
        let keys = keys.as_ptr().cast::<u16>();
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for first in (0..count).step_by(16) {
            let mut sums = [_mm512_setzero_ps(); 16];
            for (slot, sum) in sums.iter_mut().enumerate() {
                // `reduce16x16` hands back slot 4s + q in lane 4q + s.
                let t = first + 4 * (slot % 4) + slot / 4;
                if t >= count {
                    continue;
                }
                let key = keys.add(t * stride);
                let product = |j: usize, acc: __m512| {
                    let k = _mm512_cvtph_ps(_mm256_loadu_si256(key.add(16 * j).cast()));
                    _mm512_fmadd_ps(query[j], k, acc)
                };
                *sum = if GEMV {
                    // Element i into accumulator i % 64 / 16, runs of 64 in turn.
                    let mut acc = [_mm512_setzero_ps(); 4];
                    for j in 0..Q {
                        acc[j % 4] = product(j, acc[j % 4]);
                    }
                    _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]))
                } else {
                    (0..Q).fold(_mm512_setzero_ps(), |acc, j| product(j, acc))
                };
            }
            let scaled = _mm512_mul_ps(reduce16x16(sums), _mm512_set1_ps(scale));
            let mask: __mmask16 = if count - first >= 16 { 0xffff } else { (1u16 << (count - first)) - 1 };
            _mm512_mask_storeu_ps(scores.as_mut_ptr().add(first), mask, scaled);
            // A NaN score leaves the maximum alone, as `f32::max` does.
            max = _mm512_mask_max_ps(max, mask, scaled, max);
        }
        _mm512_reduce_max_ps(max)
    }
}

/// Sixteen [`reduce16`]s at once: lane `4q + s` of the result is
/// `reduce16(sums[4s + q])`, each added in the same tree.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn reduce16x16(sums: [std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: register operations only, under the caller's features.
    unsafe {
        // Halves: lanes i and i + 8 of two sums, side by side.
        let halves: [__m512; 8] = std::array::from_fn(|p| {
            let (a, b) = (sums[2 * p], sums[2 * p + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b))
        });
        // Quarters: lanes i and i + 4, four sums to a register.
        let quarters: [__m512; 4] = std::array::from_fn(|p| {
            let (a, b) = (halves[2 * p], halves[2 * p + 1]);
            _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b))
        });
        // Within each 128-bit lane: t0 + t2 and t1 + t3 ...
        let pairs: [__m512; 2] = std::array::from_fn(|p| {
            let (a, b) = (quarters[2 * p], quarters[2 * p + 1]);
            _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xee>(a, b))
        });
        // ... then their sum.
        _mm512_add_ps(_mm512_shuffle_ps::<0x88>(pairs[0], pairs[1]), _mm512_shuffle_ps::<0xdd>(pairs[0], pairs[1]))
    }
}

/// [`weighted_sum_f16`] with AVX-512, sixteen columns at a time: `ROWS`
/// accumulator rows (16 for the Gemm order, 64 for Gemv), combined lane by
/// lane in [`Order::finish`]'s tree.
///
/// # Safety
/// The CPU has AVX-512F; `values` holds every value; `out.len()` is a
/// multiple of sixteen.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum_avx512<const ROWS: usize>(weights: &[f32], values: &[f16], stride: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let count = weights.len();
    let values = values.as_ptr().cast::<u16>();
    for column in (0..out.len()).step_by(16) {
        // SAFETY: value `t < count` has `out.len()` values at `t * stride`
        // (checked by the caller); `column + 16 <= out.len()`.
        unsafe {
            let mut rows = [_mm512_setzero_ps(); ROWS];
            for first in (0..count).step_by(ROWS) {
                for (row, sum) in rows.iter_mut().enumerate() {
                    let t = first + row;
                    if t < count {
                        let v = _mm512_cvtph_ps(_mm256_loadu_si256(values.add(t * stride + column).cast()));
                        *sum = _mm512_fmadd_ps(_mm512_set1_ps(weights[t]), v, *sum);
                    }
                }
            }
            let lanes: [__m512; 16] = std::array::from_fn(|l| match ROWS {
                64 => _mm512_add_ps(_mm512_add_ps(rows[l], rows[32 + l]), _mm512_add_ps(rows[16 + l], rows[48 + l])),
                _ => rows[l],
            });
            // `reduce16`'s tree, lane by lane.
            let halves: [__m512; 8] = std::array::from_fn(|i| _mm512_add_ps(lanes[i], lanes[i + 8]));
            let quarters: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(halves[i], halves[i + 4]));
            let total = _mm512_add_ps(_mm512_add_ps(quarters[0], quarters[2]), _mm512_add_ps(quarters[1], quarters[3]));
            _mm512_storeu_ps(out.as_mut_ptr().add(column), total);
        }
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

#[cfg(test)]
mod tests;
