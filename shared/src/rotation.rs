//! Rotating the bundle-signing key without enrolling the fleet again.
//!
//! The control plane signs, with its current key, an endorsement of its
//! next key ([`KeyEndorsement`]); from then on it signs bundles and
//! commands with the next key, and every bundle carries all endorsements
//! made so far. An edge follows them from the key it pinned at enrolment,
//! each link checked with the key before it ([`chain`]); a bundle must be
//! signed by the last key reached. So an edge that was offline through any
//! number of rotations catches up with the next bundle it gets, and the
//! edge's pinned key never changes on disk.
//!
//! A retired key must not work against an edge that moved past it: a new
//! bundle is applied only if its chain passes through the key that signed
//! the bundle in force ([`extends`]). A bundle signed with an old key (no
//! endorsement, or a forged one leading elsewhere) is refused. Commands are
//! verified with the key that signed the bundle in force.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Signing context of endorsements, so no other signature can pass as one.
const CONTEXT: &[u8] = b"aios bundle key endorsement v1\0";

/// "`from` hands bundle signing over to `to`", signed by `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEndorsement {
    /// The endorsing key (hex).
    pub from: String,
    /// The endorsed key (hex).
    pub to: String,
    /// `from`'s ed25519 signature over the context and `to` (hex).
    pub signature: String,
}

impl KeyEndorsement {
    /// `old` endorses `new`.
    pub fn sign(old: &SigningKey, new: &VerifyingKey) -> KeyEndorsement {
        let signature = old.sign(&message(new));
        KeyEndorsement {
            from: hex::encode(old.verifying_key().as_bytes()),
            to: hex::encode(new.as_bytes()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// The endorsed key, if `key` made this endorsement.
    fn next_after(&self, key: &VerifyingKey) -> Option<VerifyingKey> {
        if self.from != hex::encode(key.as_bytes()) {
            return None;
        }
        let to: [u8; 32] = hex::decode(&self.to).ok()?.try_into().ok()?;
        let to = VerifyingKey::from_bytes(&to).ok()?;
        let signature = Signature::from_slice(&hex::decode(&self.signature).ok()?).ok()?;
        key.verify(&message(&to), &signature).ok()?;
        Some(to)
    }
}

fn message(key: &VerifyingKey) -> Vec<u8> {
    [CONTEXT, key.as_bytes()].concat()
}

/// The keys reachable from `pinned`, in order: `pinned` first, then each
/// key a verified endorsement of the previous one leads to.
pub fn chain(pinned: VerifyingKey, endorsements: &[KeyEndorsement]) -> Vec<VerifyingKey> {
    let mut keys = vec![pinned];
    for endorsement in endorsements {
        let last = *keys.last().expect("never empty");
        if let Some(next) = endorsement.next_after(&last) {
            if !keys.contains(&next) {
                keys.push(next);
            }
        }
    }
    keys
}

/// Whether a bundle whose chain is `offered` may follow one whose chain is
/// `current`: the key that signed the bundle in force is on the new chain.
pub fn extends(current: &[VerifyingKey], offered: &[VerifyingKey]) -> bool {
    current.last().is_none_or(|signer| offered.contains(signer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn key() -> SigningKey {
        SigningKey::generate(&mut OsRng)
    }

    #[test]
    fn an_edge_follows_every_rotation_from_its_pinned_key() {
        let (k0, k1, k2) = (key(), key(), key());
        let endorsements =
            vec![KeyEndorsement::sign(&k0, &k1.verifying_key()), KeyEndorsement::sign(&k1, &k2.verifying_key())];
        let keys = |pinned: &SigningKey| chain(pinned.verifying_key(), &endorsements);
        assert_eq!(keys(&k0), [k0.verifying_key(), k1.verifying_key(), k2.verifying_key()]);
        assert_eq!(keys(&k1), [k1.verifying_key(), k2.verifying_key()], "enrolled after the first rotation");
        assert_eq!(keys(&k2).last(), Some(&k2.verifying_key()));
    }

    #[test]
    fn forged_or_foreign_endorsements_lead_nowhere() {
        let (k0, k1, evil) = (key(), key(), key());
        let forged = KeyEndorsement {
            from: hex::encode(k0.verifying_key().as_bytes()),
            ..KeyEndorsement::sign(&evil, &evil.verifying_key())
        };
        assert_eq!(chain(k0.verifying_key(), &[forged]), [k0.verifying_key()]);
        let mut tampered = KeyEndorsement::sign(&k0, &k1.verifying_key());
        tampered.to = hex::encode(evil.verifying_key().as_bytes());
        assert_eq!(chain(k0.verifying_key(), &[tampered]), [k0.verifying_key()]);
        assert_eq!(
            chain(
                k0.verifying_key(),
                &[KeyEndorsement { signature: "zz".into(), ..KeyEndorsement::sign(&k0, &k1.verifying_key()) }]
            ),
            [k0.verifying_key()]
        );
    }

    #[test]
    fn a_retired_key_cannot_follow_the_key_that_replaced_it() {
        let (k0, k1, evil) = (key(), key(), key());
        let rotated = chain(k0.verifying_key(), &[KeyEndorsement::sign(&k0, &k1.verifying_key())]);
        let unrotated = chain(k0.verifying_key(), &[]);
        // The stolen k0 endorses the thief's key.
        let stolen = chain(k0.verifying_key(), &[KeyEndorsement::sign(&k0, &evil.verifying_key())]);
        assert!(extends(&unrotated, &rotated), "the rotation itself");
        assert!(extends(&rotated, &rotated), "the next bundle");
        assert!(!extends(&rotated, &unrotated), "signed with the retired key");
        assert!(!extends(&rotated, &stolen), "a branch from the retired key");
    }
}
