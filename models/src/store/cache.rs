//! The on-disk cache in the Hugging Face Hub layout, so a cache filled by
//! standard HF tools can be copied to an air-gapped machine and the other way
//! round:
//!
//! ```text
//! ROOT/models--ORG--NAME/blobs/SHA256            file contents
//! ROOT/models--ORG--NAME/snapshots/COMMIT/FILE   symlink to ../../blobs/SHA256
//! ROOT/models--ORG--NAME/refs/REVISION           the commit REVISION points at
//! ```
//!
//! Files are written to a temporary file in `blobs/` while being hashed, and
//! renamed into place only after the digest matched: a partial or corrupt
//! download never looks complete. A per-repository lock file serialises
//! concurrent pulls of the same model by several processes.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::catalog::{FileEntry, ModelEntry};
use crate::error::StoreError;

/// The default cache root: `$AIOS_MODEL_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn default_cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("AIOS_MODEL_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// The cache folder of one repository.
#[derive(Debug, Clone)]
pub struct RepoCache {
    dir: PathBuf,
}

impl RepoCache {
    /// The folder for `repo` (`ORG/NAME`) under `root`.
    pub fn new(root: &Path, repo: &str) -> Self {
        Self { dir: root.join(format!("models--{}", repo.replace('/', "--"))) }
    }

    /// The repository folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    /// Snapshot folders to search for `entry`'s files, best first: the one
    /// the revision's ref names, the revision itself when it is a commit, then
    /// every other snapshot (a copied cache may hold another commit).
    pub fn snapshot_candidates(&self, entry: &ModelEntry) -> Vec<PathBuf> {
        let snapshots = self.dir.join("snapshots");
        let mut out = Vec::new();
        if let Ok(commit) = std::fs::read_to_string(self.dir.join("refs").join(&entry.revision)) {
            out.push(snapshots.join(commit.trim()));
        }
        if is_commit_hash(&entry.revision) {
            out.push(snapshots.join(&entry.revision));
        }
        if let Ok(read_dir) = std::fs::read_dir(&snapshots) {
            let mut others: Vec<PathBuf> = read_dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            others.sort();
            out.extend(others);
        }
        out.dedup();
        out
    }

    /// The snapshot folder new files go to: the commit the revision's ref
    /// names, the revision when it is a commit hash, else a stable
    /// pseudo-commit derived from the file digests (recorded in the ref).
    pub fn snapshot_for_write(&self, entry: &ModelEntry) -> Result<PathBuf, StoreError> {
        let refs = self.dir.join("refs");
        let ref_path = refs.join(&entry.revision);
        let commit = if let Ok(commit) = std::fs::read_to_string(&ref_path) {
            commit.trim().to_owned()
        } else if is_commit_hash(&entry.revision) {
            entry.revision.clone()
        } else {
            let mut hasher = Sha256::new();
            hasher.update(entry.repo.as_bytes());
            for file in &entry.files {
                hasher.update(file.name.as_bytes());
                hasher.update(file.sha256.as_bytes());
            }
            let commit = hex::encode(hasher.finalize())[..40].to_owned();
            std::fs::create_dir_all(&refs).map_err(|e| StoreError::io(format!("creating {}", refs.display()), e))?;
            write_atomically(&ref_path, commit.as_bytes())?;
            commit
        };
        Ok(self.dir.join("snapshots").join(commit))
    }

