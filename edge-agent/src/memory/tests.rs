//! Unit tests of the memory plane with a deterministic stand-in embedder
//! (hashed bags of words). The real model's behaviour is tested in
//! `edge-agent/tests/memory.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aios_shared::memory::{Classification, MemorySpec};
use futures_util::future::BoxFuture;
use serde_json::json;

use super::*;

/// Hashes words into 64 dimensions; counts the texts it embeds.
struct Words {
    model: String,
    calls: AtomicUsize,
}

impl Words {
    fn new(model: &str) -> Arc<Words> {
        Arc::new(Words { model: model.into(), calls: AtomicUsize::new(0) })
    }
}

impl Embed for Words {
    fn model_id(&self) -> &str {
        &self.model
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, MemoryError>> {
        self.calls.fetch_add(texts.len(), Ordering::SeqCst);
        let vectors = texts
            .iter()
            .map(|text| {
                let mut v = vec![0.0f32; 64];
                for word in text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 2) {
                    let h = Sha256::digest(word.as_bytes());
                    v[h[0] as usize % 64] += 1.0;
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter().map(|x| x / norm).collect()
            })
            .collect();
        Box::pin(async move { Ok(vectors) })
    }
}

async fn memory_with(embedder: Arc<Words>, spec: &MemorySpec) -> (tempfile::TempDir, EdgeStore, Memory) {
    let (dir, store, identity) = crate::store::test_store().await;
    let memory = Memory::new(&store, Some(identity), EmbedderSource::Fixed(embedder), spec);
    (dir, store, memory)
}

fn item(id: &str, namespace: &str, class: Classification, text: &str) -> NewItem {
    NewItem {
        id: Some(id.into()),
        namespace: namespace.into(),
        text: text.into(),
        metadata: json!({}),
        classification: class,
        subjects: vec![],
        provenance: Provenance {
            added_by: "test".into(),
            source: "unit".into(),
            task_id: None,
            reason: Some("fixture".into()),
            created_ms: 0,
        },
        expires_ms: None,
    }
}

fn request(query: &str, namespaces: &[&str], classes: &[Classification]) -> SearchRequest {
    SearchRequest {
        query: query.into(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        classifications: classes.to_vec(),
        filter: BTreeMap::new(),
        top_k: 5,
        min_score: 0.0,
        keyword_weight: 0.0,
    }
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

async fn audit_kinds(store: &EdgeStore) -> Vec<String> {
    store.load_audit(1, 1000).await.unwrap().into_iter().map(|e| e.kind).filter(|k| k.starts_with("memory.")).collect()
}

use Classification::{Confidential, Internal, Public, Restricted};

#[tokio::test]
async fn scope_filters_and_classification_limits_are_never_crossed() {
    let words = Words::new("words-v1");
    let (_dir, store, memory) = memory_with(words.clone(), &MemorySpec::default()).await;
    let mut refund = item("refund", "policies", Public, "refunds are paid within fourteen days");
    refund.metadata = json!({ "region": "eu", "year": 2024 });
    let mut refund_us = item("refund-us", "policies", Public, "refunds are paid within thirty days");
    refund_us.metadata = json!({ "region": "us" });
    let secret = item("salary", "policies", Restricted, "refunds of salary advances are paid monthly");
    let other = item("hr", "hr", Public, "refunds are paid by payroll");
    memory.add(vec![refund, refund_us, secret, other], 10).await.unwrap();

    let hits = memory.search(&request("when are refunds paid", &["policies"], &[Public]), 20).await.unwrap();
    assert_eq!(ids(&hits).len(), 2, "{hits:?}");
    assert!(hits.iter().all(|h| h.namespace == "policies" && h.classification == Public));
    assert_eq!(hits[0].provenance.reason.as_deref(), Some("fixture"));

    let mut eu = request("when are refunds paid", &["policies"], &[Public]);
    eu.filter.insert("region".into(), "eu".into());
    assert_eq!(ids(&memory.search(&eu, 20).await.unwrap()), ["refund"]);
    eu.filter.insert("year".into(), "2024".into());
    assert_eq!(ids(&memory.search(&eu, 20).await.unwrap()), ["refund"]);
    eu.filter.insert("year".into(), "2023".into());
    assert!(memory.search(&eu, 20).await.unwrap().is_empty());

    let all = request("refunds salary", &["policies", "hr"], &Classification::ALL);
    assert_eq!(memory.search(&all, 20).await.unwrap().len(), 4);
    assert!(memory.search(&request("refunds", &["nowhere"], &[Public]), 20).await.unwrap().is_empty());
    let mut strict = request("refunds", &["policies"], &[Public]);
    strict.min_score = 0.99;
    assert!(memory.search(&strict, 20).await.unwrap().is_empty(), "min_score drops weak matches");

    // Hybrid ranking: the keyword score can lift an exact term match.
    let mut hybrid = request("thirty", &["policies"], &[Public]);
    hybrid.keyword_weight = 0.5;
    let hits = memory.search(&hybrid, 20).await.unwrap();
    assert_eq!(hits[0].id, "refund-us", "{hits:?}");
    assert!(hits[0].keyword.unwrap() > 0.9);

    memory.record_retrieval("t-1", "policy", &all, &[], 30).await.unwrap();
    assert_eq!(audit_kinds(&store).await, ["memory.added", "memory.retrieved"]);
}

#[tokio::test]
async fn the_cache_embeds_a_text_once_and_updates_make_versions() {
    let words = Words::new("words-v1");
    let (_dir, _store, memory) = memory_with(words.clone(), &MemorySpec::default()).await;
    let added = memory.add(vec![item("a", "n", Public, "same text"), item("b", "n", Public, "same text")], 1).await;
    assert_eq!(words.calls.load(Ordering::SeqCst), 1, "two items, one text, one embedding");
    assert!(added.unwrap().iter().all(|a| a.version == 1));
    let again = memory.add(vec![item("c", "n", Public, "same text")], 2).await.unwrap();
    assert!(again[0].cached);
    assert_eq!(words.calls.load(Ordering::SeqCst), 1);

    // A new version of `a` with new text; the old vector stays while `b` and `c` use it.
    memory.search(&request("text", &["n"], &[Public]), 3).await.unwrap(); // loads the index
    let updated = memory.add(vec![item("a", "n", Internal, "different words now")], 4).await.unwrap();
    assert_eq!(updated[0].version, 2);
    let shown = memory.show("a").await.unwrap().unwrap();
    assert_eq!((shown.version, shown.classification, shown.text.as_str()), (2, Internal, "different words now"));
    assert_eq!(memory.stats().await.unwrap().vectors, 2);
    let hits = memory.search(&request("different words", &["n"], &[Public]), 5).await.unwrap();
    assert!(!ids(&hits).contains(&"a"), "the index follows the reclassification: {hits:?}");
}

#[tokio::test]
async fn expired_items_are_never_returned_and_the_sweeper_removes_them() {
    let words = Words::new("words-v1");
    let spec: MemorySpec = toml::from_str("[retention]\nconfidential = \"1h\"\n").unwrap();
    let (_dir, store, memory) = memory_with(words, &spec).await;
    let mut short = item("short", "n", Public, "parcel delivery times");
    short.expires_ms = Some(1_000);
    let old = item("old", "n", Confidential, "parcel delivery contract terms");
    let kept = item("kept", "n", Internal, "parcel delivery for islands");
    memory.add(vec![short, old, kept], 0).await.unwrap();
    let everything = request("parcel delivery", &["n"], &Classification::ALL);
    assert_eq!(memory.search(&everything, 500).await.unwrap().len(), 3);
    // Past the explicit expiry and the hour of retention, before any sweep.
    let later = 3_600_001;
    assert_eq!(ids(&memory.search(&everything, later).await.unwrap()), ["kept"]);
    let mut removed = memory.sweep(later).await.unwrap();
    removed.sort();
    assert_eq!(removed, ["old", "short"]);
    assert_eq!(memory.stats().await.unwrap().items, 1);
    assert!(audit_kinds(&store).await.contains(&"memory.expired".to_owned()));
    assert!(memory.sweep(later).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_forgotten_subject_is_gone_from_search_export_and_the_cache() {
    let words = Words::new("words-v1");
    let (_dir, store, memory) = memory_with(words.clone(), &MemorySpec::default()).await;
    let mut jane = item("jane-1", "customers", Confidential, "Jane Roe asked about her broken kettle");
    jane.subjects = vec!["customer:jane".into()];
    let mut jane2 = item("jane-2", "customers", Confidential, "Jane Roe prefers email");
    jane2.subjects = vec!["customer:jane".into(), "campaign:spring".into()];
    let john = item("john-1", "customers", Confidential, "John Doe asked about a broken kettle");
    memory.add(vec![jane, jane2, john], 1).await.unwrap();
    let query = request("broken kettle Jane Roe", &["customers"], &[Confidential]);
    assert_eq!(memory.search(&query, 2).await.unwrap().len(), 3);
    memory.put_record("orders", "o-jane", json!("refunded"), None, "cli", Some("customer:jane"), 2).await.unwrap();
    // A later write that names no subject keeps the record's subject.
    memory.put_record("orders", "o-jane", json!("closed"), Some(1), "cli", None, 2).await.unwrap();
    memory.put_record("orders", "o-john", json!("paid"), None, "cli", Some("customer:john"), 2).await.unwrap();

    let mut erased = memory.forget_subject("customer:jane", 3).await.unwrap();
    erased.items.sort();
    assert_eq!(erased.items, ["jane-1", "jane-2"]);
    assert_eq!(erased.records, [("orders".to_owned(), "o-jane".to_owned())]);
    assert!(erased.checkpointed);
    assert!(memory.record("orders", "o-jane").await.unwrap().is_none(), "the record about the subject is gone");
    let john = memory.record("orders", "o-john").await.unwrap().expect("another subject's record stays");
    assert_eq!(john.subject.as_deref(), Some("customer:john"));
    assert_eq!(ids(&memory.search(&query, 4).await.unwrap()), ["john-1"]);
    let exported = memory.export(ExportOptions { namespace: None, vectors: true }).await.unwrap();
    assert_eq!(exported.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["john-1"]);
    let stats = memory.stats().await.unwrap();
    assert_eq!((stats.items, stats.vectors), (1, 1), "the erased texts' vectors are gone from the cache");
    let text_left: i64 = memory
        .inner
        .db
        .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM memory_fts WHERE memory_fts MATCH 'Roe'", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(text_left, 0, "nor in the keyword index");
    // Adding the text again needs the model again: nothing was kept.
    let before = words.calls.load(Ordering::SeqCst);
    memory.add(vec![item("x", "customers", Public, "Jane Roe prefers email")], 5).await.unwrap();
    assert_eq!(words.calls.load(Ordering::SeqCst), before + 1);

    let events = store.load_audit(1, 1000).await.unwrap();
    let forgotten = events.iter().find(|e| e.kind == "memory.forgotten").unwrap();
    assert!(!forgotten.payload.contains("customer:jane") && !forgotten.payload.contains("kettle"));
    assert!(forgotten.payload.contains("jane-1"), "{}", forgotten.payload);
    assert!(forgotten.payload.contains(r#""records":1"#) && !forgotten.payload.contains("o-jane"));
}

#[tokio::test]
async fn export_and_import_carry_provenance_and_vectors_and_reindex_follows_the_model() {
    let words = Words::new("words-v1");
    let (_dir, store, memory) = memory_with(words.clone(), &MemorySpec::default()).await;
    let mut first = item("p1", "policies", Public, "returns accepted within thirty days");
    first.subjects = vec!["s1".into()];
    memory.add(vec![first, item("p2", "policies", Internal, "staff discount rules")], 1).await.unwrap();
    let exported = memory.export(ExportOptions { namespace: Some("policies".into()), vectors: true }).await.unwrap();
    assert_eq!(exported.len(), 2);

    let fresh_words = Words::new("words-v1");
    let (_dir2, _store2, copy) = memory_with(fresh_words.clone(), &MemorySpec::default()).await;
    let text = exported.iter().map(|i| serde_json::to_string(i).unwrap()).collect::<Vec<_>>().join("\n");
    let parsed: Vec<Item> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let added = copy.import(parsed, 2).await.unwrap();
    assert!(added.iter().all(|a| a.cached), "vectors of the same model are reused");
    assert_eq!(fresh_words.calls.load(Ordering::SeqCst), 0);
    let p1 = copy.show("p1").await.unwrap().unwrap();
    assert_eq!((p1.provenance.added_by.as_str(), p1.subjects.as_slice()), ("test", &["s1".to_owned()][..]));
    let hits = copy.search(&request("returns within thirty days", &["policies"], &[Public]), 3).await.unwrap();
    assert_eq!(ids(&hits), ["p1"]);

    // A new model: old vectors are ignored until reindexed.
    let words_v2 = Words::new("words-v2");
    let switched = Memory::new(
        &store,
        memory.inner.identity.clone(),
        EmbedderSource::Fixed(words_v2.clone()),
        &MemorySpec::default(),
    );
    let query = request("returns within thirty days", &["policies"], &[Public]);
    assert!(switched.search(&query, 3).await.unwrap().is_empty(), "no vectors of words-v2 yet");
    assert_eq!(switched.stats().await.unwrap().stale, 2);
    assert_eq!(switched.reindex(4).await.unwrap(), 2);
    assert_eq!(ids(&switched.search(&query, 5).await.unwrap()), ["p1"]);
    let stats = switched.stats().await.unwrap();
    assert_eq!((stats.stale, stats.vectors), (0, 2), "old model's vectors dropped");
    // The first handle's index notices the other handle's writes.
    assert!(memory.search(&query, 6).await.unwrap().is_empty(), "words-v1 vectors are gone");
}

#[tokio::test]
async fn records_compare_and_set_and_a_repeated_writer_is_recognised() {
    let (_dir, store, memory) = memory_with(Words::new("w"), &MemorySpec::default()).await;
    assert!(memory.record("orders", "o-1").await.unwrap().is_none());
    let first = memory.put_record("orders", "o-1", json!("paid"), Some(0), "task:a:1", None, 1).await.unwrap();
    assert_eq!(first.version, 1);
    let conflict = memory.put_record("orders", "o-1", json!("paid"), Some(0), "task:b:1", None, 2).await.unwrap_err();
    assert!(matches!(conflict, MemoryError::Conflict { expected: 0, found: 1, .. }), "{conflict}");
    // The same writer repeating its write (a re-run after a crash) gets its write back.
    let repeat = memory.put_record("orders", "o-1", json!("paid"), Some(0), "task:a:1", None, 3).await.unwrap();
    assert_eq!((repeat.version, repeat.updated_ms), (1, 1));
    let second =
        memory.put_record("orders", "o-1", json!({"status": "shipped"}), Some(1), "cli", None, 4).await.unwrap();
    assert_eq!(second.version, 2);
    let unconditional = memory.put_record("orders", "o-1", json!("lost"), None, "cli", None, 5).await.unwrap();
    assert_eq!(unconditional.version, 3);
    assert_eq!(memory.record("orders", "o-1").await.unwrap().unwrap().value, json!("lost"));
    assert_eq!(audit_kinds(&store).await.iter().filter(|k| *k == "memory.record_put").count(), 3);
}

/// Issue 24, finding 22: at autonomy `halted` (here: the edge was revoked)
/// no text is embedded, neither to store it nor to search.
#[tokio::test]
async fn nothing_is_embedded_while_halted() {
    let (_dir, store, identity) = crate::store::test_store().await;
    let source = EmbedderSource::Fixed(Words::new("words-v1"));
    let memory = Memory::new(&store, Some(identity.clone()), source, &MemorySpec::default());
    memory.add(vec![item("a", "policies", Public, "refunds are paid in five days")], 10).await.unwrap();
    store.mark_revoked(&identity, "test".into(), 11).await.unwrap();
    let halted = |err: MemoryError| err.to_string().contains("kill switch is at `all`");
    let searched = memory.search(&request("refunds", &["policies"], &[Public]), 12).await.unwrap_err();
    assert!(halted(searched));
    let added = memory.add(vec![item("b", "policies", Public, "a new text")], 13).await.unwrap_err();
    assert!(halted(added));
}
