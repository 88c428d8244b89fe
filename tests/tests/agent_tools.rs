//! Whole-system tests of an agent loop's tool sources and model APIs
//! beyond the basics: the plan on Anthropic's Messages API and streamed
//! tiers, the memory tools, a handoff to another agent, and an MCP server's
//! tools as a governed connector. The desk, its bundle and the script are
//! in `support/desk.rs`.

use std::sync::Arc;
use std::time::Duration;

use aios_tests::payments::{PaymentFaults, PaymentService};
use aios_tests::planner::{self, Planner};
use aios_tests::{bins, fleet_with, fleet_with_args};
use anyhow::Context;
use serde_json::{json, Value};

#[path = "support/desk.rs"]
mod desk;
use desk::*;

/// Tiers `claude` (Anthropic's Messages API, whole replies),
/// `claude-stream` (the same, streamed) and `big-stream` (OpenAI's chat
/// completions, streamed), each with a copy of the desk agent escalating to it.
fn with_more_tiers(bundle: &str, model_url: &str, key_file: &std::path::Path) -> String {
    let mut text = bundle.to_owned();
    let key = format!("file:{}", key_file.display());
    for (tier, kind, stream) in
        [("claude", "anthropic", false), ("claude-stream", "anthropic", true), ("big-stream", "openai", true)]
    {
        text.push_str(&format!(
            "\n[tiers.{tier}]\nkind = \"{kind}\"\nmodel = \"scripted-{tier}\"\nbase_url = \"{model_url}\"\n\
             credential = \"{key}\"\nstream = {stream}\nprice_in_per_1k = 3.0\nprice_out_per_1k = 15.0\ntimeout = \"10s\"\n"
        ));
    }
    let desk = &BUNDLE[BUNDLE.find("[agents.desk]").expect("the desk agent")..];
    for tier in ["claude", "claude-stream", "big-stream"] {
        text.push('\n');
        text.push_str(
            &desk
                .replace("agents.desk", &format!("agents.desk-{tier}"))
                .replace("escalate_to = [\"big\"]", &format!("escalate_to = [\"{tier}\"]")),
        );
    }
    text
}

