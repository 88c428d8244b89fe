//! The trace a task carries: W3C trace-context ids derived from its id.
//!
//! A task's submission, every run of it (before and after a restart), each
//! step, model call and connector call belong to one trace whose id is a
//! function of the task id alone. Nothing has to be stored or propagated for
//! a resumed task to continue its trace, and anyone holding a task id (the
//! console, an auditor with the audit log) can find its trace in a tracing
//! backend.

use sha2::{Digest, Sha256};

fn derive<const N: usize>(domain: &str, task: &str) -> [u8; N] {
    let digest = Sha256::new().chain_update(domain).chain_update([0]).chain_update(task).finalize();
    let mut out = [0; N];
    out.copy_from_slice(&digest[..N]);
    // All-zero ids are invalid in trace context; one bit avoids them.
    out[N - 1] |= 1;
    out
}

/// The 16-byte trace id of `task`.
pub fn task_trace_id(task: &str) -> [u8; 16] {
    derive("aios.task.trace", task)
}

/// The 8-byte id of the task's root span, the parent of all its spans.
pub fn task_root_span_id(task: &str) -> [u8; 8] {
    derive("aios.task.root", task)
}

/// The trace id of `task` as 32 lowercase hex digits.
pub fn task_trace_hex(task: &str) -> String {
    hex::encode(task_trace_id(task))
}

/// A `traceparent` header value (version 00, sampled).
pub fn traceparent(trace_id: [u8; 16], span_id: [u8; 8]) -> String {
    format!("00-{}-{}-01", hex::encode(trace_id), hex::encode(span_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_valid() {
        let a = task_trace_id("t0190f3c2a1b9e3c4d5");
        assert_eq!(a, task_trace_id("t0190f3c2a1b9e3c4d5"));
        assert_ne!(a, task_trace_id("t0190f3c2a1b9e3c4d6"));
        assert_ne!(a, [0; 16]);
        assert_ne!(task_root_span_id(""), [0; 8]);
        let header = traceparent(a, task_root_span_id("t0190f3c2a1b9e3c4d5"));
        assert_eq!(header.len(), 55);
        assert!(header.starts_with("00-") && header.ends_with("-01"));
        assert_eq!(task_trace_hex("t0190f3c2a1b9e3c4d5"), hex::encode(a));
    }
}
