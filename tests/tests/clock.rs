//! Time as an input: edges and a control plane run on a clock the test
//! moves. A bundle valid for one day is applied; the edge's clock is moved
//! two days on; within a second or two of real time the edge has failed
//! closed to supervised, recorded `autonomy.changed` at the moved time, and
//! the control plane has the event, verified. Two edges live through two
//! years of certificate renewals. Nothing here waits for a day to pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aios_control_plane::app::ControlPlane;
use aios_control_plane::store::AuditFilter;
use aios_daemon::clock::ManualClock;
use aios_edge_agent::daemon::{self, DaemonOptions, EdgeHandle};
use aios_edge_agent::store::EdgeStore;
use aios_edge_agent::sync::uplink::LinkStatus;
use aios_shared::audit::kinds;
use aios_shared::bundle::{Autonomy, BundleSpec};
use aios_tests::{in_process, wait_for};
use anyhow::Context;

const DAY_MS: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_bundle_fails_closed_on_a_moved_clock() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let start_ms = aios_daemon::clock::unix_ms();
    let clock = ManualClock::new(start_ms);
    let cp = in_process::control_plane(tmp.path(), clock.shared()).await?;
    let edge_dir = tmp.path().join("edge");
    let identity = in_process::enroll_edge(&cp, &edge_dir, "clocked").await?;
    let store = EdgeStore::open(&edge_dir)?;

    let spec = BundleSpec::from_toml("autonomy = \"autonomous\"\nvalid_for = \"1d\"\n")?;
    aios_control_plane::api::publish(&cp.api, spec).await.map_err(|err| anyhow::anyhow!("{err:?}"))?;
    let mut edge_options = DaemonOptions::new(edge_dir.clone());
    edge_options.clock = clock.shared();
    let edge = daemon::start(edge_options).await?;
    wait_for("the bundle applied", Duration::from_secs(30), || async {
        Ok(store.autonomy().await? == Autonomy::Autonomous)
    })
    .await?;

    clock.advance(Duration::from_millis(2 * DAY_MS as u64));
    wait_for("the edge to fail closed", Duration::from_secs(15), || async {
        Ok(store.autonomy().await? == Autonomy::Supervised)
    })
    .await?;
    let events = store.load_audit(0, 10_000).await?;
    let changed =
        events.iter().rev().find(|e| e.kind == kinds::AUTONOMY_CHANGED).context("no autonomy.changed event")?;
    let payload: serde_json::Value = serde_json::from_str(&changed.payload)?;
    assert_eq!(
        (payload["from"].as_str(), payload["to"].as_str()),
        (Some("autonomous"), Some("supervised")),
        "{payload}"
    );
    assert!(changed.ts_ms >= start_ms + 2 * DAY_MS, "recorded at the moved time, not the real one: {changed:?}");

    let filter = AuditFilter {
        edge: Some(identity.edge_id.clone()),
        kind: Some(kinds::AUTONOMY_CHANGED.into()),
        ..AuditFilter::default()
    };
    wait_for("the control plane to hold the event", Duration::from_secs(30), || async {
        Ok(!cp.api.store.query_audit(filter.clone()).await?.is_empty())
    })
    .await?;
    let verification = cp.api.store.verify(Some(identity.edge_id.clone())).await?;
    assert!(verification.iter().all(|v| v.ok), "{verification:?}");

    edge.stop().await;
    cp.stop().await;
    Ok(())
}

/// Issue 24, finding 18. An edge whose clock runs two days ahead of the
/// control plane's sees every new one-day bundle as expired and refuses it;
/// the kill switch reaches it all the same, and the next ordinary bundle
/// is still refused, so the edge stays stopped until its clock is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_whose_clock_runs_ahead_still_obeys_the_kill_switch() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let now_ms = aios_daemon::clock::unix_ms();
    let cp_clock = ManualClock::new(now_ms);
    let cp = in_process::control_plane(tmp.path(), cp_clock.shared()).await?;
    let edge_dir = tmp.path().join("edge");
    let identity = in_process::enroll_edge(&cp, &edge_dir, "ahead").await?;
    let store = EdgeStore::open(&edge_dir)?;
    let edge_clock = ManualClock::new(now_ms + 2 * DAY_MS);
    let mut edge_options = DaemonOptions::new(edge_dir.clone());
    edge_options.clock = edge_clock.shared();
    let edge = daemon::start(edge_options).await?;
    let publish = |text: &'static str| {
        let api = cp.api.clone();
        async move {
            let spec = BundleSpec::from_toml(text)?;
            aios_control_plane::api::publish(&api, spec).await.map_err(|err| anyhow::anyhow!("{err:?}"))
        }
    };
    let refused = |version: u64| {
        let store = &store;
        async move {
            wait_for("the bundle refused as expired", Duration::from_secs(30), || async {
                let events = store.load_audit(0, 10_000).await?;
                Ok(events
                    .iter()
                    .any(|e| e.kind == kinds::BUNDLE_REFUSED && e.payload.contains(&format!("\"version\":{version}"))))
            })
            .await
        }
    };

    let first = publish("autonomy = \"autonomous\"\nvalid_for = \"1d\"\n").await?;
    refused(first).await?;
    assert_eq!(store.autonomy().await?, Autonomy::Supervised, "no bundle in force: supervised");

    publish("autonomy = \"halted\"\nvalid_for = \"1d\"\n").await?;
    wait_for("the kill switch applied", Duration::from_secs(30), || async {
        Ok(store.autonomy().await? == Autonomy::Halted)
    })
    .await?;

    let after = publish("autonomy = \"autonomous\"\nvalid_for = \"1d\"\n").await?;
    refused(after).await?;
    assert_eq!(store.autonomy().await?, Autonomy::Halted, "still stopped");
    let verification = cp.api.store.verify(Some(identity.edge_id.clone())).await?;
    assert!(verification.iter().all(|v| v.ok), "{verification:?}");

    edge.stop().await;
    cp.stop().await;
    Ok(())
}

