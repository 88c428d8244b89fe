//! A fork-join pool for the CPU forward pass that does not make the caller
//! wait on helpers the OS has not scheduled.
//!
//! A job is `n` independent chunks. The calling thread publishes the job and
//! claims chunks from a shared counter itself; helpers claim from the same
//! counter once they wake. Nothing is split statically, so a helper that is
//! not scheduled (the other core runs SQLite, the sync loop, a build) simply
//! takes no chunks and the caller does the work alone. The only wait left is
//! for a chunk a helper claimed and then lost its core in the middle of.
//!
//! Jobs run `width` threads wide, the caller included. A [`Governor`] narrows
//! the width by one when
//! - the caller waits for a claimed chunk longer than [`LATE`] and than two
//!   of its own chunks (a helper lost its core), or
//! - the caller itself spent more than [`CONTENDED`] of a [`WINDOW`] waiting
//!   in the run queue (read from `/proc/thread-self/schedstat`): another
//!   process keeps a core busy, and our threads and it share too few cores.
//!
//! Each narrowing holds for a while, twice as long as the last one in a row
//! (from [`HOLD_MIN`], or [`QUEUED_HOLD_MIN`] after a contended window, to
//! [`HOLD_MAX`]), then the width grows by one again to probe, judged by the
//! next window; a window at full width without contention starts the
//! doubling over. On a two-core machine whose other core is kept busy, the
//! caller thus runs alone except for a 20 ms probe every two seconds, which
//! hands the other core back whole. On a larger machine one busy core costs
//! one thread, not all but one.
//!
//! (Probing only when `/proc/stat` showed half a core idle was tried: with
//! the other core busy it saved nothing measurable, and on an idle machine
//! it made generation 9% slower, by widening later after a preempted
//! helper.)
//!
//! Helpers spin for [`SPIN`] after a job (the next layer's job follows within
//! microseconds) and then sleep on a futex (`std::thread::park`); between
//! tokens and between requests they burn nothing. Helpers outside the width
//! are not woken.
//!
//! Callers are serialised: a second thread that calls [`Pool::run`] while a
//! job is in flight runs its chunks on its own thread.

use std::cell::UnsafeCell;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{Thread, ThreadId};
use std::time::{Duration, Instant};

/// How long a helper polls for the next job before it parks.
const SPIN: Duration = Duration::from_micros(60);
/// A wait for a claimed chunk longer than this (and than two of the caller's
/// chunks) means the helper lost its core.
const LATE: Duration = Duration::from_micros(400);
/// The first hold after a narrowing: no widening before it ends.
const HOLD_MIN: Duration = Duration::from_millis(20);
/// The first hold after a contended window. A window's worth of queueing
/// means a load that lasts (another process spinning, a build), and each
/// probe of the busy core costs a window at a loss, so start higher than
/// after a late helper, which is often one preemption.
const QUEUED_HOLD_MIN: Duration = Duration::from_millis(160);
/// The longest hold.
const HOLD_MAX: Duration = Duration::from_secs(2);
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
    /// The one caller at a time, and how wide its jobs run.
    caller: Mutex<Governor<Kernel>>,
}

/// Where the governor's measurement comes from.
trait Gauges {
    /// Nanoseconds the calling thread has spent runnable but not running.
    fn queued_ns(&mut self) -> Option<u64>;
}

/// The Linux kernel's accounting; `None` elsewhere.
#[derive(Debug, Default)]
struct Kernel;

impl Gauges for Kernel {
    fn queued_ns(&mut self) -> Option<u64> {
        let mut buffer = [0u8; 128];
        let text = read_head("/proc/thread-self/schedstat", &mut buffer)?;
        text.split_ascii_whitespace().nth(1)?.parse().ok()
    }
}

/// The start of a file, read into `buffer` without allocating.
fn read_head<'a>(path: &str, buffer: &'a mut [u8]) -> Option<&'a str> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(_) => return None,
        }
    }
    std::str::from_utf8(&buffer[..filled]).ok()
}

/// Why the governor took a thread away.
#[derive(Clone, Copy, Debug)]
enum Narrowing {
    /// A helper held up the end of a job: maybe a moment's preemption.
    Late,
    /// The caller queued for a core through a whole window: a lasting load.
    Queued,
}

/// Decides how many threads each job uses (see the module documentation).
#[derive(Debug)]
struct Governor<G> {
    gauges: G,
    /// The pool's threads, the caller included.
    threads: usize,
    /// Threads the next job uses, the caller included (1 ..= threads).
    width: usize,
    /// No widening before this instant.
    hold_until: Option<Instant>,
    /// The next hold.
    hold_for: Duration,
    /// The open run-queue window: its caller, start, and the caller's wait then.
    window: Option<(ThreadId, Instant, u64)>,
}

