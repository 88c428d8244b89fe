//! Dense products and the element-wise operations of an encoder layer: what
//! a BERT-family embedder spends its time in, and the products of chat
//! models whose weights are stored as F32, F16 or BF16.
//!
//! [`PackedMatrix`] holds a linear layer's weight (`[out][in]`, PyTorch's
//! layout) repacked at load into panels of [`PANEL`] output columns, each
//! panel `[in][PANEL]`, so the kernel reads one contiguous run per step of
//! the inner dimension. Panels keep the weights' own precision ([`Element`]:
//! f32, f16 or bf16) and the micro-kernel widens each run to f32 as it loads
//! it, so an f16 matrix reads half the bytes and every product is an f32
//! product of the stored values. bf16 panels interleave neighbouring steps
//! (`[in / 2][PANEL][2]`), the layout of `vdpbf16ps`: [`products_bf16`]
//! multiplies them with activations rounded to bf16 ([`round_to_bf16_pairs`]),
//! two products per lane per instruction where the CPU has AVX-512 BF16, as
//! llama.cpp does for bf16 weights. [`matmul`] computes `out = a · wᵀ + bias`
//! on the pool in tiles of up to [`BLOCK_ROWS`] rows by [`GROUP_PANELS`]
//! panels; the micro-kernel keeps a 12-row by 32-column block of `out` in
//! registers (twenty-four AVX-512 accumulators), starts it from the bias (or
//! from `out`, to accumulate), and each tile is finished while it is still
//! in cache by its [`Epilogue`] (GELU, or the residual added).
//!
//! # Layout
//! - `panels`: [`PackedMatrix`] and its panels ([`Kind`], [`Element`]);
//!   bf16 activation pairs ([`round_to_bf16_pairs`]).
//! - `portable`: the plain-Rust micro-kernels.
//! - `avx2`: the AVX2+FMA micro-kernels (6 rows by 16 columns in registers).
//! - `x86`: the AVX-512 and AVX-512 BF16 micro-kernels.
//! - `neon`: the NEON micro-kernel (arm64).
//! - `attention`: one query row's softmax attention ([`attend_row`]), [`dot`], [`axpy`].
//! - `elementwise`: GELU, [`erf`] and [`layer_norm`].
//! - `tests`: every level against an f64 reference, bf16 rounding, the element-wise operations.
//!
//! This file holds the products themselves: [`matmul`] on the pool, the
//! walk over tiles and panels, and the dispatch to a micro-kernel by
//! [`Level`].

mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod elementwise;
#[cfg(target_arch = "aarch64")]
mod neon;
mod panels;
mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::bf16;

pub use attention::{attend_row, axpy, dot};
#[cfg(target_arch = "x86_64")]
use avx2::{micro_avx2, micro_pairs_avx2};
pub(crate) use elementwise::exp_negative;
use elementwise::gelu_tanh;
pub use elementwise::{erf, gelu, layer_norm};
#[cfg(target_arch = "aarch64")]
use neon::micro_neon;
use panels::Panels;
pub use panels::{round_to_bf16_pairs, Element, Kind, PackedMatrix};
use portable::{micro_pairs_portable, micro_portable};
#[cfg(target_arch = "x86_64")]
use x86::{micro_avx512, micro_dpbf16};

use crate::cpu::{Level, Pool};

/// Whether this build's baseline CPU fuses multiply-adds (every arm64 CPU;
/// an x86-64 one only in a build for it). Without the feature
/// `f32::mul_add` is a call into compiler-builtins, a software routine
/// where the hardware has no FMA, and about a hundred times slower than a
/// multiply and an add even where it has: the portable bodies then round
/// twice ([`madd`]), and only the levels compiled with FMA fuse.
pub(crate) const BASELINE_FMA: bool = cfg!(any(target_arch = "aarch64", target_feature = "fma"));

