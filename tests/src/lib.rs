//! A harness for whole-system tests: real control-plane and edge processes
//! on loopback, each in its own temporary directory, killed on drop.
//!
//! # Layout
//! - [`ControlPlaneProc`]: a `serve` process, its admin API and its CLI.
//! - [`EdgeProc`]: an edge's data directory and `run` process.
//! - [`UpProc`]: `aios up` (control plane, shop, two edges).
//! - [`in_process`]: a control plane and edges in the test's own process.
//! - [`browser`]: headless Chromium over WebDriver, with screenshots.
//! - [`relay`]: a UDP relay that drops, duplicates and reorders datagrams.
//! - [`payments`] and [`smtp`]: a payment API and an SMTP server for connectors.
//! - [`planner`]: a model server (OpenAI chat completions and Anthropic
//!   Messages) replaying scripted plans with tool calls.
//! - [`python`]: `python3` with a package importable (pip-installed when missing).

pub mod browser;
pub mod in_process;
pub mod payments;
pub mod planner;
pub mod python;
pub mod relay;
pub mod smtp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Paths of the binaries under test (see [`bins!`]).
#[derive(Debug, Clone)]
pub struct Bins {
    /// The edge agent, with test entry points.
    pub edge: PathBuf,
    /// The control plane.
    pub control_plane: PathBuf,
    /// The all-in-one `aios up`.
    pub up: PathBuf,
}