/// The five-call plan on Anthropic's Messages API, whole and streamed, and
/// on a streamed OpenAI tier: the same effects, turns charged from the
/// usage each protocol reports, and requests that pass the API's own checks
/// of a conversation (the planner answers 400 to one that does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_runs_on_anthropic_and_streamed_tiers() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let keys = tempfile::tempdir()?;
    let key_file = keys.path().join("model-key");
    std::fs::write(&key_file, "sk-ant-test-0123\n")?;
    let text = with_more_tiers(&bundle(&payments, receipts.path(), &planner), &planner.url(), &key_file);
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &text).await?;
    for tier in ["claude", "claude-stream", "big-stream"] {
        let order = format!("t-{tier}");
        let id = submit(&edge, case_for(&format!("desk-{tier}"), "plan", &order)).await?;
        let done = edge.finished_task(&id, LONG).await?;
        assert_eq!(done["state"], "succeeded", "{tier}: {done:#}");
        let step = &done["steps"][0];
        assert_eq!(step["output"]["answer"], "Refunded 30 to acct-1 and sent the receipt.", "{tier}: {step:#}");
        assert_eq!((step["output"]["turns"].as_u64(), step["output"]["calls"].as_u64()), (Some(4), Some(5)));
        assert_eq!(step["tier"], tier);
        assert!(step["cost_usd"].as_f64().is_some_and(|c| c > 0.0), "{tier}: turns are charged: {step:#}");
        assert_eq!(
            effects(&payments, "refunds", &order),
            [json!({ "order": order, "amount": 30, "account": "acct-1" })],
            "{tier}"
        );
        assert_eq!(effects(&payments, "notes", &order).len(), 2, "{tier}");
        let requests = requests_for(&planner, &order);
        assert_eq!(requests.len(), 4, "{tier}: one request per turn");
        let header = |r: &planner::Received, name: &str| {
            r.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let second = &requests[1];
        assert_eq!(second.body["stream"] == json!(true), tier.ends_with("stream"), "{tier}");
        if tier.starts_with("claude") {
            assert_eq!(header(second, "x-api-key"), "sk-ant-test-0123");
            assert!(second.body["system"].is_string(), "{tier}: the system prompt is top-level");
            let results: Vec<&str> = second.body["messages"][2]["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["type"] == "tool_result")
                .filter_map(|b| b["tool_use_id"].as_str())
                .collect();
            assert_eq!(results, ["call_0_0", "call_0_1"], "{tier}: {:#}", second.body);
            assert_eq!(second.body["tools"][0]["input_schema"]["type"], "object");
        } else {
            assert_eq!(header(second, "authorization"), "Bearer sk-ant-test-0123");
            assert_eq!(second.body["stream_options"]["include_usage"], true);
        }
    }
    Ok(())
}

/// The memory tools: a search of the policy passages, an order record read
/// and written with compare-and-set, and a note remembered with the task as
/// its provenance, each under the agent's memory access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tools_search_remember_and_keep_records() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path(), &planner)).await?;
    let imported = edge.edge_cli(&["memory", "import", POLICIES])?;
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));

    let id = submit(&edge, case_for("clerk", "memory", "m-1")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "Order m-1 closed; the last write was done.", "{done:#}");
    let transcript = done["loops"]["0"].as_array().context("the loop's transcript")?.clone();
    let calls: Vec<&Value> = transcript.iter().filter(|e| e["entry"] == "call").collect();
    let names: Vec<&str> = calls.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "retrieve_policies",
            "record_get_orders",
            "record_put_orders",
            "remember_notes",
            "record_put_orders",
            "record_put_orders"
        ]
    );
    // The search found refund passages; the record did not exist yet.
    let items = calls[0]["outcome"]["result"]["items"].as_array().context("items")?;
    assert!(!items.is_empty() && items.len() <= 2, "{:#}", calls[0]);
    assert!(items.iter().all(|i| i["id"].as_str().unwrap_or_default().starts_with("policy-")), "{items:#?}");
    assert_eq!(calls[1]["outcome"]["result"], json!({ "key": "m-1", "found": false, "value": null, "version": 0 }));
    assert_eq!(calls[2]["outcome"]["result"]["version"], 1, "{:#}", calls[2]);
    // The stale write failed saying why, and the model was told.
    assert_eq!(calls[4]["outcome"]["outcome"], "failed", "{:#}", calls[4]);
    let problem = calls[4]["outcome"]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("is at version 1, not the expected 0"), "{problem}");
    assert_eq!(calls[5]["outcome"]["result"]["version"], 2, "{:#}", calls[5]);
    let conn = rusqlite::Connection::open(edge.dir.join("edge.db"))?;
    let (value, version, writer): (String, i64, String) = conn.query_row(
        "SELECT value, version, updated_by FROM memory_records WHERE namespace = 'orders' AND key = 'm-1'",
        [],
        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
    )?;
    assert_eq!((serde_json::from_str::<Value>(&value)?, version), (json!({ "status": "closed" }), 2));
    assert_eq!(writer, format!("task:{id}:handle#3.0"));
    // The note is an item with the task as its provenance, classified as
    // high as the most sensitive data the loop had seen (the record: internal).
    let note = calls[3]["outcome"]["result"]["remembered"].as_str().context("the note's id")?;
    let shown = edge.edge_cli(&["memory", "show", note])?;
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let item: Value = serde_json::from_slice(&shown.stdout)?;
    assert_eq!(item["namespace"], "notes");
    assert_eq!(item["classification"], "internal");
    assert_eq!(item["subjects"], json!(["cust-7"]));
    assert_eq!(item["provenance"]["added_by"], "agent:clerk");
    assert_eq!(item["provenance"]["task_id"], id.as_str());
    assert_eq!(item["provenance"]["reason"], "for the follow-up");
    assert!(item["text"].as_str().unwrap_or_default().starts_with("Order m-1 was refunded under policy-"), "{item:#}");
    assert_eq!(audited(&edge, "memory.retrieved", &id)?.len(), 1, "the search is audited");
    Ok(())
}

