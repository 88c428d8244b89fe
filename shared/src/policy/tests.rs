use super::*;
use crate::exec::{validate_policy, ConnectorSpec};

const SCHEMA: &str = r#"
entity Agent = { edge: String, labels: Set<String> };
entity Order = { accounts: Set<String> };
action "shop.refund" appliesTo {
    principal: Agent,
    resource: Order,
    context: { autonomy: String, approved: Bool, args: { order_id: String, amount: Long, account: String } }
};
"#;

const POLICIES: &str = r#"
@id("small-refunds")
permit (principal, action == Action::"shop.refund", resource) when { context.args.amount <= 50 };
@id("approved-refunds")
permit (principal, action == Action::"shop.refund", resource) when { context.approved };
@id("own-account-only")
forbid (principal, action == Action::"shop.refund", resource)
    unless { resource.accounts.contains(context.args.account) };
"#;

fn engine() -> PolicyEngine {
    PolicyEngine::new(&PolicySpec { schema: SCHEMA.into(), policies: POLICIES.into(), approval_ttl: None }).unwrap()
}

fn decide(engine: &PolicyEngine, amount: i64, account: &str, autonomy: Autonomy) -> Decision {
    let args = json!({ "order_id": "o-1", "amount": amount, "account": account });
    let attrs = json!({ "accounts": ["acct-1"] });
    let labels = vec!["site=hq".to_owned()];
    engine.decide(&ActionRequest {
        agent: "refunds",
        edge: "e1",
        labels: &labels,
        connector: "shop",
        kind: ConnectorKind::Http,
        action: "refund",
        resource: ("Order", "o-1", &attrs),
        args: &args,
        classification: None,
        autonomy,
    })
}

#[test]
fn small_refunds_are_allowed_large_need_approval_foreign_accounts_are_denied() {
    let engine = engine();
    assert_eq!(
        decide(&engine, 30, "acct-1", Autonomy::Autonomous),
        Decision::Allow { policies: vec!["small-refunds".into()] }
    );
    assert!(matches!(
        decide(&engine, 120, "acct-1", Autonomy::Autonomous),
        Decision::RequireApproval { policies, .. } if policies == ["approved-refunds"]
    ));
    let denied = decide(&engine, 30, "acct-evil", Autonomy::Autonomous);
    assert!(matches!(&denied, Decision::Deny { policies, .. } if policies == &["own-account-only"]), "{denied:?}");
    let denied = decide(&engine, 500, "acct-evil", Autonomy::Autonomous);
    assert!(matches!(&denied, Decision::Deny { .. }), "approval cannot override a forbid: {denied:?}");
}

#[test]
fn autonomy_off_denies_and_supervised_asks() {
    let engine = engine();
    assert!(matches!(decide(&engine, 1, "acct-1", Autonomy::Off), Decision::Deny { .. }));
    assert!(matches!(decide(&engine, 1, "acct-1", Autonomy::Supervised), Decision::RequireApproval { .. }));
    assert!(matches!(decide(&engine, 1, "acct-evil", Autonomy::Supervised), Decision::Deny { .. }));
}

