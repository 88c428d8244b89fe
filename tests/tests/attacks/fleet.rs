//! Attacks on identities, roles and the fleet's controls (issue 24,
//! findings 4, 7, 8, 9, 12, 13, 20 and 22), in the `attacks` test binary.

use super::*;

/// Finding 4. An edge with no configured token: a process on the machine
/// without the token it made at first start (`api-token`, mode 0600) may
/// read but may not submit a task, release a dead letter, compensate an
/// effect or decide an approval; with the token it may. A request whose
/// `Host` is another name (DNS rebinding) or whose `Origin` is another site
/// is refused even with the token, on every route. The CLI finds the token
/// in the data directory by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_api_without_the_token_or_from_a_foreign_origin() -> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let secret_file = files.path().join("webhook-secret");
    std::fs::write(&secret_file, WEBHOOK_SECRET)?;
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &webhook_bundle(&secret_file)).await?;
    let token_file = edge.dir.join("api-token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file)?.permissions().mode() & 0o777, 0o600);
    }
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    assert_eq!(token.len(), 64);

    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", edge.api_addr());
    let task = json!({ "agent": "note", "input": { "order": 7 } });
    let mutations = [
        ("/v1/tasks", task.clone()),
        ("/v1/dlq/some-intent/retry", json!({})),
        ("/v1/dlq/some-intent/discard", json!({})),
        ("/v1/tasks/some-task/compensate", json!({ "step": "save" })),
        ("/v1/tasks/some-task/cancel", json!({})),
        ("/v1/approvals/some-approval/approve", json!({})),
    ];
    for (path, body) in &mutations {
        for presented in [None, Some("wrong"), Some(&token[1..])] {
            let mut request = http.post(url(path)).json(body);
            if let Some(presented) = presented {
                request = request.bearer_auth(presented);
            }
            let status = request.send().await?.status().as_u16();
            assert_eq!(status, 401, "POST {path} with {presented:?}");
        }
    }
    let (_, tasks) = edge.api(Method::GET, "/v1/tasks", None).await?;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(0), "nothing was submitted: {tasks}");
    assert_eq!(http.get(url("/v1/health")).send().await?.status().as_u16(), 200, "reads stay open on loopback");
    let created = http.post(url("/v1/tasks")).bearer_auth(&token).json(&task).send().await?;
    assert_eq!(created.status().as_u16(), 201);

    // DNS rebinding and cross-site requests: refused with the token too.
    let port = edge.api_addr().rsplit_once(':').map(|(_, port)| port.to_owned()).unwrap_or_default();
    for (name, value) in [
        ("host", format!("evil.example:{port}")),
        ("host", "localhost.evil.example".to_owned()),
        ("origin", "http://evil.example".to_owned()),
        ("origin", "null".to_owned()),
    ] {
        for (method, path) in [(Method::GET, "/v1/health"), (Method::POST, "/v1/tasks"), (Method::GET, "/v1/models")] {
            let response = http
                .request(method.clone(), url(path))
                .bearer_auth(&token)
                .header(name, &value)
                .json(&task)
                .send()
                .await?;
            assert_eq!(response.status().as_u16(), 403, "{method} {path} with {name}: {value}");
        }
    }
    let same_origin = http.get(url("/v1/health")).header("origin", format!("http://127.0.0.1:{port}")).send().await?;
    assert_eq!(same_origin.status().as_u16(), 200);

    // The CLI presents the token it finds in the data directory.
    let listed = edge.edge_cli(&["dlq", "retry", "no-such-intent", "--api", &edge.api_addr()])?;
    let said = String::from_utf8_lossy(&listed.stderr);
    assert!(!listed.status.success() && said.contains("no intent no-such-intent"), "{said}");
    let (_, tasks) = edge.api(Method::GET, "/v1/tasks", None).await?;
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(1), "{tasks}");
    Ok(())
}

