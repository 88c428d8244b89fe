//! Authoritative records: a small transactional key-value store per
//! namespace for business state that must be exact (an order's status, the
//! last invoice number). Each write bumps the record's version; a writer may
//! demand the version it read (compare-and-set, `0` meaning "absent"). Agents
//! reach records only through `record_get` / `record_put` steps and tools.

use aios_shared::audit::kinds;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Memory, MemoryError};
use crate::store::append_event;

/// One record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Its namespace.
    pub namespace: String,
    /// Its key.
    pub key: String,
    /// The value, a JSON document.
    pub value: Value,
    /// Starts at 1; each write adds one.
    pub version: u64,
    /// When it was last written.
    pub updated_ms: i64,
    /// Who wrote it last (`task:ID:SEQ`, `cli`).
    pub updated_by: String,
    /// The data subject it is about, if a write named one (what
    /// `memory forget --subject` erases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl Memory {
    /// The record at `namespace/key`, if any.
    pub async fn record(&self, namespace: &str, key: &str) -> Result<Option<Record>, MemoryError> {
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let row: Option<(String, i64, i64, String, Option<String>)> = conn
                    .prepare_cached(
                        "SELECT value, version, updated_ms, updated_by, subject FROM memory_records
                         WHERE namespace = ?1 AND key = ?2",
                    )?
                    .query_row(params![namespace, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .optional()?;
                Ok(row.map(|(value, version, updated_ms, updated_by, subject)| Record {
                    value: serde_json::from_str(&value).unwrap_or(Value::String(value)),
                    namespace,
                    key,
                    version: version as u64,
                    updated_ms,
                    updated_by,
                    subject,
                }))
            })
            .await?)
    }

    /// Writes `value` at `namespace/key`. With `expect_version`, only if the
    /// record is at that version (0: absent); otherwise [`MemoryError::Conflict`].
    ///
    /// A writer that repeats itself (a task step re-run after a crash) is
    /// recognised: if the record is already one past the expected version,
    /// written by the same `writer` with the same value, that write is returned.
    ///
    /// `subject` names the data subject the record is about; a write without
    /// one keeps the subject an earlier write named, so a record once about
    /// a subject is erased with that subject.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_record(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        expect_version: Option<u64>,
        writer: &str,
        subject: Option<&str>,
        now_ms: i64,
    ) -> Result<Record, MemoryError> {
        let (namespace, key, writer) = (namespace.to_owned(), key.to_owned(), writer.to_owned());
        let subject = subject.map(str::to_owned);
        let identity = self.inner.identity.clone();
        self.inner
            .db
            .write(move |conn| {
                let text = value.to_string();
                let current: Option<(String, i64, i64, String, Option<String>)> = conn
                    .query_row(
                        "SELECT value, version, updated_ms, updated_by, subject FROM memory_records
                         WHERE namespace = ?1 AND key = ?2",
                        params![namespace, key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                    )
                    .optional()?;
                let found = current.as_ref().map_or(0, |c| c.1 as u64);
                let subject = subject.clone().or_else(|| current.as_ref().and_then(|c| c.4.clone()));
                let record = |version: u64, updated_ms: i64, updated_by: String| Record {
                    namespace: namespace.clone(),
                    key: key.clone(),
                    value: value.clone(),
                    version,
                    updated_ms,
                    updated_by,
                    subject: subject.clone(),
                };
                if let Some(expected) = expect_version {
                    if found != expected {
                        if let Some((stored, version, updated_ms, by, _)) = &current {
                            if *version as u64 == expected + 1 && *by == writer && *stored == text {
                                return Ok(Ok(record(*version as u64, *updated_ms, by.clone())));
                            }
                        }
                        return Ok(Err(MemoryError::Conflict { namespace, key, expected, found }));
                    }
                }
                let version = found + 1;
                conn.execute(
                    "INSERT INTO memory_records (namespace, key, value, version, updated_ms, updated_by, subject)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (namespace, key) DO UPDATE SET value = ?3, version = ?4, updated_ms = ?5,
                        updated_by = ?6, subject = ?7",
                    params![namespace, key, text, version as i64, now_ms, writer, subject],
                )?;
                if let Some(identity) = &identity {
                    let payload = json!({
                        "namespace": namespace,
                        "key": key,
                        "version": version,
                        "expected": expect_version,
                        "by": writer,
                        "subject_sha256": subject.as_ref().map(|s| hex::encode(Sha256::digest(s.as_bytes()))),
                    });
                    append_event(conn, identity, now_ms, kinds::RECORD_PUT, &payload.to_string())?;
                }
                Ok(Ok(record(version, now_ms, writer.clone())))
            })
            .await?
    }
}
