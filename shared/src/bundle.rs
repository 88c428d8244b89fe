//! Signed, versioned policy bundles.
//!
//! An operator writes a [`BundleSpec`] in TOML; the control plane turns it into
//! a [`BundleBody`] (assigning the version and the validity window), encodes
//! the body as JSON and signs those exact bytes with its ed25519 bundle key.
//! Edges keep the bytes and the signature as received, so what they verify is
//! byte for byte what was signed; no re-encoding is ever verified.
//!
//! Verification is split in two: [`SignedBundle::open`] checks the signature
//! and decodes (used again when an edge reloads its stored bundle), and
//! [`BundleBody::check_fresh`] refuses rollbacks and expired bundles (used when
//! a bundle is offered).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::agent::{AgentSpec, Definitions, RuntimeSpec, TierSpec};
use crate::duration::parse_duration;
use crate::memory::MemorySpec;

/// Domain separation for bundle signatures.
const SIGNING_CONTEXT: &[u8] = b"aios-bundle-v1\0";

/// How much an edge's agents may do on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Autonomy {
    /// The kill switch at `all`: every side effect is denied, and no model
    /// is called (no local generation, no escalation, no gateway); running
    /// gateway streams stop.
    Halted,
    /// The kill switch at `effects`: every side effect is denied.
    Off,
    /// Every side effect needs human approval.
    Supervised,
    /// Side effects run as policy allows.
    Autonomous,
}

impl Autonomy {
    /// The lower-case name used in files and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Autonomy::Halted => "halted",
            Autonomy::Off => "off",
            Autonomy::Supervised => "supervised",
            Autonomy::Autonomous => "autonomous",
        }
    }
}

