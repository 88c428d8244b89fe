//! Block products against f32 activations, the arithmetic scored choice
//! runs in (`llama::Precision::Exact`): every product is an f32 product of
//! a dequantised weight (`(q - offset) * scale + min`, rounded as
//! [`BlockMatrix::dequantize_row_into`] rounds it) and an activation.
//!
//! Many activation rows (a prompt) multiply the band's rows dequantised
//! into [`dense`] panels. A few (a candidate's next tokens, the last row's
//! logits) would spend more on writing the dequantised rows out and reading
//! them back than on the products, so with AVX2 a fused kernel dequantises
//! a group's four rows eight weights at a time in registers and multiplies
//! them there, four rows by one or two activation rows, eight lanes each.
//! Levels without it dequantise one row at a time and take [`dense::dot`].

use super::blocks::{BlockFormat, BlockMatrix, GroupBlocks};
use super::{OutBand, GROUP};
use crate::cpu::{dense, Level};

/// Activation rows up to which an exact product does not pack panels.
pub(super) const UNPACKED: usize = 4;

impl BlockMatrix {
    /// [`BlockMatrix::band`] against f32 activations (`n_acts` rows of
    /// `cols`), for the rows of groups `groups`.
    pub(super) fn band_exact(
        &self,
        level: Level,
        activations: &[f32],
        groups: std::ops::Range<usize>,
        out: OutBand<'_>,
    ) {
        let first = groups.start * GROUP;
        let rows = (groups.end * GROUP).min(self.rows).saturating_sub(first);
        let n_acts = activations.len() / self.cols;
        if rows == 0 || n_acts == 0 {
            return;
        }
        if n_acts <= UNPACKED {
            return self.band_unpacked(level, activations, groups, out);
        }
        let packed = dense::PackedMatrix::from_rows(rows, self.cols, |row, out| {
            self.dequantize_row_level(level, first + row, out)
        });
        let mut values = vec![0f32; n_acts * rows];
        // SAFETY: `values` has `n_acts` rows of `rows` columns.
        unsafe { dense::matmul_serial(level, activations, n_acts, &packed, values.as_mut_ptr(), rows) };
        for (a, values) in values.chunks_exact(rows).enumerate() {
            for (offset, value) in values.iter().enumerate() {
                out.write(a, first + offset, *value);
            }
        }
    }

    /// [`BlockMatrix::band_exact`] for a few activation rows, without panels.
    fn band_unpacked(&self, level: Level, activations: &[f32], groups: std::ops::Range<usize>, out: OutBand<'_>) {
        let acts: Vec<&[f32]> = activations.chunks_exact(self.cols).collect();
        #[cfg(target_arch = "x86_64")]
        if level >= Level::Avx2 {
            for group in groups {
                let blocks = self.group(group);
                let rows = (group * GROUP..(group + 1) * GROUP).take_while(|r| *r < self.rows);
                let write = |first: usize, tile: &[[f32; GROUP]]| {
                    for (a, values) in tile.iter().enumerate() {
                        for (row, value) in rows.clone().zip(values) {
                            out.write(first + a, row, *value);
                        }
                    }
                };
                let mut first = 0;
                while first + 2 <= acts.len() {
                    // SAFETY: `Level::Avx2` and above are only produced when
                    // the CPU has AVX2 and FMA; every activation row has `cols` values.
                    write(first, &unsafe { avx2::group_dot(blocks, [acts[first], acts[first + 1]]) });
                    first += 2;
                }
                if first < acts.len() {
                    // SAFETY: as above.
                    write(first, &unsafe { avx2::group_dot(blocks, [acts[first]]) });
                }
            }
            return;
        }
        let first = groups.start * GROUP;
        let rows = (groups.end * GROUP).min(self.rows).saturating_sub(first);
        let mut row = vec![0f32; self.cols];
        for offset in 0..rows {
            self.dequantize_row_level(level, first + offset, &mut row);
            for (a, x) in acts.iter().enumerate() {
                out.write(a, first + offset, dense::dot(level, x, &row));
            }
        }
    }
}