/// A handoff: the lead's model hands the refund to the desk agent, which
/// runs it as a sub-task with what is left of the lead's budget; the lead
/// parks until it ends and reports its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_runs_another_agent_as_a_sub_task() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path(), &planner)).await?;
    let id = submit(&edge, case_for("lead", "delegate", "h-1")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "Delegated: the desk refunded 30.", "{done:#}");
    let call = &done["loops"]["0"][1];
    assert_eq!((call["name"].as_str(), call["outcome"]["outcome"].as_str()), (Some("handoff_desk"), Some("done")));
    let child_id = call["outcome"]["result"]["task"].as_str().context("the sub-task's id")?;
    let child = task(&edge, child_id).await?;
    assert_eq!((child["agent"].as_str(), child["state"].as_str()), (Some("desk"), Some("succeeded")), "{child:#}");
    assert_eq!(child["parent"], id.as_str());
    assert_eq!(child["source"], format!("handoff:{id}"));
    let handed = child["budget_usd"].as_f64().context("the sub-task's budget")?;
    let spent_before = done["loops"]["0"][0]["cost_usd"].as_f64().unwrap_or_default();
    assert!(spent_before > 0.0 && (handed - (5.0 - spent_before)).abs() < 1e-9, "{handed} after {spent_before}");
    assert!(child["deadline_ms"].as_i64() <= done["deadline_ms"].as_i64(), "no later than its caller");
    assert_eq!(effects(&payments, "refunds", "h-1"), [json!({ "order": "h-1", "amount": 30, "account": "acct-1" })]);
    // Two turns of the lead, four of the desk: the parked lead asked nothing again.
    assert_eq!(requests_for(&planner, "h-1").len(), 6);
    Ok(())
}

/// The MCP connectors: `notes` (stdio), `notes2` (the same pins, a
/// server whose `add_note` changed since) and `webnotes` (streamable HTTP),
/// with their Cedar declarations and policies (`mcp.<server>.<tool>`):
/// lookups and notes are allowed, a note with a secret is not. Agents
/// `scribe`, `scribe2` and `scribe3` use one each.
fn with_mcp(bundle: &str, pinned: &str, changed_command: &str, web_pinned: &str) -> String {
    let mut declarations = String::new();
    let mut policies = String::new();
    for connector in ["notes", "notes2", "webnotes"] {
        declarations.push_str(&format!(
            "action \"mcp.{connector}.add_note\" appliesTo {{ principal: Agent, resource: Connector, context: {{ \
             autonomy: String, approved: Bool, args: {{ order_id: String, text: String }} }} }};\n\
             action \"mcp.{connector}.order_status\" appliesTo {{ principal: Agent, resource: Connector, context: {{ \
             autonomy: String, approved: Bool, args: {{ order_id: String }} }} }};\n"
        ));
        policies.push_str(&format!(
            "\npermit (principal, action in [Action::\"mcp.{connector}.add_note\", \
             Action::\"mcp.{connector}.order_status\"], resource);\n@id(\"no-secrets-in-{connector}\")\n\
             forbid (principal, action == Action::\"mcp.{connector}.add_note\", resource) \
             when {{ context.args.text like \"*secret*\" }};"
        ));
    }
    let mut text = bundle.replace("'''\npolicies = '''", &format!("{declarations}'''\npolicies = '''{policies}"));
    text.push('\n');
    text.push_str(pinned);
    // The same pins for a server whose `add_note` has changed since.
    let command_line = pinned.lines().find(|line| line.starts_with("command = ")).expect("the pinned command");
    let changed = pinned.replace("connectors.notes", "connectors.notes2").replace(command_line, changed_command);
    text.push_str(&format!("\n{changed}\n{web_pinned}\n"));
    for (agent, connector) in [("scribe", "notes"), ("scribe2", "notes2"), ("scribe3", "webnotes")] {
        text.push_str(&format!(
            "\n[agents.{agent}]\nversion = 1\nescalate_to = [\"big\"]\n\n[[agents.{agent}.steps]]\nid = \"note\"\n\
             kind = \"agent\"\nplanning = \"escalate\"\n\
             goal = \"Case {{{{ input.case }}}} for order {{{{ input.order.id }}}}: {{{{ input.text }}}}\"\n\
             tools = [{{ kind = \"connector\", connector = \"{connector}\", action = \"order_status\", name = \"notes_order_status\" }}, \
             {{ kind = \"connector\", connector = \"{connector}\", action = \"add_note\", name = \"notes_add_note\" }}]\n"
        ));
    }
    text
}

