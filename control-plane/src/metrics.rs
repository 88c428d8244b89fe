//! The control plane's `/metrics`: HTTP figures, plus fleet state read from
//! the database at scrape time (edges, tasks, approvals, audit, alarms).

use aios_daemon::metrics::{grouped, HttpMetrics, Scrape};
use axum::extract::State;
use axum::response::Response;
use rusqlite::Connection;

use crate::api::{ApiError, ApiState};

/// The control plane's long-lived metrics.
pub struct CpMetrics {
    /// Request counts and durations of the admin API and console.
    pub http: std::sync::Arc<HttpMetrics>,
}

impl Default for CpMetrics {
    fn default() -> CpMetrics {
        CpMetrics { http: std::sync::Arc::new(HttpMetrics::new("aios_cp")) }
    }
}

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
    let f = state.store.db.read(figures).await?;
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
