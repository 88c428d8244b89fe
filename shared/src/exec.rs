//! Connectors, inbound webhooks and the Cedar policy as they travel in a
//! policy bundle, with the checks the control plane runs before signing.
//!
//! ```toml
//! [connectors.shop]
//! kind = "http"
//! version = 1
//! base_url = "https://shop.example/api"
//! credential = "env:SHOP_TOKEN"
//! rate_per_second = 5
//!
//! [connectors.shop.actions.refund]
//! method = "POST"
//! path = "/refunds"
//! body = { order = "{{ args.order_id }}", amount = "{{ args.amount }}", account = "{{ args.account }}" }
//! schema = { type = "object", required = ["order_id", "amount", "account"], properties = { order_id = { type = "string" }, amount = { type = "integer" }, account = { type = "string" } } }
//! response = { refund_id = "/id" }
//! compensation = "void"
//!
//! [policy]
//! schema = '''entity Agent = { edge: String, labels: Set<String> }; ...'''
//! policies = '''permit (principal, action == Action::"shop.refund", resource)
//!     when { context.args.amount <= 50 };'''
//! ```
//!
//! Templates (paths, bodies, headers, compensation arguments) are minijinja
//! over `args` (the intent's typed arguments) and, for compensation, `result`
//! (the mapped result of the action undone). A body leaf that is exactly one
//! `{{ args.NAME }}` keeps the argument's JSON type.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;

/// What a connector talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectorKind {
    /// A REST API over HTTP(S).
    Http,
    /// Mail through an SMTP server.
    Email,
    /// Documents written atomically into a directory.
    File,
    /// The tools of an MCP server, run as a child process (stdio) or
    /// reached over streamable HTTP; each action is one tool, pinned by its
    /// input schema's hash.
    Mcp,
}

impl ConnectorKind {
    /// The lower-case name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Http => "http",
            ConnectorKind::Email => "email",
            ConnectorKind::File => "file",
            ConnectorKind::Mcp => "mcp",
        }
    }
}

/// How an email connector secures its SMTP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Upgrade with STARTTLS and refuse a server that cannot.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain text: only for a relay on the same machine.
    None,
}

/// A versioned adapter with named actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorSpec {
    /// What it talks to.
    pub kind: ConnectorKind,
    /// The definition's version, recorded with every intent.
    pub version: u32,
    /// `http`: the API's base URL; action paths are appended to it. `mcp`:
    /// the server's streamable HTTP endpoint (instead of `command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Secret reference, `env:NAME` or `file:/path`: the bearer token
    /// (`http`, `mcp` over HTTP) or the SMTP password (`email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// `http`: headers sent with every action (templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `email`: the SMTP server's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    /// `email`: its port (default 587, or 465 with `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    /// `email`: how the connection is secured.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// `email`: the SMTP user name, when the server wants a login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// `email`: a PEM file with the CA certificate(s) that signed the SMTP
    /// server's certificate, trusted besides the system's roots (a relay
    /// with a private CA on an on-prem network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// `email`: the sender address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `file`: the directory documents are written into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// `mcp`: the server's program and arguments, run with the edge's
    /// environment cleared but for `PATH`, `HOME` and `LANG`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// How long one attempt may take, such as `10s` (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Attempts per intent before it is dead-lettered (default 5).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Sustained attempts per second (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<u32>,
    /// Attempts allowed at once above the sustained rate (default: the rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Consecutive failed attempts that open the circuit breaker (default 5).
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker refuses attempts, such as `30s` (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker_cooldown: Option<String>,
    /// Actions by name.
    pub actions: BTreeMap<String, ActionSpec>,
}

fn default_max_attempts() -> u32 {
    5
}

fn default_breaker_failures() -> u32 {
    5
}

/// Default time one connector attempt may take.
pub const DEFAULT_CONNECTOR_TIMEOUT_MS: u64 = 10_000;
/// Default time an open connector breaker refuses attempts.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 30_000;

impl ConnectorSpec {
    /// The attempt timeout in milliseconds.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .map_or(DEFAULT_CONNECTOR_TIMEOUT_MS, |d| d.as_millis() as u64)
    }

    /// The breaker's cool-down in milliseconds.
    pub fn breaker_cooldown_ms(&self) -> u64 {
        self.breaker_cooldown
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .map_or(DEFAULT_BREAKER_COOLDOWN_MS, |d| d.as_millis() as u64)
    }
}

