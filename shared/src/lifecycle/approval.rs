//! An approval request's lifecycle.
//!
//! ```text
//! pending --approve--> approved --use--> used
//!    |  \--reject--> rejected      \--lapse--> expired
//!    \--lapse--> expired
//! ```
//! An approval is used at most once, and only after it was approved; a
//! decision arriving after the request lapsed finds it `expired`.

use super::{state_names, TransitionError};

/// Where an approval request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApprovalState {
    /// Approved; not yet used.
    Approved,
    /// Lapsed unanswered, or approved but not used in time.
    Expired,
    /// Waiting for a human.
    Pending,
    /// A human said no.
    Rejected,
    /// The approved intent went ahead under it.
    Used,
}

state_names!(ApprovalState, "approval state", {
    Approved => "approved",
    Expired => "expired",
    Pending => "pending",
    Rejected => "rejected",
    Used => "used",
});

/// What happens to an approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalEvent {
    /// A human approves.
    Approve,
    /// It lapses (unanswered, or approved and not used in time).
    Lapse,
    /// A human rejects.
    Reject,
    /// The intent goes ahead under it.
    Use,
}

impl ApprovalState {
    /// Whether nothing can happen to it again.
    pub fn is_terminal(self) -> bool {
        matches!(self, ApprovalState::Expired | ApprovalState::Rejected | ApprovalState::Used)
    }

    /// The state after `event`, or why there is none.
    pub fn transition(self, event: ApprovalEvent) -> Result<ApprovalState, TransitionError> {
        use ApprovalEvent as E;
        use ApprovalState as S;
        Ok(match (self, event) {
            (S::Pending, E::Approve) => S::Approved,
            (S::Pending, E::Reject) => S::Rejected,
            (S::Pending | S::Approved, E::Lapse) => S::Expired,
            (S::Approved, E::Use) => S::Used,
            (from, event) => return Err(TransitionError::new("an approval", from.as_str(), &event)),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVENTS: [ApprovalEvent; 4] =
        [ApprovalEvent::Approve, ApprovalEvent::Lapse, ApprovalEvent::Reject, ApprovalEvent::Use];

    #[test]
    fn names_round_trip_and_ends_are_final() {
        for state in ApprovalState::ALL {
            assert_eq!(state.as_str().parse::<ApprovalState>(), Ok(*state));
            if state.is_terminal() {
                assert!(EVENTS.iter().all(|e| state.transition(*e).is_err()), "{state}");
            }
        }
    }

    proptest! {
        /// Used at most once, and only after an approval.
        #[test]
        fn used_once_and_only_when_approved(events in proptest::collection::vec(0..EVENTS.len(), 0..20)) {
            let mut state = ApprovalState::Pending;
            let mut uses = 0;
            for event in events.into_iter().map(|i| EVENTS[i]) {
                let Ok(next) = state.transition(event) else { continue };
                if next == ApprovalState::Used {
                    prop_assert_eq!(state, ApprovalState::Approved);
                    uses += 1;
                }
                state = next;
            }
            prop_assert!(uses <= 1);
        }
    }
}
