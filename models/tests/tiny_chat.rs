//! The chat backend on a tiny random llama written as GGUF at test time:
//! loading, tokenisation, templates, generation, scored choice, the async
//! worker and the error paths. No download involved.

mod common;

use std::path::PathBuf;

use aios_models::chat::engine::ChatEngine;
use aios_models::chat::llama::Precision;
use aios_models::chat::sampling::log_prob;
use aios_models::{
    ChatMessage, ChatModel, DeviceConfig, FinishReason, GenerateRequest, ModelError, Prompt, SamplingParams,
};
use candle_core::quantized::gguf_file::Value;
use candle_core::Device;

fn tiny_model() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tiny.gguf");
    common::write_tiny_gguf(&path, "llama");
    (dir, path)
}

fn engine() -> (tempfile::TempDir, ChatEngine) {
    let (dir, path) = tiny_model();
    let engine = ChatEngine::load(&path, &Device::Cpu).expect("tiny model loads");
    (dir, engine)
}

/// A label's log-probability after `prompt_ids`, computed the slow way: a
/// fresh prefill for every one of its tokens, no shared KV cache.
fn scored_from_scratch(engine: &ChatEngine, prompt_ids: &[u32], label: &str) -> f64 {
    let tokens = engine.tokenizer().encode(label).expect("encode");
    let mut total = 0.0;
    for k in 0..tokens.len() {
        let mut context = prompt_ids.to_vec();
        context.extend_from_slice(&tokens[..k]);
        // Scored choice runs in exact arithmetic; so does this reference.
        let (_, logits) = engine.prefill_with(&context, Precision::Exact).expect("prefill");
        total += log_prob(&logits, tokens[k]);
    }
    total
}

fn never() -> bool {
    false
}

#[test]
fn loads_with_metadata_facts() {
    let (_dir, engine) = engine();
    assert_eq!(engine.architecture(), "llama");
    assert_eq!(engine.context_length(), common::CONTEXT as usize);
    let tokenizer = engine.tokenizer();
    assert_eq!(tokenizer.vocab_size(), common::vocabulary().0.len());
    assert_eq!(tokenizer.bos.as_ref().map(|b| b.0), Some(1));
    assert!(tokenizer.end_of_turn.contains(&2));
}

#[test]
fn tokenisation_round_trips_and_splits_digits() {
    let (_dir, engine) = engine();
    let tokenizer = engine.tokenizer();
    for text in ["the shop sells the", "Ünïcödé 🚚 and   spaces\n\ttabs", "order 1042!", ""] {
        let ids = tokenizer.encode(text).expect("encode");
        assert_eq!(tokenizer.decode(&ids).expect("decode"), text);
    }
    let ids = tokenizer.encode(" the").expect("encode");
    assert_eq!(ids.len(), 1, "merges apply: {ids:?}");
    let digits = tokenizer.encode("123").expect("encode");
    assert_eq!(digits.len(), 3, "every digit is its own token");
    let special = tokenizer.encode("<|im_start|>user").expect("encode");
    assert_eq!(special[0], 1, "special tokens in text become their ids");
}

#[test]
fn renders_the_template_from_metadata() {
    let (_dir, engine) = engine();
    let prompt = Prompt::Chat(vec![ChatMessage::user("hi")]);
    let text = engine.render(&prompt).expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a tiny test model<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = engine.prompt_tokens(&prompt).expect("tokens");
    assert_eq!(ids[0], 1, "no extra BOS: add_bos_token is false");
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3);
}

#[test]
fn greedy_and_seeded_sampling_are_deterministic() {
    let (_dir, engine) = engine();
    let mut request = GenerateRequest::chat(vec![ChatMessage::user("the shop")], 12);
    request.ignore_eos = true;
    let run = |request: &GenerateRequest| engine.generate(request, &mut |_| true, &never).expect("generate");
    let first = run(&request);
    assert_eq!(first.completion_tokens, 12);
    assert_eq!(first.finish_reason, FinishReason::Length);
    assert_eq!(first.token_ids, run(&request).token_ids);

    request.sampling = SamplingParams {
        temperature: 5.0,
        top_k: 50,
        top_p: 0.95,
        repetition_penalty: 1.1,
        repeat_last_n: 16,
        seed: 1234,
    };
    let sampled = run(&request);
    assert_eq!(sampled.token_ids, run(&request).token_ids, "same seed, same tokens");
    request.sampling.seed = 4321;
    assert_ne!(sampled.token_ids, run(&request).token_ids, "another seed, other tokens");
}

