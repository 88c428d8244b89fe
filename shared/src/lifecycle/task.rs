//! A durable task's lifecycle.
//!
//! ```text
//! queued --claim--> running --finish--> succeeded
//!   ^  \              |  \--fail------> failed
//!   |   \             |   \--give up--> dead_lettered --operator retry--> queued
//!   |    \            |--park--> waiting --claim--> running
//!   |     \           |--requeue (restart, crash)--> queued
//!   |      \--------> cancelled   (from queued, waiting or running)
//! ```
//! A claim of a task that has been started too often gives up instead
//! (dead-lettered without running), and a claim of a task whose deadline
//! passed fails it.

use super::{state_names, TransitionError};

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Persisted, not yet started.
    Queued,
    /// A runner owns it.
    Running,
    /// Paused until `not_before` (a tier is down, an approval is pending).
    Waiting,
    /// Finished with a result.
    Succeeded,
    /// Finished without one.
    Failed,
    /// Started too many times, or a side effect gave up; an operator must look.
    DeadLettered,
    /// Cancelled by a user.
    Cancelled,
}

state_names!(TaskState, "task state", {
    Queued => "queued",
    Running => "running",
    Waiting => "waiting",
    Succeeded => "succeeded",
    Failed => "failed",
    DeadLettered => "dead_lettered",
    Cancelled => "cancelled",
});

/// What happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// A user cancels it.
    Cancel,
    /// A runner takes it.
    Claim,
    /// It failed (an error, a deadline, a refused step).
    Fail,
    /// Its last step is recorded.
    Finish,
    /// It cannot go on without an operator.
    GiveUp,
    /// It must wait (a tier is down, an approval is pending).
    Park,
    /// Back in the queue: its runner stopped (restart, crash, shutdown).
    Requeue,
    /// An operator retries a dead-lettered task.
    Retry,
}

impl TaskState {
    /// Whether the task will never run again by itself.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskState::Succeeded | TaskState::Failed | TaskState::DeadLettered | TaskState::Cancelled)
    }

    /// The state after `event`, or why there is none.
    pub fn transition(self, event: TaskEvent) -> Result<TaskState, TransitionError> {
        use TaskEvent as E;
        use TaskState as S;
        Ok(match (self, event) {
            (S::Queued | S::Waiting, E::Claim) => S::Running,
            (S::Queued | S::Waiting | S::Running, E::Cancel) => S::Cancelled,
            (S::Queued | S::Waiting | S::Running, E::Fail) => S::Failed,
            (S::Queued | S::Waiting | S::Running, E::GiveUp) => S::DeadLettered,
            (S::Running, E::Finish) => S::Succeeded,
            (S::Running, E::Park) => S::Waiting,
            (S::Running, E::Requeue) => S::Queued,
            (S::DeadLettered, E::Retry) => S::Queued,
            (from, event) => return Err(TransitionError::new("a task", from.as_str(), &event)),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const EVENTS: [TaskEvent; 8] = [
        TaskEvent::Cancel,
        TaskEvent::Claim,
        TaskEvent::Fail,
        TaskEvent::Finish,
        TaskEvent::GiveUp,
        TaskEvent::Park,
        TaskEvent::Requeue,
        TaskEvent::Retry,
    ];

    #[test]
    fn names_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(*state));
        }
        assert!("finished".parse::<TaskState>().is_err());
    }

    #[test]
    fn only_an_operator_brings_a_task_back_from_an_end() {
        for state in TaskState::ALL.iter().filter(|s| s.is_terminal()) {
            for event in EVENTS {
                let allowed = *state == TaskState::DeadLettered && event == TaskEvent::Retry;
                assert_eq!(state.transition(event).is_ok(), allowed, "{state} on {event:?}");
            }
        }
    }

    proptest! {
        /// A task succeeds only from running, so only after a claim; and it
        /// runs only after a claim.
        #[test]
        fn success_needs_a_run(events in proptest::collection::vec(0..EVENTS.len(), 0..40)) {
            let mut state = TaskState::Queued;
            for event in events.into_iter().map(|i| EVENTS[i]) {
                let Ok(next) = state.transition(event) else { continue };
                if next == TaskState::Succeeded {
                    prop_assert_eq!(state, TaskState::Running);
                }
                if next == TaskState::Running && state != TaskState::Running {
                    prop_assert_eq!(event, TaskEvent::Claim);
                }
                state = next;
            }
        }
    }
}
