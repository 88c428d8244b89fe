//! The sync protocol as two sans-IO state machines, in quinn-proto's style.
//!
//! [`EdgeSync`] and [`ControlSync`] each own one connection's protocol state.
//! A driver feeds them frames (`handle_frame(now, frame)`) and timer expiries
//! (`handle_timeout(now)`), tells them what it did (`audit_loaded`,
//! `committed`, `bundle_applied`, ...), and drains their outputs in a fixed
//! order: `poll_transmit` (frames to send), `poll_event` (work for the driver:
//! load events, commit a batch, apply a bundle) and `poll_timeout`.
//!
//! Neither machine stores anything durable. Resumption after any disconnect
//! comes from the handshake: the edge says how far its log goes, the control
//! plane answers with the highest sequence it holds, and upload restarts right
//! after it. Ingest is idempotent by sequence, so retransmitted or duplicated
//! batches are neither lost nor stored twice.
//!
//! The machines tolerate a transport that drops, duplicates, delays and
//! reorders frames (see the simulated pair in `tests.rs`), even though QUIC
//! streams never do, so their correctness does not lean on the transport.

mod control;
mod edge;

pub use control::{ControlConfig, ControlEvent, ControlSync};
pub use edge::{EdgeConfig, EdgeEvent, EdgeSync};

#[cfg(test)]
mod tests;