impl<G: Gauges> Governor<G> {
    fn new(threads: usize, gauges: G) -> Self {
        Self { gauges, threads, width: threads, hold_until: None, hold_for: HOLD_MIN, window: None }
    }

    /// The width of a job starting `now` on thread `caller`, after the
    /// measurement if one is due.
    fn job_width(&mut self, now: Instant, caller: impl FnOnce() -> ThreadId) -> usize {
        let holding = self.hold_until.is_some_and(|until| now < until);
        match self.window {
            None => {
                self.window = self.gauges.queued_ns().map(|queued| (caller(), now, queued));
                if self.window.is_none() && !holding {
                    // Nothing to measure (not Linux): probe whenever a hold ends.
                    self.widen();
                }
            }
            Some((thread, started, queued)) if now.saturating_duration_since(started) >= WINDOW => {
                let this = caller();
                self.window = self.gauges.queued_ns().map(|queued_now| (this, now, queued_now));
                let Some((_, _, queued_now)) = self.window else { return self.width };
                if thread != this {
                    // The counter is per thread: another caller's says nothing.
                    return self.width;
                }
                let elapsed = now.saturating_duration_since(started).as_nanos() as f64;
                if queued_now.saturating_sub(queued) as f64 / elapsed > CONTENDED {
                    self.narrow(now, Narrowing::Queued);
                } else if self.width == self.threads {
                    self.hold_for = HOLD_MIN;
                } else if !holding {
                    self.widen();
                }
            }
            Some(_) => {}
        }
        self.width
    }

    /// Notes that the caller waited too long for a helper at `now`.
    fn helper_late(&mut self, now: Instant) {
        self.narrow(now, Narrowing::Late);
    }

    /// One thread fewer, held for a period twice as long as the last one in
    /// a row, and at least [`QUEUED_HOLD_MIN`] after a contended window. At
    /// one thread already, only the hold restarts: the caller alone is short
    /// of a core.
    fn narrow(&mut self, now: Instant, why: Narrowing) {
        let hold = match why {
            Narrowing::Late => self.hold_for,
            Narrowing::Queued => self.hold_for.max(QUEUED_HOLD_MIN),
        };
        if self.width > 1 {
            self.width -= 1;
            tracing::debug!(width = self.width, hold_ms = hold.as_millis() as u64, ?why, "CPU pool narrowed");
        }
        self.hold_until = Some(now + hold);
        self.hold_for = (hold * 2).min(HOLD_MAX);
        self.window = None;
    }

