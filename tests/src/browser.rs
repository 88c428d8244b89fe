//! Headless Chromium driven over WebDriver (chromedriver + fantoccini), for
//! the console's browser tests.
//!
//! [`Browser::start`] finds Debian's `chromium` and `chromium-driver`
//! (`/usr/bin/chromium`, `/usr/bin/chromedriver`; `AIOS_CHROMIUM` and
//! `AIOS_CHROMEDRIVER` override). When they are missing and the tests run
//! as root on a Debian-like system, they install them with `apt-get`, as
//! the README's test command promises; otherwise the tests fail, saying how
//! to install them: a test that passes without its tool tests nothing. Chromedriver
//! binds port 0 itself and the port it reports is read from its log.
//! Screenshots go to
//! `artifacts/screenshots/` at the workspace root (`AIOS_SCREENSHOTS`
//! overrides), which CI keeps and git ignores.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fantoccini::elements::{Element, Form};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::{kill9, log_file, wait_for};

/// A chromedriver process and one browser session.
pub struct Browser {
    driver: Option<Child>,
    client: Client,
    shots: PathBuf,
    taken: usize,
}

/// Installs Debian's Chromium and ChromeDriver, once per process, when this
/// runs as root with `apt-get`; otherwise leaves the caller to fail.
fn install_chromium() -> anyhow::Result<()> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if tool("AIOS_CHROMIUM", "/usr/bin/chromium").is_some()
        && tool("AIOS_CHROMEDRIVER", "/usr/bin/chromedriver").is_some()
    {
        return Ok(());
    }
    let root = Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0"));
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        return Ok(());
    }
    eprintln!("installing chromium and chromium-driver with apt-get for the browser tests");
    for args in
        [&["update", "-qq"][..], &["install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"]]
    {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

/// The port chromedriver says it bound: "... started successfully on port N."
fn reported_port(log: &str) -> Option<u16> {
    let (_, rest) = log.split_once("started successfully on port ")?;
    rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn tool(var: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.exists().then_some(path)
}

impl Browser {
    /// Starts chromedriver and a headless session. `dir` holds the logs and
    /// the profile.
    pub async fn start(dir: &Path, shots_subdir: &str) -> anyhow::Result<Browser> {
        let mut chromium = tool("AIOS_CHROMIUM", "/usr/bin/chromium");
        let mut chromedriver = tool("AIOS_CHROMEDRIVER", "/usr/bin/chromedriver");
        if chromium.is_none() || chromedriver.is_none() {
            tokio::task::spawn_blocking(install_chromium).await??;
            chromium = tool("AIOS_CHROMIUM", "/usr/bin/chromium");
            chromedriver = tool("AIOS_CHROMEDRIVER", "/usr/bin/chromedriver");
        }
        let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
            bail!(
                "the browser tests need Chromium and ChromeDriver at /usr/bin/chromium and /usr/bin/chromedriver \
                 (or $AIOS_CHROMIUM and $AIOS_CHROMEDRIVER): apt-get install chromium chromium-driver"
            );
        };
        std::fs::create_dir_all(dir)?;
        let log = dir.join("chromedriver.log");
        let driver = Command::new(&chromedriver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .with_context(|| format!("cannot start {}", chromedriver.display()))?;
        let mut driver = Some(driver);
        let mut url = String::new();
        let http = reqwest::Client::new();
        let ready = wait_for("chromedriver", Duration::from_secs(30), || {
            let port = std::fs::read_to_string(&log).ok().and_then(|text| reported_port(&text));
            if let Some(port) = port {
                url = format!("http://127.0.0.1:{port}");
            }
            let (http, url) = (http.clone(), url.clone());
            async move { Ok(!url.is_empty() && http.get(format!("{url}/status")).send().await?.status().is_success()) }
        })
        .await;
        if let Err(err) = ready {
            kill9(&mut driver);
            return Err(err);
        }
        let profile = dir.join("chromium-profile");
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1440,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), json!({ "binary": chromium, "args": args }));
        let client = ClientBuilder::new(HttpConnector::new()).capabilities(capabilities).connect(&url).await;
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                kill9(&mut driver);
                return Err(err).context("cannot open a Chromium session");
            }
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../artifacts/screenshots");
        let shots = std::env::var_os("AIOS_SCREENSHOTS").map_or(root, PathBuf::from).join(shots_subdir);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).with_context(|| format!("cannot create {}", shots.display()))?;
        Ok(Browser { driver, client, shots, taken: 0 })
    }

    /// The WebDriver session.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await.with_context(|| format!("cannot open {url}"))
    }

    /// The visible text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self.client.find(Locator::Css(css)).await.with_context(|| format!("no `{css}` on the page"))?;
        Ok(element.text().await?)
    }

    /// Whether an element matches `css`.
    pub async fn has(&self, css: &str) -> anyhow::Result<bool> {
        Ok(!self.client.find_all(Locator::Css(css)).await?.is_empty())
    }

    /// Submits `form` and waits until the next page has replaced this one
    /// (WebDriver does not wait for a navigation a submit starts).
    pub async fn submit(&self, form: Form) -> anyhow::Result<()> {
        let old = self.document().await?;
        form.submit().await.context("cannot submit the form")?;
        self.replaced(old).await
    }

    /// Clicks the first element matching `css` and waits for the next page.
    pub async fn follow(&self, css: &str) -> anyhow::Result<()> {
        let old = self.document().await?;
        let link = self.client.find(Locator::Css(css)).await.with_context(|| format!("no `{css}` on the page"))?;
        link.click().await?;
        self.replaced(old).await
    }

    async fn document(&self) -> anyhow::Result<Element> {
        Ok(self.client.find(Locator::Css("html")).await?)
    }

    /// Waits until `old` (a page's root element) is gone.
    async fn replaced(&self, old: Element) -> anyhow::Result<()> {
        let start = Instant::now();
        while old.tag_name().await.is_ok() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the page was not replaced within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Reloads `url` until `done` holds for the text of `css`, up to `timeout`.
    pub async fn wait_text(
        &self,
        url: &str,
        css: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let start = Instant::now();
        loop {
            self.goto(url).await?;
            let text = self.text(css).await.unwrap_or_default();
            if done(&text) {
                return Ok(text);
            }
            if start.elapsed() > timeout {
                bail!("after {timeout:?} `{css}` on {url} still reads:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Saves a PNG of the viewport as `NN-name.png`.
    pub async fn shot(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.taken += 1;
        let path = self.shots.join(format!("{:02}-{name}.png", self.taken));
        let png = self.client.screenshot().await.context("cannot take a screenshot")?;
        std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        kill9(&mut self.driver);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill9(&mut self.driver);
    }
}
