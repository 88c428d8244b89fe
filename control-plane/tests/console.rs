//! Accounts, roles and the console's defences over real HTTP: a control
//! plane started in this process on loopback, driven with reqwest.

use std::time::Duration;

use aios_control_plane::app::{ControlPlane, Options};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{redirect, Client, StatusCode};
use serde_json::{json, Value};

struct Harness {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    base: String,
    admin_token: String,
    http: Client,
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            data_dir: dir.path().to_owned(),
            sync_listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            server_names: vec!["localhost".into()],
            admin_tls: Default::default(),
            clock: Default::default(),
        };
        let cp = ControlPlane::start(options).await.unwrap();
        let admin_token = std::fs::read_to_string(&cp.admin_token_file).unwrap().trim().to_owned();
        let base = format!("http://{}", cp.admin_addr);
        let http = Client::builder().redirect(redirect::Policy::none()).build().unwrap();
        Harness { _dir: dir, cp, base, admin_token, http }
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn add_user(&self, name: &str, role: &str) -> String {
        let (status, answer) =
            self.admin(reqwest::Method::POST, "/v1/users", json!({ "name": name, "role": role })).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["password"].as_str().expect("a generated password").to_owned()
    }

    async fn login(&self, name: &str, password: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/console/login", self.base))
            .form(&[("name", name), ("password", password)])
            .send()
            .await
            .unwrap()
    }

    /// Logs in and returns the session cookie and the page's CSRF token.
    async fn session(&self, name: &str, password: &str) -> (String, String) {
        let response = self.login(name, password).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let page = self.get_page("/console/fleet", &cookie).await;
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a CSRF field on the page")
            .to_owned();
        (cookie, csrf)
    }

    async fn get_page(&self, path: &str, cookie: &str) -> String {
        let response = self.http.get(format!("{}{path}", self.base)).header(COOKIE, cookie).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response.text().await.unwrap()
    }

    async fn post_form(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http.post(format!("{}{path}", self.base)).header(COOKIE, cookie).form(form).send().await.unwrap()
    }
}

