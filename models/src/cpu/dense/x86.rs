//! The AVX-512 micro-kernels: f32, f16 and bf16 panels against f32
//! activations (AVX-512F), and bf16 panels against bf16 pairs with
//! `vdpbf16ps` (AVX-512 BF16), `R` rows by 32 columns in `2R` accumulators.

use std::arch::x86_64::*;

use half::bf16;

use super::{Element, Kernel, Kind, Start, PANEL};

/// Sixteen stored weights from `w` as f32.
///
/// # Safety
/// `w` points at sixteen values; the CPU has AVX-512F.
#[inline(always)]
unsafe fn load16<E: Element>(w: *const E) -> __m512 {
    // SAFETY: the caller's bounds and features.
    unsafe {
        match E::KIND {
            Kind::F32 => _mm512_loadu_ps(w.cast()),
            Kind::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(w.cast())),
            Kind::BF16 => {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(w.cast())), 16))
            }
        }
    }
}

/// The AVX-512 masks of the real columns of a panel (its low and high
/// sixteen).
#[inline(always)]
fn column_masks(columns: usize) -> [u16; 2] {
    let low = if columns >= 16 { 0xffff } else { (1u16 << columns) - 1 };
    let high = if columns >= 32 {
        0xffff
    } else if columns <= 16 {
        0
    } else {
        (1u16 << (columns - 16)) - 1
    };
    [low, high]
}

/// What every AVX-512 micro-kernel does around its loop: `R` rows of sums
/// (low and high sixteen columns) started from the bias, or from `c` plus
/// the bias; `add(sums, a, w, lda)` adds the products, given the first
/// activation, the panel's first weight and the activations' stride; the
/// sums are written to `c` under the column masks.
///
/// # Safety
/// As [`micro`](super::micro), on a CPU with AVX-512F; `add` reads only
/// the kernel's `R` rows of activations and its panel.
#[inline(always)]
unsafe fn with_sums<const R: usize, A, E>(
    kernel: Kernel<'_, A, E>,
    c: *mut f32,
    add: impl FnOnce(&mut [[__m512; 2]; R], *const A, *const E, usize),
) {
    let Kernel { a, lda, panel, bias, ldc, columns, start } = kernel;
    let masks = column_masks(columns);
    // SAFETY: `bias` has PANEL values; the caller's rows of `c` are read
    // and written under the column masks.
    unsafe {
        let low = _mm512_loadu_ps(bias.as_ptr());
        let high = _mm512_loadu_ps(bias.as_ptr().add(16));
        let mut acc = [[low, high]; R];
        if start == Start::Output {
            for (r, sums) in acc.iter_mut().enumerate() {
                let row = c.add(r * ldc);
                sums[0] = _mm512_add_ps(sums[0], _mm512_maskz_loadu_ps(masks[0], row));
                sums[1] = _mm512_add_ps(sums[1], _mm512_maskz_loadu_ps(masks[1], row.add(16)));
            }
        }
        add(&mut acc, a.as_ptr(), panel.as_ptr(), lda);
        for (r, sums) in acc.iter().enumerate() {
            let row = c.add(r * ldc);
            _mm512_mask_storeu_ps(row, masks[0], sums[0]);
            _mm512_mask_storeu_ps(row.add(16), masks[1], sums[1]);
        }
    }
}

/// The AVX-512 micro-kernel: `R` rows by 32 columns in `2R` accumulators.
/// bf16 panels are read a pair of steps at a time: each 32-bit lane holds
/// one column's two weights, which a shift and a mask widen.
///
/// # Safety
/// As [`micro`](super::micro), on a CPU with AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn micro_avx512<const R: usize, E: Element>(kernel: Kernel<'_, f32, E>, c: *mut f32) {
    // SAFETY: every pointer stays inside the slices (`panel` has `lda`
    // steps of PANEL, rounded up to a pair for bf16; `a` has R rows of
    // `lda`); the rest as `with_sums` asks.
    unsafe {
        with_sums::<R, _, _>(kernel, c, |acc, a, mut w, lda| {
            if E::KIND == Kind::BF16 {
                let high_half = _mm512_set1_epi32(0xffff_0000u32 as i32);
                for k in (0..lda).step_by(2) {
                    let [low, high] = [_mm512_loadu_si512(w.cast()), _mm512_loadu_si512(w.add(PANEL).cast())];
                    let even = [low, high].map(|run| _mm512_castsi512_ps(_mm512_slli_epi32(run, 16)));
                    let odd = [low, high].map(|run| _mm512_castsi512_ps(_mm512_and_si512(run, high_half)));
                    for (r, sums) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*a.add(r * lda + k));
                        sums[0] = _mm512_fmadd_ps(x, even[0], sums[0]);
                        sums[1] = _mm512_fmadd_ps(x, even[1], sums[1]);
                        if k + 1 < lda {
                            let x = _mm512_set1_ps(*a.add(r * lda + k + 1));
                            sums[0] = _mm512_fmadd_ps(x, odd[0], sums[0]);
                            sums[1] = _mm512_fmadd_ps(x, odd[1], sums[1]);
                        }
                    }
                    w = w.add(2 * PANEL);
                }
            } else {
                for k in 0..lda {
                    let w0 = load16(w);
                    let w1 = load16(w.add(16));
                    for (r, sums) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*a.add(r * lda + k));
                        sums[0] = _mm512_fmadd_ps(x, w0, sums[0]);
                        sums[1] = _mm512_fmadd_ps(x, w1, sums[1]);
                    }
                    w = w.add(PANEL);
                }
            }
        })
    }
}

/// The AVX-512 BF16 micro-kernel: `R` rows by 32 columns, each
/// `vdpbf16ps` adding two steps' products to sixteen sums.
///
/// # Safety
/// As [`micro`](super::micro), on a CPU with AVX-512F and AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn micro_dpbf16<const R: usize>(kernel: Kernel<'_, u32, bf16>, c: *mut f32) {
    // SAFETY: as in `micro_avx512`: `panel` has `lda` pairs of PANEL
    // weights, `a` R rows of `lda` words. `__m512i` and `__m512bh` are
    // both 64 bytes, so the transmutes only relabel lanes.
    unsafe {
        with_sums::<R, _, _>(kernel, c, |acc, a, mut w, lda| {
            for p in 0..lda {
                let low: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.cast()));
                let high: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(PANEL).cast()));
                for (r, sums) in acc.iter_mut().enumerate() {
                    let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                    sums[0] = _mm512_dpbf16_ps(sums[0], low, x);
                    sums[1] = _mm512_dpbf16_ps(sums[1], high, x);
                }
                w = w.add(2 * PANEL);
            }
        })
    }
}
