//! Loom models of the wait/wake protocol (`shmbus::wait::WaitCell`) over the SPSC ring: no
//! wake-up is lost. The waiter sleeps on [`ModelFutex`] with no timeout, so if a notifier ever
//! missed it, every thread would end blocked and loom would fail the model with a deadlock.
//! The negative controls at the end show that the checker does report one when the protocol is
//! broken.
#![cfg(shmbus_loom)]

use loom::sync::atomic::{fence, AtomicU32, Ordering};
use loom::thread;
use shmbus::wait::{Park, WaitCell};
use shmbus_loom_tests::{ring, value_of, ModelFutex};
use std::sync::Arc;

/// The smallest ring: the producer finds it full after two messages.
const CAPACITY: usize = 2;
/// Messages a waiter waits for: two, so that it waits again after a wake-up (the epoch it sleeps
/// on has moved since the first wait).
const MESSAGES: u64 = 2;

/// A wait cell as a party with a sleeping strategy leaves it at attach.
///
/// Production raises `may_sleep` and then issues a process-wide `membarrier`, so that every
/// notifier sees the raise before the party's first sleep (or had its earlier progress made
/// visible by the barrier). Loom cannot model `membarrier`; raising the flag here, before the
/// model's threads are spawned, orders it before everything they do, which is the state the
/// barrier establishes. The notifiers thus always take the fenced path, the one under test.
fn sleepy_cell() -> Arc<WaitCell> {
    let cell = WaitCell::new();
    cell.raise_may_sleep();
    Arc::new(cell)
}

/// A consumer waits for data (`peek` not empty) before each receive; the producer commits each
/// message and then notifies.
#[test]
fn a_consumer_waiting_for_data_is_woken() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(CAPACITY);
        let data = sleepy_cell();
        let futex = Arc::new(ModelFutex::new());
        let consumer = thread::spawn({
            let (data, futex) = (data.clone(), futex.clone());
            move || {
                for seq in 0..MESSAGES {
                    assert!(data.wait(&*futex, None, || rx.has_message()));
                    assert_eq!(rx.try_recv(), Some((seq, value_of(seq))));
                }
            }
        });
        for _ in 0..MESSAGES {
            assert!(tx.try_send(), "the consumer keeps up with a ring this size");
            data.notify(&*futex);
        }
        consumer.join().unwrap();
    });
}

/// The producer finds the ring full and waits for space before each send; the consumer releases
/// a slot and then notifies.
#[test]
fn a_producer_waiting_for_space_is_woken() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(CAPACITY);
        for _ in 0..CAPACITY {
            assert!(tx.try_send());
        }
        let space = sleepy_cell();
        let futex = Arc::new(ModelFutex::new());
        let producer = thread::spawn({
            let (space, futex) = (space.clone(), futex.clone());
            move || {
                for _ in 0..MESSAGES {
                    assert!(space.wait(&*futex, None, || tx.has_space()));
                    assert!(tx.try_send(), "space seen, yet the send was refused");
                }
            }
        });
        for seq in 0..MESSAGES {
            assert_eq!(rx.try_recv(), Some((seq, value_of(seq))));
            space.notify(&*futex);
        }
        producer.join().unwrap();
        for seq in MESSAGES..MESSAGES + CAPACITY as u64 {
            assert_eq!(rx.try_recv(), Some((seq, value_of(seq))));
        }
        assert_eq!(rx.try_recv(), None);
    });
}

/// Messages in the model where both sides block: capacity plus two, so that the producer finds
/// the ring full and the consumer finds it empty, each at least once in some interleavings.
const BLOCKING_MESSAGES: u64 = CAPACITY as u64 + 2;

/// Blocking send and receive together, as the bus runs them: each side waits on its own cell
/// (data, space) and notifies the other's after its progress. Neither may be left asleep.
#[test]
fn blocking_send_and_recv_wake_each_other() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(CAPACITY);
        let data = sleepy_cell();
        let space = sleepy_cell();
        let futex = Arc::new(ModelFutex::new());
        let consumer = thread::spawn({
            let (data, space, futex) = (data.clone(), space.clone(), futex.clone());
            move || {
                for seq in 0..BLOCKING_MESSAGES {
                    assert!(data.wait(&*futex, None, || rx.has_message()));
                    assert_eq!(rx.try_recv(), Some((seq, value_of(seq))));
                    space.notify(&*futex);
                }
            }
        });
        for _ in 0..BLOCKING_MESSAGES {
            assert!(space.wait(&*futex, None, || tx.has_space()));
            assert!(tx.try_send(), "space seen, yet the send was refused");
            data.notify(&*futex);
        }
        consumer.join().unwrap();
    });
}

// Negative controls: the same models with the notifier broken must fail, or a passing model
// above would prove nothing.

