//! The edge's figures at `GET /metrics`, read from its database when
//! scraped; the HTTP counters and the encoder are `aios_daemon::metrics`.

use aios_daemon::db::DbError;
use aios_daemon::metrics::{grouped, Scrape};
use rusqlite::Connection;

/// What the edge reports at `/metrics`, read from its database.
#[derive(Debug, Default)]
pub struct EdgeFigures {
    tasks: Vec<(String, f64)>,
    steps: Vec<(String, f64)>,
    tokens_in: Vec<(String, f64)>,
    tokens_out: Vec<(String, f64)>,
    step_seconds: Vec<(String, f64)>,
    cost: Vec<(String, f64)>,
    intents: Vec<(String, f64)>,
    approvals: Vec<(String, f64)>,
    audit_events: f64,
    bundle_version: f64,
}

/// Reads the edge's figures (one read transaction).
pub fn edge_figures(c: &Connection) -> Result<EdgeFigures, DbError> {
    let scalar = |sql: &str| -> Result<f64, DbError> { Ok(c.query_row(sql, [], |r| r.get::<_, f64>(0))?) };
    Ok(EdgeFigures {
        tasks: grouped(c, "SELECT state, COUNT(*) FROM tasks GROUP BY state")?,
        steps: grouped(c, "SELECT COALESCE(tier, 'none'), COUNT(*) FROM task_steps GROUP BY 1")?,
        tokens_in: grouped(c, "SELECT COALESCE(tier, 'none'), SUM(tokens_in) FROM task_steps GROUP BY 1")?,
        tokens_out: grouped(c, "SELECT COALESCE(tier, 'none'), SUM(tokens_out) FROM task_steps GROUP BY 1")?,
        step_seconds: grouped(c, "SELECT COALESCE(tier, 'none'), SUM(latency_ms) / 1000.0 FROM task_steps GROUP BY 1")?,
        cost: grouped(c, "SELECT agent, SUM(cost_usd) FROM tasks GROUP BY agent")?,
        intents: grouped(c, "SELECT state, COUNT(*) FROM intents GROUP BY state")?,
        approvals: grouped(c, "SELECT state, COUNT(*) FROM approvals GROUP BY state")?,
        audit_events: scalar("SELECT COUNT(*) FROM audit_log")?,
        bundle_version: scalar("SELECT COALESCE((SELECT version FROM bundle), 0)")?,
    })
}

impl EdgeFigures {
    /// Adds every figure to a scrape.
    pub fn write(self, scrape: &mut Scrape, connected: bool) {
        scrape.gauge(
            "aios_edge_sync_connected",
            "1 while the sync link to the control plane is up",
            connected as u8 as f64,
        );
        scrape.gauge("aios_edge_bundle_version", "Version of the applied policy bundle", self.bundle_version);
        scrape.gauge_by("aios_edge_tasks", "Tasks by state", "state", self.tasks);
        scrape.counter_by("aios_edge_steps", "Task steps checkpointed, by model tier", "tier", self.steps);
        scrape.counter_by("aios_edge_model_input_tokens", "Prompt tokens, by tier", "tier", self.tokens_in);
        scrape.counter_by("aios_edge_model_output_tokens", "Completion tokens, by tier", "tier", self.tokens_out);
        scrape.counter_by("aios_edge_step_seconds", "Time spent in steps, by tier", "tier", self.step_seconds);
        scrape.counter_by("aios_edge_model_cost_usd", "Model spend in US dollars, by agent", "agent", self.cost);
        scrape.gauge_by("aios_edge_intents", "Side effects in the outbox, by state", "state", self.intents);
        scrape.gauge_by("aios_edge_approvals", "Approval requests, by state", "state", self.approvals);
        scrape.gauge("aios_edge_audit_events", "Events in the local audit chain", self.audit_events);
    }
}
