//! The edge's half of a sync connection.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::audit::AuditEvent;
use crate::bundle::SignedBundle;
use crate::wire::{ErrorCode, ErrorFrame, Frame, Hello, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};

/// Tunables of the edge side.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// This edge's id, as bound to its certificate.
    pub edge_id: String,
    /// Software version, reported in the handshake.
    pub agent_version: String,
    /// Most events in one `AuditBatch` frame.
    pub batch_max_events: usize,
    /// Most events sent but not yet acknowledged (back-pressure).
    pub window_events: u64,
    /// Resend the handshake or unacknowledged audit events after this long
    /// without progress. Over QUIC this only matters when the peer stalls.
    pub retransmit_after: Duration,
}

impl EdgeConfig {
    /// Defaults suited to a QUIC stream.
    pub fn new(edge_id: impl Into<String>, agent_version: impl Into<String>) -> EdgeConfig {
        EdgeConfig {
            edge_id: edge_id.into(),
            agent_version: agent_version.into(),
            batch_max_events: 1024,
            window_events: 16 * 1024,
            retransmit_after: Duration::from_secs(30),
        }
    }
}

/// What the edge's driver must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeEvent {
    /// The handshake completed: the edge is connected.
    Connected {
        /// Highest sequence the control plane holds.
        audit_acked_seq: u64,
    },
    /// The control plane closed the connection with a reason.
    Refused(ErrorFrame),
    /// Read stored audit events `from_seq ..` (at most `max`) and pass them to
    /// [`EdgeSync::audit_loaded`].
    LoadAudit {
        /// First sequence wanted.
        from_seq: u64,
        /// Most events wanted.
        max: usize,
    },
    /// The control plane dispatched tasks: persist each (idempotently, keyed
    /// by its id), then call [`EdgeSync::tasks_received`] with the receipts.
    TasksReceived(Vec<crate::wire::DispatchedTask>),
    /// The control plane sent signed commands: verify and apply each (once,
    /// keyed by its id), then call [`EdgeSync::commands_applied`].
    CommandsReceived(Vec<crate::command::SignedCommand>),
    /// Events up to this sequence are durably stored at the control plane.
    AuditAcked {
        /// Highest acknowledged sequence.
        up_to_seq: u64,
    },
    /// A bundle arrived: verify and persist it, then call
    /// [`EdgeSync::bundle_applied`] or [`EdgeSync::bundle_refused`].
    BundleReceived(SignedBundle),
    /// The control plane answered [`EdgeSync::request_certificate`]: check
    /// the certificate and store it; the next connection presents it.
    CertificateIssued(crate::wire::CertificateGrant),
    /// The control plane announced the fleet CAs to trust: check them
    /// (`aios_shared::identity::check_anchors`) and store them.
    TrustAnchors(Vec<crate::wire::TrustedCa>),
    /// The peer broke the protocol; close the connection.
    ProtocolError(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `Hello` sent at the given time, waiting for `HelloAck`.
    Handshaking {
        hello_sent: Instant,
    },
    Connected,
    Closed,
}

/// The edge side of one sync connection, sans I/O.
///
/// Audit events are never held here: the machine asks the driver to load them
/// (`LoadAudit`) and keeps only cursors. `acked_seq` never moves backwards, so
/// an event, once acknowledged, is never sent again on this connection.
#[derive(Debug)]
pub struct EdgeSync {
    config: EdgeConfig,
    state: State,
    /// Version of the bundle in force, reported in the handshake.
    bundle_version: u64,
    /// Highest sequence written to the edge's log.
    audit_head_seq: u64,
    /// Highest sequence the control plane acknowledged.
    acked_seq: u64,
    /// Highest sequence sent on this connection.
    sent_up_to: u64,
    /// A `LoadAudit` is outstanding.
    loading: bool,
    /// A `RenewCertificate` was sent and not answered.
    renewal_requested: bool,
    /// Last time the acknowledged position moved (or a batch was sent).
    last_progress: Instant,
    transmits: VecDeque<Frame>,
    events: VecDeque<EdgeEvent>,
}

