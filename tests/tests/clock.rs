//! Time as an input: edges and a control plane run on a clock the test
//! moves. A bundle valid for one day is applied; the edge's clock is moved
//! two days on; within a second or two of real time the edge has failed
//! closed to supervised, recorded `autonomy.changed` at the moved time, and
//! the control plane has the event, verified. Two edges live through two
//! years of certificate renewals, three through a CA rotation. Nothing here
//! waits for a day to pass.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aios_control_plane::app::ControlPlane;
use aios_control_plane::store::AuditFilter;
use aios_daemon::clock::ManualClock;
use aios_daemon::transport::{read_frame, write_frame, SERVER_NAME};
use aios_edge_agent::daemon::{self, DaemonOptions, EdgeHandle};
use aios_edge_agent::store::EdgeStore;
use aios_edge_agent::sync::identity::Identity;
use aios_edge_agent::sync::uplink::LinkStatus;
use aios_shared::audit::kinds;
use aios_shared::bundle::{Autonomy, BundleSpec};
use aios_shared::wire::{Frame, Hello, TrustedCa, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
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
    let start = |dir: &Path| start_edge(&clock, dir.to_owned());
    let mut edges = enrolled_edges(&cp, &clock, tmp.path(), &["north", "south"]).await?;
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

/// Issue 24, finding 9: the fleet CA rotates with a 30-day overlap, three
/// edges live through it, and none loses sync. North and south are
/// connected when the CA rotates: they hear of the new CA on their live
/// connection, renew from it at once and reconnect. West is off; it comes
/// back ten days in, still trusting only the old CA and holding a
/// certificate from it: the server's chain (its new certificate and the
/// cross certificate) checks out against the old CA, and west renews too.
/// An enrolment token made before the rotation still enrols an edge during
/// the overlap. When the overlap ends every edge, restarted, trusts only
/// the new CA and is in sync, and a copy of west taken before it came back
/// (the old CA's certificate) opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_live_through_a_ca_rotation_and_never_lose_sync() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let clock = ManualClock::new(aios_daemon::clock::unix_ms());
    let cp = in_process::control_plane(tmp.path(), clock.shared()).await?;
    let start = |dir: &Path| start_edge(&clock, dir.to_owned());
    let old_ca = cp.api.pki.ca_der();
    let mut edges = enrolled_edges(&cp, &clock, tmp.path(), &["north", "south", "west"]).await?;
    let now_ms = clock.shared().unix_ms();
    for edge in &edges {
        wait_for(&format!("{} connected", edge.id), Duration::from_secs(30), || edge.in_good_standing(&cp, now_ms))
            .await?;
    }
    let early_token = in_process::token(&cp, Duration::from_millis(20 * DAY_MS as u64)).await?;
    edges[2].handle.take().context("west runs")?.stop().await;
    let west_before = tmp.path().join("west-before-rotation");
    copy_dir(&edges[2].dir, &west_before)?;

    // Rotate through the admin API, as `pki rotate-ca` does.
    let admin = reqwest::Client::new();
    let token = std::fs::read_to_string(&cp.admin_token_file)?;
    let rotate = || {
        admin
            .post(format!("{}/v1/pki/ca/rotate", cp.admin_url))
            .bearer_auth(token.trim())
            .json(&serde_json::json!({ "overlap_days": 30 }))
            .send()
    };
    let rotated: serde_json::Value = rotate().await?.error_for_status()?.json().await?;
    assert_eq!(rotated["generation"], 2, "{rotated}");
    assert_eq!(rotate().await?.status(), reqwest::StatusCode::CONFLICT, "one rotation at a time");
    let new_ca = cp.api.pki.ca_der();
    assert_ne!(new_ca, old_ca);

    for edge in &edges[..2] {
        let what = format!("{} renewed from the new CA on its live connection", edge.id);
        wait_for(&what, Duration::from_secs(30), || renewed_from(edge, &cp, &new_ca)).await?;
        let identity = edge.store.identity().await?.context("enrolled")?;
        assert_eq!(identity.trust_anchors.len(), 2, "{} trusts both CAs during the overlap", edge.id);
    }

    clock.advance(Duration::from_millis(10 * DAY_MS as u64));
    edges[2].handle = Some(start(&edges[2].dir).await?);
    wait_for("west, back after the rotation, renewed from the new CA", Duration::from_secs(30), || {
        renewed_from(&edges[2], &cp, &new_ca)
    })
    .await?;
    let late = tmp.path().join("late");
    let identity = in_process::enroll_with(&cp, &late, "late", &early_token).await?;
    assert_eq!(identity.issuing_ca(), new_ca.as_slice(), "a token made before the rotation enrols during it");

    // West's pre-rotation certificate (the old CA's), presented by a client
    // that trusts the new CA: during the overlap TLS accepts it, and the
    // sync stream refuses it as retired by west's renewal.
    let mut stale_identity = EdgeStore::open(&west_before)?.identity().await?.context("enrolled")?;
    stale_identity.trust_anchors = vec![TrustedCa { der: new_ca.clone(), retires_at_ms: None }];
    let answer = sync_handshake(&stale_identity, &cp, &clock).await?;
    assert!(matches!(&answer, Frame::Error(error) if error.message.contains("unknown edge certificate")), "{answer:?}");

    clock.advance(Duration::from_millis(25 * DAY_MS as u64));
    for edge in &mut edges {
        edge.handle.take().context("running")?.stop().await;
        edge.handle = Some(start(&edge.dir).await?);
    }
    for edge in &edges {
        wait_for(&format!("{} in sync after the overlap", edge.id), Duration::from_secs(30), || {
            renewed_from(edge, &cp, &new_ca)
        })
        .await?;
        let identity = edge.store.identity().await?.context("enrolled")?;
        let trusted: Vec<_> = identity.trusted_cas(cp.api.clock.unix_ms()).collect();
        assert_eq!(trusted, vec![new_ca.as_slice()], "{} trusts only the new CA after the overlap", edge.id);
        let verification = cp.api.store.verify(Some(edge.id.clone())).await?;
        assert!(verification.iter().all(|v| v.ok), "{verification:?}");
    }
    // After the overlap the old CA opens nothing: the control plane refuses
    // its certificate in the handshake, and an edge that still trusts only
    // the old CA refuses the control plane (the cross certificate expired).
    let refused = sync_handshake(&stale_identity, &cp, &clock).await.expect_err("the retired CA's certificate");
    assert!(format!("{refused:#}").contains("UnknownIssuer"), "{refused:#}");
    let stale = start(&west_before).await?;
    let reason = offline_reason(&stale).await?;
    assert!(reason.contains("certificate expired"), "{reason}");
    stale.stop().await;
    for edge in &mut edges {
        edge.handle.take().context("running")?.stop().await;
    }
    cp.stop().await;
    Ok(())
}

