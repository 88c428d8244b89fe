//! Writes and erasure of memory items, and the reads behind show, stats and
//! export. Every write runs in one transaction with its audit event and a
//! bump of `memory_meta.generation`, which tells other processes' indexes
//! that they are stale.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use aios_shared::audit::kinds;
use aios_shared::memory::{valid_namespace, Classification};
use base64::Engine as _;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::index::tag_hash;
use super::{
    content_hash, vector_bytes, vector_from_bytes, Added, Item, Memory, MemoryError, NewItem, Provenance, VectorIndex,
};
use crate::store::append_event;
use aios_daemon::db::DbError;

/// Texts embedded per call to the model worker.
const EMBED_CHUNK: usize = 256;

/// One item on its way in.
pub(super) struct Pending {
    /// The item.
    pub item: NewItem,
    /// A vector that came with it (an import of the same model), if any.
    pub vector: Option<Vec<f32>>,
    /// The version to give a new item (imports keep theirs).
    pub version: Option<u64>,
}

/// Which items `export` writes.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Include each item's vector and model.
    pub vectors: bool,
}

/// What `memory stats` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Items stored.
    pub items: u64,
    /// Items per namespace and classification.
    pub by_namespace: BTreeMap<String, BTreeMap<String, u64>>,
    /// Items per embedding model.
    pub by_model: BTreeMap<String, u64>,
    /// The model in force.
    pub model: String,
    /// Items whose vectors come from another model (`reindex` rebuilds them).
    pub stale: u64,
    /// Cached vectors (all models).
    pub vectors: u64,
    /// Authoritative records.
    pub records: u64,
    /// Size of the whole database file.
    pub db_bytes: u64,
    /// Rows in the loaded vector index (0 until a search loads it).
    pub index_rows: usize,
}

/// What `forget_subject` erased.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Forgotten {
    /// Ids of the items erased.
    pub items: Vec<String>,
    /// `(namespace, key)` of the authoritative records erased.
    pub records: Vec<(String, String)>,
    /// Whether the write-ahead log was emptied into the database file
    /// afterwards; false while a reader in another process held old pages
    /// (the next checkpoint empties it).
    pub checkpointed: bool,
}

impl Memory {
    /// Adds items (an existing id gets a new version). Texts already in the
    /// embedding cache are not embedded again.
    pub async fn add(&self, items: Vec<NewItem>, now_ms: i64) -> Result<Vec<Added>, MemoryError> {
        let pending = items.into_iter().map(|item| Pending { item, vector: None, version: None }).collect();
        self.write_items(pending, kinds::MEMORY_ADDED, now_ms).await
    }