#[test]
fn an_approved_request_is_still_checked() {
    let engine = engine();
    let attrs = json!({ "accounts": ["acct-1"] });
    let request = |args: &'static str| (serde_json::from_str::<Value>(args).unwrap(), attrs.clone());
    for (args, allowed) in [
        (r#"{"order_id":"o-1","amount":120,"account":"acct-1"}"#, true),
        (r#"{"order_id":"o-1","amount":120,"account":"acct-2"}"#, false),
    ] {
        let (args, attrs) = request(args);
        let decision = engine.decide_approved(&ActionRequest {
            agent: "refunds",
            edge: "e1",
            labels: &[],
            connector: "shop",
            kind: ConnectorKind::Http,
            action: "refund",
            resource: ("Order", "o-1", &attrs),
            args: &args,
            classification: None,
            autonomy: Autonomy::Autonomous,
        });
        assert_eq!(matches!(decision, Decision::Allow { .. }), allowed, "{decision:?}");
    }
}

#[test]
fn a_request_the_policies_cannot_evaluate_is_denied() {
    let engine = engine();
    // `amount` as a string: `<=` fails to evaluate, and nothing else permits.
    let args = json!({ "order_id": "o-1", "amount": "lots", "account": "acct-1" });
    let attrs = json!({ "accounts": ["acct-1"] });
    let decision = engine.decide(&ActionRequest {
        agent: "refunds",
        edge: "e1",
        labels: &[],
        connector: "shop",
        kind: ConnectorKind::Http,
        action: "refund",
        resource: ("Order", "o-1", &attrs),
        args: &args,
        classification: None,
        autonomy: Autonomy::Autonomous,
    });
    assert!(matches!(decision, Decision::Deny { .. }), "{decision:?}");
    assert!(matches!(
        PolicyEngine::deny_all().decide(&ActionRequest {
            agent: "refunds",
            edge: "e1",
            labels: &[],
            connector: "shop",
            kind: ConnectorKind::Http,
            action: "refund",
            resource: ("Order", "o-1", &attrs),
            args: &json!({}),
            classification: None,
            autonomy: Autonomy::Autonomous,
        }),
        Decision::Deny { .. }
    ));
}

fn shop() -> std::collections::BTreeMap<String, ConnectorSpec> {
    let spec: ConnectorSpec = toml::from_str(
        r#"
        kind = "http"
        version = 1
        base_url = "http://127.0.0.1:1"
        [actions.refund]
        path = "/refunds"
        "#,
    )
    .unwrap();
    [("shop".to_owned(), spec)].into()
}

#[test]
fn publish_checks_policies_against_the_schema() {
    let ok = PolicySpec { schema: SCHEMA.into(), policies: POLICIES.into(), approval_ttl: None };
    validate_policy(&ok, &shop()).unwrap();
    let cases = [
        (SCHEMA, "permit (principal, action, resource) when { context.args.amout <= 50 };", "do not match the schema"),
        (SCHEMA, "permit (principal, action, resource) when {", "do not parse"),
        ("entity Agent;", POLICIES, "does not declare action \"shop.refund\""),
        ("entity Agent = {", POLICIES, "schema does not parse"),
        ("", POLICIES, "schema is required"),
    ];
    for (schema, policies, expected) in cases {
        let spec = PolicySpec { schema: schema.into(), policies: policies.into(), approval_ttl: None };
        let err = validate_policy(&spec, &shop()).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} should contain {expected}");
    }
}

#[test]
fn the_classification_of_what_the_agent_read_reaches_the_policy() {
    let schema = r#"
entity Agent = { edge: String, labels: Set<String> };
entity Customer;
action "mail.send" appliesTo {
    principal: Agent,
    resource: Customer,
    context: { autonomy: String, approved: Bool, classification?: String, args: { to: String } }
};
"#;
    let policies = r#"
@id("mail")
permit (principal, action == Action::"mail.send", resource);
@id("nothing-restricted-leaves")
forbid (principal, action == Action::"mail.send", resource)
    when { context has classification && context.classification == "restricted" };
"#;
    let spec = PolicySpec { schema: schema.into(), policies: policies.into(), approval_ttl: None };
    let engine = PolicyEngine::new(&spec).unwrap();
    let (args, attrs, labels) = (json!({ "to": "a@b.test" }), json!({}), Vec::new());
    let decide = |classification| {
        engine.decide(&ActionRequest {
            agent: "notify",
            edge: "e1",
            labels: &labels,
            connector: "mail",
            kind: ConnectorKind::Http,
            action: "send",
            resource: ("Customer", "a@b.test", &attrs),
            args: &args,
            classification,
            autonomy: Autonomy::Autonomous,
        })
    };
    assert!(matches!(decide(None), Decision::Allow { .. }));
    assert!(matches!(decide(Some("internal")), Decision::Allow { .. }));
    let denied = decide(Some("restricted"));
    assert!(
        matches!(&denied, Decision::Deny { policies, .. } if policies == &["nothing-restricted-leaves"]),
        "{denied:?}"
    );
}

/// An MCP server's tools are Cedar actions `mcp.<server>.<tool>`: the
/// schema must declare them so, and a policy on the bare `<server>.<tool>`
/// (which could be one of our own connectors) does not match them.
#[test]
fn mcp_tools_are_named_mcp_server_tool() {
    let notes: ConnectorSpec = toml::from_str(
        r#"
kind = "mcp"
version = 1
command = ["notes-server"]
[actions.add_note]
schema = { type = "object", properties = { text = { type = "string" } } }
schema_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#,
    )
    .unwrap();
    crate::exec::validate_connector("notes", &notes).unwrap();
    let connectors = std::collections::BTreeMap::from([("notes".to_owned(), notes.clone())]);
    let declare = |action: &str| {
        format!(
            "entity Agent = {{ edge: String, labels: Set<String> }};\nentity Connector;\naction \"{action}\" appliesTo \
             {{ principal: Agent, resource: Connector, context: {{ autonomy: String, approved: Bool, args: {{ text: \
             String }} }} }};\n"
        )
    };
    let bare = PolicySpec { schema: declare("notes.add_note"), policies: String::new(), approval_ttl: None };
    let err = validate_policy(&bare, &connectors).unwrap_err().to_string();
    assert!(err.contains("\"mcp.notes.add_note\""), "{err}");
    let policies = "permit (principal, action == Action::\"mcp.notes.add_note\", resource);";
    let spec = PolicySpec { schema: declare("mcp.notes.add_note"), policies: policies.into(), approval_ttl: None };
    validate_policy(&spec, &connectors).unwrap();
    let engine = PolicyEngine::new(&spec).unwrap();
    let (args, attrs, labels) = (json!({ "text": "hi" }), json!({}), Vec::new());
    let decide = |kind| {
        engine.decide(&ActionRequest {
            agent: "scribe",
            edge: "e1",
            labels: &labels,
            connector: "notes",
            kind,
            action: "add_note",
            resource: ("Connector", "notes", &attrs),
            args: &args,
            classification: None,
            autonomy: Autonomy::Autonomous,
        })
    };
    assert!(matches!(decide(ConnectorKind::Mcp), Decision::Allow { .. }));
    assert!(matches!(decide(ConnectorKind::Http), Decision::Deny { .. }), "a connector `notes` is another action");

    let mut both = notes.clone();
    both.base_url = Some("http://127.0.0.1:1/mcp".into());
    let err = crate::exec::validate_connector("notes", &both).unwrap_err().to_string();
    assert!(err.contains("not both"), "{err}");
    let mut http = both.clone();
    http.command.clear();
    http.credential = Some("env:NOTES_TOKEN".into());
    crate::exec::validate_connector("notes", &http).unwrap();
    let mut stdio_with_token = notes;
    stdio_with_token.credential = Some("env:NOTES_TOKEN".into());
    let err = crate::exec::validate_connector("notes", &stdio_with_token).unwrap_err().to_string();
    assert!(err.contains("`base_url` only"), "{err}");
}
