//! What a bundle says about memory: the classification of stored items, how
//! long each classification may be kept, and which namespaces and
//! classifications an agent may read and write.
//!
//! ```toml
//! [memory]
//! embedding_model = "all-minilm-l6-v2"
//!
//! [memory.retention]
//! confidential = "90d"
//! restricted = "30d"
//!
//! [agents.triage.memory]
//! read = ["policies"]
//! write = ["notes"]
//! classifications = ["public", "internal"]
//! ```
//!
//! An agent without a `memory` table reads and writes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;

/// The embedding model used when the bundle names none.
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

/// How sensitive a memory item is, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Anyone may see it.
    Public,
    /// Staff only.
    Internal,
    /// A need to know.
    Confidential,
    /// Named people only; kept the shortest.
    Restricted,
}

impl Classification {
    /// All classifications, least sensitive first.
    pub const ALL: [Classification; 4] =
        [Classification::Public, Classification::Internal, Classification::Confidential, Classification::Restricted];

    /// The lower-case name used in files, the database and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Public => "public",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Restricted => "restricted",
        }
    }
}

impl std::fmt::Display for Classification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Classification {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Classification::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| format!("unknown classification {text:?} (public, internal, confidential, restricted)"))
    }
}

/// `[memory]`: fleet-wide memory settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// Catalogue id of the embedding model (default `all-minilm-l6-v2`).
    /// Changing it leaves stored vectors tagged with the old model until
    /// `aios-edge memory reindex` rebuilds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// Longest time an item of each classification is kept, such as `90d`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retention: BTreeMap<Classification, String>,
}

impl MemorySpec {
    /// The embedding model's catalogue id.
    pub fn embedding_model(&self) -> &str {
        self.embedding_model.as_deref().unwrap_or(DEFAULT_EMBEDDING_MODEL)
    }

    /// Retention in milliseconds per classification (those the bundle limits).
    pub fn retention_ms(&self) -> BTreeMap<Classification, i64> {
        self.retention
            .iter()
            .filter_map(|(class, text)| {
                let ms = parse_duration(text).ok()?.as_millis();
                Some((*class, i64::try_from(ms).unwrap_or(i64::MAX)))
            })
            .collect()
    }

    /// Checks the durations and the model id.
    pub fn validate(&self) -> Result<(), String> {
        if self.embedding_model.as_deref().is_some_and(str::is_empty) {
            return Err("embedding_model is empty".into());
        }
        for (class, text) in &self.retention {
            let duration = parse_duration(text).map_err(|err| format!("retention of {class}: {err}"))?;
            if duration.is_zero() {
                return Err(format!("retention of {class} must be longer than zero"));
            }
        }
        Ok(())
    }
}

/// `[agents.NAME.memory]`: what an agent may read and write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryAccess {
    /// Namespaces it may retrieve from and read records of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<String>,
    /// Namespaces whose records it may write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write: Vec<String>,
    /// Classifications it may see; items of any other are never returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classifications: Vec<Classification>,
}

impl MemoryAccess {
    /// Whether `namespace` may be read.
    pub fn may_read(&self, namespace: &str) -> bool {
        self.read.iter().any(|n| n == namespace)
    }

    /// Whether `namespace` may be written.
    pub fn may_write(&self, namespace: &str) -> bool {
        self.write.iter().any(|n| n == namespace)
    }

    /// Checks the namespace names.
    pub fn validate(&self) -> Result<(), String> {
        for namespace in self.read.iter().chain(&self.write) {
            if !valid_namespace(namespace) {
                return Err(format!("memory namespace `{namespace}` must use letters, digits, `-`, `_` and `.`"));
            }
        }
        Ok(())
    }
}

