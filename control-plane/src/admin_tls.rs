//! TLS for the admin API and the console.
//!
//! Beyond loopback the admin API speaks only HTTPS: the bearer token and the
//! console's session cookie (marked `Secure`) never cross a network in
//! clear. By default the certificate is issued by the fleet CA at every
//! start, for the server names the control plane is configured with and the
//! loopback names, so a CLI that holds `pki/ca.crt` (`--admin-ca`) verifies
//! it; an operator may give a certificate of their own (a company CA, a
//! public one). On loopback plain HTTP stays the default (the console on
//! this machine), and TLS can be asked for there too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::pki::Pki;

/// How the admin listener is secured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AdminTls {
    /// HTTPS with a fleet-CA certificate beyond loopback, plain HTTP on it.
    #[default]
    Auto,
    /// HTTPS with a fleet-CA certificate on any address.
    On,
    /// Plain HTTP: refused beyond loopback.
    Off,
    /// HTTPS with the operator's certificate chain and key (PEM files).
    Files {
        /// The chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
}

impl std::str::FromStr for AdminTls {
    type Err = String;

    fn from_str(text: &str) -> Result<AdminTls, String> {
        match text {
            "auto" => Ok(AdminTls::Auto),
            "on" => Ok(AdminTls::On),
            "off" => Ok(AdminTls::Off),
            other => Err(format!("admin TLS `{other}` is not auto, on or off")),
        }
    }
}

/// Why the admin listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminTlsError {
    /// Plain HTTP was asked for on a network address.
    #[error(
        "the admin API on {0} is reachable beyond this machine, so it needs TLS: \
         drop admin_tls = \"off\" (a fleet-CA certificate is used) or give admin_cert and admin_key"
    )]
    PlainBeyondLoopback(SocketAddr),
    /// The operator's certificate or key is unusable.
    #[error("admin certificate {path}: {problem}")]
    Files {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("admin TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl AdminTls {
    /// Whether a listener on `listen` speaks TLS.
    pub fn enabled(&self, listen: SocketAddr) -> Result<bool, AdminTlsError> {
        let loopback = listen.ip().is_loopback();
        match self {
            AdminTls::Auto => Ok(!loopback),
            AdminTls::On | AdminTls::Files { .. } => Ok(true),
            AdminTls::Off if loopback => Ok(false),
            AdminTls::Off => Err(AdminTlsError::PlainBeyondLoopback(listen)),
        }
    }

    /// The rustls configuration of the listener (TLS 1.2 and 1.3, HTTP/1.1).
    pub fn server_config(&self, pki: &Pki) -> Result<Arc<rustls::ServerConfig>, AdminTlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(aios_daemon::transport::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth();
        let mut config = match self {
            AdminTls::Files { cert, key } => {
                let problem = |path: &PathBuf| {
                    let path = path.clone();
                    move |err: rustls::pki_types::pem::Error| AdminTlsError::Files { path, problem: err.to_string() }
                };
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(problem(cert))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(problem(cert))?;
                if chain.is_empty() {
                    return Err(AdminTlsError::Files { path: cert.clone(), problem: "no certificate in it".into() });
                }
                builder.with_single_cert(chain, PrivateKeyDer::from_pem_file(key).map_err(problem(key))?)?
            }
            // The fleet CA's server certificate of the moment (it changes
            // when the CA rotates).
            _ => builder.with_cert_resolver(pki.ca.clone()),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        let loopback: SocketAddr = "127.0.0.1:7480".parse().unwrap();
        let network: SocketAddr = "0.0.0.0:7480".parse().unwrap();
        assert!(!AdminTls::Auto.enabled(loopback).unwrap());
        assert!(AdminTls::Auto.enabled(network).unwrap());
        assert!(AdminTls::On.enabled(loopback).unwrap());
        assert!(!AdminTls::Off.enabled(loopback).unwrap());
        assert!(matches!(AdminTls::Off.enabled(network), Err(AdminTlsError::PlainBeyondLoopback(_))));
        assert_eq!("on".parse::<AdminTls>(), Ok(AdminTls::On));
        assert!("yes".parse::<AdminTls>().is_err());
    }
}

#[cfg(test)]
mod example {
    /// The documented configuration file parses, admin TLS keys included.
    #[test]
    fn the_example_configuration_parses() {
        let text = include_str!("../examples/control-plane.toml").replace("# admin_tls", "admin_tls");
        let file: crate::cli::FileConfig = toml::from_str(&text).expect("the example parses");
        assert_eq!(file.admin_tls.as_deref(), Some("auto"));
    }
}