/// One named action of a connector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// What it does, for operators.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// JSON Schema of the arguments. Rendered arguments are converted to the
    /// types it declares (`integer`, `number`, `boolean`, `array`, `object`)
    /// and checked against it before the policy sees them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// `http`: the method (default POST).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `http`: the path after `base_url` (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http`: the JSON body, string leaves being templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// `http`: extra headers (templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// `http`: statuses that mean done (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<u16>,
    /// `http`: statuses worth another attempt with the same key (default
    /// 408, 409, 425, 429, 500, 502, 503, 504). Any other status is permanent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retryable: Vec<u16>,
    /// `http`: result fields by name, each a JSON pointer into the response
    /// body (default: the whole body as `response`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response: BTreeMap<String, String>,
    /// `file`: `write` replaces a document; `publish` refuses to overwrite
    /// another one (default `write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `mcp`: hex SHA-256 of the canonical JSON (keys sorted) of the tool's
    /// input schema as the server lists it; a server that changes the tool
    /// is refused until the bundle pins the new schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_sha256: Option<String>,
    /// The action of the same connector that undoes this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<String>,
    /// Arguments of the compensating action: templates over `args` and
    /// `result` (default: this action's arguments).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compensation_args: BTreeMap<String, String>,
    /// How sensitive what the action returns is. An agent step's model turn
    /// after such a result goes only to tiers allowed to receive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<crate::memory::Classification>,
}

/// HTTP statuses retried when an action does not list its own.
pub const DEFAULT_RETRYABLE: &[u16] = &[408, 409, 425, 429, 500, 502, 503, 504];

impl ActionSpec {
    /// Whether `status` means the action is done.
    pub fn is_success(&self, status: u16) -> bool {
        if self.success.is_empty() {
            (200..300).contains(&status)
        } else {
            self.success.contains(&status)
        }
    }

    /// Whether `status` is worth another attempt.
    pub fn is_retryable(&self, status: u16) -> bool {
        if self.retryable.is_empty() {
            DEFAULT_RETRYABLE.contains(&status)
        } else {
            self.retryable.contains(&status)
        }
    }
}

/// An inbound webhook: an HTTP request signed with a shared secret becomes a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// The agent that runs the task.
    pub agent: String,
    /// The task kind (checked against the agent's `accepts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The shared HMAC-SHA256 secret, `env:NAME` or `file:/path`.
    pub secret: String,
    /// A JSON pointer into the request body whose value is the idempotency
    /// key, so a delivery repeated by the sender makes one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_pointer: Option<String>,
}

/// The Cedar schema and policies that decide every side effect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The Cedar schema (Cedar schema syntax).
    #[serde(default)]
    pub schema: String,
    /// The Cedar policies; `@id("...")` names one in decisions.
    #[serde(default)]
    pub policies: String,
    /// How long an approval stays usable, such as `24h` (default 24 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_ttl: Option<String>,
}

/// Default lifetime of an approval.
pub const DEFAULT_APPROVAL_TTL_MS: i64 = 24 * 60 * 60 * 1000;

impl PolicySpec {
    /// How long an approval stays usable, in milliseconds.
    pub fn approval_ttl_ms(&self) -> i64 {
        self.approval_ttl
            .as_deref()
            .and_then(|t| parse_duration(t).ok())
            .map_or(DEFAULT_APPROVAL_TTL_MS, |d| d.as_millis() as i64)
    }
}

/// What an act step touches, as the policy sees it: `Type::"id"` with attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// The Cedar entity type, such as `Order`.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// The entity id (a template).
    pub id: String,
    /// Attributes (templates; a value that renders as JSON is taken as JSON).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}

