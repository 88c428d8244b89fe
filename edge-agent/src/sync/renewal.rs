//! The edge's identity lifecycle on the sync connection: asking for a
//! renewed certificate when its current one is two thirds through its life
//! or was issued by a CA being retired, taking the grant only after
//! checking it, taking the fleet CAs the control plane announces (a CA
//! rotation), and stopping all autonomy when the control plane refuses the
//! edge as revoked.
//!
//! The key never changes: it also signs the edge's audit checkpoints, which
//! the control plane verifies against the key recorded at enrolment. A
//! compromised key is answered by revoking the edge and enrolling it again.

use aios_daemon::cert;
use aios_shared::identity::{check_anchors, check_grant, renewal_wanted, Validity};
use aios_shared::sync::EdgeSync;
use aios_shared::wire::{CertificateGrant, TrustedCa};
use tracing::{info, warn};

use crate::sync::enroll::certificate_request;
use crate::sync::uplink::Uplink;

impl Uplink {
    /// The certificate this session presents: its validity, and whether the
    /// CA that issues now issued it (read once per connection, and again
    /// when the trusted CAs change: only a renewal, which reconnects,
    /// changes the certificate).
    pub(crate) fn own_certificate(&self) -> Option<OwnCertificate> {
        match cert::facts(&self.identity.cert_der) {
            Ok(facts) => Some(OwnCertificate {
                validity: facts.validity,
                from_issuing_ca: cert::verify_issued_by(&self.identity.cert_der, self.identity.issuing_ca()).is_ok(),
            }),
            Err(err) => {
                warn!(%err, "cannot read the edge's own certificate");
                None
            }
        }
    }

    /// Asks for a renewed certificate if the current one is due and none
    /// was asked for on this connection.
    pub(crate) fn maybe_renew(&self, sync: &mut EdgeSync, own: Option<OwnCertificate>) {
        let Some(own) = own else { return };
        let wanted = renewal_wanted(own.validity, own.from_issuing_ca, self.runtime.now());
        if !sync.is_connected() || sync.renewal_pending() || !wanted {
            return;
        }
        match certificate_request(&self.identity.signing_key) {
            Ok(csr) => {
                if sync.request_certificate(csr) {
                    info!(
                        not_after_ms = own.validity.not_after_ms,
                        from_issuing_ca = own.from_issuing_ca,
                        "asking for a renewed certificate"
                    );
                }
            }
            Err(err) => warn!(%err, "cannot build a certificate request"),
        }
    }

    /// Takes the fleet CAs the control plane announced, when they differ
    /// from the stored ones and pass the checks (`check_anchors`, and each
    /// is a CA certificate). Returns whether they changed; a refused
    /// announcement is logged and the stored CAs stay.
    pub(crate) async fn take_trust_anchors(&mut self, anchors: Vec<TrustedCa>) -> Result<bool, String> {
        if anchors == self.identity.trust_anchors {
            return Ok(false);
        }
        let now = self.runtime.now();
        let checked = check_anchors(&self.identity.trust_anchors, &anchors, now)
            .map_err(|problem| problem.to_string())
            .and_then(|()| anchors.iter().try_for_each(|ca| cert::check_ca(&ca.der)).map_err(|err| err.to_string()));
        if let Err(problem) = checked {
            warn!(%problem, "announced fleet CAs not taken");
            return Ok(false);
        }
        self.store
            .replace_trust_anchors(&self.identity, anchors.clone(), now)
            .await
            .map_err(|err| format!("cannot store the fleet CAs: {err}"))?;
        info!(cas = anchors.len(), "fleet CAs updated (a CA rotation)");
        self.identity.trust_anchors = anchors;
        Ok(true)
    }

    /// Checks a granted certificate (the issuing fleet CA signed it, for this
    /// edge's key, valid now, expiring later than the current one) and
    /// stores it. `Ok(true)` when taken: the caller reconnects to present it.
    pub(crate) async fn take_certificate(&mut self, grant: CertificateGrant) -> Result<bool, String> {
        let now = self.runtime.now();
        let (current, granted) = match (cert::facts(&self.identity.cert_der), cert::facts(&grant.cert_der)) {
            (Ok(current), Ok(granted)) => (current, granted),
            (Err(err), _) | (_, Err(err)) => {
                warn!(%err, "renewed certificate not taken");
                return Ok(false);
            }
        };
        if cert::verify_issued_by(&grant.cert_der, self.identity.issuing_ca()).is_err() {
            warn!("renewed certificate not taken: not issued by the fleet CA that issues now");
            return Ok(false);
        }
        let same_key = granted.public_key == self.identity.signing_key.verifying_key().as_bytes();
        let current_from_issuing_ca =
            cert::verify_issued_by(&self.identity.cert_der, self.identity.issuing_ca()).is_ok();
        if let Err(problem) = check_grant(current.validity, current_from_issuing_ca, granted.validity, same_key, now) {
            warn!(%problem, "renewed certificate not taken");
            return Ok(false);
        }
        self.store
            .replace_certificate(&self.identity, grant.cert_der.clone(), granted.validity.not_after_ms, now)
            .await
            .map_err(|err| format!("cannot store the renewed certificate: {err}"))?;
        self.identity.cert_der = grant.cert_der;
        info!(not_after_ms = granted.validity.not_after_ms, "renewed certificate stored; reconnecting to present it");
        Ok(true)
    }

    /// The control plane refused this edge as revoked: halt everything.
    pub(crate) async fn revoked(&self, reason: String) {
        warn!(%reason, "this edge is revoked: side effects, model calls and the gateway stop");
        if let Err(err) = self.store.mark_revoked(&self.identity, reason, self.runtime.now()).await {
            warn!(%err, "cannot record the revocation");
        }
    }
}

/// What the edge knows of the certificate it presents.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnCertificate {
    validity: Validity,
    from_issuing_ca: bool,
}