/// An edge daemon on `clock`.
async fn start_edge(clock: &ManualClock, dir: PathBuf) -> anyhow::Result<EdgeHandle> {
    let mut options = DaemonOptions::new(dir);
    options.clock = clock.shared();
    Ok(daemon::start(options).await?)
}

/// Edges enrolled under `root/NAME` and started.
async fn enrolled_edges(
    cp: &ControlPlane,
    clock: &ManualClock,
    root: &Path,
    names: &[&str],
) -> anyhow::Result<Vec<Edge>> {
    let mut edges = Vec::new();
    for name in names {
        let dir = root.join(name);
        let identity = in_process::enroll_edge(cp, &dir, name).await?;
        let handle = start_edge(clock, dir.clone()).await?;
        edges.push(Edge { id: identity.edge_id, store: EdgeStore::open(&dir)?, dir, handle: Some(handle) });
    }
    Ok(edges)
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

/// In good standing (see [`Edge::in_good_standing`]) on a certificate `ca` issued.
async fn renewed_from(edge: &Edge, cp: &ControlPlane, ca: &[u8]) -> anyhow::Result<bool> {
    let identity = edge.store.identity().await?.context("enrolled")?;
    let renewed = aios_daemon::cert::verify_issued_by(&identity.cert_der, ca).is_ok();
    Ok(renewed && edge.in_good_standing(cp, cp.api.clock.unix_ms()).await?)
}

/// Opens a sync stream as `identity` and returns the control plane's
/// answer to a `Hello`.
async fn sync_handshake(identity: &Identity, cp: &ControlPlane, clock: &ManualClock) -> anyhow::Result<Frame> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let config = identity.client_config(&clock.shared())?;
    let connection = endpoint.connect_with(config, cp.sync_addr, SERVER_NAME)?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = Hello {
        version_min: PROTOCOL_VERSION_MIN,
        version_max: PROTOCOL_VERSION_MAX,
        edge_id: identity.edge_id.clone(),
        agent_version: "test".into(),
        bundle_version: 0,
        audit_head_seq: 0,
    };
    write_frame(&mut send, &Frame::Hello(hello)).await?;
    let answer = read_frame(&mut recv).await?.context("no answer")?;
    connection.close(0u32.into(), b"done");
    Ok(answer)
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
