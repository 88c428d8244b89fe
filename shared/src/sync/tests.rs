//! A simulated edge and control plane on a virtual clock, joined by a link
//! that drops, duplicates, delays and reorders frames, and that is cut from
//! time to time. Every run is deterministic for its seed.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::audit::{kinds, AuditEvent, ChainHead, ChainVerifier};
use crate::bundle::{BundleSpec, Offer, SignedBundle};
use crate::wire::{self, ErrorCode, Frame, Hello};

const EDGE_ID: &str = "edge-sim";

/// Frames in flight in one direction.
struct Link {
    /// (delivery time, tie-break, frame).
    in_flight: Vec<(Instant, u64, Frame)>,
    next_id: u64,
}

impl Link {
    fn new() -> Link {
        Link { in_flight: Vec::new(), next_id: 0 }
    }

    fn send(&mut self, now: Instant, frame: Frame, faults: &Faults, rng: &mut StdRng) {
        // Every frame crosses the real encoding, as it would on a stream.
        let mut bytes = Vec::new();
        wire::encode_frame(&frame, &mut bytes).unwrap();
        let frame = wire::decode_frame_body(&bytes[wire::FRAME_HEADER_LEN..]).unwrap();
        if rng.gen_bool(faults.loss) {
            return;
        }
        let copies = if rng.gen_bool(faults.duplication) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = Duration::from_millis(rng.gen_range(1..=faults.max_delay_ms));
            self.in_flight.push((now + delay, self.next_id, frame.clone()));
            self.next_id += 1;
        }
    }

    fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.iter().map(|(at, _, _)| *at).min()
    }

    fn deliver(&mut self, now: Instant) -> Vec<Frame> {
        let mut due: Vec<_> = Vec::new();
        let mut idx = 0;
        while idx < self.in_flight.len() {
            if self.in_flight[idx].0 <= now {
                due.push(self.in_flight.swap_remove(idx));
            } else {
                idx += 1;
            }
        }
        due.sort_by_key(|(at, id, _)| (*at, *id));
        due.into_iter().map(|(_, _, frame)| frame).collect()
    }
}

struct Faults {
    loss: f64,
    duplication: f64,
    /// Delays are uniform in 1..=max, so frames overtake each other.
    max_delay_ms: u64,
    /// Chance per simulated step that the connection is cut.
    disconnect: f64,
}

struct Edge {
    log: Vec<AuditEvent>,
    bundle_version: u64,
    bundle: Option<SignedBundle>,
    bundle_key: SigningKey,
    /// Dispatch ids persisted as tasks (a set: persisting is idempotent by id).
    tasks: std::collections::BTreeSet<String>,
    /// How many times each dispatch arrived (duplicates are expected; they
    /// must not make new tasks).
    deliveries: usize,
    /// Command ids applied (a set: applying is idempotent by id).
    commands: std::collections::BTreeSet<String>,
    sync: EdgeSync,
}

struct Control {
    stored: Vec<AuditEvent>,
    verifier: ChainVerifier,
    sync: ControlSync,
    latest: Option<(u64, SignedBundle)>,
    edge_bundle_version: u64,
    /// Tasks dispatched to the edge, and those it acknowledged.
    dispatched: Vec<crate::wire::DispatchedTask>,
    acked: std::collections::BTreeSet<String>,
    /// Commands sent to the edge, and those it acknowledged.
    commands: Vec<crate::command::SignedCommand>,
    commands_acked: std::collections::BTreeSet<String>,
}

struct Sim {
    rng: StdRng,
    now: Instant,
    faults: Faults,
    edge: Edge,
    control: Control,
    up: Link,
    down: Link,
    n_connections: u32,
}

fn edge_config() -> EdgeConfig {
    let mut config = EdgeConfig::new(EDGE_ID, "test");
    config.batch_max_events = 37;
    config.window_events = 150;
    config.retransmit_after = Duration::from_millis(300);
    config
}

