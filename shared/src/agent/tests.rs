use super::*;
use crate::bundle::{BundleBody, BundleSpec};

const TRIAGE: &str = r#"
autonomy = "autonomous"

[tiers.local]
kind = "local"
model = "smollm2-135m-instruct"

[tiers.large]
kind = "openai"
model = "gpt-4o-mini"
base_url = "http://127.0.0.1:8080/v1"
price_in_per_1k = 0.15
price_out_per_1k = 0.6
credential = "env:LARGE_API_KEY"

[agents.triage]
version = 3
accepts = ["customer-message"]
escalate_to = ["large"]
budget = { per_task_usd = 0.01 }

[[agents.triage.steps]]
id = "category"
kind = "classify"
prompt = "Message: {{ input.text }}"
labels = ["refund", "shipping", "other"]
threshold = 0.6

[[agents.triage.steps]]
id = "reply"
kind = "generate"
prompt = "Reply to a {{ steps.category.label }} message: {{ input.text }}"
when = { step = "category", in = ["refund", "shipping"] }

[[agents.triage.steps]]
id = "check"
kind = "validate"
target = "reply"
checks = [{ max_length = 600 }, { not_regex = "(?i)password" }]
"#;

/// The triage bundle with `from` replaced by `to`, parsed.
fn edited(from: &str, to: &str) -> Result<BundleSpec, String> {
    assert!(TRIAGE.contains(from), "fixture lacks {from:?}");
    BundleSpec::from_toml(&TRIAGE.replacen(from, to, 1)).map_err(|err| err.to_string())
}

#[test]
fn a_valid_triage_agent_parses_and_survives_signing() {
    let spec = BundleSpec::from_toml(TRIAGE).unwrap();
    let agent = &spec.agents["triage"];
    assert_eq!(agent.steps.len(), 3);
    assert_eq!(agent.deadline_ms(), DEFAULT_DEADLINE_MS);
    assert!(agent.accepts(Some("customer-message")) && !agent.accepts(Some("invoice")) && agent.accepts(None));
    assert_eq!(spec.tiers["large"].host(), Some("127.0.0.1"));
    let body = spec.into_body(0, 1_000).unwrap();
    let json = serde_json::to_vec(&body).unwrap();
    let back: BundleBody = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, body);
    assert_eq!(back.definitions.agents["triage"].version, 3);
}

#[test]
fn bodies_signed_before_definitions_existed_still_decode() {
    let old = br#"{"version":1,"issued_at_ms":0,"expires_at_ms":10,"autonomy":"off","extensions":{}}"#;
    let body: BundleBody = serde_json::from_slice(old).unwrap();
    assert!(body.definitions.agents.is_empty());
    assert_eq!(body.definitions.runtime, RuntimeSpec::default());
}

#[test]
fn errors_name_the_agent_the_step_and_the_problem() {
    let cases = [
        (
            ("labels = [\"refund\", \"shipping\", \"other\"]", "labels = [\"refund\"]"),
            "step `category`: a classify step needs at least two labels",
        ),
        (("target = \"reply\"", "target = \"nowhere\""), "step `check`: target `nowhere` is not an earlier step"),
        (
            ("{ step = \"category\"", "{ step = \"check\""),
            "step `reply`: `when` refers to `check`, which is not an earlier step",
        ),
        (("threshold = 0.6", "threshold = 1.5"), "step `category`: threshold 1.5 is not between 0 and 1"),
        (("threshold = 0.6", "max_tokens = 5"), "step `category`: `max_tokens` does not apply to a classify step"),
        (("{{ input.text }}\"\nlabels", "{{ input.text \"\nlabels"), "step `category`: template does not compile"),
        (("{ max_length = 600 }", "{ regex = \"(\" }"), "step `check`: check 1: regex does not compile"),
        (("{ max_length = 600 }", "{ max_length = 600, min_length = 1 }"), "step `check`: check 1: set exactly one"),
        (("{ max_length = 600 }", "{ json_schema = { type = 12 } }"), "check 1: json_schema is not a valid schema"),
        (("id = \"check\"", "id = \"reply\""), "step `reply`: the id is used twice"),
        (("escalate_to = [\"large\"]", "escalate_to = [\"huge\"]"), "agent `triage`: escalate_to names `huge`"),
        (("kind = \"classify\"", "kind = \"divine\""), "divine"),
        (
            ("base_url = \"http://127.0.0.1:8080/v1\"", "base_url = \"ftp://x\""),
            "tier `large`: base_url `ftp://x` is not an http(s) URL",
        ),
        (("credential = \"env:LARGE_API_KEY\"", "credential = \"sk-live-123\""), "tier `large`: credential must be"),
        (
            ("[tiers.local]\nkind = \"local\"", "[tiers.local]\nkind = \"openai\""),
            "tier `local`: a remote tier needs base_url",
        ),
    ];
    for ((from, to), expected) in cases {
        let err = edited(from, to).expect_err(expected);
        assert!(err.contains(expected), "{to:?}: expected {expected:?} in {err:?}");
        if expected.contains("step `") {
            // Checks name the agent; a field refused when parsed is placed by the step's table.
            assert!(err.contains("agent `triage`") || err.contains("[[agents.triage.steps]]"), "{err}");
        }
    }
}

