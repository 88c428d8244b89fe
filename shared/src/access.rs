//! What an edge lets the bundles it receives reach on its machine.
//!
//! A bundle names secrets (`env:NAME`, `file:/path`), trust files, output
//! directories, programs (MCP servers on stdio) and the hosts its
//! connectors talk to (HTTP APIs, MCP servers over HTTP, SMTP relays). A bundle comes from the
//! control plane, so without limits anyone who can publish one could read
//! an edge's files and environment, write anywhere its user can, or run any
//! program. The edge's own configuration, which only someone on the machine
//! can change, says what is reachable ([`BundleAccess`]); every reference in
//! a bundle is checked against it when the bundle is offered (a bundle that
//! reaches further is refused, the one in force stays) and again whenever
//! the definitions are loaded (so narrowing the configuration takes effect
//! at the next start). Paths are checked as written: absolute, no `..`, and
//! inside an allowed directory.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::agent::Definitions;

/// What bundles may reference on this edge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleAccess {
    /// `file:` secrets and trust files (an SMTP relay's CA) must be inside it.
    pub secrets_dir: Option<PathBuf>,
    /// Environment variables a bundle may name as `env:NAME`.
    pub secret_env: BTreeSet<String>,
    /// Directories the file connector may write into (or below).
    pub output_dirs: Vec<PathBuf>,
    /// Programs an MCP connector may start, as the bundle names them.
    pub programs: BTreeSet<String>,
    /// Hosts (names or addresses, lower case) connectors may reach.
    pub hosts: BTreeSet<String>,
}

/// A reference outside what the edge allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place} references {reference}, which this edge does not allow: {why}")]
pub struct AccessError {
    /// Where in the bundle (`connector payments credential`).
    pub place: String,
    /// The reference as written.
    pub reference: String,
    /// What the edge's configuration allows instead.
    pub why: String,
}

impl BundleAccess {
    /// Checks every reference the definitions make.
    pub fn check(&self, defs: &Definitions) -> Result<(), AccessError> {
        for (name, tier) in &defs.tiers {
            if let Some(reference) = &tier.credential {
                self.secret(&format!("tier `{name}` credential"), reference)?;
            }
        }
        for (name, spec) in &defs.connectors {
            if let Some(reference) = &spec.credential {
                self.secret(&format!("connector `{name}` credential"), reference)?;
            }
            if let Some(path) = &spec.tls_ca {
                self.inside_secrets(&format!("connector `{name}` tls_ca"), path)?;
            }
            if let Some(dir) = &spec.directory {
                let place = format!("connector `{name}` directory");
                if !self.output_dirs.iter().any(|allowed| inside(dir, allowed)) {
                    let why = format!("output directories are {}", list(self.output_dirs.iter().map(|d| d.display())));
                    return Err(refused(place, dir, why));
                }
            }
            if let Some(base_url) = &spec.base_url {
                self.url_host(&format!("connector `{name}` base_url"), base_url)?;
            }
            if let Some(host) = &spec.smtp_host {
                self.host(&format!("connector `{name}` smtp_host"), host)?;
            }
            if let Some(program) = spec.command.first() {
                if !self.programs.contains(program) {
                    let why = format!("programs allowed are {}", list(self.programs.iter()));
                    return Err(refused(format!("connector `{name}` command"), program, why));
                }
            }
        }
        for (name, spec) in &defs.webhooks {
            self.secret(&format!("webhook `{name}` secret"), &spec.secret)?;
        }
        Ok(())
    }

    fn url_host(&self, place: &str, url: &str) -> Result<(), AccessError> {
        let host = url::Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_owned));
        match host {
            Some(host) => self.host(place, host.trim_start_matches('[').trim_end_matches(']')),
            None => Err(refused(place.to_owned(), url, "it is not a URL with a host".into())),
        }
    }

    fn host(&self, place: &str, host: &str) -> Result<(), AccessError> {
        if self.hosts.contains(&host.to_ascii_lowercase()) {
            return Ok(());
        }
        Err(refused(place.to_owned(), host, format!("hosts allowed are {}", list(self.hosts.iter()))))
    }

    fn secret(&self, place: &str, reference: &str) -> Result<(), AccessError> {
        if let Some(name) = reference.strip_prefix("env:") {
            if self.secret_env.contains(name) {
                return Ok(());
            }
            let why = format!("environment variables allowed are {}", list(self.secret_env.iter()));
            return Err(refused(place.to_owned(), reference, why));
        }
        if let Some(path) = reference.strip_prefix("file:") {
            return self.inside_secrets(place, path).map_err(|err| AccessError { reference: reference.into(), ..err });
        }
        // Not a reference at all: loading it fails with its own error.
        Ok(())
    }

    fn inside_secrets(&self, place: &str, path: &str) -> Result<(), AccessError> {
        match &self.secrets_dir {
            Some(dir) if inside(path, dir) => Ok(()),
            Some(dir) => Err(refused(place.to_owned(), path, format!("files must be inside {}", dir.display()))),
            None => Err(refused(place.to_owned(), path, "no secrets directory is configured".into())),
        }
    }
}

