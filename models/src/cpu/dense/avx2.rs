//! The AVX2+FMA micro-kernels, shaped for sixteen 256-bit registers: a
//! panel's 32 columns are taken as two halves of sixteen, and each half
//! by blocks of up to [`ROWS`] rows, so a block keeps twelve accumulators,
//! two vectors of widened weights and one broadcast activation in fifteen
//! registers (the 6x16 shape of BLIS's Haswell kernel). The AVX-512 body's
//! 12 rows by 32 columns would need 48 such registers; compiled for AVX2 it
//! spilled on every step.
//!
//! Each half reads its weights once per block of rows: 64 bytes a step for
//! f32 (one cache line of the panel's 128), 32 for f16 and bf16. f16
//! widens with `vcvtph2ps`, bf16 with a shift (even steps) or a mask (odd
//! steps) of the 32-bit words that hold a column's two steps, so every
//! product is the f32 product of the stored values, as on the other levels.
//! The bf16-pair kernel (activations rounded to bf16, see
//! [`products_bf16`](super::products_bf16)) adds each pair in the portable
//! body's order, odd step first, so the two agree bit for bit.

use std::arch::x86_64::*;

use half::bf16;

use super::{Element, Kernel, Kind, Start, PANEL};

/// Rows of one register block.
const ROWS: usize = 6;
/// Columns of one half panel (two AVX2 vectors).
const HALF: usize = 16;

/// Calls `$body::<H, $w, ..>(args)` for a block of `$height` rows (1 to [`ROWS`]).
macro_rules! by_block {
    ($height:expr, $body:ident::<$w:literal $(, $ty:ty)*>($($arg:expr),*)) => {
        match $height {
            1 => $body::<1, $w $(, $ty)*>($($arg),*),
            2 => $body::<2, $w $(, $ty)*>($($arg),*),
            3 => $body::<3, $w $(, $ty)*>($($arg),*),
            4 => $body::<4, $w $(, $ty)*>($($arg),*),
            5 => $body::<5, $w $(, $ty)*>($($arg),*),
            _ => $body::<6, $w $(, $ty)*>($($arg),*),
        }
    };
}

/// Where one block's sums go and start from: rows of `c` (stride `ldc`)
/// from the block's first column, of which `columns` are real (at most
/// the block's width matters).
#[derive(Clone, Copy)]
struct Block {
    c: *mut f32,
    ldc: usize,
    columns: usize,
    start: Start,
}

/// The lanes of the first `columns` of `8 * W`, as `vmaskmovps` masks.
#[inline(always)]
unsafe fn masks<const W: usize>(columns: usize) -> [__m256i; W] {
    // SAFETY: plain AVX arithmetic on registers.
    unsafe {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let limit = _mm256_set1_epi32(columns as i32);
        std::array::from_fn(|v| _mm256_cmpgt_epi32(limit, _mm256_add_epi32(lanes, _mm256_set1_epi32(8 * v as i32))))
    }
}

/// `H` rows of sums of `8 * W` columns, started from their biases (plus
/// `c` for [`Start::Output`]).
///
/// # Safety
/// `bias` points at `8 * W` values; `block.c` at `H` rows with
/// `block.columns` initialised values each for [`Start::Output`]; AVX2.
#[inline(always)]
unsafe fn start<const H: usize, const W: usize>(bias: *const f32, block: Block) -> [[__m256; W]; H] {
    // SAFETY: the caller's bounds; masked loads touch only real columns.
    unsafe {
        let b: [__m256; W] = std::array::from_fn(|v| _mm256_loadu_ps(bias.add(8 * v)));
        let mut acc = [b; H];
        if block.start == Start::Output {
            let m = masks::<W>(block.columns);
            for (r, sums) in acc.iter_mut().enumerate() {
                let row = block.c.add(r * block.ldc);
                for (v, sum) in sums.iter_mut().enumerate() {
                    *sum = _mm256_add_ps(*sum, _mm256_maskload_ps(row.add(8 * v), m[v]));
                }
            }
        }
        acc
    }
}

