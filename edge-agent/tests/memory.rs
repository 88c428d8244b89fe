//! The memory plane on the real all-MiniLM-L6-v2 (fetched through the model
//! store on first use, then cached) and a real SQLite file: a product-policy
//! fixture of 50 passages (`up/data/policies.jsonl`, the reference workload's) where each of 20
//! customer questions must find its passage in the top 3; classification
//! limits and metadata filters never crossed; expired items never returned;
//! an erased subject gone from search, export and the embedding cache; the
//! working context counted with SmolLM2's own tokenizer; the `aios-edge
//! memory` commands run as the real binary, and an erased subject's text
//! gone from the database file's and the write-ahead log's bytes.
//! Run in release mode: `cargo test -p aios-edge-agent --release --test memory`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use aios_edge_agent::memory::{
    build_context, ContextInput, Embed, EmbedderSource, ExportOptions, Item, LazyEmbedder, Memory, NewItem, Provenance,
    SearchRequest,
};
use aios_edge_agent::store::EdgeStore;
use aios_edge_agent::sync::identity::Identity;
use aios_models::{ChatModel, LoadOptions, ModelStore, Prompt};
use aios_shared::memory::{Classification, MemorySpec};
use ed25519_dalek::SigningKey;
use serde_json::json;

const POLICIES: &str = include_str!("../../up/data/policies.jsonl");
const POLICIES_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../up/data/policies.jsonl");
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
        trust_anchors: vec![aios_shared::wire::TrustedCa { der: vec![], retires_at_ms: None }],
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
    assert_eq!(erased.items.len(), 2);
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

