//! Finding 11: the admin API and console in clear on a network, in the
//! `attacks` test binary.

use std::process::Command;

use super::*;

/// A control plane whose admin API listens on every address speaks only
/// HTTPS, with a certificate from its fleet CA: a plain-HTTP request (a
/// bearer token sent in clear) gets no answer, a client that does not trust
/// the fleet CA gets no answer, one that does gets the API, the console's
/// session cookie is `Secure`, and the CLI on another machine works with
/// `--admin-ca`. Asking for plain HTTP there stops the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_on_a_network_address_speaks_only_tls() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let bins = bins!();
    let dir = tmp.path().join("cp");
    let serve = |extra: &[&str]| {
        Command::new(&bins.control_plane)
            .args(["--data-dir".as_ref(), dir.as_os_str()])
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
            .args(extra)
            .env("AIOS_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };

    let refused = serve(&["--admin-tls", "off"])?.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("needs TLS"), "{stderr}");

    let mut child = KillOnDrop(serve(&[])?);
    let url_file = dir.join("admin.url");
    wait_for("admin.url", LONG, || async { Ok(url_file.exists()) }).await?;
    let url = std::fs::read_to_string(&url_file)?.trim().to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let port = url.rsplit(':').next().context("a port")?;
    let token = std::fs::read_to_string(dir.join("admin-token"))?.trim().to_owned();
    let ca_pem = std::fs::read(dir.join("pki").join("ca.crt"))?;

    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/edges"))
        .bearer_auth(&token)
        .send()
        .await
        .and_then(|response| response.error_for_status());
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let untrusting = reqwest::Client::new().get(format!("https://127.0.0.1:{port}/v1/health")).send().await;
    assert!(untrusting.is_err(), "a client without the fleet CA reached the API");

    let https = format!("https://127.0.0.1:{port}");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem)?)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let edges = trusting.get(format!("{https}/v1/edges")).bearer_auth(&token).send().await?;
    assert_eq!(edges.status().as_u16(), 200);

    let created = run(&bins, &dir, &["user", "add", "carol", "--role", "viewer"])?;
    let password = created.split("password (shown once): ").nth(1).context("a generated password")?.trim().to_owned();
    let login = trusting
        .post(format!("{https}/console/login"))
        .form(&[("name", "carol"), ("password", &password)])
        .send()
        .await?;
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers().get("set-cookie").context("a session cookie")?.to_str()?.to_owned();
    assert!(cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{cookie}");

    // The CLI elsewhere: no data directory of the control plane, so it
    // needs the CA named, and works with it.
    let elsewhere = tmp.path().join("laptop");
    std::fs::create_dir_all(&elsewhere)?;
    let ca_file = elsewhere.join("fleet-ca.crt");
    std::fs::write(&ca_file, &ca_pem)?;
    let remote = ["--admin-url", &https, "--admin-token", &token];
    let without = Command::new(&bins.control_plane)
        .args(["--data-dir".as_ref(), elsewhere.as_os_str()])
        .args(remote)
        .args(["edge", "list"])
        .output()?;
    assert!(String::from_utf8_lossy(&without.stderr).contains("--admin-ca"), "{without:?}");
    let ca_arg = ca_file.to_str().context("utf-8 path")?;
    let with = run(&bins, &elsewhere, &[&remote[..], &["--admin-ca", ca_arg, "edge", "list"]].concat())?;
    assert!(with.trim().is_empty() || with.contains('['), "{with}");
    child.0.kill()?;
    Ok(())
}

fn run(bins: &aios_tests::Bins, dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let output =
        Command::new(&bins.control_plane).args(["--data-dir".as_ref(), dir.as_os_str()]).args(args).output()?;
    if !output.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
