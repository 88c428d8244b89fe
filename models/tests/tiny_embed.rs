//! The embedding backend on a tiny random BERT written at test time.

mod common;

use aios_models::embed::{cosine, EmbedderFiles, EmbeddingEngine};
use aios_models::{EmbeddingModel, LoadOptions, ModelError};
use candle_core::Device;

fn texts() -> Vec<String> {
    ["a man is eating food.", "a man is riding a horse.", "", "the parcel never arrived, unicode"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn vectors_are_unit_length_and_independent_of_batching() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bert = common::write_tiny_bert(dir.path());
    let files = EmbedderFiles { weights: &bert.weights, config: &bert.config, tokenizer: &bert.tokenizer };
    let batched = EmbeddingEngine::load(files, &Device::Cpu, None, 8).expect("load");
    let single = EmbeddingEngine::load(files, &Device::Cpu, None, 1).expect("load");
    assert_eq!(batched.dimensions(), 32);
    let a = batched.embed(&texts(), &|| false).expect("embed");
    let b = single.embed(&texts(), &|| false).expect("embed");
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        let norm: f32 = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        for (p, q) in x.iter().zip(y) {
            assert!((p - q).abs() < 1e-5, "padding changed a vector: {p} vs {q}");
        }
        assert!((cosine(x, y) - 1.0).abs() < 1e-5);
    }
    assert!(matches!(batched.embed(&texts(), &|| true), Err(ModelError::Cancelled)));
}

#[test]
fn truncated_safetensors_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bert = common::write_tiny_bert(dir.path());
    let truncated = dir.path().join("truncated.safetensors");
    let length = std::fs::metadata(&bert.weights).expect("stat").len() as usize;
    for keep in [length - 64, 100, 4] {
        common::truncate_copy(&bert.weights, &truncated, keep);
        let files = EmbedderFiles { weights: &truncated, config: &bert.config, tokenizer: &bert.tokenizer };
        match EmbeddingEngine::load(files, &Device::Cpu, None, 8) {
            Err(ModelError::CorruptFile { file, .. }) => assert_eq!(file, truncated),
            other => panic!("keep {keep}: expected CorruptFile, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn async_worker_embeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bert = common::write_tiny_bert(dir.path());
    let model = EmbeddingModel::load_files(bert.weights, bert.config, bert.tokenizer, &LoadOptions::default())
        .await
        .expect("load");
    let vectors = model.embed(texts()).await.expect("embed");
    assert_eq!(vectors.len(), 4);
    assert_eq!(model.dimensions(), 32);
}
