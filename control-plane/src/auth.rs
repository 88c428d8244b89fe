//! Who is asking, and may they: authentication of every admin API and
//! console request, role checks, CSRF protection, login with rate limits,
//! and the operator log entry for every action.
//!
//! Credentials, in the order they are tried:
//! - `Authorization: Bearer` with the admin token file's token (acts as
//!   [`ADMIN_TOKEN_ACCOUNT`], role admin: the bootstrap credential) or an
//!   account's API token (`aios-control-plane user token`);
//! - the console's session cookie, set at login: HTTP-only, `SameSite=Strict`,
//!   `Secure` (and `__Host-` prefixed) unless the console listens on loopback
//!   only. A request that changes anything must also carry the session's
//!   CSRF token, in the `x-csrf-token` header or a `csrf` form field.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use aios_shared::login::{self, LoginForm};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};

use crate::accounts::{self, Permission, Principal, Role, ADMIN_TOKEN_ACCOUNT};
use crate::api::{ApiError, ApiState};

/// Largest form body read for a CSRF check.
const FORM_LIMIT: usize = 1 << 20;

/// Authentication settings and the login rate limiters.
pub struct Auth {
    /// SHA-256 of the admin token file's token.
    pub admin_token_hash: [u8; 32],
    /// Whether session cookies are `Secure` (off only for a loopback console).
    pub secure_cookies: bool,
    /// How long a console session lasts.
    pub session_ttl: Duration,
    by_name: DefaultKeyedRateLimiter<(String, IpAddr)>,
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
}

/// Limiter keys kept before idle ones are dropped.
const PRUNE_AT: usize = 10_000;

impl Auth {
    /// Five login attempts a minute per account name from one client
    /// address, thirty per client address: guessing is slow, and nobody
    /// else can lock an account (`admin` included) by failing on purpose.
    pub fn new(admin_token_hash: [u8; 32], secure_cookies: bool) -> Auth {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).expect("a positive literal"));
        Auth {
            admin_token_hash,
            secure_cookies,
            session_ttl: Duration::from_secs(12 * 3600),
            by_name: RateLimiter::keyed(per_minute(5)),
            by_ip: RateLimiter::keyed(per_minute(30)),
        }
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure_cookies {
            "__Host-aios_session"
        } else {
            "aios_session"
        }
    }

    fn cookie(&self, value: &str, max_age_s: u64) -> String {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        format!("{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}", self.cookie_name())
    }

    /// Counts a login attempt; `Err` with the wait when over either limit.
    fn allow_attempt(&self, name: &str, ip: IpAddr) -> Result<(), Duration> {
        let clock = governor::clock::DefaultClock::default();
        use governor::clock::Clock;
        let ip_check = self.by_ip.check_key(&ip);
        let name_check = self.by_name.check_key(&(name.to_owned(), ip));
        // Keys of limiters whose quota has refilled carry no information.
        if self.by_name.len() > PRUNE_AT {
            self.by_name.retain_recent();
        }
        if self.by_ip.len() > PRUNE_AT {
            self.by_ip.retain_recent();
        }
        match (ip_check, name_check) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(not_until), _) | (_, Err(not_until)) => Err(not_until.wait_time_from(clock.now())),
        }
    }
}

/// Reads the credential of a request; `Ok(None)` when there is none or it
/// is not (or no longer) valid.
async fn identify(state: &ApiState, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
    let now = state.clock.unix_ms();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(token) = bearer {
        // Comparing hashes keeps the comparison's timing independent of the token.
        if <[u8; 32]>::from(Sha256::digest(token.as_bytes())) == state.auth.admin_token_hash {
            return Ok(Some(Principal { account: ADMIN_TOKEN_ACCOUNT.into(), role: Role::Admin, csrf: None }));
        }
        return Ok(state.store.principal_by_token(accounts::secret_hash(token), now).await?);
    }
    match session_cookie(headers, state.auth.cookie_name()) {
        Some(session) => Ok(state.store.principal_by_session(accounts::secret_hash(&session), now).await?),
        None => Ok(None),
    }
}

/// The value of the session cookie, if sent.
pub fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn is_console(request: &Request) -> bool {
    request.uri().path().starts_with("/console")
}

/// Middleware: identifies the caller, checks CSRF on changes made with a
/// session, and logs every change with the account that made it.
pub async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let console = is_console(&request);
    let principal = match identify(&state, request.headers()).await {
        Ok(Some(principal)) => principal,
        Ok(None) if console => return Redirect::to("/console/login").into_response(),
        Ok(None) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing, wrong or expired credentials (a bearer token from DATA_DIR/admin-token or \
                 `aios-control-plane user token`)",
            )
            .into_response()
        }
        Err(err) => return err.into_response(),
    };
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
    let mut request = request;
    if changes {
        if let Some(expected) = &principal.csrf {
            request = match check_csrf(request, expected).await {
                Ok(request) => request,
                Err(err) => {
                    record(&state, "operator.refused", &principal, &method, &path, err.0.as_u16()).await;
                    return err.into_response();
                }
            };
        }
    }
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    if changes {
        let kind = if response.status().is_success() || response.status().is_redirection() {
            "operator.action"
        } else {
            "operator.refused"
        };
        record(&state, kind, &principal, &method, &path, response.status().as_u16()).await;
    }
    response
}

async fn record(state: &ApiState, kind: &'static str, principal: &Principal, method: &str, path: &str, status: u16) {
    let payload = serde_json::json!({
        "account": principal.account,
        "role": principal.role,
        "via": if principal.csrf.is_some() { "console" } else { "api" },
        "method": method,
        "path": path,
        "status": status,
    });
    let key = &state.pki.bundle_key();
    if let Err(err) = state.store.record_operator_event(kind, payload, state.clock.unix_ms(), key).await {
        tracing::error!(%err, "cannot record an operator action");
    }
}