/// Finding 8. A refund above the limit, dispatched through the control
/// plane with a customer's details in its input, waits for approval. A
/// viewer (API token or console) sees that it waits and for what action,
/// but no argument, input, reasoning or audit payload; the admin sees them
/// all on the same routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_where_work_stands_not_what_agents_handled() -> anyhow::Result<()> {
    use aios_tests::payments::{PaymentFaults, PaymentService};

    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let bundle = include_str!("../../data/refunds.toml")
        .replace("PAYMENTS_URL", &payments.url())
        .replace("RECEIPTS_DIR", receipts.path().to_str().context("utf-8 path")?);
    let (_tmp, cp, edge) = fleet_with(&bins!(), &bundle).await?;
    let url = std::fs::read_to_string(cp.dir.join("admin.url"))?.trim().to_owned();
    let admin = std::fs::read_to_string(cp.dir.join("admin-token"))?.trim().to_owned();
    let http = reqwest::Client::new();
    let secrets = ["acct-77", "4242", "Jane Roe"];
    let input = json!({
        "order": { "id": "v-1", "accounts": ["acct-77"] },
        "refund": { "amount": 240, "account": "acct-77" },
        "reason": "Jane Roe, card ending 4242, asks for the full price back",
    });
    let body = json!({ "agent": "refunds", "kind": "refund-request", "input": input, "edge": edge.edge_id });
    let dispatched = http.post(format!("{url}/v1/tasks")).bearer_auth(&admin).json(&body).send().await?;
    assert!(dispatched.status().is_success(), "{}", dispatched.text().await?);
    let approval = wait_for("the refund to wait for approval", LONG, || async {
        Ok(cp.get("/v1/approvals?state=pending").await?.as_array().is_some_and(|a| !a.is_empty()))
    });
    approval.await?;
    let queued = cp.get("/v1/approvals?state=pending").await?;
    let approval_id = queued[0]["id"].as_str().context("approval id")?.to_owned();
    let task_id = queued[0]["request"]["task"].as_str().context("task id")?.to_owned();
    let dispatches = cp.get("/v1/tasks").await?;
    let dispatch_id = dispatches["tasks"][0]["id"].as_str().context("dispatch id")?.to_owned();

    cp.cli_ok(&["user", "add", "vera", "--role", "viewer"])?;
    let viewer = cp.cli_ok(&["user", "token", "vera", "--ttl", "1h"])?.trim().to_owned();
    let routes = [
        "/v1/approvals".to_owned(),
        format!("/v1/approvals/{approval_id}"),
        "/v1/tasks".to_owned(),
        format!("/v1/tasks/{dispatch_id}"),
        "/v1/dlq".to_owned(),
        "/console/approvals".to_owned(),
        format!("/console/tasks/{task_id}"),
    ];
    let mut admin_saw = 0;
    for route in &routes {
        let seen = http.get(format!("{url}{route}")).bearer_auth(&viewer).send().await?;
        assert_eq!(seen.status().as_u16(), 200, "viewer, {route}");
        let text = seen.text().await?;
        for secret in secrets {
            assert!(!text.contains(secret), "a viewer saw `{secret}` at {route}:\n{text}");
        }
        let full = http.get(format!("{url}{route}")).bearer_auth(&admin).send().await?.text().await?;
        admin_saw += usize::from(secrets.iter().all(|secret| full.contains(secret)));
    }
    assert!(admin_saw >= 4, "the admin sees the contents the viewer does not ({admin_saw} routes)");
    let approvals = http.get(format!("{url}/v1/approvals")).bearer_auth(&viewer).send().await?.json::<Value>().await?;
    assert_eq!(approvals[0]["request"]["action"], "refund", "a viewer still sees what waits: {approvals}");
    Ok(())
}

