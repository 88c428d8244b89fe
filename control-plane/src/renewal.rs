//! Edge certificate renewal, the control plane's half.
//!
//! An edge asks on its authenticated sync connection with a CSR for the key
//! it already has. The control plane grants a certificate when the CSR's
//! key is the edge's and the certificate the edge presented is past half
//! its life (`aios_shared::identity`) or was issued by a CA being retired
//! (`crate::fleet_ca`). The new certificate is recorded as *pending*:
//! both it and the current one open a connection until the edge presents
//! the new one, which then becomes current and retires the old one. An edge
//! that never received its grant (a dropped connection) keeps its old
//! certificate and simply asks again.

use std::time::Duration;

use aios_daemon::cert;
use aios_daemon::db::DbError;
use aios_shared::identity;
use aios_shared::token::fingerprint;
use aios_shared::wire::CertificateGrant;
use rusqlite::params;
use tracing::{info, warn};

use crate::server::SyncContext;
use crate::store::CpStore;

/// Answers an edge's renewal request: a grant, or `None` when declined (the
/// reason is logged; the edge asks again on a later connection).
pub async fn renew(
    ctx: &SyncContext,
    edge_id: &str,
    presented_der: &[u8],
    csr_der: &[u8],
) -> Result<Option<CertificateGrant>, DbError> {
    let now_ms = ctx.clock.unix_ms();
    let presented = match cert::facts(presented_der) {
        Ok(facts) => facts,
        Err(err) => {
            warn!(%err, "renewal declined: the presented certificate does not parse");
            return Ok(None);
        }
    };
    let from_issuing_ca = ctx.pki.ca.issued_by_current(presented_der);
    if !identity::renewal_granted(presented.validity, from_issuing_ca, now_ms) {
        info!(
            not_after_ms = presented.validity.not_after_ms,
            "renewal declined: the certificate is not half through its life"
        );
        return Ok(None);
    }
    let now = Duration::from_millis(u64::try_from(now_ms).unwrap_or_default());
    let (cert_der, public_key) = match ctx.pki.ca.issue_edge_certificate(edge_id, csr_der, now) {
        Ok(issued) => issued,
        Err(err) => {
            warn!(%err, "renewal declined");
            return Ok(None);
        }
    };
    if public_key[..] != presented.public_key[..] {
        warn!("renewal declined: the request is for another key than the edge's");
        return Ok(None);
    }
    let not_after_ms = match cert::facts(&cert_der) {
        Ok(facts) => facts.validity.not_after_ms,
        Err(err) => {
            warn!(%err, "renewal failed: the issued certificate does not parse");
            return Ok(None);
        }
    };
    ctx.store.certificate_issued(edge_id.to_owned(), hex::encode(fingerprint(&cert_der)), not_after_ms).await?;
    info!(not_after_ms, "certificate renewed");
    Ok(Some(CertificateGrant { cert_der }))
}

impl CpStore {
    /// Records a renewed certificate as pending for the edge.
    pub async fn certificate_issued(
        &self,
        edge_id: String,
        fingerprint: String,
        not_after_ms: i64,
    ) -> Result<(), DbError> {
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE edges SET pending_fingerprint = ?2, pending_not_after_ms = ?3 WHERE id = ?1",
                    params![edge_id, fingerprint, not_after_ms],
                )?;
                Ok(())
            })
            .await
    }

    /// Records when the edge's current certificate expires (at enrolment).
    pub async fn certificate_expiry(&self, edge_id: String, not_after_ms: i64) -> Result<(), DbError> {
        self.db
            .write(move |c| {
                c.execute("UPDATE edges SET cert_not_after_ms = ?2 WHERE id = ?1", params![edge_id, not_after_ms])?;
                Ok(())
            })
            .await
    }

    /// The edge connected with the certificate of `fingerprint`: if it is
    /// the pending one, it becomes current and the old one stops working.
    /// Returns whether it was promoted.
    pub async fn certificate_presented(&self, edge_id: String, fingerprint: String) -> Result<bool, DbError> {
        self.db
            .write(move |c| {
                let changed = c.execute(
                    "UPDATE edges SET cert_fingerprint = pending_fingerprint, cert_not_after_ms = pending_not_after_ms,
                                      pending_fingerprint = NULL, pending_not_after_ms = NULL
                     WHERE id = ?1 AND pending_fingerprint = ?2",
                    params![edge_id, fingerprint],
                )?;
                Ok(changed == 1)
            })
            .await
    }
}