/// Checks the CSRF token of a change made with a session: the header, or
/// the `csrf` field of a form body (the body is read and put back).
async fn check_csrf(request: Request, expected: &str) -> Result<Request, ApiError> {
    let same = |got: &str| Sha256::digest(got.as_bytes()) == Sha256::digest(expected.as_bytes());
    let refused = || ApiError::new(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    if let Some(got) = request.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()) {
        return if same(got) { Ok(request) } else { Err(refused()) };
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(refused());
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large"))?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    match fields.iter().find(|(key, _)| key == "csrf") {
        Some((_, got)) if same(got) => Ok(Request::from_parts(parts, Body::from(bytes))),
        _ => Err(refused()),
    }
}

/// Middleware: refuses a caller whose role lacks `permission` (403), even
/// when the page that would offer the action was never shown.
pub async fn authorize(State(permission): State<Permission>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>() else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "not authenticated").into_response();
    };
    if principal.role.allows(permission) {
        next.run(request).await
    } else {
        let message = format!("the {} role may not do this ({permission:?} is needed)", principal.role);
        ApiError::new(StatusCode::FORBIDDEN, message).into_response()
    }
}

/// Why a login failed, for the page to show.
pub enum LoginOutcome {
    /// Logged in: the `Set-Cookie` value.
    Ok(String),
    /// Wrong name or password (the same answer for both).
    Refused,
    /// Too many attempts; wait this long.
    Limited(Duration),
}

/// Checks a login and opens a session. Sessions opened and attempts on an
/// existing account are in the operator log; attempts refused by the rate
/// limits or naming no possible account are only counted by the limits and
/// traced, so an unauthenticated caller cannot grow the hash-chained log.
pub async fn login(state: &ApiState, peer: SocketAddr, form: LoginForm) -> LoginOutcome {
    let ip = peer.ip();
    let name = match login::screen(&form) {
        login::Screened::Candidate { name } if name != ADMIN_TOKEN_ACCOUNT => name.to_owned(),
        _ => String::new(),
    };
    if name.is_empty() {
        // No account can have this name: refused without a lookup, charged
        // to the address only, and no limiter key made of the caller's text.
        if let Err(wait) = state.auth.allow_attempt("", ip) {
            return LoginOutcome::Limited(wait);
        }
        return LoginOutcome::Refused;
    }
    let log = |kind: &'static str, detail: &str| {
        let payload = serde_json::json!({ "account": name, "from": ip.to_string(), "detail": detail });
        let store = state.store.clone();
        async move {
            let key = &state.pki.bundle_key();
            if let Err(err) = store.record_operator_event(kind, payload, state.clock.unix_ms(), key).await {
                tracing::error!(%err, "cannot record a login");
            }
        }
    };
    if let Err(wait) = state.auth.allow_attempt(&name, ip) {
        tracing::warn!(account = %name, from = %ip, "login attempts over the limit");
        return LoginOutcome::Limited(wait);
    }
    let stored = match state.store.credentials(name.clone()).await {
        Ok(stored) => stored,
        Err(err) => {
            tracing::error!(%err, "cannot read credentials");
            return LoginOutcome::Refused;
        }
    };
    let hash = stored.as_ref().map(|(hash, _)| hash.clone());
    let Some(verified) = accounts::verify_login(hash, form.password).await else {
        tracing::warn!(from = %ip, "login checks queued to the limit");
        return LoginOutcome::Limited(Duration::from_secs(1));
    };
    if !verified {
        if stored.is_some() {
            log("console.login_failed", "wrong password").await;
        }
        return LoginOutcome::Refused;
    }
    let session = accounts::new_secret("");
    let csrf = accounts::new_secret("");
    let now = state.clock.unix_ms();
    let ttl = state.auth.session_ttl;
    let expires = now + ttl.as_millis() as i64;
    if let Err(err) = state.store.add_session(accounts::secret_hash(&session), name.clone(), csrf, now, expires).await {
        tracing::error!(%err, "cannot store a session");
        return LoginOutcome::Refused;
    }
    log("console.login", "session opened").await;
    LoginOutcome::Ok(state.auth.cookie(&session, ttl.as_secs()))
}

/// Ends the caller's session; returns the `Set-Cookie` value that clears it.
pub async fn logout(state: &ApiState, headers: &HeaderMap) -> String {
    if let Some(session) = session_cookie(headers, state.auth.cookie_name()) {
        if let Err(err) = state.store.end_session(accounts::secret_hash(&session)).await {
            tracing::error!(%err, "cannot end a session");
        }
    }
    state.auth.cookie("", 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; aios_session=abc".parse().unwrap());
        headers.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(session_cookie(&headers, "aios_session").as_deref(), Some("abc"));
        assert_eq!(session_cookie(&headers, "__Host-aios_session"), None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_when_asked() {
        let auth = Auth::new([0; 32], true);
        let cookie = auth.cookie("v", 60);
        assert!(cookie.starts_with("__Host-aios_session=v;"));
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!Auth::new([0; 32], false).cookie("v", 60).contains("Secure"));
    }

    #[test]
    fn login_attempts_are_limited_per_name_and_address() {
        let auth = Auth::new([0; 32], false);
        let ip = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..5 {
            assert!(auth.allow_attempt("alice", ip).is_ok());
        }
        assert!(auth.allow_attempt("alice", ip).is_err());
        assert!(auth.allow_attempt("bob", ip).is_ok(), "another name has its own budget");
        let elsewhere = IpAddr::from([10, 0, 0, 2]);
        assert!(auth.allow_attempt("alice", elsewhere).is_ok(), "failures elsewhere lock nobody out");
    }
}
