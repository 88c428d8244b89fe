//! A fork-join pool for the CPU forward pass that does not make the caller
//! wait on helpers the OS has not scheduled.
//!
//! A job is `n` independent chunks. The calling thread publishes the job and
//! claims chunks from a shared counter itself; helpers claim from the same
//! counter once they wake. Nothing is split statically, so a helper that is
//! not scheduled (the other core runs SQLite, the sync loop, a build) simply
//! takes no chunks and the caller does the work alone. The only wait left is
//! for a chunk a helper claimed and then lost its core in the middle of; when
//! such a wait exceeds [`LATE`], the pool runs the caller alone for a while
//! (doubling on each repeat, up to [`SOLO_MAX`]), so a busy machine costs at
//! most a few percent against the single-thread figure.
//!
//! A helper that is preempted mid-chunk is the rare case; the common one on
//! a two-core machine is plainer: another process keeps a core busy, so our
//! two threads and it share two cores and the caller itself spends a third
//! of its time waiting in the run queue. The caller therefore reads its own
//! run-queue wait from `/proc/thread-self/schedstat` every [`WINDOW`]; when
//! it waited more than [`CONTENDED`] of the window, it goes solo too, and
//! its helpers park, which hands the other core back whole.
//!
//! Helpers spin for [`SPIN`] after a job (the next layer's job follows within
//! microseconds) and then sleep on a futex (`std::thread::park`); between
//! tokens and between requests they burn nothing.
//!
//! Callers are serialised: a second thread that calls [`Pool::run`] while a
//! job is in flight runs its chunks on its own thread.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper polls for the next job before it parks.
const SPIN: Duration = Duration::from_micros(60);
/// A wait for a claimed chunk longer than this means the helper lost its core.
const LATE: Duration = Duration::from_micros(400);
/// The first solo period after a late helper.
const SOLO_MIN: Duration = Duration::from_millis(20);
/// The longest solo period.
const SOLO_MAX: Duration = Duration::from_secs(2);
/// How often the caller checks its run-queue wait.
const WINDOW: Duration = Duration::from_millis(20);
/// The fraction of a window spent waiting for a core that means the
/// machine is oversubscribed.
const CONTENDED: f64 = 0.08;

/// Threads asked for before the global pool starts (0: not set).
static REQUESTED_THREADS: AtomicUsize = AtomicUsize::new(0);
static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sets the thread count of the global pool (the caller included). Only
/// effective before the first forward pass; returns whether it took effect.
pub fn set_threads(threads: usize) -> bool {
    REQUESTED_THREADS.store(threads.max(1), Ordering::SeqCst);
    GLOBAL.get().is_none()
}

/// The process-wide pool: `set_threads`, else `$AIOS_MODEL_THREADS`, else
/// one thread per available core.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| {
        let requested = REQUESTED_THREADS.load(Ordering::SeqCst);
        let threads = if requested > 0 {
            requested
        } else {
            std::env::var("AIOS_MODEL_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
        };
        Pool::new(threads)
    })
}

/// A fixed set of helper threads plus whichever thread calls [`Pool::run`].
pub struct Pool {
    /// State shared with the helpers.
    shared: Arc<Shared>,
    /// Helper count plus one.
    threads: usize,
    /// The one caller at a time, and its solo-mode state.
    caller: Mutex<CallerState>,
}

/// What the caller remembers between jobs.
#[derive(Debug)]
struct CallerState {
    /// Run alone until this instant (a helper was late, or cores are short).
    solo_until: Option<Instant>,
    /// The next solo period.
    solo_for: Duration,
    /// When the current contention window started, and the caller's
    /// run-queue wait then (None where the kernel does not say).
    window: Option<(Instant, u64)>,
}

impl CallerState {
    /// Starts a solo period, each one in a row twice as long as the last.
    fn go_solo(&mut self, now: Instant) {
        self.solo_until = Some(now + self.solo_for);
        self.solo_for = (self.solo_for * 2).min(SOLO_MAX);
        self.window = None;
    }

    /// Closes the contention window if it is over; returns whether the
    /// caller waited for a core too long in it.
    fn contended(&mut self, now: Instant) -> bool {
        match self.window {
            Some((started, waited)) if now.duration_since(started) >= WINDOW => {
                let Some(waited_now) = runqueue_wait_ns() else {
                    self.window = None;
                    return false;
                };
                let fraction = waited_now.saturating_sub(waited) as f64 / now.duration_since(started).as_nanos() as f64;
                self.window = Some((now, waited_now));
                if fraction > CONTENDED {
                    return true;
                }
                self.solo_for = SOLO_MIN;
                false
            }
            Some(_) => false,
            None => {
                self.window = runqueue_wait_ns().map(|waited| (now, waited));
                false
            }
        }
    }
}