/// `a * b + c`, in one rounding when `FUSED`, in two otherwise.
#[inline(always)]
pub(crate) fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Output columns per packed panel (two AVX-512 vectors).
pub const PANEL: usize = 32;
/// Rows the micro-kernel holds in registers.
const KERNEL_ROWS: usize = 12;
/// Rows of `out` per pool chunk.
const BLOCK_ROWS: usize = 72;
/// Most panels of `out` per pool chunk.
const GROUP_PANELS: usize = 4;
/// Multiply-adds a pool chunk aims at (about 100 us on one core), so a
/// helper's chunk never looks like a helper that lost its core to the pool
/// (400 us).
const CHUNK_WORK: usize = 4 << 20;

/// What happens to each tile of `out` once its products are summed.
#[derive(Debug, Clone, Copy)]
pub enum Epilogue<'a> {
    /// Nothing: `out = a · wᵀ + bias`.
    Bias,
    /// `out = gelu(a · wᵀ + bias)` with the exact (erf) GELU.
    Gelu,
    /// `out = gelu_tanh(a · wᵀ + bias)`, the tanh approximation.
    GeluTanh,
    /// `out = max(0, a · wᵀ + bias)`.
    Relu,
    /// `out = a · wᵀ + bias + residual`, `residual` shaped like `out`.
    Residual(&'a [f32]),
}

/// Where the micro-kernel's sums start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// From the bias: `c = a · wᵀ + bias`.
    Bias,
    /// From `c` itself: `c += a · wᵀ + bias`.
    Output,
}

/// `out = epilogue(a · wᵀ + bias)` for `a` of `m` rows of `w.cols()`, `out`
/// of `m` rows of `w.rows()`, both row-major.
pub fn matmul(
    pool: &Pool,
    level: Level,
    a: &[f32],
    m: usize,
    w: &PackedMatrix,
    epilogue: Epilogue<'_>,
    out: &mut [f32],
) {
    let (k, n) = (w.cols, w.rows);
    assert!(a.len() >= m * k, "a has {} values, not {m}x{k}", a.len());
    assert!(out.len() >= m * n, "out has {} values, not {m}x{n}", out.len());
    if let Epilogue::Residual(residual) = epilogue {
        assert!(residual.len() >= m * n, "residual has {} values, not {m}x{n}", residual.len());
    }
    if m == 0 || n == 0 {
        return;
    }
    let blocks = m.div_ceil(BLOCK_ROWS);
    let per_group = (CHUNK_WORK / (BLOCK_ROWS * PANEL * k.max(1))).clamp(1, GROUP_PANELS);
    let groups = w.panel_count().div_ceil(per_group);
    let target = Target(out.as_mut_ptr());
    pool.run(blocks * groups, &|chunk| {
        let (block, group) = (chunk / groups, chunk % groups);
        let rows = block * BLOCK_ROWS..((block + 1) * BLOCK_ROWS).min(m);
        let first = group * per_group;
        let panels = first..(first + per_group).min(w.panel_count());
        // SAFETY: chunks are distinct (block, group) pairs, so each writes a
        // tile of `out` (its rows by its panels' columns) no other chunk
        // touches; `a`, `w` and `out` were checked to be large enough.
        unsafe { tile(level, a, w, rows, panels, epilogue, target, n) };
    });
}

/// `out`'s base pointer, shared by chunks that write disjoint tiles.
#[derive(Clone, Copy)]
struct Target(*mut f32);

// SAFETY: only used by `matmul`, whose chunks write disjoint tiles.
unsafe impl Sync for Target {}
// SAFETY: as above.
unsafe impl Send for Target {}

/// One pool chunk: rows `rows` of `out` for the columns of `panels`.
///
/// # Safety
/// `a` holds the rows, `out` has `n` columns and the rows, and no other
/// thread touches this tile.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    level: Level,
    a: &[f32],
    w: &PackedMatrix,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    epilogue: Epilogue<'_>,
    out: Target,
    n: usize,
) {
    // SAFETY: forwarded.
    unsafe { products(level, a, w, rows.clone(), panels.clone(), out.0, n, Start::Bias) };
    let start = panels.start * PANEL;
    let end = (panels.end * PANEL).min(n);
    for row in rows {
        // SAFETY: this row's columns of the tile belong to this chunk alone.
        let values = unsafe { std::slice::from_raw_parts_mut(out.0.add(row * n + start), end - start) };
        match epilogue {
            Epilogue::Bias => {}
            Epilogue::Gelu => gelu(level, values),
            Epilogue::GeluTanh => values.iter_mut().for_each(|x| *x = gelu_tanh(*x)),
            Epilogue::Relu => values.iter_mut().for_each(|x| *x = x.max(0.0)),
            Epilogue::Residual(residual) => {
                for (x, r) in values.iter_mut().zip(&residual[row * n + start..row * n + end]) {
                    *x += r;
                }
            }
        }
    }
}

