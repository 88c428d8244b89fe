//! Frames over QUIC streams, and the QUIC settings both daemons use.
//!
//! Both daemons link this crate, so the framing and the transport settings
//! have exactly one definition.
//!
//! Every limit quinn would otherwise default is set here, small enough that
//! a peer that never authenticates cannot pin much memory: one bidirectional
//! stream per connection (all the sync protocol and enrolment use), no
//! unidirectional streams, no datagrams, bounded stream and connection
//! receive windows. The control plane starts each connection with an even
//! smaller connection window ([`server_transport_config`]) and opens it to
//! [`RECEIVE_WINDOW`] once the peer has proved who it is.

use std::sync::Arc;
use std::time::Duration;

use aios_shared::wire::{self, Frame, WireError, FRAME_HEADER_LEN};
use rustls::crypto::CryptoProvider;

/// ALPN protocol id of the sync protocol.
pub const ALPN: &[u8] = b"aios-sync/1";

/// The name in the control plane's server certificate. Edges always ask for
/// this name, whatever address they dial: the identity is the certificate
/// chained to the pinned CA, not the address.
pub const SERVER_NAME: &str = "aios-control-plane";

/// A connection idle this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Keep-alives are sent well inside the idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(4);

/// Streams a peer may have open at once. The sync protocol and enrolment
/// each use one bidirectional stream per connection; nothing opens more.
pub const MAX_BIDI_STREAMS: u32 = 1;

/// How many bytes a peer may send on one stream ahead of the reader. Larger
/// than quinn's default (1.25 MB) so one stream keeps a long link busy; a
/// frame (up to [`wire::MAX_FRAME_LEN`]) simply takes two windows.
pub const STREAM_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// How many bytes an authenticated peer may send on a connection ahead of
/// the reader (quinn's default is unbounded). With one stream per
/// connection, the stream's window.
pub const RECEIVE_WINDOW: u32 = STREAM_RECEIVE_WINDOW;

/// The connection receive window before the peer authenticated: room for
/// the first frame (at most [`MAX_FIRST_FRAME_LEN`]) and little more.
pub const UNAUTHENTICATED_RECEIVE_WINDOW: u32 = 64 * 1024;

/// The largest first frame of a connection (`Hello` or `Enroll`, both a few
/// hundred bytes), checked before its body is allocated.
pub const MAX_FIRST_FRAME_LEN: usize = 32 * 1024;

/// Bytes written but not yet acknowledged, per connection.
pub const SEND_WINDOW: u64 = 8 * 1024 * 1024;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The bytes received are not a valid frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream failed while reading.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The stream failed while writing.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

/// The crypto provider both daemons use (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificate validity is checked against `clock`, not the process's
/// clock, so a test that moves a virtual clock by a year moves the TLS
/// handshakes with it.
pub fn tls_time(clock: &crate::clock::SharedClock) -> Arc<dyn rustls::time_provider::TimeProvider> {
    Arc::new(TlsTime(clock.clone()))
}

#[derive(Debug)]
struct TlsTime(crate::clock::SharedClock);

impl rustls::time_provider::TimeProvider for TlsTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        let ms = u64::try_from(self.0.unix_ms()).ok()?;
        Some(rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_millis(ms)))
    }
}

/// Transport settings shared by both ends, for a peer that authenticated
/// (an edge's view of the control plane, or an enrolled edge's connection).
pub fn transport_config() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits a VarInt")));
    config.keep_alive_interval(Some(KEEP_ALIVE));
    config.max_concurrent_bidi_streams(MAX_BIDI_STREAMS.into());
    config.max_concurrent_uni_streams(0u32.into());
    config.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    config.receive_window(RECEIVE_WINDOW.into());
    config.send_window(SEND_WINDOW);
    // No datagrams: the protocol has none, so none are buffered.
    config.datagram_receive_buffer_size(None);
    config
}

/// The control plane's settings: [`transport_config`] with the connection
/// window at [`UNAUTHENTICATED_RECEIVE_WINDOW`] until the peer is known
/// (then `Connection::set_receive_window` opens it to [`RECEIVE_WINDOW`]).
pub fn server_transport_config() -> quinn::TransportConfig {
    let mut config = transport_config();
    config.receive_window(UNAUTHENTICATED_RECEIVE_WINDOW.into());
    config
}

/// Reads one frame; `Ok(None)` when the peer finished the stream cleanly
/// between frames. The length is checked before the body is allocated.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Frame>, TransportError> {
    read_frame_within(recv, wire::MAX_FRAME_LEN).await
}

/// [`read_frame`] with a lower size limit (`max_len` at most
/// [`wire::MAX_FRAME_LEN`]), for frames from a peer not yet authenticated.
pub async fn read_frame_within(recv: &mut quinn::RecvStream, max_len: usize) -> Result<Option<Frame>, TransportError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    let len = wire::decode_frame_len(header)?;
    if len > max_len {
        return Err(WireError::FrameTooLarge { len, max: max_len }.into());
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(wire::decode_frame_body(&body)?))
}

/// Writes one frame.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), TransportError> {
    let mut bytes = Vec::new();
    wire::encode_frame(frame, &mut bytes)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Frames read by [`spawn_frame_reader`]; an `Err` is the last item.
pub type FrameStream = tokio::sync::mpsc::Receiver<Result<Frame, String>>;

/// Reads frames on a task of its own (reading is not cancel-safe, so a
/// `select!` loop must not read directly). The task stops when the returned
/// guard is dropped.
pub fn spawn_frame_reader(mut recv: quinn::RecvStream) -> (FrameStream, AbortOnDrop) {
    let (frames_tx, frames) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(async move {
        loop {
            let item = match read_frame(&mut recv).await {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => Err("the peer finished the stream".to_owned()),
                Err(err) => Err(err.to_string()),
            };
            let stop = item.is_err();
            if frames_tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    (frames, AbortOnDrop(task))
}

/// Aborts a task when dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sleeps until `deadline`, or forever without one (for `select!` arms
/// driven by a state machine's `poll_timeout`).
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The first certificate the peer presented (DER), if any.
pub fn peer_certificate(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().map(|cert| cert.to_vec()))
}

/// Application close codes on QUIC connections.
pub mod close_code {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL: u32 = 1;
    /// The edge was revoked.
    pub const REVOKED: u32 = 2;
    /// Refused for a reason retrying cannot fix, given in an error frame.
    pub const REFUSED: u32 = 3;
    /// The peer failed internally; retry later.
    pub const INTERNAL: u32 = 4;
}