/// Why connectors, webhooks or the policy cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecSpecError {
    /// A problem in a connector, possibly in one of its actions.
    #[error("connector `{connector}`{}: {problem}", action.as_ref().map(|a| format!(", action `{a}`")).unwrap_or_default())]
    Connector {
        /// The connector's name.
        connector: String,
        /// The action, when the problem is in one.
        action: Option<String>,
        /// What is wrong.
        problem: String,
    },
    /// A problem in a webhook.
    #[error("webhook `{webhook}`: {problem}")]
    Webhook {
        /// The webhook's name.
        webhook: String,
        /// What is wrong.
        problem: String,
    },
    /// A problem in a tool served over MCP.
    #[error("MCP tool `{tool}`: {problem}")]
    ServedTool {
        /// The tool's name.
        tool: String,
        /// What is wrong.
        problem: String,
    },
    /// A problem in the Cedar schema or policies.
    #[error("policy: {0}")]
    Policy(String),
}

/// Checks a connector.
pub fn validate_connector(name: &str, spec: &ConnectorSpec) -> Result<(), ExecSpecError> {
    let fail = |action: Option<&str>, problem: String| ExecSpecError::Connector {
        connector: name.to_owned(),
        action: action.map(str::to_owned),
        problem,
    };
    if !crate::agent::valid_name(name) {
        return Err(fail(None, "names use letters, digits, `-` and `_` only".into()));
    }
    if spec.actions.is_empty() {
        return Err(fail(None, "declares no actions".into()));
    }
    if spec.max_attempts == 0 || spec.breaker_failures == 0 {
        return Err(fail(None, "max_attempts and breaker_failures must be at least 1".into()));
    }
    if spec.rate_per_second == Some(0) || spec.burst == Some(0) {
        return Err(fail(None, "rate_per_second and burst must be at least 1 when set".into()));
    }
    for duration in [&spec.timeout, &spec.breaker_cooldown].into_iter().flatten() {
        parse_duration(duration).map_err(|err| fail(None, err.to_string()))?;
    }
    if let Some(credential) = &spec.credential {
        if !is_secret_ref(credential) {
            return Err(fail(None, "credential must be `env:NAME` or `file:/path`".into()));
        }
    }
    let present = [
        ("base_url", spec.base_url.is_some()),
        ("headers", !spec.headers.is_empty()),
        ("smtp_host", spec.smtp_host.is_some()),
        ("smtp_port", spec.smtp_port.is_some()),
        ("username", spec.username.is_some()),
        ("from", spec.from.is_some()),
        ("tls_ca", spec.tls_ca.is_some()),
        ("directory", spec.directory.is_some()),
        ("command", !spec.command.is_empty()),
    ];
    let (allowed, required): (&[&str], &[&str]) = match spec.kind {
        ConnectorKind::Http => (&["base_url", "headers"], &["base_url"]),
        ConnectorKind::Email => (&["smtp_host", "smtp_port", "username", "from", "tls_ca"], &["smtp_host", "from"]),
        ConnectorKind::File => (&["directory"], &["directory"]),
        ConnectorKind::Mcp => (&["command", "base_url"], &[]),
    };
    if spec.kind == ConnectorKind::Mcp {
        match (spec.command.is_empty(), &spec.base_url) {
            (true, None) => return Err(fail(None, "an mcp connector needs `command` (stdio) or `base_url`".into())),
            (false, Some(_)) => {
                return Err(fail(None, "an mcp connector has `command` or `base_url`, not both".into()))
            }
            (false, None) if spec.credential.is_some() => {
                return Err(fail(None, "`credential` applies to an mcp connector with `base_url` only".into()))
            }
            _ => {}
        }
    }
    for (field, set) in present {
        if set && !allowed.contains(&field) {
            return Err(fail(None, format!("`{field}` does not apply to a {} connector", spec.kind.as_str())));
        }
        if !set && required.contains(&field) {
            return Err(fail(None, format!("a {} connector needs `{field}`", spec.kind.as_str())));
        }
    }
    if let Some(url) = &spec.base_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(fail(None, format!("base_url `{url}` is not an http(s) URL")));
        }
    }
    for template in spec.headers.values() {
        crate::agent::check_template(template).map_err(|p| fail(None, p))?;
    }
    for (action_name, action) in &spec.actions {
        let at = Some(action_name.as_str());
        if !crate::agent::valid_name(action_name) {
            return Err(fail(at, "names use letters, digits, `-` and `_` only".into()));
        }
        validate_action(spec.kind, action).map_err(|p| fail(at, p))?;
        if let Some(undo) = &action.compensation {
            if !spec.actions.contains_key(undo) {
                return Err(fail(at, format!("compensation `{undo}` is not an action of this connector")));
            }
            if undo == action_name {
                return Err(fail(at, "an action cannot compensate itself".into()));
            }
        } else if !action.compensation_args.is_empty() {
            return Err(fail(at, "compensation_args without a compensation".into()));
        }
    }
    Ok(())
}