#[test]
fn gateway_tiers_must_be_declared_remote_tiers() {
    let with = |gateway: &str| edited("[agents.triage]\n", &format!("{gateway}\n\n[agents.triage]\n"));
    let spec = with("[gateway]\ntiers = [\"large\"]\nper_day_usd = 2.5").unwrap();
    assert_eq!(spec.gateway.tiers, ["large"]);
    assert_eq!(spec.gateway.per_day_usd, Some(2.5));
    assert!(spec.gateway.fallback_to_local, "falling back to the local model is the default");
    assert_eq!(BundleSpec::from_toml(TRIAGE).unwrap().gateway, GatewaySpec::default());
    let cases = [
        ("[gateway]\ntiers = [\"huge\"]", "gateway: tiers names `huge`, which is not declared"),
        ("[gateway]\ntiers = [\"local\"]", "gateway: tier `local` is local"),
        ("[gateway]\ntiers = [\"large\", \"large\"]", "gateway: tiers names `large` twice"),
        ("[gateway]\nper_request_usd = -1.0", "gateway: budget -1 must be a non-negative"),
        ("[gateway]\nfallback = false", "unknown field `fallback`"),
    ];
    for (gateway, expected) in cases {
        let err = with(gateway).expect_err(expected);
        assert!(err.contains(expected), "{gateway:?}: expected {expected:?} in {err:?}");
    }
}

#[test]
fn an_agent_that_uses_a_model_needs_a_local_tier() {
    let err = edited("[tiers.local]\nkind = \"local\"\nmodel = \"smollm2-135m-instruct\"\n", "").unwrap_err();
    assert!(err.contains("agent `triage`: local_tier `local` is not declared"), "{err}");
}

#[test]
fn conditions_compare_values() {
    let condition =
        Condition { step: "c".into(), equals: None, one_of: Some(vec!["a".into(), "b".into()]), not_in: None };
    assert!(condition.holds(Some("a")));
    assert!(!condition.holds(Some("z")));
    assert!(!condition.holds(None), "a skipped step satisfies nothing");
    let not = Condition { step: "c".into(), equals: None, one_of: None, not_in: Some(vec!["a".into()]) };
    assert!(not.holds(Some("b")) && !not.holds(Some("a")));
}

