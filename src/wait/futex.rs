//! The Linux side of waiting: `FUTEX_WAIT`/`FUTEX_WAKE` on a word in shared memory, the
//! `membarrier` that publishes a new sleeper, the spin/yield/sleep driver, and counters of every
//! syscall this layer makes (so that tests can prove the polling path makes none).
//!
//! Futexes here are shared between processes, so the `FUTEX_PRIVATE_FLAG` is never used: a
//! private futex is keyed by (mm, address) and a waker in another process would never find it.

use super::{Park, WaitCell, WaitStrategy};
use crate::sync::{spin_hint, yield_now, AtomicU32, AtomicU64, Ordering};
use rustix::thread::futex;
use std::time::{Duration, Instant};

/// The production [`Park`]: a futex on the shared word.
#[derive(Clone, Copy, Debug, Default)]
pub struct Futex;

static FUTEX_WAITS: AtomicU64 = AtomicU64::new(0);
static FUTEX_WAKES: AtomicU64 = AtomicU64::new(0);
static BARRIERS: AtomicU64 = AtomicU64::new(0);
pub(crate) static NOTIFIER_SLEEPS: AtomicU64 = AtomicU64::new(0);
pub(crate) static NOTIFIER_POSTS: AtomicU64 = AtomicU64::new(0);

/// Syscalls made by this process's wait layer since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// `FUTEX_WAIT` calls (a waiter went to sleep).
    pub futex_waits: u64,
    /// `FUTEX_WAKE` calls (a notifier found a sleeper).
    pub futex_wakes: u64,
    /// `membarrier` calls (a sleeping party attached).
    pub barriers: u64,
    /// Sleeps on a subscriber's own notifier (eventfd, semaphore, signal).
    pub notifier_sleeps: u64,
    /// Posts to armed notifiers (an eventfd write or rendezvous, a `sem_post`, a signal).
    pub notifier_posts: u64,
}

/// The syscalls this process's wait layer has made so far. The publish and receive paths make
/// no other syscall, so in polling mode these stay where they were.
///
/// ```
/// let before = shmbus::wait::stats();
/// // ... try_send / try_recv in a loop ...
/// assert_eq!(shmbus::wait::stats(), before);
/// ```
pub fn stats() -> WaitStats {
    WaitStats {
        futex_waits: FUTEX_WAITS.load(Ordering::Relaxed),
        futex_wakes: FUTEX_WAKES.load(Ordering::Relaxed),
        barriers: BARRIERS.load(Ordering::Relaxed),
        notifier_sleeps: NOTIFIER_SLEEPS.load(Ordering::Relaxed),
        notifier_posts: NOTIFIER_POSTS.load(Ordering::Relaxed),
    }
}

/// When `membarrier` cannot be had (a seccomp filter, an old kernel), a sleeper does not sleep
/// longer than this at a time, so that a wake-up lost to a stale `may_sleep` costs at most this.
const FALLBACK_SLICE: Duration = Duration::from_millis(1);

impl Park for Futex {
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                Some(left)
            }
        };
        FUTEX_WAITS.fetch_add(1, Ordering::Relaxed);
        let ts = timeout.map(|t| futex::Timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: t.subsec_nanos() as _,
        });
        // Not PRIVATE: the word is shared with other processes. EAGAIN (the word already
        // changed), EINTR and ETIMEDOUT all mean "return and let the caller look again".
        let _ = futex::wait(word.as_std(), futex::Flags::empty(), expected, ts.as_ref());
    }

    fn wake_all(&self, word: &AtomicU32) {
        FUTEX_WAKES.fetch_add(1, Ordering::Relaxed);
        let _ = futex::wake(word.as_std(), futex::Flags::empty(), i32::MAX as u32);
    }
}

/// Raise `may_sleep` on `cell` and make it visible to every notifier before this party's first
/// sleep (see `notify.rs`). Returns whether the barrier was had; without it, sleeps are cut into
/// short slices.
pub(crate) fn announce_sleeper(cell: &WaitCell) -> bool {
    cell.raise_may_sleep();
    BARRIERS.fetch_add(1, Ordering::Relaxed);
    // MEMBARRIER_CMD_GLOBAL: every thread of every process passes a full barrier before this
    // returns. It needs no registration by the notifier's process; it is slow (an RCU grace
    // period, milliseconds), which is why it runs once per attach and never on a hot path.
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::Global).is_ok()
}

/// Wait under `strategy` until `ready()` holds or `deadline` passes; returns whether it held.
/// `ready` must load the progress it checks with Acquire. With [`WaitStrategy::Futex`] the
/// caller must have announced itself on `cell` (see [`announce_sleeper`]); `barrier_ok` is what
/// that returned; it sleeps through `park` (the futex, a portable segment's events, or a
/// subscriber's own notifier).
#[inline]
pub(crate) fn wait_until<P: Park>(
    strategy: WaitStrategy,
    cell: &WaitCell,
    park: &P,
    barrier_ok: bool,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    let spin = match strategy {
        WaitStrategy::Spin => u32::MAX,
        WaitStrategy::SpinYield => 128,
        WaitStrategy::Futex { spin } => spin,
    };
    // Check the clock only every so often: `Instant::now` costs ~20 ns through the vDSO.
    const CLOCK_EVERY: u32 = 256;
    let mut i: u32 = 0;
    loop {
        if ready() {
            return true;
        }
        i = i.wrapping_add(1);
        if i % CLOCK_EVERY == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        if i < spin {
            spin_hint();
            continue;
        }
        match strategy {
            WaitStrategy::Spin => spin_hint(),
            WaitStrategy::SpinYield => yield_now(),
            WaitStrategy::Futex { .. } => return sleep(cell, park, barrier_ok, deadline, ready),
        }
    }
}

#[cold]
fn sleep<P: Park>(
    cell: &WaitCell,
    park: &P,
    barrier_ok: bool,
    deadline: Option<Instant>,
    mut ready: impl FnMut() -> bool,
) -> bool {
    if barrier_ok {
        return cell.wait(park, deadline, ready);
    }
    loop {
        let slice = Instant::now() + FALLBACK_SLICE;
        let until = deadline.map_or(slice, |d| d.min(slice));
        if cell.wait(park, Some(until), &mut ready) {
            return true;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
    }
}
