//! Attacks against real binaries, one test per finding of issue 24 fixed so
//! far; each performs the attack and checks that it fails.
//!
//! - A certificate-less QUIC client floods the control plane with streams,
//!   unfinished frames and connections (finding 1).
//! - Nobody reaches an edge's gateway on a non-loopback address without a
//!   key (finding 2).
//! - A captured webhook replayed with a rewritten signature header makes no
//!   second task (finding 3).
//! - A second `aios-edge run` on a running edge's data directory refuses to
//!   start instead of requeueing the first one's running tasks (finding 14).
//! - A login flood with huge and random names leaves the control plane's
//!   memory and operator log bounded, and the admin able to log in
//!   (finding 5).
//! - A local process without the edge's token, or a web page reaching the
//!   loopback API by DNS rebinding or a cross-site form, changes nothing
//!   (finding 4).
//! - A viewer sees that a refund waits, never its arguments, input,
//!   reasoning or audit payloads (finding 8).
//! - An enrolled edge that forges another edge's approval id into its own
//!   audit log cannot take over or confuse the decision (finding 13).
//! - The kill switch at `all` stops a running gateway stream and every
//!   model call (finding 22).
//! - An edge cannot choose its labels; they come from its token (finding 12).
//! - A stored chain whose checkpoint was rewritten, every hash recomputed,
//!   fails verification (finding 7).
//! - The admin API on a network address answers only over TLS, with a
//!   `Secure` session cookie (finding 11).
//! - Bundles that name the machine's files, environment variables, outside
//!   directories or programs are refused by the edge (finding 20).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_daemon::transport::{
    self, MAX_BIDI_STREAMS, MAX_FIRST_FRAME_LEN, SERVER_NAME, UNAUTHENTICATED_RECEIVE_WINDOW,
};
use aios_edge_agent::http::webhook;
use aios_shared::wire::{EnrollRequest, ErrorCode, Frame};
use aios_tests::{addr, bins, fleet_with, wait_for, wait_synced, ControlPlaneProc, EdgeProc};
use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(180);

/// The control plane's first-frame deadline, and how late its close may
/// arrive on a loaded test machine.
const DEADLINE: Duration = Duration::from_secs(10);
const DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// How much the control plane's resident memory may grow under the flood.
///
/// 64 unauthenticated connections (the cap) may each have at most 64 KiB
/// of stream data buffered (the unauthenticated connection window) and a
/// first frame of at most 32 KiB allocated: 6 MiB in all, plus each
/// connection's TLS and QUIC state and the allocator's slack (about 6 MiB
/// grew in all when measured). With quinn's defaults one connection alone
/// could pin about 125 MB (100 streams of 1.25 MB unread), connections
/// were unlimited and none was ever closed.
const RSS_GROWTH_BOUND_KIB: u64 = 32 * 1024;

/// Resident memory of a process, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .context("no VmRSS line")
}

