//! The dense products against an f64 reference on awkward shapes at every
//! dispatch level this CPU runs, bf16 rounding as ggml rounds, and the
//! element-wise operations.

use half::{bf16, f16};

use super::panels::Stored;
use super::*;
use crate::cpu::test_values;

/// `a · wᵀ + bias` in f64, one product at a time.
fn reference(a: &[f32], w: &[f32], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[j * k + p] as f64).sum();
            out[i * n + j] = (dot + bias[j] as f64) as f32;
        }
    }
    out
}

#[test]
fn every_level_matches_the_scalar_product_on_awkward_shapes() {
    let pool = Pool::new(2);
    for (m, n, k) in
        [(1, 1, 1), (2, 40, 3), (3, 5, 7), (7, 50, 40), (9, 33, 17), (70, 47, 130), (130, 200, 64), (8, 32, 384)]
    {
        let seed = (m * 1000 + n * 10 + k) as u64;
        let a = test_values(seed, m * k, 1.0);
        let w = test_values(seed + 1, n * k, 0.5);
        let bias = test_values(seed + 2, n, 0.5);
        let residual = test_values(seed + 3, m * n, 1.0);
        let expected = reference(&a, &w, &bias, m, n, k);
        let packed = PackedMatrix::new(&w, n, k, Some(&bias));
        let staged = PackedMatrix::from_rows(n, k, |row, out| out.copy_from_slice(&w[row * k..(row + 1) * k]));
        assert_eq!(f32_panels(&staged), f32_panels(&PackedMatrix::new(&w, n, k, None)), "{m}x{n}x{k} from_rows");
        for level in Level::available() {
            let mut out = vec![f32::NAN; m * n];
            matmul(&pool, level, &a, m, &packed, Epilogue::Bias, &mut out);
            for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                let tolerance = 1e-5 * (k as f32).sqrt().max(1.0);
                assert!((got - want).abs() <= tolerance, "{level:?} {m}x{n}x{k} at {i}: {got} vs {want}");
            }
            let mut with_residual = vec![f32::NAN; m * n];
            matmul(&pool, level, &a, m, &packed, Epilogue::Residual(&residual), &mut with_residual);
            for i in 0..m * n {
                assert!((with_residual[i] - (out[i] + residual[i])).abs() <= 1e-6, "{level:?} residual at {i}");
            }
            let mut activated = vec![f32::NAN; m * n];
            matmul(&pool, level, &a, m, &packed, Epilogue::Gelu, &mut activated);
            for i in 0..m * n {
                let x = out[i] as f64;
                let want = 0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2));
                assert!((activated[i] as f64 - want).abs() <= 1e-6, "{level:?} gelu at {i}");
            }
        }
    }
}

fn f32_panels(matrix: &PackedMatrix) -> &[f32] {
    match &matrix.panels {
        Panels::F32(values) => values,
        _ => panic!("not f32"),
    }
}

/// f16 and bf16 panels: every level gives the f32 product of the stored
/// values, both starting from the bias and accumulating into `c`, and
/// rows read back as stored.
#[test]
fn half_precision_panels_multiply_their_stored_values() {
    fn check<E: Element + Stored>(narrow: impl Fn(f32) -> E) {
        let pool = Pool::new(2);
        for (m, n, k) in
            [(1, 1, 1), (1, 33, 576), (2, 40, 9), (3, 70, 17), (7, 20, 33), (8, 40, 16), (9, 47, 130), (65, 96, 64)]
        {
            let seed = (m * 7 + n * 3 + k) as u64;
            let a = test_values(seed, m * k, 1.0);
            let stored: Vec<E> = test_values(seed + 1, n * k, 0.5).into_iter().map(&narrow).collect();
            let widened: Vec<f32> = stored.iter().map(|v| v.widen()).collect();
            let bias = test_values(seed + 2, n, 0.5);
            let expected = reference(&a, &widened, &bias, m, n, k);
            let packed = PackedMatrix::new(&stored, n, k, Some(&bias));
            assert_eq!(packed.kind(), E::KIND);
            assert_eq!(packed.weight_bytes(), n * k * 2);
            for row in [0, n / 2, n - 1] {
                let mut out = vec![f32::NAN; k];
                packed.row_into(row, &mut out);
                assert_eq!(out, widened[row * k..(row + 1) * k], "{:?} row {row}", E::KIND);
            }
            let tolerance = 1e-5 * (k as f32).sqrt().max(1.0);
            for level in Level::available() {
                let mut out = vec![f32::NAN; m * n];
                matmul(&pool, level, &a, m, &packed, Epilogue::Bias, &mut out);
                for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                    assert!(
                        (got - want).abs() <= tolerance,
                        "{:?} {level:?} {m}x{n}x{k} at {i}: {got} vs {want}",
                        E::KIND
                    );
                }
                // Accumulating into a strided `c`, a few panels at a time.
                let ldc = n + 3;
                let before = test_values(seed + 3, m * ldc, 1.0);
                let mut c = before.clone();
                let count = packed.panel_count();
                for panels in [0..count / 2, count / 2..count] {
                    // SAFETY: `c` has `m` rows of stride `ldc >= n`, all initialised.
                    unsafe { products(level, &a, &packed, 0..m, panels, c.as_mut_ptr(), ldc, Start::Output) };
                }
                for row in 0..m {
                    for col in 0..ldc {
                        let (got, old) = (c[row * ldc + col], before[row * ldc + col]);
                        let want = if col < n { old + expected[row * n + col] } else { old };
                        assert!(
                            (got - want).abs() <= tolerance,
                            "{:?} {level:?} accumulate {row},{col}: {got} vs {want}",
                            E::KIND
                        );
                    }
                }
            }
        }
    }
    check(f16::from_f32);
    check(bf16::from_f32);
}

