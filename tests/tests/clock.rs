//! Time as an input: an edge run on a clock the test moves. A bundle valid
//! for one day is applied; the edge's clock is moved two days on; within a
//! second or two of real time the edge has failed closed to supervised,
//! recorded `autonomy.changed` at the moved time, and the control plane has
//! the event, verified. Nothing here waits for a day to pass.

use std::time::Duration;

use aios_control_plane::store::AuditFilter;
use aios_daemon::clock::ManualClock;
use aios_edge_agent::daemon::{self, DaemonOptions};
use aios_edge_agent::store::EdgeStore;
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
