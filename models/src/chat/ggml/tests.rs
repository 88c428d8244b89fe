//! The block kernels against a plain scalar reference on awkward shapes, at
//! every dispatch level this CPU runs, and the quantisation round trips.

use candle_core::{Device, Tensor};
use proptest::prelude::*;

use super::blocks::{round_half_even, RowBlocks};
use super::kernels::{dot_portable, dot_rows4, dot_tile};
use super::*;
use crate::cpu::test_values as values;
use crate::cpu::Pool;

const FORMATS: [GgmlDType; 3] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0];

/// A `[rows, cols]` matrix quantised by candle (ggml's reference
/// quantisers), as ours and as candle's dequantised f32.
fn matrix(format: GgmlDType, rows: usize, cols: usize, seed: u64) -> (BlockMatrix, Vec<Vec<f32>>) {
    let weights = Tensor::from_vec(values(seed, rows * cols, 0.5), (rows, cols), &Device::Cpu).expect("tensor");
    let quantized = QTensor::quantize(&weights, format).expect("quantize");
    let dequantized = quantized.dequantize(&Device::Cpu).expect("dequantize").to_vec2::<f32>().expect("vec");
    let Linear::Ggml(matrix) = Linear::new(quantized).expect("linear") else {
        panic!("{format:?} should use the ggml kernels");
    };
    let Ok(Matrix::Blocks(matrix)) = std::sync::Arc::try_unwrap(matrix) else {
        panic!("{format:?} should be a block matrix");
    };
    (matrix, dequantized)
}

/// The block matrix inside.
fn blocks(matrix: &Matrix) -> &BlockMatrix {
    match matrix {
        Matrix::Blocks(matrix) => matrix,
        Matrix::Dense(_) => panic!("not a block matrix"),
    }
}

fn quantized(rows: usize, cols: usize, seed: u64) -> Vec<ActivationBlock> {
    let mut blocks = vec![ActivationBlock::default(); rows * cols / BLOCK];
    quantize_rows(&values(seed, rows * cols, 2.0), &mut blocks);
    blocks
}

/// The plain scalar reference: f64 sums of dequantised weights times
/// dequantised activations (`q * d`; for Q4_1 the minimum times the block
/// sum ggml stores).
fn reference(matrix: &BlockMatrix, row: usize, activations: &[ActivationBlock]) -> (f64, f64) {
    let weights = matrix.row(row);
    let (mut total, mut magnitude) = (0f64, 0f64);
    for (idx, act) in activations.iter().enumerate() {
        let dequantized = {
            let mut out = vec![0f32; matrix.cols];
            matrix.dequantize_row_into(row, &mut out);
            out
        };
        for (j, q) in act.quants.iter().enumerate() {
            let w = match matrix.format {
                BlockFormat::Q4_1 => dequantized[idx * BLOCK + j] as f64 - weights.min(idx) as f64,
                _ => dequantized[idx * BLOCK + j] as f64,
            };
            let term = w * (*q as f64 * act.scale as f64);
            total += term;
            magnitude += term.abs();
        }
        if matrix.format == BlockFormat::Q4_1 {
            let term = weights.min(idx) as f64 * act.sum as f64;
            total += term;
            magnitude += term.abs();
        }
    }
    (total, magnitude)
}

#[test]
fn every_level_matches_the_portable_kernel_bit_for_bit_and_the_scalar_reference() {
    // Widths of 1, 3, 7 and 18 blocks; row counts that are not multiples of four.
    for format in FORMATS {
        for (rows, blocks) in [(1, 1), (5, 3), (7, 7), (13, 18)] {
            let cols = blocks * BLOCK;
            let (matrix, _) = matrix(format, rows, cols, (rows * blocks) as u64);
            let acts: Vec<Vec<ActivationBlock>> = (0..4).map(|a| quantized(1, cols, 100 + a)).collect();
            for row in 0..rows {
                for act in &acts {
                    let (expected, magnitude) = reference(&matrix, row, act);
                    let error = (dot_portable(matrix.row(row), act) as f64 - expected).abs();
                    assert!(error <= 1e-5 * (1.0 + magnitude), "{format:?} {rows}x{cols} row {row}: {error}");
                }
            }
            for group in 0..rows.div_ceil(GROUP) {
                let blocks = matrix.group(group);
                let portable: Vec<Vec<u32>> = acts
                    .iter()
                    .map(|act| {
                        (0..GROUP).map(|lane| dot_portable(RowBlocks { group: blocks, lane }, act).to_bits()).collect()
                    })
                    .collect();
                for level in Level::available() {
                    let tile = dot_tile(level, blocks, [&acts[0][..], &acts[1][..], &acts[2][..], &acts[3][..]]);
                    for (a, values) in tile.iter().enumerate() {
                        assert_eq!(values.map(f32::to_bits).to_vec(), portable[a], "{level:?} {format:?} tile");
                        let single = dot_rows4(level, blocks, &acts[a]);
                        assert_eq!(single.map(f32::to_bits).to_vec(), portable[a], "{level:?} {format:?} rows");
                    }
                }
            }
        }
    }
}