/// The fused kernel with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockFormat, GroupBlocks, GROUP};
    use crate::chat::ggml::kernels::horizontal_sum;
    use crate::chat::ggml::BLOCK;

    /// The four rows of `group` against `ACTS` f32 activation rows (each
    /// as long as the rows): `[act][row]`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; every activation row has a value per column.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn group_dot<const ACTS: usize>(
        group: GroupBlocks<'_>,
        acts: [&[f32]; ACTS],
    ) -> [[f32; GROUP]; ACTS] {
        let blocks = group.scales.len() / GROUP;
        assert!(acts.iter().all(|a| a.len() >= blocks * BLOCK), "activation rows shorter than the group's");
        // SAFETY: forwarded, with the widths checked.
        unsafe {
            match group.format {
                BlockFormat::Q4_0 => tile::<ACTS, 0>(group, acts, blocks),
                BlockFormat::Q4_1 => tile::<ACTS, 1>(group, acts, blocks),
                BlockFormat::Q8_0 => tile::<ACTS, 2>(group, acts, blocks),
            }
        }
    }

    /// [`group_dot`] for one format (0 Q4_0, 1 Q4_1, 2 Q8_0).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const ACTS: usize, const FORMAT: u8>(
        group: GroupBlocks<'_>,
        acts: [&[f32]; ACTS],
        blocks: usize,
    ) -> [[f32; GROUP]; ACTS] {
        let quant_bytes = if FORMAT == 2 { 32 } else { 16 };
        let (quants, scales, mins) = (group.quants.as_ptr(), group.scales.as_ptr(), group.mins.as_ptr());
        // `[row][act]`.
        let mut acc = [[_mm256_setzero_ps(); ACTS]; GROUP];
        // SAFETY: block `idx` of lane `k` lies inside the group (`blocks`
        // blocks of GROUP lanes), and each activation row has `blocks * BLOCK`
        // values (checked by `group_dot`).
        unsafe {
            for idx in 0..blocks {
                for (k, sums) in acc.iter_mut().enumerate() {
                    let slot = idx * GROUP + k;
                    let q = quants.add(slot * quant_bytes);
                    let scale = _mm256_set1_ps(*scales.add(slot));
                    let min = if FORMAT == 1 { _mm256_set1_ps(*mins.add(slot)) } else { _mm256_setzero_ps() };
                    for v in 0..4 {
                        // Weights 8v..8v + 8: Q8_0's bytes in order; the
                        // 4-bit formats' low nibbles of bytes 0..16 are
                        // weights 0..16, the high ones 16..32.
                        let wide = if FORMAT == 2 {
                            _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8 * v).cast()))
                        } else {
                            let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add(8 * (v % 2)).cast()));
                            if v < 2 {
                                _mm256_and_si256(bytes, _mm256_set1_epi32(0x0f))
                            } else {
                                _mm256_srli_epi32(bytes, 4)
                            }
                        };
                        let mut w = _mm256_cvtepi32_ps(wide);
                        if FORMAT == 0 {
                            w = _mm256_sub_ps(w, _mm256_set1_ps(8.0));
                        }
                        w = _mm256_mul_ps(w, scale);
                        if FORMAT == 1 {
                            w = _mm256_add_ps(w, min);
                        }
                        for (sum, x) in sums.iter_mut().zip(acts) {
                            let x = _mm256_loadu_ps(x.as_ptr().add(idx * BLOCK + 8 * v));
                            *sum = _mm256_fmadd_ps(w, x, *sum);
                        }
                    }
                }
            }
        }
        std::array::from_fn(|a| {
            std::array::from_fn(|k| {
                let mut lanes = [0f32; 8];
                // SAFETY: eight floats into eight.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k][a]) };
                horizontal_sum(&lanes)
            })
        })
    }
}
