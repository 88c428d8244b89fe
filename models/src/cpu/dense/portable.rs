//! The micro-kernels in plain Rust, one panel by up to
//! [`KERNEL_ROWS`](super::KERNEL_ROWS) rows (f32 panels of f32, f16 or
//! bf16 weights, and bf16 pairs): the levels without a kernel of their own
//! run them, and the tests hold every other level to them.

use half::bf16;

use super::{madd, Element, Kernel, Kind, Start, BASELINE_FMA, PANEL};

/// Step `k` of a panel of stored weights as f32.
#[inline(always)]
fn widen_step<E: Element>(panel: &[E], k: usize) -> [f32; PANEL] {
    if E::KIND == Kind::BF16 {
        return std::array::from_fn(|lane| panel[Kind::BF16.slot(k, lane)].widen());
    }
    let run = &panel[k * PANEL..(k + 1) * PANEL];
    std::array::from_fn(|i| run[i].widen())
}

/// The sums of `R` rows of a plain-Rust micro-kernel, started from the
/// bias or from `c` plus the bias.
///
/// # Safety
/// As [`micro`](super::micro).
#[inline(always)]
unsafe fn start_rows<const R: usize>(
    bias: &[f32],
    start: Start,
    c: *const f32,
    ldc: usize,
    columns: usize,
) -> [[f32; PANEL]; R] {
    let mut acc = [[0f32; PANEL]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        match start {
            Start::Bias => row.copy_from_slice(&bias[..PANEL]),
            // SAFETY: the caller's bounds: `columns` values of row `r` are initialised.
            Start::Output => unsafe {
                std::ptr::copy_nonoverlapping(c.add(r * ldc), row.as_mut_ptr(), columns);
                for (sum, b) in row.iter_mut().zip(bias) {
                    *sum += b;
                }
            },
        }
    }
    acc
}

/// Writes the real columns of `R` rows of sums to `c`.
///
/// # Safety
/// As [`micro`](super::micro).
#[inline(always)]
unsafe fn store_rows<const R: usize>(acc: &[[f32; PANEL]; R], c: *mut f32, ldc: usize, columns: usize) {
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: the caller's bounds.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), columns) };
    }
}

/// The micro-kernel in plain Rust: `R` rows by one panel.
///
/// # Safety
/// As [`micro`](super::micro).
#[inline(always)]
unsafe fn micro_body<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    // SAFETY: the caller's bounds.
    let mut acc = unsafe { start_rows::<R>(bias, start, c, ldc, columns) };
    for k in 0..lda {
        let weights = widen_step::<E>(panel, k);
        for (r, row) in acc.iter_mut().enumerate() {
            let x = a[r * lda + k];
            for (sum, w) in row.iter_mut().zip(&weights) {
                *sum = madd::<BASELINE_FMA>(x, *w, *sum);
            }
        }
    }
    // SAFETY: the caller's bounds.
    unsafe { store_rows(&acc, c, ldc, columns) };
}

/// # Safety
/// As [`micro`](super::micro).
pub(super) unsafe fn micro_portable<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    // SAFETY: forwarded.
    unsafe { micro_body::<R, E>(kernel, c) }
}

/// The bf16-pair micro-kernel in plain Rust: each pair of products added
/// in `vdpbf16ps`'s documented order (the odd step, then the even one;
/// the products of two bf16 values are exact in f32).
///
/// # Safety
/// As [`micro`](super::micro).
#[inline(always)]
unsafe fn micro_pairs_body<const R: usize>(kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    // SAFETY: the caller's bounds.
    let mut acc = unsafe { start_rows::<R>(bias, start, c, ldc, columns) };
    for (p, pair) in panel.chunks_exact(2 * PANEL).take(lda).enumerate() {
        let even: [f32; PANEL] = std::array::from_fn(|lane| pair[2 * lane].widen());
        let odd: [f32; PANEL] = std::array::from_fn(|lane| pair[2 * lane + 1].widen());
        for (r, row) in acc.iter_mut().enumerate() {
            let word = a[r * lda + p];
            let (x_even, x_odd) = (f32::from_bits(word << 16), f32::from_bits(word & 0xffff_0000));
            for ((sum, w_even), w_odd) in row.iter_mut().zip(&even).zip(&odd) {
                *sum = madd::<BASELINE_FMA>(x_even, *w_even, madd::<BASELINE_FMA>(x_odd, *w_odd, *sum));
            }
        }
    }
    // SAFETY: the caller's bounds.
    unsafe { store_rows(&acc, c, ldc, columns) };
}

/// # Safety
/// As [`micro`](super::micro).
pub(super) unsafe fn micro_pairs_portable<const R: usize>(kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    // SAFETY: forwarded.
    unsafe { micro_pairs_body::<R>(kernel, c) }
}