#[test]
fn fused_pool_products_equal_single_dot_products() {
    let cols = 3 * BLOCK;
    for threads in [1, 2] {
        let pool = Pool::new(threads);
        for n_acts in [1, 3, 5, 9] {
            let acts = quantized(n_acts, cols, n_acts as u64);
            let floats = values(n_acts as u64, n_acts * cols, 2.0);
            let first = Matrix::Blocks(matrix(GgmlDType::Q4_1, 67, cols, 1).0);
            let second = Matrix::Blocks(matrix(GgmlDType::Q8_0, 35, cols, 2).0);
            for level in Level::available() {
                let mut out_first = vec![0f32; n_acts * 67];
                let mut out_second = values(9, n_acts * 35, 1.0);
                let before = out_second.clone();
                matmul(
                    &pool,
                    level,
                    Activations::Quantised { floats: &floats, blocks: &acts, pairs: &[] },
                    &mut [
                        Product { matrix: &first, out: &mut out_first, write: Write::Assign },
                        Product { matrix: &second, out: &mut out_second, write: Write::Add },
                    ],
                );
                for a in 0..n_acts {
                    let act = &acts[a * 3..(a + 1) * 3];
                    for r in 0..67 {
                        assert_eq!(out_first[a * 67 + r].to_bits(), dot_portable(blocks(&first).row(r), act).to_bits());
                    }
                    for r in 0..35 {
                        let expected = before[a * 35 + r] + dot_portable(blocks(&second).row(r), act);
                        assert_eq!(out_second[a * 35 + r].to_bits(), expected.to_bits());
                    }
                }
            }
        }
    }
}

#[test]
fn every_level_dequantises_to_the_same_bits() {
    for format in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let (matrix, _) = matrix(format, 7, 5 * BLOCK, 21);
        for row in 0..7 {
            let portable = matrix.dequantize_row(row);
            for level in Level::available() {
                let mut out = vec![f32::NAN; 5 * BLOCK];
                matrix.dequantize_row_level(level, row, &mut out);
                let same = out.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{level:?} {format:?} row {row}");
            }
        }
    }
}

#[test]
fn exact_products_equal_dequantised_weights_times_f32_activations() {
    let cols = 3 * BLOCK;
    for threads in [1, 2] {
        let pool = Pool::new(threads);
        // 1 to 4 rows take the fused kernel (by twos, then one); 70 rows are
        // more than one chunk of activation rows.
        for n_acts in [1, 2, 3, 4, 9, 20, 70] {
            let x = values(n_acts as u64 + 40, n_acts * cols, 2.0);
            let first = Matrix::Blocks(matrix(GgmlDType::Q4_1, 67, cols, 3).0);
            let second = Matrix::Blocks(matrix(GgmlDType::Q4_0, 35, cols, 4).0);
            let third = Matrix::Blocks(matrix(GgmlDType::Q8_0, 29, cols, 5).0);
            for level in Level::available() {
                let mut out_first = vec![f32::NAN; n_acts * 67];
                let mut out_second = values(11, n_acts * 35, 1.0);
                let mut out_third = vec![f32::NAN; n_acts * 29];
                let before = out_second.clone();
                matmul(
                    &pool,
                    level,
                    Activations::Floats(&x),
                    &mut [
                        Product { matrix: &first, out: &mut out_first, write: Write::Assign },
                        Product { matrix: &second, out: &mut out_second, write: Write::Add },
                        Product { matrix: &third, out: &mut out_third, write: Write::Assign },
                    ],
                );
                let exact = |matrix: &Matrix, a: usize, r: usize| -> f64 {
                    let row = blocks(matrix).dequantize_row(r);
                    row.iter().zip(&x[a * cols..(a + 1) * cols]).map(|(w, v)| *w as f64 * *v as f64).sum()
                };
                for a in 0..n_acts {
                    for r in 0..67 {
                        let want = exact(&first, a, r);
                        assert!((out_first[a * 67 + r] as f64 - want).abs() < 1e-4, "{level:?} {n_acts} {a} {r}");
                    }
                    for r in 0..35 {
                        let want = before[a * 35 + r] as f64 + exact(&second, a, r);
                        assert!((out_second[a * 35 + r] as f64 - want).abs() < 1e-4, "{level:?} {n_acts} {a} {r} add");
                    }
                    for r in 0..29 {
                        let want = exact(&third, a, r);
                        assert!((out_third[a * 29 + r] as f64 - want).abs() < 1e-3, "{level:?} {n_acts} {a} {r} q8");
                    }
                }
            }
        }
    }
}

