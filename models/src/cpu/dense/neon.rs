//! The NEON micro-kernel (arm64): f32, f16 and bf16 panels against f32
//! activations, accumulated in the portable body's order.

use super::{Element, Kernel, Kind, Start, PANEL};

/// The micro-kernel in NEON: `R` rows by one panel, taken four rows by
/// sixteen columns at a time (sixteen accumulators and four weight
/// registers of NEON's 32), each block re-reading its half panel from
/// cache. Every sum is accumulated in the portable body's order.
///
/// # Safety
/// As [`micro`](super::micro), on a CPU with NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub(super) unsafe fn micro_neon<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    for half in 0..PANEL.div_ceil(16) {
        if half * 16 >= kernel.columns {
            break;
        }
        let mut row = 0;
        while row < R {
            let height = (R - row).min(4);
            // SAFETY: the caller's bounds; rows `row..row + height` are among its `R`.
            unsafe {
                match height {
                    4 => neon_block::<4, E>(kernel, row, half * 16, c),
                    3 => neon_block::<3, E>(kernel, row, half * 16, c),
                    2 => neon_block::<2, E>(kernel, row, half * 16, c),
                    _ => neon_block::<1, E>(kernel, row, half * 16, c),
                }
            }
            row += height;
        }
    }
}

/// Rows `first..first + H` by columns `column..column + 16` of a panel.
///
/// # Safety
/// As [`micro`](super::micro), for rows `first..first + H`, on a CPU with NEON.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn neon_block<const H: usize, E: Element>(kernel: Kernel<'_, f32, E>, first: usize, column: usize, c: *mut f32) {
    use std::arch::aarch64::*;
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    let real = (columns - column).min(16);
    // SAFETY: `bias` has PANEL values, the rows of `c` `columns` each (and
    // initialised ones for `Start::Output`), `a` H rows of `lda` values
    // from row `first`, and `panel` `lda` steps.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 4]; H];
        for (r, sums) in acc.iter_mut().enumerate() {
            let mut init = [0f32; 16];
            init.copy_from_slice(&bias[column..column + 16]);
            if start == Start::Output {
                let row = c.add((first + r) * ldc + column);
                for (j, value) in init.iter_mut().enumerate().take(real) {
                    *value += *row.add(j);
                }
            }
            for (v, sum) in sums.iter_mut().enumerate() {
                *sum = vld1q_f32(init.as_ptr().add(4 * v));
            }
        }
        let a = a.as_ptr().add(first * lda);
        for k in 0..lda {
            let mut weights = [vdupq_n_f32(0.0); 4];
            if E::KIND == Kind::F32 {
                let run = panel.as_ptr().add(k * PANEL + column).cast::<f32>();
                for (v, w) in weights.iter_mut().enumerate() {
                    *w = vld1q_f32(run.add(4 * v));
                }
            } else {
                let widened: [f32; 16] = std::array::from_fn(|lane| panel[E::KIND.slot(k, column + lane)].widen());
                for (v, w) in weights.iter_mut().enumerate() {
                    *w = vld1q_f32(widened.as_ptr().add(4 * v));
                }
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                let x = *a.add(r * lda + k);
                for (sum, w) in sums.iter_mut().zip(&weights) {
                    *sum = vfmaq_n_f32(*sum, *w, x);
                }
            }
        }
        for (r, sums) in acc.iter().enumerate() {
            let mut out = [0f32; 16];
            for (v, sum) in sums.iter().enumerate() {
                vst1q_f32(out.as_mut_ptr().add(4 * v), *sum);
            }
            std::ptr::copy_nonoverlapping(out.as_ptr(), c.add((first + r) * ldc + column), real);
        }
    }
}