    /// Imports exported items: text, metadata, provenance and, when they were
    /// exported with vectors of the model in force, their vectors.
    pub async fn import(&self, items: Vec<Item>, now_ms: i64) -> Result<Vec<Added>, MemoryError> {
        let model = self.model_id();
        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            let vector = match (&item.vector, item.model == model) {
                (Some(encoded), true) => {
                    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|err| {
                        MemoryError::Invalid(format!("item `{}`: vector is not base64: {err}", item.id))
                    })?;
                    Some(vector_from_bytes(&bytes)?)
                }
                _ => None,
            };
            pending.push(Pending {
                item: NewItem {
                    id: Some(item.id),
                    namespace: item.namespace,
                    text: item.text,
                    metadata: item.metadata,
                    classification: item.classification,
                    subjects: item.subjects,
                    provenance: item.provenance,
                    expires_ms: item.expires_ms,
                },
                vector,
                version: Some(item.version),
            });
        }
        self.write_items(pending, kinds::MEMORY_ADDED, now_ms).await
    }

    pub(super) async fn write_items(
        &self,
        pending: Vec<Pending>,
        audit_kind: &'static str,
        now_ms: i64,
    ) -> Result<Vec<Added>, MemoryError> {
        for p in &pending {
            check_item(&p.item)?;
        }
        let model = self.model_id();
        let hashes: Vec<[u8; 32]> = pending.iter().map(|p| content_hash(&p.item.text)).collect();
        let texts: Vec<&str> = pending.iter().map(|p| p.item.text.as_str()).collect();
        let supplied: Vec<Option<Vec<f32>>> = pending.iter().map(|p| p.vector.clone()).collect();
        let (vectors, cached) = self.vectors_for(&texts, &hashes, supplied).await?;
        let identity = self.inner.identity.clone();
        let rows: Vec<(Pending, [u8; 32], Vec<f32>, bool)> = pending
            .into_iter()
            .zip(hashes)
            .zip(vectors.into_iter().zip(cached))
            .map(|((p, h), (v, c))| (p, h, v, c))
            .collect();
        let (generation, written) = self
            .inner
            .db
            .write(move |conn| {
                let mut written = Vec::with_capacity(rows.len());
                for (pending, hash, vector, cached) in rows {
                    let (seq, added) = upsert_item(conn, &pending, &hash, &model, &vector, cached, now_ms)?;
                    written.push((seq, added, pending.item, vector));
                }
                let generation = bump_generation(conn)?;
                if let Some(identity) = &identity {
                    let ids: Vec<&str> = written.iter().map(|w| w.1.id.as_str()).collect();
                    let namespaces: HashSet<&str> = written.iter().map(|w| w.2.namespace.as_str()).collect();
                    let sources: HashSet<&str> = written.iter().map(|w| w.2.provenance.source.as_str()).collect();
                    let added_by: HashSet<&str> = written.iter().map(|w| w.2.provenance.added_by.as_str()).collect();
                    let payload = json!({
                        "items": ids.len(),
                        "ids": ids,
                        "namespaces": namespaces,
                        "sources": sources,
                        "added_by": added_by,
                        "model": model,
                    });
                    append_event(conn, identity, now_ms, audit_kind, &payload.to_string())?;
                }
                Ok((generation, written))
            })
            .await?;
        let added = written.iter().map(|w| w.1.clone()).collect();
        self.apply_to_index(generation, |index| {
            for (seq, _, item, vector) in &written {
                let tags = metadata_tags(&item.metadata);
                index.upsert(*seq, &item.namespace, item.classification, now_ms, item.expires_ms, tags, vector);
            }
        });
        Ok(added)
    }

    /// Vectors for `texts` (hashes given): supplied ones, then the cache, then
    /// the model for the rest (each distinct text once). Also says which
    /// needed no model call.
    pub(super) async fn vectors_for(
        &self,
        texts: &[&str],
        hashes: &[[u8; 32]],
        supplied: Vec<Option<Vec<f32>>>,
    ) -> Result<(Vec<Vec<f32>>, Vec<bool>), MemoryError> {
        let embedder = self.embedder();
        let model = embedder.model_id().to_owned();
        let wanted: Vec<[u8; 32]> = hashes.to_vec();
        let found: HashMap<[u8; 32], Vec<f32>> = self
            .inner
            .db
            .read(move |conn| {
                let mut stmt =
                    conn.prepare_cached("SELECT vector FROM memory_vectors WHERE content_hash = ?1 AND model = ?2")?;
                let mut found = HashMap::new();
                for hash in wanted {
                    if found.contains_key(&hash) {
                        continue;
                    }
                    let bytes: Option<Vec<u8>> =
                        stmt.query_row(params![hash.as_slice(), model], |r| r.get(0)).optional()?;
                    if let Some(bytes) = bytes {
                        found.insert(hash, vector_from_bytes(&bytes)?);
                    }
                }
                Ok(found)
            })
            .await?;
        let mut missing: Vec<(usize, [u8; 32])> = Vec::new();
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        for (idx, hash) in hashes.iter().enumerate() {
            if supplied[idx].is_none() && !found.contains_key(hash) && seen.insert(*hash) {
                missing.push((idx, *hash));
            }
        }
        let mut embedded: HashMap<[u8; 32], Vec<f32>> = HashMap::new();
        if !missing.is_empty() {
            self.check_not_halted()?;
        }
        for chunk in missing.chunks(EMBED_CHUNK) {
            let batch: Vec<String> = chunk.iter().map(|(idx, _)| texts[*idx].to_owned()).collect();
            let vectors = embedder.embed(batch).await?;
            if vectors.len() != chunk.len() {
                return Err(MemoryError::Embedding {
                    model: embedder.model_id().to_owned(),
                    reason: format!("{} vectors for {} texts", vectors.len(), chunk.len()),
                });
            }
            embedded.extend(chunk.iter().map(|(_, h)| *h).zip(vectors));
        }
        let mut vectors = Vec::with_capacity(texts.len());
        let mut cached = Vec::with_capacity(texts.len());
        for (idx, supplied) in supplied.into_iter().enumerate() {
            let hash = &hashes[idx];
            let (vector, from_cache) = match supplied {
                Some(v) => (v, true),
                None => match found.get(hash) {
                    Some(v) => (v.clone(), true),
                    None => (embedded.get(hash).cloned().expect("every missing hash was embedded"), false),
                },
            };
            vectors.push(vector);
            cached.push(from_cache);
        }
        Ok((vectors, cached))
    }

    /// An item by id.
    pub async fn show(&self, id: &str) -> Result<Option<Item>, MemoryError> {
        let id = id.to_owned();
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let seq: Option<i64> =
                    conn.query_row("SELECT seq FROM memory_items WHERE id = ?1", [&id], |r| r.get(0)).optional()?;
                match seq {
                    None => Ok(None),
                    Some(seq) => Ok(read_items(conn, "WHERE i.seq = ?1", params![seq], false)?.pop()),
                }
            })
            .await?)
    }

    /// Every item (of a namespace), oldest first, for `memory export`.
    pub async fn export(&self, options: ExportOptions) -> Result<Vec<Item>, MemoryError> {
        Ok(self
            .inner
            .db
            .read(move |conn| match &options.namespace {
                Some(ns) => read_items(conn, "WHERE i.namespace = ?1 ORDER BY i.seq", params![ns], options.vectors),
                None => read_items(conn, "ORDER BY i.seq", params![], options.vectors),
            })
            .await?)
    }

    /// Counts for `memory stats`.
    pub async fn stats(&self) -> Result<Stats, MemoryError> {
        let model = self.model_id();
        let index_rows = self.inner.index.read().expect("memory index lock").as_ref().map_or(0, VectorIndex::len);
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64);
                let mut by_namespace: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
                let mut stmt = conn.prepare(
                    "SELECT namespace, classification, COUNT(*) FROM memory_items GROUP BY namespace, classification",
                )?;
                for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?)))? {
                    let (ns, class, n): (String, String, i64) = row?;
                    by_namespace.entry(ns).or_default().insert(class, n as u64);
                }
                let mut by_model = BTreeMap::new();
                let mut stmt = conn.prepare("SELECT model, COUNT(*) FROM memory_items GROUP BY model")?;
                for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                    let (m, n) = row?;
                    by_model.insert(m, n as u64);
                }
                let items = count("SELECT COUNT(*) FROM memory_items")?;
                let stale = items - by_model.get(&model).copied().unwrap_or(0);
                let pages = count("PRAGMA page_count")?;
                let page_size = count("PRAGMA page_size")?;
                Ok(Stats {
                    items,
                    by_namespace,
                    by_model,
                    model,
                    stale,
                    vectors: count("SELECT COUNT(*) FROM memory_vectors")?,
                    records: count("SELECT COUNT(*) FROM memory_records")?,
                    db_bytes: pages * page_size,
                    index_rows,
                })
            })
            .await?)
    }

    /// Erases everything about `subject`: its items, their metadata, their
    /// keyword index entries and their cached vectors (unless another item
    /// still has the same text), and the authoritative records written about
    /// it. Deleted content is overwritten (`secure_delete`) and the
    /// write-ahead log is then emptied into the database file, so the text is
    /// left in neither. The audit event records how many items and records,
    /// the items' ids and a hash of the subject, never the content (nor the
    /// records' keys, which may name the subject).
    pub async fn forget_subject(&self, subject: &str, now_ms: i64) -> Result<Forgotten, MemoryError> {
        let subject = subject.to_owned();
        let identity = self.inner.identity.clone();
        let (generation, removed, records) = self
            .inner
            .db
            .write(move |conn| {
                // Stays on for the writer connection: later deletes (the
                // sweeper's expiries) are overwritten too.
                conn.execute_batch("PRAGMA secure_delete = ON")?;
                let victims = select_victims(
                    conn,
                    "SELECT i.seq, i.id, i.content_hash FROM memory_items i
                     JOIN memory_subjects s ON s.item = i.seq WHERE s.subject = ?1",
                    params![subject],
                )?;
                delete_items(conn, &victims)?;
                let records: Vec<(String, String)> = conn
                    .prepare("DELETE FROM memory_records WHERE subject = ?1 RETURNING namespace, key")?
                    .query_map([&subject], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                // Rewrites the keyword index so no segment keeps the erased terms.
                conn.execute("INSERT INTO memory_fts (memory_fts) VALUES ('optimize')", [])?;
                let generation = bump_generation(conn)?;
                if let Some(identity) = &identity {
                    let namespaces: BTreeSet<&str> = records.iter().map(|r| r.0.as_str()).collect();
                    let payload = json!({
                        "subject_sha256": hex::encode(Sha256::digest(subject.as_bytes())),
                        "items": victims.len(),
                        "ids": victims.iter().map(|v| &v.1).collect::<Vec<_>>(),
                        "records": records.len(),
                        "record_namespaces": namespaces,
                    });
                    append_event(conn, identity, now_ms, kinds::MEMORY_FORGOTTEN, &payload.to_string())?;
                }
                Ok((generation, victims, records))
            })
            .await?;
        self.apply_to_index(generation, |index| removed.iter().for_each(|v| index.remove(v.0)));
        let checkpointed = self.inner.db.checkpoint_truncate().await?;
        Ok(Forgotten { items: removed.into_iter().map(|v| v.1).collect(), records, checkpointed })
    }

    /// Removes every item past its expiry or its classification's retention;
    /// returns the ids removed. The daemon runs this periodically.
    pub async fn sweep(&self, now_ms: i64) -> Result<Vec<String>, MemoryError> {
        let retention = self.retention();
        let identity = self.inner.identity.clone();
        let (generation, removed) = self
            .inner
            .db
            .write(move |conn| {
                let mut victims = select_victims(
                    conn,
                    "SELECT seq, id, content_hash FROM memory_items WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
                    params![now_ms],
                )?;
                for (class, ms) in &retention {
                    victims.extend(select_victims(
                        conn,
                        "SELECT seq, id, content_hash FROM memory_items WHERE classification = ?1 AND updated_ms <= ?2",
                        params![class.as_str(), now_ms.saturating_sub(*ms)],
                    )?);
                }
                victims.sort_by_key(|v| v.0);
                victims.dedup_by_key(|v| v.0);
                if victims.is_empty() {
                    return Ok((None, victims));
                }
                delete_items(conn, &victims)?;
                let generation = bump_generation(conn)?;
                if let Some(identity) = &identity {
                    let payload = json!({
                        "items": victims.len(),
                        "ids": victims.iter().map(|v| &v.1).collect::<Vec<_>>(),
                    });
                    append_event(conn, identity, now_ms, kinds::MEMORY_EXPIRED, &payload.to_string())?;
                }
                Ok((Some(generation), victims))
            })
            .await?;
        if let Some(generation) = generation {
            self.apply_to_index(generation, |index| removed.iter().for_each(|v| index.remove(v.0)));
        }
        Ok(removed.into_iter().map(|v| v.1).collect())
    }

    /// Re-embeds every item whose vector comes from another model than the
    /// one in force; returns how many. Old vectors no item uses are dropped.
    pub async fn reindex(&self, now_ms: i64) -> Result<usize, MemoryError> {
        let model = self.model_id();
        let wanted = model.clone();
        let stale: Vec<(i64, String, Vec<u8>)> = self
            .inner
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare("SELECT seq, text, content_hash FROM memory_items WHERE model != ?1")?;
                let rows = stmt.query_map([&wanted], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        let mut done = 0;
        for chunk in stale.chunks(EMBED_CHUNK * 4) {
            let texts: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
            let hashes: Vec<[u8; 32]> = texts.iter().map(|t| content_hash(t)).collect();
            let (vectors, _) = self.vectors_for(&texts, &hashes, vec![None; texts.len()]).await?;
            let rows: Vec<(i64, [u8; 32], Vec<f32>)> =
                chunk.iter().zip(hashes).zip(vectors).map(|((r, h), v)| (r.0, h, v)).collect();
            let model = model.clone();
            let identity = self.inner.identity.clone();
            let last = done + rows.len() == stale.len();
            self.inner
                .db
                .write(move |conn| {
                    for (seq, hash, vector) in &rows {
                        conn.prepare_cached("INSERT OR IGNORE INTO memory_vectors VALUES (?1, ?2, ?3)")?
                            .execute(params![hash.as_slice(), model, vector_bytes(vector)])?;
                        conn.prepare_cached("UPDATE memory_items SET model = ?2 WHERE seq = ?1")?
                            .execute(params![seq, model])?;
                    }
                    bump_generation(conn)?;
                    if last {
                        let dropped = conn.execute(
                            "DELETE FROM memory_vectors WHERE NOT EXISTS (SELECT 1 FROM memory_items i
                             WHERE i.content_hash = memory_vectors.content_hash AND i.model = memory_vectors.model)",
                            [],
                        )?;
                        if let Some(identity) = &identity {
                            let payload = json!({ "model": model, "vectors_dropped": dropped });
                            append_event(conn, identity, now_ms, kinds::MEMORY_REINDEXED, &payload.to_string())?;
                        }
                    }
                    Ok(())
                })
                .await?;
            done += chunk.len();
        }
        *self.inner.index.write().expect("memory index lock") = None;
        Ok(done)
    }

    /// Applies a change this process committed at `generation` to the loaded
    /// index, or drops the index when another write came in between.
    pub(super) fn apply_to_index(&self, generation: i64, change: impl FnOnce(&mut VectorIndex)) {
        let mut guard = self.inner.index.write().expect("memory index lock");
        match guard.as_mut() {
            Some(index) if index.generation + 1 == generation => {
                change(index);
                index.generation = generation;
            }
            Some(_) => *guard = None,
            None => {}
        }
    }
}

