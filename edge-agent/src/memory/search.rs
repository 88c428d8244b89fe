//! Conservative retrieval. In order: the scope (namespaces, classifications,
//! expiry and retention) and the metadata filter decide which items may be
//! returned at all; then similarity ranks them (the vector index proposes a
//! shortlist, exact f32 vectors re-rank it, optionally blended with FTS5
//! keyword scores); then a minimum score drops weak matches. The rows are
//! read back from SQLite under the same scope conditions before anything is
//! returned, so the in-memory index can never widen what a caller may see.

use std::collections::{BTreeMap, HashMap};

use aios_shared::audit::kinds;
use aios_shared::memory::Classification;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::index::{dot_f32, ScanFilter};
use super::items::{load_index, read_generation};
use super::{effective_expiry, vector_from_bytes, Memory, MemoryError, Provenance};
use crate::store::append_event;
use aios_daemon::db::DbError;

/// Shortlist the index proposes for exact re-ranking, at least.
const MIN_SHORTLIST: usize = 64;
/// Keyword matches considered in a hybrid search.
const KEYWORD_CANDIDATES: usize = 200;

/// What to look for and where it may come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// The query text.
    pub query: String,
    /// Namespaces to search.
    pub namespaces: Vec<String>,
    /// Classifications that may be returned.
    pub classifications: Vec<Classification>,
    /// Metadata every returned item must carry (top-level key = value).
    #[serde(default)]
    pub filter: BTreeMap<String, String>,
    /// Most items returned.
    pub top_k: usize,
    /// Items scoring below this are dropped.
    pub min_score: f32,
    /// Weight of the keyword score, 0 (similarity only) to 1.
    #[serde(default)]
    pub keyword_weight: f32,
}

/// One returned item, with why it was returned and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The item's id.
    pub id: String,
    /// Its version.
    pub version: u64,
    /// Its namespace.
    pub namespace: String,
    /// Its classification.
    pub classification: Classification,
    /// The text.
    pub text: String,
    /// Its metadata.
    pub metadata: serde_json::Value,
    /// The ranking score (similarity, blended with the keyword score in a hybrid search).
    pub score: f32,
    /// Cosine similarity to the query.
    pub similarity: f32,
    /// Normalised FTS5 keyword score, in a hybrid search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<f32>,
    /// Where it came from.
    pub provenance: Provenance,
}

impl Memory {
    /// Embeds the query and searches; see the module documentation for the order.
    pub async fn search(&self, request: &SearchRequest, now_ms: i64) -> Result<Vec<Hit>, MemoryError> {
        if request.top_k == 0 || request.classifications.is_empty() || !self.scope_has_items(request).await? {
            return Ok(Vec::new());
        }
        self.check_not_halted()?;
        let vector = self.embedder().embed(vec![request.query.clone()]).await?.pop().unwrap_or_default();
        self.search_vector(request, &vector, now_ms).await
    }

    /// Searches with a query vector already computed (benchmarks, tests).
    ///
    /// Everything after the embedding runs in one closure on the reader
    /// connection, in one read transaction: one hand-off to a blocking
    /// thread per search (each hand-off can wait a scheduler slice on a busy
    /// machine), and the index's generation, the scan and the rows read back
    /// all see the same snapshot.
    pub async fn search_vector(
        &self,
        request: &SearchRequest,
        query: &[f32],
        now_ms: i64,
    ) -> Result<Vec<Hit>, MemoryError> {
        if request.top_k == 0 || request.classifications.is_empty() || request.namespaces.is_empty() {
            return Ok(Vec::new());
        }
        let memory = self.clone();
        let (request, query) = (request.clone(), query.to_vec());
        let (model, retention) = (self.model_id(), self.retention());
        Ok(self
            .inner
            .db
            .read(move |conn| {
                read_transaction(conn, |conn| memory.search_in(conn, &request, &query, &model, &retention, now_ms))
            })
            .await?)
    }

