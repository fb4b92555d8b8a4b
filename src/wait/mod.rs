//! How a reader or a writer waits for the other side, and how it is woken.
//!
//! Three strategies ([`WaitStrategy`]): spin, spin-then-yield, and an adaptive futex wait that
//! spins a little and then sleeps. The sleeping protocol ([`WaitCell`], in `notify.rs`) is
//! written over a tiny "park on a 32-bit word / wake it" primitive ([`Park`]), so that the loom
//! models in `loom-tests/` can check it for lost wake-ups with a model of that primitive, while
//! production uses the Linux futex (`futex.rs`), or with the feature `portable` and a portable
//! segment, `raw_sync` events in the segment (`events.rs`).
//!
//! This layer never touches a slot or a cursor: callers pass in the condition they wait for.

mod notifier;
mod notify;
pub use notifier::{Notifier, NotifySlot, Taken};
pub use notify::WaitCell;

#[cfg(not(shmbus_loom))]
mod eventfd;
#[cfg(not(shmbus_loom))]
mod semaphore;
#[cfg(not(shmbus_loom))]
mod signal;
#[cfg(not(shmbus_loom))]
mod wakers;
#[cfg(not(shmbus_loom))]
pub(crate) use wakers::{topic_key, NotifyWaiter, TopicWaker, Wakers};

#[cfg(not(shmbus_loom))]
mod futex;
#[cfg(not(shmbus_loom))]
pub(crate) use futex::{announce_sleeper, wait_until};
#[cfg(not(shmbus_loom))]
pub use futex::{stats, Futex, WaitStats};

#[cfg(all(feature = "portable", not(shmbus_loom)))]
pub mod events;

/// The [`Park`] a party uses on one wait cell of its topic, chosen when it attaches: the
/// futex for a native segment, the segment's events for a portable one. The choice is made
/// on the wake path only ([`WaitCell::notify`] reaches its `Park` only once a sleeper is
/// seen), so the polling path of a native topic is the same as with [`Futex`] itself.
#[cfg(not(shmbus_loom))]
#[derive(Debug)]
pub(crate) enum Parker {
    /// A futex on the cell's word.
    Futex,
    /// `raw_sync` events in the segment's trailer (feature `portable`).
    #[cfg(feature = "portable")]
    Events(events::EventPark),
}

#[cfg(not(shmbus_loom))]
impl Park for Parker {
    #[inline]
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        match self {
            Parker::Futex => Futex.park(word, expected, deadline),
            #[cfg(feature = "portable")]
            Parker::Events(e) => e.park(word, expected, deadline),
        }
    }

    #[inline]
    fn wake_all(&self, word: &AtomicU32) {
        match self {
            Parker::Futex => Futex.wake_all(word),
            #[cfg(feature = "portable")]
            Parker::Events(e) => e.wake_all(word),
        }
    }
}

use crate::sync::AtomicU32;
use std::time::Instant;

/// Sleep on a 32-bit word in shared memory, and wake its sleepers: the one primitive the wait
/// protocol needs. Implemented by [`Futex`] in production and by a mutex-and-condvar model
/// under loom.
pub trait Park {
    /// Sleep while `*word == expected`, until woken by [`Park::wake_all`] or until `deadline`.
    /// The comparison and the sleep are one atomic step with respect to `wake_all` (as for
    /// `FUTEX_WAIT`). May return spuriously; the caller re-checks its condition.
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>);
    /// Wake every sleeper parked on `word`.
    fn wake_all(&self, word: &AtomicU32);
    /// Called by a waiter before it announces itself (raises `sleepers`) and issues the
    /// protocol's fence: where a notifier that is not a futex arms its registration. Nothing
    /// by default.
    fn prepare(&self) {}
    /// Called by a waiter once it stops waiting (woken, timed out, or ready at its re-check).
    /// Nothing by default.
    fn finish(&self) {}
    /// Called by a waiter right after it raised `sleepers` (`true`) and right before it lowers
    /// it (`false`): where a party records, in memory that outlives it, that it is counted, so
    /// that whoever finds it dead can take it off (a subscriber's entry: see
    /// `ring::broadcast::ReaderEntry::waits`). Nothing by default.
    fn counted(&self, _asleep: bool) {}
}

/// How a blocking call waits for the other side.
///
/// Every handle is created with one; `try_*` calls never wait, whatever it says.
///
/// ```
/// use shmbus::WaitStrategy;
/// // An audio thread or a dedicated core: never sleep, never make a syscall.
/// let polling = WaitStrategy::Spin;
/// // A normal thread: spin ~ten microseconds, then sleep on a futex.
/// let blocking = WaitStrategy::default();
/// assert_eq!(blocking, WaitStrategy::Futex { spin: WaitStrategy::DEFAULT_SPIN });
/// # let _ = polling;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Busy-spin with a spin hint. Lowest latency; burns a core; no syscall while messages
    /// flow. (A wait that finds nothing for 10 ms checks that the other side is alive, a few
    /// syscalls, then again at doubling intervals up to 640 ms; `try_*` calls never do.) A
    /// publisher whose subscribers all spin never pays for wake-ups.
    Spin,
    /// Spin a little, then `sched_yield` between checks: for oversubscribed machines.
    SpinYield,
    /// Adaptive: check `spin` times with a spin hint, then sleep on a futex until woken.
    /// The other side makes the wake syscall only while someone sleeps.
    Futex {
        /// How many times to check before sleeping (0: sleep at once).
        spin: u32,
    },
}

impl WaitStrategy {
    /// Checks before sleeping in the default strategy: 10-20 µs on current x86 (a `pause` costs
    /// 20-35 ns on the AMD EPYC VM this was tuned on), about the cost of a futex wake-up.
    pub const DEFAULT_SPIN: u32 = 512;

    /// Whether a party with this strategy may sleep (and so needs the other side's wake-ups).
    pub fn may_sleep(&self) -> bool {
        matches!(self, WaitStrategy::Futex { .. })
    }
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::Futex {
            spin: Self::DEFAULT_SPIN,
        }
    }
}

/// A duration as the kernel's timespec (for poll, epoll and the like).
#[cfg(not(shmbus_loom))]
pub(crate) fn timespec(d: std::time::Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as i64,
    }
}
