//! The wire format spoken between an edge and the control plane.
//!
//! A connection carries one bidirectional QUIC stream of frames. Each frame is
//! a 4-byte big-endian length followed by that many bytes of a postcard-encoded
//! [`Frame`]. The length is checked against [`MAX_FRAME_LEN`] *before* any
//! buffer for the body is allocated, so a hostile peer cannot make us reserve
//! gigabytes by lying in a header.
//!
//! The protocol version is negotiated once per connection in the
//! [`Frame::Hello`] / [`Frame::HelloAck`] exchange; everything after it is
//! interpreted under the agreed version.

use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::bundle::SignedBundle;

/// Oldest protocol version this build speaks.
pub const PROTOCOL_VERSION_MIN: u16 = 1;
/// Newest protocol version this build speaks. Version 2 adds
/// [`Frame::TrustAnchors`], which the control plane sends unasked, so only
/// to an edge that speaks it.
pub const PROTOCOL_VERSION_MAX: u16 = 2;

/// The first version with [`Frame::TrustAnchors`].
pub const TRUST_ANCHORS_SINCE: u16 = 2;

/// Largest frame body accepted, in bytes. Audit batches are sized well below
/// this; a bundle larger than this cannot be published.
pub const MAX_FRAME_LEN: usize = 8 * 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Everything that can travel on a sync or enrolment stream.
///
/// Variants are append-only: a new variant gets a new tag at the end, so an
/// old peer decodes it as malformed and closes the connection cleanly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Edge -> control plane, first frame of a sync stream.
    Hello(Hello),
    /// Control plane -> edge: the handshake succeeded; the edge is connected
    /// only after it has seen this frame.
    HelloAck(HelloAck),
    /// Either way: the sender is closing the connection for this reason.
    Error(ErrorFrame),
    /// Edge -> control plane: consecutive audit events, lowest sequence first.
    AuditBatch(Vec<AuditEvent>),
    /// Control plane -> edge: every event up to and including this sequence
    /// number is durably stored.
    AuditAck {
        /// Highest contiguous sequence number committed.
        up_to_seq: u64,
    },
    /// Control plane -> edge: a signed policy bundle to apply.
    Bundle(SignedBundle),
    /// Edge -> control plane: the bundle of this version is persisted and applied.
    BundleAck {
        /// Version of the applied bundle.
        version: u64,
    },
    /// Edge -> control plane: the bundle was refused; the edge keeps its last
    /// good bundle.
    BundleRefused {
        /// Version of the refused bundle.
        version: u64,
        /// Why it was refused, for the operator.
        reason: String,
    },
    /// Edge -> control plane on a connection without a client certificate:
    /// exchange a one-time token for a certificate.
    Enroll(EnrollRequest),
    /// Control plane -> edge: enrolment succeeded.
    Enrolled(Enrolled),
    /// Control plane -> edge: tasks an operator dispatched to this edge.
    /// Re-sent until acknowledged; the dispatch id is the task's idempotency
    /// key at the edge, so a repeat never makes a second task.
    Tasks(Vec<DispatchedTask>),
    /// Edge -> control plane: these dispatched tasks are persisted (or refused).
    TasksAck(Vec<TaskReceipt>),
    /// Control plane -> edge: signed operator commands (approval decisions,
    /// dead-letter retries, compensations). Re-sent until acknowledged; the
    /// edge applies each id once.
    Commands(Vec<crate::command::SignedCommand>),
    /// Edge -> control plane: these commands are applied (or refused).
    CommandsAck(Vec<CommandReceipt>),
    /// Edge -> control plane, once connected: a certificate signing request
    /// (DER) for the key this connection authenticated with, sent when the
    /// edge's certificate is two thirds through its life.
    RenewCertificate(Vec<u8>),
    /// Control plane -> edge: the renewed certificate.
    Certificate(CertificateGrant),
    /// Control plane -> edge, once connected: the fleet CAs the edge is to
    /// trust, the issuing one first, then any being retired with the time
    /// they stop being trusted (`aios_shared::identity`).
    TrustAnchors(Vec<TrustedCa>),
}