/// Finding 13. A victim edge's refund waits for approval. An attacker who
/// controls another enrolled edge writes an `approval.requested` with the
/// same approval id (other arguments) into its own, validly chained audit
/// log, with a task under the victim's task id, and it reaches the control
/// plane. Neither id resolves by itself any more: showing or deciding the
/// approval, or opening the task's console page, without naming the edge
/// is refused (409, naming both edges), the queue lists both requests each under its edge,
/// and the decision scoped to the victim's edge reaches the victim, whose
/// refund then runs once; the attacker's edge gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_forging_another_edges_approval_id() -> anyhow::Result<()> {
    let refunds = RefundsFleet::start().await?;
    let (cp, victim, payments) = (&refunds.cp, &refunds.edge, &refunds.payments);
    let mut attacker = refunds.second_edge("attacker")?;
    attacker.start()?;

    let task = submit_refund(victim, "f-1").await?;
    wait_for("the victim's approval request", LONG, || async {
        Ok(cp.get("/v1/approvals?state=pending").await?.as_array().is_some_and(|a| !a.is_empty()))
    })
    .await?;
    let queued = cp.get("/v1/approvals?state=pending").await?;
    let id = queued[0]["id"].as_str().context("approval id")?.to_owned();

    // The attacker forges a request with the victim's id into its own chain.
    attacker.kill9();
    {
        let store = aios_edge_agent::store::EdgeStore::open(&attacker.dir)?;
        let identity = store.identity().await?.context("the attacker's identity")?;
        let forged = json!({ "approval": id, "edge": attacker.edge_id, "task": task, "connector": "shop",
                             "action": "refund", "args": { "amount": 9000, "account": "acct-evil" },
                             "args_hash": "00", "expires_ms": i64::MAX });
        let conn = rusqlite::Connection::open(attacker.dir.join("edge.db"))?;
        let now = aios_daemon::clock::unix_ms();
        aios_edge_agent::store::append_event(&conn, &identity, now, "approval.requested", &forged.to_string())?;
        // And a task of its own under the victim's task id.
        let queued = json!({ "task": task, "agent": "refunds", "source": "api" });
        aios_edge_agent::store::append_event(&conn, &identity, now, "task.queued", &queued.to_string())?;
    }
    attacker.start()?;
    wait_synced(cp, &attacker, LONG).await?;

    let (url, admin) = (
        std::fs::read_to_string(cp.dir.join("admin.url"))?.trim().to_owned(),
        std::fs::read_to_string(cp.dir.join("admin-token"))?.trim().to_owned(),
    );
    let http = reqwest::Client::new();
    let shown = http.get(format!("{url}/v1/approvals/{id}")).bearer_auth(&admin).send().await?;
    assert_eq!(shown.status().as_u16(), 409);
    let said = shown.text().await?;
    assert!(said.contains(&victim.edge_id) && said.contains(&attacker.edge_id), "{said}");
    let unscoped = http.post(format!("{url}/v1/approvals/{id}/approve")).bearer_auth(&admin).send().await?;
    assert_eq!(unscoped.status().as_u16(), 409, "an ambiguous id is not decided");
    let listed = cp.get("/v1/approvals").await?;
    let edges: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["id"] == id.as_str())
        .filter_map(|a| a["edge_id"].as_str())
        .collect();
    assert_eq!(edges.len(), 2, "{listed:#}");

    cp.cli_ok(&["approvals", "approve", &id, "--edge", &victim.edge_id, "--by", "alice"])?;
    let done = victim.finished_task(&task, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let refunds: Vec<Value> = payments.effects().into_iter().filter(|e| e.path == "refunds").map(|e| e.body).collect();
    assert_eq!(refunds, [json!({ "order": "f-1", "amount": 120, "account": "acct-1" })]);
    // The console's task page does not pick one of the two tasks for the
    // operator: it names both, and each opens under its edge.
    let (status, html) = cp.page(&format!("/console/tasks/{task}")).await?;
    assert_eq!(status, 409, "{html}");
    assert!(html.contains(&victim.edge_id) && html.contains(&attacker.edge_id), "{html}");
    let (status, html) = cp.page(&format!("/console/tasks/{task}?edge={}", victim.edge_id)).await?;
    assert!(status == 200 && html.contains("refund-request"), "the victim's own task: {status}: {html}");
    let victim_view = cp.get(&format!("/v1/approvals/{id}?edge={}", victim.edge_id)).await?;
    assert_eq!(victim_view["request"]["args"]["account"], "acct-1", "{victim_view:#}");
    let attacker_view = cp.get(&format!("/v1/approvals/{id}?edge={}", attacker.edge_id)).await?;
    assert!(attacker_view["decision"].is_null(), "the decision went to the victim only: {attacker_view:#}");
    Ok(())
}

