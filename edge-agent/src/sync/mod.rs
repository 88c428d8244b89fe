//! The edge's side of the link with its control plane.
//!
//! # Layout
//! - [`identity`]: the edge's key and pins, and TLS client configurations.
//! - [`enroll`]: trading a one-time token for a certificate.
//! - [`uplink`]: the QUIC sync driver around `aios_shared::sync::EdgeSync`.
//! - [`renewal`]: certificate renewal and revocation, on the uplink.

pub mod enroll;
pub mod identity;
pub mod renewal;
pub mod uplink;
