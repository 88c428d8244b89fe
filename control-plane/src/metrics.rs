//! The control plane's `/metrics`: HTTP figures, plus fleet state read from
//! the database at scrape time (edges, tasks, approvals, audit, alarms).
//!
//! `/metrics` needs no authentication, so it can never take more than one
//! of the database's reader connections (authentication and sync need the
//! others): one scrape reads at a time, and figures read in the last
//! [`FRESH_FOR`] are served again; a request that finds a read running and
//! nothing fresh gets 503 with `Retry-After`.

use aios_daemon::metrics::{grouped, HttpMetrics, Scrape};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use rusqlite::Connection;

use crate::api::{ApiError, ApiState};

/// How long figures read from the database are served again.
pub const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// The control plane's long-lived metrics.
pub struct CpMetrics {
    /// Request counts and durations of the admin API and console.
    pub http: std::sync::Arc<HttpMetrics>,
    /// One database read for `/metrics` at a time.
    reading: tokio::sync::Semaphore,
    /// The last figures read, and when.
    last: std::sync::Mutex<Option<(std::time::Instant, Figures)>>,
}

impl Default for CpMetrics {
    fn default() -> CpMetrics {
        CpMetrics {
            http: std::sync::Arc::new(HttpMetrics::new("aios_cp")),
            reading: tokio::sync::Semaphore::new(1),
            last: std::sync::Mutex::new(None),
        }
    }
}

impl CpMetrics {
    /// Figures read at most [`FRESH_FOR`] before `now`, if any.
    fn fresh(&self, now: std::time::Instant) -> Option<Figures> {
        let last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.as_ref().filter(|(at, _)| now.saturating_duration_since(*at) < FRESH_FOR).map(|(_, f)| f.clone())
    }
}

#[derive(Clone)]
struct Figures {
    edges: Vec<(String, f64)>,
    tasks: Vec<(String, f64)>,
    cost: Vec<(String, f64)>,
    escalations: Vec<(String, f64)>,
    audit_events: f64,
    alarms: f64,
    bundle_version: f64,
    operator_events: f64,
}

fn figures(c: &Connection) -> Result<Figures, aios_daemon::db::DbError> {
    let scalar = |sql: &str| -> Result<f64, aios_daemon::db::DbError> { Ok(c.query_row(sql, [], |r| r.get(0))?) };
    Ok(Figures {
        edges: grouped(
            c,
            "SELECT CASE WHEN revoked_at_ms IS NOT NULL THEN 'revoked' WHEN connected THEN 'connected'
                ELSE 'offline' END, COUNT(*) FROM edges GROUP BY 1",
        )?,
        tasks: grouped(c, "SELECT state, COUNT(*) FROM task_view GROUP BY state")?,
        cost: grouped(c, "SELECT agent, SUM(cost_usd) FROM task_view GROUP BY agent")?,
        escalations: grouped(c, "SELECT agent, SUM(escalations) FROM task_view GROUP BY agent")?,
        audit_events: scalar("SELECT COUNT(*) FROM audit_events")?,
        alarms: scalar("SELECT COUNT(*) FROM alarms")?,
        bundle_version: scalar("SELECT COALESCE(MAX(version), 0) FROM bundles")?,
        operator_events: scalar("SELECT COUNT(*) FROM operator_events")?,
    })
}

/// `GET /metrics`.
pub async fn serve(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let metrics = &state.metrics;
    let f = match metrics.fresh(state.clock.instant()) {
        Some(f) => f,
        None => {
            let Ok(_permit) = metrics.reading.try_acquire() else {
                let mut busy = ApiError(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "a scrape is being read; retry in a second".into(),
                )
                .into_response();
                busy.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
                return Ok(busy);
            };
            let f = state.store.db.read(figures).await?;
            *metrics.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some((state.clock.instant(), f.clone()));
            f
        }
    };
    let mut scrape = Scrape::new(&state.metrics.http);
    scrape.gauge("aios_cp_connected_edges", "Edges with an open sync connection", state.registry.len() as f64);
    scrape.gauge_by("aios_cp_edges", "Enrolled edges by status", "status", f.edges);
    scrape.gauge_by("aios_cp_tasks", "Tasks the fleet reported, by state", "state", f.tasks);
    scrape.counter_by("aios_cp_model_cost_usd", "Model spend in US dollars, by agent", "agent", f.cost);
    scrape.counter_by("aios_cp_escalated_steps", "Steps sent to an escalation tier, by agent", "agent", f.escalations);
    scrape.gauge("aios_cp_audit_events", "Audit events stored, all edges", f.audit_events);
    scrape.gauge("aios_cp_audit_alarms", "Audit chain breaks found at ingest", f.alarms);
    scrape.gauge("aios_cp_bundle_version", "Latest published policy bundle version", f.bundle_version);
    scrape.gauge("aios_cp_operator_events", "Entries in the operator log", f.operator_events);
    Ok(scrape.into_response())
}
