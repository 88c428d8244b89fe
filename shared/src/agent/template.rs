//! Prompt templates and validate checks: [`render_template`] renders a
//! step's minijinja template over the task input and the earlier steps'
//! outputs, with undefined variables as errors; [`run_checks`] runs a
//! validate step's [`Check`]s over a value and reports every failure.

use serde::{Deserialize, Serialize};

/// One deterministic check of a validate step. Exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// The text must match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// The text must not match this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_regex: Option<String>,
    /// The text must parse as JSON valid against this JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<serde_json::Value>,
    /// The value must be one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// At least this many characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<usize>,
    /// At most this many characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

impl Check {
    pub(crate) fn fields_set(&self) -> usize {
        [
            self.regex.is_some(),
            self.not_regex.is_some(),
            self.json_schema.is_some(),
            self.allowed.is_some(),
            self.min_length.is_some(),
            self.max_length.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count()
    }
}

pub(crate) fn check_template(template: &str) -> Result<(), String> {
    let env = template_environment();
    env.template_from_str(template).map(|_| ()).map_err(|err| format!("template does not compile: {err}"))
}

fn template_environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Renders a step's template over `context` (`{"input": .., "steps": {..}}`).
/// Undefined variables are errors, so a misspelt field never renders as "".
pub fn render_template(template: &str, context: &serde_json::Value) -> Result<String, String> {
    let env = template_environment();
    let compiled = env.template_from_str(template).map_err(|err| format!("template does not compile: {err}"))?;
    compiled.render(context).map_err(|err| format!("template does not render: {err}"))
}

/// The outcome of running a validate step's checks over a value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Whether every check passed.
    pub passed: bool,
    /// One line per failed check.
    pub failures: Vec<String>,
}

/// Runs `checks` over `value` (the target step's output value).
pub fn run_checks(checks: &[Check], value: &str) -> CheckReport {
    let mut failures = Vec::new();
    let chars = value.chars().count();
    for (idx, check) in checks.iter().enumerate() {
        let n = idx + 1;
        if let Some(pattern) = &check.regex {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(value) => {}
                Ok(_) => failures.push(format!("check {n}: does not match /{pattern}/")),
                Err(err) => failures.push(format!("check {n}: bad regex: {err}")),
            }
        }
        if let Some(pattern) = &check.not_regex {
            match regex::Regex::new(pattern) {
                Ok(re) if !re.is_match(value) => {}
                Ok(_) => failures.push(format!("check {n}: matches the forbidden /{pattern}/")),
                Err(err) => failures.push(format!("check {n}: bad regex: {err}")),
            }
        }
        if let Some(schema) = &check.json_schema {
            match (jsonschema::validator_for(schema), serde_json::from_str::<serde_json::Value>(value)) {
                (Err(err), _) => failures.push(format!("check {n}: bad schema: {err}")),
                (_, Err(err)) => failures.push(format!("check {n}: not JSON: {err}")),
                (Ok(validator), Ok(json)) => {
                    if let Some(err) = validator.iter_errors(&json).next() {
                        failures.push(format!("check {n}: schema violation at `{}`: {err}", err.instance_path()));
                    }
                }
            }
        }
        if let Some(allowed) = &check.allowed {
            if !allowed.iter().any(|a| a == value) {
                failures.push(format!("check {n}: `{value}` is not one of {allowed:?}"));
            }
        }
        if let Some(min) = check.min_length {
            if chars < min {
                failures.push(format!("check {n}: {chars} characters, fewer than {min}"));
            }
        }
        if let Some(max) = check.max_length {
            if chars > max {
                failures.push(format!("check {n}: {chars} characters, more than {max}"));
            }
        }
    }
    CheckReport { passed: failures.is_empty(), failures }
}