/// Writes the real columns of `H` rows of sums.
///
/// # Safety
/// `block.c` points at `H` rows with `block.columns` writable values; AVX2.
#[inline(always)]
unsafe fn store<const H: usize, const W: usize>(acc: &[[__m256; W]; H], block: Block) {
    // SAFETY: the caller's bounds.
    unsafe {
        if block.columns >= 8 * W {
            for (r, sums) in acc.iter().enumerate() {
                let row = block.c.add(r * block.ldc);
                for (v, sum) in sums.iter().enumerate() {
                    _mm256_storeu_ps(row.add(8 * v), *sum);
                }
            }
        } else {
            let m = masks::<W>(block.columns);
            for (r, sums) in acc.iter().enumerate() {
                let row = block.c.add(r * block.ldc);
                for (v, sum) in sums.iter().enumerate() {
                    _mm256_maskstore_ps(row.add(8 * v), m[v], *sum);
                }
            }
        }
    }
}

/// Eight stored weights from `w` as f32 (not bf16, whose steps are interleaved).
///
/// # Safety
/// `w` points at eight values; AVX2 and F16C.
#[inline(always)]
unsafe fn load8<E: Element>(w: *const E) -> __m256 {
    // SAFETY: the caller's bounds and features.
    unsafe {
        match E::KIND {
            Kind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.cast())),
            Kind::F32 | Kind::BF16 => _mm256_loadu_ps(w.cast()),
        }
    }
}

/// The even (`ODD = false`) or odd step of eight bf16 columns held as
/// 32-bit words of two steps each, as f32.
///
/// # Safety
/// `w` points at eight words; AVX2.
#[inline(always)]
unsafe fn load8_bf16<const ODD: bool, E>(w: *const E) -> __m256 {
    // SAFETY: the caller's bounds.
    unsafe {
        let words = _mm256_loadu_si256(w.cast());
        _mm256_castsi256_ps(if ODD {
            _mm256_and_si256(words, _mm256_set1_epi32(0xffff_0000u32 as i32))
        } else {
            _mm256_slli_epi32(words, 16)
        })
    }
}

/// Adds `x_r * w` for every row `r` to its `W` sums.
#[inline(always)]
unsafe fn fma_rows<const H: usize, const W: usize>(
    acc: &mut [[__m256; W]; H],
    w: [__m256; W],
    x: impl Fn(usize) -> __m256,
) {
    // SAFETY: register arithmetic; `x` is the caller's.
    unsafe {
        for (r, sums) in acc.iter_mut().enumerate() {
            let x = x(r);
            for (sum, w) in sums.iter_mut().zip(w) {
                *sum = _mm256_fmadd_ps(x, w, *sum);
            }
        }
    }
}

/// One block: `H` rows of f32 activations (`a`, `lda` apart) against
/// `8 * W` columns of a panel from column `first`.
///
/// # Safety
/// As [`micro`](super::micro) for these rows and columns; AVX2, FMA, F16C.
#[inline(always)]
unsafe fn block_f32<const H: usize, const W: usize, E: Element>(
    a: *const f32,
    lda: usize,
    panel: *const E,
    first: usize,
    bias: *const f32,
    block: Block,
) {
    // SAFETY: `panel` holds `lda` steps of PANEL (bf16: rounded up to a
    // pair, the padding step zero); `a` has H rows of `lda`.
    unsafe {
        let mut acc = start::<H, W>(bias, block);
        let x = |r: usize, k: usize| _mm256_broadcast_ss(&*a.add(r * lda + k));
        if E::KIND == Kind::BF16 {
            let mut w = panel.add(2 * first);
            let mut k = 0;
            while k + 1 < lda {
                let even = std::array::from_fn(|v| load8_bf16::<false, _>(w.add(16 * v)));
                fma_rows(&mut acc, even, |r| x(r, k));
                let odd = std::array::from_fn(|v| load8_bf16::<true, _>(w.add(16 * v)));
                fma_rows(&mut acc, odd, |r| x(r, k + 1));
                w = w.add(2 * PANEL);
                k += 2;
            }
            if k < lda {
                let even = std::array::from_fn(|v| load8_bf16::<false, _>(w.add(16 * v)));
                fma_rows(&mut acc, even, |r| x(r, k));
            }
        } else {
            let mut w = panel.add(first);
            for k in 0..lda {
                fma_rows(&mut acc, std::array::from_fn(|v| load8(w.add(8 * v))), |r| x(r, k));
                w = w.add(PANEL);
            }
        }
        store(&acc, block);
    }
}

