//! Conservative retrieval. In order: the scope (namespaces, classifications,
//! expiry and retention) and the metadata filter decide which items may be
//! returned at all; then similarity ranks them (the vector index proposes a
//! shortlist, exact f32 vectors re-rank it, optionally blended with FTS5
//! keyword scores); then a minimum score drops weak matches. The rows are
//! read back from SQLite under the same scope conditions before anything is
//! returned, so the in-memory index can never widen what a caller may see.

use std::collections::{BTreeMap, HashMap, HashSet};

use aios_shared::audit::kinds;
use aios_shared::memory::Classification;
use rusqlite::{params_from_iter, types::Value as SqlValue, Connection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::index::{dot_f32, ScanFilter};
use super::items::{load_index, read_generation};
use super::{effective_expiry, vector_from_bytes, Memory, MemoryError, Provenance};
use crate::db::DbError;
use crate::store::append_event;

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
        let vector = self.embedder().embed(vec![request.query.clone()]).await?.pop().unwrap_or_default();
        self.search_vector(request, &vector, now_ms).await
    }

    /// Searches with a query vector already computed (benchmarks, tests).
    pub async fn search_vector(
        &self,
        request: &SearchRequest,
        query: &[f32],
        now_ms: i64,
    ) -> Result<Vec<Hit>, MemoryError> {
        if request.top_k == 0 || request.classifications.is_empty() || request.namespaces.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_index().await?;
        let allowed = self.metadata_filter(&request.filter).await?;
        let keyword = if request.keyword_weight > 0.0 { self.keyword_scores(&request.query).await? } else { None };
        let memory = self.clone();
        let (request_copy, query_copy) = (request.clone(), query.to_vec());
        let retention = self.retention();
        let shortlist = tokio::task::spawn_blocking(move || {
            let guard = memory.inner.index.read().expect("memory index lock");
            let Some(index) = guard.as_ref() else { return Vec::new() };
            let filter = ScanFilter {
                namespaces: request_copy.namespaces.iter().filter_map(|ns| index.namespace_id(ns)).collect(),
                classifications: &request_copy.classifications,
                retention: &retention,
                allowed: allowed.as_ref(),
                now_ms,
            };
            index.scan(&query_copy, &filter, (request_copy.top_k * 4).max(MIN_SHORTLIST))
        })
        .await
        .map_err(|err| MemoryError::Invalid(format!("the vector scan failed: {err}")))?;
        let mut candidates: Vec<i64> = shortlist.into_iter().map(|(seq, _)| seq).collect();
        if let Some(scores) = &keyword {
            candidates.extend(scores.keys().copied());
        }
        candidates.sort_unstable();
        candidates.dedup();
        let request = request.clone();
        let query = query.to_vec();
        let model = self.model_id();
        let retention = self.retention();
        Ok(self
            .inner
            .db
            .read(move |conn| rank(conn, &request, &query, &model, &retention, &candidates, keyword.as_ref(), now_ms))
            .await?)
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

    /// Loads the index, or reloads it when another process changed memory.
    async fn ensure_index(&self) -> Result<(), MemoryError> {
        let current = self.inner.db.read(read_generation).await?;
        let loaded = self.inner.index.read().expect("memory index lock").as_ref().map(|i| i.generation);
        if loaded == Some(current) {
            return Ok(());
        }
        let model = self.model_id();
        let index = self.inner.db.read(move |conn| load_index(conn, &model)).await?;
        *self.inner.index.write().expect("memory index lock") = Some(index);
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

    /// The items carrying every `key = value` of `filter` (SQL over the tag index).
    async fn metadata_filter(&self, filter: &BTreeMap<String, String>) -> Result<Option<HashSet<i64>>, MemoryError> {
        if filter.is_empty() {
            return Ok(None);
        }
        let filter = filter.clone();
        Ok(Some(
            self.inner
                .db
                .read(move |conn| {
                    let mut sql = String::from("SELECT item FROM memory_tags WHERE key = ? AND value = ?");
                    for _ in 1..filter.len() {
                        sql.push_str(" INTERSECT SELECT item FROM memory_tags WHERE key = ? AND value = ?");
                    }
                    let args: Vec<&String> = filter.iter().flat_map(|(k, v)| [k, v]).collect();
                    let mut stmt = conn.prepare_cached(&sql)?;
                    let rows = stmt.query_map(params_from_iter(args), |r| r.get(0))?;
                    Ok(rows.collect::<Result<HashSet<i64>, _>>()?)
                })
                .await?,
        ))
    }

    /// FTS5 BM25 scores of the query's words, normalised to 0..1 (best = 1).
    async fn keyword_scores(&self, query: &str) -> Result<Option<HashMap<i64, f32>>, MemoryError> {
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() > 2)
            .map(|w| format!("\"{}\"", w.to_lowercase()))
            .collect();
        if words.is_empty() {
            return Ok(None);
        }
        let expression = words.join(" OR ");
        Ok(Some(
            self.inner
                .db
                .read(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT rowid, -bm25(memory_fts) FROM memory_fts WHERE memory_fts MATCH ?1 ORDER BY rank LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(rusqlite::params![expression, KEYWORD_CANDIDATES as i64], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?))
                    })?;
                    let scores: Vec<(i64, f64)> = rows.collect::<Result<_, _>>()?;
                    let best = scores.iter().map(|s| s.1).fold(0.0, f64::max);
                    Ok(scores.into_iter().map(|(seq, s)| (seq, if best > 0.0 { (s / best) as f32 } else { 0.0 })).collect())
                })
                .await?,
        ))
    }
}

