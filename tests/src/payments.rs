//! A payment API of the tests' own: a real HTTP server on loopback that
//! behaves as payment APIs do. Every `POST` needs an `Idempotency-Key`; the
//! first request under a key commits one effect and its response, and every
//! later request under the same key gets that response again without a new
//! effect. It can be told to fail before committing (503), to commit and
//! then answer 500, or to commit and answer too late (a lost reply), at
//! random with the given probabilities, or refuse permanently (422).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

/// How often each fault happens, per request (0.0 to 1.0).
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentFaults {
    /// Answer 422 (a permanent refusal) without committing anything.
    pub refuse: f64,
    /// Answer 503 without committing anything.
    pub fail_before: f64,
    /// Commit, then answer 500.
    pub fail_after: f64,
    /// Commit, then answer only after `hang` (the client has given up).
    pub drop_reply: f64,
    /// How long a dropped reply is held back.
    pub hang: Duration,
}

/// One effect the service committed.
#[derive(Debug, Clone)]
pub struct Effect {
    /// The idempotency key it was committed under.
    pub key: String,
    /// The path (`refunds`, `refunds/ID/void`, ...).
    pub path: String,
    /// The request body.
    pub body: Value,
    /// The id the service gave it.
    pub id: String,
    /// When it was committed.
    pub at: std::time::Instant,
    /// The W3C `traceparent` header it came with, if any.
    pub traceparent: Option<String>,
}

#[derive(Default)]
struct Ledger {
    responses: HashMap<String, Value>,
    effects: Vec<Effect>,
    requests: u64,
}

#[derive(Clone)]
struct Shared {
    ledger: Arc<Mutex<Ledger>>,
    faults: Arc<Mutex<PaymentFaults>>,
    notice: Arc<Mutex<Option<String>>>,
}

/// A running payment service.
pub struct PaymentService {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl PaymentService {
    /// Starts the service on a free loopback port.
    pub async fn start(faults: PaymentFaults) -> std::io::Result<PaymentService> {
        let shared = Shared { ledger: Arc::default(), faults: Arc::new(Mutex::new(faults)), notice: Arc::default() };
        let app = Router::new().route("/{*path}", post(charge)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(PaymentService { addr, shared, task })
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: PaymentFaults) {
        *self.shared.faults.lock().expect("faults lock") = faults;
    }

    /// From now on every response carries `notice` as its `notice` field
    /// (text a hostile or compromised service might send back).
    pub fn set_notice(&self, notice: Option<String>) {
        *self.shared.notice.lock().expect("notice lock") = notice;
    }

    /// Every committed effect, in order.
    pub fn effects(&self) -> Vec<Effect> {
        self.shared.ledger.lock().expect("ledger lock").effects.clone()
    }

    /// Requests received, repeats included.
    pub fn requests(&self) -> u64 {
        self.shared.ledger.lock().expect("ledger lock").requests
    }
}

impl Drop for PaymentService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn charge(
    State(shared): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "Idempotency-Key header required" })));
    };
    let faults = *shared.faults.lock().expect("faults lock");
    let roll: f64 = rand::thread_rng().gen();
    let (response, fresh) = {
        let mut ledger = shared.ledger.lock().expect("ledger lock");
        ledger.requests += 1;
        if let Some(stored) = ledger.responses.get(&key) {
            (stored.clone(), false)
        } else if rand::thread_rng().gen::<f64>() < faults.refuse {
            return (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "error": "card issuer refused" })));
        } else if roll < faults.fail_before {
            return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "try again" })));
        } else {
            let id = format!("py_{}", ledger.effects.len() + 1);
            let mut response = json!({ "id": id, "status": "succeeded", "request": body });
            if let Some(notice) = shared.notice.lock().expect("notice lock").clone() {
                response["notice"] = Value::String(notice);
            }
            let at = std::time::Instant::now();
            let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let effect = Effect { key: key.clone(), path: path.clone(), body: body.clone(), id, at, traceparent };
            ledger.effects.push(effect);
            ledger.responses.insert(key, response.clone());
            (response, true)
        }
    };
    if fresh {
        let after = roll - faults.fail_before;
        if after >= 0.0 && after < faults.fail_after {
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({ "error": "committed, then failed" })));
        }
        if after >= faults.fail_after && after < faults.fail_after + faults.drop_reply {
            tokio::time::sleep(faults.hang).await;
        }
    }
    (StatusCode::OK, Json(response))
}