/// Runs `aios-edge --data-dir DIR ARGS...` (the real binary; it finds the
/// model through the same store and cache as these tests); fails the test
/// on a non-zero exit.
fn aios_edge(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_aios-edge"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("aios-edge runs");
    assert!(output.status.success(), "aios-edge {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

fn stdout_json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// The bytes of the database file and its write-ahead log, as a disk would show them.
fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(dir.join("edge.db")).expect("edge.db");
    bytes.extend(std::fs::read(dir.join("edge.db-wal")).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_remembers_and_forget_leaves_no_bytes_of_the_subject() {
    // An enrolled edge's database, kept open by this process the way a
    // running daemon would keep it, so the log is not removed on exit.
    let (dir, store, memory) = memory(&MemorySpec::default()).await;
    let dir = dir.path();
    let secret = "Zanzibarquokka";
    let text = format!("{secret} Ostrowski asked us to close her account and to delete her data.");
    let added = aios_edge(
        dir,
        &[
            "memory",
            "add",
            &text,
            "--namespace",
            "customers",
            "--classification",
            "confidential",
            "--id",
            "note-1",
            "--subject",
            "customer:ostrowski",
            "--metadata",
            r#"{"channel": "email"}"#,
            "--reason",
            "support ticket",
        ],
    );
    assert_eq!(stdout_json_lines(&added)[0]["id"], "note-1");
    let john = "John Doe's kettle broke and he wants a refund.";
    aios_edge(
        dir,
        &["memory", "add", john, "--namespace", "customers", "--classification", "confidential", "--id", "note-2"],
    );
    // Fifty more items after hers, so the pages that held her text split and move.
    let imported = aios_edge(dir, &["memory", "import", POLICIES_PATH]);
    assert!(String::from_utf8_lossy(&imported.stdout).contains("imported 50 item(s)"));
    let account = json!({ "status": "closing", "note": format!("{secret} wants everything deleted") });
    memory.put_record("accounts", "acct-17", account, Some(0), "cli", Some("customer:ostrowski"), 1).await.unwrap();
    memory.put_record("accounts", "acct-18", json!("open"), Some(0), "cli", Some("customer:john"), 1).await.unwrap();

    let search = |query: &str| {
        let args = ["memory", "search", query, "--namespace", "customers", "--filter", "channel=email", "--top-k", "5"];
        stdout_json_lines(&aios_edge(dir, &args))
    };
    let hits = search("customer wants to close the account and delete personal data");
    assert_eq!(hits.len(), 1, "the metadata filter leaves her note only: {hits:#?}");
    assert_eq!(hits[0]["id"], "note-1");
    assert_eq!(hits[0]["provenance"]["reason"], "support ticket");
    let shown: serde_json::Value =
        serde_json::from_slice(&aios_edge(dir, &["memory", "show", "note-1"]).stdout).unwrap();
    assert_eq!(
        (shown["text"].as_str(), shown["subjects"][0].as_str()),
        (Some(text.as_str()), Some("customer:ostrowski"))
    );
    assert!(shown["provenance"]["added_by"].as_str().unwrap().starts_with("cli:"), "{shown:#}");
    let stats = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&aios_edge(dir, &["memory", "stats"]).stdout).expect("stats are JSON")
    };
    let before = stats(dir);
    assert_eq!(
        (before["items"].as_u64(), before["vectors"].as_u64(), before["records"].as_u64()),
        (Some(52), Some(52), Some(2))
    );
    let exported = stdout_json_lines(&aios_edge(dir, &["memory", "export", "--vectors"]));
    assert_eq!(exported.len(), 52);
    assert!(exported.iter().any(|i| i["text"] == text.as_str() && i["vector"].is_string()));
    assert!(contains(&database_bytes(dir), secret), "the check below can see the text where it is stored");

    let forgot = aios_edge(dir, &["memory", "forget", "--subject", "customer:ostrowski"]);
    assert_eq!(String::from_utf8_lossy(&forgot.stdout), "note-1\nrecord accounts/acct-17\n");
    let said = String::from_utf8_lossy(&forgot.stderr);
    assert!(said.contains("erased 1 item(s) and 1 record(s)") && !said.contains("warning"), "{said}");

    // Not in the bytes on disk: not the text, not its keyword index terms, not the subject.
    let bytes = database_bytes(dir);
    for needle in [secret, &secret.to_lowercase(), "customer:ostrowski", "Ostrowski", "ostrowski"] {
        assert!(!contains(&bytes, needle), "`{needle}` is still in edge.db or edge.db-wal");
    }
    let wal = std::fs::metadata(dir.join("edge.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the write-ahead log was emptied");
    // Not in search, show, export, the embedding cache or the records.
    assert!(search("customer wants to close the account and delete personal data").is_empty());
    let show = Command::new(env!("CARGO_BIN_EXE_aios-edge"))
        .arg("--data-dir")
        .arg(dir)
        .args(["memory", "show", "note-1"])
        .output()
        .unwrap();
    assert!(!show.status.success() && String::from_utf8_lossy(&show.stderr).contains("no memory item"));
    let exported = stdout_json_lines(&aios_edge(dir, &["memory", "export", "--vectors"]));
    assert_eq!(exported.len(), 51);
    assert!(exported.iter().all(|i| !i.to_string().contains(secret) && !i.to_string().contains("ostrowski")));
    let after = stats(dir);
    assert_eq!(
        (after["items"].as_u64(), after["vectors"].as_u64(), after["records"].as_u64()),
        (Some(51), Some(51), Some(1))
    );
    assert!(memory.record("accounts", "acct-17").await.unwrap().is_none());
    assert!(memory.record("accounts", "acct-18").await.unwrap().is_some(), "another subject's record stays");
    // The audit log says what was erased without saying what it was.
    let events = store.load_audit(1, 10_000).await.unwrap();
    let forgotten = events.iter().find(|e| e.kind == "memory.forgotten").expect("an erasure event");
    assert!(
        forgotten.payload.contains("note-1") && forgotten.payload.contains(r#""records":1"#),
        "{}",
        forgotten.payload
    );
    assert!(events.iter().all(|e| !e.payload.contains(secret) && !e.payload.contains("ostrowski")));
}
