//! The `file` connector: a document written into a directory atomically (a
//! temporary file, fsync, rename), so a reader never sees half of it.
//!
//! `write` replaces a document of the same name; `publish` refuses to replace
//! a different one. Both are idempotent: writing the same content again is
//! the same effect, so a resent intent cannot make a second document.

use std::io::Write;
use std::path::{Path, PathBuf};

use aios_shared::exec::ConnectorSpec;
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::connector::{Call, Connector, ConnectorError};

/// Writes documents into one directory.
pub struct FileConnector {
    directory: PathBuf,
}

impl FileConnector {
    /// A connector for `spec` (kind `file`).
    pub fn new(spec: &ConnectorSpec) -> Self {
        Self { directory: PathBuf::from(spec.directory.clone().unwrap_or_default()) }
    }
}

impl Connector for FileConnector {
    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, ConnectorError>> {
        let directory = self.directory.clone();
        let name = call.args.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let content = match call.args.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let publish = call.spec.mode.as_deref() == Some("publish");
        let key = call.key.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || write_document(&directory, &name, content.as_bytes(), publish, &key))
                .await
                .map_err(|err| ConnectorError::Unknown(format!("the writer stopped: {err}")))?
        })
    }
}

fn write_document(
    directory: &Path,
    name: &str,
    content: &[u8],
    publish: bool,
    key: &str,
) -> Result<Value, ConnectorError> {
    let safe = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !safe {
        return Err(ConnectorError::Permanent(format!(
            "document name {name:?} must be letters, digits, `-`, `_` and `.`, not starting with `.`"
        )));
    }
    std::fs::create_dir_all(directory)
        .map_err(|err| ConnectorError::Retryable(format!("cannot create {}: {err}", directory.display())))?;
    let target = directory.join(name);
    if std::fs::symlink_metadata(&target).is_ok_and(|meta| !meta.file_type().is_file()) {
        return Err(ConnectorError::Permanent(format!(
            "{} is not a regular file (a link or a directory); the file connector writes only its own documents",
            target.display()
        )));
    }
    let digest = hex::encode(Sha256::digest(content));
    let done = || json!({ "path": target.display().to_string(), "bytes": content.len(), "sha256": digest });
    if let Ok(existing) = std::fs::read(&target) {
        if existing == content {
            return Ok(done());
        }
        if publish {
            return Err(ConnectorError::Permanent(format!("{} already holds another document", target.display())));
        }
    }
    // An unpredictable name, created only if nothing (no planted link) is there.
    let temp = directory.join(format!(".{name}.{}.{:016x}.tmp", &key[..key.len().min(16)], rand::random::<u64>()));
    let io = |err: std::io::Error| ConnectorError::Retryable(format!("cannot write {}: {err}", target.display()));
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&temp).map_err(io)?;
    file.write_all(content).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    if publish {
        // A hard link fails if the name exists, so a racing publisher of a
        // different document cannot be overwritten.
        let linked = std::fs::hard_link(&temp, &target);
        let _ = std::fs::remove_file(&temp);
        match linked {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                if std::fs::read(&target).map_err(io)? != content {
                    return Err(ConnectorError::Permanent(format!(
                        "{} already holds another document",
                        target.display()
                    )));
                }
            }
            Err(err) => return Err(io(err)),
        }
    } else {
        std::fs::rename(&temp, &target).map_err(io)?;
    }
    if let Ok(dir) = std::fs::File::open(directory) {
        let _ = dir.sync_all();
    }
    Ok(done())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_written_whole_and_publish_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let out = write_document(dir.path(), "a.txt", b"one", false, "k1").unwrap();
        assert_eq!(out["bytes"], 3);
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"one");
        write_document(dir.path(), "a.txt", b"two", false, "k2").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"two");
        write_document(dir.path(), "p.txt", b"first", true, "k3").unwrap();
        write_document(dir.path(), "p.txt", b"first", true, "k3").expect("the same document again is the same effect");
        let err = write_document(dir.path(), "p.txt", b"other", true, "k4").unwrap_err();
        assert!(matches!(err, ConnectorError::Permanent(_)), "{err}");
        for bad in ["../x", ".hidden", "a/b", ""] {
            assert!(matches!(write_document(dir.path(), bad, b"x", false, "k"), Err(ConnectorError::Permanent(_))));
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files remain");
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_link_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("letter.txt")).unwrap();
        for publish in [false, true] {
            let err = write_document(&out, "letter.txt", b"overwritten", publish, "k1").unwrap_err();
            assert!(matches!(&err, ConnectorError::Permanent(p) if p.contains("not a regular file")), "{err}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }
}
