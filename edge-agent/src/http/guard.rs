//! Who may use the local API: the bearer token, and where a request may
//! come from.
//!
//! - Every mutating request (anything but `GET` and `HEAD`) and every `/mcp`
//!   request needs the API token, even on loopback: a process of another
//!   user on the machine, or a web page, cannot submit tasks, compensate
//!   effects or release dead letters. Without `api_token` in the
//!   configuration the edge makes one at first start and keeps it in
//!   `DATA_DIR/api-token` (mode 0600), where the CLI of the same user finds
//!   it. With a configured token, reads need it too.
//! - On a loopback listener `Host` must be a loopback name and `Origin`, when
//!   a browser sends one, a loopback origin: a page whose name resolves to
//!   127.0.0.1 (DNS rebinding) or a cross-site form is refused before any
//!   route runs, the gateway's included.
//!
//! Signed webhooks are outside the token (their signature replaces it).

use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;

/// The file a generated token is kept in, under the data directory.
pub const TOKEN_FILE: &str = "api-token";

/// Why the token could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("the local API token at {path}: {source}")]
pub struct TokenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The token in `data_dir`'s token file, made (random, 0600) when there is none.
pub fn local_token(data_dir: &Path) -> Result<String, TokenError> {
    let path = data_dir.join(TOKEN_FILE);
    let failed = |source| TokenError { path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(failed(err)),
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(failed)?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    Ok(token)
}

/// The token a CLI in the same data directory presents when none is given.
pub fn token_for_cli(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(TOKEN_FILE)).ok()?;
    Some(text.trim().to_owned()).filter(|token| !token.is_empty())
}

/// Whether `request` must carry the token: reads need it only when the
/// operator configured one.
pub fn needs_token(method: &Method, path: &str, reads_too: bool) -> bool {
    reads_too || !(method == Method::GET || method == Method::HEAD) || path == "/mcp" || path.starts_with("/mcp/")
}

/// Refuses a request whose `Host` or `Origin` is not a loopback name (the
/// layer is only put on loopback listeners).
pub async fn loopback_only(State(()): State<()>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if host.is_some_and(|host| !is_loopback_host(host)) {
        return refuse("the Host header is not a loopback name (DNS rebinding?)");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin.to_str().ok().and_then(|o| o.strip_prefix("http://")).is_some_and(is_loopback_host);
        if !allowed {
            return refuse("requests from web pages of other origins are refused");
        }
    }
    next.run(request).await
}

fn refuse(message: &str) -> Response {
    (StatusCode::FORBIDDEN, axum::Json(serde_json::json!({ "error": { "message": message } }))).into_response()
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(
            host,
            |(name, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    name
                } else {
                    host
                }
            },
        ),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_and_without_ports() {
        for host in ["localhost", "LOCALHOST:7580", "127.0.0.1", "127.0.0.1:7580", "[::1]", "[::1]:7580", "127.1.2.3:1"]
        {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.example", "evil.example:7580", "localhost.evil.example", "10.0.0.1:7580", "[::2]:80", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn mutations_and_mcp_need_the_token_reads_only_when_configured() {
        assert!(!needs_token(&Method::GET, "/v1/tasks", false));
        assert!(needs_token(&Method::GET, "/v1/tasks", true));
        assert!(needs_token(&Method::POST, "/v1/tasks", false));
        assert!(needs_token(&Method::POST, "/v1/dlq/k/retry", false));
        assert!(needs_token(&Method::GET, "/mcp", false));
    }

    #[test]
    fn the_token_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let token = local_token(dir.path()).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(local_token(dir.path()).unwrap(), token, "the same token after a restart");
        assert_eq!(token_for_cli(dir.path()).as_deref(), Some(token.as_str()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