#[test]
fn streamed_pieces_add_up_and_stop_sequences_cut() {
    let (_dir, engine) = engine();
    let mut request = GenerateRequest::chat(vec![ChatMessage::user("hello")], 20);
    request.ignore_eos = true;
    let mut pieces = String::new();
    let full = engine
        .generate(
            &request,
            &mut |piece| {
                pieces.push_str(piece);
                true
            },
            &never,
        )
        .expect("generate");
    assert_eq!(pieces, full.text);
    // Use a piece of the greedy output as a stop sequence.
    let chars: Vec<char> = full.text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        request.stop = vec![stop.clone()];
        let mut streamed = String::new();
        let cut = engine
            .generate(
                &request,
                &mut |piece| {
                    streamed.push_str(piece);
                    true
                },
                &never,
            )
            .expect("generate");
        assert_eq!(cut.finish_reason, FinishReason::Stop);
        assert!(!cut.text.contains(&stop));
        assert_eq!(streamed, cut.text);
        assert!(full.text.starts_with(&cut.text));
    }
}

#[test]
fn cancellation_stops_generation() {
    let (_dir, engine) = engine();
    let mut request = GenerateRequest::chat(vec![ChatMessage::user("hello")], 50);
    request.ignore_eos = true;
    let generation = engine.generate(&request, &mut |_| true, &|| true).expect("generate");
    assert_eq!(generation.finish_reason, FinishReason::Cancelled);
    assert!(generation.completion_tokens <= 1);
}

#[test]
fn scored_choice_matches_full_prefill() {
    let (_dir, engine) = engine();
    let prompt = Prompt::Chat(vec![ChatMessage::user("where is my parcel")]);
    let labels = vec!["refund".to_owned(), "shipping".to_owned(), "other".to_owned()];
    let scored = engine.score(&prompt, &labels, &never).expect("score");
    let total: f64 = scored.candidates.iter().map(|c| c.confidence).sum();
    assert!((total - 1.0).abs() < 1e-9);
    let best = scored.candidates.iter().map(|c| c.log_prob).fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(scored.best().log_prob, best);
    // The shared-prefill score equals one computed from scratch, token by
    // token, up to f32 rounding (batches of different shapes sum in
    // different orders; scored choice has no 8-bit activations to amplify it).
    let ids = engine.prompt_tokens(&prompt).expect("tokens");
    for candidate in &scored.candidates {
        let expected = scored_from_scratch(&engine, &ids, &candidate.label);
        assert!(
            (candidate.log_prob - expected).abs() < 1e-4,
            "{}: cached {} vs fresh {}",
            candidate.label,
            candidate.log_prob,
            expected
        );
    }
    assert!(matches!(engine.score(&prompt, &[], &never), Err(ModelError::InvalidRequest(_))));
}

