//! A STREAM-like probe of memory read bandwidth, for the roofline the chat
//! benchmark prints: a quantised model's generation reads every weight once
//! per token, so bytes of weights times tokens per second cannot exceed what
//! this measures.

use std::time::Instant;

use super::pool::Pool;

/// Bytes read per pass: well past any last-level cache.
const BUFFER_BYTES: usize = 256 << 20;

/// Best read bandwidth in bytes per second over a few passes of a buffer
/// much larger than the caches, read by every thread of `pool`.
pub fn read_bandwidth(pool: &Pool) -> f64 {
    let words = BUFFER_BYTES / 8;
    // Distinct values so no page is shared with the zero page.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let sink = std::sync::atomic::AtomicU64::new(0);
    let mut best = 0f64;
    for _ in 0..5 {
        let started = Instant::now();
        pool.run_ranges(words, 1 << 16, 8, &|start, end| {
            let total = sum_words(&buffer[start..end]);
            sink.fetch_xor(total, std::sync::atomic::Ordering::Relaxed);
        });
        let seconds = started.elapsed().as_secs_f64();
        best = best.max(BUFFER_BYTES as f64 / seconds);
    }
    std::hint::black_box(sink.into_inner());
    best
}

/// Eight independent sums so the loop is bound by loads, not by one chain of adds.
fn sum_words(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut chunks = words.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, word) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(*word);
        }
    }
    let tail: u64 = chunks.remainder().iter().fold(0, |a, b| a.wrapping_add(*b));
    lanes.iter().fold(tail, |a, b| a.wrapping_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_sums_cover_every_word() {
        let words: Vec<u64> = (1..=21).collect();
        assert_eq!(sum_words(&words), 231);
    }
}