fn check_item(item: &NewItem) -> Result<(), MemoryError> {
    let what = item.id.as_deref().unwrap_or("new item");
    let invalid = |problem: String| MemoryError::Invalid(format!("{what}: {problem}"));
    if !valid_namespace(&item.namespace) {
        return Err(invalid(format!("namespace `{}` must use letters, digits, `-`, `_` and `.`", item.namespace)));
    }
    if item.text.trim().is_empty() {
        return Err(invalid("text is empty".into()));
    }
    if !item.metadata.is_object() {
        return Err(invalid("metadata must be a JSON object".into()));
    }
    if let Some(id) = &item.id {
        if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
            return Err(invalid("ids are 1 to 200 printable characters".into()));
        }
    }
    if item.provenance.added_by.is_empty() || item.provenance.source.is_empty() {
        return Err(invalid("provenance needs added_by and source".into()));
    }
    Ok(())
}

pub(super) fn bump_generation(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("UPDATE memory_meta SET generation = generation + 1 RETURNING generation", [], |r| r.get(0))?)
}

pub(super) fn read_generation(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("SELECT generation FROM memory_meta", [], |r| r.get(0))?)
}

fn new_item_id(now_ms: i64) -> String {
    format!("m-{now_ms:x}-{:08x}", rand::random::<u32>())
}