    /// Takes the repository's pull lock, blocking until other processes
    /// holding it are done. The lock is released when the guard drops.
    pub fn lock(&self) -> Result<RepoLock, StoreError> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| StoreError::io(format!("creating {}", self.dir.display()), e))?;
        let path = self.dir.join(".aios-pull.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("opening lock {}", path.display()), e))?;
        fs4::FileExt::lock(&file).map_err(|e| StoreError::io(format!("locking {}", path.display()), e))?;
        Ok(RepoLock { file })
    }

    /// Copies `reader` into the cache as `file`, hashing on the way; the file
    /// appears under `snapshot` only if its digest matches the catalogue.
    pub fn install(
        &self,
        snapshot: &Path,
        file: &FileEntry,
        reader: &mut dyn Read,
        progress: &indicatif::ProgressBar,
    ) -> Result<PathBuf, StoreError> {
        let blobs = self.blobs();
        std::fs::create_dir_all(&blobs).map_err(|e| StoreError::io(format!("creating {}", blobs.display()), e))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".incomplete-")
            .tempfile_in(&blobs)
            .map_err(|e| StoreError::io(format!("creating a temporary file in {}", blobs.display()), e))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buffer).map_err(|e| StoreError::io(format!("reading {}", file.name), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            temp.write_all(&buffer[..n])
                .map_err(|e| StoreError::io(format!("writing {}", temp.path().display()), e))?;
            progress.inc(n as u64);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != file.sha256 {
            return Err(StoreError::HashMismatch {
                file: PathBuf::from(&file.name),
                expected: file.sha256.clone(),
                actual,
            });
        }
        temp.as_file().sync_all().map_err(|e| StoreError::io(format!("syncing {}", temp.path().display()), e))?;
        let blob = blobs.join(&file.sha256);
        temp.persist(&blob).map_err(|e| StoreError::io(format!("renaming into {}", blob.display()), e.error))?;
        self.link(snapshot, &file.name, &blob)
    }

    /// Points `snapshot/name` at `blob` (a relative symlink, as hf-hub
    /// writes; a copy where symlinks are unavailable).
    fn link(&self, snapshot: &Path, name: &str, blob: &Path) -> Result<PathBuf, StoreError> {
        let target = snapshot.join(name);
        let parent = target.parent().unwrap_or(snapshot).to_path_buf();
        std::fs::create_dir_all(&parent).map_err(|e| StoreError::io(format!("creating {}", parent.display()), e))?;
        let temp = parent.join(format!(".link-{}-{}", std::process::id(), name.replace('/', "_")));
        let _ = std::fs::remove_file(&temp);
        #[cfg(unix)]
        {
            let depth = name.matches('/').count() + 2;
            let mut relative = PathBuf::new();
            for _ in 0..depth {
                relative.push("..");
            }
            relative.push("blobs");
            relative.push(blob.file_name().unwrap_or_default());
            std::os::unix::fs::symlink(&relative, &temp)
                .map_err(|e| StoreError::io(format!("linking {}", temp.display()), e))?;
        }
        #[cfg(not(unix))]
        std::fs::copy(blob, &temp).map_err(|e| StoreError::io(format!("copying to {}", temp.display()), e))?;
        std::fs::rename(&temp, &target)
            .map_err(|e| StoreError::io(format!("renaming into {}", target.display()), e))?;
        Ok(target)
    }
}

/// Holds a repository's pull lock until dropped.
#[derive(Debug)]
pub struct RepoLock {
    /// The locked file; closing it releases the lock.
    #[allow(dead_code)]
    file: File,
}

/// Whether `revision` looks like a full git commit hash.
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// SHA-256 of a file as lower-case hex, with a progress bar for large files.
pub fn sha256_file(path: &Path, progress: &indicatif::ProgressBar) -> Result<String, StoreError> {
    let mut file = File::open(path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        progress.inc(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Verifies `path` against the catalogue digest; a mismatch names both.
pub fn verify_file(path: &Path, file: &FileEntry, progress: &indicatif::ProgressBar) -> Result<(), StoreError> {
    let actual = sha256_file(path, progress)?;
    if actual == file.sha256 {
        Ok(())
    } else {
        Err(StoreError::HashMismatch { file: path.to_path_buf(), expected: file.sha256.clone(), actual })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| StoreError::io(format!("creating a temporary file in {}", dir.display()), e))?;
    temp.write_all(bytes).map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
    temp.persist(path).map_err(|e| StoreError::io(format!("renaming into {}", path.display()), e.error))?;
    Ok(())
}