/// Finding 22. The kill switch at `all` stops what `effects` leaves
/// running: a streamed completion the edge's gateway is generating on the
/// local model ends with the kill switch's error event, well before its
/// token limit; every new gateway request gets 503; the edge reports
/// autonomy `halted`. Publishing autonomy on again brings the gateway back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_at_all_stops_a_running_gateway_stream() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.run_args = vec!["--gateway".into()];
    edge.start()?;
    let bundle = "autonomy = \"autonomous\"\nvalid_for = \"1d\"\n";
    let applied = |version: u64| {
        let edge = &edge;
        async move {
            wait_for("the edge to apply the bundle", LONG, || async {
                let (_, health) = edge.api(Method::GET, "/v1/health", None).await?;
                Ok(health["bundle_version"].as_u64() == Some(version))
            })
            .await
        }
    };
    applied(cp.publish(bundle)?).await?;

    let url = format!("http://{}/v1/chat/completions", edge.api_addr());
    let http = reqwest::Client::new();
    let long = json!({ "model": "smollm2-135m-instruct", "stream": true, "max_tokens": 3000,
        "messages": [{ "role": "user", "content": "Write a very long story about a lighthouse keeper, chapter by chapter." }] });
    let mut stream = http.post(&url).json(&long).send().await?;
    assert_eq!(stream.status().as_u16(), 200);
    let mut before = String::new();
    while before.matches("data: ").count() < 8 {
        let chunk = stream.chunk().await?.context("the stream ended before the kill switch")?;
        before.push_str(&String::from_utf8_lossy(&chunk));
    }
    cp.cli_ok(&["policy", "kill-switch", "--level", "all"])?;
    let rest = tokio::time::timeout(LONG, async {
        let mut rest = String::new();
        while let Some(chunk) = stream.chunk().await? {
            rest.push_str(&String::from_utf8_lossy(&chunk));
        }
        Ok::<_, anyhow::Error>(rest)
    })
    .await??;
    assert!(rest.contains("kill switch is at `all`"), "the stream did not end with the kill switch: {rest}");
    assert!(!rest.contains("[DONE]"), "a stopped stream does not claim to be done");
    let chunks = before.matches("data: ").count() + rest.matches("data: ").count();
    assert!(chunks < 3000, "stopped early, after {chunks} events");

    let short = json!({ "model": "smollm2-135m-instruct", "max_tokens": 4,
                        "messages": [{ "role": "user", "content": "Hello" }] });
    let refused = http.post(&url).json(&short).send().await?;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.text().await?.contains("kill_switch"));
    let (_, health) = edge.api(Method::GET, "/v1/health", None).await?;
    assert_eq!(health["autonomy"], "halted", "{health}");

    applied(cp.publish(bundle)?).await?;
    wait_for("the gateway to serve again", LONG, || async {
        Ok(http.post(&url).json(&short).send().await?.status().as_u16() == 200)
    })
    .await?;
    Ok(())
}

/// Finding 12. Labels decide where tasks go and what the policy allows, so
/// an edge may not choose them: one that enrols with a token bound to
/// `site=test` while claiming `role=admin` is refused, and nothing is
/// recorded; one that claims none gets the token's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_claiming_labels_its_token_does_not_bind() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let enroll = |dir: &str, token: &str, labels: &[&str]| {
        let mut command = std::process::Command::new(&bins.edge);
        command.arg("--data-dir").arg(tmp.path().join(dir)).args([
            "enroll",
            "--control-plane",
            &cp.sync_addr(),
            "--token",
            token,
            "--name",
            dir,
        ]);
        for label in labels {
            command.args(["--label", label]);
        }
        command.output()
    };
    let claimed = enroll("claims", &cp.token("10m")?, &["site=test", "role=admin"])?;
    assert!(!claimed.status.success(), "an edge chose its own labels");
    let said = String::from_utf8_lossy(&claimed.stderr);
    assert!(said.contains("labels come from the enrolment token") && said.contains("role=admin"), "{said}");
    assert_eq!(cp.get("/v1/edges").await?.as_array().map(Vec::len), Some(0), "nothing was recorded");

    let plain = enroll("plain", &cp.token("10m")?, &[])?;
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    let edges = cp.get("/v1/edges").await?;
    assert_eq!(edges[0]["labels"], json!({ "site": "test" }), "{edges}");
    let status = std::process::Command::new(&bins.edge)
        .arg("--data-dir")
        .arg(tmp.path().join("plain"))
        .arg("status")
        .output()?;
    let status: Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["labels"], json!(["site=test"]), "{status}");
    Ok(())
}

