//! The sleep/wake protocol: an event count that costs the notifier one relaxed load when nobody
//! sleeps.
//!
//! One [`WaitCell`] per direction of a ring (readers wait for data, the writer waits for space)
//! lives in the segment's control block. Its words:
//!
//! | word        | written by | meaning |
//! |-------------|------------|---------|
//! | `may_sleep` | a party that attaches with a sleeping strategy (+1), and detaches (-1); whoever frees a dead subscriber's entry (-1) | whether the notifier must run the slow check at all |
//! | `sleepers`  | a waiter, around each sleep (+1 before, -1 after); whoever frees a dead subscriber's entry (-1, if it died asleep) | someone is asleep or about to be |
//! | `epoch`     | the notifier, when it wakes (+1) | the futex word; a change means "look again" |
//!
//! The invariant that rules out lost wake-ups is Dekker's: the notifier makes its progress
//! visible (the slot's stamp, the reader's head) and then, after a `SeqCst` fence, reads
//! `sleepers`; the waiter raises `sleepers` and then, after a `SeqCst` fence, re-checks the
//! progress. The two fences are totally ordered, so at least one side sees the other's write:
//! either the waiter sees the progress and does not sleep, or the notifier sees the sleeper and
//! bumps `epoch` and wakes it. The waiter read `epoch` *before* raising `sleepers`, so a bump
//! that lands between its check and its sleep makes the futex wait return at once
//! (`FUTEX_WAIT` compares and sleeps atomically).
//!
//! `may_sleep` keeps the fence off the publish path of topics whose readers all spin. A party
//! that starts to sleep raises it once, at attach, and then issues a process-wide barrier
//! (`membarrier`, see `futex.rs`): every notifier that read the old 0 has its earlier progress
//! made visible by that barrier, and every later notify sees 1. The loom model treats that
//! barrier as a `SeqCst` fence on both sides and starts with `may_sleep` raised.
//!
//! This file is pure protocol: no syscalls (they come through [`Park`]), so loom checks it.

use super::Park;
use crate::sync::{fence, AtomicU32, Ordering};
use std::time::Instant;

/// The words of one wait/wake channel, as they lie in shared memory. All zero is the initial
/// state. See the module comment for the protocol.
#[repr(C)]
#[derive(Debug, Default)]
pub struct WaitCell {
    epoch: AtomicU32,
    sleepers: AtomicU32,
    may_sleep: AtomicU32,
}

impl WaitCell {
    /// A cell in its initial state (for heap use and loom models; in a segment, zeroed memory is
    /// the same state).
    pub fn new() -> Self {
        Self::default()
    }

    /// Called by the side that made progress, after the Release store that made it visible.
    /// One relaxed load when no waiter may sleep; a fence and a second load otherwise; the wake
    /// syscall only when a waiter sleeps.
    #[inline]
    pub fn notify<P: Park>(&self, park: &P) {
        if self.may_sleep() {
            let _ = self.notify_sleepy(park);
        }
    }

    /// Whether a waiter may sleep on this cell: the one load `notify` makes when none may.
    #[inline(always)]
    fn may_sleep(&self) -> bool {
        // Relaxed: a stale 0 is covered by the barrier the sleeper issued when it raised it.
        self.may_sleep.load(Ordering::Relaxed) != 0
    }

    /// [`WaitCell::notify`], with a parker built only when a waiter may sleep: a publisher's
    /// parker gathers several references, and building it for every message cost 8 of the
    /// ~60 instructions of a publish (callgrind, one process, 8-byte messages).
    /// Returns whether it woke anyone (made the wake call).
    #[inline(always)]
    pub fn notify_with<P: Park>(&self, park: impl FnOnce() -> P) -> bool {
        self.may_sleep() && self.notify_sleepy(&park())
    }

    /// Returns whether it woke anyone.
    #[inline]
    fn notify_sleepy<P: Park>(&self, park: &P) -> bool {
        // SeqCst fence: pairs with the fence in `wait`, after `sleepers` is raised. Orders our
        // caller's progress store before the load of `sleepers` (store-load: only a full fence
        // does that).
        fence(Ordering::SeqCst);
        let sleepy = self.sleepers.load(Ordering::Relaxed) != 0;
        if sleepy {
            self.wake(park);
        }
        sleepy
    }

    #[cold]
    #[inline(never)]
    fn wake<P: Park>(&self, park: &P) {
        // Release: a woken waiter that reads the new epoch (Acquire) also sees our progress.
        self.epoch.fetch_add(1, Ordering::Release);
        park.wake_all(&self.epoch);
    }

    /// Mark that a party with a sleeping strategy is attached. The caller must then make the
    /// mark visible to every notifier before its first sleep (see the module comment).
    pub fn raise_may_sleep(&self) {
        self.may_sleep.fetch_add(1, Ordering::SeqCst);
    }

    /// Undo [`WaitCell::raise_may_sleep`], at detach.
    pub fn lower_may_sleep(&self) {
        // Never wrap below zero, whatever a peer wrote here.
        let _ = self
            .may_sleep
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Count the caller as a sleeper, for a wait done outside this cell (a subscriber polling
    /// its notifier's descriptor): the caller arms its notifier slot first, then calls this,
    /// then re-checks its condition, and calls [`WaitCell::leave`] when done. The same steps
    /// as [`WaitCell::wait`]'s before it sleeps.
    pub fn enter(&self) {
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        // SeqCst fence: pairs with the one in `notify_sleepy` (see the module comment).
        fence(Ordering::SeqCst);
    }

    /// Undo [`WaitCell::enter`].
    pub fn leave(&self) {
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Take off what a party found dead still counts for here: one of the `sleepers` (it died
    /// asleep) and one of `may_sleep` (it died attached with a sleeping strategy), as its
    /// marks say (see `ring::broadcast::ReaderEntry::waits`). Without this its notifier
    /// would pay the fence, and the wake syscall, on every message for as long as the topic
    /// lives. Never lowers a count below zero, whatever a peer wrote there.
    pub fn forget(&self, asleep: bool, may_sleep: bool) {
        if asleep {
            let _ = self
                .sleepers
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        if may_sleep {
            self.lower_may_sleep();
        }
    }

    /// How many waiters are counted as asleep, or about to be (for inspection and tests).
    pub fn sleepers(&self) -> u32 {
        self.sleepers.load(Ordering::Relaxed)
    }

    /// How many parties with a sleeping strategy are attached (for inspection and tests).
    pub fn may_sleep_count(&self) -> u32 {
        self.may_sleep.load(Ordering::Relaxed)
    }

    /// Sleep until `ready()` holds or `deadline` passes; returns whether `ready()` held.
    /// `ready` must read the progress with Acquire. The caller has raised `may_sleep`.
    pub fn wait<P: Park>(
        &self,
        park: &P,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        loop {
            // Acquire: pairs with the Release `fetch_add` in `wake`.
            let epoch = self.epoch.load(Ordering::Acquire);
            // A notifier other than the futex arms its slot here, before the fence (see
            // `notifier.rs`).
            park.prepare();
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            park.counted(true);
            // SeqCst fence: pairs with the one in `notify_sleepy` (see the module comment).
            fence(Ordering::SeqCst);
            if ready() {
                park.counted(false);
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
                park.finish();
                return true;
            }
            park.park(&self.epoch, epoch, deadline);
            park.counted(false);
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
            park.finish();
            if ready() {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }
}