/// Without a `notify`, the consumer that went to sleep before the message is never woken.
/// Shows that the futex model blocks for real and that loom reports the stuck waiter.
#[test]
#[should_panic(expected = "deadlock")]
fn control_a_missing_notify_is_caught() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(CAPACITY);
        let data = sleepy_cell();
        let futex = Arc::new(ModelFutex::new());
        let consumer = thread::spawn({
            let (data, futex) = (data.clone(), futex.clone());
            move || {
                assert!(data.wait(&*futex, None, || rx.has_message()));
                assert_eq!(rx.try_recv(), Some((0, value_of(0))));
            }
        });
        assert!(tx.try_send());
        // No `data.notify(&*futex)`.
        consumer.join().unwrap();
    });
}

/// A copy of `WaitCell`'s sleeping path (`wait` and `notify_sleepy`, with `may_sleep` taken
/// as raised), whose notifier may leave out its `SeqCst` fence. With the fence it is the
/// library's protocol and must pass; without it, the notifier's load of `sleepers` may miss a
/// waiter whose re-check missed the message (store buffering), and the waiter sleeps forever.
/// Keep it in step with `src/wait/notify.rs`.
struct CopiedCell<const NOTIFIER_FENCE: bool> {
    epoch: AtomicU32,
    sleepers: AtomicU32,
}

impl<const NOTIFIER_FENCE: bool> CopiedCell<NOTIFIER_FENCE> {
    fn new() -> Self {
        Self {
            epoch: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        }
    }

    fn notify(&self, park: &impl Park) {
        if NOTIFIER_FENCE {
            fence(Ordering::SeqCst);
        }
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.epoch.fetch_add(1, Ordering::Release);
            park.wake_all(&self.epoch);
        }
    }

    fn wait(&self, park: &impl Park, mut ready: impl FnMut() -> bool) {
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            self.sleepers.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if ready() {
                self.sleepers.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            park.park(&self.epoch, epoch, None);
            self.sleepers.fetch_sub(1, Ordering::Relaxed);
            if ready() {
                return;
            }
        }
    }
}

/// One message from a producer that notifies through `CopiedCell<NOTIFIER_FENCE>` to a
/// consumer that waits on it.
fn copied_protocol<const NOTIFIER_FENCE: bool>() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(CAPACITY);
        let data = Arc::new(CopiedCell::<NOTIFIER_FENCE>::new());
        let futex = Arc::new(ModelFutex::new());
        let consumer = thread::spawn({
            let (data, futex) = (data.clone(), futex.clone());
            move || {
                data.wait(&*futex, || rx.has_message());
                assert_eq!(rx.try_recv(), Some((0, value_of(0))));
            }
        });
        assert!(tx.try_send());
        data.notify(&*futex);
        consumer.join().unwrap();
    });
}

/// The copy with its fence passes: the control below differs from it by the fence alone.
#[test]
fn control_the_copied_protocol_passes_with_its_fence() {
    copied_protocol::<true>();
}

/// Without the notifier's fence, loom finds the lost wake-up.
#[test]
#[should_panic(expected = "deadlock")]
fn control_a_notifier_without_its_fence_is_caught() {
    copied_protocol::<false>();
}

// Notifiers other than the futex (`src/wait/notifier.rs`): the subscriber arms its slot before
// the wait cell's fence; the publisher's wake-up posts to the armed slots.

/// A subscriber that sleeps on its own notifier (`MESSAGES` times, so that it re-arms after a
/// post) is posted to for every message it waits for.
#[test]
fn a_consumer_sleeping_on_an_armed_notifier_is_posted_to() {
    armed_protocol::<true>();
}

/// Arming after the fence (only when about to sleep) loses the post: loom finds the sleeper
/// left waiting. The model above differs from this one by where it arms, alone.
#[test]
#[should_panic(expected = "deadlock")]
fn control_arming_after_the_fence_is_caught() {
    armed_protocol::<false>();
}

fn armed_protocol<const ARM_EARLY: bool>() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(CAPACITY);
        let data = sleepy_cell();
        let slot = Arc::new(shmbus::wait::NotifySlot::new());
        slot.register(7, 1);
        let notifier = Arc::new(shmbus_loom_tests::ModelNotifier::new());
        let park = shmbus_loom_tests::ArmedPark::<ARM_EARLY> {
            slot: slot.clone(),
            notifier: notifier.clone(),
        };
        let poster = shmbus_loom_tests::SlotPoster { slot, notifier };
        let consumer = thread::spawn({
            let data = data.clone();
            move || {
                for seq in 0..MESSAGES {
                    assert!(data.wait(&park, None, || rx.has_message()));
                    assert_eq!(rx.try_recv(), Some((seq, value_of(seq))));
                }
            }
        });
        for _ in 0..MESSAGES {
            assert!(tx.try_send(), "the consumer keeps up with a ring this size");
            data.notify(&poster);
        }
        consumer.join().unwrap();
    });
}