/// Finding 7. Someone with write access to the control plane's database
/// edits an event of an edge's stored chain, turns the signed checkpoint
/// after it into an ordinary event and recomputes every hash and the
/// stored head: each link checks out, yet `audit verify` reports the chain
/// broken, because more than `CHECKPOINT_EVERY` events now follow the last
/// signed checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_checkpoint_is_detected() -> anyhow::Result<()> {
    use aios_shared::audit::{kinds, AuditEvent, ChainHead};

    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let mut cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.emit(2500)?;
    edge.start()?;
    wait_synced(&cp, &edge, LONG).await?;
    let intact = cp.cli(&["audit", "verify", "--edge", &edge.edge_id])?;
    assert!(intact.status.success(), "{}", String::from_utf8_lossy(&intact.stdout));
    edge.kill9();
    cp.kill9();

    let conn = rusqlite::Connection::open(cp.dir.join("control-plane.db"))?;
    let rows: Vec<(i64, i64, String, String)> = conn
        .prepare("SELECT seq, ts_ms, kind, payload FROM audit_events WHERE edge_id = ?1 ORDER BY seq")?
        .query_map([&edge.edge_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let checkpoints: Vec<i64> = rows.iter().filter(|r| r.2 == kinds::CHECKPOINT).map(|r| r.0).collect();
    assert!(checkpoints.len() >= 2, "{checkpoints:?}");
    let renamed = checkpoints[1];
    let prev: Vec<u8> = conn.query_row(
        "SELECT hash FROM audit_events WHERE edge_id = ?1 AND seq = ?2",
        rusqlite::params![edge.edge_id, renamed - 2],
        |r| r.get(0),
    )?;
    let mut head = ChainHead { seq: (renamed - 2) as u64, hash: prev.try_into().map_err(|_| anyhow::anyhow!("hash"))? };
    for (seq, ts_ms, kind, payload) in rows.iter().filter(|r| r.0 >= renamed - 1) {
        let (kind, payload) = match *seq {
            s if s == renamed - 1 => (kinds::DEBUG.to_owned(), "{\"n\":\"edited\"}".to_owned()),
            s if s == renamed => (kinds::DEBUG.to_owned(), "{\"n\":\"was a checkpoint\"}".to_owned()),
            _ => (kind.clone(), payload.clone()),
        };
        let event = AuditEvent::next(&edge.edge_id, head, *ts_ms, &kind, payload);
        conn.execute(
            "UPDATE audit_events SET kind = ?3, payload = ?4, prev_hash = ?5, hash = ?6 WHERE edge_id = ?1 AND seq = ?2",
            rusqlite::params![edge.edge_id, seq, event.kind, event.payload, event.prev_hash.to_vec(), event.hash.to_vec()],
        )?;
        head = event.head();
    }
    conn.execute(
        "UPDATE edges SET audit_head = ?2 WHERE id = ?1",
        rusqlite::params![edge.edge_id, head.hash.to_vec()],
    )?;
    drop(conn);

    cp.restart().await?;
    let verify = cp.cli(&["audit", "verify", "--edge", &edge.edge_id])?;
    let report = String::from_utf8_lossy(&verify.stdout);
    assert!(!verify.status.success(), "a rewritten chain must fail verification:\n{report}");
    assert!(report.contains("BROKEN") && report.contains("after the last signed checkpoint"), "{report}");
    assert!(!report.contains("altered") && !report.contains("does not link"), "every hash checks out: {report}");
    Ok(())
}

/// Findings 20 and 15 (host allow-list). Someone who can publish bundles
/// tries to make an edge read its machine's files and environment, write
/// outside its directories, reach an internal address and run a program. The edge runs with its defaults (secrets only in
/// `DATA_DIR/secrets`, files only to `DATA_DIR/files`, no environment
/// variables, programs or hosts): each bundle is refused with the reference and
/// what is allowed, the bundle in force stays, and nothing was read, written
/// or run. The same reference inside the allowed place is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_cannot_reach_files_environment_or_programs_the_edge_does_not_allow() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.access_args.clear();
    edge.start()?;
    let head = "autonomy = \"autonomous\"\nvalid_for = \"1d\"\n";
    let first = cp.publish(head)?;
    wait_for("the first bundle", LONG, || async { Ok(version(&edge).await? == Some(first)) }).await?;

    let marker = tmp.path().join("ran");
    let outside = tmp.path().join("outside");
    let hook = |secret: &str| format!("{head}[webhooks.w]\nagent = \"a\"\nsecret = \"{secret}\"\n{AGENT}");
    let attacks = [
        ("a file of the machine", hook("file:/etc/hostname"), "/etc/hostname"),
        ("a file reached with ..", hook(&format!("file:{}/secrets/../api-token", edge.dir.display())), "api-token"),
        ("the environment", hook("env:HOME"), "env:HOME"),
        (
            "a directory outside",
            format!(
                "{head}[connectors.f]\nkind = \"file\"\nversion = 1\ndirectory = \"{}\"\n[connectors.f.actions.write]\nschema = {{ type = \"object\", properties = {{ name = {{ type = \"string\" }}, content = {{ type = \"string\" }} }} }}\n{AGENT}",
                outside.display()
            ),
            "directory",
        ),
        (
            "an internal address",
            format!(
                "{head}[connectors.h]\nkind = \"http\"\nversion = 1\nbase_url = \"http://169.254.169.254/latest\"\n[connectors.h.actions.get]\nmethod = \"GET\"\npath = \"/meta-data\"\n{AGENT}"
            ),
            "169.254.169.254",
        ),
        (
            "a program",
            format!(
                "{head}[connectors.m]\nkind = \"mcp\"\nversion = 1\ncommand = [\"touch\", \"{}\"]\n[connectors.m.actions.x]\nschema = {{ type = \"object\" }}\nschema_sha256 = \"{}\"\n{AGENT}",
                marker.display(),
                "0".repeat(64)
            ),
            "touch",
        ),
    ];
    for (what, bundle, named) in attacks {
        let refused = cp.publish(&bundle)?;
        wait_for(&format!("{what} refused"), LONG, || async {
            Ok(edge.audit_payloads("bundle.refused")?.iter().any(|e| e["version"] == refused))
        })
        .await?;
        let reason = edge.audit_payloads("bundle.refused")?.into_iter().find(|e| e["version"] == refused);
        let reason = reason.map(|e| e["reason"].as_str().unwrap_or_default().to_owned()).unwrap_or_default();
        assert!(reason.contains(named) && reason.contains("does not allow"), "{what}: {reason}");
        assert_eq!(version(&edge).await?, Some(first), "{what}: the bundle in force stays");
    }
    assert!(!marker.exists() && !outside.exists(), "nothing was run or written");

    let secrets = edge.dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    std::fs::write(secrets.join("hook"), "whsec_allowed")?;
    let allowed = cp.publish(&hook(&format!("file:{}", secrets.join("hook").display())))?;
    wait_for("the allowed secret applied", LONG, || async { Ok(version(&edge).await? == Some(allowed)) }).await?;
    Ok(())
}