    /// One thread more (a probe), judged by the next window.
    fn widen(&mut self) {
        self.hold_until = None;
        self.window = None;
        if self.width < self.threads {
            self.width += 1;
            tracing::debug!(width = self.width, "CPU pool widened");
        }
    }
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
    /// The epoch of the last job whose caller has run out of chunks: a
    /// helper that registers after this reads no slot (see `run`).
    finished: AtomicU64,
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
    /// Threads that take part, the caller included: helpers numbered from
    /// `width` up leave the job alone.
    width: usize,
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
            finished: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            active: CacheLine(AtomicUsize::new(0)),
            next: CacheLine(AtomicUsize::new(0)),
            slot: UnsafeCell::new(Slot { chunks: 0, width: 0, body: None }),
            sleepers: Mutex::new(Vec::new()),
        });
        for _ in 1..threads {
            // Helpers are numbered 1.. in the order they started.
            let index = shared.sleepers.lock().map(|s| s.len() + 1).unwrap_or(usize::MAX);
            let for_helper = shared.clone();
            let sleeping = Arc::new(AtomicBool::new(false));
            let flag = sleeping.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("aios-cpu-{index}"))
                .spawn(move || helper_loop(&for_helper, index, &flag));
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
        Self { shared, threads: helpers + 1, caller: Mutex::new(Governor::new(helpers + 1, Kernel)) }
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
        let width = caller.job_width(Instant::now(), || std::thread::current().id());
        if width == 1 {
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
            *shared.slot.get() = Slot { chunks, width, body: Some(body) };
        }
        shared.next.store(0, Ordering::SeqCst);
        let epoch = shared.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(sleepers) = shared.sleepers.lock() {
            for (sleeping, thread) in sleepers.iter().take(width - 1) {
                if sleeping.swap(false, Ordering::SeqCst) {
                    thread.unpark();
                }
            }
        }
        let working = Instant::now();
        let mut mine = 0u32;
        loop {
            let chunk = shared.next.fetch_add(1, Ordering::SeqCst);
            if chunk >= chunks {
                break;
            }
            body(chunk);
            mine += 1;
        }
        // Every chunk is handed out. Close the job, then look for helpers
        // still registered. Both sides store, fence (SeqCst), then load: a
        // Dekker handshake, in which a helper that registers after this
        // load finds the job closed and reads no slot, and one that
        // registered before it is waited for, so the slot is never read
        // while it is cleared below. Without it a late helper read the slot
        // as the caller cleared it: a data race (issue 24, finding 21;
        // `models/tests/pool_protocol.rs` shows it with loom).
        shared.finished.store(epoch, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        // Helpers still registered are finishing one chunk.
        if shared.active.load(Ordering::SeqCst) != 0 {
            let started = Instant::now();
            // A helper that claimed the last chunk just before the caller ran
            // out needs up to a chunk's time, running or not.
            let chunk_time = started.saturating_duration_since(working) / mine.max(1);
            wait_until(|| shared.active.load(Ordering::SeqCst) == 0);
            if started.elapsed() > LATE.max(chunk_time * 2) {
                caller.helper_late(Instant::now());
            }
        }
        // SAFETY: no helper is registered; clear the dangling pointer.
        unsafe {
            *shared.slot.get() = Slot { chunks: 0, width: 0, body: None };
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

fn helper_loop(shared: &Shared, index: usize, sleeping: &AtomicBool) {
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
        std::sync::atomic::fence(Ordering::SeqCst);
        if shared.finished.load(Ordering::SeqCst) == epoch {
            // The caller closed this job before seeing us register: it may
            // be clearing the slot now.
            shared.active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        // SAFETY: registered in `active` after the epoch that published the
        // slot and before the caller closed the job, so the caller waits
        // for us before it writes the slot again.
        let slot = unsafe { *shared.slot.get() };
        if let Some(body) = slot.body.filter(|_| index < slot.width) {
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

    /// A caller's run-queue wait that the test sets by hand.
    #[derive(Debug, Default)]
    struct Fake {
        queued: Option<u64>,
    }

    impl Gauges for Fake {
        fn queued_ns(&mut self) -> Option<u64> {
            self.queued
        }
    }

    /// Runs back-to-back 1 ms jobs for `span` on one caller thread, which
    /// waits `queued(width)` ns in the run queue in a job of that width.
    /// Returns the width of each job.
    fn drive(
        governor: &mut Governor<Fake>,
        clock: &mut Instant,
        span: Duration,
        queued: impl Fn(usize) -> u64,
    ) -> Vec<usize> {
        let caller = std::thread::current().id();
        let mut widths = Vec::new();
        let end = *clock + span;
        while *clock < end {
            let width = governor.job_width(*clock, || caller);
            widths.push(width);
            *clock += Duration::from_millis(1);
            governor.gauges.queued = governor.gauges.queued.map(|q| q + queued(width));
        }
        widths
    }

    /// Where the width went up from one job to the next, in ms from the start.
    fn probes(widths: &[usize]) -> Vec<usize> {
        widths.windows(2).enumerate().filter(|(_, w)| w[1] > w[0]).map(|(at, _)| at + 1).collect()
    }

    #[test]
    fn a_busy_core_costs_one_thread_and_probes_for_it_ever_more_rarely() {
        // Three threads on three cores, then another process takes one.
        let mut governor = Governor::new(3, Fake { queued: Some(0) });
        let mut clock = Instant::now();
        // A little queueing is no contention: full width.
        let widths = drive(&mut governor, &mut clock, Duration::from_millis(200), |_| 50_000);
        assert!(widths.iter().all(|&w| w == 3), "{widths:?}");
        // Three threads wide, the caller now queues a third of its time.
        let busy = |width| if width == 3 { 333_000 } else { 0 };
        let widths = drive(&mut governor, &mut clock, Duration::from_secs(10), busy);
        assert_eq!(widths[..20], [3; 20]);
        assert_eq!(widths[20], 2);
        assert!(widths.iter().all(|&w| w >= 2), "one busy core cost more than one thread");
        let ups = probes(&widths);
        let gaps: Vec<usize> = ups.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(gaps.iter().rev().take(2).all(|&g| (2000..2100).contains(&g)), "{gaps:?}");
        let wide = widths[5000..].iter().filter(|&&w| w == 3).count();
        assert!(wide < 100, "{wide} of the last 5000 jobs ran on the busy core");
        // The load goes away: the next probe holds, and the pool stays whole.
        let widths = drive(&mut governor, &mut clock, Duration::from_secs(3), |_| 0);
        assert_eq!(widths.last(), Some(&3));
        // Contention from then on starts with the shortest hold again: a
        // window to notice, 160 ms held, a window to probe.
        let widths = drive(&mut governor, &mut clock, Duration::from_millis(400), busy);
        let first = probes(&widths);
        assert!(first.first().is_some_and(|&at| (160..=220).contains(&at)), "{first:?}");
    }

    #[test]
    fn one_thread_alone_short_of_a_core_probes_no_wider() {
        let mut governor = Governor::new(2, Fake { queued: Some(0) });
        let mut clock = Instant::now();
        // Even one thread queues: the machine is short of cores for it alone.
        let widths = drive(&mut governor, &mut clock, Duration::from_secs(10), |_| 333_000);
        let wide = widths[1000..].iter().filter(|&&w| w == 2).count();
        assert!(wide == 0, "{wide} jobs ran two wide: {:?}", probes(&widths));
    }

    #[test]
    fn a_late_helper_narrows_the_pool_where_the_kernel_says_nothing() {
        let mut governor = Governor::new(2, Fake::default());
        let mut clock = Instant::now();
        let caller = std::thread::current().id();
        assert_eq!(governor.job_width(clock, || caller), 2);
        governor.helper_late(clock);
        clock += Duration::from_millis(1);
        assert_eq!(governor.job_width(clock, || caller), 1);
        // Late again at every probe: the holds double up to the longest.
        let mut widths = Vec::new();
        for _ in 0..10_000 {
            clock += Duration::from_millis(1);
            let width = governor.job_width(clock, || caller);
            if width == 2 {
                governor.helper_late(clock);
            }
            widths.push(width);
        }
        let ups = probes(&widths);
        let gaps: Vec<usize> = ups.windows(2).map(|p| p[1] - p[0]).collect();
        assert_eq!(gaps[..4], [40, 80, 160, 320], "{gaps:?}");
        assert!(gaps.iter().rev().take(2).all(|&g| g == 2000), "{gaps:?}");
    }

    #[test]
    fn another_caller_s_wait_is_not_counted() {
        let mut governor = Governor::new(2, Fake { queued: Some(0) });
        let clock = Instant::now();
        let (one, other) =
            (std::thread::current().id(), std::thread::spawn(|| std::thread::current().id()).join().expect("thread"));
        governor.job_width(clock, || one);
        // The other thread's counter is far ahead of the first one's.
        governor.gauges.queued = Some(1_000_000_000);
        assert_eq!(governor.job_width(clock + WINDOW, || other), 2);
        governor.gauges.queued = Some(1_000_000_000 + 1_000);
        assert_eq!(governor.job_width(clock + WINDOW * 2, || other), 2);
        governor.gauges.queued = Some(1_000_000_000 + 10_000_000);
        assert_eq!(governor.job_width(clock + WINDOW * 3, || other), 1);
    }

    #[test]
    fn helpers_beyond_the_width_take_no_chunks() {
        let pool = Pool::new(3);
        let strays = AtomicUsize::new(0);
        let body = |_| {
            // Long enough for woken helpers to arrive before the caller is done.
            let started = Instant::now();
            while started.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            }
            if std::thread::current().name() == Some("aios-cpu-2") {
                strays.fetch_add(1, Ordering::Relaxed);
            }
        };
        let mut wide_ran_on_helper_2 = false;
        for _ in 0..200 {
            // A full-width job wakes every helper (they spin after it) ...
            {
                // (No window open: nothing is judged before this job.)
                let mut caller = pool.caller.lock().expect("caller");
                caller.width = 3;
                caller.hold_until = None;
                caller.window = None;
            }
            pool.run(64, &body);
            wide_ran_on_helper_2 |= strays.swap(0, Ordering::Relaxed) > 0;
            // ... and one two threads wide follows while they still spin.
            {
                let mut caller = pool.caller.lock().expect("caller");
                caller.width = 2;
                caller.hold_until = Some(Instant::now() + Duration::from_secs(60));
                caller.window = None;
            }
            pool.run(64, &body);
            assert_eq!(strays.load(Ordering::Relaxed), 0, "helper 2 ran a chunk of a 2-wide job");
        }
        assert!(wide_ran_on_helper_2, "helper 2 never ran: the test shows nothing");
    }

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