fn validate_action(kind: ConnectorKind, action: &ActionSpec) -> Result<(), String> {
    let present = [
        ("method", action.method.is_some()),
        ("path", action.path.is_some()),
        ("body", action.body.is_some()),
        ("headers", !action.headers.is_empty()),
        ("success", !action.success.is_empty()),
        ("retryable", !action.retryable.is_empty()),
        ("response", !action.response.is_empty()),
        ("mode", action.mode.is_some()),
        ("schema_sha256", action.schema_sha256.is_some()),
    ];
    let allowed: &[&str] = match kind {
        ConnectorKind::Http => &["method", "path", "body", "headers", "success", "retryable", "response"],
        ConnectorKind::Email => &[],
        ConnectorKind::File => &["mode"],
        ConnectorKind::Mcp => &["schema_sha256"],
    };
    if let Some((field, _)) = present.iter().find(|(field, set)| *set && !allowed.contains(field)) {
        return Err(format!("`{field}` does not apply to a {} connector's action", kind.as_str()));
    }
    if let Some(method) = &action.method {
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
            return Err(format!("method `{method}` is not one of GET, POST, PUT, PATCH, DELETE"));
        }
    }
    if let Some(mode) = &action.mode {
        if !["write", "publish"].contains(&mode.as_str()) {
            return Err(format!("mode `{mode}` is not `write` or `publish`"));
        }
    }
    if let Some(schema) = &action.schema {
        jsonschema::validator_for(schema).map_err(|err| format!("schema is not a valid JSON Schema: {err}"))?;
    }
    for pointer in action.response.values() {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(format!("response pointer `{pointer}` must start with `/`"));
        }
    }
    let mut templates: Vec<&String> = action.path.iter().chain(action.headers.values()).collect();
    templates.extend(action.compensation_args.values());
    if let Some(body) = &action.body {
        collect_strings(body, &mut templates);
    }
    for template in templates {
        crate::agent::check_template(template)?;
    }
    if kind == ConnectorKind::Mcp {
        let pinned = action.schema_sha256.as_deref().unwrap_or_default();
        if action.schema.is_none() || pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("an MCP tool is pinned by `schema` and `schema_sha256` (64 hex digits; \
                        `aios-edge mcp tools -- COMMAND` or `--url URL` prints both)"
                .into());
        }
    }
    let needed: &[&str] = match kind {
        ConnectorKind::Email => &["to", "subject", "body"],
        ConnectorKind::File => &["name", "content"],
        ConnectorKind::Http | ConnectorKind::Mcp => &[],
    };
    if !needed.is_empty() {
        let declared = action.schema.as_ref().and_then(|s| s.get("properties")).and_then(|p| p.as_object());
        if let Some(missing) = needed.iter().find(|n| !declared.is_some_and(|p| p.contains_key(**n))) {
            return Err(format!("its schema must declare the argument `{missing}` (needed: {needed:?})"));
        }
    }
    Ok(())
}

fn collect_strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a String>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// Checks typed arguments against an action's JSON Schema.
pub fn check_args(schema: &serde_json::Value, args: &serde_json::Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|err| format!("the action's schema: {err}"))?;
    let problems: Vec<String> =
        validator.iter_errors(args).map(|e| format!("{e} at `{}`", e.instance_path())).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("arguments do not match the action's schema: {}", problems.join("; ")))
    }
}

/// Whether `reference` is `env:NAME` or `file:/path`.
pub fn is_secret_ref(reference: &str) -> bool {
    let rest = reference.strip_prefix("env:").or_else(|| reference.strip_prefix("file:"));
    rest.is_some_and(|r| !r.is_empty())
}

