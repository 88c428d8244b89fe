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

/// The CPU path packs a batch without padding; candle's `BertModel`, run
/// here one text at a time with nothing to mask, is the reference.
#[test]
fn cpu_path_matches_candles_bert() {
    use candle_core::{DType, Tensor, D};
    use candle_transformers::models::bert::{BertModel, Config};

    let dir = tempfile::tempdir().expect("temp dir");
    let bert = common::write_tiny_bert(dir.path());
    let files = EmbedderFiles { weights: &bert.weights, config: &bert.config, tokenizer: &bert.tokenizer };
    let engine = EmbeddingEngine::load(files, &Device::Cpu, None, 3).expect("load");
    let config: Config = serde_json::from_str(&std::fs::read_to_string(&bert.config).expect("config")).expect("json");
    let tensors = candle_core::safetensors::load(&bert.weights, &Device::Cpu).expect("weights");
    let reference =
        BertModel::load(candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu), &config).expect("bert");
    let mut tokenizer = tokenizers::Tokenizer::from_file(&bert.tokenizer).expect("tokenizer");
    let truncation = tokenizers::TruncationParams { max_length: 64, ..Default::default() };
    tokenizer.with_truncation(Some(truncation)).expect("truncation");
    // Long enough to be cut at the 64 positions and to span several row
    // blocks of the kernels; short ones share a batch with it.
    let long = ["the man is riding a horse, eating bread ."; 12].join(" ");
    let mut texts = texts();
    texts.insert(1, long);
    texts.push("a man".into());
    let got = engine.embed(&texts, &|| false).expect("embed");
    for (text, vector) in texts.iter().zip(&got) {
        let ids = tokenizer.encode(text.as_str(), true).expect("encode").get_ids().to_vec();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("ids");
        let hidden = reference.forward(&ids, &ids.zeros_like().expect("types"), None).expect("forward");
        let mean = hidden.mean(1).expect("mean");
        let norm = mean.sqr().and_then(|s| s.sum_keepdim(D::Minus1)).and_then(|s| s.sqrt()).expect("norm");
        let want = mean.broadcast_div(&norm).and_then(|v| v.squeeze(0)).and_then(|v| v.to_vec1::<f32>()).expect("vec");
        for (i, (g, w)) in vector.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 2e-5, "{text:?}[{i}]: {g} vs {w}");
        }
    }
}

/// An F16 or BF16 checkpoint is multiplied in its own precision: it embeds
/// exactly as an F32 checkpoint holding the same (rounded) values does.
#[test]
fn half_precision_checkpoints_embed_as_their_f32_widening() {
    use candle_core::DType;

    let dir = tempfile::tempdir().expect("temp dir");
    let bert = common::write_tiny_bert(dir.path());
    let tensors = candle_core::safetensors::load(&bert.weights, &Device::Cpu).expect("weights");
    let texts = texts();
    for dtype in [DType::F16, DType::BF16] {
        // Matrices in the half type; their f32 widening beside them.
        let (mut half, mut widened) = (tensors.clone(), tensors.clone());
        for (name, tensor) in &tensors {
            if tensor.rank() == 2 && name.starts_with("encoder.") {
                let rounded = tensor.to_dtype(dtype).expect("narrow");
                widened.insert(name.clone(), rounded.to_dtype(DType::F32).expect("widen"));
                half.insert(name.clone(), rounded);
            }
        }
        let (half_path, widened_path) = (dir.path().join("half.safetensors"), dir.path().join("widened.safetensors"));
        candle_core::safetensors::save(&half, &half_path).expect("save");
        candle_core::safetensors::save(&widened, &widened_path).expect("save");
        assert!(
            std::fs::metadata(&half_path).expect("stat").len() < std::fs::metadata(&widened_path).expect("stat").len()
        );
        let embed = |weights: &std::path::Path| {
            let files = EmbedderFiles { weights, config: &bert.config, tokenizer: &bert.tokenizer };
            EmbeddingEngine::load(files, &Device::Cpu, None, 8).expect("load").embed(&texts, &|| false).expect("embed")
        };
        let (from_half, from_widened, original) = (embed(&half_path), embed(&widened_path), embed(&bert.weights));
        let mut moved = 0f32;
        for ((h, w), o) in from_half.iter().zip(&from_widened).zip(&original) {
            for ((h, w), o) in h.iter().zip(w).zip(o) {
                assert!((h - w).abs() < 1e-6, "{dtype:?}: {h} vs {w}");
                moved = moved.max((w - o).abs());
            }
        }
        // The rounding itself is visible, so the comparison above is not
        // between two copies of the f32 model.
        assert!(moved > 1e-5, "{dtype:?} rounding moved nothing ({moved})");
    }
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