/// Samples a process's resident memory every 20 ms; the peak so far.
struct RssPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (task_peak, task_stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !task_stop.load(Ordering::Relaxed) {
                if let Ok(rss) = rss_kib(pid) {
                    task_peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssPeak { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A QUIC client on `source` (any 127.0.0.0/8 address is loopback) that
/// presents no certificate and pins the control plane's CA, as an attacker
/// holding nothing but the CA fingerprint (public in every token) would.
fn hostile_endpoint(cp: &ControlPlaneProc, source: &str) -> anyhow::Result<quinn::Endpoint> {
    let fingerprint = aios_shared::token::EnrollToken::parse(&cp.token("1m")?)?.ca_fingerprint;
    let config = aios_edge_agent::sync::identity::enrollment_client_config(fingerprint)?;
    let mut endpoint = quinn::Endpoint::client(addr(&format!("{source}:0")))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// What one hostile connection attempt achieved.
#[derive(Debug)]
enum Attempt {
    /// Refused before its handshake (QUIC `CONNECTION_REFUSED`).
    Refused,
    /// Connected and was held open by the server until it closed it.
    Held {
        /// Bidirectional streams it could open (of 200 tried).
        streams: usize,
        /// Whether a unidirectional stream could be opened.
        uni: bool,
        /// Whether the server accepts datagrams.
        datagrams: bool,
        /// Stream bytes the server's flow control let it send.
        bytes: usize,
        /// From connected to closed.
        held: Duration,
        /// The server's close reason.
        reason: String,
    },
}

/// Connects without a certificate, opens up to 200 streams, starts a first
/// frame on the first and never completes it, fills every other stream as
/// far as flow control allows, and waits for the server to close.
async fn hostile_connection(
    endpoint: quinn::Endpoint,
    server: SocketAddr,
    open: Arc<AtomicUsize>,
) -> anyhow::Result<Attempt> {
    let connection = match endpoint.connect(server, SERVER_NAME)?.await {
        Ok(connection) => connection,
        Err(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            return Ok(Attempt::Refused)
        }
        Err(err) => bail!("connection attempt failed unexpectedly: {err}"),
    };
    let connected = Instant::now();
    open.fetch_add(1, Ordering::SeqCst);
    let mut streams = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while streams.len() < 200 {
            match connection.open_bi().await {
                Ok(stream) => streams.push(stream),
                Err(_) => break,
            }
        }
    })
    .await;
    let n_streams = streams.len();
    let mut bytes = 0;
    let chunk = vec![0u8; 16 * 1024];
    for (idx, (send, _)) in streams.iter_mut().enumerate() {
        let mut budget = if idx == 0 {
            // A first frame of the largest size allowed, one byte short.
            send.write_all(&(MAX_FIRST_FRAME_LEN as u32).to_be_bytes()).await?;
            bytes += 4;
            MAX_FIRST_FRAME_LEN - 1
        } else {
            2 * 1024 * 1024
        };
        while budget > 0 {
            let n = budget.min(chunk.len());
            match tokio::time::timeout(Duration::from_millis(300), send.write(&chunk[..n])).await {
                Ok(Ok(written)) => {
                    bytes += written;
                    budget -= written;
                }
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    let uni = tokio::time::timeout(Duration::from_millis(200), connection.open_uni()).await.is_ok_and(|s| s.is_ok());
    let datagrams = connection.max_datagram_size().is_some();
    let reason = match tokio::time::timeout(DEADLINE * 3, connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => String::from_utf8_lossy(&close.reason).into_owned(),
        Ok(other) => other.to_string(),
        Err(_) => "still open".to_owned(),
    };
    let held = connected.elapsed();
    open.fetch_sub(1, Ordering::SeqCst);
    drop(streams);
    Ok(Attempt::Held { streams: n_streams, uni, datagrams, bytes, held, reason })
}

/// Launches `count` hostile connections from `source` at once.
fn flood(
    cp: &ControlPlaneProc,
    source: &str,
    count: usize,
    open: &Arc<AtomicUsize>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<Attempt>>>> {
    let endpoint = hostile_endpoint(cp, source)?;
    let server = addr(&cp.sync_addr());
    Ok((0..count).map(|_| tokio::spawn(hostile_connection(endpoint.clone(), server, open.clone()))).collect())
}

/// Waits for every attempt; the held ones, and how many were refused.
async fn outcomes(
    attempts: Vec<tokio::task::JoinHandle<anyhow::Result<Attempt>>>,
) -> anyhow::Result<(Vec<Attempt>, usize)> {
    let mut held = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await?? {
            Attempt::Refused => refused += 1,
            other => held.push(other),
        }
    }
    Ok((held, refused))
}

/// Every held connection got at most what the limits allow, and the server
/// closed it at its first-frame deadline.
fn assert_held_within_limits(held: &[Attempt]) {
    for attempt in held {
        let Attempt::Held { streams, uni, datagrams, bytes, held, reason } = attempt else { continue };
        assert_eq!(*streams, MAX_BIDI_STREAMS as usize, "{attempt:?}");
        assert!(!uni && !datagrams, "{attempt:?}");
        assert!(*bytes <= UNAUTHENTICATED_RECEIVE_WINDOW as usize, "{attempt:?}");
        assert!(reason.contains("no complete first frame"), "{attempt:?}");
        assert!(*held >= DEADLINE - Duration::from_secs(1) && *held <= DEADLINE + DEADLINE_SLACK, "{attempt:?}");
    }
}

/// One enrolment attempt with a made-up token from `endpoint`; the reply.
async fn bogus_enrolment(endpoint: &quinn::Endpoint, server: SocketAddr) -> anyhow::Result<Frame> {
    let connection = endpoint.connect(server, SERVER_NAME)?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let request = EnrollRequest {
        token: "guessed-secret".into(),
        csr_der: Vec::new(),
        name: "intruder".into(),
        labels: Vec::new(),
    };
    transport::write_frame(&mut send, &Frame::Enroll(request)).await?;
    let _ = send.finish();
    let reply = transport::read_frame(&mut recv).await?.context("no reply")?;
    connection.close(0u32.into(), b"done");
    Ok(reply)
}

/// Finding 1. A client without a certificate opens 20 connections from one
/// address, 200 streams on each, and writes without ever finishing a frame;
/// then 72 connections from 9 addresses; then guesses enrolment tokens.
/// The control plane admits 8 unauthenticated connections per address and
/// 64 in all, refuses the rest before their handshake, lets each one open a
/// single stream and send at most its 64 KiB window, closes each at its
/// 10 s first-frame deadline, slows the guesser down after 10 failures, and
/// keeps serving its edges throughout: an enrolled edge keeps uploading and
/// a new one enrols and connects from another address mid-attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_quic_flood() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.start()?;
    wait_for("the edge to connect", LONG, || async { Ok(cp.edge(&edge.edge_id).await?["connected"] == true) }).await?;
    wait_synced(&cp, &edge, LONG).await?;
    let pid = cp.pid().context("the control plane runs")?;
    let baseline = rss_kib(pid)?;
    let rss = RssPeak::start(pid);

    // One address, 20 connections: 8 held, 12 refused.
    let open = Arc::new(AtomicUsize::new(0));
    let attack = flood(&cp, "127.0.0.2", 20, &open)?;
    wait_for("the attack to hold its connections", LONG, || async { Ok(open.load(Ordering::SeqCst) == 8) }).await?;
    // Meanwhile the edge keeps uploading, and another enrols and connects.
    let head = edge.emit(500)?;
    assert_eq!(wait_synced(&cp, &edge, LONG).await?, head);
    let second_token = cp.token("10m")?;
    let (second_bins, second_dir, sync_addr) = (bins.clone(), tmp.path().join("second"), cp.sync_addr());
    let mut second =
        tokio::task::spawn_blocking(move || EdgeProc::enroll(&second_bins, &second_dir, &sync_addr, &second_token))
            .await??;
    second.start()?;
    wait_for("the new edge to connect", LONG, || async { Ok(cp.edge(&second.edge_id).await?["connected"] == true) })
        .await?;
    assert_eq!(open.load(Ordering::SeqCst), 8, "the edges were served while the attack held its connections");
    let (held, refused) = outcomes(attack).await?;
    assert_eq!((held.len(), refused), (8, 12), "{held:#?}");
    assert_held_within_limits(&held);

    // Guessed enrolment tokens from a third address: 10 failures, then slowed down.
    let guesser = hostile_endpoint(&cp, "127.0.0.3")?;
    for attempt in 0..12 {
        let reply = bogus_enrolment(&guesser, addr(&cp.sync_addr())).await?;
        let Frame::Error(error) = reply else { bail!("enrolment with a guessed token answered {reply:?}") };
        if attempt < 10 {
            assert_eq!(error.code, ErrorCode::BadToken, "attempt {attempt}: {}", error.message);
        } else {
            assert!(error.message.contains("too many failed enrolments"), "attempt {attempt}: {}", error.message);
        }
    }

    // Nine addresses, 8 connections each: at most 64 unauthenticated in all.
    let mut attack = Vec::new();
    for n in 4..13 {
        attack.extend(flood(&cp, &format!("127.0.0.{n}"), 8, &open)?);
    }
    let (held, refused) = outcomes(attack).await?;
    assert_eq!(held.len() + refused, 72);
    assert!(held.len() <= 64 && refused >= 8, "{} held, {refused} refused", held.len());
    assert_held_within_limits(&held);

    let peak = rss.peak();
    eprintln!("control plane RSS: {baseline} KiB before, {peak} KiB at the peak of the flood");
    assert!(
        peak.saturating_sub(baseline) <= RSS_GROWTH_BOUND_KIB,
        "RSS grew from {baseline} KiB to {peak} KiB under the flood (bound: {RSS_GROWTH_BOUND_KIB} KiB)"
    );
    // Still serving: the first edge's next events arrive.
    let head = edge.emit(100)?;
    assert_eq!(wait_synced(&cp, &edge, LONG).await?, head);
    Ok(())
}

const GATEWAY_KEY: &str = "gateway-key-for-office-apps";
const API_TOKEN: &str = "api-token-of-this-edge";

/// Sends `method path` with `key` as bearer token (if any); the status and body.
async fn gateway_call(
    edge: &EdgeProc,
    (method, path, body): &(Method, &str, Option<Value>),
    key: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut request = reqwest::Client::new().request(method.clone(), format!("http://{}{path}", edge.api_addr()));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Finding 2. An edge serves its API and gateway on 0.0.0.0. Without an API
/// token it refuses to start there. With one (and no gateway key, the
/// configuration that used to leave the gateway open), every gateway route
/// answers 401 to a request without the token or with a wrong one, and
/// serves one with it; a gateway key, once configured, is accepted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_on_a_network_address_without_a_key() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let cp = ControlPlaneProc::start(&bins, &tmp.path().join("cp")).await?;
    let mut edge = EdgeProc::enroll(&bins, &tmp.path().join("edge"), &cp.sync_addr(), &cp.token("10m")?)?;
    edge.api_host = "0.0.0.0".into();
    let config = tmp.path().join("edge.toml");
    let config_arg = config.to_str().context("utf-8 path")?.to_owned();
    edge.run_args = vec!["--gateway".into(), "--config".into(), config_arg];
    edge.env = vec![("AIOS_TEST_GATEWAY_KEY".into(), GATEWAY_KEY.into())];

    // No token: refused before anything listens.
    std::fs::write(&config, "[gateway]\n")?;
    let err = edge.start().expect_err("an exposed API without a token must not start");
    assert!(format!("{err:#}").contains("beyond loopback, only with api_token"), "{err:#}");

    let chat = json!({ "model": "smollm2-135m-instruct", "max_tokens": 1,
                       "messages": [{ "role": "user", "content": "Hello" }] });
    let embed = json!({ "model": "all-minilm-l6-v2", "input": "Hello" });
    let gateway_routes = [
        (Method::POST, "/v1/chat/completions", Some(chat)),
        (Method::POST, "/v1/embeddings", Some(embed)),
        (Method::GET, "/v1/models", None),
        (Method::GET, "/v1/models/smollm2-135m-instruct", None),
    ];
    let refused_only = [(Method::GET, "/v1/no-such-route", None), (Method::GET, "/v1/tasks", None)];
    let wrong_keys = [None, Some("wrong-key"), Some(&API_TOKEN[1..]), Some(&GATEWAY_KEY[1..])];

    for (config_text, keys) in [
        (format!("api_token = \"{API_TOKEN}\"\n[gateway]\n"), vec![API_TOKEN]),
        (
            format!("api_token = \"{API_TOKEN}\"\n[gateway]\ntoken = \"env:AIOS_TEST_GATEWAY_KEY\"\n"),
            vec![API_TOKEN, GATEWAY_KEY],
        ),
    ] {
        std::fs::write(&config, config_text)?;
        edge.start()?;
        let models = &gateway_routes[2];
        wait_for("the gateway to serve", LONG, || async {
            Ok(gateway_call(&edge, models, Some(API_TOKEN)).await?.0 == 200)
        })
        .await?;
        for route in gateway_routes.iter().chain(&refused_only) {
            for key in wrong_keys {
                let (status, body) = gateway_call(&edge, route, key).await?;
                assert_eq!(status, 401, "{} {} with {key:?}: {body}", route.0, route.1);
            }
        }
        for key in keys {
            for route in &gateway_routes {
                let (status, body) = gateway_call(&edge, route, Some(key)).await?;
                assert_eq!(status, 200, "{} {}: {body}", route.0, route.1);
            }
        }
    }
    Ok(())
}

const WEBHOOK_SECRET: &[u8] = b"whsec_attack_test";

/// A webhook without an idempotency pointer: the delivery itself is the key.
fn webhook_bundle(secret_file: &std::path::Path) -> String {
    format!(
        r#"
autonomy = "autonomous"
valid_for = "1d"

[webhooks.orders]
agent = "note"
secret = "file:{}"

[agents.note]
version = 1
memory = {{ write = ["orders"] }}

[[agents.note.steps]]
id = "save"
kind = "record_put"
namespace = "orders"
key = "order-{{{{ input.order }}}}"
value = "{{\"seen\": true}}"
"#,
        secret_file.display()
    )
}

/// Finding 3. A captured webhook delivery is replayed within its 5-minute
/// window with the signature header rewritten in every way the old parser
/// tolerated. Each rewrite is refused as malformed or, where it still
/// verifies, names the task the original made: one task in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_replay_with_mutated_signature_header() -> anyhow::Result<()> {
    let files = tempfile::tempdir()?;
    let secret_file = files.path().join("webhook-secret");
    std::fs::write(&secret_file, WEBHOOK_SECRET)?;
    let (_tmp, _cp, edge) = fleet_with(&bins!(), &webhook_bundle(&secret_file)).await?;
    let http = reqwest::Client::new();
    let deliver = |headers: Vec<String>, body: Vec<u8>| {
        let mut request = http
            .post(format!("http://{}/v1/webhooks/orders", edge.api_addr()))
            .header("content-type", "application/json")
            .body(body);
        for header in headers {
            request = request.header(webhook::SIGNATURE_HEADER, header);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            anyhow::Ok((status, response.json::<Value>().await?))
        }
    };

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let body = serde_json::to_vec(&json!({ "order": "o-1" }))?;
    let captured = webhook::sign(WEBHOOK_SECRET, now, &body);
    let (status, first) = deliver(vec![captured.clone()], body.clone()).await?;
    assert_eq!(status, 201, "{first}");
    let task = first["task"].clone();

    let mac = captured.split_once(",v1=").context("a v1 entry")?.1.to_owned();
    let other_mac = "ab".repeat(32);
    let refused = [
        vec![format!("{captured},x=1")],
        vec![format!("t={now}, v1={mac}")],
        vec![format!("t={now},v1= {mac}")],
        vec![format!("t={now},v1={mac},v1={mac}")],
        vec![format!("v1={mac},t={now}")],
        vec![format!("t={now},t={now},v1={mac}")],
        vec![format!("t=0{now},v1={mac}")],
        vec![format!("t={now},v1={}", mac.to_uppercase())],
        vec![format!("t={now},v1={mac},v1={other_mac},v1={}", "cd".repeat(32))],
        vec![captured.clone(), format!("{captured},x=1")],
        vec![captured.clone(), captured.clone()],
    ];
    for headers in refused {
        let (status, reply) = deliver(headers.clone(), body.clone()).await?;
        assert_eq!(status, 401, "{headers:?}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("malformed"), "{headers:?}: {message}");
    }
    // Rewrites that still verify (an extra MAC as a rotating sender adds,
    // in either order, and the exact replay) name the same task.
    let deduplicated =
        [format!("{captured},v1={other_mac}"), format!("t={now},v1={other_mac},v1={mac}"), captured.clone()];
    for header in deduplicated {
        let (status, reply) = deliver(vec![header.clone()], body.clone()).await?;
        assert_eq!((status, &reply["task"], &reply["created"]), (200, &task, &json!(false)), "{header}: {reply}");
    }
    // A timestamp moved within the window breaks the MAC.
    let moved = captured.replace(&format!("t={now}"), &format!("t={}", now + 1));
    let (status, reply) = deliver(vec![moved], body.clone()).await?;
    assert_eq!(status, 401, "{reply}");

    let (_, tasks) = edge.api(Method::GET, "/v1/tasks", None).await?;
    let tasks = tasks["tasks"].as_array().context("a task list")?;
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    assert_eq!(tasks[0]["id"], task);
    Ok(())
}

/// A second daemon on the same data directory would put the first one's
/// running tasks back in the queue and could run one intent twice at once
/// (finding 14): it refuses to start, and touches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_data_directory() -> anyhow::Result<()> {
    let (_tmp, _cp, edge) = fleet_with(&bins!(), "autonomy = \"autonomous\"\nvalid_for = \"1d\"\n").await?;
    let before = edge.api(Method::GET, "/v1/health", None).await?.1;
    let second = std::process::Command::new(&bins!().edge)
        .args(["--data-dir".as_ref(), edge.dir.as_os_str()])
        .args(["run", "--api-listen", "127.0.0.1:0"])
        .output()?;
    assert!(!second.status.success(), "a second daemon started");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("another aios-edge runs on the data directory"), "{said}");
    let after = edge.api(Method::GET, "/v1/health", None).await?.1;
    assert_eq!(before["edge_id"], after["edge_id"], "the first daemon still serves");
    Ok(())
}

/// Posts a console login form; returns the status.
async fn log_in(http: &reqwest::Client, url: &str, name: &str, password: &str) -> anyhow::Result<u16> {
    let response =
        http.post(format!("{url}/console/login")).form(&[("name", name), ("password", password)]).send().await?;
    Ok(response.status().as_u16())
}

fn operator_events(cp: &ControlPlaneProc) -> anyhow::Result<i64> {
    let conn = rusqlite::Connection::open(cp.dir.join("control-plane.db"))?;
    Ok(conn.query_row("SELECT COUNT(*) FROM operator_events", [], |row| row.get(0))?)
}

/// Before: names of any length, limiter keys never dropped, every attempt
/// (rate-limited ones too) appended to the hash-chained operator log, and
/// five failures a minute from anywhere locked `admin` out (finding 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_with_huge_and_random_names() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlaneProc::start(&bins!(), &tmp.path().join("cp")).await?;
    let created = cp.cli_ok(&["user", "add", "alice", "--role", "admin"])?;
    let password = created.split("password (shown once): ").nth(1).context("a generated password")?.trim().to_owned();
    let url = std::fs::read_to_string(cp.dir.join("admin.url"))?.trim().to_owned();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let pid = cp.pid().context("the control plane runs")?;
    let (rss_before, events_before) = (rss_kib(pid)?, operator_events(&cp)?);

    // A 1 MiB name is not read: 413, or the connection closed before the
    // body was sent in full (the client then reports a broken pipe or a
    // connection closed mid-request, whichever it notices first).
    let huge = "n".repeat(1 << 20);
    for _ in 0..50 {
        match log_in(&http, &url, &huge, "x").await {
            Ok(status) => assert_eq!(status, 413),
            Err(err) => {
                let closed = err.downcast_ref::<reqwest::Error>().is_some_and(|e| e.is_request() && !e.is_timeout());
                assert!(closed, "{err:#}");
            }
        }
    }
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut rss_first = 0;
    for i in 0..2_000 {
        let name = format!("user-{i:05}-{:016x}", rand::random::<u64>());
        *statuses.entry(log_in(&http, &url, &name, "guess").await?).or_default() += 1;
        if i == 0 {
            // The first check allocates Argon2's memory (19 MiB) for good.
            rss_first = rss_kib(pid)?;
        }
    }
    assert!(statuses.keys().all(|s| [401, 429].contains(s)), "{statuses:?}");
    // Someone else hammers alice's account from this address.
    for _ in 0..20 {
        let status = log_in(&http, &url, "alice", "wrong").await?;
        assert!([401, 429].contains(&status), "{status}");
    }
    let (rss_after, events_after) = (rss_kib(pid)?, operator_events(&cp)?);
    assert!(events_after - events_before <= 5, "the log grew by {} rows", events_after - events_before);
    // Two Argon2 memories at most (the decoy hash made on first use, the
    // verifier's reused blocks), and nothing more however many attempts.
    assert!(rss_after.saturating_sub(rss_before) < 48 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
    assert!(rss_after.saturating_sub(rss_first) < 4 * 1024, "RSS grew from {rss_first} to {rss_after} KiB");
    // alice, from another address, is not locked out.
    let alice = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()?;
    let status = log_in(&alice, &url, "alice", &password).await?;
    assert_eq!(status, 303, "alice logs in from her own address");
    Ok(())
}

#[path = "attacks/admin.rs"]
mod admin;
#[path = "attacks/fleet.rs"]
mod fleet;
