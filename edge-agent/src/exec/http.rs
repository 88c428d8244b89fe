//! The `http` connector: one REST call per attempt, with the intent's
//! idempotency key in an `Idempotency-Key` header, so an API that honours it
//! (as payment APIs do) performs the effect once however often it is sent.

use aios_shared::exec::ConnectorSpec;
use futures_util::future::BoxFuture;
use serde_json::{json, Map, Value};

use super::connector::{load_secret, render, render_body, Call, Connector, ConnectorError};

/// Calls a REST API.
pub struct HttpConnector {
    client: reqwest::Client,
    base_url: String,
    headers: Vec<(String, String)>,
    credential: Option<String>,
}

impl HttpConnector {
    /// A connector for `spec` (kind `http`).
    pub fn new(spec: &ConnectorSpec) -> Result<Self, String> {
        // No redirects: a 307/308 would resend the body (and the bearer
        // token) wherever the server points; a 3xx is a permanent failure.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| format!("cannot build an HTTP client: {err}"))?;
        Ok(Self {
            client,
            base_url: spec.base_url.clone().unwrap_or_default().trim_end_matches('/').to_owned(),
            headers: spec.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            credential: spec.credential.clone(),
        })
    }

    async fn call(&self, call: Call<'_>) -> Result<Value, ConnectorError> {
        let context = json!({ "args": call.args });
        // Arguments in the path are one segment each: `../`, `?` or `#` in an
        // argument cannot reach another endpoint.
        let path_context = json!({ "args": path_segments(call.args) });
        let path = call.spec.path.as_deref().map(|p| render(p, &path_context)).transpose()?.unwrap_or_default();
        let url = format!("{}{}", self.base_url, path);
        // The bundle's path template cannot move the request to another
        // host than the one the edge allowed (`@host`, `.evil.example`).
        let origin = |text: &str| {
            reqwest::Url::parse(text).ok().map(|u| (u.host_str().map(str::to_owned), u.port_or_known_default()))
        };
        if origin(&url).is_none() || origin(&url) != origin(&self.base_url) {
            return Err(ConnectorError::Permanent(format!("{url} is not on the connector's host")));
        }
        let method = call.spec.method.as_deref().unwrap_or("POST");
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ConnectorError::Permanent(format!("bad method {method}")))?;
        let mut request = self.client.request(method.clone(), &url).timeout(call.timeout);
        for (name, template) in self.headers.iter().map(|(k, v)| (k, v)).chain(call.spec.headers.iter()) {
            request = request.header(name.as_str(), render(template, &context)?);
        }
        if let Some(reference) = &self.credential {
            let secret = load_secret(reference).map_err(ConnectorError::Permanent)?;
            request = request.bearer_auth(secret.expose());
        }
        request = request.header("Idempotency-Key", call.key);
        if let Some(traceparent) = aios_daemon::telemetry::traceparent() {
            request = request.header("traceparent", traceparent);
        }
        if method != reqwest::Method::GET {
            let body = match &call.spec.body {
                Some(template) => render_body(template, call.args)?,
                None => call.args.clone(),
            };
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| classify_send_error(&url, err))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|err| {
            ConnectorError::Unknown(format!("HTTP {status} from {url}, but the body was lost: {err}"))
        })?;
        if call.spec.is_success(status) {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Ok(map_response(&call.spec.response, status, body));
        }
        let detail = format!("HTTP {status} from {url}: {}", snippet(&text));
        if call.spec.is_retryable(status) {
            Err(ConnectorError::Retryable(detail))
        } else {
            Err(ConnectorError::Permanent(detail))
        }
    }
}

impl Connector for HttpConnector {
    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, ConnectorError>> {
        Box::pin(self.call(call))
    }
}

/// A failure before any response: if the request never left (no connection),
/// retrying is safe; after that the server may have acted on it.
fn classify_send_error(url: &str, err: reqwest::Error) -> ConnectorError {
    if err.is_connect() {
        ConnectorError::Retryable(format!("cannot connect to {url}: {err}"))
    } else if err.is_timeout() {
        ConnectorError::Unknown(format!("no reply from {url} in time"))
    } else {
        ConnectorError::Unknown(format!("the exchange with {url} broke off: {err}"))
    }
}