/// F32, F16 and BF16 files run on the host path (dense panels in the file's
/// precision; f32 activations, or bf16 ones for BF16 weights in
/// `Precision::Quantised`) and give the logits of candle's own
/// `quantized_llama` (f32 throughout) on an F32 file of the same values,
/// for a prefill and the decode steps after it.
#[test]
fn float_weights_run_on_the_host_path_and_match_candles_llama() {
    use candle_core::quantized::{gguf_file, GgmlDType};
    use candle_core::Tensor;
    use candle_transformers::models::quantized_llama;

    let dir = tempfile::tempdir().expect("temp dir");
    for (dtype, width) in [(GgmlDType::F16, 2), (GgmlDType::BF16, 2), (GgmlDType::F32, 4)] {
        let (path, widened) = (dir.path().join("float.gguf"), dir.path().join("widened.gguf"));
        let mut gguf = common::TinyGguf::new("llama");
        gguf.convert(dtype).write(&path);
        gguf.convert(GgmlDType::F32).write(&widened);
        let engine = ChatEngine::load(&path, &Device::Cpu).expect("loads");
        // Seven matrices per layer and the tied output layer, at `width` bytes a weight.
        let (hidden, ffn, kv) = (common::HIDDEN, 128, 2 * common::HEAD_DIM);
        let per_layer = 2 * hidden * hidden + 2 * kv * hidden + 3 * ffn * hidden;
        let vocab = engine.tokenizer().vocab_size();
        let expected_bytes = (2 * per_layer + vocab * hidden) * width;
        assert_eq!(engine.weight_bytes_per_token(), Some(expected_bytes), "{dtype:?} runs on the host path");

        let mut file = std::fs::File::open(&widened).expect("open");
        let content = gguf_file::Content::read(&mut file).expect("read");
        let reference =
            quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).expect("candle loads");
        let ids = engine.prompt_tokens(&Prompt::Text("the parcel never arrived, 123".into())).expect("tokens");
        for precision in [Precision::Quantised, Precision::Exact] {
            let mut candle = reference.clone();
            let (mut ours, mut logits) = engine.prefill_with(&ids, precision).expect("prefill");
            let mut position = 0;
            let mut input = ids.clone();
            for step in 0..4 {
                let tensor = Tensor::new(input.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("input");
                let want =
                    candle.forward(&tensor, position).and_then(|t| t.squeeze(0)).and_then(|t| t.to_vec1::<f32>());
                let want = want.expect("candle forward");
                let worst = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                // Quantised keeps llama.cpp's f16 KV cache (about 3e-4 here)
                // and, for BF16 weights, its bf16 activations (about 3e-3);
                // Exact is f32 throughout (under 1e-6 here).
                let tolerance = match (precision, dtype) {
                    (Precision::Exact, _) => 1e-5,
                    (Precision::Quantised, GgmlDType::BF16) => 1e-2,
                    (Precision::Quantised, _) => 2e-3,
                };
                assert!(worst < tolerance, "{dtype:?} {precision:?} step {step}: logits differ by {worst}");
                position += input.len();
                let next = sampling_argmax(&logits);
                input = vec![next];
                logits = ours.forward_last(&input, position, &Device::Cpu).expect("decode");
            }
        }
    }
}

fn sampling_argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().fold((0, f32::MIN), |best, (i, v)| if *v > best.1 { (i, *v) } else { best }).0 as u32
}

#[test]
fn prompt_longer_than_the_context_is_an_error() {
    let (_dir, engine) = engine();
    let long = "the shop ".repeat(200);
    let request = GenerateRequest::chat(vec![ChatMessage::user(long)], 4);
    match engine.generate(&request, &mut |_| true, &never) {
        Err(ModelError::PromptTooLong { context_length, .. }) => assert_eq!(context_length, common::CONTEXT as usize),
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}

#[test]
fn truncated_file_is_a_clear_error() {
    let (dir, path) = tiny_model();
    let truncated = dir.path().join("truncated.gguf");
    let length = std::fs::metadata(&path).expect("stat").len() as usize;
    for keep in [length - 100, length / 2, 200, 3] {
        common::truncate_copy(&path, &truncated, keep);
        match ChatEngine::load(&truncated, &Device::Cpu) {
            Err(ModelError::CorruptFile { file, reason }) => {
                assert_eq!(file, truncated);
                assert!(!reason.is_empty());
            }
            other => panic!("keep {keep}: expected CorruptFile, got {other:?}"),
        }
    }
}

#[test]
fn unknown_architecture_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mamba.gguf");
    common::write_tiny_gguf(&path, "mamba9");
    match ChatEngine::load(&path, &Device::Cpu) {
        Err(ModelError::UnsupportedArchitecture(arch)) => assert_eq!(arch, "mamba9"),
        other => panic!("expected UnsupportedArchitecture, got {other:?}"),
    }
}