fn control_config() -> ControlConfig {
    ControlConfig { max_uncommitted_events: 1000, bundle_retransmit_after: Duration::from_millis(300) }
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Sim {
        let now = Instant::now();
        Sim {
            rng: StdRng::seed_from_u64(seed),
            now,
            faults,
            edge: Edge {
                log: Vec::new(),
                bundle_version: 0,
                bundle: None,
                bundle_key: SigningKey::from_bytes(&[1; 32]),
                tasks: Default::default(),
                commands: Default::default(),
                deliveries: 0,
                sync: EdgeSync::new(edge_config(), now, 0, 0),
            },
            control: Control {
                stored: Vec::new(),
                verifier: ChainVerifier::new(EDGE_ID, None, ChainHead::EMPTY),
                sync: ControlSync::new(control_config()),
                latest: None,
                edge_bundle_version: 0,
                dispatched: Vec::new(),
                acked: Default::default(),
                commands: Vec::new(),
                commands_acked: Default::default(),
            },
            up: Link::new(),
            down: Link::new(),
            n_connections: 1,
        }
    }

    fn append(&mut self, n: usize) {
        for _ in 0..n {
            let head = self.edge.log.last().map_or(ChainHead::EMPTY, AuditEvent::head);
            let ts = self.edge.log.len() as i64;
            self.edge.log.push(AuditEvent::next(EDGE_ID, head, ts, kinds::DEBUG, "{}".into()));
        }
        self.edge.sync.audit_appended(self.edge.log.len() as u64);
    }

    fn publish(&mut self, version: u64) {
        let body = BundleSpec::from_toml("autonomy = \"autonomous\"").unwrap().into_body(version - 1, 0).unwrap();
        let signed = body.sign(&self.edge.bundle_key);
        self.control.latest = Some((version, signed.clone()));
        if self.control.sync.is_connected() {
            self.control.sync.push_bundle(self.now, version, signed);
        }
    }

    fn dispatch(&mut self) {
        let id = format!("d{}", self.control.dispatched.len());
        let task = crate::wire::DispatchedTask { id, agent: "a".into(), kind: None, input: "{}".into() };
        self.control.dispatched.push(task.clone());
        self.control.sync.push_tasks(self.now, vec![task]);
        let command = crate::command::CommandBody {
            id: format!("c{}", self.control.commands.len()),
            edge_id: EDGE_ID.into(),
            by: "op".into(),
            comment: String::new(),
            issued_ms: 0,
            command: crate::command::Command::RetryIntent { key: "k".into() },
        }
        .sign(&self.edge.bundle_key);
        self.control.commands.push(command.clone());
        self.control.sync.push_commands(self.now, vec![command]);
    }

    fn unacked_commands(&self) -> Vec<crate::command::SignedCommand> {
        self.control.commands.iter().filter(|c| !self.control.commands_acked.contains(&c.id)).cloned().collect()
    }

    fn unacked_tasks(&self) -> Vec<crate::wire::DispatchedTask> {
        self.control.dispatched.iter().filter(|t| !self.control.acked.contains(&t.id)).cloned().collect()
    }

    /// Cuts the connection: frames in flight are gone, both sides start over
    /// from what they stored.
    fn reconnect(&mut self) {
        self.up.in_flight.clear();
        self.down.in_flight.clear();
        self.edge.sync = EdgeSync::new(edge_config(), self.now, self.edge.bundle_version, self.edge.log.len() as u64);
        self.control.sync = ControlSync::new(control_config());
        self.n_connections += 1;
    }

    /// Runs the drivers until nothing is left to do at `now`.
    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(frame) = self.edge.sync.poll_transmit() {
                self.up.send(self.now, frame, &self.faults, &mut self.rng);
                progressed = true;
            }
            while let Some(frame) = self.control.sync.poll_transmit() {
                self.down.send(self.now, frame, &self.faults, &mut self.rng);
                progressed = true;
            }
            while let Some(event) = self.edge.sync.poll_event() {
                progressed = true;
                self.edge_event(event);
            }
            while let Some(event) = self.control.sync.poll_event() {
                progressed = true;
                self.control_event(event);
            }
            if self.edge.sync.is_closed() || self.control.sync.is_closed() {
                self.reconnect();
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    fn edge_event(&mut self, event: EdgeEvent) {
        match event {
            EdgeEvent::LoadAudit { from_seq, max } => {
                let events = self.edge.log.iter().skip(from_seq as usize - 1).take(max).cloned().collect();
                self.edge.sync.audit_loaded(self.now, events);
            }
            EdgeEvent::BundleReceived(signed) => {
                let key = self.edge.bundle_key.verifying_key();
                match signed.offer(&key, self.edge.bundle.as_ref(), 1) {
                    Ok(Offer::AlreadyApplied(body)) => self.edge.sync.bundle_applied(body.version),
                    Ok(Offer::Apply(body)) => {
                        self.edge.bundle_version = body.version;
                        self.edge.bundle = Some(signed);
                        self.edge.sync.bundle_applied(body.version);
                    }
                    Err(err) => {
                        let version = signed.peek_version().unwrap_or(0);
                        self.edge.sync.bundle_refused(version, err.to_string());
                    }
                }
            }
            EdgeEvent::TasksReceived(tasks) => {
                let receipts = tasks
                    .into_iter()
                    .map(|task| {
                        self.edge.deliveries += 1;
                        self.edge.tasks.insert(task.id.clone());
                        crate::wire::TaskReceipt { task_id: Some(format!("t-{}", task.id)), id: task.id, refused: None }
                    })
                    .collect();
                self.edge.sync.tasks_received(receipts);
            }
            EdgeEvent::CommandsReceived(commands) => {
                let key = self.edge.bundle_key.verifying_key();
                let receipts = commands
                    .into_iter()
                    .map(|command| {
                        command.open(&key, EDGE_ID).expect("commands verify");
                        self.edge.commands.insert(command.id.clone());
                        crate::wire::CommandReceipt { id: command.id, refused: None }
                    })
                    .collect();
                self.edge.sync.commands_applied(receipts);
            }
            EdgeEvent::Connected { .. } | EdgeEvent::AuditAcked { .. } => {}
            EdgeEvent::CertificateIssued(_) => panic!("the simulated edge never asks for a certificate"),
            EdgeEvent::TrustAnchors(_) => panic!("the simulated control plane never announces CAs"),
            EdgeEvent::Refused(error) => panic!("edge refused: {error:?}"),
            EdgeEvent::ProtocolError(message) => panic!("edge protocol error: {message}"),
        }
    }

    fn control_event(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::HelloReceived(hello) => {
                assert_eq!(hello.edge_id, EDGE_ID);
                // The handshake reports what the edge runs, even if its ack was lost.
                self.control.edge_bundle_version = self.control.edge_bundle_version.max(hello.bundle_version);
                self.control.sync.accept(self.control.stored.len() as u64);
                if let Some((version, signed)) = self.control.latest.clone() {
                    if hello.bundle_version < version {
                        self.control.sync.push_bundle(self.now, version, signed);
                    }
                }
                let unacked = self.unacked_tasks();
                self.control.sync.push_tasks(self.now, unacked);
                let unacked = self.unacked_commands();
                self.control.sync.push_commands(self.now, unacked);
            }
            ControlEvent::Ingest(events) => {
                let last = events.last().expect("ingest is never empty").seq;
                for event in events {
                    // Idempotent by sequence, exactly as the SQLite ingest is.
                    if event.seq as usize == self.control.stored.len() + 1 {
                        self.control.verifier.push(&event).expect("chain verifies");
                        self.control.stored.push(event);
                    }
                }
                self.control.sync.committed(last);
            }
            ControlEvent::RenewalRequested(_) => panic!("the simulated edge never asks for a certificate"),
            ControlEvent::BundleAcked { version } => {
                self.control.edge_bundle_version = self.control.edge_bundle_version.max(version);
            }
            ControlEvent::BundleRefused { version, reason } => {
                // A stale copy delayed past a newer bundle is rightly refused;
                // the newest must never be.
                let latest = self.control.latest.as_ref().map(|(v, _)| *v);
                assert_ne!(Some(version), latest, "newest bundle refused: {reason}");
            }
            ControlEvent::TasksAcked(receipts) => {
                for receipt in receipts {
                    assert_eq!(receipt.task_id.as_deref(), Some(format!("t-{}", receipt.id).as_str()));
                    self.control.acked.insert(receipt.id);
                }
            }
            ControlEvent::CommandsAcked(receipts) => {
                self.control.commands_acked.extend(receipts.into_iter().map(|r| r.id));
            }
            ControlEvent::PeerError(error) => panic!("control saw peer error {error:?}"),
            ControlEvent::ProtocolError(message) => panic!("control protocol error: {message}"),
        }
    }

    /// Advances the virtual clock to the next thing that can happen.
    fn step(&mut self) {
        let next = [
            self.edge.sync.poll_timeout(),
            self.control.sync.poll_timeout(),
            self.up.next_delivery(),
            self.down.next_delivery(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return };
        self.now = self.now.max(next);
        for frame in self.up.deliver(self.now) {
            self.control.sync.handle_frame(self.now, frame);
        }
        for frame in self.down.deliver(self.now) {
            self.edge.sync.handle_frame(self.now, frame);
        }
        self.edge.sync.handle_timeout(self.now);
        self.control.sync.handle_timeout(self.now);
        self.drain();
        if self.rng.gen_bool(self.faults.disconnect) {
            self.reconnect();
            self.drain();
        }
    }

    fn synced(&self, total: usize, version: u64) -> bool {
        self.control.stored.len() == total
            && self.edge.bundle_version == version
            && self.control.edge_bundle_version == version
            && self.control.acked.len() == self.control.dispatched.len()
            && self.control.commands_acked.len() == self.control.commands.len()
    }
}

fn run(seed: u64, faults: Faults) -> Sim {
    let mut sim = Sim::new(seed, faults);
    sim.drain();
    let mut total = 0;
    let mut version = 0;
    for round in 0..6u64 {
        let n = sim.rng.gen_range(0..400);
        sim.append(n);
        total += n;
        if round % 2 == 1 {
            version += 1;
            sim.publish(version);
        }
        for _ in 0..sim.rng.gen_range(0..3) {
            sim.dispatch();
        }
        for _ in 0..sim.rng.gen_range(0..200) {
            sim.step();
        }
    }
    let mut steps = 0;
    while !sim.synced(total, version) {
        sim.step();
        steps += 1;
        assert!(steps < 200_000, "seed {seed}: no convergence, stored {} of {total}", sim.control.stored.len());
    }
    assert_eq!(sim.control.stored, sim.edge.log, "seed {seed}");
    let dispatched: std::collections::BTreeSet<String> = sim.control.dispatched.iter().map(|t| t.id.clone()).collect();
    assert_eq!(sim.edge.tasks, dispatched, "seed {seed}: every dispatched task reached the edge, once");
    assert!(sim.edge.deliveries >= dispatched.len());
    let commands: std::collections::BTreeSet<String> = sim.control.commands.iter().map(|c| c.id.clone()).collect();
    assert_eq!(sim.edge.commands, commands, "seed {seed}: every command reached the edge");
    sim
}

#[test]
fn lossy_link_loses_and_duplicates_nothing_over_many_seeds() {
    let mut reconnects = 0;
    for seed in 0..300 {
        let sim = run(seed, Faults { loss: 0.1, duplication: 0.1, max_delay_ms: 40, disconnect: 0.002 });
        reconnects += sim.n_connections;
    }
    // The run must actually have exercised reconnection.
    assert!(reconnects > 300, "only {reconnects} connections in 300 runs");
}

#[test]
fn hostile_link_still_converges() {
    for seed in 0..50 {
        run(seed, Faults { loss: 0.3, duplication: 0.3, max_delay_ms: 200, disconnect: 0.01 });
    }
}

#[test]
fn perfect_link_needs_one_connection() {
    let sim = run(7, Faults { loss: 0.0, duplication: 0.0, max_delay_ms: 1, disconnect: 0.0 });
    assert_eq!(sim.n_connections, 1);
}

fn hello(version_min: u16, version_max: u16) -> Frame {
    Frame::Hello(Hello {
        version_min,
        version_max,
        edge_id: EDGE_ID.into(),
        agent_version: "test".into(),
        bundle_version: 0,
        audit_head_seq: 0,
    })
}

#[test]
fn version_mismatch_is_refused_with_a_reason() {
    let mut control = ControlSync::new(control_config());
    control.handle_frame(Instant::now(), hello(7, 9));
    match control.poll_transmit() {
        Some(Frame::Error(error)) => {
            assert_eq!(error.code, ErrorCode::UnsupportedVersion);
            assert!(error.message.contains("7..=9"), "{}", error.message);
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert!(control.is_closed());
}

#[test]
fn audit_before_handshake_is_a_protocol_error() {
    let mut control = ControlSync::new(control_config());
    control.handle_frame(Instant::now(), Frame::AuditBatch(Vec::new()));
    assert!(control.is_closed());
    assert!(matches!(control.poll_event(), Some(ControlEvent::ProtocolError(_))));
    assert!(matches!(control.poll_transmit(), Some(Frame::Error(_))));
}

#[test]
fn control_applies_back_pressure_until_commits_catch_up() {
    let now = Instant::now();
    let mut control = ControlSync::new(ControlConfig { max_uncommitted_events: 10, ..control_config() });
    control.handle_frame(now, hello(1, 1));
    control.accept(0);
    let mut head = ChainHead::EMPTY;
    let batch: Vec<_> = (0..10)
        .map(|_| {
            let event = AuditEvent::next(EDGE_ID, head, 0, kinds::DEBUG, "{}".into());
            head = event.head();
            event
        })
        .collect();
    assert!(control.wants_frames());
    control.handle_frame(now, Frame::AuditBatch(batch));
    assert!(!control.wants_frames());
    control.committed(10);
    assert!(control.wants_frames());
}

/// An enrolled edge sending sequence numbers at `u64::MAX` gets a clear
/// refusal, not an overflow panic of the control plane's connection task
/// (issue 24, finding 19).
#[test]
fn audit_sequence_numbers_at_the_top_of_the_range_are_refused() {
    let now = Instant::now();
    for seqs in [[u64::MAX - 1, u64::MAX, 0], [u64::MAX, 0, 1]] {
        let mut control = ControlSync::new(control_config());
        control.handle_frame(now, hello(1, 1));
        control.accept(0);
        let batch: Vec<_> = seqs
            .iter()
            .map(|&seq| {
                let mut event = AuditEvent::next(EDGE_ID, ChainHead::EMPTY, 0, kinds::DEBUG, "{}".into());
                event.seq = seq;
                event
            })
            .collect();
        control.handle_frame(now, Frame::AuditBatch(batch));
        let events: Vec<ControlEvent> = std::iter::from_fn(|| control.poll_event()).collect();
        assert!(
            events.iter().any(|e| matches!(e, ControlEvent::ProtocolError(m) if m.contains("not consecutive"))),
            "{seqs:?}: {events:?}"
        );
    }
    let mut control = ControlSync::new(control_config());
    control.handle_frame(now, hello(1, 1));
    control.accept(u64::MAX);
    let mut event = AuditEvent::next(EDGE_ID, ChainHead::EMPTY, 0, kinds::DEBUG, "{}".into());
    event.seq = u64::MAX;
    control.handle_frame(now, Frame::AuditBatch(vec![event]));
    assert!(!control.is_closed(), "a duplicate of the last event is acknowledged again");
}

#[test]
fn edge_stops_loading_when_the_window_is_full() {
    let now = Instant::now();
    let mut config = edge_config();
    config.window_events = 5;
    config.batch_max_events = 5;
    let mut edge = EdgeSync::new(config, now, 0, 100);
    let _hello = edge.poll_transmit();
    edge.handle_frame(now, Frame::HelloAck(crate::wire::HelloAck { version: 1, audit_acked_seq: 0 }));
    assert!(matches!(edge.poll_event(), Some(EdgeEvent::Connected { .. })));
    assert_eq!(edge.poll_event(), Some(EdgeEvent::LoadAudit { from_seq: 1, max: 5 }));
    let mut head = ChainHead::EMPTY;
    let events: Vec<_> = (0..5)
        .map(|_| {
            let event = AuditEvent::next(EDGE_ID, head, 0, kinds::DEBUG, "{}".into());
            head = event.head();
            event
        })
        .collect();
    edge.audit_loaded(now, events);
    assert!(matches!(edge.poll_transmit(), Some(Frame::AuditBatch(_))));
    // Window full: no further load until an ack arrives.
    assert_eq!(edge.poll_event(), None);
    edge.handle_frame(now, Frame::AuditAck { up_to_seq: 5 });
    assert_eq!(edge.poll_event(), Some(EdgeEvent::AuditAcked { up_to_seq: 5 }));
    assert_eq!(edge.poll_event(), Some(EdgeEvent::LoadAudit { from_seq: 6, max: 5 }));
}

#[test]
fn dispatched_tasks_are_resent_until_acknowledged_and_never_twice_at_once() {
    let now = Instant::now();
    let retransmit = control_config().bundle_retransmit_after;
    let mut control = ControlSync::new(control_config());
    let task = |id: &str| crate::wire::DispatchedTask {
        id: id.into(),
        agent: "triage".into(),
        kind: None,
        input: "{}".into(),
    };
    control.push_tasks(now, vec![task("d1")]);
    assert_eq!(control.poll_transmit(), None, "nothing is sent before the handshake");
    control.handle_frame(now, hello(1, 1));
    assert!(matches!(control.poll_event(), Some(ControlEvent::HelloReceived(_))));
    control.accept(0);
    let _ack = control.poll_transmit();
    control.push_tasks(now, vec![task("d1"), task("d2")]);
    assert_eq!(control.poll_transmit(), Some(Frame::Tasks(vec![task("d1"), task("d2")])));
    control.push_tasks(now, vec![task("d2")]);
    assert_eq!(control.poll_transmit(), None, "a pending task is not queued again");
    assert_eq!(control.poll_timeout(), Some(now + retransmit));
    control.handle_timeout(now + retransmit);
    assert_eq!(control.poll_transmit(), Some(Frame::Tasks(vec![task("d1"), task("d2")])), "lost: sent again");
    let receipt = crate::wire::TaskReceipt { id: "d1".into(), task_id: Some("t1".into()), refused: None };
    control.handle_frame(now, Frame::TasksAck(vec![receipt.clone()]));
    assert_eq!(control.poll_event(), Some(ControlEvent::TasksAcked(vec![receipt])));
    control.handle_timeout(now + retransmit * 2);
    assert_eq!(control.poll_transmit(), Some(Frame::Tasks(vec![task("d2")])), "only the unacknowledged one");

    let mut edge = EdgeSync::new(edge_config(), now, 0, 0);
    let _hello = edge.poll_transmit();
    edge.handle_frame(now, Frame::Tasks(vec![task("early")]));
    assert!(edge.poll_event().is_none(), "tasks before the handshake completes are ignored (they are re-sent)");
    edge.handle_frame(now, Frame::HelloAck(crate::wire::HelloAck { version: 1, audit_acked_seq: 0 }));
    while edge.poll_event().is_some() {}
    edge.handle_frame(now, Frame::Tasks(vec![task("d3")]));
    assert_eq!(edge.poll_event(), Some(EdgeEvent::TasksReceived(vec![task("d3")])));
}

#[test]
fn a_certificate_is_requested_once_per_connection_and_only_once_connected() {
    let now = Instant::now();
    let mut edge = EdgeSync::new(edge_config(), now, 0, 0);
    let _hello = edge.poll_transmit();
    assert!(!edge.request_certificate(vec![1]), "not before the handshake");
    edge.handle_frame(now, Frame::HelloAck(crate::wire::HelloAck { version: 1, audit_acked_seq: 0 }));
    while edge.poll_event().is_some() {}
    assert!(edge.request_certificate(vec![1, 2]));
    assert!(!edge.request_certificate(vec![1, 2]), "one outstanding request at a time");
    assert_eq!(edge.poll_transmit(), Some(Frame::RenewCertificate(vec![1, 2])));

    let mut control = ControlSync::new(control_config());
    control.certificate_issued(crate::wire::CertificateGrant { cert_der: vec![9] });
    assert_eq!(control.poll_transmit(), None, "nothing is granted before the handshake");
    control.handle_frame(now, hello(1, 1));
    assert!(matches!(control.poll_event(), Some(ControlEvent::HelloReceived(_))));
    control.accept(0);
    let _ack = control.poll_transmit();
    control.handle_frame(now, Frame::RenewCertificate(vec![1, 2]));
    assert_eq!(control.poll_event(), Some(ControlEvent::RenewalRequested(vec![1, 2])));
    let grant = crate::wire::CertificateGrant { cert_der: vec![9] };
    control.certificate_issued(grant.clone());
    assert_eq!(control.poll_transmit(), Some(Frame::Certificate(grant.clone())));

    edge.handle_frame(now, Frame::Certificate(grant.clone()));
    assert_eq!(edge.poll_event(), Some(EdgeEvent::CertificateIssued(grant.clone())));
    assert!(!edge.renewal_pending());
    edge.handle_frame(now, Frame::Certificate(grant));
    assert!(edge.is_closed(), "a certificate nobody asked for is a protocol error");
}

#[test]
fn trust_anchors_are_announced_only_once_connected() {
    let now = Instant::now();
    let anchors = vec![crate::wire::TrustedCa { der: vec![2], retires_at_ms: None }];
    let mut control = ControlSync::new(control_config());
    control.announce_trust_anchors(anchors.clone());
    assert_eq!(control.poll_transmit(), None, "nothing is announced before the handshake");
    control.handle_frame(now, hello(1, 2));
    let _ = control.poll_event();
    control.accept(0);
    assert!(matches!(control.poll_transmit(), Some(Frame::HelloAck(ack)) if ack.version == 2));
    control.announce_trust_anchors(anchors.clone());
    assert_eq!(control.poll_transmit(), Some(Frame::TrustAnchors(anchors.clone())));

    // An edge of protocol version 1 does not know the frame: it gets none.
    let mut control = ControlSync::new(control_config());
    control.handle_frame(now, hello(1, 1));
    let _ = control.poll_event();
    control.accept(0);
    assert!(matches!(control.poll_transmit(), Some(Frame::HelloAck(ack)) if ack.version == 1));
    control.announce_trust_anchors(anchors.clone());
    assert_eq!(control.poll_transmit(), None);

    let mut edge = EdgeSync::new(edge_config(), now, 0, 0);
    let _hello = edge.poll_transmit();
    edge.handle_frame(now, Frame::TrustAnchors(anchors.clone()));
    assert!(edge.is_closed(), "an announcement before the handshake is a protocol error");
    let mut edge = EdgeSync::new(edge_config(), now, 0, 0);
    edge.handle_frame(now, Frame::HelloAck(crate::wire::HelloAck { version: 1, audit_acked_seq: 0 }));
    while edge.poll_event().is_some() {}
    edge.handle_frame(now, Frame::TrustAnchors(anchors.clone()));
    assert_eq!(edge.poll_event(), Some(EdgeEvent::TrustAnchors(anchors)));
}
