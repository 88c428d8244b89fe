//! The control plane's half of a sync connection.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::edge::frame_name;
use crate::audit::AuditEvent;
use crate::bundle::SignedBundle;
use crate::command::SignedCommand;
use crate::wire::{
    DispatchedTask, ErrorCode, ErrorFrame, Frame, Hello, HelloAck, TaskReceipt, PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
};

/// Tunables of the control-plane side.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Most events handed to the driver for commit but not yet committed;
    /// past this, [`ControlSync::wants_frames`] turns false (back-pressure).
    pub max_uncommitted_events: u64,
    /// Resend an unacknowledged bundle after this long.
    pub bundle_retransmit_after: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { max_uncommitted_events: 32 * 1024, bundle_retransmit_after: Duration::from_secs(30) }
    }
}

/// What the control plane's driver must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlEvent {
    /// The edge said hello: check its identity, then call
    /// [`ControlSync::accept`] or [`ControlSync::reject`].
    HelloReceived(Hello),
    /// New consecutive events to verify and commit durably, then call
    /// [`ControlSync::committed`].
    Ingest(Vec<AuditEvent>),
    /// The edge applied this bundle version.
    BundleAcked {
        /// The applied version.
        version: u64,
    },
    /// The edge refused this bundle version.
    BundleRefused {
        /// The refused version.
        version: u64,
        /// The edge's reason.
        reason: String,
    },
    /// The edge persisted (or refused) dispatched tasks: record the receipts.
    TasksAcked(Vec<TaskReceipt>),
    /// The edge applied (or refused) commands: record the receipts.
    CommandsAcked(Vec<crate::wire::CommandReceipt>),
    /// The edge asks for a renewed certificate (a CSR, DER): check it and
    /// the edge's standing, then call [`ControlSync::certificate_issued`], or
    /// nothing to decline (the edge asks again on its next connection).
    RenewalRequested(Vec<u8>),
    /// The edge closed the connection with a reason.
    PeerError(ErrorFrame),
    /// The edge broke the protocol; close the connection.
    ProtocolError(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHello,
    /// `Hello` passed to the driver, no verdict yet.
    Verifying,
    Connected,
    Closed,
}

/// The control-plane side of one sync connection, sans I/O.
#[derive(Debug)]
pub struct ControlSync {
    config: ControlConfig,
    state: State,
    /// The accepted handshake's answer, re-sent if the edge repeats `Hello`.
    hello_ack: Option<HelloAck>,
    /// The protocol version agreed with the edge: the newest both speak.
    version: u16,
    /// Highest sequence durably committed.
    committed_seq: u64,
    /// Highest sequence handed to the driver for commit.
    ingest_up_to: u64,
    /// The newest bundle not yet acknowledged, and when it was last sent.
    pending_bundle: Option<(u64, SignedBundle, Instant)>,
    /// Dispatched tasks not yet acknowledged.
    tasks: Resend<DispatchedTask>,
    /// Commands not yet acknowledged.
    commands: Resend<SignedCommand>,
    transmits: VecDeque<Frame>,
    events: VecDeque<ControlEvent>,
}