fn map_response(mapping: &std::collections::BTreeMap<String, String>, status: u16, body: Value) -> Value {
    if mapping.is_empty() {
        return json!({ "status": status, "response": body });
    }
    let mut out = Map::new();
    out.insert("status".into(), json!(status));
    for (name, pointer) in mapping {
        out.insert(name.clone(), body.pointer(pointer).cloned().unwrap_or(Value::Null));
    }
    Value::Object(out)
}

fn snippet(text: &str) -> String {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The arguments with every string percent-encoded as one path segment.
fn path_segments(args: &Value) -> Value {
    const SEGMENT: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    match args {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = match value {
                        Value::String(text) => {
                            let encoded = percent_encoding::utf8_percent_encode(text, SEGMENT).to_string();
                            // `.` and `..` alone are path steps however encoded.
                            Value::String(if encoded == "." || encoded == ".." {
                                encoded.replace('.', "%2E")
                            } else {
                                encoded
                            })
                        }
                        other => other.clone(),
                    };
                    (key.clone(), value)
                })
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aios_shared::exec::{ActionSpec, ConnectorKind};
    use axum::http::{StatusCode, Uri};
    use axum::response::{IntoResponse, Redirect};

    use super::*;

    #[test]
    fn path_arguments_are_one_segment_each() {
        let args = json!({ "id": "../admin?all=1#top", "dot": "..", "n": 7 });
        let encoded = path_segments(&args);
        assert_eq!(encoded["id"], "..%2Fadmin%3Fall%3D1%23top");
        assert_eq!(encoded["dot"], "%2E%2E");
        assert_eq!(encoded["n"], 7);
    }

    /// Against a real server: a hostile argument stays inside its segment,
    /// and a redirect is not followed (the body is not resent elsewhere).
    #[tokio::test]
    async fn hostile_paths_and_redirects_go_nowhere_else() {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |uri: Uri| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(uri.to_string());
                if uri.path().starts_with("/moved") {
                    Redirect::permanent("/sink").into_response()
                } else {
                    (StatusCode::OK, "{}").into_response()
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let spec = ConnectorSpec {
            kind: ConnectorKind::Http,
            version: 1,
            base_url: Some(format!("http://{addr}")),
            ..serde_json::from_value(json!({ "kind": "http", "version": 1, "actions": {} })).unwrap()
        };
        let connector = HttpConnector::new(&spec).unwrap();
        let action = |path: &str| ActionSpec { path: Some(path.into()), ..ActionSpec::default() };
        let call = |spec: &'static ActionSpec, args: &'static Value| Call {
            action: "a",
            spec,
            args,
            key: "k",
            timeout: std::time::Duration::from_secs(5),
        };
        let orders: &'static ActionSpec = Box::leak(Box::new(action("/orders/{{ args.id }}")));
        let hostile: &'static Value = Box::leak(Box::new(json!({ "id": "../admin?all=1" })));
        connector.call(call(orders, hostile)).await.unwrap();
        let moved: &'static ActionSpec = Box::leak(Box::new(action("/moved")));
        let none: &'static Value = Box::leak(Box::new(json!({})));
        let err = connector.call(call(moved, none)).await.unwrap_err();
        assert!(matches!(&err, ConnectorError::Permanent(p) if p.contains("308")), "{err}");
        // A path template that would move the request to another host.
        let elsewhere: &'static ActionSpec = Box::leak(Box::new(action(".evil.example/x")));
        let err = connector.call(call(elsewhere, none)).await.unwrap_err();
        assert!(matches!(&err, ConnectorError::Permanent(p) if p.contains("not on the connector's host")), "{err}");
        assert_eq!(*seen.lock().unwrap(), ["/orders/..%2Fadmin%3Fall%3D1", "/moved"]);
    }
}
