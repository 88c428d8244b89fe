//! The model abstraction: local candle backends (GGUF chat models, BERT-style
//! embedders), OpenAI-compatible cloud adapters and the tier router.
//!
//! Placeholder until the local-inference issue lands.
