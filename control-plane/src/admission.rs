//! Admission to the QUIC endpoint before a peer has proved who it is.
//!
//! Client certificates are optional at the TLS layer (enrolment needs a
//! connection without one), so anyone who reaches the UDP port can start a
//! handshake. What such a peer may cost is bounded here: how many
//! connections may be unauthenticated at once, in total and per source, and
//! how often a source may fail to enrol. The decisions are pure functions of
//! counts and `now`; [`Admission`] is the state the server keeps and
//! consults, and it never reads a clock.
//!
//! A source is an IPv4 address or an IPv6 /64 (one subscriber's
//! allocation: an attacker holding a prefix does not get a share per
//! address). The server counts a connection only after QUIC address
//! validation, so a spoofed source address cannot use up another's share.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Limits on peers that have not authenticated yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections between their first packet and authentication (a known
    /// certificate, or the end of an enrolment), in total.
    pub unauthenticated: usize,
    /// The same, from one source.
    pub unauthenticated_per_source: usize,
    /// Failed enrolments a source may make in a burst.
    pub enrol_failures_burst: u32,
    /// After the burst, one more failed enrolment per this interval.
    pub enrol_failure_interval: Duration,
    /// Sources whose enrolment failures are remembered at once; past it the
    /// entry closest to being forgotten anyway makes room.
    pub tracked_sources: usize,
}

impl Default for AdmissionLimits {
    /// 64 unauthenticated connections, 8 per source; 10 failed enrolments,
    /// then one every 6 s (10 a minute), per source.
    fn default() -> Self {
        AdmissionLimits {
            unauthenticated: 64,
            unauthenticated_per_source: 8,
            enrol_failures_burst: 10,
            enrol_failure_interval: Duration::from_secs(6),
            tracked_sources: 4096,
        }
    }
}

/// Where a connection comes from, as the limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer at `ip`: the IPv4 address (also when mapped into
    /// IPv6), or the /64 prefix of an IPv6 address.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every unauthenticated place is taken.
    #[error("{limit} connections are already waiting to authenticate")]
    Full {
        /// The total limit.
        limit: usize,
    },
    /// The source's unauthenticated places are taken.
    #[error("{limit} connections from {from} are already waiting to authenticate")]
    SourceFull {
        /// The source.
        from: Source,
        /// The per-source limit.
        limit: usize,
    },
}

/// Whether one more unauthenticated connection from `source` may start,
/// with `total` of them open and `from_source` of those from `source`.
pub fn admit(limits: &AdmissionLimits, source: Source, total: usize, from_source: usize) -> Result<(), Refusal> {
    if from_source >= limits.unauthenticated_per_source {
        return Err(Refusal::SourceFull { from: source, limit: limits.unauthenticated_per_source });
    }
    if total >= limits.unauthenticated {
        return Err(Refusal::Full { limit: limits.unauthenticated });
    }
    Ok(())
}

/// Whether a source whose next failure is due at `due` (the generic cell
/// rate algorithm's theoretical arrival time; `None`: no recent failure)
/// may try to enrol at `now`; `Err` with how long it must wait.
pub fn may_enrol(limits: &AdmissionLimits, due: Option<Instant>, now: Instant) -> Result<(), Duration> {
    let Some(due) = due else { return Ok(()) };
    let tolerance = limits.enrol_failure_interval * limits.enrol_failures_burst.saturating_sub(1);
    match due.checked_duration_since(now) {
        Some(ahead) if ahead > tolerance => Err(ahead - tolerance),
        _ => Ok(()),
    }
}

/// When the next failure is due after one at `now`.
pub fn after_failure(limits: &AdmissionLimits, due: Option<Instant>, now: Instant) -> Instant {
    due.map_or(now, |due| due.max(now)) + limits.enrol_failure_interval
}

/// The counts [`admit`] and [`may_enrol`] decide on.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    /// Unauthenticated connections per source (sources with none are absent).
    pending: HashMap<Source, usize>,
    /// The sum of `pending`.
    total: usize,
    /// When each source's next enrolment failure is due; past entries are
    /// pruned when the map is full.
    failures: HashMap<Source, Instant>,
}

impl Admission {
    /// No connection yet.
    pub fn new(limits: AdmissionLimits) -> Admission {
        Admission { limits, pending: HashMap::new(), total: 0, failures: HashMap::new() }
    }

    /// Counts one more unauthenticated connection from `source`, unless a
    /// limit refuses it; [`Admission::release`] gives the place back.
    pub fn try_admit(&mut self, source: Source) -> Result<(), Refusal> {
        let from_source = self.pending.get(&source).copied().unwrap_or(0);
        admit(&self.limits, source, self.total, from_source)?;
        self.pending.insert(source, from_source + 1);
        self.total += 1;
        Ok(())
    }

    /// A connection from `source` authenticated or ended.
    pub fn release(&mut self, source: Source) {
        if let Some(count) = self.pending.get_mut(&source) {
            *count -= 1;
            self.total -= 1;
            if *count == 0 {
                self.pending.remove(&source);
            }
        }
    }

    /// Whether `source` may try to enrol at `now`.
    pub fn may_enrol(&self, source: Source, now: Instant) -> Result<(), Duration> {
        may_enrol(&self.limits, self.failures.get(&source).copied(), now)
    }

    /// Records a failed enrolment (a bad token or request) from `source`.
    pub fn enrol_failed(&mut self, source: Source, now: Instant) {
        if !self.failures.contains_key(&source) && self.failures.len() >= self.limits.tracked_sources {
            self.failures.retain(|_, due| *due > now);
            if self.failures.len() >= self.limits.tracked_sources {
                let soonest = self.failures.iter().min_by_key(|(_, due)| **due).map(|(source, _)| *source);
                if let Some(soonest) = soonest {
                    self.failures.remove(&soonest);
                }
            }
        }
        let due = after_failure(&self.limits, self.failures.get(&source).copied(), now);
        self.failures.insert(source, due);
    }

    /// Unauthenticated connections open now.
    pub fn unauthenticated(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests;
