//! CPU kernels under candle: what the edge's forward passes run on when
//! there is no GPU. candle stays the framework (loading, tensors, the CUDA
//! and Metal backends); these are the hot loops a small model spends its
//! time in, written for this crate because candle's CPU path has no fast
//! products for the 4-bit formats small models ship in, runs one-row
//! products on one thread, and busy-waits between operations.
//!
//! # Layout
//! - [`pool`]: a fork-join pool that hands the other core back when cores are short.
//! - [`vector`]: RMS norm, f16 attention dot products, SwiGLU; run-time dispatch by [`vector::Level`].
//! - [`dense`]: f32 products on repacked weights with fused bias, GELU or residual; layer norm (the BERT embedder).
//! - [`bandwidth`]: a STREAM-like read-bandwidth probe for the roofline.
//!
//! The quantised matrix products live in `chat::ggml` next to the formats
//! they read.

pub mod bandwidth;
pub mod dense;
pub mod pool;
pub mod vector;

pub use pool::Pool;
pub use vector::Level;

/// Deterministic pseudo-random values in `[-scale, scale)` for kernel tests
/// (xorshift, so tests need no RNG crate state): the unit tests' and the
/// integration tests' (their tiny models' weights) one source.
#[doc(hidden)]
pub fn test_values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