/// Whether `path` is absolute, free of `..`, and `dir` or below it.
fn inside(path: &str, dir: &Path) -> bool {
    let path = Path::new(path);
    path.is_absolute() && !path.components().any(|c| c == Component::ParentDir) && path.starts_with(dir)
}

fn refused(place: String, reference: &str, why: String) -> AccessError {
    AccessError { place, reference: reference.to_owned(), why }
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|item| format!("`{item}`")).collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(toml: &str) -> Definitions {
        toml::from_str(&toml.replace("kind = \"", "version = 1\nactions = {}\nkind = \"")).unwrap()
    }

    fn access() -> BundleAccess {
        BundleAccess {
            secrets_dir: Some("/etc/aios/secrets".into()),
            secret_env: ["AIOS_SECRET_PAYMENTS".to_owned()].into(),
            output_dirs: vec!["/srv/out".into()],
            programs: ["/opt/mcp/notes".to_owned()].into(),
            hosts: ["payments.example".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()].into(),
        }
    }

    #[test]
    fn references_inside_the_configured_places_pass() {
        let ok = defs(
            r#"
[connectors.pay]
kind = "http"
base_url = "https://Payments.Example/api"
credential = "env:AIOS_SECRET_PAYMENTS"
[connectors.local]
kind = "mcp"
base_url = "http://[::1]:8080/mcp"
[connectors.mail]
kind = "email"
smtp_host = "127.0.0.1"
from = "a@b.c"
[connectors.files]
kind = "file"
directory = "/srv/out/receipts"
[connectors.notes]
kind = "mcp"
command = ["/opt/mcp/notes", "--quiet"]
[webhooks.orders]
agent = "a"
secret = "file:/etc/aios/secrets/orders"
"#,
        );
        assert_eq!(access().check(&ok), Ok(()));
    }

    #[test]
    fn files_environment_directories_and_programs_outside_are_refused() {
        let cases = [
            ("[webhooks.w]\nagent = \"a\"\nsecret = \"file:/etc/passwd\"\n", "inside /etc/aios/secrets"),
            ("[webhooks.w]\nagent = \"a\"\nsecret = \"file:/etc/aios/secrets/../../passwd\"\n", "inside"),
            ("[webhooks.w]\nagent = \"a\"\nsecret = \"file:etc/aios/secrets/x\"\n", "inside"),
            ("[webhooks.w]\nagent = \"a\"\nsecret = \"env:HOME\"\n", "`AIOS_SECRET_PAYMENTS`"),
            ("[connectors.f]\nkind = \"file\"\ndirectory = \"/home/ann\"\n", "`/srv/out`"),
            ("[connectors.f]\nkind = \"file\"\ndirectory = \"/srv/out/../../root\"\n", "`/srv/out`"),
            ("[connectors.f]\nkind = \"file\"\ndirectory = \"/srv/outside\"\n", "`/srv/out`"),
            ("[connectors.m]\nkind = \"mcp\"\ncommand = [\"sh\", \"-c\", \"id\"]\n", "`/opt/mcp/notes`"),
            ("[connectors.h]\nkind = \"http\"\nbase_url = \"http://169.254.169.254/latest\"\n", "`payments.example`"),
            (
                "[connectors.h]\nkind = \"http\"\nbase_url = \"http://payments.example@evil.example/\"\n",
                "hosts allowed",
            ),
            ("[connectors.h]\nkind = \"http\"\nbase_url = \"payments.example\"\n", "not a URL"),
            (
                "[connectors.e]\nkind = \"email\"\nsmtp_host = \"smtp.evil.example\"\nfrom = \"a@b.c\"\n",
                "hosts allowed",
            ),
            (
                "[connectors.e]\nkind = \"email\"\nsmtp_host = \"x\"\nfrom = \"a@b.c\"\ntls_ca = \"/root/ca.pem\"\n",
                "inside",
            ),
        ];
        for (toml, why) in cases {
            let err = access().check(&defs(toml)).unwrap_err();
            assert!(err.why.contains(why), "{toml}: {err}");
        }
        let none = BundleAccess::default();
        let err = none.check(&defs("[webhooks.w]\nagent = \"a\"\nsecret = \"env:X\"\n")).unwrap_err();
        assert!(err.to_string().contains("allowed are none"), "{err}");
    }
}