/// Nanoseconds this thread has spent runnable but not running (Linux).
fn runqueue_wait_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().nth(1)?.parse().ok()
}

/// The job slot and counters. The slot is written only while no helper is
/// registered in `active`, and read only by registered helpers after they
/// saw the epoch that published it.
struct Shared {
    /// Bumped once per published job (read by spinning helpers: its own line).
    epoch: CacheLine<AtomicU64>,
    /// Set when the pool is dropped; helpers exit.
    shutdown: AtomicBool,
    /// Helpers currently looking at the slot.
    active: CacheLine<AtomicUsize>,
    /// The next chunk to hand out (claimed by every thread: its own line).
    next: CacheLine<AtomicUsize>,
    /// The published job.
    slot: UnsafeCell<Slot>,
    /// One entry per helper: whether it is parked, and its handle.
    sleepers: Mutex<Vec<(Arc<AtomicBool>, Thread)>>,
}

/// Keeps a hot atomic off its neighbours' cache lines (two lines, for the
/// adjacent-line prefetcher).
#[repr(align(128))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A job as the helpers see it.
#[derive(Clone, Copy)]
struct Slot {
    /// Chunks in the job.
    chunks: usize,
    /// The chunk body with its lifetime erased; dereferenced only for a
    /// chunk claimed below `chunks`, which the caller waits for.
    body: Option<*const (dyn Fn(usize) + Sync)>,
}

// SAFETY: the slot's protocol (see `Shared`) orders every access; the body
// it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only a borrowed closure.
unsafe impl Send for Shared {}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.threads).finish()
    }
}

impl Pool {
    /// A pool of `threads` threads, the caller included (so `threads - 1` helpers).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: CacheLine(AtomicU64::new(0)),
            shutdown: AtomicBool::new(false),
            active: CacheLine(AtomicUsize::new(0)),
            next: CacheLine(AtomicUsize::new(0)),
            slot: UnsafeCell::new(Slot { chunks: 0, body: None }),
            sleepers: Mutex::new(Vec::new()),
        });
        for index in 1..threads {
            let for_helper = shared.clone();
            let sleeping = Arc::new(AtomicBool::new(false));
            let flag = sleeping.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("aios-cpu-{index}"))
                .spawn(move || helper_loop(&for_helper, &flag));
            match spawned {
                Ok(handle) => {
                    if let Ok(mut sleepers) = shared.sleepers.lock() {
                        sleepers.push((sleeping, handle.thread().clone()));
                    }
                }
                // Fewer helpers only means less parallelism.
                Err(error) => tracing::warn!(%error, "cannot start a CPU helper thread"),
            }
        }
        let helpers = shared.sleepers.lock().map(|s| s.len()).unwrap_or(0);
        Self {
            shared,
            threads: helpers + 1,
            caller: Mutex::new(CallerState { solo_until: None, solo_for: SOLO_MIN, window: None }),
        }
    }

    /// Threads that can work on a job, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `body(0..chunks)`, each index exactly once, on the caller and
    /// whichever helpers are free; returns when all have finished.
    pub fn run(&self, chunks: usize, body: &(dyn Fn(usize) + Sync)) {
        if chunks == 0 {
            return;
        }
        if chunks == 1 || self.threads == 1 {
            (0..chunks).for_each(body);
            return;
        }
        let Ok(mut caller) = self.caller.try_lock() else {
            // Another thread's job is in flight: run this one here.
            (0..chunks).for_each(body);
            return;
        };
        let now = Instant::now();
        if let Some(until) = caller.solo_until {
            if now < until {
                (0..chunks).for_each(body);
                return;
            }
            caller.solo_until = None;
        }
        if caller.contended(now) {
            caller.go_solo(now);
            (0..chunks).for_each(body);
            return;
        }
        let shared = &*self.shared;
        // A helper that registered late for the previous job leaves at once.
        wait_until(|| shared.active.load(Ordering::SeqCst) == 0);
        // SAFETY: no helper is registered, so none reads the slot; the
        // lifetime is erased only until this function returns, and it returns
        // only after every registered helper has left (see below).
        unsafe {
            let body: *const (dyn Fn(usize) + Sync + '_) = body;
            let body: *const (dyn Fn(usize) + Sync + 'static) = std::mem::transmute(body);
            *shared.slot.get() = Slot { chunks, body: Some(body) };
        }
        shared.next.store(0, Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if let Ok(sleepers) = shared.sleepers.lock() {
            for (sleeping, thread) in sleepers.iter() {
                if sleeping.swap(false, Ordering::SeqCst) {
                    thread.unpark();
                }
            }
        }
        loop {
            let chunk = shared.next.fetch_add(1, Ordering::SeqCst);
            if chunk >= chunks {
                break;
            }
            body(chunk);
        }
        // Every chunk is handed out; helpers still registered are finishing one.
        if shared.active.load(Ordering::SeqCst) != 0 {
            let started = Instant::now();
            wait_until(|| shared.active.load(Ordering::SeqCst) == 0);
            let waited = started.elapsed();
            if waited > LATE {
                caller.go_solo(Instant::now());
            }
        }
        // SAFETY: no helper is registered; clear the dangling pointer.
        unsafe {
            *shared.slot.get() = Slot { chunks: 0, body: None };
        }
    }

    /// Runs `body(start..end)` over `0..len` split into ranges of at most
    /// `grain` (rounded up to a multiple of `align`).
    pub fn run_ranges(&self, len: usize, grain: usize, align: usize, body: &(dyn Fn(usize, usize) + Sync)) {
        let align = align.max(1);
        let grain = grain.max(1).div_ceil(align) * align;
        let chunks = len.div_ceil(grain);
        self.run(chunks, &|chunk| body(chunk * grain, ((chunk + 1) * grain).min(len)));
    }
}

/// A mutable slice that pool chunks write in disjoint pieces: each chunk
/// takes only the piece its index owns.
#[derive(Debug)]
pub struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: pieces handed out by `piece` never overlap between concurrent
// chunks (the caller's obligation, stated on `piece`).
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    /// Wraps `slice` for the duration of one job.
    pub fn new(slice: &'a mut [T]) -> Self {
        Self { ptr: slice.as_mut_ptr(), len: slice.len(), _slice: std::marker::PhantomData }
    }

    /// `range` of the slice.
    ///
    /// # Safety
    /// No two pieces in use at the same time may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn piece(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "piece out of bounds");
        // SAFETY: in bounds (checked); disjointness is the caller's obligation.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start) }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        if let Ok(sleepers) = self.shared.sleepers.lock() {
            for (_, thread) in sleepers.iter() {
                thread.unpark();
            }
        }
    }
}

