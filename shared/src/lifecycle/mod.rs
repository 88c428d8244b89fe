//! The lifecycles of tasks, intents (side effects) and approvals, as enums
//! with a pure `transition` function each.
//!
//! The edge stores each state as text (`as_str`, parsed back with
//! `FromStr`) and asks `transition` for the next one inside the transaction
//! that records it, so the graph below is the only place a state change is
//! decided. A change the graph does not have is an error, never a silent
//! write: the caller rolls back.
//!
//! # Layout
//! - [`task`]: queued, running, waiting, and the four ends of a task.
//! - [`intent`]: a side effect from the policy's decision to its end.
//! - [`approval`]: a human's decision on one intent.

pub mod approval;
pub mod intent;
pub mod task;

use std::fmt;

/// A state or event name that is not one of ours (from a file or a peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{text}` (one of: {expected})")]
pub struct UnknownState {
    /// Which lifecycle.
    pub what: &'static str,
    /// What was read.
    pub text: String,
    /// The names there are.
    pub expected: &'static str,
}

/// A change the lifecycle does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} cannot go from `{from}` on {event}")]
pub struct TransitionError {
    /// Which lifecycle.
    pub what: &'static str,
    /// The state it was in.
    pub from: &'static str,
    /// What happened, as `Debug` prints it.
    pub event: String,
}

impl TransitionError {
    fn new(what: &'static str, from: &'static str, event: &impl fmt::Debug) -> TransitionError {
        TransitionError { what, from, event: format!("{event:?}") }
    }
}

/// Text names for a lifecycle's states, one table per enum.
macro_rules! state_names {
    ($state:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $state {
            /// Every state, in declaration order.
            pub const ALL: &'static [$state] = &[$($state::$variant),+];

            /// The name stored and shown.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($state::$variant => $name),+
                }
            }
        }

        impl std::str::FromStr for $state {
            type Err = $crate::lifecycle::UnknownState;

            fn from_str(text: &str) -> Result<$state, Self::Err> {
                match text {
                    $($name => Ok($state::$variant),)+
                    _ => Err($crate::lifecycle::UnknownState {
                        what: $what,
                        text: text.to_owned(),
                        expected: concat!($($name, " "),+).trim_ascii_end(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $state {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $state {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $state {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$state, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use state_names;