/// Finding 9 (the bundle key). The control plane rotates its
/// bundle-signing key while one edge is online, with a refund waiting for
/// approval, and another is off. The online edge takes the announcing
/// bundle, the approval (a command signed with the new key) and the next
/// bundle; the edge that was off catches up on its next connection from
/// the key it pinned at enrolment; an edge enrolled afterwards pins the new
/// key. The retired key's file is gone, and a copy of it taken before the
/// rotation signs a newer bundle: every edge refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_key_rotates_and_the_retired_key_is_refused() -> anyhow::Result<()> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;

    let refunds = RefundsFleet::start().await?;
    let (cp, online, payments) = (&refunds.cp, &refunds.edge, &refunds.payments);
    let mut offline = refunds.second_edge("offline")?;
    offline.start()?;
    wait_for("the second edge on version 1", LONG, || async { Ok(version(&offline).await? == Some(1)) }).await?;
    offline.kill9();
    let retired = std::fs::read_to_string(cp.dir.join("pki").join("bundle.key"))?;
    // A refund that waits for a decision across the rotation.
    let task = submit_refund(online, "r-1").await?;
    let approval = cp.pending_approval(&task).await?["id"].as_str().context("approval id")?.to_owned();

    let said = cp.cli_ok(&["pki", "rotate-bundle-key"])?;
    assert!(said.contains("announced in bundle version 2"), "{said}");
    assert!(!cp.dir.join("pki").join("bundle.key").exists(), "the retired key is deleted");
    wait_for("the announcement applied", LONG, || async { Ok(version(online).await? == Some(2)) }).await?;
    // The decision is a command signed with the new key.
    cp.cli_ok(&["approvals", "approve", &approval, "--by", "alice"])?;
    let done = online.finished_task(&task, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(payments.effects().iter().filter(|e| e.path == "refunds").count(), 1);
    let third = cp.publish(&refunds.bundle)?;
    wait_for("a bundle of the new key applied", LONG, || async { Ok(version(online).await? == Some(third)) }).await?;
    offline.start()?;
    wait_for("the edge that was off caught up", LONG, || async { Ok(version(&offline).await? == Some(third)) }).await?;
    let mut late = refunds.second_edge("late")?;
    late.start()?;
    wait_for("an edge enrolled after the rotation", LONG, || async { Ok(version(&late).await? == Some(third)) })
        .await?;

    let old = ed25519_dalek::SigningKey::from_pkcs8_pem(&retired)?;
    let spec = aios_shared::bundle::BundleSpec::from_toml("autonomy = \"autonomous\"\nvalid_for = \"1d\"\n")?;
    let forged = spec.into_body(third + 10, aios_daemon::clock::unix_ms())?.sign(&old);
    let file = refunds.tmp.path().join("forged.json");
    std::fs::write(&file, serde_json::to_string(&forged)?)?;
    for edge in [online, &offline, &late] {
        let offered = edge.edge_cli(&["debug", "offer-bundle", file.to_str().context("utf-8 path")?])?;
        let stderr = String::from_utf8_lossy(&offered.stderr);
        assert!(
            !offered.status.success() && (stderr.contains("rotated out") || stderr.contains("signature")),
            "{stderr}"
        );
        assert_eq!(version(edge).await?, Some(third), "the bundle in force stays");
    }
    Ok(())
}

