//! Notifiers: what wakes a subscriber that sleeps on a ring transport, besides the futex on
//! the topic's wait word. A subscriber picks one ([`Notifier`]) and registers it in a
//! [`NotifySlot`] of the topic's control block (slot `i` for the subscriber holding reader
//! entry `i`); a publisher whose wake-up finds a sleeper also posts to every slot that is
//! armed.
//!
//! The protocol extends [`WaitCell`](super::WaitCell)'s. A waiter arms its slot (`armed = 1`)
//! *before* it raises `sleepers` and issues the cell's `SeqCst` fence; the notifier, after its
//! own fence, reads `sleepers` and, if it is not zero, swaps each slot's `armed` to 0 and posts
//! to those it found armed. By the two fences (see `notify.rs`), either the waiter's re-check
//! sees the progress, or the notifier's loads see the waiter's `sleepers` and `armed`: a waiter
//! whose message was sent is always posted to (loom model `loom-tests/tests/wake.rs`, "armed").
//! The swap makes a post counted: one per arming, however many messages follow.
//!
//! | word    | written by | meaning |
//! |---------|------------|---------|
//! | `owner` | the subscriber (its identity at open, 0 at close) | whose notifier this is; 0: none |
//! | `kind`  | the subscriber, before `owner` | which notifier, and its argument (a signal number) |
//! | `armed` | the subscriber (1 before it sleeps, 0 after); a notifier (swap to 0 when it posts) | a post is wanted |
//! | `tid`   | the subscriber, before it arms | the thread a signal goes to |
//!
//! Every word can be written by a hostile peer: a publisher validates the kind, and what it
//! derives from the owner (a socket name, a semaphore name, a thread to signal) only reaches
//! objects of this user that are named for the topic.
//!
//! This file is pure protocol: no system calls, so loom checks it. The OS halves of each
//! notifier are in `eventfd.rs`, `semaphore.rs` and `signal.rs`.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// How a subscriber of a ring transport sleeps when it waits for messages, and what wakes it.
/// Set with [`SubscriberBuilder::notifier`](crate::SubscriberBuilder::notifier); it matters
/// only to a subscriber whose [`WaitStrategy`](super::WaitStrategy) sleeps (the default).
///
/// ```
/// use shmbus::wait::Notifier;
/// // An fd for epoll, mio or tokio's AsyncFd: `Subscriber::notify_fd`.
/// let for_epoll = Notifier::EventFd;
/// assert_ne!(for_epoll, Notifier::default());
/// assert_eq!(Notifier::default(), Notifier::Futex);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notifier {
    /// Sleep on the topic's futex word: the fastest wake-up, and the default. Nothing to
    /// register; publishers wake every futex sleeper with one system call.
    #[default]
    Futex,
    /// An eventfd of the subscriber's own, readable when a message may be ready:
    /// [`Subscriber::notify_fd`](crate::Subscriber::notify_fd) hands out a descriptor for
    /// epoll, mio or an async runtime. A publisher gets the eventfd from the subscriber over a
    /// Unix socket (`SCM_RIGHTS`, peer credentials checked) the first time it has to wake it.
    EventFd,
    /// A POSIX named semaphore of the subscriber's own (`sem_open`), posted once per sleep: a
    /// counted wake-up that works wherever named semaphores do.
    Semaphore,
    /// A real-time signal, `SIGRTMIN + offset`, queued to the thread that sleeps
    /// (`rt_tgsigqueueinfo`), with the lane's number as its value. The sleeping thread blocks
    /// the signal and takes it with `sigtimedwait` (or reads it from the signalfd that
    /// [`Subscriber::notify_fd`](crate::Subscriber::notify_fd) hands out), so it is never
    /// delivered to a handler. The signal stays blocked in the threads that slept on it.
    Signal {
        /// `0..=SIGRTMAX-SIGRTMIN` (usually 0..=30).
        offset: u8,
    },
}

/// The wire codes of [`NotifySlot::kind`]'s low byte.
pub(crate) mod code {
    pub(crate) const EVENTFD: u32 = 1;
    pub(crate) const SEMAPHORE: u32 = 2;
    pub(crate) const SIGNAL: u32 = 3;
}

impl Notifier {
    /// The slot's `kind` word for this notifier (`None`: nothing to register).
    pub(crate) fn code(self, signo: i32) -> Option<u32> {
        match self {
            Notifier::Futex => None,
            Notifier::EventFd => Some(code::EVENTFD),
            Notifier::Semaphore => Some(code::SEMAPHORE),
            Notifier::Signal { .. } => Some(code::SIGNAL | (signo as u32 & 0xff) << 8),
        }
    }
}

/// One subscriber's notifier, as it lies in the control block. All zero: none.
#[repr(C)]
#[derive(Debug, Default)]
pub struct NotifySlot {
    owner: AtomicU64,
    kind: AtomicU32,
    armed: AtomicU32,
    tid: AtomicU32,
    _reserved: AtomicU32,
}

/// What a notifier found in a slot it took a post from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The registered subscriber's identity.
    pub owner: u64,
    /// Its `kind` word (unvalidated).
    pub kind: u32,
    /// The thread it armed from (for a signal).
    pub tid: u32,
}

impl NotifySlot {
    /// A slot with no notifier (heap use and loom models; zeroed memory is the same).
    pub fn new() -> Self {
        Self::default()
    }

    /// Register `owner`'s notifier of kind `kind`, disarmed.
    pub fn register(&self, owner: u64, kind: u32) {
        self.armed.store(0, Ordering::Relaxed);
        self.kind.store(kind, Ordering::Relaxed);
        // Release: pairs with the Acquire load of `owner` in `take`: a notifier that sees this
        // owner sees its kind.
        self.owner.store(owner, Ordering::Release);
    }

    /// Remove `owner`'s registration, if it is still there.
    pub fn unregister(&self, owner: u64) {
        let _ = self
            .owner
            .compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed);
        self.armed.store(0, Ordering::Relaxed);
    }

    /// About to sleep on the notifier, from thread `tid`. Relaxed: the wait cell's `SeqCst`
    /// fence, which follows before the waiter re-checks its condition, publishes it (see the
    /// module comment).
    pub fn arm(&self, tid: u32) {
        self.tid.store(tid, Ordering::Relaxed);
        self.armed.store(1, Ordering::Relaxed);
    }

    /// Done sleeping: no post is wanted any more (one already made is drained by the waiter).
    pub fn disarm(&self) {
        self.armed.store(0, Ordering::Relaxed);
    }

    /// A notifier's side: if the slot is armed, disarm it and say whom to post to. Call after
    /// the wait cell's fence, having seen a sleeper.
    pub fn take(&self) -> Option<Taken> {
        // Acquire: pairs with nothing stronger than the fences (the waiter's stores are
        // Relaxed); the swap reads the latest `armed`, and the fences make it the waiter's.
        if self.armed.swap(0, Ordering::Acquire) == 0 {
            return None;
        }
        // Acquire: pairs with the Release store in `register`.
        let owner = self.owner.load(Ordering::Acquire);
        if owner == 0 {
            return None;
        }
        Some(Taken {
            owner,
            kind: self.kind.load(Ordering::Relaxed),
            tid: self.tid.load(Ordering::Relaxed),
        })
    }

    /// Whether anyone is registered here (discovery, tests).
    pub fn owner(&self) -> u64 {
        self.owner.load(Ordering::Relaxed)
    }
}