/// MCP servers written with the official `mcp` Python package, one over
/// stdio and one over streamable HTTP with a bearer token, as connectors:
/// their tools are pinned with `aios-edge mcp tools`, every call passes the
/// policy first as `mcp.<server>.<tool>` (a denied one never reaches the
/// server), results come back to the model as data, and a server that
/// changed a tool since it was pinned is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_server_tools_are_governed_like_connector_actions() -> anyhow::Result<()> {
    let (_python, python_path) = aios_tests::python::python_with("mcp", "mcp");
    let logs = tempfile::tempdir()?;
    let log = logs.path().join("calls.jsonl");
    let server = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mcp_notes.py");
    let command = ["env", &format!("PYTHONPATH={python_path}"), "python3", server, log.to_str().context("utf-8")?];
    let pinned = std::process::Command::new(&bins!().edge)
        .args(["mcp", "tools", "--name", "notes", "--"])
        .args(command)
        .output()?;
    assert!(pinned.status.success(), "{}", String::from_utf8_lossy(&pinned.stderr));
    let pinned = String::from_utf8(pinned.stdout)?;
    assert!(pinned.contains("[connectors.notes.actions.add_note]") && pinned.contains("schema_sha256 = "), "{pinned}");
    let changed: Vec<String> =
        command.iter().map(|part| format!("{part:?}")).chain(["\"--changed\"".to_owned()]).collect();
    let changed = format!("command = [{}]", changed.join(", "));

    assert!(pinned.contains("# Cedar actions: mcp.notes.add_note, mcp.notes.order_status"), "{pinned}");

    // The same server over streamable HTTP, refusing requests without its token.
    let web_log = logs.path().join("web-calls.jsonl");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut web = tokio::process::Command::new("python3")
        .args([server, web_log.to_str().context("utf-8")?, "--http", &port.to_string(), "web-token-7"])
        .env("PYTHONPATH", &python_path)
        .kill_on_drop(true)
        .spawn()?;
    aios_tests::wait_for("the MCP server over HTTP", LONG, || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok())
    })
    .await?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let token_file = logs.path().join("web-token");
    std::fs::write(&token_file, "web-token-7\n")?;
    let credential = format!("file:{}", token_file.display());
    let refused = std::process::Command::new(&bins!().edge).args(["mcp", "tools", "--url", &url]).output()?;
    assert!(!refused.status.success(), "listing without the token must fail");
    let web_pinned = std::process::Command::new(&bins!().edge)
        .args(["mcp", "tools", "--name", "webnotes", "--url", &url, "--credential", &credential])
        .output()?;
    assert!(web_pinned.status.success(), "{}", String::from_utf8_lossy(&web_pinned.stderr));
    let web_pinned = String::from_utf8(web_pinned.stdout)?;
    assert!(web_pinned.contains(&format!("base_url = \"{url}\"")), "{web_pinned}");

    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let text = with_mcp(&bundle(&payments, receipts.path(), &planner), &pinned, &changed, &web_pinned);
    // The server runs as `env PYTHONPATH=... python3 ...`: the edge must allow `env`.
    let (_tmp, _cp, edge) = fleet_with_args(&bins!(), &text, &["--allow-program", "env"]).await?;

    let id = submit(&edge, case_for("scribe", "mcp", "n-1")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "status done, notes done and refused", "{done:#}");
    let calls: Vec<Value> =
        std::fs::read_to_string(&log)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(
        calls,
        [
            json!({ "tool": "order_status", "order_id": "n-1" }),
            json!({ "tool": "add_note", "order_id": "n-1", "text": "Customer called about the delivery." }),
        ],
        "the denied note never reached the server"
    );
    let transcript = done["loops"]["0"].as_array().context("transcript")?;
    let status = &transcript[1]["outcome"]["result"]["text"];
    assert!(status.as_str().unwrap_or_default().contains("shipped"), "{:#}", transcript[1]);
    let refused = transcript[3]["outcome"]["reason"].as_str().unwrap_or_default();
    assert!(refused.contains("no-secrets-in-notes"), "{:#}", transcript[3]);
    let decided = audited(&edge, "policy.decided", &id)?;
    assert_eq!(decided.len(), 3, "{decided:#?}");

    // A server whose tool changed since it was pinned gets no call through.
    let id = submit(&edge, case_for("scribe2", "mcp", "n-2")).await?;
    let ended = edge.finished_task(&id, LONG).await?;
    assert_eq!(ended["state"], "dead_lettered", "{ended:#}");
    let error = ended["error"].as_str().unwrap_or_default();
    assert!(error.contains("changed tool `add_note`") && error.contains("the bundle pins"), "{error}");
    assert!(!std::fs::read_to_string(&log)?.contains("n-2"), "no call reached the changed server");

    // Over streamable HTTP: the same governance, the same results.
    let id = submit(&edge, case_for("scribe3", "mcp", "n-3")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "status done, notes done and refused", "{done:#}");
    let calls: Vec<Value> =
        std::fs::read_to_string(&web_log)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(
        calls,
        [
            json!({ "tool": "order_status", "order_id": "n-3" }),
            json!({ "tool": "add_note", "order_id": "n-3", "text": "Customer called about the delivery." }),
        ],
        "the denied note never reached the HTTP server"
    );
    let refused = done["loops"]["0"][3]["outcome"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(refused.contains("no-secrets-in-webnotes"), "{refused}");
    web.kill().await?;
    Ok(())
}