#[tokio::test]
async fn wrong_passwords_and_brute_force_are_refused() {
    let h = Harness::start().await;
    let password = h.add_user("alice", "operator").await;

    let wrong = h.login("alice", "not her password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let unknown = h.login("mallory", &password).await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED, "an unknown name gets the same answer");

    // Five attempts a minute per name: the sixth is refused without
    // checking the password, even when it is the right one.
    for _ in 0..4 {
        assert_eq!(h.login("alice", "guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let limited = h.login("alice", &password).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().get("retry-after").is_some());

    let log = h.admin(reqwest::Method::GET, "/v1/whoami", Value::Null).await;
    assert_eq!(log.1["role"], "admin");
    // Failed passwords of an existing account are in the operator log; an
    // unknown name and rate-limited attempts are not (an unauthenticated
    // caller could repeat them without bound).
    let events = h.cp.api.store.operator_events(100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "console.login_failed").count(), 5, "{kinds:?}");
    assert!(!kinds.contains(&"console.login_limited"), "{kinds:?}");
    assert!(events.iter().all(|e| !e.payload.to_string().contains("mallory")), "{kinds:?}");
    h.cp.stop().await;
}

#[tokio::test]
async fn sessions_need_their_csrf_token_and_roles_are_enforced_by_the_server() {
    let h = Harness::start().await;
    let viewer_password = h.add_user("victor", "viewer").await;
    let admin_password = h.add_user("ada", "admin").await;
    let (viewer, viewer_csrf) = h.session("victor", &viewer_password).await;
    let (admin, admin_csrf) = h.session("ada", &admin_password).await;

    // Pages the viewer may read; the audit page is not one of them.
    for path in ["/console/fleet", "/console/tasks", "/console/approvals", "/console/policies", "/console/metrics"] {
        let page = h.get_page(path, &viewer).await;
        assert!(page.contains("victor (viewer)"), "{path}");
        assert!(!page.contains("href=\"/console/audit\""), "the viewer's menu has no audit link");
    }
    let audit = h.http.get(format!("{}/console/audit", h.base)).header(COOKIE, &viewer).send().await.unwrap();
    assert_eq!(audit.status(), StatusCode::FORBIDDEN);
    assert!(!h.get_page("/console/policies", &viewer).await.contains("Kill switch"), "no kill switch for a viewer");

    // A forged request from the viewer: a valid session and CSRF token, a
    // form the page never offered, and a claimed role. The server refuses.
    let forged = h
        .post_form("/console/kill-switch", &viewer, &[("csrf", &viewer_csrf), ("confirm", "yes"), ("role", "admin")])
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let forged = h.post_form("/console/approvals/any/approve", &viewer, &[("csrf", &viewer_csrf)]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let forged = h
        .http
        .post(format!("{}/v1/policy/kill-switch", h.base))
        .header(COOKIE, &viewer)
        .header("x-csrf-token", &viewer_csrf)
        .header("x-aios-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);

    // The admin's session without its CSRF token, or with another's.
    let no_token = h.post_form("/console/kill-switch", &admin, &[("confirm", "yes")]).await;
    assert_eq!(no_token.status(), StatusCode::FORBIDDEN);
    let wrong_token = h.post_form("/console/kill-switch", &admin, &[("csrf", &viewer_csrf), ("confirm", "yes")]).await;
    assert_eq!(wrong_token.status(), StatusCode::FORBIDDEN);
    let json_no_token = h
        .http
        .post(format!("{}/v1/policy/kill-switch", h.base))
        .header(COOKIE, &admin)
        .header(CONTENT_TYPE, "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(json_no_token.status(), StatusCode::FORBIDDEN);
    assert_eq!(h.cp.api.store.bundle(None).await.unwrap(), None, "nothing was published by refused requests");

    // With its token, the kill switch works and says who engaged it.
    let engaged = h.post_form("/console/kill-switch", &admin, &[("csrf", &admin_csrf), ("confirm", "yes")]).await;
    assert_eq!(engaged.status(), StatusCode::SEE_OTHER);
    assert!(h.cp.api.store.bundle(None).await.unwrap().is_some());
    let events = h.cp.api.store.operator_events(100).await.unwrap();
    let by_ada: Vec<_> =
        events.iter().filter(|e| e.kind == "operator.action" && e.payload["account"] == "ada").collect();
    assert!(by_ada.iter().any(|e| e.payload["path"] == "/console/kill-switch"), "{events:?}");
    let refused: Vec<_> = events.iter().filter(|e| e.kind == "operator.refused").collect();
    assert!(refused.iter().any(|e| e.payload["account"] == "victor"), "forgeries are logged too");
    let keys = h.cp.api.pki.bundle_keys();
    assert_eq!(h.cp.api.store.verify_operator_log(keys).await.unwrap().1, Vec::<String>::new());

    // A made-up session goes to the login page; logging out ends a real one.
    let made_up =
        h.http.get(format!("{}/console/fleet", h.base)).header(COOKIE, "aios_session=00112233").send().await.unwrap();
    assert_eq!(made_up.status(), StatusCode::SEE_OTHER);
    assert_eq!(made_up.headers()[LOCATION], "/console/login");
    let out = h.post_form("/console/logout", &viewer, &[("csrf", &viewer_csrf)]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = h.http.get(format!("{}/console/fleet", h.base)).header(COOKIE, &viewer).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::SEE_OTHER, "the session is gone");
    h.cp.stop().await;
}

#[tokio::test]
async fn api_tokens_carry_their_account_role_and_expire() {
    let h = Harness::start().await;
    h.add_user("otto", "operator").await;
    let (status, short) =
        h.admin(reqwest::Method::POST, "/v1/users/otto/tokens", json!({ "ttl": "1s", "label": "test" })).await;
    assert_eq!(status, StatusCode::OK);
    let (_, long) = h.admin(reqwest::Method::POST, "/v1/users/otto/tokens", json!({ "ttl": "1h" })).await;
    let long = long["token"].as_str().unwrap();
    let short = short["token"].as_str().unwrap();

    let call = |token: String, method: reqwest::Method, path: &'static str| {
        let request = h.http.request(method, format!("{}{path}", h.base)).bearer_auth(token).json(&json!({}));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(call(long.into(), reqwest::Method::GET, "/v1/whoami").await, StatusCode::OK);
    assert_eq!(call(long.into(), reqwest::Method::GET, "/v1/edges").await, StatusCode::OK);
    // An operator may not publish, engage the kill switch, or make accounts.
    assert_eq!(call(long.into(), reqwest::Method::POST, "/v1/policy/kill-switch").await, StatusCode::FORBIDDEN);
    assert_eq!(call(long.into(), reqwest::Method::POST, "/v1/users").await, StatusCode::FORBIDDEN);
    assert_eq!(call(long.into(), reqwest::Method::GET, "/v1/audit").await, StatusCode::FORBIDDEN);
    // A token nobody issued, and one past its time.
    assert_eq!(call("aios_00".into(), reqwest::Method::GET, "/v1/edges").await, StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call(short.into(), reqwest::Method::GET, "/v1/edges").await, StatusCode::UNAUTHORIZED);

    // Removing the account kills its tokens.
    let (status, _) = h.admin(reqwest::Method::DELETE, "/v1/users/otto", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(call(long.into(), reqwest::Method::GET, "/v1/edges").await, StatusCode::UNAUTHORIZED);

    // Bad input gets a clear refusal.
    let (status, answer) =
        h.admin(reqwest::Method::POST, "/v1/users", json!({ "name": "Bad Name", "role": "viewer" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = h.admin(reqwest::Method::POST, "/v1/users", json!({ "name": "x", "role": "root" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _) = h
        .admin(reqwest::Method::POST, "/v1/users", json!({ "name": "y", "role": "viewer", "password": "short" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Prometheus figures, unauthenticated like health.
    let metrics = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    for name in
        ["aios_cp_http_requests_total", "aios_cp_http_request_duration_seconds_bucket", "aios_cp_bundle_version"]
    {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    h.cp.stop().await;
}