    fn search_in(
        &self,
        conn: &Connection,
        request: &SearchRequest,
        query: &[f32],
        model: &str,
        retention: &BTreeMap<Classification, i64>,
        now_ms: i64,
    ) -> Result<Vec<Hit>, DbError> {
        self.ensure_index(conn, model)?;
        let keyword = if request.keyword_weight > 0.0 { keyword_scores(conn, &request.query)? } else { None };
        let shortlist = {
            let guard = self.inner.index.read().expect("memory index lock");
            match guard.as_ref() {
                Some(index) => {
                    let filter = ScanFilter {
                        namespaces: request.namespaces.iter().filter_map(|ns| index.namespace_id(ns)).collect(),
                        classifications: &request.classifications,
                        retention,
                        metadata: &request.filter,
                        now_ms,
                    };
                    index.scan(query, &filter, (request.top_k * 4).max(MIN_SHORTLIST))
                }
                None => Vec::new(),
            }
        };
        let mut candidates: Vec<i64> = shortlist.into_iter().map(|(seq, _)| seq).collect();
        if let Some(scores) = &keyword {
            candidates.extend(scores.keys().copied());
        }
        candidates.sort_unstable();
        candidates.dedup();
        let ranked = rank(conn, request, query, model, retention, &candidates, keyword.as_ref(), now_ms)?;
        hits(conn, ranked)
    }

    /// Records a retrieval made for a task in the audit log: what was asked
    /// (a hash of the query), where, and the ids, scores and provenance of
    /// what came back. Needs an enrolled edge.
    pub async fn record_retrieval(
        &self,
        task: &str,
        step: &str,
        request: &SearchRequest,
        hits: &[Hit],
        now_ms: i64,
    ) -> Result<(), MemoryError> {
        let Some(identity) = self.inner.identity.clone() else { return Ok(()) };
        let payload = json!({
            "task": task,
            "step": step,
            "query_sha256": hex::encode(Sha256::digest(request.query.as_bytes())),
            "namespaces": request.namespaces,
            "classifications": request.classifications,
            "filter": request.filter,
            "top_k": request.top_k,
            "min_score": request.min_score,
            "keyword_weight": request.keyword_weight,
            "model": self.model_id(),
            "items": hits.iter().map(|h| json!({
                "id": h.id,
                "version": h.version,
                "namespace": h.namespace,
                "classification": h.classification,
                "score": h.score,
                "similarity": h.similarity,
                "keyword": h.keyword,
                "provenance": h.provenance,
            })).collect::<Vec<_>>(),
        });
        self.inner
            .db
            .write(move |conn| append_event(conn, &identity, now_ms, kinds::MEMORY_RETRIEVED, &payload.to_string()))
            .await?;
        Ok(())
    }

    /// Loads the index, or reloads it when another process changed memory
    /// (inside the caller's read transaction).
    fn ensure_index(&self, conn: &Connection, model: &str) -> Result<(), DbError> {
        let current = read_generation(conn)?;
        let loaded = self.inner.index.read().expect("memory index lock").as_ref().map(|i| i.generation);
        if loaded != Some(current) {
            let index = load_index(conn, model)?;
            *self.inner.index.write().expect("memory index lock") = Some(index);
        }
        Ok(())
    }

    /// Whether any item may match at all, so an empty scope never loads the model.
    async fn scope_has_items(&self, request: &SearchRequest) -> Result<bool, MemoryError> {
        let namespaces = request.namespaces.clone();
        let model = self.model_id();
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT EXISTS (SELECT 1 FROM memory_items WHERE namespace = ?1 AND model = ?2)")?;
                for ns in &namespaces {
                    if stmt.query_row(rusqlite::params![ns, model], |r| r.get::<_, bool>(0))? {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await?)
    }
}

/// FTS5 BM25 scores of the query's words, normalised to 0..1 (best = 1).
fn keyword_scores(conn: &Connection, query: &str) -> Result<Option<HashMap<i64, f32>>, DbError> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() > 2)
        .map(|w| format!("\"{}\"", w.to_lowercase()))
        .collect();
    if words.is_empty() {
        return Ok(None);
    }
    let expression = words.join(" OR ");
    let mut stmt = conn.prepare_cached(
        "SELECT rowid, -bm25(memory_fts) FROM memory_fts WHERE memory_fts MATCH ?1 ORDER BY rank LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![expression, KEYWORD_CANDIDATES as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
    })?;
    let scores: Vec<(i64, f64)> = rows.collect::<Result<_, _>>()?;
    let best = scores.iter().map(|s| s.1).fold(0.0, f64::max);
    Ok(Some(scores.into_iter().map(|(seq, s)| (seq, if best > 0.0 { (s / best) as f32 } else { 0.0 })).collect()))
}

/// A candidate that passed the scope conditions in SQL, scored exactly.
struct Ranked {
    /// Its `seq`.
    seq: i64,
    /// Its id, which breaks ties in score.
    id: String,
    /// Its classification, as read back.
    classification: Classification,
    /// The ranking score.
    score: f32,
    /// Cosine similarity to the query.
    similarity: f32,
    /// Normalised keyword score, in a hybrid search.
    keyword: Option<f32>,
}