/// A fleet CA an edge trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedCa {
    /// The CA certificate (DER).
    pub der: Vec<u8>,
    /// When it stops being trusted; `None` for the CA that issues now.
    pub retires_at_ms: Option<i64>,
}

/// The control plane's answer to [`Frame::RenewCertificate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateGrant {
    /// The new certificate (DER), for the same key, signed by the fleet CA.
    pub cert_der: Vec<u8>,
}

/// The edge's receipt for a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReceipt {
    /// The command id.
    pub id: String,
    /// Why the edge refused it (bad signature, unknown approval, ...).
    pub refused: Option<String>,
}

/// A task dispatched by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchedTask {
    /// Unique at the control plane; the edge's idempotency key for it.
    pub id: String,
    /// The agent to run.
    pub agent: String,
    /// The task kind.
    pub kind: Option<String>,
    /// The input, as JSON text.
    pub input: String,
}

/// The edge's receipt for a dispatched task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReceipt {
    /// The dispatch id.
    pub id: String,
    /// The edge's task id, when it accepted the task.
    pub task_id: Option<String>,
    /// Why the edge refused it (no such agent, a kind it does not accept).
    pub refused: Option<String>,
}

/// The edge's opening frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the edge speaks.
    pub version_min: u16,
    /// Highest protocol version the edge speaks.
    pub version_max: u16,
    /// The edge's own idea of its id; must match the one bound to its certificate.
    pub edge_id: String,
    /// Software version of the edge, shown in the fleet view.
    pub agent_version: String,
    /// Version of the policy bundle the edge has applied (0 for none).
    pub bundle_version: u64,
    /// Highest audit sequence number the edge has written.
    pub audit_head_seq: u64,
}

/// The control plane's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version both sides now speak.
    pub version: u16,
    /// Highest contiguous audit sequence the control plane holds for this edge;
    /// the edge resumes uploading after it.
    pub audit_acked_seq: u64,
}

/// Why a peer is closing a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Machine-readable reasons for closing a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client presented no certificate on a sync stream.
    CertificateRequired,
    /// A frame could not be decoded or broke the protocol.
    Malformed,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The edge's certificate is unknown or does not match its claimed id.
    UnknownEdge,
    /// The edge has been revoked by an operator.
    Revoked,
    /// The enrolment token is unknown, used, or expired.
    BadToken,
    /// The control plane failed internally; retry later.
    Internal,
}

impl ErrorCode {
    /// Whether an edge that got this error should stop retrying quickly and
    /// back off for a long time (it will not succeed by retrying).
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorCode::CertificateRequired
                | ErrorCode::UnknownEdge
                | ErrorCode::Revoked
                | ErrorCode::BadToken
                | ErrorCode::UnsupportedVersion
        )
    }
}

/// A request to enrol, sent on a connection without a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The secret part of the one-time token.
    pub token: String,
    /// A PKCS#10 certificate signing request (DER) for the edge's own key.
    pub csr_der: Vec<u8>,
    /// Display name for the edge (for example the host name).
    pub name: String,
    /// The labels the operator gave on the edge (`site=paris`): only
    /// checked against those the token binds, which are the ones the edge
    /// gets.
    pub labels: Vec<(String, String)>,
}

/// The answer to a successful [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The id the control plane gave this edge.
    pub edge_id: String,
    /// The edge's certificate (DER), signed by the fleet CA.
    pub cert_der: Vec<u8>,
    /// The fleet CA certificate (DER), to pin.
    pub ca_der: Vec<u8>,
    /// The control plane's ed25519 bundle-signing public key, to pin.
    pub bundle_key: [u8; 32],
    /// The edge's labels, as its enrolment token binds them.
    pub labels: Vec<(String, String)>,
}

