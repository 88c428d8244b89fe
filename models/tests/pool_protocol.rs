//! The thread pool's job handshake (`src/cpu/pool.rs`), model-checked with
//! loom over every interleaving of one caller and one helper.
//!
//! The caller publishes a job in a non-atomic slot, bumps the epoch, runs
//! chunks, then (once every chunk is handed out) waits for registered
//! helpers and clears the slot. A helper that saw the new epoch registers
//! in `active`, re-reads the epoch, and reads the slot. Issue 24 (finding
//! 21) suspected the clear could race a late helper's read. Without the
//! `finished` handshake loom finds that interleaving (a helper registering
//! just after the caller looked at `active`); with it, none exists. The
//! model mirrors the pool's atomics, fences and their order one for one
//! (loom checks SeqCst fences; it treats SeqCst loads and stores as
//! acquire/release, which is why the pool fences explicitly).

use loom::cell::UnsafeCell;
use loom::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering::SeqCst};
use loom::sync::Arc;

struct Shared {
    epoch: AtomicU64,
    active: AtomicUsize,
    next: AtomicUsize,
    finished: AtomicU64,
    /// The published job: how many chunks (0: cleared).
    slot: UnsafeCell<usize>,
}

/// One job of `chunks` chunks with one helper; `handshake`: the pool's
/// current protocol, or the one before the fix.
fn job(handshake: bool) {
    let shared = Arc::new(Shared {
        epoch: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        next: AtomicUsize::new(0),
        finished: AtomicU64::new(0),
        slot: UnsafeCell::new(0),
    });
    let chunks = 1;
    let helper = {
        let shared = shared.clone();
        loom::thread::spawn(move || {
            // Spin until a job is published (the pool spins, then parks).
            while shared.epoch.load(SeqCst) == 0 {
                loom::thread::yield_now();
            }
            shared.active.fetch_add(1, SeqCst);
            let epoch = shared.epoch.load(SeqCst);
            if handshake {
                fence(SeqCst);
            }
            if handshake && shared.finished.load(SeqCst) == epoch {
                shared.active.fetch_sub(1, SeqCst);
                return;
            }
            let published = shared.slot.with(|slot| unsafe { *slot });
            while shared.next.fetch_add(1, SeqCst) < published {}
            shared.active.fetch_sub(1, SeqCst);
        })
    };
    // The caller: publish, run, close, wait, clear.
    shared.slot.with_mut(|slot| unsafe { *slot = chunks });
    shared.next.store(0, SeqCst);
    let epoch = shared.epoch.fetch_add(1, SeqCst) + 1;
    while shared.next.fetch_add(1, SeqCst) < chunks {}
    if handshake {
        shared.finished.store(epoch, SeqCst);
        fence(SeqCst);
    }
    while shared.active.load(SeqCst) != 0 {
        loom::thread::yield_now();
    }
    shared.slot.with_mut(|slot| unsafe { *slot = 0 });
    helper.join().unwrap();
}

#[test]
fn with_the_handshake_no_helper_reads_the_slot_while_it_is_cleared() {
    loom::model(|| job(true));
}

#[test]
fn without_it_a_late_helper_reads_the_slot_as_it_is_cleared() {
    let found = std::panic::catch_unwind(|| loom::model(|| job(false)));
    let message = match found {
        Ok(()) => panic!("loom found no race in the old protocol"),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    };
    assert!(message.contains("Causality violation"), "loom failed otherwise: {message}");
}
