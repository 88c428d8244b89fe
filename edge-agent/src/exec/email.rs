//! The `email` connector: one message per intent through an SMTP server
//! (`lettre`), STARTTLS by default.
//!
//! SMTP has no idempotency key, so the message carries one: its
//! `Message-ID` is derived from the intent's key, and a message resent after
//! a lost reply has the same id, which mail systems use to drop duplicates.

use aios_shared::exec::{ConnectorSpec, SmtpSecurity};
use futures_util::future::BoxFuture;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{SUBMISSIONS_PORT, SUBMISSION_PORT};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{json, Value};

use super::connector::{load_secret, Call, Connector, ConnectorError};

/// Sends mail through one SMTP server.
pub struct EmailConnector {
    host: String,
    port: Option<u16>,
    security: SmtpSecurity,
    username: Option<String>,
    credential: Option<String>,
    from: String,
    tls_ca: Option<String>,
}

impl EmailConnector {
    /// A connector for `spec` (kind `email`).
    pub fn new(spec: &ConnectorSpec) -> Result<Self, String> {
        let from = spec.from.clone().unwrap_or_default();
        from.parse::<lettre::message::Mailbox>().map_err(|err| format!("from address {from:?}: {err}"))?;
        Ok(Self {
            host: spec.smtp_host.clone().unwrap_or_default(),
            port: spec.smtp_port,
            security: spec.security,
            username: spec.username.clone(),
            credential: spec.credential.clone(),
            from,
            tls_ca: spec.tls_ca.clone(),
        })
    }

    fn transport(&self, timeout: std::time::Duration) -> Result<AsyncSmtpTransport<Tokio1Executor>, ConnectorError> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host);
        builder = match self.security {
            SmtpSecurity::Starttls => builder.port(SUBMISSION_PORT).tls(Tls::Required(self.tls_parameters()?)),
            SmtpSecurity::Tls => builder.port(SUBMISSIONS_PORT).tls(Tls::Wrapper(self.tls_parameters()?)),
            SmtpSecurity::None => builder,
        };
        if let Some(port) = self.port {
            builder = builder.port(port);
        }
        if let (Some(user), Some(reference)) = (&self.username, &self.credential) {
            let secret = load_secret(reference).map_err(ConnectorError::Permanent)?;
            builder = builder.credentials(Credentials::new(user.clone(), secret.expose().to_owned()));
        }
        Ok(builder.timeout(Some(timeout)).build())
    }

    /// TLS for the server's host name, trusting `tls_ca` besides the system's roots.
    fn tls_parameters(&self) -> Result<TlsParameters, ConnectorError> {
        let mut builder = TlsParameters::builder(self.host.clone());
        if let Some(path) = &self.tls_ca {
            let pem = std::fs::read(path)
                .map_err(|err| ConnectorError::Permanent(format!("cannot read tls_ca {path}: {err}")))?;
            let ca = Certificate::from_pem(&pem)
                .map_err(|err| ConnectorError::Permanent(format!("tls_ca {path} is not a PEM certificate: {err}")))?;
            builder = builder.add_root_certificate(ca);
        }
        builder.build_rustls().map_err(|err| ConnectorError::Permanent(format!("SMTP TLS set-up: {err}")))
    }

    async fn send(&self, call: Call<'_>) -> Result<Value, ConnectorError> {
        let field = |name: &str| call.args.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
        let to = field("to");
        let to = to
            .parse::<lettre::message::Mailbox>()
            .map_err(|err| ConnectorError::Permanent(format!("recipient {to:?} is not an email address: {err}")))?;
        let domain = self.from.rsplit('@').next().unwrap_or("aios.local").trim_end_matches('>');
        let message_id = format!("<{}@{domain}>", call.key);
        let message = Message::builder()
            .from(self.from.parse().expect("checked when built"))
            .to(to.clone())
            .subject(field("subject"))
            .message_id(Some(message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(field("body"))
            .map_err(|err| ConnectorError::Permanent(format!("cannot build the message: {err}")))?;
        let transport = self.transport(call.timeout)?;
        match transport.send(message).await {
            Ok(response) => Ok(json!({
                "to": to.to_string(),
                "message_id": message_id,
                "smtp": response.code().to_string(),
            })),
            Err(err) if err.is_permanent() => Err(ConnectorError::Permanent(format!("SMTP refused: {err}"))),
            Err(err) if err.is_transient() => Err(ConnectorError::Retryable(format!("SMTP deferred: {err}"))),
            // Timeouts and broken connections: the server may have queued it.
            Err(err) if err.is_timeout() || err.is_response() => {
                Err(ConnectorError::Unknown(format!("SMTP exchange broke off: {err}")))
            }
            Err(err) => Err(ConnectorError::Retryable(format!("SMTP connection failed: {err}"))),
        }
    }
}

impl Connector for EmailConnector {
    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, ConnectorError>> {
        Box::pin(self.send(call))
    }
}
