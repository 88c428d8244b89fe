//! The memory plane on the real all-MiniLM-L6-v2 (fetched through the model
//! store on first use, then cached) and a real SQLite file: a product-policy
//! fixture of 50 passages (`tests/data/policies.jsonl`) where each of 20
//! customer questions must find its passage in the top 3; classification
//! limits and metadata filters never crossed; expired items never returned;
//! an erased subject gone from search, export and the embedding cache; the
//! working context counted with SmolLM2's own tokenizer.
//! Run in release mode: `cargo test -p aios-edge-agent --release --test memory`.

use std::collections::BTreeMap;
use std::sync::Arc;

use aios_edge_agent::identity::Identity;
use aios_edge_agent::memory::{
    build_context, ContextInput, Embed, EmbedderSource, ExportOptions, Item, LazyEmbedder, Memory, NewItem, Provenance,
    SearchRequest,
};
use aios_edge_agent::store::EdgeStore;
use aios_models::{ChatModel, LoadOptions, ModelStore, Prompt};
use aios_shared::memory::{Classification, MemorySpec};
use ed25519_dalek::SigningKey;
use serde_json::json;

const POLICIES: &str = include_str!("../../tests/data/policies.jsonl");
const QUESTIONS: &str = include_str!("../../tests/data/policy-questions.json");

fn embedder() -> Arc<LazyEmbedder> {
    static EMBEDDER: std::sync::OnceLock<Arc<LazyEmbedder>> = std::sync::OnceLock::new();
    EMBEDDER
        .get_or_init(|| Arc::new(LazyEmbedder::new(ModelStore::from_env(), LoadOptions::default(), "all-minilm-l6-v2")))
        .clone()
}

async fn memory(spec: &MemorySpec) -> (tempfile::TempDir, EdgeStore, Memory) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EdgeStore::open(dir.path()).expect("store opens");
    let identity = Identity {
        edge_id: "edge-memory-test".into(),
        control_plane: "127.0.0.1:1".into(),
        signing_key: SigningKey::from_bytes(&[3; 32]),
        cert_der: vec![],
        ca_der: vec![],
        bundle_key: SigningKey::from_bytes(&[4; 32]).verifying_key(),
    };
    store.save_identity(identity.clone(), Vec::new(), 0).await.expect("identity saved");
    let memory = Memory::new(&store, Some(identity), EmbedderSource::Fixed(embedder()), spec);
    (dir, store, memory)
}

fn policies() -> Vec<Item> {
    POLICIES.lines().map(|line| serde_json::from_str(line).expect("fixture line parses")).collect()
}

