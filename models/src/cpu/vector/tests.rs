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
    }
}

/// The batched attention products return the bits of one `dot_f16`
/// (or one fused multiply-add) at a time, in both orders, at every level, for
/// widths with and without a fast path and position counts around the
/// batch of sixteen.
#[test]
fn attention_products_equal_one_position_at_a_time() {
    for d in [16, 24, 64, 80, 128, 192] {
        let stride = 3 * d + 5;
        for count in [1, 5, 16, 17, 40, 64, 65, 150] {
            let seed = (d * 1000 + count) as u64;
            let mut q = values(seed, d, 2.0);
            round_to_f16(&mut q);
            let cache: Vec<f16> = values(seed + 1, count * stride, 1.5).into_iter().map(f16::from_f32).collect();
            let mut weights = values(seed + 2, count, 1.0);
            round_to_f16(&mut weights);
            for order in [Order::Gemv, Order::Gemm] {
                let mut expected = vec![0f32; count];
                let mut want_max = f32::NEG_INFINITY;
                for (t, score) in expected.iter_mut().enumerate() {
                    *score = dot_f16(Level::Portable, order, &q, &cache[t * stride..][..d]) * 0.125;
                    want_max = want_max.max(*score);
                }
                let rows = order.lanes();
                let mut lanes = vec![vec![0f32; d]; rows];
                for (t, w) in weights.iter().enumerate() {
                    for (sum, v) in lanes[t % rows].iter_mut().zip(&cache[t * stride..][..d]) {
                        *sum = w.mul_add(v.to_f32(), *sum);
                    }
                }
                let want_sum: Vec<f32> = (0..d)
                    .map(|i| {
                        let partial: Vec<f32> = (0..64).map(|r| lanes.get(r).map_or(0.0, |l| l[i])).collect();
                        order.finish(&partial)
                    })
                    .collect();
                for level in Level::available() {
                    let mut scores = vec![f32::NAN; count];
                    let max = scores_f16(level, order, &q, &cache, stride, 0.125, &mut scores);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&scores), bits(&expected), "{level:?} {order:?} d {d} count {count} scores");
                    assert_eq!(max.to_bits(), want_max.to_bits(), "{level:?} {order:?} d {d} count {count} max");
                    let mut out = vec![f32::NAN; d];
                    weighted_sum_f16(level, order, &weights, &cache, stride, &mut out);
                    assert_eq!(bits(&out), bits(&want_sum), "{level:?} {order:?} d {d} count {count} sum");
                }
            }
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
fn detection_lists_what_the_architecture_always_has() {
    let levels = Level::available();
    assert_eq!(levels[0], Level::Portable);
    assert!(levels.windows(2).all(|pair| pair[0] < pair[1]), "{levels:?}");
    // Every arm64 CPU has NEON, so its kernels are never silently untested there.
    #[cfg(target_arch = "aarch64")]
    assert!(levels.contains(&Level::Neon), "{levels:?}");
    #[cfg(target_arch = "x86_64")]
    assert!(!levels.contains(&Level::Neon) && !levels.contains(&Level::NeonDot), "{levels:?}");
    assert!(levels.contains(&Level::detect()), "{:?} not among {levels:?}", Level::detect());
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