/// `c = a · wᵀ + bias` for every row of `a` (`m` rows of `w.cols()`),
/// on this thread; `c` has row stride `ldc`.
///
/// # Safety
/// `c` points at `m` rows of stride `ldc`, each with `w.rows()` writable values.
pub(crate) unsafe fn matmul_serial(level: Level, a: &[f32], m: usize, w: &PackedMatrix, c: *mut f32, ldc: usize) {
    assert!(a.len() >= m * w.cols, "a has {} values, not {m}x{}", a.len(), w.cols);
    // SAFETY: the caller's bounds.
    unsafe { products(level, a, w, 0..m, 0..w.panel_count(), c, ldc, Start::Bias) };
}

/// Rows `rows` of `c` for the columns of `panels` (whose first column is
/// `c`'s column `panels.start * PANEL`), micro-kernel by micro-kernel.
///
/// # Safety
/// `a` holds the rows; `c` has stride `ldc` and those rows and columns
/// writable (and initialised, for [`Start::Output`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn products(
    level: Level,
    a: &[f32],
    w: &PackedMatrix,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    assert!(panels.end <= w.panel_count() && a.len() >= rows.end * w.cols, "products out of range");
    // SAFETY: forwarded.
    unsafe {
        match &w.panels {
            Panels::F32(values) => products_in(level, a, w, values, rows, panels, c, ldc, start),
            Panels::F16(values) => products_in(level, a, w, values, rows, panels, c, ldc, start),
            Panels::BF16(values) => products_in(level, a, w, values, rows, panels, c, ldc, start),
        }
    }
}

/// [`products`] for one element type.
///
/// # Safety
/// As [`products`].
#[allow(clippy::too_many_arguments)]
unsafe fn products_in<E: Element>(
    level: Level,
    a: &[f32],
    w: &PackedMatrix,
    stored: &[E],
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    let size = E::KIND.depth(w.cols) * PANEL;
    // SAFETY: forwarded.
    unsafe {
        walk(a, w.cols, w, stored, size, rows, panels, c, ldc, start, |height, kernel, c| {
            micro(level, height, kernel, c)
        })
    }
}

/// Calls `micro(height, kernel, c)` for every micro-kernel's worth of rows
/// `rows` (activations `lda` apart in `a`) and every panel of `panels`
/// (`size` stored weights each).
///
/// # Safety
/// As [`products`]; `micro` may rely on its `height` rows being in range.
#[allow(clippy::too_many_arguments)]
unsafe fn walk<A, E>(
    a: &[A],
    lda: usize,
    w: &PackedMatrix,
    stored: &[E],
    size: usize,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
    micro: impl Fn(usize, Kernel<'_, A, E>, *mut f32),
) {
    for panel in panels {
        let columns = (w.rows - panel * PANEL).min(PANEL);
        let weights = &stored[panel * size..(panel + 1) * size];
        let bias = &w.bias[panel * PANEL..(panel + 1) * PANEL];
        let mut row = rows.start;
        while row < rows.end {
            let height = (rows.end - row).min(KERNEL_ROWS);
            let kernel = Kernel { a: &a[row * lda..], lda, panel: weights, bias, ldc, columns, start };
            micro(height, kernel, c.wrapping_add(row * ldc + panel * PANEL));
            row += height;
        }
    }
}

/// [`products`] of a bf16 matrix with activations rounded to bf16:
/// `pairs` holds every row's [`round_to_bf16_pairs`] words (`w.cols()`
/// halves, rounded up, a row). Each pair of products is summed in f32
/// (`vdpbf16ps` with AVX-512 BF16, fused multiply-adds of the widened
/// values otherwise), so levels agree to f32 rounding, not bit for bit.
///
/// # Safety
/// As [`products`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn products_bf16(
    level: Level,
    pairs: &[u32],
    w: &PackedMatrix,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    start: Start,
) {
    let Panels::BF16(stored) = &w.panels else {
        panic!("bf16 products of a {:?} matrix", w.kind());
    };
    let words = w.cols.div_ceil(2);
    assert!(panels.end <= w.panel_count() && pairs.len() >= rows.end * words, "products out of range");
    let size = words * 2 * PANEL;
    let micro = |height, kernel: Kernel<'_, u32, bf16>, c| {
        // SAFETY: the caller's bounds; `walk` hands `height` rows that are
        // in range; each body only runs where the CPU has its features.
        unsafe {
            match level {
                #[cfg(target_arch = "x86_64")]
                Level::Avx512Bf16 => by_height!(height, micro_dpbf16(kernel, c)),
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 | Level::Avx512Vnni => micro_pairs_avx2(height, kernel, c),
                _ => by_height!(height, micro_pairs_portable(kernel, c)),
            }
        }
    };
    // SAFETY: forwarded.
    unsafe { walk(pairs, words, w, stored, size, rows, panels, c, ldc, start, micro) }
}