fn search(query: &str, namespaces: &[&str], classes: &[Classification], top_k: usize) -> SearchRequest {
    SearchRequest {
        query: query.into(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        classifications: classes.to_vec(),
        filter: BTreeMap::new(),
        top_k,
        min_score: 0.0,
        keyword_weight: 0.0,
    }
}

fn note(id: &str, class: Classification, subjects: &[&str], text: &str) -> NewItem {
    NewItem {
        id: Some(id.into()),
        namespace: "customers".into(),
        text: text.into(),
        metadata: json!({ "channel": if id.contains("mail") { "email" } else { "phone" } }),
        classification: class,
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        provenance: Provenance {
            added_by: "agent:triage".into(),
            source: "support-ticket".into(),
            task_id: Some("t-1".into()),
            reason: Some("customer history".into()),
            created_ms: 0,
        },
        expires_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_question_finds_its_passage_in_the_top_three() {
    let (_dir, store, memory) = memory(&MemorySpec::default()).await;
    let added = memory.import(policies(), 1).await.expect("import");
    assert_eq!(added.len(), 50);
    let questions: Vec<serde_json::Value> = serde_json::from_str(QUESTIONS).expect("questions parse");
    assert_eq!(questions.len(), 20);
    let mut misses = Vec::new();
    for q in &questions {
        let (question, expect) = (q["question"].as_str().unwrap(), q["expect"].as_str().unwrap());
        let hits = memory.search(&search(question, &["policies"], &[Classification::Public], 3), 2).await.unwrap();
        let rank = hits.iter().position(|h| h.id == expect);
        println!("{:>4} {question:<70} {expect}", rank.map_or("miss".into(), |r| format!("#{}", r + 1)));
        if rank.is_none() {
            misses.push((question, expect, hits.iter().map(|h| (h.id.clone(), h.score)).collect::<Vec<_>>()));
        }
        assert!(hits.iter().all(|h| h.provenance.source == "customer-handbook-v3"));
    }
    assert!(misses.is_empty(), "questions that missed their passage: {misses:#?}");
    // The metadata filter narrows to one topic.
    let mut shipping = search("How long does it take?", &["policies"], &[Classification::Public], 10);
    shipping.filter.insert("topic".into(), "shipping".into());
    let hits = memory.search(&shipping, 3).await.unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h.metadata["topic"] == "shipping"), "{hits:#?}");
    // Importing the same texts again embeds nothing: the cache has them.
    let again = memory.import(policies(), 4).await.unwrap();
    assert!(again.iter().all(|a| a.cached && a.version == 2));
    assert_eq!(memory.stats().await.unwrap().vectors, 50);
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_expiry_and_erasure_hold_on_the_real_model() {
    let spec: MemorySpec = toml::from_str("[retention]\nrestricted = \"1h\"\n").unwrap();
    let (_dir, store, memory) = memory(&spec).await;
    memory.import(policies(), 0).await.unwrap();
    let mut short_lived =
        note("promo-mail", Classification::Internal, &[], "Spring promotion: kettles 20 percent off.");
    short_lived.expires_ms = Some(1_000);
    memory
        .add(
            vec![
                note(
                    "jane-mail",
                    Classification::Confidential,
                    &["customer:jane"],
                    "Jane Roe's kettle broke; she wants a refund.",
                ),
                note(
                    "jane-call",
                    Classification::Confidential,
                    &["customer:jane"],
                    "Jane Roe called about her refund status.",
                ),
                note(
                    "john-call",
                    Classification::Confidential,
                    &["customer:john"],
                    "John Doe's kettle broke; he wants a refund.",
                ),
                note("vip-call", Classification::Restricted, &[], "A VIP customer's kettle broke; refund approved."),
                short_lived,
            ],
            0,
        )
        .await
        .unwrap();
    let query = "customer kettle broke refund";
    let everything =
        [Classification::Public, Classification::Internal, Classification::Confidential, Classification::Restricted];

    // Classification limits: a public-and-internal reader never sees confidential or restricted notes.
    let hits = memory.search(&search(query, &["customers", "policies"], &everything[..2], 20), 10).await.unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.classification <= Classification::Internal), "{hits:#?}");
    // Namespace limits: policies only.
    let hits = memory.search(&search(query, &["policies"], &everything, 20), 10).await.unwrap();
    assert!(hits.iter().all(|h| h.namespace == "policies"));
    // Metadata filter.
    let mut by_mail = search(query, &["customers"], &everything, 20);
    by_mail.filter.insert("channel".into(), "email".into());
    let hits = memory.search(&by_mail, 10).await.unwrap();
    assert!(hits.iter().all(|h| h.metadata["channel"] == "email"), "{hits:#?}");
    assert!(hits.iter().any(|h| h.id == "jane-mail"));

    // Expiry (explicit, and by retention) before any sweep runs.
    let before = memory.search(&search(query, &["customers"], &everything, 20), 10).await.unwrap();
    assert!(before.iter().any(|h| h.id == "vip-call") && before.iter().any(|h| h.id == "promo-mail"));
    let later = 3_600_000 + 1;
    let after = memory.search(&search(query, &["customers"], &everything, 20), later).await.unwrap();
    assert!(after.iter().all(|h| h.id != "vip-call" && h.id != "promo-mail"), "{after:#?}");
    let mut swept = memory.sweep(later).await.unwrap();
    swept.sort();
    assert_eq!(swept, ["promo-mail", "vip-call"]);

    // Erasure of a subject: gone from search, export and the embedding cache.
    let vectors_before = memory.stats().await.unwrap().vectors;
    let erased = memory.forget_subject("customer:jane", later).await.unwrap();
    assert_eq!(erased.len(), 2);
    let hits = memory.search(&search("Jane Roe refund", &["customers"], &everything, 20), later).await.unwrap();
    assert!(hits.iter().all(|h| !h.text.contains("Jane")), "{hits:#?}");
    let exported = memory.export(ExportOptions { namespace: None, vectors: true }).await.unwrap();
    assert!(exported.iter().all(|i| !i.text.contains("Jane") && !i.subjects.contains(&"customer:jane".into())));
    assert_eq!(memory.stats().await.unwrap().vectors, vectors_before - 2);
    let events = store.load_audit(1, 10_000).await.unwrap();
    let forgotten = events.iter().find(|e| e.kind == "memory.forgotten").expect("an erasure event");
    assert!(!forgotten.payload.contains("Jane") && !forgotten.payload.contains("customer:jane"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_context_fits_the_budget_in_smollm2_tokens() {
    let model = ChatModel::load(&ModelStore::from_env(), "smollm2-135m-instruct", &LoadOptions::default())
        .await
        .expect("SmolLM2 loads through the store");
    let passages = policies();
    let input = ContextInput {
        input: "My kettle arrived broken and I want my money back. What are my options?".into(),
        results: vec![("category".into(), "refund".into())],
        retrieved: passages.iter().take(12).map(|p| (p.id.clone(), p.text.clone(), 0.5)).collect(),
    };
    let count = |text: String| {
        let model = model.clone();
        async move { model.tokenize(Prompt::Text(text)).await.map(|(_, ids)| ids.len()).map_err(|e| e.to_string()) }
    };
    let context = build_context(&input, 160, count).await.unwrap();
    let (_, ids) = model.tokenize(Prompt::Text(context.text.clone())).await.unwrap();
    assert!(ids.len() <= 160, "{} tokens: {}", ids.len(), context.text);
    assert_eq!(context.tokens, ids.len());
    assert!(!context.left_out.is_empty(), "twelve passages do not fit in 160 tokens");
    assert_eq!(context.included.len() + context.left_out.len(), 14);
    assert_eq!(context.included[0].source, "input");
    let _ = embedder().model_id();
}