/// The binaries built by this package; usable only from its tests and benches.
#[macro_export]
macro_rules! bins {
    () => {
        $crate::Bins {
            edge: env!("CARGO_BIN_EXE_edge-under-test").into(),
            control_plane: env!("CARGO_BIN_EXE_control-plane-under-test").into(),
            up: env!("CARGO_BIN_EXE_up-under-test").into(),
        }
    };
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        match condition().await {
            Ok(true) => return Ok(start.elapsed()),
            Ok(false) => {}
            Err(err) if start.elapsed() > timeout => return Err(err.context(format!("timed out waiting for {what}"))),
            Err(_) => {}
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The port in a `HOST:PORT` file a process wrote once it had bound port 0.
fn port_in(file: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(file).ok()?;
    text.trim().rsplit(':').next()?.parse().ok()
}

fn log_file(path: &Path) -> Stdio {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file in the temp dir");
    Stdio::from(file)
}

fn kill9(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What test edges let bundles reach: the machine's temporary directory
/// and services on loopback.
fn test_access() -> Vec<String> {
    let tmp = std::env::temp_dir().display().to_string();
    let flags = ["--secrets-dir", &tmp, "--output-dir", &tmp, "--allow-host", "127.0.0.1", "--allow-host", "localhost"];
    flags.map(str::to_owned).to_vec()
}

/// Runs a command to completion, with its output captured.
fn run_output(command: &mut Command) -> anyhow::Result<Output> {
    command.stdin(Stdio::null()).output().with_context(|| format!("cannot run {command:?}"))
}

/// `aios up --ephemeral-ports`: the one-command start, in a
/// directory of its own.
pub struct UpProc {
    child: Option<Child>,
    /// The `--root` it runs in.
    pub root: PathBuf,
    /// The console's URL, as `up` printed it.
    pub console: String,
    /// The `admin` account's one-time password, as `up` printed it.
    pub password: String,
    /// Its control plane, for the admin API and the CLI.
    pub control_plane: ControlPlaneProc,
}

impl UpProc {
    /// Starts `up` in `root` and waits until it has printed its summary.
    pub async fn start(bins: &Bins, root: &Path) -> anyhow::Result<UpProc> {
        std::fs::create_dir_all(root)?;
        let stdout = root.join("up.stdout");
        let child = Command::new(&bins.up)
            .args(["up", "--ephemeral-ports", "--root"])
            .arg(root)
            .env("AIOS_LOG", "info,quinn=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file(&stdout))
            .stderr(log_file(&root.join("up.log")))
            .spawn()
            .context("cannot start `up`")?;
        let mut child = Some(child);
        let start = Instant::now();
        let text = loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if text.contains("Press Ctrl-C") {
                break text;
            }
            let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(300) {
                kill9(&mut child);
                let log = std::fs::read_to_string(root.join("up.log")).unwrap_or_default();
                bail!("`up` did not come up ({exited:?}):\n{text}\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let after = |marker: &str| {
            text.lines()
                .find_map(|line| line.split_once(marker))
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned)
                .with_context(|| format!("`up` printed no `{marker}`:\n{text}"))
        };
        let console = after("Console:")?;
        let password = after("one-time password")?;
        let control_plane = ControlPlaneProc {
            bins: bins.clone(),
            dir: root.join("control-plane"),
            sync_port: 0,
            child: None,
            http: reqwest::Client::new(),
        };
        Ok(UpProc { child, root: root.to_owned(), console, password, control_plane })
    }

    /// The log `up` wrote so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("up.log")).unwrap_or_default()
    }
}

impl Drop for UpProc {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// A control plane process.
pub struct ControlPlaneProc {
    bins: Bins,
    /// Its data directory.
    pub dir: PathBuf,
    /// The UDP port for sync: 0 until the first start has bound one (the
    /// process binds port 0 and writes `sync.addr`); kept across restarts
    /// so edges find it again.
    pub sync_port: u16,
    child: Option<Child>,
    http: reqwest::Client,
}

impl ControlPlaneProc {
    /// Starts a control plane in `dir` and waits until its API answers.
    pub async fn start(bins: &Bins, dir: &Path) -> anyhow::Result<ControlPlaneProc> {
        let mut cp = ControlPlaneProc {
            bins: bins.clone(),
            dir: dir.to_owned(),
            sync_port: 0,
            child: None,
            http: reqwest::Client::new(),
        };
        cp.restart().await?;
        Ok(cp)
    }

    /// `HOST:PORT` of the sync endpoint.
    pub fn sync_addr(&self) -> String {
        format!("127.0.0.1:{}", self.sync_port)
    }

    /// Starts the process again (after [`ControlPlaneProc::kill9`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        kill9(&mut self.child);
        let _ = std::fs::remove_file(self.dir.join("admin.url"));
        let _ = std::fs::remove_file(self.dir.join("sync.addr"));
        std::fs::create_dir_all(&self.dir)?;
        let child = Command::new(&self.bins.control_plane)
            .args(["--data-dir".as_ref(), self.dir.as_os_str()])
            .args(["serve", "--listen", &self.sync_addr(), "--admin-listen", "127.0.0.1:0"])
            .env("AIOS_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir.join("stdout.log")))
            .stderr(log_file(&self.dir.join("control-plane.log")))
            .spawn()
            .context("cannot start the control plane")?;
        self.child = Some(child);
        wait_for("the control plane's admin API", Duration::from_secs(30), || async {
            Ok(self.get("/v1/health").await.is_ok())
        })
        .await?;
        self.sync_port = port_in(&self.dir.join("sync.addr")).context("the control plane wrote no sync.addr")?;
        Ok(())
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn admin(&self) -> anyhow::Result<(String, String)> {
        let url = std::fs::read_to_string(self.dir.join("admin.url"))?;
        let token = std::fs::read_to_string(self.dir.join("admin-token"))?;
        Ok((url.trim().to_owned(), token.trim().to_owned()))
    }

    /// GET on the admin API.
    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (url, token) = self.admin()?;
        let response = self.http.get(format!("{url}{path}")).bearer_auth(token).send().await?;
        let status = response.status();
        let value = response.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {value}");
        }
        Ok(value)
    }

    /// GET of a console page with the admin token: the status and the HTML.
    pub async fn page(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let (url, token) = self.admin()?;
        let response = self.http.get(format!("{url}{path}")).bearer_auth(token).send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// Runs a client subcommand of the control-plane CLI against this instance.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        run_output(
            Command::new(&self.bins.control_plane).args(["--data-dir".as_ref(), self.dir.as_os_str()]).args(args),
        )
    }

    /// Like [`ControlPlaneProc::cli`], failing unless it exits 0; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.cli(args)?;
        if !output.status.success() {
            bail!("{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// A token binding the label `site=test`, which the tests' edges enrol with.
    pub fn token(&self, ttl: &str) -> anyhow::Result<String> {
        Ok(self.cli_ok(&["token", "create", "--ttl", ttl, "--label", "site=test"])?.trim().to_owned())
    }

    /// The pending approval request for `task` as this control plane
    /// queues it, waiting up to five minutes for it to arrive.
    pub async fn pending_approval(&self, task: &str) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let queue = self.get("/v1/approvals?state=pending").await?;
            if let Some(approval) = queue.as_array().into_iter().flatten().find(|a| a["request"]["task"] == task) {
                return Ok(approval.clone());
            }
            anyhow::ensure!(Instant::now() < deadline, "no approval request for {task} at the control plane");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes a bundle from TOML text; returns its version.
    pub fn publish(&self, toml: &str) -> anyhow::Result<u64> {
        let path = self.dir.join(format!("bundle-{}.toml", rand::random::<u32>()));
        std::fs::write(&path, toml)?;
        let out = self.cli_ok(&["policy", "publish", path.to_str().context("utf-8 path")?])?;
        out.trim().rsplit(' ').next().and_then(|v| v.parse().ok()).context("no version in publish output")
    }

    /// The fleet view of one edge.
    pub async fn edge(&self, edge_id: &str) -> anyhow::Result<serde_json::Value> {
        let edges = self.get("/v1/edges").await?;
        edges
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["id"] == edge_id)
            .cloned()
            .with_context(|| format!("edge {edge_id} not listed"))
    }

    /// Every stored audit event of an edge, oldest first.
    pub async fn events(&self, edge_id: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut all = Vec::new();
        let mut after = 0u64;
        loop {
            let page = self.get(&format!("/v1/audit?edge={edge_id}&after_seq={after}&limit=100000")).await?;
            let page = page.as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                break;
            }
            after = page.iter().filter_map(|e| e["seq"].as_u64()).max().unwrap_or(after);
            all.extend(page);
        }
        all.sort_by_key(|e| e["seq"].as_u64());
        Ok(all)
    }
}

impl Drop for ControlPlaneProc {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// An edge: its data directory and, while running, its process.
pub struct EdgeProc {
    bins: Bins,
    /// Its data directory.
    pub dir: PathBuf,
    /// The id it got at enrolment.
    pub edge_id: String,
    child: Option<Child>,
    /// Dial this instead of the enrolment address (the lossy relay).
    pub control_plane_override: Option<String>,
    /// The TCP port of its local API on loopback: 0 until the first start
    /// has bound one (the process binds port 0 and writes `api.addr`); kept
    /// across restarts.
    pub api_port: u16,
    /// Extra environment for `run`.
    pub env: Vec<(String, String)>,
    /// Extra flags for `run` (such as `--gateway`).
    pub run_args: Vec<String>,
    /// Flags saying what bundles may reach: by default the machine's
    /// temporary directory (where tests keep receipts and secret files),
    /// as secrets directory and output directory, and loopback hosts.
    /// Empty: the edge's own defaults (nothing outside its data directory).
    pub access_args: Vec<String>,
    /// The address the local API binds ("127.0.0.1" unless a test exposes
    /// it, say on "0.0.0.0"); the tests still connect over loopback.
    pub api_host: String,
    /// The bearer token [`EdgeProc::api`] sends, when the API wants one.
    pub api_token: Option<String>,
    http: reqwest::Client,
}

impl EdgeProc {
    /// Enrols a new edge in `dir`.
    pub fn enroll(bins: &Bins, dir: &Path, control_plane: &str, token: &str) -> anyhow::Result<EdgeProc> {
        let output = enroll_output(bins, dir, control_plane, token)?;
        if !output.status.success() {
            bail!("enrolment failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let stdout = String::from_utf8(output.stdout)?;
        let edge_id = stdout.split_whitespace().nth(2).context("no edge id in enrol output")?.to_owned();
        Ok(EdgeProc {
            bins: bins.clone(),
            dir: dir.to_owned(),
            edge_id,
            child: None,
            control_plane_override: None,
            api_port: 0,
            env: Vec::new(),
            run_args: Vec::new(),
            access_args: test_access(),
            api_host: "127.0.0.1".into(),
            api_token: None,
            http: reqwest::Client::new(),
        })
    }

    /// Starts `aios-edge run` (killing a running one first) and waits until
    /// its local API is bound.
    pub fn start(&mut self) -> anyhow::Result<()> {
        kill9(&mut self.child);
        let addr_file = self.dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut command = Command::new(&self.bins.edge);
        command.args(["--data-dir".as_ref(), self.dir.as_os_str()]).args(["run", "--reconnect-max", "2s"]);
        command.args(["--api-listen", &format!("{}:{}", self.api_host, self.api_port)]);
        if let Some(addr) = &self.control_plane_override {
            command.args(["--control-plane", addr]);
        }
        command.args(&self.access_args).args(&self.run_args);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .env("AIOS_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir.join("edge.log")))
            .spawn()
            .context("cannot start the edge")?;
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(port) = port_in(&addr_file) {
                self.api_port = port;
                return Ok(());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > Duration::from_secs(30) {
                bail!("the edge's API did not come up ({exited:?}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// Appends `count` debug events to the edge's audit log; returns the new head.
    pub fn emit(&self, count: u64) -> anyhow::Result<u64> {
        let output = self.edge_cli(&["debug", "emit-audit", "--count", &count.to_string()])?;
        if !output.status.success() {
            bail!("emit-audit failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8(output.stdout)?.trim().parse()?)
    }

    /// Starts appending `count` debug events from another process, `batch`
    /// per transaction, and returns that process.
    pub fn emit_in_background(&self, count: u64, batch: u64) -> anyhow::Result<Child> {
        Command::new(&self.bins.edge)
            .args(["--data-dir".as_ref(), self.dir.as_os_str()])
            .args(["debug", "emit-audit", "--count", &count.to_string(), "--batch", &batch.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir.join("emitter.log")))
            .spawn()
            .context("cannot start the emitter")
    }

    /// Runs an `aios-edge` subcommand on this edge's data directory.
    pub fn edge_cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        run_output(Command::new(&self.bins.edge).args(["--data-dir".as_ref(), self.dir.as_os_str()]).args(args))
    }

    /// Payloads of this edge's own audit events of `kind`, oldest first,
    /// read straight from its database (the daemon may be running).
    pub fn audit_payloads(&self, kind: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let conn = rusqlite::Connection::open(self.dir.join("edge.db"))?;
        let mut statement = conn.prepare("SELECT payload FROM audit_log WHERE kind = ?1 ORDER BY seq")?;
        let rows = statement.query_map([kind], |row| row.get::<_, String>(0))?;
        rows.map(|row| Ok(serde_json::from_str(&row?)?)).collect()
    }

    /// `aios-edge status` as JSON.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let output = self.edge_cli(&["status"])?;
        if !output.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// `HOST:PORT` of the local API.
    pub fn api_addr(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// The API token: the configured one, or the one the edge made in its
    /// data directory at first start.
    pub fn token(&self) -> Option<String> {
        self.api_token.clone().or_else(|| {
            let text = std::fs::read_to_string(self.dir.join("api-token")).ok()?;
            Some(text.trim().to_owned())
        })
    }

    /// Calls the local API; returns the status and the JSON body.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self.http.request(method, format!("http://{}{path}", self.api_addr()));
        if let Some(token) = self.token() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("edge API {path}"))?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.with_context(|| format!("edge API {path}: body"))?))
    }

    /// Submits a task through the local API; returns it.
    pub async fn submit(&self, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let (status, task) = self.api(reqwest::Method::POST, "/v1/tasks", Some(body)).await?;
        if status >= 300 {
            bail!("submission refused with {status}: {task}");
        }
        Ok(task)
    }

    /// Waits until task `id` reaches a terminal state; returns it.
    pub async fn finished_task(&self, id: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let start = Instant::now();
        let path = format!("/v1/tasks/{id}");
        loop {
            let last = match self.api(reqwest::Method::GET, &path, None).await {
                Ok((_, task)) => task,
                Err(err) => serde_json::json!({ "error": err.to_string() }),
            };
            if matches!(last["state"].as_str(), Some("succeeded" | "failed" | "dead_lettered" | "cancelled")) {
                return Ok(last);
            }
            if start.elapsed() > timeout {
                bail!("task {id} did not finish in {timeout:?}; last seen: {last}\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The edge's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("edge.log")).unwrap_or_default()
    }
}

impl Drop for EdgeProc {
    fn drop(&mut self) {
        kill9(&mut self.child);
    }
}

/// Runs `aios-edge enroll` and returns its output, whatever the outcome.
pub fn enroll_output(bins: &Bins, dir: &Path, control_plane: &str, token: &str) -> anyhow::Result<Output> {
    run_output(Command::new(&bins.edge).args(["--data-dir".as_ref(), dir.as_os_str()]).args([
        "enroll",
        "--control-plane",
        control_plane,
        "--token",
        token,
        "--name",
        "test-edge",
        "--label",
        "site=test",
    ]))
}

/// Waits until the control plane holds the edge's whole chain (its head as
/// the edge reports it) and returns that head.
pub async fn wait_synced(cp: &ControlPlaneProc, edge: &EdgeProc, timeout: Duration) -> anyhow::Result<u64> {
    wait_for("audit upload to complete", timeout, || async {
        let head = edge.status()?["audit_head_seq"].as_u64().context("no head")?;
        let stored = cp.edge(&edge.edge_id).await?["audit_seq"].as_u64().context("no audit_seq")?;
        Ok(stored == head)
    })
    .await?;
    edge.status()?["audit_head_seq"].as_u64().context("no head")
}

/// Parses an address.
pub fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test addresses are valid")
}

/// A control plane and one enrolled, running edge with `bundle` applied.
pub async fn fleet_with(bins: &Bins, bundle: &str) -> anyhow::Result<(tempfile::TempDir, ControlPlaneProc, EdgeProc)> {
    fleet_with_args(bins, bundle, &[]).await
}

/// [`fleet_with`], the edge run with `run_args` (`--allow-program env`).
pub async fn fleet_with_args(
    bins: &Bins,
    bundle: &str,
    run_args: &[&str],
) -> anyhow::Result<(tempfile::TempDir, ControlPlaneProc, EdgeProc)> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlaneProc::start(bins, &tmp.path().join("cp")).await?;
    let token = cp.token("10m")?;
    let mut edge = EdgeProc::enroll(bins, &tmp.path().join("edge"), &cp.sync_addr(), &token)?;
    edge.run_args = run_args.iter().map(|arg| arg.to_string()).collect();
    edge.start()?;
    let version = cp.publish(bundle)?;
    wait_for("the edge to apply the bundle", Duration::from_secs(300), || async {
        let (_, health) = edge.api(reqwest::Method::GET, "/v1/health", None).await?;
        Ok(health["bundle_version"].as_u64() == Some(version))
    })
    .await?;
    Ok((tmp, cp, edge))
}
