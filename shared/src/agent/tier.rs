//! Model tiers and the task runtime's settings: a [`TierSpec`] is one model
//! an agent's step may run on, the edge's own ([`TierKind::Local`]), an
//! OpenAI-compatible endpoint ([`TierKind::Openai`]: a cloud provider or an
//! on-prem server) or Anthropic's Messages API ([`TierKind::Anthropic`]);
//! [`RuntimeSpec`] bounds
//! how many tasks run at once and which hosts an air-gapped edge may call.

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;

/// Where a tier runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    /// A model from the edge's local catalogue, run with candle.
    Local,
    /// An OpenAI-compatible chat-completions endpoint.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
}

impl TierKind {
    /// Whether calls leave the edge (every kind but `local`).
    pub fn is_remote(self) -> bool {
        self != TierKind::Local
    }
}

/// A model tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Where it runs.
    pub kind: TierKind,
    /// Catalogue id (local) or the endpoint's model name (openai).
    pub model: String,
    /// The endpoint, such as `https://api.example.com/v1` (openai) or
    /// `https://api.anthropic.com/v1` (anthropic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// US dollars per 1000 prompt tokens.
    #[serde(default)]
    pub price_in_per_1k: f64,
    /// US dollars per 1000 completion tokens.
    #[serde(default)]
    pub price_out_per_1k: f64,
    /// Stream replies (remote tiers): the timeout then bounds the wait for
    /// the first byte and each gap between chunks, not the whole reply, so a
    /// slow model writing a long plan is not cut off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Per-call timeout, such as `30s` (default 60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Where the edge finds the API key: `env:NAME` or `file:/path`.
    /// The key itself never travels in a bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The most sensitive data the tier may receive (default `internal`
    /// for a remote tier; a local tier takes anything). A call whose
    /// context is above it stays on the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_classification: Option<crate::memory::Classification>,
}

impl TierSpec {
    /// The per-call timeout in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .unwrap_or(60_000)
    }

    /// The most sensitive data the tier may receive: its own setting, or
    /// `internal` for a remote tier; `None` for a local tier (no limit).
    pub fn max_classification(&self) -> Option<crate::memory::Classification> {
        match self.kind {
            TierKind::Local => None,
            TierKind::Openai | TierKind::Anthropic => {
                Some(self.max_classification.unwrap_or(crate::memory::Classification::Internal))
            }
        }
    }

    /// The host of a remote tier's endpoint.
    pub fn host(&self) -> Option<&str> {
        let url = self.base_url.as_deref()?;
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split('/').next().unwrap_or(rest);
        let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or(v6)
        } else {
            authority.split(':').next().unwrap_or(authority)
        };
        (!host.is_empty()).then_some(host)
    }
}

/// Settings of the task runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Never call a tier whose host is not in `allowed_hosts`.
    #[serde(default)]
    pub air_gapped: bool,
    /// Hosts an air-gapped edge may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Tasks running at once on an edge, all agents together.
    #[serde(default = "default_global_concurrency")]
    pub max_concurrent_tasks: u32,
    /// Starts of one task (crash loops included) before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

fn default_global_concurrency() -> u32 {
    4
}

fn default_max_attempts() -> u32 {
    5
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        Self {
            air_gapped: false,
            allowed_hosts: Vec::new(),
            max_concurrent_tasks: default_global_concurrency(),
            max_attempts: default_max_attempts(),
        }
    }
}

impl RuntimeSpec {
    /// Whether a tier at `host` may be called.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        match host {
            None => true,
            Some(host) => !self.air_gapped || self.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
        }
    }
}