#[test]
fn checks_report_every_failure() {
    let checks = vec![
        Check { max_length: Some(5), ..Check::default() },
        Check { regex: Some("^[a-z]+$".into()), ..Check::default() },
        Check { allowed: Some(vec!["ok".into()]), ..Check::default() },
    ];
    assert_eq!(run_checks(&checks[..2], "fine"), CheckReport { passed: true, failures: vec![] });
    let report = run_checks(&checks, "Too long");
    assert!(!report.passed);
    assert_eq!(report.failures.len(), 3, "{report:?}");
    let schema = vec![Check {
        json_schema: Some(serde_json::json!({"type": "object", "required": ["amount"]})),
        ..Check::default()
    }];
    assert!(run_checks(&schema, r#"{"amount": 3}"#).passed);
    assert!(!run_checks(&schema, r#"{"other": 3}"#).passed);
    assert!(run_checks(&schema, "not json").failures[0].contains("not JSON"));
}

#[test]
fn templates_refuse_undefined_variables() {
    let context = serde_json::json!({ "input": { "text": "hi" }, "steps": {} });
    assert_eq!(render_template("say {{ input.text }}", &context).unwrap(), "say hi");
    let err = render_template("say {{ input.txet }}", &context).unwrap_err();
    assert!(err.contains("undefined"), "{err}");
}

#[test]
fn air_gap_allows_only_listed_hosts() {
    let mut runtime = RuntimeSpec::default();
    assert!(runtime.host_allowed(Some("api.example.com")));
    runtime.air_gapped = true;
    runtime.allowed_hosts = vec!["10.0.0.5".into()];
    assert!(runtime.host_allowed(Some("10.0.0.5")));
    assert!(!runtime.host_allowed(Some("api.example.com")));
    assert!(runtime.host_allowed(None), "local tiers have no host");
    let tier = |url: &str| TierSpec {
        kind: TierKind::Openai,
        model: "m".into(),
        base_url: Some(url.into()),
        price_in_per_1k: 0.0,
        price_out_per_1k: 0.0,
        stream: false,
        timeout: None,
        credential: None,
        max_classification: None,
    };
    assert_eq!(tier("https://user:pw@Example.com:8443/v1").host(), Some("Example.com"));
    assert_eq!(tier("http://[::1]:80/v1").host(), Some("::1"));
}

/// An agent with a step of every kind, each with every field its kind takes.
const EVERY_KIND: &str = r#"
version = 1

[[steps]]
id = "sort"
kind = "classify"
risk = "medium"
escalate = true
prompt = "Message: {{ input.text }}"
labels = ["refund", "other"]
examples = [{ text = "money back", label = "refund" }]
subject = "{{ input.text }}"
threshold = 0.7
context_tokens = 256

[[steps]]
id = "draft"
kind = "generate"
when = { step = "sort", equals = "refund" }
escalate = false
prompt = "Reply to {{ input.text }}"
system = "Be brief."
max_tokens = 64
temperature = 0.25
context_tokens = 128

[[steps]]
id = "think"
kind = "plan"
risk = "high"
escalate = true
prompt = "Plan: {{ input.text }}"
system = "Plan carefully."
max_tokens = 256
temperature = 0.5
context_tokens = 512

[[steps]]
id = "look"
kind = "retrieve"
prompt = "{{ input.text }}"
namespace = "policies"
top_k = 3
min_score = 0.125
filter = { region = "{{ input.region }}" }
keyword_weight = 0.25

[[steps]]
id = "read"
kind = "record_get"
when = { step = "sort", in = ["refund"], not_in = ["other"] }
namespace = "orders"
key = "order-{{ input.order }}"

[[steps]]
id = "write"
kind = "record_put"
namespace = "orders"
key = "order-{{ input.order }}"
value = "{\"state\": \"refunded\"}"
expect_version = "{{ steps.read.version }}"
subject = "{{ input.customer }}"

[[steps]]
id = "pay"
kind = "act"
connector = "payments"
action = "refund"
args = { order = "{{ input.order }}" }
resource = { type = "Order", id = "{{ input.order }}", attrs = { amount = "{{ input.amount }}" } }
reasoning = "The customer asked: {{ input.text }}"

[[steps]]
id = "check"
kind = "validate"
target = "draft"
checks = [{ max_length = 600 }, { not_regex = "(?i)password" }, { json_schema = { type = "object" } }, { allowed = ["a"] }, { min_length = 1 }, { regex = "x" }]
"#;

/// [`EVERY_KIND`] as JSON, as bundles signed before steps were split by
/// kind carry it (written by the flat struct with a field per option).
const EVERY_KIND_JSON: &str = r#"{"version":1,"max_concurrent":2,"local_tier":"local","budget":{},"steps":[{"id":"sort","kind":"classify","risk":"medium","escalate":true,"prompt":"Message: {{ input.text }}","labels":["refund","other"],"examples":[{"text":"money back","label":"refund"}],"subject":"{{ input.text }}","threshold":0.7,"context_tokens":256},{"id":"draft","kind":"generate","when":{"step":"sort","equals":"refund"},"risk":"low","escalate":false,"prompt":"Reply to {{ input.text }}","system":"Be brief.","max_tokens":64,"temperature":0.25,"context_tokens":128},{"id":"think","kind":"plan","risk":"high","escalate":true,"prompt":"Plan: {{ input.text }}","system":"Plan carefully.","max_tokens":256,"temperature":0.5,"context_tokens":512},{"id":"look","kind":"retrieve","risk":"low","prompt":"{{ input.text }}","namespace":"policies","top_k":3,"min_score":0.125,"filter":{"region":"{{ input.region }}"},"keyword_weight":0.25},{"id":"read","kind":"record_get","when":{"step":"sort","in":["refund"],"not_in":["other"]},"risk":"low","namespace":"orders","key":"order-{{ input.order }}"},{"id":"write","kind":"record_put","risk":"low","subject":"{{ input.customer }}","namespace":"orders","key":"order-{{ input.order }}","value":"{\"state\": \"refunded\"}","expect_version":"{{ steps.read.version }}"},{"id":"pay","kind":"act","risk":"low","connector":"payments","action":"refund","args":{"order":"{{ input.order }}"},"resource":{"type":"Order","id":"{{ input.order }}","attrs":{"amount":"{{ input.amount }}"}},"reasoning":"The customer asked: {{ input.text }}"},{"id":"check","kind":"validate","risk":"low","target":"draft","checks":[{"max_length":600},{"not_regex":"(?i)password"},{"json_schema":{"type":"object"}},{"allowed":["a"]},{"min_length":1},{"regex":"x"}]}]}"#;

#[test]
fn every_kind_round_trips_through_json_with_the_keys_it_always_had() {
    let agent: AgentSpec = toml::from_str(EVERY_KIND).unwrap();
    let kinds: Vec<&str> = agent.steps.iter().map(|s| s.kind().as_str()).collect();
    assert_eq!(kinds, ["classify", "generate", "plan", "retrieve", "record_get", "record_put", "act", "validate"]);
    let text = serde_json::to_string(&agent).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json, serde_json::from_str::<serde_json::Value>(EVERY_KIND_JSON).unwrap(), "{text}");
    assert_eq!(serde_json::from_str::<AgentSpec>(&text).unwrap(), agent);
    assert_eq!(serde_json::from_str::<AgentSpec>(EVERY_KIND_JSON).unwrap(), agent, "old bundles decode the same");
    assert_eq!(toml::from_str::<AgentSpec>(&toml::to_string_pretty(&agent).unwrap()).unwrap(), agent);
    let written: toml::Table = toml::from_str(EVERY_KIND).unwrap();
    for (step, table) in json["steps"].as_array().unwrap().iter().zip(written["steps"].as_array().unwrap()) {
        let mut keys: Vec<&str> = table.as_table().unwrap().keys().map(String::as_str).chain(["risk"]).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut json_keys: Vec<&str> = step.as_object().unwrap().keys().map(String::as_str).collect();
        json_keys.sort_unstable();
        assert_eq!(json_keys, keys, "{step}");
    }
    let StepAction::Classify(classify) = &agent.steps[0].action else { panic!("{:?}", agent.steps[0]) };
    assert_eq!(classify.escalation_prompt.as_deref(), Some("{{ input.text }}"));
    let StepAction::RecordPut(put) = &agent.steps[5].action else { panic!("{:?}", agent.steps[5]) };
    assert_eq!(put.subject.as_deref(), Some("{{ input.customer }}"));
    assert!(agent.steps[0].escalates_by_default() && !agent.steps[1].escalates_by_default());
    assert_eq!((agent.steps[0].threshold(), agent.steps[1].threshold()), (0.7, 0.5));
    assert_eq!((agent.steps[1].max_tokens(), agent.steps[0].max_tokens()), (64, 128));
}

#[test]
fn a_field_of_another_kind_is_refused_when_parsed() {
    let step = |text: &str| toml::from_str::<StepSpec>(text).map_err(|err| err.to_string());
    let cases = [
        ("id = \"s\"\nkind = \"generate\"\nsubject = \"x\"", "step `s`: `subject` does not apply to a generate step"),
        ("id = \"s\"\nkind = \"record_get\"\nvalue = \"v\"", "step `s`: `value` does not apply to a record_get step"),
        ("id = \"s\"\nkind = \"validate\"\nprompt = \"p\"", "step `s`: `prompt` does not apply to a validate step"),
        ("id = \"s\"\nkind = \"act\"\nconector = \"c\"", "step `s`: `conector` does not apply to a act step"),
        ("id = \"s\"\nkind = \"divine\"", "step `s`: unknown variant `divine`"),
        ("id = \"s\"\nprompt = \"p\"", "step `s`: missing field `kind`"),
        ("id = \"s\"\nkind = \"classify\"\nthreshold = \"high\"", "step `s`: invalid type: string \"high\""),
    ];
    for (text, expected) in cases {
        let err = step(text).expect_err(expected);
        assert!(err.contains(expected), "{text:?}: expected {expected:?} in {err:?}");
    }
    let json = r#"{"id":"s","kind":"plan","prompt":"p","risk":"low","top_k":3}"#;
    let err = serde_json::from_str::<StepSpec>(json).unwrap_err().to_string();
    assert!(err.contains("step `s`: `top_k` does not apply to a plan step"), "{err}");
}

/// The agent-loop bundle of the whole-system tests, with `from` replaced by `to`.
fn agent_loop(from: &str, to: &str) -> Result<BundleSpec, String> {
    let toml = include_str!("../../../tests/data/agent_loop.toml")
        .replace("PAYMENTS_URL", "http://127.0.0.1:9")
        .replace("RECEIPTS_DIR", "/tmp/receipts")
        .replace("MODEL_URL", "http://127.0.0.1:9/v1");
    assert!(toml.contains(from), "fixture lacks {from:?}");
    BundleSpec::from_toml(&toml.replacen(from, to, 1)).map_err(|err| err.to_string())
}

#[test]
fn agent_steps_are_checked_at_publish() {
    let spec = agent_loop("", "").unwrap();
    let step = &spec.agents["desk"].steps[0];
    let StepAction::Agent(agent) = &step.action else { panic!("an agent step: {step:?}") };
    let tools = tool_loop::tool_definitions(agent, &spec.connectors).unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["shop_refund", "shop_note", "receipts_publish", "ask_human"]);
    assert_eq!(tools[0].description, "Refund part of an order to one of its accounts.");
    assert_eq!(tools[0].parameters["required"], serde_json::json!(["order_id", "amount", "account"]));

    let refused = |from: &str, to: &str, says: &str| {
        let err = agent_loop(from, to).expect_err(to);
        assert!(err.contains(says), "{to:?}: {err}");
        assert!(err.contains("handle") || err.contains("desk"), "the error names where: {err}");
    };
    refused("action = \"note\" }", "action = \"erase\" }", "connector `shop` has no action `erase`");
    refused("action = \"note\" }", "action = \"note\", name = \"shop_refund\" }", "declared twice");
    refused("action = \"note\" }", "action = \"note\", name = \"note to self\" }", "tool name `note to self`");
    refused(
        "tools = [",
        "tools = [\n    { kind = \"ask_human\" },\n    { kind = \"ask_human\" },",
        "`ask_human` is declared twice",
    );
    refused("goal = \"Case", "system = \"Case", "needs a goal");
    refused("{{ input.case }} for", "{{ input.case for", "template");
    refused("max_iterations = 8", "max_iterations = 0", "max_iterations must be at least 1");
    refused("action = \"note\" }", "action = \"note\", secret = 1 }", "secret");
    refused("type = \"Order\"", "type = \"Order Book\"", "Cedar entity type");

    // Memory tools: named after their namespace, told what they do, and only
    // on namespaces the agent's memory access names.
    let step = &spec.agents["clerk"].steps[0];
    let StepAction::Agent(clerk) = &step.action else { panic!("an agent step: {step:?}") };
    let tools = tool_loop::tool_definitions(clerk, &spec.connectors).unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["retrieve_policies", "remember_notes", "record_get_orders", "record_put_orders"]);
    assert_eq!(tools[0].parameters["required"], serde_json::json!(["query"]));
    assert!(tools[1].description.contains("`notes`"), "{}", tools[1].description);
    assert_eq!(tools[3].parameters["properties"]["expect_version"]["minimum"], 0);
    let clerk_refused = |from: &str, to: &str, says: &str| {
        let err = agent_loop(from, to).expect_err(to);
        assert!(err.contains(says) && err.contains("clerk"), "{to:?}: {err}");
    };
    clerk_refused(
        "{ kind = \"remember\", namespace = \"notes\" }",
        "{ kind = \"remember\", namespace = \"policies\" }",
        "tool `remember_policies`: the agent may not write memory namespace `policies`",
    );
    clerk_refused(
        "{ kind = \"retrieve\", namespace = \"policies\", top_k = 2 }",
        "{ kind = \"retrieve\", namespace = \"notes\" }",
        "the agent may not read memory namespace `notes`",
    );
    clerk_refused("top_k = 2 }", "top_k = 0 }", "top_k must be at least 1");
    let lead = &spec.agents["lead"].steps[0];
    let StepAction::Agent(lead) = &lead.action else { panic!("an agent step") };
    let tools = tool_loop::tool_definitions(lead, &spec.connectors).unwrap();
    assert_eq!((tools[0].name.as_str(), tools[0].parameters["required"][0].as_str()), ("handoff_desk", Some("input")));
    for (to, says) in [("lead", "an agent cannot hand work to itself"), ("nobody", "agent `nobody` is not defined")] {
        let err = agent_loop("agent = \"desk\"", &format!("agent = \"{to}\"")).expect_err(to);
        assert!(err.contains(says) && err.contains("lead"), "{err}");
    }
    clerk_refused("namespace = \"orders\" },\n]", "namespace = \"orders\", shape = 1 },\n]", "shape");
}
