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
            "tier `local`: an openai tier needs base_url",
        ),
    ];
    for ((from, to), expected) in cases {
        let err = edited(from, to).expect_err(expected);
        assert!(err.contains(expected), "{to:?}: expected {expected:?} in {err:?}");
        if expected.contains("step `") {
            assert!(err.contains("agent `triage`"), "{err}");
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
        timeout: None,
        credential: None,
    };
    assert_eq!(tier("https://user:pw@Example.com:8443/v1").host(), Some("Example.com"));
    assert_eq!(tier("http://[::1]:80/v1").host(), Some("::1"));
}