/// Runs `read` in one read transaction, so every statement sees the same snapshot.
fn read_transaction<R>(conn: &Connection, read: impl FnOnce(&Connection) -> Result<R, DbError>) -> Result<R, DbError> {
    conn.execute_batch("BEGIN")?;
    let result = read(conn);
    conn.execute_batch("COMMIT")?;
    result
}

/// Reads the candidates' vectors back under the scope conditions and the
/// metadata filter, and keeps the best `top_k` by exact score. Only these
/// columns are read for the whole shortlist; text, metadata and provenance
/// only for what is returned ([`hits`]).
#[allow(clippy::too_many_arguments)]
fn rank(
    conn: &Connection,
    request: &SearchRequest,
    query: &[f32],
    model: &str,
    retention: &BTreeMap<Classification, i64>,
    candidates: &[i64],
    keyword: Option<&HashMap<i64, f32>>,
    now_ms: i64,
) -> Result<Vec<Ranked>, DbError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // The lists travel as JSON arrays, so the statement is the same for
    // every search and stays prepared. The unary `+` keeps SQLite on the
    // primary key for the shortlist instead of scanning the scope index: the
    // cost stays that of the shortlist. The last condition: no `key = value`
    // of the filter is missing from the item's tags.
    let mut stmt = conn.prepare_cached(
        "SELECT i.seq, i.classification, i.updated_ms, i.expires_ms, v.vector, i.id
         FROM memory_items i JOIN memory_vectors v ON v.content_hash = i.content_hash AND v.model = i.model
         WHERE i.seq IN (SELECT value FROM json_each(?1)) AND +i.model = ?2
           AND (+i.expires_ms IS NULL OR +i.expires_ms > ?3)
           AND +i.namespace IN (SELECT value FROM json_each(?4))
           AND +i.classification IN (SELECT value FROM json_each(?5))
           AND NOT EXISTS (SELECT 1 FROM json_each(?6) f WHERE NOT EXISTS (
               SELECT 1 FROM memory_tags t WHERE t.item = i.seq AND t.key = f.key AND t.value = f.value))",
    )?;
    let classes: Vec<&str> = request.classifications.iter().map(|c| c.as_str()).collect();
    let json = |value: serde_json::Value| value.to_string();
    let mut rows = stmt.query(rusqlite::params![
        json(json!(candidates)),
        model,
        now_ms,
        json(json!(request.namespaces)),
        json(json!(classes)),
        json(json!(request.filter)),
    ])?;
    let weight = request.keyword_weight.clamp(0.0, 1.0);
    let mut ranked = Vec::new();
    while let Some(r) = rows.next()? {
        let class: String = r.get(1)?;
        let classification: Classification = class.parse().map_err(DbError::Corrupt)?;
        if effective_expiry(retention, classification, r.get(2)?, r.get(3)?) <= now_ms {
            continue;
        }
        let seq: i64 = r.get(0)?;
        let vector = r.get_ref(4)?.as_blob().map_err(|e| DbError::Corrupt(format!("memory vector: {e}")))?;
        let similarity = dot_f32(query, &vector_from_bytes(vector)?);
        let keyword = keyword.map(|k| k.get(&seq).copied().unwrap_or(0.0));
        let score = match keyword {
            Some(k) => (1.0 - weight) * similarity + weight * k,
            None => similarity,
        };
        if score >= request.min_score {
            ranked.push(Ranked { seq, id: r.get(5)?, classification, score, similarity, keyword });
        }
    }
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    ranked.truncate(request.top_k);
    Ok(ranked)
}

/// The returned items in full, in the order of `ranked`.
fn hits(conn: &Connection, ranked: Vec<Ranked>) -> Result<Vec<Hit>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, namespace, text, metadata, added_by, source, task_id, reason, created_ms
         FROM memory_items WHERE seq = ?1",
    )?;
    let mut hits = Vec::with_capacity(ranked.len());
    for r in ranked {
        let mut rows = stmt.query([r.seq])?;
        let row = rows.next()?.ok_or_else(|| DbError::Corrupt(format!("memory item {} vanished in a read", r.id)))?;
        let metadata: String = row.get(3)?;
        hits.push(Hit {
            id: r.id,
            version: row.get::<_, i64>(0)? as u64,
            namespace: row.get(1)?,
            classification: r.classification,
            text: row.get(2)?,
            metadata: serde_json::from_str(&metadata).map_err(|e| DbError::Corrupt(format!("metadata: {e}")))?,
            score: r.score,
            similarity: r.similarity,
            keyword: r.keyword,
            provenance: Provenance::from_row(row, 4)?,
        });
    }
    Ok(hits)
}
