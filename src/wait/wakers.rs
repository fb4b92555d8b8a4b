//! The notifiers' two sides as the wait protocol sees them, each a [`Park`]:
//! - [`NotifyWaiter`]: a subscriber that sleeps on its own notifier (eventfd, semaphore or
//!   signal) instead of the futex; it arms its [`NotifySlot`] before the wait cell's fence;
//! - [`TopicWaker`]: a publisher's wake-up: the futex for futex sleepers, then a post to every
//!   armed slot, through a cache of what it needs per subscriber (an eventfd received, a
//!   semaphore opened, a thread to signal), built the first time each is armed.
//!
//! Nothing here is on a hot path: a waiter gets here only to sleep, and a publisher only when
//! its wait cell says someone sleeps.

use super::eventfd::{EventFdPoster, EventFdWaiter};
use super::notifier::{code, Notifier, NotifySlot, Taken};
use super::semaphore::{SemPoster, SemWaiter};
use super::signal::{self, SignalWaiter};
use super::{Futex, Park, Parker};
use crate::sync::{AtomicU32, Ordering};
use rustix::fd::BorrowedFd;
use std::cell::RefCell;
use std::io;
use std::time::Instant;

/// A subscriber's own notifier: what it sleeps on, and the slot that tells publishers.
#[derive(Debug)]
pub(crate) struct NotifyWaiter {
    how: How,
    /// The slot's `kind` word.
    code: u32,
}

#[derive(Debug)]
enum How {
    EventFd(EventFdWaiter),
    Semaphore(SemWaiter),
    Signal(SignalWaiter),
}

impl NotifyWaiter {
    /// The OS side of `notifier` for subscriber `owner` of topic `key`; `None` for the futex.
    ///
    /// # Errors
    /// What creating the eventfd, socket, semaphore or signalfd returned; `InvalidInput` for
    /// a signal offset past `SIGRTMAX`.
    pub(crate) fn new(notifier: Notifier, key: u64, owner: u64) -> io::Result<Option<Self>> {
        let (how, signo) = match notifier {
            Notifier::Futex => return Ok(None),
            Notifier::EventFd => (How::EventFd(EventFdWaiter::new(key, owner)?), 0),
            Notifier::Semaphore => (How::Semaphore(SemWaiter::new(key, owner)?), 0),
            Notifier::Signal { offset } => {
                let signo = signal::signo(offset).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("SIGRTMIN + {offset} is past SIGRTMAX"),
                    )
                })?;
                (How::Signal(SignalWaiter::new(signo)?), signo)
            }
        };
        let code = notifier.code(signo).expect("not the futex");
        Ok(Some(Self { how, code }))
    }

    /// The slot's `kind` word for this notifier.
    pub(crate) fn code(&self) -> u32 {
        self.code
    }

    /// A descriptor for epoll: the eventfd's (an epoll over it and its rendezvous socket) or
    /// the signalfd; `None` for a semaphore.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.how {
            How::EventFd(w) => Some(w.fd()),
            How::Signal(w) => Some(w.fd()),
            How::Semaphore(_) => None,
        }
    }

    /// Arm `slot` from the calling thread (before the wait cell's fence, or before a caller
    /// polls [`NotifyWaiter::fd`]).
    pub(crate) fn arm(&self, slot: &NotifySlot) {
        if let How::Signal(w) = &self.how {
            w.block();
        }
        slot.arm(rustix::thread::gettid().as_raw_nonzero().get() as u32);
    }

    /// Sleep on the notifier until posted or `deadline`, then consume the post.
    pub(crate) fn sleep(&self, deadline: Option<Instant>) {
        super::futex::NOTIFIER_SLEEPS.fetch_add(1, Ordering::Relaxed);
        match &self.how {
            How::EventFd(w) => w.wait(deadline),
            How::Semaphore(w) => w.wait(deadline),
            How::Signal(w) => w.wait(deadline),
        }
        self.drain();
    }

    /// Consume posts that arrived (and, for the eventfd, hand it to publishers that asked).
    pub(crate) fn drain(&self) {
        match &self.how {
            How::EventFd(w) => w.drain(),
            How::Semaphore(w) => w.drain(),
            How::Signal(w) => w.drain(),
        }
    }

    /// This waiter over `slot`, as the wait protocol's [`Park`].
    pub(crate) fn park<'a>(&'a self, slot: &'a NotifySlot) -> SlotPark<'a> {
        SlotPark { waiter: self, slot }
    }
}