/// Inserts or updates one item with its tags and subjects; returns its seq.
fn upsert_item(
    conn: &Connection,
    pending: &Pending,
    hash: &[u8; 32],
    model: &str,
    vector: &[f32],
    cached: bool,
    now_ms: i64,
) -> Result<(i64, Added), DbError> {
    let item = &pending.item;
    conn.prepare_cached("INSERT OR IGNORE INTO memory_vectors VALUES (?1, ?2, ?3)")?.execute(params![
        hash.as_slice(),
        model,
        vector_bytes(vector)
    ])?;
    let id = item.id.clone().unwrap_or_else(|| new_item_id(now_ms));
    let existing: Option<(i64, i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, version, content_hash FROM memory_items WHERE id = ?1")?
        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let metadata = item.metadata.to_string();
    let p = &item.provenance;
    let created_ms = if p.created_ms > 0 { p.created_ms } else { now_ms };
    let (seq, version) = match existing {
        Some((seq, version, old_hash)) => {
            conn.prepare_cached(
                "UPDATE memory_items SET namespace = ?2, text = ?3, metadata = ?4, classification = ?5,
                    content_hash = ?6, model = ?7, version = ?8, added_by = ?9, source = ?10, task_id = ?11,
                    reason = ?12, updated_ms = ?13, expires_ms = ?14 WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                item.namespace,
                item.text,
                metadata,
                item.classification.as_str(),
                hash.as_slice(),
                model,
                version + 1,
                p.added_by,
                p.source,
                p.task_id,
                p.reason,
                now_ms,
                item.expires_ms
            ])?;
            conn.prepare_cached("DELETE FROM memory_tags WHERE item = ?1")?.execute([seq])?;
            conn.prepare_cached("DELETE FROM memory_subjects WHERE item = ?1")?.execute([seq])?;
            if old_hash.as_slice() != hash.as_slice() {
                drop_unused_vectors(conn, &[old_hash])?;
            }
            (seq, version as u64 + 1)
        }
        None => {
            let version = pending.version.unwrap_or(1).max(1);
            conn.prepare_cached(
                "INSERT INTO memory_items (id, namespace, text, metadata, classification, content_hash, model,
                    version, added_by, source, task_id, reason, created_ms, updated_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                id,
                item.namespace,
                item.text,
                metadata,
                item.classification.as_str(),
                hash.as_slice(),
                model,
                version as i64,
                p.added_by,
                p.source,
                p.task_id,
                p.reason,
                created_ms,
                now_ms,
                item.expires_ms
            ])?;
            (conn.last_insert_rowid(), version)
        }
    };
    if let Some(map) = item.metadata.as_object() {
        let mut insert = conn.prepare_cached("INSERT OR IGNORE INTO memory_tags VALUES (?1, ?2, ?3)")?;
        for (key, value) in map {
            if let Some(text) = tag_value(value) {
                insert.execute(params![key, text, seq])?;
            }
        }
    }
    let mut insert = conn.prepare_cached("INSERT OR IGNORE INTO memory_subjects VALUES (?1, ?2)")?;
    for subject in &item.subjects {
        insert.execute(params![subject, seq])?;
    }
    Ok((seq, Added { id, version, cached }))
}

