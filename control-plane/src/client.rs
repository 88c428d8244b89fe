//! A client of the admin API, used by every CLI subcommand.

use std::path::Path;

use anyhow::{bail, Context};
use reqwest::{Method, RequestBuilder};

/// Talks to a running control plane's admin API.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// Finds the API from flags, or from the files a local control plane
    /// writes into its data directory. An `https://` API is trusted if its
    /// certificate chains to `ca` (PEM), or else to the fleet CA in
    /// `DATA_DIR/pki/ca.crt`.
    pub fn discover(
        data_dir: &Path,
        url: Option<String>,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> anyhow::Result<AdminClient> {
        let base = match url {
            Some(url) => url,
            None => {
                std::fs::read_to_string(data_dir.join("admin.url")).map(|s| s.trim().to_owned()).with_context(|| {
                    format!(
                        "no admin API address: is the control plane running (aios-control-plane serve)? \
                         Pass --admin-url or --data-dir (looked in {})",
                        data_dir.display()
                    )
                })?
            }
        };
        let token = match token {
            Some(token) => token,
            None => std::fs::read_to_string(data_dir.join("admin-token")).map(|s| s.trim().to_owned()).with_context(
                || format!("cannot read the admin token in {}; pass --admin-token", data_dir.display()),
            )?,
        };
        let mut http = reqwest::Client::builder();
        let fleet_ca = data_dir.join("pki").join("ca.crt");
        let ca = ca.map(Path::to_owned).or_else(|| fleet_ca.exists().then_some(fleet_ca));
        if let Some(ca) = ca {
            let pem = std::fs::read(&ca).with_context(|| format!("cannot read the admin API's CA {}", ca.display()))?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            http = http.add_root_certificate(certificate);
        } else if base.starts_with("https://") {
            bail!("{base} speaks TLS: pass --admin-ca with the control plane's CA (its DATA_DIR/pki/ca.crt)");
        }
        let http = http.build().context("cannot build the admin API client")?;
        Ok(AdminClient { base: base.trim_end_matches('/').to_owned(), token, http })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path)).bearer_auth(&self.token)
    }

    /// Sends a request and decodes the JSON answer, turning API errors into one clear line.
    pub async fn send(&self, method: Method, path: &str, body: Option<Body>) -> anyhow::Result<serde_json::Value> {
        let mut request = self.request(method, path);
        request = match body {
            Some(Body::Json(value)) => request.json(&value),
            Some(Body::Text(text)) => request.header("content-type", "text/plain").body(text),
            None => request,
        };
        let response = request.send().await.with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = response.status();
        let value: serde_json::Value =
            response.json().await.context("the admin API sent a response that is not JSON")?;
        if !status.is_success() {
            let message = value.get("error").and_then(|e| e.as_str()).unwrap_or("unknown error");
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(value)
    }
}

/// A request body.
pub enum Body {
    /// A JSON document.
    Json(serde_json::Value),
    /// Plain text (a TOML bundle).
    Text(String),
}
