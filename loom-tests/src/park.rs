//! A loom model of the futex: the [`Park`] primitive that `shmbus::wait::WaitCell` sleeps on.

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::sync::{Condvar, Mutex};
use shmbus::wait::Park;
use std::time::Instant;

/// `FUTEX_WAIT`/`FUTEX_WAKE` as a mutex and a condition variable.
///
/// The kernel compares the word and queues the sleeper under its hash-bucket lock, and the waker
/// takes the same lock, so a wake that follows the word's change cannot slip between the
/// comparison and the sleep; the mutex plays that lock. One condvar serves every word: a wake on
/// one word is then a spurious wake-up for sleepers on another, which the protocol must (and
/// does) tolerate. Deadlines are ignored: a model that needed a timeout to finish would hide a
/// lost wake-up, where a sleep with no waker left makes loom report a deadlock.
#[derive(Debug, Default)]
pub struct ModelFutex {
    lock: Mutex<()>,
    sleepers: Condvar,
}

impl ModelFutex {
    /// A futex with nobody asleep on it.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Park for ModelFutex {
    fn park(&self, word: &AtomicU32, expected: u32, _deadline: Option<Instant>) {
        let guard = self.lock.lock().unwrap();
        // SeqCst, under the lock: the kernel's read of the word. A waker that changed the word
        // and then took the lock before us is seen here (the lock orders them); one that takes
        // the lock after us finds us waiting on the condvar.
        if word.load(Ordering::SeqCst) == expected {
            // Once: a return without a change of the word is a spurious wake-up, which
            // `FUTEX_WAIT` allows and the caller handles by looking again.
            drop(self.sleepers.wait(guard).unwrap());
        }
    }

    fn wake_all(&self, _word: &AtomicU32) {
        let _guard = self.lock.lock().unwrap();
        self.sleepers.notify_all();
    }
}

/// A notifier other than the futex (an eventfd, a semaphore, a signal), as the wait protocol
/// sees it: a post that stays pending until the waiter takes it, and no compare-and-sleep.
#[derive(Debug, Default)]
pub struct ModelNotifier {
    posted: Mutex<bool>,
    woken: Condvar,
}

impl ModelNotifier {
    /// Nothing posted.
    pub fn new() -> Self {
        Self::default()
    }

    /// A publisher's post.
    pub fn post(&self) {
        *self.posted.lock().unwrap() = true;
        self.woken.notify_all();
    }

    /// Sleep until posted (no timeout: a post that never comes is a deadlock loom reports),
    /// then take the post.
    pub fn sleep(&self) {
        let mut posted = self.posted.lock().unwrap();
        while !*posted {
            posted = self.woken.wait(posted).unwrap();
        }
        *posted = false;
    }
}

/// A subscriber sleeping on its own notifier through its slot, as `shmbus` does it
/// (`SlotPark`): armed in `prepare`, before the wait cell's fence. With `ARM_EARLY = false`
/// it arms only when it is about to sleep, after the fence: the broken variant the negative
/// control runs.
#[derive(Debug)]
pub struct ArmedPark<const ARM_EARLY: bool> {
    /// The subscriber's registration.
    pub slot: std::sync::Arc<shmbus::wait::NotifySlot>,
    /// What it sleeps on.
    pub notifier: std::sync::Arc<ModelNotifier>,
}

impl<const ARM_EARLY: bool> Park for ArmedPark<ARM_EARLY> {
    fn prepare(&self) {
        if ARM_EARLY {
            self.slot.arm(1);
        }
    }
    fn park(&self, _word: &AtomicU32, _expected: u32, _deadline: Option<Instant>) {
        if !ARM_EARLY {
            self.slot.arm(1);
        }
        self.notifier.sleep();
    }
    fn wake_all(&self, _word: &AtomicU32) {
        unreachable!("a subscriber does not notify in these models");
    }
    fn finish(&self) {
        self.slot.disarm();
    }
}

/// A publisher's wake-up of armed slots, as `shmbus`'s `TopicWaker` does it (there is no
/// futex sleeper in these models).
#[derive(Debug)]
pub struct SlotPoster {
    /// The subscriber's registration.
    pub slot: std::sync::Arc<shmbus::wait::NotifySlot>,
    /// What it sleeps on.
    pub notifier: std::sync::Arc<ModelNotifier>,
}

impl Park for SlotPoster {
    fn park(&self, _word: &AtomicU32, _expected: u32, _deadline: Option<Instant>) {
        unreachable!("a publisher does not wait in these models");
    }
    fn wake_all(&self, _word: &AtomicU32) {
        if self.slot.take().is_some() {
            self.notifier.post();
        }
    }
}