/// Loads a freshly written tiny GGUF of `architecture`.
fn load_tiny(architecture: &str) -> (tempfile::TempDir, ChatEngine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{architecture}.gguf"));
    common::write_tiny_gguf(&path, architecture);
    let engine = ChatEngine::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{architecture} loads: {e}"));
    (dir, engine)
}

/// Greedy generation past end-of-turn yields exactly `max_tokens` tokens,
/// the same ones twice, from logits that are finite and not flat.
fn generates_deterministically(engine: &ChatEngine, max_tokens: usize) {
    let mut request = GenerateRequest::chat(vec![ChatMessage::user("the shop")], max_tokens);
    request.ignore_eos = true;
    let first = engine.generate(&request, &mut |_| true, &never).expect("generate");
    assert_eq!(first.completion_tokens, max_tokens);
    assert_eq!(first.token_ids.len(), max_tokens);
    assert_eq!(first.finish_reason, FinishReason::Length);
    assert_eq!(first.token_ids, engine.generate(&request, &mut |_| true, &never).expect("again").token_ids);
    let ids = engine.prompt_tokens(&request.prompt).expect("tokens");
    let (_, logits) = engine.prefill(&ids).expect("prefill");
    assert_eq!(logits.len(), engine.tokenizer().vocab_size());
    assert!(logits.iter().all(|l| l.is_finite()), "non-finite logits");
    let (min, max) = logits.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &l| (lo.min(l), hi.max(l)));
    assert!(max - min > 1e-3, "flat logits: {min}..{max}");
}

/// Scored choice (one prefill, candidates on copies of its cache) agrees with
/// a fresh prefill for every candidate token, and tells candidates apart.
fn scores_like_from_scratch(engine: &ChatEngine) {
    let prompt = Prompt::Chat(vec![ChatMessage::user("where is my parcel")]);
    let labels = vec!["refund".to_owned(), "shipping".to_owned(), "other".to_owned()];
    let scored = engine.score(&prompt, &labels, &never).expect("score");
    let total: f64 = scored.candidates.iter().map(|c| c.confidence).sum();
    assert!((total - 1.0).abs() < 1e-9);
    let ids = engine.prompt_tokens(&prompt).expect("tokens");
    for candidate in &scored.candidates {
        assert!(candidate.log_prob.is_finite() && candidate.log_prob < 0.0, "{candidate:?}");
        let expected = scored_from_scratch(engine, &ids, &candidate.label);
        assert!(
            (candidate.log_prob - expected).abs() < 1e-2,
            "{}: {} vs {expected}",
            candidate.label,
            candidate.log_prob
        );
    }
    let (first, rest) = scored.candidates.split_first().expect("candidates");
    assert!(rest.iter().any(|c| (c.log_prob - first.log_prob).abs() > 1e-3), "all candidates score alike");
}

/// A prompt longer than `CONTEXT` is refused with that context length.
fn assert_prompt_too_long(engine: &ChatEngine) {
    let long = GenerateRequest::chat(vec![ChatMessage::user("the shop ".repeat(200))], 4);
    match engine.generate(&long, &mut |_| true, &never) {
        Err(ModelError::PromptTooLong { context_length, .. }) => assert_eq!(context_length, common::CONTEXT as usize),
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}

#[test]
fn qwen2_runs_on_candles_implementation_and_scores_without_forking() {
    let (_dir, engine) = load_tiny("qwen2");
    assert_eq!(engine.architecture(), "qwen2");
    generates_deterministically(&engine, 6);
    scores_like_from_scratch(&engine);
}

#[test]
fn phi3_runs_with_fused_projections_within_its_original_context() {
    let (_dir, engine) = load_tiny("phi3");
    assert_eq!(engine.architecture(), "phi3");
    // The file states a long-rope `context_length`; candle's phi3 rotates
    // without rope scaling, so only the original context is usable.
    assert_ne!(common::PHI3_LONG_CONTEXT, common::CONTEXT);
    assert_eq!(engine.context_length(), common::CONTEXT as usize);
    generates_deterministically(&engine, 10);
    scores_like_from_scratch(&engine);
    assert_prompt_too_long(&engine);
}

#[test]
fn files_candles_implementations_would_misread_are_refused_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("odd.gguf");
    // Phi-4-mini rotates three quarters of each head; candle's phi3 cannot.
    let mut partial_rotary = common::TinyGguf::new("phi3");
    partial_rotary.set_arch("rope.dimension_count", Value::U32((common::HEAD_DIM * 3 / 4) as u32));
    // candle's phi3 rotates with base 10 000 whatever the file says.
    let mut other_base = common::TinyGguf::new("phi3");
    other_base.set_arch("rope.freq_base", Value::F32(500_000.0));
    for (gguf, key) in [(partial_rotary, "rope.dimension_count"), (other_base, "rope.freq_base")] {
        gguf.write(&path);
        match ChatEngine::load(&path, &Device::Cpu) {
            Err(ModelError::UnsupportedFormat(reason)) => assert!(reason.contains(key), "{reason}"),
            other => panic!("{key}: expected UnsupportedFormat, got {other:?}"),
        }
    }
    // candle would divide by it.
    let mut no_pattern = common::TinyGguf::new("gemma3");
    no_pattern.set_arch("attention.sliding_window_type", Value::U32(0));
    no_pattern.write(&path);
    match ChatEngine::load(&path, &Device::Cpu) {
        Err(ModelError::CorruptFile { reason, .. }) => assert!(reason.contains("sliding_window_type"), "{reason}"),
        other => panic!("expected CorruptFile, got {other:?}"),
    }
}

