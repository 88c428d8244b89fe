//! A real SMTP server on loopback for the email connector: Python's
//! `aiosmtpd` (installed on first use into the aios cache with pip), with
//! STARTTLS required, a certificate from a CA of the test's own, and a login.
//! Every message it accepts is appended to a JSON-lines file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;

/// The aiosmtpd release the tests run.
const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// A running SMTP server.
pub struct SmtpServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The PEM file of the CA that signed its certificate.
    pub ca_pem: PathBuf,
    /// The user name it accepts.
    pub user: String,
    /// The password it accepts.
    pub password: String,
    messages: PathBuf,
    child: Child,
}

impl SmtpServer {
    /// Starts a server whose files live in `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<SmtpServer> {
        let pylib = aiosmtpd_path()?;
        std::fs::create_dir_all(dir)?;
        let (ca_pem, cert_pem, key_pem) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
        write_certificates(&ca_pem, &cert_pem, &key_pem)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let (user, password) = ("mailer".to_owned(), format!("pw-{}", rand::random::<u32>()));
        let messages = dir.join("messages.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args([&cert_pem, &key_pem])
            .args([&user, &password])
            .arg(&messages)
            .env("PYTHONPATH", &pylib)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting python3 for the SMTP server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            anyhow::bail!("the SMTP server did not start (it printed {line:?})");
        }
        Ok(SmtpServer { port, ca_pem, user, password, messages, child })
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> anyhow::Result<Vec<Value>> {
        let text = match std::fs::read_to_string(&self.messages) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        };
        text.lines().map(|line| Ok(serde_json::from_str(line)?)).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory from which `import aiosmtpd` works, installing it if needed.
fn aiosmtpd_path() -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("AIOS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/aios")))
        .context("neither AIOS_CACHE nor HOME is set")?;
    let dir = cache.join("python").join(AIOSMTPD.replace("==", "-"));
    let importable = || {
        Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .env("PYTHONPATH", &dir)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !importable() {
        let output = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
            .arg(&dir)
            .arg(AIOSMTPD)
            .output()
            .context("running pip")?;
        anyhow::ensure!(
            output.status.success() && importable(),
            "pip could not install {AIOSMTPD}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(dir)
}

/// A CA, and a server certificate for 127.0.0.1 signed by it.
fn write_certificates(ca_pem: &Path, cert_pem: &Path, key_pem: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "aios test mail CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(ca_pem, ca_cert.pem())?;
    std::fs::write(cert_pem, cert.pem())?;
    std::fs::write(key_pem, key.serialize_pem())?;
    Ok(())
}