/// Checks what a source of tasks (a webhook, a served tool) names: its own
/// name, an agent that exists, and a task kind that agent accepts.
pub(crate) fn check_task_source(
    name: &str,
    agent: &str,
    kind: Option<&str>,
    agents: &BTreeMap<String, crate::agent::AgentSpec>,
) -> Result<(), String> {
    if !crate::agent::valid_name(name) {
        return Err("names use letters, digits, `-` and `_` only".into());
    }
    let spec = agents.get(agent).ok_or_else(|| format!("agent `{agent}` is not defined"))?;
    match kind {
        Some(kind) if !spec.accepts.is_empty() && !spec.accepts.iter().any(|k| k == kind) => {
            Err(format!("agent `{agent}` does not accept tasks of kind `{kind}`"))
        }
        _ => Ok(()),
    }
}

/// Checks a webhook against the agents it may start.
pub fn validate_webhook(
    name: &str,
    spec: &WebhookSpec,
    agents: &BTreeMap<String, crate::agent::AgentSpec>,
) -> Result<(), ExecSpecError> {
    let fail = |problem: String| ExecSpecError::Webhook { webhook: name.to_owned(), problem };
    check_task_source(name, &spec.agent, spec.kind.as_deref(), agents).map_err(fail)?;
    if !is_secret_ref(&spec.secret) {
        return Err(fail("secret must be `env:NAME` or `file:/path`".into()));
    }
    if let Some(pointer) = &spec.idempotency_pointer {
        if !pointer.starts_with('/') {
            return Err(fail(format!("idempotency_pointer `{pointer}` must start with `/`")));
        }
    }
    Ok(())
}

/// The Cedar action id of a connector's action: `connector.action`, and
/// `mcp.server.tool` for the tools of an MCP server, so a policy can tell a
/// third-party tool from one of our own connectors by its name alone.
pub fn cedar_action(connector: &str, kind: ConnectorKind, action: &str) -> String {
    match kind {
        ConnectorKind::Mcp => format!("mcp.{connector}.{action}"),
        _ => format!("{connector}.{action}"),
    }
}

/// Checks the Cedar schema and policies, and that every connector action is
/// an action the schema declares (as [`cedar_action`] names it).
pub fn validate_policy(policy: &PolicySpec, connectors: &BTreeMap<String, ConnectorSpec>) -> Result<(), ExecSpecError> {
    let fail = |problem: String| ExecSpecError::Policy(problem);
    if let Some(ttl) = &policy.approval_ttl {
        parse_duration(ttl).map_err(|err| fail(format!("approval_ttl: {err}")))?;
    }
    let policies = cedar_policy::PolicySet::from_str(&policy.policies)
        .map_err(|err| fail(format!("the policies do not parse: {}", render_diagnostic(&err))))?;
    if policy.schema.trim().is_empty() {
        if connectors.is_empty() && policy.policies.trim().is_empty() {
            return Ok(());
        }
        return Err(fail("a Cedar schema is required with connectors or policies".into()));
    }
    let (schema, _warnings) = cedar_policy::Schema::from_cedarschema_str(&policy.schema)
        .map_err(|err| fail(format!("the schema does not parse: {}", render_diagnostic(&err))))?;
    let declared: Vec<String> = schema.actions().map(|uid| uid.id().unescaped().to_owned()).collect();
    for (name, connector) in connectors {
        for action in connector.actions.keys() {
            let id = cedar_action(name, connector.kind, action);
            if !declared.contains(&id) {
                return Err(fail(format!("the schema does not declare action \"{id}\" (connector `{name}`)")));
            }
        }
    }
    let result = cedar_policy::Validator::new(schema).validate(&policies, cedar_policy::ValidationMode::Strict);
    if !result.validation_passed() {
        let errors: Vec<String> = result.validation_errors().map(|e| render_diagnostic(e)).collect();
        return Err(fail(format!("the policies do not match the schema: {}", errors.join("; "))));
    }
    Ok(())
}

/// A Cedar error with its help text, on one line.
pub(crate) fn render_diagnostic(err: &dyn miette::Diagnostic) -> String {
    let mut text = err.to_string();
    if let Some(help) = err.help() {
        text.push_str(&format!(" ({help})"));
    }
    text.replace('\n', " ")
}