#[test]
fn gemma3_runs_with_qk_norms_and_sliding_window_layers() {
    let (_dir, engine) = load_tiny("gemma3");
    assert_eq!(engine.architecture(), "gemma3");
    // candle decodes without the sliding window its prefill applies, so only
    // the window is usable, not the file's whole context.
    assert_ne!(common::GEMMA3_LONG_CONTEXT, common::CONTEXT);
    assert_eq!(engine.context_length(), common::CONTEXT as usize);
    generates_deterministically(&engine, 10);
    scores_like_from_scratch(&engine);
    assert_prompt_too_long(&engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_worker_generates_streams_and_scores() {
    let (_dir, path) = tiny_model();
    let model = ChatModel::load_file(path, DeviceConfig::Cpu).await.expect("load");
    assert_eq!(*model.health().borrow(), aios_models::Health::Ready);
    let mut request = GenerateRequest::chat(vec![ChatMessage::user("hi")], 8);
    request.ignore_eos = true;
    let whole = model.generate(request.clone()).await.expect("generate");
    let mut stream = model.generate_stream(request);
    let mut pieces = String::new();
    while let Some(piece) = stream.next_piece().await {
        pieces.push_str(&piece);
    }
    let streamed = stream.finish().await.expect("finish");
    assert_eq!(streamed.text, whole.text);
    assert_eq!(pieces, whole.text);
    let scored = model.score(Prompt::Text("the".into()), vec!["re".into(), "ou".into()]).await.expect("score");
    assert_eq!(scored.candidates.len(), 2);
    let (text, ids) = model.tokenize(Prompt::Text("the".into())).await.expect("tokenize");
    assert_eq!(text, "the");
    assert!(!ids.is_empty());
    // A dropped stream cancels its generation; the worker stays usable.
    let mut long = GenerateRequest::chat(vec![ChatMessage::user("hi")], 80);
    long.ignore_eos = true;
    drop(model.generate_stream(long));
    assert!(model.generate(GenerateRequest::chat(vec![ChatMessage::user("hi")], 2)).await.is_ok());
}

#[tokio::test]
async fn missing_model_names_the_pull_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = aios_models::ModelStore::new(aios_models::Catalog::builtin(), dir.path().to_path_buf());
    let options = aios_models::LoadOptions { fetch: aios_models::FetchPolicy::CacheOnly, ..Default::default() };
    let error = ChatModel::load(&store, "smollm2-135m-instruct", &options).await.unwrap_err();
    assert!(error.to_string().contains("aios-edge models pull smollm2-135m-instruct"), "{error}");
    let wrong_kind = ChatModel::load(&store, "all-minilm-l6-v2", &options).await.unwrap_err();
    assert!(matches!(wrong_kind, ModelError::WrongKind { .. }));
}