/// Whether `name` is a usable namespace (1-64 of letters, digits, `-`, `_`, `.`).
pub fn valid_namespace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Checks a retrieve, record_get or record_put step against the agent's
/// memory access: a namespace is required and must be one the agent may use.
pub fn validate_memory_step(step: &crate::agent::StepSpec, access: &MemoryAccess) -> Result<(), String> {
    use crate::agent::StepAction;
    let kind = step.kind().as_str();
    let (namespace, writes) = match &step.action {
        StepAction::Retrieve(retrieve) => (&retrieve.namespace, false),
        StepAction::RecordGet(get) => (&get.namespace, false),
        StepAction::RecordPut(put) => (&put.namespace, true),
        _ => return Err(format!("a {kind} step is not a memory step")),
    };
    let namespace = namespace.as_deref().ok_or_else(|| format!("a {kind} step needs a namespace"))?;
    let allowed = if writes { access.may_write(namespace) } else { access.may_read(namespace) };
    if !allowed {
        let list = if writes { "write" } else { "read" };
        return Err(format!("namespace `{namespace}` is not in the agent's memory.{list} list"));
    }
    match &step.action {
        StepAction::Retrieve(retrieve) => {
            if retrieve.prompt.is_none() {
                return Err("a retrieve step needs a prompt (the query)".into());
            }
            if access.classifications.is_empty() {
                return Err("the agent's memory.classifications is empty, so it may retrieve nothing".into());
            }
            if retrieve.top_k == Some(0) || retrieve.top_k.is_some_and(|k| k > 100) {
                return Err("top_k must be between 1 and 100".into());
            }
            if let Some(score) = retrieve.min_score {
                if !(-1.0..=1.0).contains(&score) {
                    return Err(format!("min_score {score} is not between -1 and 1"));
                }
            }
            if let Some(weight) = retrieve.keyword_weight {
                if !(0.0..=1.0).contains(&weight) {
                    return Err(format!("keyword_weight {weight} is not between 0 and 1"));
                }
            }
        }
        StepAction::RecordGet(get) if get.key.is_none() => return Err("a record_get step needs a key".into()),
        StepAction::RecordPut(put) if put.key.is_none() || put.value.is_none() => {
            return Err("a record_put step needs a key and a value".into())
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_and_access_parse_and_validate() {
        let spec: MemorySpec = toml::from_str("[retention]\nconfidential = \"90d\"\nrestricted = \"1h\"\n").unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.retention_ms()[&Classification::Confidential], 90 * 86_400_000);
        assert_eq!(spec.embedding_model(), DEFAULT_EMBEDDING_MODEL);
        let bad: MemorySpec = toml::from_str("[retention]\npublic = \"soon\"\n").unwrap();
        assert!(bad.validate().unwrap_err().contains("retention of public"));
        assert!(toml::from_str::<MemorySpec>("[retention]\nsecret = \"1d\"\n").is_err());

        let access: MemoryAccess =
            toml::from_str("read = [\"policies\"]\nclassifications = [\"public\", \"internal\"]\n").unwrap();
        assert!(access.may_read("policies") && !access.may_read("hr") && !access.may_write("policies"));
        assert!(MemoryAccess { read: vec!["a b".into()], ..Default::default() }.validate().is_err());
        assert!(Classification::Public < Classification::Restricted);
        assert_eq!("confidential".parse::<Classification>(), Ok(Classification::Confidential));
    }

    #[test]
    fn memory_steps_are_checked_against_the_agents_access() {
        let bundle = |access: &str, step: &str| {
            format!("[agents.a]\nversion = 1\n{access}\n[[agents.a.steps]]\nid = \"s\"\n{step}\n")
        };
        let check = |text: String| {
            let definitions = toml::from_str::<crate::agent::Definitions>(&text).map_err(|err| err.to_string())?;
            definitions.validate().map_err(|err| err.to_string())
        };
        let access = "memory = { read = [\"policies\"], write = [\"orders\"], classifications = [\"public\"] }";
        let retrieve = "kind = \"retrieve\"\nnamespace = \"policies\"\nprompt = \"{{ input.text }}\"\ntop_k = 3";
        check(bundle(access, retrieve)).unwrap();
        let err = check(bundle(access, &retrieve.replace("\"policies\"", "\"hr\""))).unwrap_err();
        assert_eq!(err, "agent `a`, step `s`: namespace `hr` is not in the agent's memory.read list");
        let err = check(bundle("", retrieve)).unwrap_err();
        assert!(err.contains("memory.read"), "{err}");
        let put = "kind = \"record_put\"\nnamespace = \"orders\"\nkey = \"k\"\nvalue = \"v\"\nexpect_version = \"0\"";
        check(bundle(access, put)).unwrap();
        let err = check(bundle(access, &put.replace("orders", "policies"))).unwrap_err();
        assert!(err.contains("memory.write"), "{err}");
        let err = check(bundle(access, "kind = \"record_get\"\nnamespace = \"orders\"")).unwrap_err();
        assert!(err.contains("memory.read"), "{err}");
        let generate = "kind = \"generate\"\nprompt = \"x\"\ntop_k = 3";
        let err =
            check(format!("[tiers.local]\nkind = \"local\"\nmodel = \"m\"\n{}", bundle(access, generate))).unwrap_err();
        assert!(err.contains("step `s`: `top_k` does not apply to a generate step"), "{err}");
        let err = check(format!("[memory.retention]\nrestricted = \"0d\"\n{}", bundle(access, retrieve))).unwrap_err();
        assert!(err.starts_with("memory: retention of restricted"), "{err}");
    }
}