impl EdgeSync {
    /// Starts a connection: queues the `Hello`.
    pub fn new(config: EdgeConfig, now: Instant, bundle_version: u64, audit_head_seq: u64) -> EdgeSync {
        let mut sync = EdgeSync {
            config,
            state: State::Handshaking { hello_sent: now },
            bundle_version,
            audit_head_seq,
            acked_seq: 0,
            sent_up_to: 0,
            loading: false,
            renewal_requested: false,
            last_progress: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        sync.send_hello(now);
        sync
    }

    /// Whether the handshake has completed and the connection is open.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the connection is over (refused or broken).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Highest sequence acknowledged by the control plane on this connection.
    pub fn acked_seq(&self) -> u64 {
        self.acked_seq
    }

    /// Feeds a frame received from the control plane.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) {
        match (self.state, frame) {
            (State::Closed, _) => {}
            (_, Frame::Error(error)) => {
                self.state = State::Closed;
                self.events.push_back(EdgeEvent::Refused(error));
            }
            (State::Handshaking { .. }, Frame::HelloAck(ack)) => {
                if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_MAX).contains(&ack.version) {
                    return self.fail(format!("control plane chose unsupported version {}", ack.version));
                }
                self.state = State::Connected;
                self.acked_seq = ack.audit_acked_seq;
                self.sent_up_to = ack.audit_acked_seq;
                self.last_progress = now;
                self.events.push_back(EdgeEvent::Connected { audit_acked_seq: ack.audit_acked_seq });
                self.request_audit();
            }
            // A duplicated HelloAck after the handshake says nothing new.
            (State::Connected, Frame::HelloAck(_)) => {}
            // Overtook a lost HelloAck; the control plane sends it again.
            (State::Handshaking { .. }, Frame::AuditAck { .. } | Frame::Bundle(_)) => {}
            (State::Connected, Frame::AuditAck { up_to_seq }) => {
                if up_to_seq > self.acked_seq {
                    self.acked_seq = up_to_seq;
                    self.sent_up_to = self.sent_up_to.max(up_to_seq);
                    self.last_progress = now;
                    self.events.push_back(EdgeEvent::AuditAcked { up_to_seq });
                    self.request_audit();
                }
            }
            // Even a re-sent copy of the bundle in force goes to the driver:
            // only a byte-for-byte comparison (`SignedBundle::offer`) may
            // decide it is the same bundle.
            (State::Connected, Frame::Bundle(bundle)) => self.events.push_back(EdgeEvent::BundleReceived(bundle)),
            (State::Handshaking { .. }, Frame::Tasks(_) | Frame::Commands(_)) => {}
            (State::Connected, Frame::Commands(commands)) => {
                self.events.push_back(EdgeEvent::CommandsReceived(commands))
            }
            (State::Connected, Frame::Tasks(tasks)) => self.events.push_back(EdgeEvent::TasksReceived(tasks)),
            (State::Connected, Frame::Certificate(grant)) if self.renewal_requested => {
                self.renewal_requested = false;
                self.events.push_back(EdgeEvent::CertificateIssued(grant));
            }
            (State::Connected, Frame::TrustAnchors(anchors)) => self.events.push_back(EdgeEvent::TrustAnchors(anchors)),
            (state, frame) => self.fail(format!("unexpected {} in state {state:?}", frame_name(&frame))),
        }
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Handshaking { hello_sent } if now >= hello_sent + self.config.retransmit_after => {
                self.send_hello(now);
            }
            State::Connected
                if self.sent_up_to > self.acked_seq && now >= self.last_progress + self.config.retransmit_after =>
            {
                // Nothing acknowledged for a while: start again from the last ack.
                self.sent_up_to = self.acked_seq;
                self.last_progress = now;
                self.request_audit();
            }
            _ => {}
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmits.pop_front()
    }

    /// When [`EdgeSync::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Handshaking { hello_sent } => Some(hello_sent + self.config.retransmit_after),
            State::Connected if self.sent_up_to > self.acked_seq => {
                Some(self.last_progress + self.config.retransmit_after)
            }
            _ => None,
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<EdgeEvent> {
        self.events.pop_front()
    }

    /// New events were appended to the log, up to `head_seq`.
    pub fn audit_appended(&mut self, head_seq: u64) {
        self.audit_head_seq = self.audit_head_seq.max(head_seq);
        self.request_audit();
    }

    /// The answer to `LoadAudit`: stored events in sequence order.
    pub fn audit_loaded(&mut self, now: Instant, events: Vec<AuditEvent>) {
        self.loading = false;
        if self.state != State::Connected {
            return;
        }
        // A retransmit may have rewound the cursor while the load was out:
        // keep only what continues from where we are now.
        let events: Vec<AuditEvent> = events.into_iter().skip_while(|e| e.seq <= self.sent_up_to).collect();
        let contiguous = events.first().is_some_and(|e| self.sent_up_to.checked_add(1) == Some(e.seq))
            && events.windows(2).all(|w| w[0].seq.checked_add(1) == Some(w[1].seq));
        if contiguous {
            let last = events.last().expect("contiguous implies non-empty").seq;
            self.audit_head_seq = self.audit_head_seq.max(last);
            if self.sent_up_to == self.acked_seq {
                self.last_progress = now;
            }
            self.sent_up_to = last;
            self.transmits.push_back(Frame::AuditBatch(events));
        }
        self.request_audit();
    }

    /// Asks for a renewed certificate for the key in `csr_der`. Once per
    /// connection, and only when connected (the request rides on the
    /// authenticated connection); returns whether it was sent.
    pub fn request_certificate(&mut self, csr_der: Vec<u8>) -> bool {
        if self.state != State::Connected || self.renewal_requested {
            return false;
        }
        self.renewal_requested = true;
        self.transmits.push_back(Frame::RenewCertificate(csr_der));
        true
    }

    /// Whether a certificate was requested on this connection and not yet
    /// answered.
    pub fn renewal_pending(&self) -> bool {
        self.renewal_requested
    }

    /// The bundle of `version` is persisted and in force.
    pub fn bundle_applied(&mut self, version: u64) {
        self.bundle_version = self.bundle_version.max(version);
        self.transmits.push_back(Frame::BundleAck { version });
    }

    /// The bundle of `version` was refused.
    pub fn bundle_refused(&mut self, version: u64, reason: String) {
        self.transmits.push_back(Frame::BundleRefused { version, reason });
    }

    /// Dispatched tasks are persisted or refused: acknowledge them.
    pub fn tasks_received(&mut self, receipts: Vec<crate::wire::TaskReceipt>) {
        if !receipts.is_empty() {
            self.transmits.push_back(Frame::TasksAck(receipts));
        }
    }

    /// Commands are applied or refused: acknowledge them.
    pub fn commands_applied(&mut self, receipts: Vec<crate::wire::CommandReceipt>) {
        if !receipts.is_empty() {
            self.transmits.push_back(Frame::CommandsAck(receipts));
        }
    }

    fn send_hello(&mut self, now: Instant) {
        self.state = State::Handshaking { hello_sent: now };
        self.transmits.push_back(Frame::Hello(Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            edge_id: self.config.edge_id.clone(),
            agent_version: self.config.agent_version.clone(),
            bundle_version: self.bundle_version,
            audit_head_seq: self.audit_head_seq,
        }));
    }

    /// Asks the driver for more events if there are some and the window allows.
    fn request_audit(&mut self) {
        if self.loading || self.state != State::Connected || self.sent_up_to >= self.audit_head_seq {
            return;
        }
        let in_flight = self.sent_up_to - self.acked_seq;
        let room = self.config.window_events.saturating_sub(in_flight);
        if room == 0 {
            return;
        }
        let max = (self.config.batch_max_events as u64).min(room) as usize;
        self.loading = true;
        self.events.push_back(EdgeEvent::LoadAudit { from_seq: self.sent_up_to + 1, max });
    }

    fn fail(&mut self, message: String) {
        self.state = State::Closed;
        self.transmits.push_back(Frame::Error(ErrorFrame { code: ErrorCode::Malformed, message: message.clone() }));
        self.events.push_back(EdgeEvent::ProtocolError(message));
    }
}

/// A short name of a frame's kind, for error messages.
pub(crate) fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::HelloAck(_) => "HelloAck",
        Frame::Error(_) => "Error",
        Frame::AuditBatch(_) => "AuditBatch",
        Frame::AuditAck { .. } => "AuditAck",
        Frame::Bundle(_) => "Bundle",
        Frame::BundleAck { .. } => "BundleAck",
        Frame::BundleRefused { .. } => "BundleRefused",
        Frame::Enroll(_) => "Enroll",
        Frame::Enrolled(_) => "Enrolled",
        Frame::Tasks(_) => "Tasks",
        Frame::TasksAck(_) => "TasksAck",
        Frame::Commands(_) => "Commands",
        Frame::CommandsAck(_) => "CommandsAck",
        Frame::RenewCertificate(_) => "RenewCertificate",
        Frame::Certificate(_) => "Certificate",
        Frame::TrustAnchors(_) => "TrustAnchors",
    }
}
