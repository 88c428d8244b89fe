//! Prometheus metrics (`GET /metrics`, OpenMetrics text): the pieces both
//! daemons use.
//!
//! Two kinds of figures: HTTP request counts and durations, kept in memory by
//! the [`track`] middleware; and state read from SQLite when scraped (tasks
//! by state, tokens, cost, intents, the audit backlog), so the numbers are
//! the database's, survive restarts, and cost nothing between scrapes.
//! Names carry their unit (`_seconds`, `_usd`) and counters end in `_total`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rusqlite::Connection;

use crate::db::DbError;

type Labels = Vec<(String, String)>;

fn new_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Request counts and durations of one HTTP server.
#[derive(Clone)]
pub struct HttpMetrics {
    prefix: &'static str,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    /// Metrics named `{prefix}_http_*`.
    pub fn new(prefix: &'static str) -> HttpMetrics {
        HttpMetrics {
            prefix,
            requests: Family::default(),
            duration: Family::new_with_constructor(new_histogram as fn() -> Histogram),
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            format!("{}_http_requests", self.prefix),
            "HTTP requests answered, by method and status",
            self.requests.clone(),
        );
        registry.register_with_unit(
            format!("{}_http_request_duration", self.prefix),
            "Time to answer an HTTP request, by method",
            prometheus_client::registry::Unit::Seconds,
            self.duration.clone(),
        );
    }
}

/// The method as a label: the standard methods by name, anything else as
/// `other`, so a client inventing methods cannot grow the series without
/// bound (metrics are counted before authentication).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// Middleware that counts and times every request.
pub async fn track(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let method = method_label(request.method()).to_owned();
    let started = crate::clock::instant();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics.requests.get_or_create(&vec![("method".into(), method.clone()), ("status".into(), status)]).inc();
    metrics
        .duration
        .get_or_create(&vec![("method".into(), method)])
        .observe(crate::clock::instant().saturating_duration_since(started).as_secs_f64());
    response
}

/// One scrape: figures read now, encoded with the long-lived HTTP metrics.
pub struct Scrape {
    registry: Registry,
}

impl Scrape {
    /// A scrape that includes `http`'s figures.
    pub fn new(http: &HttpMetrics) -> Scrape {
        let mut registry = Registry::default();
        http.register(&mut registry);
        Scrape { registry }
    }

    /// A value that can go up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let gauge = Gauge::<f64, AtomicU64>::default();
        gauge.set(value);
        self.registry.register(name, help, gauge);
    }

    /// A gauge with one label, one series per `(label value, value)`.
    pub fn gauge_by(&mut self, name: &str, help: &str, label: &str, values: impl IntoIterator<Item = (String, f64)>) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (key, value) in values {
            family.get_or_create(&vec![(label.to_owned(), key)]).set(value);
        }
        self.registry.register(name, help, family);
    }

    /// A running total read from storage (the name gains `_total`).
    pub fn counter_by(&mut self, name: &str, help: &str, label: &str, values: impl IntoIterator<Item = (String, f64)>) {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (key, value) in values {
            family.get_or_create(&vec![(label.to_owned(), key)]).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    /// The OpenMetrics text response.
    pub fn into_response(self) -> Response {
        let mut body = String::new();
        if let Err(err) = encode(&mut body, &self.registry) {
            tracing::error!(%err, "cannot encode metrics");
        }
        ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
    }
}

/// `(key, value)` rows of a two-column query.
pub fn grouped(c: &Connection, sql: &str) -> Result<Vec<(String, f64)>, DbError> {
    let mut stmt = c.prepare_cached(sql)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get::<_, f64>(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        let method = |text: &str| axum::http::Method::from_bytes(text.as_bytes()).expect("a method");
        assert_eq!(method_label(&method("GET")), "GET");
        assert_eq!(method_label(&method("PATCH")), "PATCH");
        let invented: std::collections::BTreeSet<&str> =
            (0..1000).map(|i| method_label(&method(&format!("X{i}")))).collect();
        assert_eq!(invented.into_iter().collect::<Vec<_>>(), ["other"]);
    }

    #[test]
    fn a_scrape_encodes_units_totals_and_labels() {
        let http = HttpMetrics::new("aios_test");
        http.requests.get_or_create(&vec![("method".into(), "GET".into()), ("status".into(), "200".into())]).inc();
        http.duration.get_or_create(&vec![("method".into(), "GET".into())]).observe(0.003);
        let mut scrape = Scrape::new(&http);
        scrape.gauge_by("aios_test_tasks", "Tasks", "state", [("queued".to_owned(), 2.0)]);
        scrape.counter_by("aios_test_cost_usd", "Cost", "agent", [("triage".to_owned(), 0.25)]);
        let mut text = String::new();
        encode(&mut text, &scrape.registry).unwrap();
        for expected in [
            "aios_test_http_requests_total{method=\"GET\",status=\"200\"} 1",
            "aios_test_http_request_duration_seconds_count{method=\"GET\"} 1",
            "aios_test_tasks{state=\"queued\"} 2.0",
            "aios_test_cost_usd_total{agent=\"triage\"} 0.25",
            "# EOF",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