/// Reads the candidates back under the scope conditions and ranks them exactly.
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
) -> Result<Vec<Hit>, DbError> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut args: Vec<SqlValue> = vec![SqlValue::Text(model.to_owned()), SqlValue::Integer(now_ms)];
    let namespaces = placeholders(&mut args, request.namespaces.iter().map(|n| SqlValue::Text(n.clone())));
    let classes =
        placeholders(&mut args, request.classifications.iter().map(|c| SqlValue::Text(c.as_str().to_owned())));
    let seqs = placeholders(&mut args, candidates.iter().map(|s| SqlValue::Integer(*s)));
    let mut tags = String::new();
    for (key, value) in &request.filter {
        args.push(SqlValue::Text(key.clone()));
        args.push(SqlValue::Text(value.clone()));
        tags.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM memory_tags t WHERE t.item = i.seq AND t.key = ?{} AND t.value = ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    let sql = format!(
        "SELECT i.seq, i.id, i.version, i.namespace, i.classification, i.text, i.metadata, i.added_by, i.source,
            i.task_id, i.reason, i.created_ms, i.updated_ms, i.expires_ms, v.vector
         FROM memory_items i JOIN memory_vectors v ON v.content_hash = i.content_hash AND v.model = i.model
         WHERE i.seq IN ({seqs}) AND +i.model = ?1 AND (+i.expires_ms IS NULL OR +i.expires_ms > ?2)
           AND +i.namespace IN ({namespaces}) AND +i.classification IN ({classes}){tags}"
    );
    // The unary `+` keeps SQLite on the primary key for the shortlist instead
    // of scanning the scope index: the cost stays that of the shortlist.
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let weight = request.keyword_weight.clamp(0.0, 1.0);
    let mut hits = Vec::new();
    while let Some(r) = rows.next()? {
        let class: String = r.get(4)?;
        let classification: Classification = class.parse().map_err(DbError::Corrupt)?;
        if effective_expiry(retention, classification, r.get(12)?, r.get(13)?) <= now_ms {
            continue;
        }
        let seq: i64 = r.get(0)?;
        let similarity = dot_f32(query, &vector_from_bytes(&r.get::<_, Vec<u8>>(14)?)?);
        let keyword = keyword.map(|k| k.get(&seq).copied().unwrap_or(0.0));
        let score = match keyword {
            Some(k) => (1.0 - weight) * similarity + weight * k,
            None => similarity,
        };
        if score < request.min_score {
            continue;
        }
        let metadata: String = r.get(6)?;
        hits.push(Hit {
            id: r.get(1)?,
            version: r.get::<_, i64>(2)? as u64,
            namespace: r.get(3)?,
            classification,
            text: r.get(5)?,
            metadata: serde_json::from_str(&metadata).map_err(|e| DbError::Corrupt(format!("metadata: {e}")))?,
            score,
            similarity,
            keyword,
            provenance: Provenance {
                added_by: r.get(7)?,
                source: r.get(8)?,
                task_id: r.get(9)?,
                reason: r.get(10)?,
                created_ms: r.get(11)?,
            },
        });
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    hits.truncate(request.top_k);
    Ok(hits)
}

/// Appends `values` to `args` and returns their `?N` placeholders, comma-separated.
fn placeholders(args: &mut Vec<SqlValue>, values: impl Iterator<Item = SqlValue>) -> String {
    let mut text = Vec::new();
    for value in values {
        args.push(value);
        text.push(format!("?{}", args.len()));
    }
    if text.is_empty() {
        "NULL".into()
    } else {
        text.join(", ")
    }
}