/// One block of the bf16-pair product: `H` rows of activation words
/// (two bf16 steps each) against `8 * W` columns of a bf16 panel from
/// column `first`.
///
/// # Safety
/// As [`micro`](super::micro) for these rows and columns; AVX2 and FMA.
#[inline(always)]
unsafe fn block_pairs<const H: usize, const W: usize>(
    a: *const u32,
    lda: usize,
    panel: *const bf16,
    first: usize,
    bias: *const f32,
    block: Block,
) {
    // SAFETY: `panel` holds `lda` pairs of PANEL weights, `a` H rows of `lda` words.
    unsafe {
        let mut acc = start::<H, W>(bias, block);
        let mut w = panel.add(2 * first);
        for p in 0..lda {
            let word = |r: usize| *a.add(r * lda + p);
            let odd = std::array::from_fn(|v| load8_bf16::<true, _>(w.add(16 * v)));
            fma_rows(&mut acc, odd, |r| _mm256_set1_ps(f32::from_bits(word(r) & 0xffff_0000)));
            let even = std::array::from_fn(|v| load8_bf16::<false, _>(w.add(16 * v)));
            fma_rows(&mut acc, even, |r| _mm256_set1_ps(f32::from_bits(word(r) << 16)));
            w = w.add(2 * PANEL);
        }
        store(&acc, block);
    }
}

/// Runs `body(rows, first, a_offset, block)` over the blocks of `height`
/// rows: one or two rows take the whole panel at once (four accumulator
/// chains a row, where a half would leave the row waiting on two), more
/// rows take each half with at most [`ROWS`] rows. `wide` is whether the
/// block spans the whole panel.
#[inline(always)]
fn blocks<A, E>(
    height: usize,
    kernel: &Kernel<'_, A, E>,
    c: *mut f32,
    mut body: impl FnMut(usize, bool, usize, usize, Block),
) {
    let block = |first: usize, row: usize| Block {
        c: c.wrapping_add(row * kernel.ldc + first),
        ldc: kernel.ldc,
        columns: kernel.columns.saturating_sub(first),
        start: kernel.start,
    };
    if height <= 2 {
        return body(height, true, 0, 0, block(0, 0));
    }
    for half in 0..PANEL / HALF {
        let first = half * HALF;
        if kernel.columns <= first {
            break;
        }
        let mut row = 0;
        while row < height {
            let rows = (height - row).min(ROWS);
            let mut out = block(first, row);
            out.columns = out.columns.min(HALF);
            body(rows, false, first, row * kernel.lda, out);
            row += rows;
        }
    }
}

/// `height` rows (1 to [`KERNEL_ROWS`](super::KERNEL_ROWS)) of f32
/// activations by one panel.
///
/// # Safety
/// As [`micro`](super::micro), on a CPU with AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn micro_avx2<E: Element>(height: usize, kernel: Kernel<'_, f32, E>, c: *mut f32) {
    let (a, lda, panel) = (kernel.a.as_ptr(), kernel.lda, kernel.panel.as_ptr());
    blocks(height, &kernel, c, |rows, wide, first, offset, out| {
        let bias = kernel.bias[first..].as_ptr();
        // SAFETY: `blocks` keeps every block inside the caller's rows and
        // the panel's real columns; the features are this function's.
        unsafe {
            let a = a.add(offset);
            match (rows, wide) {
                (1, true) => block_f32::<1, 4, E>(a, lda, panel, first, bias, out),
                (_, true) => block_f32::<2, 4, E>(a, lda, panel, first, bias, out),
                _ => by_block!(rows, block_f32::<2, E>(a, lda, panel, first, bias, out)),
            }
        }
    });
}

/// `height` rows of bf16-pair activations by one bf16 panel.
///
/// # Safety
/// As [`micro`](super::micro), on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn micro_pairs_avx2(height: usize, kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    let (a, lda, panel) = (kernel.a.as_ptr(), kernel.lda, kernel.panel.as_ptr());
    blocks(height, &kernel, c, |rows, wide, first, offset, out| {
        let bias = kernel.bias[first..].as_ptr();
        // SAFETY: as in `micro_avx2`.
        unsafe {
            let a = a.add(offset);
            match (rows, wide) {
                (1, true) => block_pairs::<1, 4>(a, lda, panel, first, bias, out),
                (_, true) => block_pairs::<2, 4>(a, lda, panel, first, bias, out),
                _ => by_block!(rows, block_pairs::<2>(a, lda, panel, first, bias, out)),
            }
        }
    });
}
