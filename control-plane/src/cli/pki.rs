//! `pki` subcommands: rotating the control plane's keys (clients of
//! `crate::key_rotation`).

use clap::Subcommand;
use reqwest::Method;

use crate::client::{AdminClient, Body};

/// `pki` subcommands.
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Replace the bundle-signing key: the current key endorses a new one,
    /// and the bundle in force is published again, signed with it, to
    /// announce it; edges follow without enrolling again.
    RotateBundleKey,
    /// Replace the fleet CA. Both CAs are trusted for the overlap: each
    /// edge that connects meanwhile learns the new CA and renews its
    /// certificate from it. When the overlap ends the old CA opens nothing:
    /// an edge that did not connect during it must enrol again, and
    /// enrolment tokens made before the rotation stop working.
    RotateCa {
        /// Days both CAs are trusted.
        #[arg(long, default_value_t = 30)]
        overlap_days: u32,
    },
}

/// Runs a `pki` subcommand against the admin API.
pub async fn run(client: AdminClient, command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::RotateBundleKey => {
            let answer = client.send(Method::POST, "/v1/pki/bundle-key/rotate", None).await?;
            match answer["announced_in"].as_u64() {
                Some(version) => {
                    println!("bundle key {} in force, announced in bundle version {version}", answer["bundle_key"])
                }
                None => {
                    println!("bundle key {} in force; the next published bundle announces it", answer["bundle_key"])
                }
            }
        }
        PkiCommand::RotateCa { overlap_days } => {
            let body = serde_json::json!({ "overlap_days": overlap_days });
            let answer = client.send(Method::POST, "/v1/pki/ca/rotate", Some(Body::Json(body))).await?;
            let until = answer["old_ca_retires_at_ms"].as_i64().unwrap_or_default();
            let until = time::OffsetDateTime::from_unix_timestamp(until / 1000)
                .map(|at| at.to_string())
                .unwrap_or_else(|_| format!("{until} ms"));
            println!(
                "fleet CA generation {} in force (sha256 {}); the old CA is trusted until {until}",
                answer["generation"], answer["fingerprint"]
            );
        }
    }
    Ok(())
}