impl ControlSync {
    /// A connection waiting for the edge's `Hello`.
    pub fn new(config: ControlConfig) -> ControlSync {
        ControlSync {
            config,
            state: State::AwaitHello,
            hello_ack: None,
            version: PROTOCOL_VERSION_MIN,
            committed_seq: 0,
            ingest_up_to: 0,
            pending_bundle: None,
            tasks: Resend::default(),
            commands: Resend::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether the handshake has completed.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// False while too many events await commit: the driver should stop
    /// reading from the stream until [`ControlSync::committed`] catches up.
    pub fn wants_frames(&self) -> bool {
        self.ingest_up_to - self.committed_seq < self.config.max_uncommitted_events
    }

    /// Feeds a frame received from the edge.
    pub fn handle_frame(&mut self, _now: Instant, frame: Frame) {
        match (self.state, frame) {
            (State::Closed, _) => {}
            (_, Frame::Error(error)) => {
                self.state = State::Closed;
                self.events.push_back(ControlEvent::PeerError(error));
            }
            (State::AwaitHello, Frame::Hello(hello)) => {
                if hello.version_max < PROTOCOL_VERSION_MIN || hello.version_min > PROTOCOL_VERSION_MAX {
                    let message = format!(
                        "no common protocol version: edge speaks {}..={}, control plane {}..={}",
                        hello.version_min, hello.version_max, PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX
                    );
                    return self.reject(ErrorCode::UnsupportedVersion, message);
                }
                self.state = State::Verifying;
                self.version = hello.version_max.min(PROTOCOL_VERSION_MAX);
                self.events.push_back(ControlEvent::HelloReceived(hello));
            }
            // A repeated Hello (its HelloAck was lost) gets the same answer.
            (State::Verifying, Frame::Hello(_)) => {}
            (State::Connected, Frame::Hello(_)) => {
                let ack = self.hello_ack.clone().expect("connected implies an accepted hello");
                self.transmits.push_back(Frame::HelloAck(ack));
            }
            (State::Connected, Frame::AuditBatch(batch)) => self.handle_batch(batch),
            (State::Connected, Frame::BundleAck { version }) => {
                self.settle_bundle(version);
                self.events.push_back(ControlEvent::BundleAcked { version });
            }
            (State::Connected, Frame::TasksAck(receipts)) => {
                self.tasks.acknowledged(|task| receipts.iter().any(|r| r.id == task.id));
                self.events.push_back(ControlEvent::TasksAcked(receipts));
            }
            (State::Connected, Frame::CommandsAck(receipts)) => {
                self.commands.acknowledged(|command| receipts.iter().any(|r| r.id == command.id));
                self.events.push_back(ControlEvent::CommandsAcked(receipts));
            }
            (State::Connected, Frame::RenewCertificate(csr_der)) => {
                self.events.push_back(ControlEvent::RenewalRequested(csr_der))
            }
            (State::Connected, Frame::BundleRefused { version, reason }) => {
                self.settle_bundle(version);
                self.events.push_back(ControlEvent::BundleRefused { version, reason });
            }
            (state, frame) => {
                let message = format!("unexpected {} in state {state:?}", frame_name(&frame));
                self.reject(ErrorCode::Malformed, message.clone());
                self.events.push_back(ControlEvent::ProtocolError(message));
            }
        }
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((_, bundle, sent)) = &mut self.pending_bundle {
            if now >= *sent + self.config.bundle_retransmit_after {
                *sent = now;
                self.transmits.push_back(Frame::Bundle(bundle.clone()));
            }
        }
        let after = self.config.bundle_retransmit_after;
        if let Some(tasks) = self.tasks.due(now, after) {
            self.transmits.push_back(Frame::Tasks(tasks));
        }
        if let Some(commands) = self.commands.due(now, after) {
            self.transmits.push_back(Frame::Commands(commands));
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmits.pop_front()
    }

    /// When [`ControlSync::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let bundle = self.pending_bundle.as_ref().map(|(_, _, sent)| *sent);
        let queues = [self.tasks.sent, self.commands.sent];
        bundle
            .into_iter()
            .chain(queues.into_iter().flatten())
            .min()
            .map(|sent| sent + self.config.bundle_retransmit_after)
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ControlEvent> {
        self.events.pop_front()
    }

    /// The edge is who it says and may sync; `committed_seq` is the highest
    /// contiguous sequence already stored for it.
    pub fn accept(&mut self, committed_seq: u64) {
        if self.state != State::Verifying {
            return;
        }
        let ack = HelloAck { version: self.version, audit_acked_seq: committed_seq };
        self.state = State::Connected;
        self.committed_seq = committed_seq;
        self.ingest_up_to = committed_seq;
        self.hello_ack = Some(ack.clone());
        self.transmits.push_back(Frame::HelloAck(ack));
    }

    /// The answer to [`ControlEvent::RenewalRequested`].
    pub fn certificate_issued(&mut self, grant: crate::wire::CertificateGrant) {
        if self.state == State::Connected {
            self.transmits.push_back(Frame::Certificate(grant));
        }
    }

    /// Announces the fleet CAs the edge is to trust (once connected, and
    /// only to an edge whose protocol version has the frame).
    pub fn announce_trust_anchors(&mut self, anchors: Vec<crate::wire::TrustedCa>) {
        if self.state == State::Connected && self.version >= crate::wire::TRUST_ANCHORS_SINCE {
            self.transmits.push_back(Frame::TrustAnchors(anchors));
        }
    }

    /// Refuses the connection with a reason the edge will show.
    pub fn reject(&mut self, code: ErrorCode, message: String) {
        self.state = State::Closed;
        self.transmits.push_back(Frame::Error(ErrorFrame { code, message }));
    }

    /// Events up to `up_to_seq` are durably committed.
    pub fn committed(&mut self, up_to_seq: u64) {
        if up_to_seq > self.committed_seq {
            self.committed_seq = up_to_seq;
            self.ingest_up_to = self.ingest_up_to.max(up_to_seq);
            self.transmits.push_back(Frame::AuditAck { up_to_seq });
        }
    }

    /// The driver could not commit what it was handed: forget it, so the
    /// edge's retransmission is accepted again.
    pub fn commit_failed(&mut self) {
        self.ingest_up_to = self.committed_seq;
    }

    /// Sends a bundle, replacing any older one still unacknowledged.
    pub fn push_bundle(&mut self, now: Instant, version: u64, bundle: SignedBundle) {
        if self.pending_bundle.as_ref().is_some_and(|(pending, _, _)| *pending >= version) {
            return;
        }
        self.transmits.push_back(Frame::Bundle(bundle.clone()));
        self.pending_bundle = Some((version, bundle, now));
    }

    /// Sends dispatched tasks not already pending; all pending ones are
    /// re-sent until the edge acknowledges them. Only once connected.
    pub fn push_tasks(&mut self, now: Instant, tasks: Vec<DispatchedTask>) {
        if self.state != State::Connected {
            return;
        }
        if let Some(fresh) = self.tasks.push(now, tasks, |a, b| a.id == b.id) {
            self.transmits.push_back(Frame::Tasks(fresh));
        }
    }

    /// Sends signed commands not already pending; all pending ones are
    /// re-sent until the edge acknowledges them. Only once connected.
    pub fn push_commands(&mut self, now: Instant, commands: Vec<SignedCommand>) {
        if self.state != State::Connected {
            return;
        }
        if let Some(fresh) = self.commands.push(now, commands, |a, b| a.id == b.id) {
            self.transmits.push_back(Frame::Commands(fresh));
        }
    }

    fn handle_batch(&mut self, batch: Vec<AuditEvent>) {
        // Checked: an enrolled edge may send any number, `u64::MAX` included.
        if !batch.windows(2).all(|w| w[0].seq.checked_add(1) == Some(w[1].seq)) {
            let message = "audit batch is not consecutive".to_owned();
            self.reject(ErrorCode::Malformed, message.clone());
            self.events.push_back(ControlEvent::ProtocolError(message));
            return;
        }
        let fresh: Vec<AuditEvent> = batch.into_iter().skip_while(|e| e.seq <= self.ingest_up_to).collect();
        match fresh.first() {
            // Entirely a duplicate: repeat the ack in case ours was lost.
            None => self.transmits.push_back(Frame::AuditAck { up_to_seq: self.committed_seq }),
            Some(first) if self.ingest_up_to.checked_add(1) == Some(first.seq) => {
                self.ingest_up_to = fresh.last().expect("non-empty").seq;
                self.events.push_back(ControlEvent::Ingest(fresh));
            }
            // A later batch overtook an earlier one (or one was lost): drop it;
            // the edge resends from our last ack.
            Some(_) => self.transmits.push_back(Frame::AuditAck { up_to_seq: self.committed_seq }),
        }
    }

    fn settle_bundle(&mut self, version: u64) {
        if self.pending_bundle.as_ref().is_some_and(|(pending, _, _)| *pending <= version) {
            self.pending_bundle = None;
        }
    }
}

/// Items sent to the edge and re-sent, all together, until acknowledged.
#[derive(Debug)]
struct Resend<T> {
    pending: Vec<T>,
    /// When the pending items were last sent; `None` when there are none.
    sent: Option<Instant>,
}

impl<T> Default for Resend<T> {
    fn default() -> Self {
        Self { pending: Vec::new(), sent: None }
    }
}

impl<T: Clone> Resend<T> {
    /// Queues the items not already pending and returns them to send now.
    fn push(&mut self, now: Instant, items: Vec<T>, same: impl Fn(&T, &T) -> bool) -> Option<Vec<T>> {
        let fresh: Vec<T> = items.into_iter().filter(|item| !self.pending.iter().any(|p| same(p, item))).collect();
        if fresh.is_empty() {
            return None;
        }
        self.pending.extend(fresh.iter().cloned());
        self.sent.get_or_insert(now);
        Some(fresh)
    }

    /// Drops the items the edge acknowledged.
    fn acknowledged(&mut self, acked: impl Fn(&T) -> bool) {
        self.pending.retain(|item| !acked(item));
        if self.pending.is_empty() {
            self.sent = None;
        }
    }

    /// Everything pending, when it is time to send it again.
    fn due(&mut self, now: Instant, after: std::time::Duration) -> Option<Vec<T>> {
        let sent = self.sent.as_mut()?;
        if now < *sent + after {
            return None;
        }
        *sent = now;
        Some(self.pending.clone())
    }
}
