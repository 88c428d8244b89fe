//! Cedar decision time for a bundle of 100 policies: p50 and p99 over many
//! decisions, each one the full `decide` an act step makes (autonomy, the
//! not-approved evaluation and, where that denies, the approved one).
//!
//! `cargo bench -p aios-shared --bench policy`

use std::time::Instant;

use aios_shared::bundle::Autonomy;
use aios_shared::exec::{ConnectorKind, PolicySpec};
use aios_shared::policy::{ActionRequest, Decision, PolicyEngine};
use serde_json::json;

const SCHEMA: &str = r#"
entity Agent = { edge: String, labels: Set<String> };
entity Order = { accounts: Set<String> };
action "shop.refund" appliesTo {
    principal: Agent,
    resource: Order,
    context: { autonomy: String, approved: Bool, args: { order_id: String, amount: Long, account: String } }
};
"#;

fn policies(n: usize) -> String {
    let mut text = String::new();
    text.push_str("@id(\"approved\")\npermit (principal, action == Action::\"shop.refund\", resource) when { context.approved };\n");
    text.push_str("@id(\"own-account\")\nforbid (principal, action == Action::\"shop.refund\", resource) unless { resource.accounts.contains(context.args.account) };\n");
    for i in 0..n - 2 {
        // One permit per agent, with its own limit: realistic fan-out.
        text.push_str(&format!(
            "@id(\"agent-{i}\")\npermit (principal == Agent::\"agent-{i}\", action == Action::\"shop.refund\", resource) when {{ context.args.amount <= {} && principal.labels.contains(\"site=hq\") }};\n",
            10 + i
        ));
    }
    text
}

fn main() {
    let spec = PolicySpec { schema: SCHEMA.into(), policies: policies(100), approval_ttl: None };
    aios_shared::exec::validate_policy(&spec, &Default::default()).expect("the bench's policies validate");
    let engine = PolicyEngine::new(&spec).expect("policies compile");
    let labels = vec!["site=hq".to_owned()];
    let attrs = json!({ "accounts": ["acct-1"] });
    let mut samples = Vec::with_capacity(20_000);
    let mut outcomes = [0usize; 3];
    for n in 0..20_000usize {
        let agent = format!("agent-{}", n % 98);
        let args = json!({ "order_id": "o-1", "amount": (n % 150) as i64, "account": if n % 7 == 0 { "acct-9" } else { "acct-1" } });
        let start = Instant::now();
        let decision = engine.decide(&ActionRequest {
            agent: &agent,
            edge: "e1",
            labels: &labels,
            connector: "shop",
            kind: ConnectorKind::Http,
            action: "refund",
            resource: ("Order", "o-1", &attrs),
            args: &args,
            classification: None,
            autonomy: Autonomy::Autonomous,
        });
        samples.push(start.elapsed().as_nanos() as u64);
        outcomes[match decision {
            Decision::Allow { .. } => 0,
            Decision::Deny { .. } => 1,
            Decision::RequireApproval { .. } => 2,
        }] += 1;
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "cedar decision, 100 policies: p50 {:.1} us, p99 {:.1} us ({} decisions: {} allow, {} deny, {} require approval)",
        pct(0.5),
        pct(0.99),
        samples.len(),
        outcomes[0],
        outcomes[1],
        outcomes[2]
    );
}