const MCP_TOKEN: &str = "edge-api-token-for-mcp-0123456789";

/// An agent offered to MCP clients as the tool `refund`: one refund step,
/// under the desk bundle's refund policy (approval above 50).
const SERVED: &str = r#"
[agents.refund-tool]
version = 1

[[agents.refund-tool.steps]]
id = "refund"
kind = "act"
connector = "shop"
action = "refund"
args = { order_id = "{{ input.order }}", amount = "{{ input.amount }}", account = "{{ input.account }}" }
resource = { type = "Order", id = "{{ input.order }}", attrs = { accounts = '["acct-1"]', order = "{{ input.order }}" } }

[mcp_tools.refund]
agent = "refund-tool"
description = "Refund part of an order to one of its accounts."
input_schema = { type = "object", required = ["order", "amount", "account"], additionalProperties = false, properties = { order = { type = "string" }, amount = { type = "integer", minimum = 1 }, account = { type = "string" } } }
"#;

/// The edge serves its tools over MCP: a client of the official `mcp`
/// Python package lists and calls them on the local API with its token.
/// Each call is a task of the tool's agent under its policies, so a refund
/// above 50 waits for an approval and the call returns only once an
/// operator approved; arguments outside the tool's schema make no task; no
/// token, a wrong one, or a foreign `Host` (DNS rebinding) gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_its_tools_to_mcp_clients() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;

    let (_python, python_path) = aios_tests::python::python_with("mcp", "mcp");
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let text = format!("{}{SERVED}", bundle(&payments, receipts.path(), &planner));
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = aios_tests::ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = aios_tests::EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    let config = tmp.path().join("edge.toml");
    std::fs::write(&config, format!("api_token = \"{MCP_TOKEN}\"\n"))?;
    edge.run_args = vec!["--config".into(), config.to_str().context("utf-8 path")?.into()];
    edge.api_token = Some(MCP_TOKEN.into());
    edge.start()?;
    let version = cp.publish(&text)?;
    aios_tests::wait_for("the edge to apply the bundle", LONG, || async {
        let (_, health) = edge.api(reqwest::Method::GET, "/v1/health", None).await?;
        Ok(health["bundle_version"].as_u64() == Some(version))
    })
    .await?;

    let url = format!("http://{}/mcp", edge.api_addr());
    let initialize = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "probe", "version": "1" } } });
    let http = reqwest::Client::new();
    for (token, host, expected) in
        [(None, None, 401), (Some("wrong-token"), None, 401), (Some(MCP_TOKEN), Some("evil.example:80"), 403)]
    {
        let mut request = http.post(&url).header("accept", "application/json, text/event-stream").json(&initialize);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let status = request.send().await?.status().as_u16();
        assert_eq!(status, expected, "token {token:?}, host {host:?}");
    }

    let calls = json!([
        ["refund", { "order": "m-1", "amount": 30, "account": "acct-1" }],
        ["refund", { "order": "m-2", "amount": "lots", "account": "acct-1" }],
        ["refund", { "order": "m-3", "amount": 80, "account": "acct-1" }],
    ]);
    let client_script = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mcp_client.py");
    let mut client = tokio::process::Command::new("python3")
        .args([client_script, &url, MCP_TOKEN, &calls.to_string()])
        .env("PYTHONPATH", &python_path)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(client.stdout.take().context("stdout")?).lines();
    let mut next = async || -> anyhow::Result<Value> {
        let line = tokio::time::timeout(LONG, lines.next_line()).await?.context("the client ended early")?;
        Ok(serde_json::from_str(&line.context("the client ended early")?)?)
    };
    let listed = next().await?;
    let tools = listed["tools"].as_array().context("tools")?;
    assert_eq!(tools.len(), 1, "{listed:#}");
    assert_eq!(tools[0]["name"], "refund");
    assert_eq!(tools[0]["schema"]["required"], json!(["order", "amount", "account"]));

    let small = next().await?;
    assert_eq!(small["is_error"], false, "{small:#}");
    let task_id = small["structured"]["task"].as_str().context("the call's task")?.to_owned();
    let done = task(&edge, &task_id).await?;
    assert_eq!((done["agent"].as_str(), done["source"].as_str()), (Some("refund-tool"), Some("mcp:refund")));
    assert_eq!(effects(&payments, "refunds", "m-1"), [json!({ "order": "m-1", "amount": 30, "account": "acct-1" })]);

    let invalid = next().await?;
    assert_eq!(invalid["is_error"], true, "{invalid:#}");
    assert!(invalid["text"].as_str().unwrap_or_default().contains("input schema"), "{invalid:#}");

    // Above 50: the task waits for an approval, and so does the call.
    let waiting = aios_tests::wait_for("the large refund to wait", LONG, || async {
        let (_, list) = edge.api(reqwest::Method::GET, "/v1/tasks?agent=refund-tool&state=waiting", None).await?;
        Ok(!list["tasks"].as_array().is_none_or(Vec::is_empty))
    });
    waiting.await?;
    let (_, list) = edge.api(reqwest::Method::GET, "/v1/tasks?agent=refund-tool", None).await?;
    let tasks = list["tasks"].as_array().context("tasks")?;
    assert_eq!(tasks.len(), 2, "the call with invalid arguments made no task: {list:#}");
    let large = tasks.iter().find(|t| t["state"] == "waiting").context("the waiting task")?;
    let large = large["id"].as_str().context("id")?.to_owned();
    let approval = cp.pending_approval(&large).await?;
    assert_eq!(approval["request"]["args"], json!({ "order_id": "m-3", "amount": 80, "account": "acct-1" }));
    assert!(tokio::time::timeout(Duration::from_secs(1), next()).await.is_err(), "the call waits for the approval");
    assert!(effects(&payments, "refunds", "m-3").is_empty());
    let approval_id = approval["id"].as_str().context("approval id")?.to_owned();
    cp.cli_ok(&["approvals", "approve", &approval_id, "--by", "alice"])?;
    let approved = next().await?;
    assert_eq!((approved["is_error"].as_bool(), approved["structured"]["task"].as_str()), (Some(false), Some(&*large)));
    assert_eq!(effects(&payments, "refunds", "m-3").len(), 1);
    assert!(client.wait().await?.success());
    Ok(())
}