/// A control plane and an edge with `tests/data/refunds.toml` applied,
/// against the test payment service.
struct RefundsFleet {
    payments: aios_tests::payments::PaymentService,
    _receipts: tempfile::TempDir,
    tmp: tempfile::TempDir,
    cp: ControlPlaneProc,
    edge: EdgeProc,
    bins: aios_tests::Bins,
    /// The bundle's text, as published.
    bundle: String,
}

impl RefundsFleet {
    async fn start() -> anyhow::Result<RefundsFleet> {
        use aios_tests::payments::{PaymentFaults, PaymentService};
        let payments = PaymentService::start(PaymentFaults::default()).await?;
        let receipts = tempfile::tempdir()?;
        let bundle = include_str!("../../data/refunds.toml")
            .replace("PAYMENTS_URL", &payments.url())
            .replace("RECEIPTS_DIR", receipts.path().to_str().context("utf-8 path")?);
        let bins = bins!();
        let (tmp, cp, edge) = fleet_with(&bins, &bundle).await?;
        Ok(RefundsFleet { payments, _receipts: receipts, tmp, cp, edge, bins, bundle })
    }

    /// Another edge enrolled with this control plane (not started).
    fn second_edge(&self, name: &str) -> anyhow::Result<EdgeProc> {
        EdgeProc::enroll(&self.bins, &self.tmp.path().join(name), &self.cp.sync_addr(), &self.cp.token("10m")?)
    }
}

/// Submits a refund of 120 on `order` (over the approval threshold); its task id.
async fn submit_refund(edge: &EdgeProc, order: &str) -> anyhow::Result<String> {
    let refund = json!({
        "agent": "refunds", "kind": "refund-request",
        "input": { "order": { "id": order, "accounts": ["acct-1"] }, "refund": { "amount": 120, "account": "acct-1" },
                   "reason": "double charge" },
    });
    Ok(edge.submit(refund).await?["id"].as_str().context("task id")?.to_owned())
}

/// The bundle version the edge has in force.
async fn version(edge: &EdgeProc) -> anyhow::Result<Option<u64>> {
    Ok(edge.api(Method::GET, "/v1/health", None).await?.1["bundle_version"].as_u64())
}

/// An agent for the bundles above.
const AGENT: &str = "[agents.a]\nversion = 1\nmemory = { write = [\"n\"] }\n[[agents.a.steps]]\nid = \"s\"\nkind = \"record_put\"\nnamespace = \"n\"\nkey = \"k\"\nvalue = \"{}\"\n";