/// The hashes of an item's metadata tags, as the vector index filters them.
fn metadata_tags(metadata: &Value) -> Vec<u64> {
    let Some(map) = metadata.as_object() else { return Vec::new() };
    map.iter().filter_map(|(key, value)| tag_value(value).map(|text| tag_hash(key, &text))).collect()
}

/// The text a scalar metadata value is filtered by (objects and arrays are not).
pub(super) fn tag_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

type Victim = (i64, String, Vec<u8>);

fn select_victims(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Victim>, DbError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn delete_items(conn: &Connection, victims: &[Victim]) -> Result<(), DbError> {
    let mut delete = conn.prepare_cached("DELETE FROM memory_items WHERE seq = ?1")?;
    for (seq, _, _) in victims {
        delete.execute([seq])?;
    }
    let hashes: Vec<Vec<u8>> = victims.iter().map(|v| v.2.clone()).collect();
    drop_unused_vectors(conn, &hashes)
}

/// Drops cached vectors (of every model) of `hashes` that no item uses any more.
fn drop_unused_vectors(conn: &Connection, hashes: &[Vec<u8>]) -> Result<(), DbError> {
    let mut drop = conn.prepare_cached(
        "DELETE FROM memory_vectors WHERE content_hash = ?1
         AND NOT EXISTS (SELECT 1 FROM memory_items WHERE content_hash = ?1)",
    )?;
    for hash in hashes {
        drop.execute([hash])?;
    }
    Ok(())
}

/// Items matching `clause` (over `memory_items i`), with subjects and, if asked, vectors.
pub(super) fn read_items(
    conn: &Connection,
    clause: &str,
    args: impl rusqlite::Params,
    with_vectors: bool,
) -> Result<Vec<Item>, DbError> {
    let vector = if with_vectors {
        "(SELECT vector FROM memory_vectors v WHERE v.content_hash = i.content_hash AND v.model = i.model)"
    } else {
        "NULL"
    };
    let sql = format!(
        "SELECT i.seq, i.id, i.namespace, i.text, i.metadata, i.classification, i.version, i.added_by, i.source,
            i.task_id, i.reason, i.created_ms, i.updated_ms, i.expires_ms, i.model, {vector}
         FROM memory_items i {clause}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut subjects = conn.prepare_cached("SELECT subject FROM memory_subjects WHERE item = ?1 ORDER BY subject")?;
    let mut items = Vec::new();
    let mut rows = stmt.query(args)?;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let metadata: String = r.get(4)?;
        let class: String = r.get(5)?;
        let vector: Option<Vec<u8>> = r.get(15)?;
        items.push(Item {
            id: r.get(1)?,
            namespace: r.get(2)?,
            text: r.get(3)?,
            metadata: serde_json::from_str(&metadata)
                .map_err(|err| DbError::Corrupt(format!("memory item metadata: {err}")))?,
            classification: class.parse().map_err(DbError::Corrupt)?,
            subjects: subjects.query_map([seq], |r| r.get(0))?.collect::<Result<_, _>>()?,
            provenance: Provenance::from_row(r, 7)?,
            version: r.get::<_, i64>(6)? as u64,
            updated_ms: r.get(12)?,
            expires_ms: r.get(13)?,
            model: r.get(14)?,
            vector: vector.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        });
    }
    Ok(items)
}

/// Loads the vectors of `model`'s items into a fresh index, at the
/// generation read in the same snapshot (the caller holds a read transaction).
pub(super) fn load_index(conn: &Connection, model: &str) -> Result<VectorIndex, DbError> {
    let generation = read_generation(conn)?;
    let mut index = VectorIndex::new(0, generation);
    let mut tags: HashMap<i64, Vec<u64>> = HashMap::new();
    let mut stmt = conn.prepare("SELECT item, key, value FROM memory_tags")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let text = |idx| r.get_ref(idx)?.as_str().map_err(|e| DbError::Corrupt(format!("memory tag: {e}")));
        let (key, value) = (text(1)?, text(2)?);
        tags.entry(r.get(0)?).or_default().push(tag_hash(key, value));
    }
    let mut stmt = conn.prepare(
        "SELECT i.seq, i.namespace, i.classification, i.updated_ms, i.expires_ms, v.vector
         FROM memory_items i JOIN memory_vectors v ON v.content_hash = i.content_hash AND v.model = i.model
         WHERE i.model = ?1",
    )?;
    let mut rows = stmt.query([model])?;
    while let Some(r) = rows.next()? {
        let class: String = r.get(2)?;
        let classification: Classification = class.parse().map_err(DbError::Corrupt)?;
        let vector = vector_from_bytes(&r.get::<_, Vec<u8>>(5)?)?;
        let namespace: String = r.get(1)?;
        let seq: i64 = r.get(0)?;
        let tags = tags.remove(&seq).unwrap_or_default();
        index.upsert(seq, &namespace, classification, r.get(3)?, r.get(4)?, tags, &vector);
    }
    Ok(index)
}