/// Plan-and-execute (`strategy = "plan"`): the big tier's one reply is the
/// whole plan; its calls run in order without another planning turn, and
/// the two it leaves to the local model (`{"$local": ...}`) get arguments
/// the real local model writes under the tools' schemas, journaled and
/// governed like the rest. A refused call skips the rest of its plan, and
/// the planner replans from the outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_execute_with_local_arguments_and_replanning() -> anyhow::Result<()> {
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tempfile::tempdir()?;
    let planner = Planner::start(Arc::new(script), Duration::ZERO).await?;
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &bundle(&payments, receipts.path(), &planner)).await?;

    let id = submit(&edge, case_for("planner", "whole-plan", "pe-1")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "Plan done: done, done, done, done.", "{done:#}");
    assert_eq!(requests_for(&planner, "pe-1").len(), 2, "one planning turn, one answer");
    let transcript = done["loops"]["0"].as_array().context("transcript")?;
    let entries: Vec<&str> = transcript.iter().filter_map(|e| e["entry"].as_str()).collect();
    assert_eq!(entries, ["model", "call", "call", "decided", "call", "decided", "call", "model"]);
    for (at, tool_schema) in [(3, "order_id"), (5, "content")] {
        let decided = &transcript[at];
        assert_eq!(decided["tier"], "local", "{decided:#}");
        assert!(decided["arguments"].get(tool_schema).is_some(), "{decided:#}");
        assert_eq!(transcript[at + 1]["arguments"], decided["arguments"], "the call runs with what was decided");
    }
    assert_eq!(effects(&payments, "refunds", "pe-1"), [json!({ "order": "pe-1", "amount": 30, "account": "acct-1" })]);
    assert_eq!(std::fs::read_dir(receipts.path())?.count(), 1, "the receipt the local model wrote");
    assert_eq!(audited(&edge, "agent.decided", &id)?.len(), 2);
    assert_eq!(audited(&edge, "policy.decided", &id)?.len(), 4, "decided arguments are governed too");

    let id = submit(&edge, case_for("planner", "replan", "pe-2")).await?;
    let done = edge.finished_task(&id, LONG).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["steps"][0]["output"]["answer"], "Replanned: refunded 30 to acct-1.", "{done:#}");
    let transcript = done["loops"]["0"].as_array().context("transcript")?;
    assert_eq!(transcript[1]["outcome"]["outcome"], "refused", "{:#}", transcript[1]);
    assert_eq!(transcript[2]["outcome"]["outcome"], "skipped", "{:#}", transcript[2]);
    assert_eq!(requests_for(&planner, "pe-2").len(), 3);
    assert_eq!(effects(&payments, "refunds", "pe-2"), [json!({ "order": "pe-2", "amount": 30, "account": "acct-1" })]);
    assert!(effects(&payments, "notes", "pe-2").is_empty(), "the skipped note was never made");
    Ok(())
}