/// Spins briefly, then yields the core until `done` holds.
fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        std::hint::spin_loop();
    }
    while !done() {
        std::thread::yield_now();
    }
}

fn helper_loop(shared: &Shared, sleeping: &AtomicBool) {
    let mut seen = 0u64;
    loop {
        // Poll for a new job for a little while, then park.
        let spin_started = Instant::now();
        let mut polls = 0u32;
        while shared.epoch.load(Ordering::SeqCst) == seen {
            polls += 1;
            if polls.is_multiple_of(64) && spin_started.elapsed() > SPIN {
                sleeping.store(true, Ordering::SeqCst);
                if shared.epoch.load(Ordering::SeqCst) == seen {
                    std::thread::park();
                }
                sleeping.store(false, Ordering::SeqCst);
                polls = 0;
            }
            std::hint::spin_loop();
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        shared.active.fetch_add(1, Ordering::SeqCst);
        let epoch = shared.epoch.load(Ordering::SeqCst);
        if epoch == seen {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        seen = epoch;
        // SAFETY: registered in `active` after the epoch that published the
        // slot, so the caller is not writing it.
        let slot = unsafe { *shared.slot.get() };
        if let Some(body) = slot.body {
            loop {
                let chunk = shared.next.fetch_add(1, Ordering::SeqCst);
                if chunk >= slot.chunks {
                    break;
                }
                // SAFETY: a chunk below `chunks` was claimed while the caller
                // is still inside `run`, which waits for `active` to drain.
                unsafe { (*body)(chunk) };
            }
        }
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for chunks in [0, 1, 2, 7, 64, 1000] {
                let counts: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(chunks, &|chunk| {
                    counts[chunk].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{threads} threads, {chunks} chunks");
            }
        }
    }

    #[test]
    fn ranges_cover_the_length_in_aligned_pieces() {
        let pool = Pool::new(2);
        let covered: Vec<AtomicUsize> = (0..103).map(|_| AtomicUsize::new(0)).collect();
        pool.run_ranges(103, 10, 4, &|start, end| {
            assert_eq!(start % 12, 0);
            for c in &covered[start..end] {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(covered.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn concurrent_callers_each_get_their_work_done() {
        let pool = Arc::new(Pool::new(2));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let total = AtomicUsize::new(0);
                        pool.run(16, &|chunk| {
                            total.fetch_add(chunk, Ordering::Relaxed);
                        });
                        assert_eq!(total.load(Ordering::Relaxed), 120);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker thread");
        }
    }
}
