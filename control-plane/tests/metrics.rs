//! `/metrics` needs no authentication, so a flood of scrapes must not take
//! the database's readers from authentication and sync: figures are read
//! once at a time and served again for a second (issue 24, finding 10).

use std::time::Duration;

use aios_control_plane::app::{ControlPlane, Options};
use aios_daemon::clock::ManualClock;

fn operator_events(text: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with("aios_cp_operator_events ")).expect("the operator log gauge");
    line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).expect("a number") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_read_the_database_at_most_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(aios_daemon::clock::unix_ms());
    let options = Options {
        data_dir: dir.path().to_owned(),
        sync_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        server_names: Vec::new(),
        admin_tls: Default::default(),
        clock: clock.shared(),
    };
    let cp = ControlPlane::start(options).await.unwrap();
    let token = std::fs::read_to_string(&cp.admin_token_file).unwrap().trim().to_owned();
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", cp.admin_addr);
    let scrape = || {
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).send().await.unwrap() }
    };

    let first = operator_events(&scrape().await.text().await.unwrap());
    // An operator action adds to the log; within the second the figures stay.
    let added = http
        .post(format!("http://{}/v1/users", cp.admin_addr))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "name": "erin", "role": "viewer" }))
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success());
    assert_eq!(operator_events(&scrape().await.text().await.unwrap()), first, "served again within the second");

    clock.advance(Duration::from_secs(2));
    let scrapes: Vec<_> = (0..32).map(|_| tokio::spawn(scrape())).collect();
    let (mut read, mut busy) = (Vec::new(), 0);
    for scrape in scrapes {
        let response = scrape.await.unwrap();
        match response.status().as_u16() {
            200 => read.push(operator_events(&response.text().await.unwrap())),
            503 => {
                assert_eq!(response.headers()["retry-after"], "1");
                busy += 1;
            }
            other => panic!("status {other}"),
        }
    }
    assert!(!read.is_empty(), "{busy} busy, none read");
    assert!(read.iter().all(|&n| n > first), "the new figures after the second: {read:?} vs {first}");
    cp.stop().await;
}