impl std::fmt::Display for Autonomy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bundle as an operator writes it (`policy publish FILE.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSpec {
    /// Fleet-wide autonomy mode.
    pub autonomy: Autonomy,
    /// How long the bundle stays valid, such as `30d` or `12h` (default 30 days).
    #[serde(default)]
    pub valid_for: Option<String>,
    /// Version to publish as; must be above the current one. Default: current + 1.
    #[serde(default)]
    pub version: Option<u64>,
    /// Agents by name (see [`crate::agent`]).
    #[serde(default)]
    pub agents: BTreeMap<String, AgentSpec>,
    /// Model tiers by name.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSpec>,
    /// Settings of the edges' task runtime.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Connectors by name (see [`crate::exec`]).
    #[serde(default)]
    pub connectors: BTreeMap<String, crate::exec::ConnectorSpec>,
    /// Inbound webhooks by name.
    #[serde(default)]
    pub webhooks: BTreeMap<String, crate::exec::WebhookSpec>,
    /// Agents offered to MCP clients as tools, by tool name.
    #[serde(default)]
    pub mcp_tools: BTreeMap<String, crate::served::ServedToolSpec>,
    /// The Cedar schema and policies.
    #[serde(default)]
    pub policy: Option<crate::exec::PolicySpec>,
    /// Memory settings (see [`crate::memory`]).
    #[serde(default)]
    pub memory: MemorySpec,
    /// What gateway callers may route to and spend (see [`crate::agent::GatewaySpec`]).
    #[serde(default)]
    pub gateway: crate::agent::GatewaySpec,
    /// Sections that later layers define (Cedar policies, connectors).
    /// Carried opaquely and signed with the rest.
    #[serde(default)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

/// Default validity of a published bundle.
pub const DEFAULT_VALID_FOR_MS: i64 = 30 * 24 * 3600 * 1000;

impl BundleSpec {
    /// A spec with this autonomy mode and nothing else.
    pub fn new(autonomy: Autonomy) -> BundleSpec {
        BundleSpec {
            autonomy,
            valid_for: None,
            version: None,
            agents: BTreeMap::new(),
            tiers: BTreeMap::new(),
            runtime: RuntimeSpec::default(),
            connectors: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            mcp_tools: BTreeMap::new(),
            policy: None,
            memory: MemorySpec::default(),
            gateway: crate::agent::GatewaySpec::default(),
            extensions: serde_json::Map::new(),
        }
    }

    /// A spec that keeps everything `body` says except what the caller changes.
    pub fn from_body(body: BundleBody) -> BundleSpec {
        let Definitions { agents, tiers, runtime, connectors, webhooks, mcp_tools, policy, memory, gateway } =
            body.definitions;
        BundleSpec {
            autonomy: body.autonomy,
            valid_for: None,
            version: None,
            agents,
            tiers,
            runtime,
            connectors,
            webhooks,
            mcp_tools,
            policy,
            memory,
            gateway,
            extensions: body.extensions,
        }
    }

    /// Parses and validates a spec from TOML: durations, the version, and
    /// every agent, step and tier definition.
    pub fn from_toml(text: &str) -> Result<BundleSpec, BundleError> {
        let spec: BundleSpec = toml::from_str(text).map_err(|err| BundleError::Spec(err.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The checks [`BundleSpec::from_toml`] runs, for specs built in code.
    pub fn validate(&self) -> Result<(), BundleError> {
        self.valid_for_ms()?;
        if self.version == Some(0) {
            return Err(BundleError::Spec("version must be at least 1".into()));
        }
        self.definitions().validate().map_err(|err| BundleError::Spec(err.to_string()))
    }

    /// The definitions the body will carry.
    pub fn definitions(&self) -> Definitions {
        Definitions {
            agents: self.agents.clone(),
            tiers: self.tiers.clone(),
            runtime: self.runtime.clone(),
            connectors: self.connectors.clone(),
            webhooks: self.webhooks.clone(),
            mcp_tools: self.mcp_tools.clone(),
            policy: self.policy.clone(),
            memory: self.memory.clone(),
            gateway: self.gateway.clone(),
        }
    }

    /// The validity window in milliseconds.
    pub fn valid_for_ms(&self) -> Result<i64, BundleError> {
        let Some(text) = &self.valid_for else { return Ok(DEFAULT_VALID_FOR_MS) };
        let duration = parse_duration(text).map_err(|err| BundleError::Spec(format!("valid_for: {err}")))?;
        i64::try_from(duration.as_millis())
            .ok()
            .filter(|ms| *ms > 0)
            .ok_or_else(|| BundleError::Spec("valid_for must be positive and finite".into()))
    }

    /// Fixes version and validity, producing the body to sign.
    pub fn into_body(self, current_version: u64, now_ms: i64) -> Result<BundleBody, BundleError> {
        let version = self.version.unwrap_or(current_version + 1);
        if version <= current_version {
            return Err(BundleError::Rollback { offered: version, current: current_version });
        }
        let valid_for = self.valid_for_ms()?;
        Ok(BundleBody {
            version,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(valid_for),
            autonomy: self.autonomy,
            definitions: self.definitions(),
            extensions: self.extensions,
            key_endorsements: Vec::new(),
        })
    }
}

/// What a bundle says, once verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleBody {
    /// Strictly increasing across the fleet's history.
    pub version: u64,
    /// When the control plane signed it (ms since the Unix epoch).
    pub issued_at_ms: i64,
    /// After this, edges fall back to supervised mode (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// Fleet-wide autonomy mode.
    pub autonomy: Autonomy,
    /// Agents, tiers and runtime settings.
    #[serde(flatten)]
    pub definitions: Definitions,
    /// Opaque sections for later layers.
    #[serde(default)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Every rotation of the bundle-signing key so far, oldest first
    /// (`crate::rotation`); the body is signed by the last key they lead to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_endorsements: Vec<crate::rotation::KeyEndorsement>,
}

impl BundleBody {
    /// Signs the body, returning what travels to edges.
    pub fn sign(&self, key: &SigningKey) -> SignedBundle {
        let body = serde_json::to_vec(self).expect("a bundle body always encodes as JSON");
        let signature = key.sign(&signing_message(&body));
        SignedBundle { body, signature: signature.to_bytes().to_vec() }
    }

    /// Refuses a bundle that is not newer than `current_version` or has
    /// expired, unless it is a kill switch (autonomy `off` or `halted`).
    pub fn check_fresh(&self, current_version: u64, now_ms: i64) -> Result<(), BundleError> {
        if self.version <= current_version {
            return Err(BundleError::Rollback { offered: self.version, current: current_version });
        }
        // A kill switch is applied even when it looks expired: the edge's
        // clock may be ahead, and refusing it would keep a looser bundle in
        // force. Applied, it only takes autonomy away (and an expired bundle
        // fails closed anyway).
        if self.is_expired(now_ms) && self.autonomy > Autonomy::Off {
            return Err(BundleError::Expired { version: self.version, expires_at_ms: self.expires_at_ms });
        }
        Ok(())
    }

    /// Whether the bundle's validity has run out at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// The autonomy mode in force under this bundle at `now_ms`: an expired
    /// bundle fails closed to supervised (never loosening a stricter mode).
    pub fn effective_autonomy(&self, now_ms: i64) -> Autonomy {
        if self.is_expired(now_ms) {
            self.autonomy.min(Autonomy::Supervised)
        } else {
            self.autonomy
        }
    }
}

/// A bundle as it travels and is stored: the signed bytes and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBundle {
    /// The JSON encoding of a [`BundleBody`], exactly as signed.
    pub body: Vec<u8>,
    /// ed25519 signature over the body with the bundle signing context.
    pub signature: Vec<u8>,
}

impl SignedBundle {
    /// Checks the signature against the key the pinned key leads to through
    /// the body's key endorsements (the pinned key itself without any), and
    /// decodes the body.
    pub fn open(&self, key: &VerifyingKey) -> Result<BundleBody, BundleError> {
        let signer = self.signer(key);
        let signature = Signature::from_slice(&self.signature).map_err(|_| BundleError::BadSignature)?;
        signer.verify(&signing_message(&self.body), &signature).map_err(|_| BundleError::BadSignature)?;
        serde_json::from_slice(&self.body).map_err(|err| BundleError::Malformed(err.to_string()))
    }

    /// The keys from `pinned` through the body's endorsements (read before
    /// the signature is checked: each link is checked by the key before it).
    pub fn key_chain(&self, pinned: &VerifyingKey) -> Vec<VerifyingKey> {
        #[derive(Deserialize)]
        struct Endorsements {
            #[serde(default)]
            key_endorsements: Vec<crate::rotation::KeyEndorsement>,
        }
        let endorsements = serde_json::from_slice::<Endorsements>(&self.body).map(|e| e.key_endorsements);
        crate::rotation::chain(*pinned, &endorsements.unwrap_or_default())
    }

    /// The key this bundle must be signed with, for an edge that pinned
    /// `pinned`; commands are verified with the one of the bundle in force.
    pub fn signer(&self, pinned: &VerifyingKey) -> VerifyingKey {
        *self.key_chain(pinned).last().expect("a chain starts with the pinned key")
    }

    /// Decides what an edge does with this bundle when it is offered, given
    /// the bundle in force (if any): apply it, acknowledge it again (an exact
    /// copy of the one in force, re-sent because an ack was lost), or refuse.
    pub fn offer(&self, key: &VerifyingKey, current: Option<&SignedBundle>, now_ms: i64) -> Result<Offer, BundleError> {
        let body = self.open(key)?;
        if current.is_some_and(|current| current == self) {
            return Ok(Offer::AlreadyApplied(body));
        }
        if let Some(current) = current {
            if !crate::rotation::extends(&current.key_chain(key), &self.key_chain(key)) {
                return Err(BundleError::RetiredKey);
            }
        }
        let current_version = match current {
            Some(current) => current.open(key)?.version,
            None => 0,
        };
        body.check_fresh(current_version, now_ms)?;
        Ok(Offer::Apply(body))
    }

    /// Decodes the body without checking the signature: only for display of
    /// something already refused.
    pub fn peek_version(&self) -> Option<u64> {
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        serde_json::from_slice::<Version>(&self.body).ok().map(|v| v.version)
    }
}

/// The verdict on an offered bundle that is not refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Offer {
    /// The exact bundle already in force: acknowledge it again, change nothing.
    AlreadyApplied(BundleBody),
    /// A newer, valid bundle: persist it, then apply it.
    Apply(BundleBody),
}

fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(body);
    message
}

/// Why a bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The operator's bundle file is invalid.
    #[error("invalid bundle file: {0}")]
    Spec(String),
    /// The signature is not the pinned bundle key's.
    #[error("signature does not verify with the pinned bundle key")]
    BadSignature,
    /// Signed with a key the key of the bundle in force replaced.
    #[error("signed with a bundle key that has been rotated out")]
    RetiredKey,
    /// The bundle reaches secrets, files or programs the edge does not allow.
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    /// The signed body does not decode.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// The offered version is not above the current one.
    #[error("version {offered} is not above the current version {current} (rollback refused)")]
    Rollback {
        /// Offered version.
        offered: u64,
        /// Version in force.
        current: u64,
    },
    /// The bundle's validity has run out.
    #[error("bundle version {version} expired at {expires_at_ms} ms")]
    Expired {
        /// Version of the expired bundle.
        version: u64,
        /// When it expired.
        expires_at_ms: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn body(version: u64) -> BundleBody {
        BundleSpec::from_toml("autonomy = \"autonomous\"\nvalid_for = \"1h\"\n[extensions.agents]\nx = 1\n")
            .unwrap()
            .into_body(version - 1, 1_000)
            .unwrap()
    }

    #[test]
    fn signed_bundle_opens_with_the_right_key_only() {
        let signed = body(2).sign(&key());
        assert_eq!(signed.open(&key().verifying_key()).unwrap(), body(2));
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert_eq!(signed.open(&other), Err(BundleError::BadSignature));
    }

    #[test]
    fn any_flipped_byte_breaks_the_signature() {
        let signed = body(2).sign(&key());
        for idx in 0..signed.body.len() {
            let mut tampered = signed.clone();
            tampered.body[idx] ^= 1;
            assert!(tampered.open(&key().verifying_key()).is_err(), "byte {idx}");
        }
    }

    #[test]
    fn offer_applies_newer_reacks_identical_and_refuses_older() {
        let key = key();
        let (v2, v3) = (body(2).sign(&key), body(3).sign(&key));
        let pinned = key.verifying_key();
        assert!(matches!(v3.offer(&pinned, Some(&v2), 2_000), Ok(Offer::Apply(b)) if b.version == 3));
        assert!(matches!(v3.offer(&pinned, Some(&v3), 2_000), Ok(Offer::AlreadyApplied(_))));
        assert!(matches!(v2.offer(&pinned, Some(&v3), 2_000), Err(BundleError::Rollback { offered: 2, current: 3 })));
        assert!(matches!(v2.offer(&pinned, None, 2_000), Ok(Offer::Apply(_))));
    }

    #[test]
    fn rollback_and_expiry_are_refused() {
        let b = body(5);
        assert_eq!(b.check_fresh(4, 2_000), Ok(()));
        assert!(matches!(b.check_fresh(5, 2_000), Err(BundleError::Rollback { offered: 5, current: 5 })));
        assert!(matches!(b.check_fresh(4, b.expires_at_ms), Err(BundleError::Expired { .. })));
    }

    /// An edge whose clock runs ahead sees every new bundle as expired; a
    /// kill switch is applied all the same (it only takes autonomy away),
    /// but never an old one.
    #[test]
    fn a_kill_switch_is_applied_even_when_it_looks_expired() {
        for autonomy in [Autonomy::Off, Autonomy::Halted] {
            let mut b = body(5);
            b.autonomy = autonomy;
            assert_eq!(b.check_fresh(4, b.expires_at_ms + 2 * 86_400_000), Ok(()), "{autonomy}");
            assert!(matches!(b.check_fresh(5, b.expires_at_ms), Err(BundleError::Rollback { .. })));
            assert_eq!(b.effective_autonomy(b.expires_at_ms), autonomy, "it stays in force, failed closed");
        }
        let mut supervised = body(5);
        supervised.autonomy = Autonomy::Supervised;
        assert!(matches!(supervised.check_fresh(4, supervised.expires_at_ms), Err(BundleError::Expired { .. })));
    }

    #[test]
    fn expired_bundle_fails_closed_without_loosening_off() {
        let mut b = body(1);
        assert_eq!(b.effective_autonomy(b.expires_at_ms), Autonomy::Supervised);
        b.autonomy = Autonomy::Off;
        assert_eq!(b.effective_autonomy(b.expires_at_ms), Autonomy::Off);
        b.autonomy = Autonomy::Halted;
        assert_eq!(b.effective_autonomy(b.expires_at_ms), Autonomy::Halted);
    }

    #[test]
    fn spec_errors_are_clear() {
        let err = BundleSpec::from_toml("autonomy = \"yolo\"").unwrap_err();
        assert!(err.to_string().contains("yolo"), "{err}");
        let err = BundleSpec::from_toml("autonomy = \"off\"\nvalid_for = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("valid_for"), "{err}");
        let err = BundleSpec::from_toml("autonomy = \"off\"\nsurprise = 1").unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn a_rotated_key_takes_over_and_the_retired_one_is_refused() {
        use crate::rotation::KeyEndorsement;
        let (old, new) = (key(), SigningKey::from_bytes(&[9; 32]));
        let pinned = old.verifying_key();
        let first = body(2).sign(&old);
        let mut rotated = body(3);
        rotated.key_endorsements = vec![KeyEndorsement::sign(&old, &new.verifying_key())];
        let rotated = rotated.sign(&new);
        assert!(matches!(rotated.offer(&pinned, Some(&first), 1_000), Ok(Offer::Apply(_))));
        assert_eq!(rotated.signer(&pinned), new.verifying_key(), "commands now verify with the new key");
        // The retired key signs a newer bundle: refused once the new one is in force.
        let replay = body(4).sign(&old);
        assert_eq!(replay.offer(&pinned, Some(&rotated), 1_000).err(), Some(BundleError::RetiredKey));
        // A rotated bundle signed with the old key does not open at all.
        let mut wrong = body(4);
        wrong.key_endorsements = vec![KeyEndorsement::sign(&old, &new.verifying_key())];
        assert_eq!(wrong.sign(&old).open(&pinned), Err(BundleError::BadSignature));
        // The stored rotated bundle still opens with the pinned key.
        assert_eq!(rotated.open(&pinned).unwrap().version, 3);
    }
}