/// F32, F16 and BF16 tensors become dense panels in their own precision.
/// In a fused job beside a block matrix, under either kind of activations,
/// assigned or accumulated, their products equal the stored weights times
/// the f32 activations; row lookups and the candle tensor path agree.
#[test]
fn float_tensors_multiply_their_activations_in_a_fused_job() {
    let (rows, cols) = (45, 3 * BLOCK);
    for dtype in [GgmlDType::F32, GgmlDType::F16, GgmlDType::BF16] {
        let weights = Tensor::from_vec(values(77, rows * cols, 0.5), (rows, cols), &Device::Cpu).expect("tensor");
        let tensor = QTensor::quantize(&weights, dtype).expect("quantize");
        let stored = tensor.dequantize(&Device::Cpu).expect("dequantize").to_vec2::<f32>().expect("vec");
        let Linear::Ggml(dense) = Linear::new(tensor).expect("linear") else {
            panic!("{dtype:?} should be computed here");
        };
        assert!(matches!(*dense, Matrix::Dense(_)), "{dtype:?}");
        let width = if dtype == GgmlDType::F32 { 4 } else { 2 };
        assert_eq!(dense.file_bytes(), rows * cols * width);
        for (row, expected) in stored.iter().enumerate() {
            let mut out = vec![f32::NAN; cols];
            dense.dequantize_row_into(row, &mut out);
            assert_eq!(&out, expected, "{dtype:?} row {row}");
        }
        let block = Matrix::Blocks(matrix(GgmlDType::Q8_0, 35, cols, 2).0);
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            for n_acts in [1, 4, 13, 70] {
                let x = values(n_acts as u64 + 60, n_acts * cols, 2.0);
                let mut acts = vec![ActivationBlock::default(); n_acts * cols / BLOCK];
                quantize_rows(&x, &mut acts);
                let mut pairs = vec![0u32; n_acts * cols / 2];
                dense::round_to_bf16_pairs(&x, cols, &mut pairs);
                // In a quantised job BF16 weights take the activations rounded to bf16.
                let rounded: Vec<f32> = x.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
                for level in Level::available() {
                    let kinds =
                        [Activations::Quantised { floats: &x, blocks: &acts, pairs: &pairs }, Activations::Floats(&x)];
                    for (activations, write) in kinds.into_iter().zip([Write::Assign, Write::Add]) {
                        let x = match activations {
                            Activations::Quantised { .. } if dtype == GgmlDType::BF16 => &rounded,
                            _ => &x,
                        };
                        let exact = |a: usize, r: usize| -> f64 {
                            stored[r].iter().zip(&x[a * cols..(a + 1) * cols]).map(|(w, v)| *w as f64 * *v as f64).sum()
                        };
                        let before = values(13, n_acts * rows, 1.0);
                        let mut out = before.clone();
                        let mut beside = vec![f32::NAN; n_acts * 35];
                        matmul(
                            &pool,
                            level,
                            activations,
                            &mut [
                                Product { matrix: &dense, out: &mut out, write },
                                Product { matrix: &block, out: &mut beside, write: Write::Assign },
                            ],
                        );
                        for a in 0..n_acts {
                            for r in 0..rows {
                                let base = if write == Write::Add { before[a * rows + r] as f64 } else { 0.0 };
                                let (got, want) = (out[a * rows + r] as f64, base + exact(a, r));
                                assert!(
                                    (got - want).abs() < 1e-4,
                                    "{dtype:?} {level:?} {write:?} {a} {r}: {got} vs {want}"
                                );
                            }
                        }
                        assert!(beside.iter().all(|v| v.is_finite()), "{dtype:?} {level:?} the block product ran");
                    }
                }
            }
        }
        let input = values(5, 5 * cols, 2.0);
        let x = Tensor::from_vec(input.clone(), (5, cols), &Device::Cpu).expect("input");
        let fast = dense.forward(&x).expect("forward").to_vec2::<f32>().expect("vec");
        let input: Vec<f32> = match dtype {
            GgmlDType::BF16 => input.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect(),
            _ => input,
        };
        for (a, row) in fast.iter().enumerate() {
            for (r, got) in row.iter().enumerate() {
                let want: f64 = stored[r].iter().zip(&input[a * cols..]).map(|(w, v)| *w as f64 * *v as f64).sum();
                assert!((*got as f64 - want).abs() < 1e-4, "{dtype:?} candle path {a} {r}");
            }
        }
    }
}