/// bf16 weights times activations rounded to bf16 pairs: every level
/// (`vdpbf16ps` included where the CPU has it) gives the product of the
/// rounded values, from the bias and accumulating into a strided `c`,
/// on odd widths too.
#[test]
fn bf16_pairs_multiply_the_rounded_activations() {
    for (m, n, k) in [(1, 1, 1), (1, 33, 576), (2, 5, 3), (7, 20, 33), (8, 40, 15), (9, 47, 131), (17, 64, 64)] {
        let seed = (m * 11 + n * 5 + k) as u64;
        let a = test_values(seed, m * k, 2.0);
        let words = k.div_ceil(2);
        let mut pairs = vec![u32::MAX; m * words];
        round_to_bf16_pairs(&a, k, &mut pairs);
        let rounded: Vec<f32> = a.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
        let stored: Vec<bf16> = test_values(seed + 1, n * k, 0.5).into_iter().map(bf16::from_f32).collect();
        let widened: Vec<f32> = stored.iter().map(|v| v.widen()).collect();
        let bias = test_values(seed + 2, n, 0.5);
        let expected = reference(&rounded, &widened, &bias, m, n, k);
        let packed = PackedMatrix::new(&stored, n, k, Some(&bias));
        let tolerance = 2e-5 * (k as f32).sqrt().max(1.0);
        for level in Level::available() {
            let ldc = n + 2;
            let before = test_values(seed + 3, m * ldc, 1.0);
            let mut assigned = before.clone();
            let mut added = before.clone();
            let count = packed.panel_count();
            // SAFETY: both have `m` rows of stride `ldc >= n`, all initialised.
            unsafe {
                products_bf16(level, &pairs, &packed, 0..m, 0..count, assigned.as_mut_ptr(), ldc, Start::Bias);
                for panels in [0..count / 2, count / 2..count] {
                    products_bf16(level, &pairs, &packed, 0..m, panels, added.as_mut_ptr(), ldc, Start::Output);
                }
            }
            for row in 0..m {
                for col in 0..ldc {
                    let old = before[row * ldc + col];
                    let product = if col < n { expected[row * n + col] } else { 0.0 };
                    let (got, want) = (assigned[row * ldc + col], if col < n { product } else { old });
                    assert!((got - want).abs() <= tolerance, "{level:?} {m}x{n}x{k} at {row},{col}: {got} vs {want}");
                    let (got, want) = (added[row * ldc + col], old + product);
                    assert!((got - want).abs() <= tolerance, "{level:?} {m}x{n}x{k} add {row},{col}: {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn activations_round_to_bf16_as_ggml_rounds_them() {
    let mut values = test_values(3, 999, 1e3);
    values.extend([0.0, -0.0, 1.0, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, f32::NEG_INFINITY]);
    // Halfway cases: both neighbours' parities, and a carry into the exponent.
    values.extend([0x3f80_8000, 0x3f81_8000, 0x3fff_8000, 0x3f80_8001].map(f32::from_bits));
    values.extend([f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffc1_2345)]);
    for cols in [values.len(), 3, 1] {
        let rows = values.len() / cols;
        let words = cols.div_ceil(2);
        let mut pairs = vec![u32::MAX; rows * words];
        round_to_bf16_pairs(&values[..rows * cols], cols, &mut pairs);
        for (i, value) in values[..rows * cols].iter().enumerate() {
            let word = pairs[(i / cols) * words + (i % cols) / 2];
            let half = if i % cols % 2 == 0 { word & 0xffff } else { word >> 16 };
            let want = bf16::from_f32(*value);
            if value.is_nan() {
                assert!(bf16::from_bits(half as u16).is_nan(), "{value} at {i}");
                assert_eq!(half & 0x40, 0x40, "{value:?} at {i} stays a quiet NaN");
            } else {
                assert_eq!(half as u16, want.to_bits(), "{value:e} ({:#x}) at {i}", value.to_bits());
            }
        }
        if cols % 2 == 1 {
            assert!(pairs.chunks(words).all(|row| row[words - 1] >> 16 == 0), "odd rows end in a zero half");
        }
    }
}

#[test]
fn erf_is_within_its_bound_everywhere() {
    let mut worst = 0f64;
    for i in -200_000..=200_000 {
        let x = i as f32 * 5e-5;
        let error = (erf(x) as f64 - candle_core::cpu::erf::erf_f64(x as f64)).abs();
        worst = worst.max(error);
    }
    for x in [-20.0f32, -9.0, 9.0, 100.0, f32::MAX, -f32::MAX] {
        assert_eq!(erf(x), x.signum(), "erf({x})");
    }
    assert!(erf(0.0).abs() < 6e-7);
    assert!(worst < 6e-7, "worst error {worst}");
}

#[test]
fn layer_norm_centres_and_scales() {
    let original = test_values(7, 45, 3.0);
    let weight = test_values(8, 45, 1.0);
    let bias = test_values(9, 45, 1.0);
    let mean = original.iter().map(|v| *v as f64).sum::<f64>() / 45.0;
    let variance = original.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / 45.0;
    for level in Level::available() {
        let mut x = original.clone();
        layer_norm(level, &mut x, &weight, &bias, 1e-12);
        for i in 0..45 {
            let want = (original[i] as f64 - mean) / variance.sqrt() * weight[i] as f64 + bias[i] as f64;
            assert!((x[i] as f64 - want).abs() < 1e-5, "{level:?} at {i}: {} vs {want}", x[i]);
        }
    }
}
