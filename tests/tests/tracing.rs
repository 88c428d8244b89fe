//! OTLP export: an edge started with `OTEL_EXPORTER_OTLP_ENDPOINT` sends its
//! spans to a collector (here an OTLP/HTTP receiver that decodes the real
//! protobuf), and one task's submission, steps, model call and connector
//! call all carry the one trace id derived from the task id, which the
//! connector's HTTP request also carries in `traceparent`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aios_tests::payments::{PaymentFaults, PaymentService};
use aios_tests::{bins, wait_for, ControlPlaneProc, EdgeProc};
use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

const REFUNDS: &str = include_str!("../data/refunds.toml");

/// A traced agent: one model step, then one connector call policy allows.
const TRACED: &str = r#"
[agents.traced]
version = 1
accepts = ["refund-request"]

[[agents.traced.steps]]
id = "topic"
kind = "classify"
labels = ["refund", "other"]
prompt = """Message: {{ input.text }}
Topic:"""

[[agents.traced.steps]]
id = "refund"
kind = "act"
connector = "shop"
action = "refund"
args = { order_id = "{{ input.order.id }}", amount = "20", account = "acct-1" }
resource = { type = "Order", id = "{{ input.order.id }}", attrs = { accounts = "{{ input.order.accounts | tojson }}" } }
"#;

/// One exported span: name, trace id (hex), service.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    service: String,
}

type Spans = Arc<Mutex<Vec<Exported>>>;

async fn receive(State(spans): State<Spans>, body: Bytes) -> axum::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut spans = spans.lock().expect("spans lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Exported { name: span.name, trace_id: hex(&span.trace_id), service: service.clone() });
            }
        }
    }
    axum::http::StatusCode::OK
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_one_trace_from_submission_to_connector_call() -> anyhow::Result<()> {
    let spans: Spans = Arc::default();
    let collector = axum::Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(async move { axum::serve(listener, collector).await });

    let bins = bins!();
    let tmp = tempfile::tempdir()?;
    let payments = PaymentService::start(PaymentFaults::default()).await?;
    let receipts = tmp.path().join("receipts");
    std::fs::create_dir_all(&receipts)?;
    let bundle = REFUNDS
        .replace("PAYMENTS_URL", &payments.url())
        .replace("RECEIPTS_DIR", receipts.to_str().context("utf-8 path")?)
        + TRACED;
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{port}")));
    // Export batches quickly so the test need not wait for the default 5 s.
    edge.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
    edge.start()?;
    let version = cp.publish(&bundle)?;
    wait_for("the edge to apply the bundle", Duration::from_secs(120), || async {
        let (_, health) = edge.api(reqwest::Method::GET, "/v1/health", None).await?;
        Ok(health["bundle_version"].as_u64() == Some(version))
    })
    .await?;

    let submitted = edge
        .submit(json!({
            "agent": "traced",
            "kind": "refund-request",
            "input": { "text": "I was charged twice, refund me please", "order": { "id": "o-77", "accounts": ["acct-1"] } },
        }))
        .await?;
    let id = submitted["id"].as_str().context("no task id")?.to_owned();
    let task = edge.finished_task(&id, Duration::from_secs(300)).await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    let trace_id = aios_shared::trace::task_trace_hex(&id);

    let wanted = ["task.submit", "task", "step", "model.call", "connector.call"];
    let of_task = || -> BTreeMap<String, usize> {
        let mut names = BTreeMap::new();
        for span in spans.lock().expect("spans lock").iter().filter(|s| s.trace_id == trace_id) {
            *names.entry(span.name.clone()).or_default() += 1;
        }
        names
    };
    let waited = wait_for("the task's spans at the collector", Duration::from_secs(30), || async {
        let names = of_task();
        Ok(wanted.iter().all(|w| names.contains_key(*w)))
    })
    .await;
    let names = of_task();
    waited.with_context(|| {
        let all = spans.lock().expect("spans lock").clone();
        format!("spans of trace {trace_id}: {names:?}; all {} spans: {:?}", all.len(), &all[..all.len().min(20)])
    })?;
    assert_eq!(names["step"], 2, "one span per step: {names:?}");
    assert!(
        spans.lock().expect("spans lock").iter().all(|s| s.service.contains("aios-edge")),
        "every span names its service"
    );

    // The connector's HTTP request carried the same trace.
    let effects = payments.effects();
    let refund = effects.iter().find(|e| e.body["order"] == "o-77").context("the refund never reached the shop")?;
    let header = refund.traceparent.as_deref().context("the refund request had no traceparent")?;
    assert_eq!(header.split('-').nth(1), Some(trace_id.as_str()), "traceparent {header}");

    server.abort();
    Ok(())
}
