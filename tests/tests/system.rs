//! Whole-system tests: real `aios-control-plane` and `aios-edge` processes on
//! loopback, over real QUIC with mutual TLS, with real SQLite underneath.

use std::time::Duration;

use aios_tests::relay::{Faults, Relay};
use aios_tests::{addr, bins, enroll_output, wait_for, wait_synced, ControlPlaneProc, EdgeProc};
use anyhow::Context;
use rand::Rng;

const LONG: Duration = Duration::from_secs(180);

/// The control plane holds exactly the edge's chain: the same events, in
/// order, by sequence and hash (nothing lost, nothing twice), of which
/// `expected_debug` are debug events.
async fn assert_stored_exactly(cp: &ControlPlaneProc, edge: &EdgeProc, expected_debug: u64) -> anyhow::Result<()> {
    let stored: Vec<(u64, String)> = cp
        .events(&edge.edge_id)
        .await?
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap_or(0), e["hash"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let conn = rusqlite::Connection::open(edge.dir.join("edge.db"))?;
    let mut stmt = conn.prepare("SELECT seq, hash FROM audit_log ORDER BY seq")?;
    let local: Vec<(u64, String)> = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, hex_string(&r.get::<_, Vec<u8>>(1)?))))?
        .collect::<Result<_, _>>()?;
    assert_eq!(stored.len(), local.len(), "events stored at the control plane vs written by the edge");
    if let Some(idx) = stored.iter().zip(&local).position(|(a, b)| a != b) {
        panic!("first difference at position {idx}: stored {:?}, edge {:?}", stored[idx], local[idx]);
    }
    let debug: i64 = conn.query_row("SELECT COUNT(*) FROM audit_log WHERE kind = 'debug.event'", [], |r| r.get(0))?;
    assert_eq!(debug as u64, expected_debug, "debug events written");
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_verifies(cp: &ControlPlaneProc, edge_id: Option<&str>) -> anyhow::Result<()> {
    let mut args = vec!["audit", "verify"];
    if let Some(edge_id) = edge_id {
        args.extend(["--edge", edge_id]);
    }
    let out = cp.cli_ok(&args)?;
    assert!(out.lines().all(|line| !line.starts_with("BROKEN")), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_apply_bundles_and_upload_30000_verified_events() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edges = Vec::new();
    for idx in 0..3 {
        let token = cp.token("10m")?;
        let mut edge = EdgeProc::enroll(&bins, &tmp.path().join(format!("edge{idx}")), &cp.sync_addr(), &token)?;
        edge.start()?;
        edges.push(edge);
    }
    assert_eq!(cp.publish("autonomy = \"supervised\"\n")?, 1);
    assert_eq!(cp.publish("autonomy = \"autonomous\"\nvalid_for = \"1d\"\n[extensions.note]\ntext = \"v2\"\n")?, 2);
    for edge in &edges {
        wait_for("bundle v2 applied", LONG, || async { Ok(cp.edge(&edge.edge_id).await?["bundle_version"] == 2) })
            .await?;
        assert_eq!(edge.status()?["autonomy"], "autonomous");
    }
    for edge in &edges {
        edge.emit(10_000)?;
    }
    for edge in &edges {
        wait_synced(&cp, edge, LONG).await?;
        assert_stored_exactly(&cp, edge, 10_000).await?;
    }
    let all_debug = cp.get("/v1/audit?kind=debug.event&limit=100000").await?;
    assert_eq!(all_debug.as_array().map(Vec::len), Some(30_000));
    assert_verifies(&cp, None)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_killed_20_times_during_upload_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    let mut emitted = 0;
    let mut kills_during_upload = 0;
    let mut round = 0;
    while kills_during_upload < 20 {
        round += 1;
        assert!(round <= 80, "only {kills_during_upload} kills interrupted an upload in {round} rounds");
        let head = edge.emit(10_000)?;
        emitted += 10_000;
        let before = stored_seq(&cp, &edge).await?;
        edge.start()?;
        // Kill at a random moment once the upload is under way...
        upload_begun(&cp, &edge, before).await?;
        let pause = rand::thread_rng().gen_range(0..15);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        edge.kill9();
        // ...and count it only if what is committed shows it interrupted the upload.
        let stored = stored_seq(&cp, &edge).await?;
        if stored < head {
            kills_during_upload += 1;
        }
        eprintln!("round {round}: killed {pause} ms into the upload with {stored}/{head} committed");
    }
    edge.start()?;
    wait_synced(&cp, &edge, LONG).await?;
    assert_stored_exactly(&cp, &edge, emitted).await?;
    assert_verifies(&cp, Some(&edge.edge_id))?;
    Ok(())
}

/// Returns as soon as the control plane has committed anything past `before`.
/// Uploads take tens of milliseconds here, so this polls every 2 ms.
async fn upload_begun(cp: &ControlPlaneProc, edge: &EdgeProc, before: u64) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + LONG;
    while stored_seq(cp, edge).await? <= before {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the upload never began");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Highest audit sequence the control plane has committed for the edge.
async fn stored_seq(cp: &ControlPlaneProc, edge: &EdgeProc) -> anyhow::Result<u64> {
    cp.edge(&edge.edge_id).await?["audit_seq"].as_u64().context("no audit_seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_mid_upload_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let mut cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.start()?;
    let mut emitted = 0;
    let mut restarts_during_upload = 0;
    let mut round = 0;
    while restarts_during_upload < 3 {
        round += 1;
        assert!(round <= 20, "only {restarts_during_upload} restarts interrupted an upload in {round} rounds");
        let before = stored_seq(&cp, &edge).await?;
        let head = edge.emit(20_000)?;
        emitted += 20_000;
        upload_begun(&cp, &edge, before).await?;
        let pause = rand::thread_rng().gen_range(0..15);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        cp.kill9();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cp.restart().await?;
        let stored = stored_seq(&cp, &edge).await?;
        if stored < head {
            restarts_during_upload += 1;
        }
        eprintln!("round {round}: control plane killed {pause} ms into the upload with {stored}/{head} committed");
    }
    wait_synced(&cp, &edge, LONG).await?;
    assert_stored_exactly(&cp, &edge, emitted).await?;
    assert_verifies(&cp, Some(&edge.edge_id))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_edge_is_cut_off_and_refused_from_then_on() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.start()?;
    cp.publish("autonomy = \"autonomous\"\nvalid_for = \"1d\"\n")?;
    wait_for("the edge autonomous", LONG, || async { Ok(autonomy(&edge).await? == "autonomous") }).await?;
    cp.cli_ok(&["edge", "revoke", &edge.edge_id])?;
    let cut_off = wait_for("edge cut off", Duration::from_secs(10), || async {
        Ok(cp.edge(&edge.edge_id).await?["connected"] == false)
    })
    .await?;
    eprintln!("revoked edge cut off after {cut_off:?}");
    // It keeps trying with backoff but is refused every time.
    wait_for("edge to report the revocation", Duration::from_secs(30), || async { Ok(edge.log().contains("revoked")) })
        .await?;
    let before = edge.log().matches("sync connection lost").count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cp.edge(&edge.edge_id).await?["connected"], false);
    let attempts = edge.log().matches("sync connection lost").count() - before;
    // The edge runs with --reconnect-max 2s, and a refused edge waits at least
    // a tenth of that between attempts: at most 10 in 2 s, never a tight loop.
    assert!(attempts <= 10, "a refused edge must back off, not retry in a loop ({attempts} attempts in 2 s)");

    // Finding 9: refused as revoked, the edge stops all autonomy (no side
    // effects, no model calls, no gateway), recorded in its own log, and
    // stays stopped across a restart, before it even reaches the control plane.
    assert_eq!(autonomy(&edge).await?, "halted");
    let revoked = edge.audit_payloads("identity.revoked")?;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    edge.kill9();
    edge.start()?;
    assert_eq!(autonomy(&edge).await?, "halted", "a restart gives a revoked edge nothing back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_refusals_are_clear() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let stderr = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    let token = cp.token("10m")?;
    EdgeProc::enroll(&bins, &tmp.path().join("first"), &cp.sync_addr(), &token)?;
    let reused = enroll_output(&bins, &tmp.path().join("second"), &cp.sync_addr(), &token)?;
    assert!(!reused.status.success());
    assert!(stderr(reused).contains("already used"));

    let short = cp.token("1ms")?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired = enroll_output(&bins, &tmp.path().join("third"), &cp.sync_addr(), &short)?;
    assert!(stderr(expired).contains("expired"));

    let good = cp.token("10m")?;
    let last = good.chars().last().context("token is not empty")?;
    let wrong_pin = format!("{}{}", &good[..good.len() - 1], if last == '0' { '1' } else { '0' });
    let pinned = enroll_output(&bins, &tmp.path().join("fourth"), &cp.sync_addr(), &wrong_pin)?;
    let message = stderr(pinned);
    assert!(message.contains("does not match the fingerprint"), "{message}");
    // The wrong pin did not burn the token: the server never saw it.
    EdgeProc::enroll(&bins, &tmp.path().join("fifth"), &cp.sync_addr(), &good)?;

    let garbage = enroll_output(&bins, &tmp.path().join("sixth"), &cp.sync_addr(), "not-a-token")?;
    assert!(stderr(garbage).contains("malformed enrolment token"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_and_missing_certificates_are_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let other = ControlPlaneProc::start(&bins, &tmp.path().join("other-cp")).await?;
    // Enrolled with another fleet, then pointed at ours.
    let mut stranger = EdgeProc::enroll(&bins, &tmp.path().join("stranger"), &other.sync_addr(), &other.token("10m")?)?;
    stranger.control_plane_override = Some(cp.sync_addr());
    stranger.start()?;
    wait_for("the stranger to be refused", Duration::from_secs(30), || async {
        Ok(stranger.log().contains("sync connection lost"))
    })
    .await?;
    assert!(cp.get("/v1/edges").await?.as_array().is_some_and(Vec::is_empty));

    // A client with no certificate may enrol but never sync.
    let fingerprint = aios_shared::token::EnrollToken::parse(&cp.token("10m")?)?.ca_fingerprint;
    let config = aios_edge_agent::sync::identity::enrollment_client_config(fingerprint)?;
    let mut endpoint = quinn::Endpoint::client(addr("127.0.0.1:0"))?;
    endpoint.set_default_client_config(config);
    let connection =
        endpoint.connect(addr(&cp.sync_addr()), aios_daemon::transport::SERVER_NAME)?.await.context("connect")?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let hello = aios_shared::wire::Frame::Hello(aios_shared::wire::Hello {
        version_min: 1,
        version_max: 1,
        edge_id: "edge-impostor".into(),
        agent_version: "test".into(),
        bundle_version: 0,
        audit_head_seq: 0,
    });
    aios_daemon::transport::write_frame(&mut send, &hello).await?;
    match aios_daemon::transport::read_frame(&mut recv).await? {
        Some(aios_shared::wire::Frame::Error(error)) => {
            assert_eq!(error.code, aios_shared::wire::ErrorCode::CertificateRequired, "{}", error.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Garbage on the stream closes that connection with a clear error...
    let connection =
        endpoint.connect(addr(&cp.sync_addr()), aios_daemon::transport::SERVER_NAME)?.await.context("connect")?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
    match aios_daemon::transport::read_frame(&mut recv).await? {
        Some(aios_shared::wire::Frame::Error(error)) => {
            assert_eq!(error.code, aios_shared::wire::ErrorCode::Malformed, "{}", error.message);
        }
        other => panic!("expected a malformed-frame error, got {other:?}"),
    }
    // ...and a length beyond the limit is refused before any body arrives...
    let connection =
        endpoint.connect(addr(&cp.sync_addr()), aios_daemon::transport::SERVER_NAME)?.await.context("connect")?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(&u32::MAX.to_be_bytes()).await?;
    match aios_daemon::transport::read_frame(&mut recv).await? {
        Some(aios_shared::wire::Frame::Error(error)) => assert!(error.message.contains("exceeds"), "{}", error.message),
        other => panic!("expected a frame-size error, got {other:?}"),
    }
    // ...while the control plane keeps serving everyone else.
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("fine"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.start()?;
    wait_for("a good edge to connect", LONG, || async { Ok(cp.edge(&edge.edge_id).await?["connected"] == true) })
        .await?;

    // The admin API wants its token.
    let url = std::fs::read_to_string(cp.dir.join("admin.url"))?;
    let response = reqwest::Client::new().get(format!("{}/v1/edges", url.trim())).bearer_auth("wrong").send().await?;
    assert_eq!(response.status().as_u16(), 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_foreign_and_tampered_inputs_are_refused_or_detected() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let other = ControlPlaneProc::start(&bins, &tmp.path().join("other-cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.start()?;
    cp.publish("autonomy = \"supervised\"\n")?;
    cp.publish("autonomy = \"autonomous\"\n")?;
    wait_for("bundle v2 applied", LONG, || async { Ok(edge.status()?["bundle_version"] == 2) }).await?;

    // Replaying v1 (genuinely signed, but older) is refused as a rollback.
    let old = cp.get("/v1/policy/1").await?;
    let old_file = tmp.path().join("old.json");
    std::fs::write(&old_file, old["signed"].to_string())?;
    let replay = edge.edge_cli(&["debug", "offer-bundle", old_file.to_str().context("utf-8")?])?;
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stderr).contains("rollback"));

    // A newer version signed by another control plane's key is refused.
    for _ in 0..3 {
        other.publish("autonomy = \"autonomous\"\n")?;
    }
    let foreign = other.get("/v1/policy/3").await?;
    let foreign_file = tmp.path().join("foreign.json");
    std::fs::write(&foreign_file, foreign["signed"].to_string())?;
    let offered = edge.edge_cli(&["debug", "offer-bundle", foreign_file.to_str().context("utf-8")?])?;
    assert!(!offered.status.success());
    assert!(String::from_utf8_lossy(&offered.stderr).contains("signature"));
    assert_eq!(edge.status()?["bundle_version"], 2, "the last good bundle stays");

    // An audit event altered on the edge before upload is detected.
    edge.kill9();
    let head = edge.emit(50)?;
    let conn = rusqlite::Connection::open(edge.dir.join("edge.db"))?;
    let altered =
        conn.execute("UPDATE audit_log SET payload = '{\"n\":\"forged\"}' WHERE seq = ?1", [head as i64 - 10])?;
    assert_eq!(altered, 1);
    drop(conn);
    edge.start()?;
    wait_synced(&cp, &edge, LONG).await?;
    let verify = cp.cli(&["audit", "verify", "--edge", &edge.edge_id])?;
    assert!(!verify.status.success(), "verify must exit non-zero on a break");
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(report.contains("BROKEN") && report.contains("altered"), "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_fails_closed_and_kill_switch_turns_autonomy_off() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let mut cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.start()?;
    cp.publish("autonomy = \"autonomous\"\n")?;
    wait_for("autonomous", LONG, || async { Ok(edge.status()?["autonomy"] == "autonomous") }).await?;
    cp.cli_ok(&["policy", "kill-switch"])?;
    wait_for("kill switch applied", LONG, || async { Ok(edge.status()?["autonomy"] == "off") }).await?;

    cp.publish("autonomy = \"autonomous\"\nvalid_for = \"3s\"\n")?;
    wait_for("autonomous again", LONG, || async { Ok(edge.status()?["autonomy"] == "autonomous") }).await?;
    // Offline while the bundle expires: the edge falls back to supervised on its own.
    cp.kill9();
    wait_for("fail-closed fallback", Duration::from_secs(30), || async {
        Ok(edge.status()?["autonomy"] == "supervised")
    })
    .await?;
    cp.restart().await?;
    wait_synced(&cp, &edge, LONG).await?;
    let changes = cp.get(&format!("/v1/audit?edge={}&kind=autonomy.changed", edge.edge_id)).await?;
    let last = changes.as_array().and_then(|c| c.last()).context("no autonomy change recorded")?;
    assert_eq!(last["payload"]["to"], "supervised");
    assert!(last["payload"]["reason"].as_str().is_some_and(|r| r.contains("expired")), "{last}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_completes_over_a_lossy_reordering_link() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let faults = Faults { loss: 0.10, duplication: 0.05, reordering: 0.10 };
    let relay = Relay::start(addr(&cp.sync_addr()), faults).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.control_plane_override = Some(relay.addr.to_string());
    edge.emit(5_000)?;
    edge.start()?;
    cp.publish("autonomy = \"autonomous\"\n")?;
    wait_synced(&cp, &edge, LONG).await?;
    wait_for("bundle applied over the lossy link", LONG, || async { Ok(edge.status()?["bundle_version"] == 1) })
        .await?;
    assert_stored_exactly(&cp, &edge, 5_000).await?;
    assert_verifies(&cp, Some(&edge.edge_id))?;
    let counts = relay.counts();
    eprintln!("relay: {counts:?}");
    assert!(counts.dropped > 0 && counts.reordered > 0 && counts.duplicated > 0, "{counts:?}");
    Ok(())
}

/// The autonomy the edge reports on its health endpoint.
async fn autonomy(edge: &EdgeProc) -> anyhow::Result<serde_json::Value> {
    Ok(edge.api(reqwest::Method::GET, "/v1/health", None).await?.1["autonomy"].clone())
}
