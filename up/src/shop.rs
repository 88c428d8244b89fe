//! The sample shop `up` runs on loopback for the triage workload: orders to
//! look up and a refunds endpoint that honours idempotency keys, so a retried
//! refund is paid once. It is demo data, kept in memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Shop {
    /// Idempotency key (or a generated id) to the refund made for it.
    refunds: HashMap<String, Value>,
}

fn order(id: &str) -> Option<Value> {
    let (status, total, item) = match id {
        "A-1001" => ("delivered", 39, "blender"),
        "A-1002" => ("returned", 240, "espresso machine"),
        "A-1003" => ("in transit", 18, "coffee grinder brush"),
        "A-1004" => ("delivered", 12, "tea towel"),
        "A-1005" => ("delivered", 25, "kettle"),
        _ => return None,
    };
    let account = format!("acct-{}", id.trim_start_matches("A-"));
    Some(json!({ "id": id, "status": status, "total": total, "items": [item], "accounts": [account] }))
}

async fn lookup(Path(id): Path<String>) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    order(&id).map(Json).ok_or((StatusCode::NOT_FOUND, Json(json!({ "error": format!("no order {id}") }))))
}

async fn refund(
    State(shop): State<Arc<Mutex<Shop>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let order_id = body["order"].as_str().unwrap_or_default();
    let Some(order) = order(order_id) else {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": format!("no order {order_id}") })));
    };
    let amount: i64 = body["amount"].as_str().and_then(|a| a.parse().ok()).or(body["amount"].as_i64()).unwrap_or(0);
    if amount < 1 || amount > order["total"].as_i64().unwrap_or(0) {
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": "amount outside the order's total" })));
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut shop = shop.lock().expect("shop lock");
    let next = format!("rf-{}", shop.refunds.len() + 1);
    let key = key.unwrap_or_else(|| next.clone());
    let refund = shop
        .refunds
        .entry(key)
        .or_insert_with(|| json!({ "id": next, "order": order_id, "amount": amount, "account": body["account"] }))
        .clone();
    (StatusCode::CREATED, Json(refund))
}

/// Serves the shop on `addr` until the process ends; returns the bound address.
pub async fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let router = Router::new()
        .route("/orders/{id}", get(lookup))
        .route("/refunds", post(refund))
        .with_state(Arc::new(Mutex::new(Shop::default())));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%err, "sample shop stopped");
        }
    });
    Ok(bound)
}