/// A subscriber's sleep on its own notifier.
#[derive(Debug)]
pub(crate) struct SlotPark<'a> {
    waiter: &'a NotifyWaiter,
    slot: &'a NotifySlot,
}

impl Park for SlotPark<'_> {
    fn prepare(&self) {
        self.waiter.arm(self.slot);
    }

    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        // A notifier has no compare-and-sleep: the armed slot stands in for it (a post made
        // after the fence, however early, stays pending until taken).
        let _ = (word, expected);
        self.waiter.sleep(deadline);
    }

    fn wake_all(&self, word: &AtomicU32) {
        Futex.wake_all(word);
    }

    fn finish(&self) {
        self.slot.disarm();
    }
}

/// What a publisher keeps per subscriber slot to post to it.
#[derive(Debug, Default)]
struct Poster {
    owner: u64,
    kind: u32,
    how: PosterHow,
}

#[derive(Debug, Default)]
enum PosterHow {
    #[default]
    Nothing,
    EventFd(EventFdPoster),
    Semaphore(SemPoster),
}

/// A publisher's posts to armed notifiers, for one topic.
#[derive(Debug)]
pub(crate) struct Wakers {
    key: u64,
    /// The lane's number, the value a signal carries.
    lane: u64,
    posters: Box<[Poster]>,
}

impl Wakers {
    /// For topic `key`, lane `lane`, with `slots` subscriber slots.
    pub(crate) fn new(key: u64, lane: u64, slots: usize) -> Self {
        Self {
            key,
            lane,
            posters: (0..slots).map(|_| Poster::default()).collect(),
        }
    }

    /// Post to every armed slot of `slots` (after the wait cell's fence found a sleeper).
    pub(crate) fn post_armed(&mut self, slots: &[NotifySlot]) {
        for (slot, poster) in slots.iter().zip(self.posters.iter_mut()) {
            if let Some(armed) = slot.take() {
                post(self.key, self.lane, poster, armed);
            }
        }
    }
}

#[cold]
fn post(key: u64, lane: u64, poster: &mut Poster, armed: Taken) {
    super::futex::NOTIFIER_POSTS.fetch_add(1, Ordering::Relaxed);
    if (poster.owner, poster.kind) != (armed.owner, armed.kind) {
        // Another subscriber, or another notifier: start afresh (what was cached is closed).
        *poster = Poster {
            owner: armed.owner,
            kind: armed.kind,
            how: match armed.kind & 0xff {
                code::EVENTFD => PosterHow::EventFd(EventFdPoster::default()),
                code::SEMAPHORE => PosterHow::Semaphore(SemPoster::default()),
                _ => PosterHow::Nothing,
            },
        };
    }
    match &mut poster.how {
        PosterHow::EventFd(p) => p.post(key, armed.owner),
        PosterHow::Semaphore(p) => p.post(key, armed.owner),
        PosterHow::Nothing if armed.kind & 0xff == code::SIGNAL => {
            signal::post(armed.owner, armed.tid, (armed.kind >> 8) as i32, lane)
        }
        PosterHow::Nothing => {}
    }
}

/// A publisher's wake-up of a topic's sleepers: its [`Parker`] (the futex, or a portable
/// segment's events), then the armed notifier slots.
#[derive(Debug)]
pub(crate) struct TopicWaker<'a> {
    base: &'a Parker,
    slots: &'a [NotifySlot],
    wakers: &'a RefCell<Wakers>,
}

impl<'a> TopicWaker<'a> {
    /// Over `base` (the publisher's park on the data cell) and `slots` (the topic's),
    /// posting through `wakers` (the publisher's).
    pub(crate) fn new(
        base: &'a Parker,
        slots: &'a [NotifySlot],
        wakers: &'a RefCell<Wakers>,
    ) -> Self {
        Self {
            base,
            slots,
            wakers,
        }
    }
}

impl Park for TopicWaker<'_> {
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        self.base.park(word, expected, deadline);
    }

    fn wake_all(&self, word: &AtomicU32) {
        self.base.wake_all(word);
        // A publisher is not `Sync`, and a wake-up never re-enters another.
        if let Ok(mut wakers) = self.wakers.try_borrow_mut() {
            wakers.post_armed(self.slots);
        }
    }
}

/// The key that names a topic's notifier objects: a hash of its segment's path, which every
/// process of the topic computes alike.
pub(crate) fn topic_key(path: &std::path::Path) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
