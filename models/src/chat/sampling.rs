//! Token sampling: greedy, temperature, top-k, top-p and a repetition
//! penalty, driven by a seeded generator so a given seed always yields the
//! same tokens. The generator is a small SplitMix64, chosen because its output
//! is fixed by its definition and cannot change with a dependency upgrade.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax). Default 0.
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables. Default 0.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 disables.
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this; 1 disables.
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at. Default 64.
    pub repeat_last_n: usize,
    /// Seed of the random generator. Default 42.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, repeat_last_n: 64, seed: 42 }
    }
}

impl SamplingParams {
    /// Greedy decoding with no penalty.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Rejects values that have no meaning (negative temperature, p outside (0, 1]).
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(ModelError::InvalidRequest(format!("temperature {} must be >= 0", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::InvalidRequest(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(ModelError::InvalidRequest(format!(
                "repetition_penalty {} must be > 0",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// A sampler: the parameters plus the generator state.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// The parameters it was built with.
    params: SamplingParams,
    /// SplitMix64 state.
    state: u64,
}

impl Sampler {
    /// A sampler seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let state = params.seed;
        Self { params, state }
    }

    /// Picks the next token from `logits`, penalising tokens in `history`.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.apply_repetition_penalty(logits, history);
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, logit)| logit.is_finite())
            .map(|(id, logit)| (id as u32, *logit / self.params.temperature))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        // Sort by logit, ties broken by id, so the order never depends on the
        // sort algorithm.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        let max = candidates[0].1;
        let mut probs: Vec<f64> = candidates.iter().map(|(_, l)| f64::from(l - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = probs.len();
            for (idx, p) in probs.iter().enumerate() {
                cumulative += p;
                if cumulative >= f64::from(self.params.top_p) {
                    keep = idx + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let draw = self.next_f64();
        let mut cumulative = 0.0;
        for (idx, p) in probs.iter().enumerate() {
            cumulative += p;
            if draw < cumulative {
                return candidates[idx].0;
            }
        }
        candidates[probs.len() - 1].0
    }

    fn apply_repetition_penalty(&self, logits: &mut [f32], history: &[u32]) {
        let penalty = self.params.repetition_penalty;
        if penalty == 1.0 {
            return;
        }
        let start = history.len().saturating_sub(self.params.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        for &token in &history[start..] {
            if !seen.insert(token) {
                continue;
            }
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit = if *logit >= 0.0 { *logit / penalty } else { *logit * penalty };
            }
        }
    }

    /// A uniform draw in [0, 1) from SplitMix64.
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (idx, logit) in logits.iter().enumerate() {
        if *logit > logits[best] {
            best = idx;
        }
    }
    best as u32
}

/// `log_softmax(logits)[token]`, computed in f64.
pub fn log_prob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|l| f64::from(l - max).exp()).sum();
    let logit = logits.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY);
    f64::from(logit - max) - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.5, 2.9]
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut sampler = Sampler::new(SamplingParams::greedy());
        assert_eq!(sampler.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let params = SamplingParams { temperature: 1.5, seed: 7, ..SamplingParams::default() };
        let run = |params: SamplingParams| {
            let mut sampler = Sampler::new(params);
            (0..64).map(|_| sampler.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(run(params.clone()), run(SamplingParams { seed: 8, ..params }));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_limits_the_set() {
        let mut sampler = Sampler::new(SamplingParams { temperature: 1.0, top_k: 1, ..SamplingParams::default() });
        for _ in 0..20 {
            assert_eq!(sampler.sample(&mut logits(), &[]), 1);
        }
        let mut sampler = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.5, ..SamplingParams::default() });
        for _ in 0..50 {
            assert!([1, 5].contains(&sampler.sample(&mut logits(), &[])));
        }
    }

    #[test]
    fn repetition_penalty_moves_the_argmax() {
        let mut sampler = Sampler::new(SamplingParams { repetition_penalty: 2.0, ..SamplingParams::default() });
        assert_eq!(sampler.sample(&mut logits(), &[1]), 5);
    }

    #[test]
    fn log_prob_is_normalised() {
        let total: f64 = (0..6).map(|t| log_prob(&logits(), t).exp()).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn invalid_params_are_rejected() {
        let bad = SamplingParams { top_p: 0.0, ..SamplingParams::default() };
        assert!(bad.validate().is_err());
    }
}
