//! The edge's identity lifecycle on the sync connection: asking for a
//! renewed certificate when its current one is two thirds through its life,
//! taking the grant only after checking it, and stopping all autonomy when
//! the control plane refuses the edge as revoked.
//!
//! The key never changes: it also signs the edge's audit checkpoints, which
//! the control plane verifies against the key recorded at enrolment. A
//! compromised key is answered by revoking the edge and enrolling it again.

use aios_daemon::cert;
use aios_shared::identity::{check_grant, Validity};
use aios_shared::sync::EdgeSync;
use aios_shared::wire::CertificateGrant;
use tracing::{info, warn};

use crate::sync::enroll::certificate_request;
use crate::sync::uplink::Uplink;

impl Uplink {
    /// The validity of the certificate this session presents (read once
    /// per connection: it changes only by a renewal, which reconnects).
    pub(crate) fn own_validity(&self) -> Option<Validity> {
        match cert::facts(&self.identity.cert_der) {
            Ok(facts) => Some(facts.validity),
            Err(err) => {
                warn!(%err, "cannot read the edge's own certificate");
                None
            }
        }
    }

    /// Asks for a renewed certificate if the current one (of `validity`)
    /// is due and none was asked for on this connection.
    pub(crate) fn maybe_renew(&self, sync: &mut EdgeSync, validity: Option<Validity>) {
        let Some(validity) = validity else { return };
        if !sync.is_connected() || sync.renewal_pending() || !validity.renewal_due(self.runtime.now()) {
            return;
        }
        match certificate_request(&self.identity.signing_key) {
            Ok(csr) => {
                if sync.request_certificate(csr) {
                    info!(not_after_ms = validity.not_after_ms, "asking for a renewed certificate");
                }
            }
            Err(err) => warn!(%err, "cannot build a certificate request"),
        }
    }

    /// Checks a granted certificate (the fleet CA signed it, for this
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
        if let Err(err) = cert::verify_issued_by(&grant.cert_der, &self.identity.ca_der) {
            warn!(%err, "renewed certificate not taken");
            return Ok(false);
        }
        let same_key = granted.public_key == self.identity.signing_key.verifying_key().as_bytes();
        if let Err(problem) = check_grant(current.validity, granted.validity, same_key, now) {
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