#[test]
fn candle_tensor_path_agrees_with_candle_dequantised_weights() {
    let input = values(5, 5 * 96, 2.0);
    let x = Tensor::from_vec(input.clone(), (5, 96), &Device::Cpu).expect("input");
    for format in FORMATS {
        let (matrix, dequantized) = matrix(format, 64, 96, 3);
        for (row, expected) in dequantized.iter().enumerate() {
            assert_eq!(&matrix.dequantize_row(row), expected, "{format:?} row {row}");
        }
        let fast = Matrix::Blocks(matrix).forward(&x).expect("forward").to_vec2::<f32>().expect("vec");
        let weights = Tensor::new(dequantized, &Device::Cpu).expect("weights");
        let exact = x.matmul(&weights.t().expect("t")).expect("matmul").to_vec2::<f32>().expect("vec");
        for (fast, exact) in fast.iter().flatten().zip(exact.iter().flatten()) {
            assert!((fast - exact).abs() < 0.05 * (1.0 + exact.abs()), "{format:?}");
        }
    }
}

#[test]
fn activation_quantisation_rounds_half_to_even() {
    let mut row = vec![0f32; BLOCK];
    row[0] = 127.0;
    row[1] = 2.5;
    row[2] = -3.5;
    let mut blocks = [ActivationBlock::default()];
    quantize_rows(&row, &mut blocks);
    assert_eq!(&blocks[0].quants[..3], &[127, 2, -4]);
    for x in [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.49, -126.51, 3.0] {
        assert_eq!(round_half_even(x), x.round_ties_even(), "{x}");
    }
    assert_eq!(blocks[0].scale, 1.0);
    assert_eq!(blocks[0].sum, 125.0);
}

proptest! {
    /// Activations come back within half a step (plus the f16 rounding of the scale).
    #[test]
    fn activation_round_trip_is_within_half_a_step(values in prop::collection::vec(-1e3f32..1e3, 32..=96)) {
        let len = values.len() / BLOCK * BLOCK;
        let values = &values[..len];
        let mut blocks = vec![ActivationBlock::default(); len / BLOCK];
        quantize_rows(values, &mut blocks);
        for (block, values) in blocks.iter().zip(values.chunks_exact(BLOCK)) {
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = max / 127.0;
            for (q, v) in block.quants.iter().zip(values) {
                let back = *q as f32 * block.scale;
                prop_assert!((back - v).abs() <= 0.5 * step + 127.0 * step / 1024.0 + 1e-6);
            }
        }
    }

    /// Weights quantised by ggml's reference quantisers and dequantised by
    /// ours come back within one quantisation step.
    #[test]
    fn weight_round_trip_is_within_a_step(
        values in prop::collection::vec(-4f32..4.0, 64..=64),
        format in prop::sample::select(FORMATS.to_vec()),
    ) {
        let weights = Tensor::from_vec(values.clone(), (2, 32), &Device::Cpu).expect("tensor");
        let Linear::Ggml(matrix) = Linear::new(QTensor::quantize(&weights, format).expect("quantize")).expect("linear") else {
            panic!("{format:?} should use the ggml kernels");
        };
        for (row, values) in values.chunks_exact(BLOCK).enumerate() {
            let back = blocks(&matrix).dequantize_row(row);
            let (low, high) = values.iter().fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
            let amax = low.abs().max(high.abs());
            let step = match format {
                GgmlDType::Q8_0 => amax / 127.0,
                GgmlDType::Q4_0 => amax / 8.0,
                _ => (high - low) / 15.0,
            };
            for (b, v) in back.iter().zip(values) {
                prop_assert!((b - v).abs() <= 1.01 * step + amax / 256.0, "{format:?}: {v} came back as {b}");
            }
        }
    }
}