/// Issue 24, finding 9. Edge certificates last a year; two edges and the
/// control plane run on one clock moved a month at a time for two years,
/// with TLS checking certificates at the moved time. In odd months the
/// edges keep running (a running connection renews by itself), in even
/// months they restart (a fresh handshake with whatever certificate is
/// stored). After every step both are connected with a certificate valid
/// now and not yet due, and the control plane holds their whole audit log.
/// A copy of one edge taken before its first renewal still holds the old
/// certificate: once the edge presented its new one, the old one opens
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_renew_their_certificates_across_two_years_and_never_lose_sync() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let clock = ManualClock::new(aios_daemon::clock::unix_ms());
    let cp = in_process::control_plane(tmp.path(), clock.shared()).await?;
    let start = |dir: &Path| {
        let mut options = DaemonOptions::new(dir.to_owned());
        options.clock = clock.shared();
        daemon::start(options)
    };
    let mut edges = Vec::new();
    for name in ["north", "south"] {
        let dir = tmp.path().join(name);
        let identity = in_process::enroll_edge(&cp, &dir, name).await?;
        let handle = start(&dir).await?;
        edges.push(Edge { id: identity.edge_id, store: EdgeStore::open(&dir)?, dir, handle: Some(handle) });
    }
    let stale_copy = tmp.path().join("north-before-renewal");
    for month in 1..=24 {
        clock.advance(Duration::from_millis(30 * DAY_MS as u64));
        if month % 2 == 0 {
            for edge in &mut edges {
                if let Some(handle) = edge.handle.take() {
                    handle.stop().await;
                }
                if month == 8 && edge.dir.ends_with("north") {
                    copy_dir(&edge.dir, &stale_copy)?;
                }
                edge.handle = Some(start(&edge.dir).await?);
            }
        }
        let now_ms = clock.shared().unix_ms();
        for edge in &edges {
            let what = format!("{} in month {month}: connected on a current certificate, audit in sync", edge.id);
            wait_for(&what, Duration::from_secs(60), || edge.in_good_standing(&cp, now_ms)).await?;
        }
        if month == 10 {
            // North renewed in month 9 and presents the new certificate.
            let stale = start(&stale_copy).await?;
            let refused = offline_reason(&stale).await?;
            assert!(
                refused.contains("unknown edge certificate"),
                "the retired certificate opened a connection: {refused}"
            );
            stale.stop().await;
        }
    }

    for edge in &mut edges {
        let events = edge.store.load_audit(0, 100_000).await?;
        let renewals = events.iter().filter(|e| e.kind == kinds::CERTIFICATE_RENEWED).count();
        assert!(renewals >= 2, "{} renewed {renewals} times in two years", edge.id);
        let verification = cp.api.store.verify(Some(edge.id.clone())).await?;
        assert!(verification.iter().all(|v| v.ok), "{verification:?}");
        if let Some(handle) = edge.handle.take() {
            handle.stop().await;
        }
    }

    cp.stop().await;
    Ok(())
}

struct Edge {
    id: String,
    dir: PathBuf,
    store: EdgeStore,
    handle: Option<EdgeHandle>,
}

impl Edge {
    /// Connected, on a certificate valid at `now_ms` and not yet due for
    /// renewal, with every event it wrote held by the control plane.
    async fn in_good_standing(&self, cp: &ControlPlane, now_ms: i64) -> anyhow::Result<bool> {
        let connected = self.handle.as_ref().is_some_and(|h| *h.status.borrow() == LinkStatus::Connected);
        let identity = self.store.identity().await?.context("enrolled")?;
        let validity = aios_daemon::cert::facts(&identity.cert_der)?.validity;
        let head = self.store.audit_head().await?.seq;
        let edges = cp.api.store.edges().await?;
        let held = edges.iter().find(|e| e.id == self.id).map(|e| e.audit_seq);
        Ok(connected && validity.contains(now_ms) && !validity.renewal_due(now_ms) && held == Some(head))
    }
}

/// Why the edge's link is down, once it is.
async fn offline_reason(edge: &EdgeHandle) -> anyhow::Result<String> {
    let mut status = edge.status.clone();
    let wait = async {
        loop {
            if let LinkStatus::Offline(reason) = status.borrow_and_update().clone() {
                return Ok::<_, anyhow::Error>(reason);
            }
            status.changed().await?;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait).await?
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}
