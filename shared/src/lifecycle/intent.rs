//! An intended side effect's lifecycle, from the policy's decision to its end.
//!
//! ```text
//! (decision) allow ------------------> pending --send--> in_flight --succeed--> done
//!            require approval --> awaiting_approval        |   ^  \--fail (retryable)--> pending
//!            deny --> denied        | approve --> pending    |   |   \--lost reply--> unknown --send--+
//!                                   | reject  --> rejected   |   +----------------------------------- +
//!                                   | lapse   --> expired    \--fail (last) --> dead_lettered
//!                                   | deny (re-check) --> denied               | retry --> pending
//!                                                                              | discard --> discarded
//! ```
//! Also: a pending intent is denied when the kill switch is engaged before
//! it is sent; an intent left `in_flight` by a restart is sent again; one
//! whose outcome is `unknown` is dead-lettered when the kill switch stops
//! it from being resolved.
//! Nothing reaches `in_flight` (the only state in which a connector is
//! called) without passing `pending`, and nothing reaches `pending` except
//! from a decision that allowed it or a human's approval of it (or an
//! operator's retry of an intent that was once allowed). The property tests
//! below check that for every sequence of events.

use super::{state_names, TransitionError};

/// Where an intent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentState {
    /// Waiting for a human's decision.
    AwaitingApproval,
    /// Retries exhausted or a permanent error; an operator decides.
    DeadLettered,
    /// The policy refused it.
    Denied,
    /// An operator gave up on it.
    Discarded,
    /// It took effect.
    Done,
    /// The approval request lapsed unanswered.
    Expired,
    /// Being sent now.
    InFlight,
    /// Allowed, not yet sent (or to be sent again).
    Pending,
    /// A human rejected it.
    Rejected,
    /// An attempt's outcome was lost; resolved only by sending again with
    /// the same idempotency key.
    Unknown,
}

state_names!(IntentState, "intent state", {
    AwaitingApproval => "awaiting_approval",
    DeadLettered => "dead_lettered",
    Denied => "denied",
    Discarded => "discarded",
    Done => "done",
    Expired => "expired",
    InFlight => "in_flight",
    Pending => "pending",
    Rejected => "rejected",
    Unknown => "unknown",
});

/// The policy's verdict an intent starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
    /// Allowed only if a human approves.
    RequireApproval,
}

/// What happens to an intent after it is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentEvent {
    /// A human approved it (and the approval was used for it).
    Approve,
    /// A re-check of the policy refused it.
    Deny,
    /// An operator gave up on it.
    Discard,
    /// An attempt failed; `lost` when its outcome is unknown, `last` when no
    /// attempt is left.
    Fail {
        /// The reply was lost: the effect may or may not have happened.
        lost: bool,
        /// The attempts are exhausted or the error is permanent.
        last: bool,
    },
    /// The approval request lapsed.
    Lapse,
    /// A human rejected it.
    Reject,
    /// An operator retries it after it was dead-lettered.
    Retry,
    /// An attempt starts.
    Send,
    /// The connector reported success.
    Succeed,
}

impl IntentState {
    /// The state an intent is declared in, from the policy's verdict.
    pub fn declared(verdict: Verdict) -> IntentState {
        match verdict {
            Verdict::Allow => IntentState::Pending,
            Verdict::Deny => IntentState::Denied,
            Verdict::RequireApproval => IntentState::AwaitingApproval,
        }
    }

    /// Whether nothing can ever happen to it again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            IntentState::Denied
                | IntentState::Discarded
                | IntentState::Done
                | IntentState::Expired
                | IntentState::Rejected
        )
    }

    /// The state after `event`, or why there is none.
    pub fn transition(self, event: IntentEvent) -> Result<IntentState, TransitionError> {
        use IntentEvent as E;
        use IntentState as S;
        Ok(match (self, event) {
            (S::AwaitingApproval, E::Approve) => S::Pending,
            (S::AwaitingApproval, E::Reject) => S::Rejected,
            (S::AwaitingApproval, E::Lapse) => S::Expired,
            (S::AwaitingApproval | S::Pending, E::Deny) => S::Denied,
            // In flight again: resent after a restart left the outcome open.
            (S::Pending | S::Unknown | S::InFlight, E::Send) => S::InFlight,
            (S::InFlight, E::Succeed) => S::Done,
            (S::InFlight | S::Unknown, E::Fail { last: true, .. }) => S::DeadLettered,
            (S::InFlight, E::Fail { lost: true, last: false }) => S::Unknown,
            (S::InFlight, E::Fail { lost: false, last: false }) => S::Pending,
            (S::DeadLettered, E::Retry) => S::Pending,
            (S::DeadLettered, E::Discard) => S::Discarded,
            (from, event) => return Err(TransitionError::new("an intent", from.as_str(), &event)),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVENTS: [IntentEvent; 12] = [
        IntentEvent::Approve,
        IntentEvent::Deny,
        IntentEvent::Discard,
        IntentEvent::Fail { lost: false, last: false },
        IntentEvent::Fail { lost: true, last: false },
        IntentEvent::Fail { lost: false, last: true },
        IntentEvent::Fail { lost: true, last: true },
        IntentEvent::Lapse,
        IntentEvent::Reject,
        IntentEvent::Retry,
        IntentEvent::Send,
        IntentEvent::Succeed,
    ];
    const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::RequireApproval];

    #[test]
    fn names_round_trip() {
        for state in IntentState::ALL {
            assert_eq!(state.as_str().parse::<IntentState>(), Ok(*state));
        }
        assert!("sent".parse::<IntentState>().is_err());
    }

    #[test]
    fn nothing_leaves_a_terminal_state() {
        for state in IntentState::ALL.iter().filter(|s| s.is_terminal()) {
            for event in EVENTS {
                assert!(state.transition(event).is_err(), "{state} on {event:?}");
            }
        }
    }

    proptest! {
        /// Every path to a connector call (`in_flight`) passes a decision
        /// that allowed the intent or a human's approval of it.
        #[test]
        fn every_effect_passes_a_decision(
            verdict in 0..VERDICTS.len(),
            events in proptest::collection::vec(0..EVENTS.len(), 0..40),
        ) {
            let verdict = VERDICTS[verdict];
            let mut state = IntentState::declared(verdict);
            let mut approved = false;
            for event in events.into_iter().map(|i| EVENTS[i]) {
                let Ok(next) = state.transition(event) else { continue };
                approved |= event == IntentEvent::Approve;
                if next == IntentState::InFlight {
                    prop_assert!(verdict == Verdict::Allow || approved, "sent without a decision: {verdict:?}");
                }
                if state.is_terminal() {
                    prop_assert!(false, "left terminal state {state}");
                }
                state = next;
            }
        }

        /// A denied intent never becomes anything else.
        #[test]
        fn a_denial_is_final(events in proptest::collection::vec(0..EVENTS.len(), 0..40)) {
            let mut state = IntentState::declared(Verdict::Deny);
            for event in events.into_iter().map(|i| EVENTS[i]) {
                state = state.transition(event).unwrap_or(state);
            }
            prop_assert_eq!(state, IntentState::Denied);
        }
    }
}