/// The operands of one micro-kernel call.
#[derive(Clone, Copy)]
struct Kernel<'a, A, E> {
    /// The first row of activations (`lda` apart): f32 values, or words of
    /// two bf16 values.
    a: &'a [A],
    lda: usize,
    /// A panel of weights (see [`Kind::slot`]).
    panel: &'a [E],
    /// `PANEL` biases.
    bias: &'a [f32],
    /// Stride of `c`.
    ldc: usize,
    /// Columns of `c` that are real (the rest of the panel is padding).
    columns: usize,
    start: Start,
}

/// Calls a micro-kernel body instantiated for `height` rows (1 to
/// [`KERNEL_ROWS`]): `by_height!(height, body::<Types>(args))` calls
/// `body::<height, Types>(args)` (the types are optional).
macro_rules! by_height {
    ($height:expr, $kernel:ident $(::<$($ty:ty),*>)?($($arg:expr),*)) => {
        match $height {
            1 => $kernel::<1 $($(, $ty)*)?>($($arg),*),
            2 => $kernel::<2 $($(, $ty)*)?>($($arg),*),
            3 => $kernel::<3 $($(, $ty)*)?>($($arg),*),
            4 => $kernel::<4 $($(, $ty)*)?>($($arg),*),
            5 => $kernel::<5 $($(, $ty)*)?>($($arg),*),
            6 => $kernel::<6 $($(, $ty)*)?>($($arg),*),
            7 => $kernel::<7 $($(, $ty)*)?>($($arg),*),
            8 => $kernel::<8 $($(, $ty)*)?>($($arg),*),
            9 => $kernel::<9 $($(, $ty)*)?>($($arg),*),
            10 => $kernel::<10 $($(, $ty)*)?>($($arg),*),
            11 => $kernel::<11 $($(, $ty)*)?>($($arg),*),
            _ => $kernel::<12 $($(, $ty)*)?>($($arg),*),
        }
    };
}
use by_height;

/// One micro-kernel call on the best body `level` allows.
///
/// # Safety
/// `c` points at `height` rows of stride `ldc` with `columns` writable values each.
unsafe fn micro<E: Element>(level: Level, height: usize, kernel: Kernel<'_, f32, E>, c: *mut f32) {
    debug_assert!(
        kernel.a.len() >= (height - 1) * kernel.lda + kernel.lda
            && kernel.panel.len() >= E::KIND.depth(kernel.lda) * PANEL
            && kernel.bias.len() >= PANEL
    );
    // SAFETY: the caller's bounds; each body is only chosen when the CPU has its features.
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni | Level::Avx512Bf16 => by_height!(height, micro_avx512::<E>(kernel, c)),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => micro_avx2::<E>(height, kernel, c),
            #[cfg(target_arch = "aarch64")]
            Level::Neon | Level::NeonDot => by_height!(height, micro_neon::<E>(kernel, c)),
            _ => by_height!(height, micro_portable::<E>(kernel, c)),
        }
    }
}
