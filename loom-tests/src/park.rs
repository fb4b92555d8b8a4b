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
