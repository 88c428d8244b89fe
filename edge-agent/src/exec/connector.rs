//! The connector trait and what every connector shares: typed arguments,
//! templates over them, and the three ways an attempt can fail.
//!
//! A connector is one file: a struct built from its [`ConnectorSpec`] and an
//! [`Connector::execute`] that performs one attempt of one action, sending
//! the intent's idempotency key where the other side understands one.

use std::time::Duration;

use aios_shared::exec::{ActionSpec, ConnectorKind, ConnectorSpec};
use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

/// One attempt of one action.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The action's name.
    pub action: &'a str,
    /// Its definition.
    pub spec: &'a ActionSpec,
    /// The typed arguments (a JSON object).
    pub args: &'a Value,
    /// The intent's idempotency key: the same on every attempt.
    pub key: &'a str,
    /// How long the attempt may take.
    pub timeout: Duration,
}

/// How an attempt failed; which one decides what happens next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// Nothing happened, or the other side said to try again: retry with
    /// the same key after a backoff.
    #[error("retryable: {0}")]
    Retryable(String),
    /// It will never work (a 4xx, a bad address): dead-letter it.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The request may have taken effect (a timeout, a lost reply): the
    /// outcome is unknown, never `failed`; it is resolved by sending again
    /// with the same key.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// Performs actions of one kind of system.
pub trait Connector: Send + Sync {
    /// One attempt of `call`; the result is the action's mapped output.
    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, ConnectorError>>;
}

/// Builds the connector a spec declares.
pub fn build(name: &str, spec: &ConnectorSpec) -> Result<Box<dyn Connector>, String> {
    let connector: Result<Box<dyn Connector>, String> = match spec.kind {
        ConnectorKind::Http => super::http::HttpConnector::new(spec).map(|c| Box::new(c) as Box<dyn Connector>),
        ConnectorKind::Email => super::email::EmailConnector::new(spec).map(|c| Box::new(c) as Box<dyn Connector>),
        ConnectorKind::File => Ok(Box::new(super::file::FileConnector::new(spec))),
        ConnectorKind::Mcp => super::mcp::McpConnector::new(spec).map(|c| Box::new(c) as Box<dyn Connector>),
    };
    connector.map_err(|err| format!("connector `{name}`: {err}"))
}

/// Turns rendered argument strings into the JSON types the action's schema
/// declares, then checks them against the schema.
pub fn typed_args(spec: &ActionSpec, rendered: &std::collections::BTreeMap<String, String>) -> Result<Value, String> {
    let properties = spec.schema.as_ref().and_then(|s| s.get("properties")).and_then(Value::as_object);
    let mut args = Map::new();
    for (name, text) in rendered {
        let declared = properties.and_then(|p| p.get(name)).and_then(|p| p.get("type")).and_then(Value::as_str);
        let value = match declared {
            Some("integer") => text
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("argument `{name}` = {text:?} is not an integer"))?,
            Some("number") => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
                .ok_or_else(|| format!("argument `{name}` = {text:?} is not a number"))?,
            Some("boolean") => match text.trim() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => return Err(format!("argument `{name}` = {text:?} is not true or false")),
            },
            Some("array") | Some("object") => serde_json::from_str(text)
                .map_err(|err| format!("argument `{name}` is not JSON of the declared type: {err}"))?,
            _ => Value::String(text.clone()),
        };
        args.insert(name.clone(), value);
    }
    let args = Value::Object(args);
    if let Some(schema) = &spec.schema {
        aios_shared::exec::check_args(schema, &args)?;
    }
    Ok(args)
}

/// Renders a template over `context`.
pub fn render(template: &str, context: &Value) -> Result<String, ConnectorError> {
    aios_shared::agent::render_template(template, context).map_err(ConnectorError::Permanent)
}

/// Renders a JSON body template: every string leaf is a template, and a leaf
/// that is exactly `{{ args.NAME }}` takes the argument's JSON value.
pub fn render_body(template: &Value, args: &Value) -> Result<Value, ConnectorError> {
    Ok(match template {
        Value::String(text) => {
            let trimmed = text.trim();
            let whole = trimmed
                .strip_prefix("{{")
                .and_then(|t| t.strip_suffix("}}"))
                .map(str::trim)
                .and_then(|t| t.strip_prefix("args."))
                .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            match whole.and_then(|name| args.get(name)) {
                Some(value) => value.clone(),
                None => Value::String(render(text, &json!({ "args": args }))?),
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render_body(v, args)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), render_body(v, args)?))).collect::<Result<_, ConnectorError>>()?,
        ),
        other => other.clone(),
    })
}

/// Loads a secret reference (`env:NAME`, `file:/path`).
pub fn load_secret(reference: &str) -> Result<crate::model_calls::cloud::Credential, String> {
    crate::model_calls::cloud::Credential::load(reference).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(schema: Value) -> ActionSpec {
        ActionSpec { schema: Some(schema), ..ActionSpec::default() }
    }

    #[test]
    fn arguments_take_the_types_the_schema_declares() {
        let spec = action(json!({
            "type": "object",
            "properties": {
                "amount": { "type": "integer", "maximum": 1000 },
                "note": { "type": "string" },
                "tags": { "type": "array" },
            },
        }));
        let rendered = [("amount", "42"), ("note", "7"), ("tags", "[\"a\"]")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(typed_args(&spec, &rendered).unwrap(), json!({ "amount": 42, "note": "7", "tags": ["a"] }));
        let too_much = [("amount".to_owned(), "5000".to_owned())].into_iter().collect();
        assert!(typed_args(&spec, &too_much).unwrap_err().contains("maximum"));
        let words = [("amount".to_owned(), "fifty".to_owned())].into_iter().collect();
        assert!(typed_args(&spec, &words).unwrap_err().contains("not an integer"));
    }

    #[test]
    fn a_body_keeps_argument_types_where_a_leaf_is_one_argument() {
        let args = json!({ "amount": 42, "who": "ann" });
        let body = json!({ "amount": "{{ args.amount }}", "memo": "refund for {{ args.who }}", "n": 1 });
        assert_eq!(render_body(&body, &args).unwrap(), json!({ "amount": 42, "memo": "refund for ann", "n": 1 }));
    }
}