/// Errors from decoding frames.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The length prefix announced a frame larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame body is not a valid encoding of any known frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends `frame`, length-prefixed, to `out`.
///
/// Fails only if the encoded frame would exceed [`MAX_FRAME_LEN`]; nothing is
/// appended then.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let body = postcard::to_extend(frame, std::mem::take(out));
    let mut buf = match body {
        Ok(buf) => buf,
        Err(err) => return Err(WireError::Malformed(err.to_string())),
    };
    let len = buf.len() - start - FRAME_HEADER_LEN;
    if len > MAX_FRAME_LEN {
        buf.truncate(start);
        *out = buf;
        return Err(WireError::FrameTooLarge { len, max: MAX_FRAME_LEN });
    }
    let len_bytes = u32::try_from(len).expect("len is at most MAX_FRAME_LEN").to_be_bytes();
    buf[start..start + FRAME_HEADER_LEN].copy_from_slice(&len_bytes);
    *out = buf;
    Ok(())
}

/// Decodes one frame body (without its length prefix).
pub fn decode_frame_body(body: &[u8]) -> Result<Frame, WireError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge { len: body.len(), max: MAX_FRAME_LEN });
    }
    match postcard::from_bytes::<Frame>(body) {
        Ok(frame) => Ok(frame),
        Err(err) => Err(WireError::Malformed(err.to_string())),
    }
}

/// Reads the length prefix of a frame and checks it against the limit.
pub fn decode_frame_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge { len, max: MAX_FRAME_LEN });
    }
    Ok(len)
}

/// Incremental decoder for a byte stream of frames.
///
/// Feed it whatever the transport delivered with [`FrameDecoder::extend`], then
/// drain complete frames with [`FrameDecoder::next_frame`]. After an error the
/// stream is unusable and the connection must be closed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Bytes received but not yet decoded.
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the transport.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; FRAME_HEADER_LEN] = self.buf[..FRAME_HEADER_LEN].try_into().expect("slice has header length");
        let len = decode_frame_len(header)?;
        if self.buf.len() < FRAME_HEADER_LEN + len {
            return Ok(None);
        }
        let frame = decode_frame_body(&self.buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len])?;
        self.buf.drain(..FRAME_HEADER_LEN + len);
        Ok(Some(frame))
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version_min: 1,
                version_max: 1,
                edge_id: "edge-1".into(),
                agent_version: "0.1.0".into(),
                bundle_version: 3,
                audit_head_seq: 42,
            }),
            Frame::AuditAck { up_to_seq: 7 },
            Frame::Error(ErrorFrame { code: ErrorCode::Revoked, message: "revoked".into() }),
            Frame::BundleRefused { version: 9, reason: "rollback".into() },
        ]
    }

    #[test]
    fn frames_round_trip_through_a_byte_stream_split_anywhere() {
        let frames = sample_frames();
        let mut bytes = Vec::new();
        for frame in &frames {
            encode_frame(frame, &mut bytes).unwrap();
        }
        for split in 0..bytes.len() {
            let mut decoder = FrameDecoder::new();
            let mut decoded = Vec::new();
            for chunk in [&bytes[..split], &bytes[split..]] {
                decoder.extend(chunk);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    decoded.push(frame);
                }
            }
            assert_eq!(decoded, frames, "split at {split}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&u32::MAX.to_be_bytes());
        let err = decoder.next_frame().unwrap_err();
        assert!(matches!(err, WireError::FrameTooLarge { .. }), "{err}");
    }

    #[test]
    fn unknown_variant_is_malformed() {
        let mut decoder = FrameDecoder::new();
        decoder.extend(&[0, 0, 0, 2, 200, 1]);
        let err = decoder.next_frame().unwrap_err();
        assert!(matches!(err, WireError::Malformed(_)), "{err}");
    }

    #[test]
    fn truncated_body_is_malformed() {
        let mut bytes = Vec::new();
        encode_frame(&sample_frames()[0], &mut bytes).unwrap();
        let body = &bytes[FRAME_HEADER_LEN..bytes.len() - 3];
        assert!(matches!(decode_frame_body(body), Err(WireError::Malformed(_))));
    }
}
