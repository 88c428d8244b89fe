//! Dense product throughput: `a · wᵀ` for the shapes of a small chat model's
//! prompt (221 rows) and of one generated token (1 row), with weights in
//! f32, f16 and bf16 (times f32 activations), and bf16 times activations
//! rounded to bf16 (`vdpbf16ps` where the CPU has it), on 1 and 2 threads
//! at the best level this CPU runs. Prints billions of multiply-adds per
//! second; run with
//! `cargo bench -p aios-models --bench kernels`.

use std::hint::black_box;
use std::time::Instant;

use aios_models::chat::ggml::{self, Activations, Matrix, Product, Write};
use aios_models::cpu::dense::{self, Epilogue, PackedMatrix};
use aios_models::cpu::{Level, Pool};
use half::{bf16, f16};

/// Values in [-1, 1) from a xorshift stream.
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Runs `product` until a quarter second has passed and returns GMAC/s.
fn measure(macs: usize, mut product: impl FnMut()) -> f64 {
    product();
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed().as_secs_f64() < 0.25 {
        product();
        runs += 1;
    }
    (macs * runs) as f64 / started.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let level = Level::detect();
    println!("kernels: {}", level.name());
    // SmolLM2-135M's gate/up (1536x576) and down (576x1536) projections.
    for (n, k) in [(1536usize, 576usize), (576, 1536)] {
        let weight = values(n as u64 * 31 + k as u64, n * k);
        let matrices = [
            ("f32", PackedMatrix::new(&weight, n, k, None)),
            ("f16", PackedMatrix::new(&weight.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>(), n, k, None)),
            ("bf16", PackedMatrix::new(&weight.iter().map(|v| bf16::from_f32(*v)).collect::<Vec<_>>(), n, k, None)),
        ];
        for threads in [1, 2] {
            let pool = Pool::new(threads);
            for m in [221usize, 1] {
                let a = values(m as u64 + 7, m * k);
                let mut out = vec![0f32; m * n];
                let mut line = format!("{n}x{k}, {m:>3} rows, {threads} thread(s):");
                for (name, matrix) in &matrices {
                    let rate = measure(m * n * k, || {
                        dense::matmul(&pool, level, black_box(&a), m, matrix, Epilogue::Bias, &mut out);
                        black_box(&out);
                    });
                    line += &format!("  {name} {rate:6.1} GMAC/s");
                }
                let mut pairs = vec![0u32; m * k / 2];
                dense::round_to_bf16_pairs(&a, k, &mut pairs);
                let matrix = Matrix::Dense(matrices[2].1.clone());
                let rate = measure(m * n * k, || {
                    let activations = Activations::Quantised { floats: &a, blocks: &[], pairs: black_box(&pairs) };
                    let product = &mut [Product { matrix: &matrix, out: &mut out, write: Write::Assign }];
                    ggml::matmul(&pool, level, activations, product);
                    black_box(&out);
                });
                line += &format!("  bf16·bf16 {rate:6.1} GMAC/s");
                println!("{line}");
            }
        }
    }
}
