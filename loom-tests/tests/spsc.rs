//! Loom models of the ring with one reader (`shmbus::ring::broadcast`, the SPSC case): every
//! message arrives once, in order,
//! with its bytes, and no slot is read while written or written while read (loom's cells check
//! that on every payload access). The full and empty edges have models of their own.
#![cfg(shmbus_loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use shmbus::ring::SlotStorage;
use shmbus_loom_tests::{ring, ring_batched, value_of};
use std::sync::Arc;

/// The smallest ring: every message after the second reuses a slot.
const SMALL_CAPACITY: usize = 2;
/// A ring with room to run ahead: 4 under loom, as the model explodes past that.
const CAPACITY: usize = 4;
/// Messages past the capacity in a transfer: enough to wrap, so that slots are reused while the
/// other side may still be near them.
const PAST_CAPACITY: u64 = 2;

/// A producer thread sends `capacity + PAST_CAPACITY` messages, yielding while the ring is
/// full; the consumer (the model's main thread) receives them, yielding while it is empty.
fn transfer(capacity: usize) {
    transfer_with(capacity, 1);
}

/// The same, with the consumer giving slots back `batch` at a time (and all of them when it
/// finds the ring empty): no slot is reused before a release covers it. (Liveness never
/// depends on the flush: a consumer waiting for message k has released all but `batch - 1`
/// slots, so with `batch <= capacity` the producer can always write k.)
fn transfer_with(capacity: usize, batch: u64) {
    let messages = capacity as u64 + PAST_CAPACITY;
    loom::model(move || {
        let (mut tx, mut rx) = if batch == 1 {
            ring(capacity)
        } else {
            ring_batched(capacity, batch)
        };
        let producer = thread::spawn(move || {
            for _ in 0..messages {
                tx.send();
            }
        });
        for seq in 0..messages {
            assert_eq!(rx.recv(), (seq, value_of(seq)));
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv(), None, "a message past the last one sent");
    });
}

/// Runs on both sides (`Writer::write_run`, `Reader::read_run`: the batches of
/// `Publisher::send_many` and `Subscriber::recv_many`): a writer that writes up to 2 at a time
/// into a ring of 2 and a reader that reads up to 2 at a time, giving slots back 2 at a time;
/// every message arrives once, in order, with its value (loom's cells check that no slot is
/// rewritten while the reader is in it).
#[test]
fn runs_deliver_every_message_once_in_order() {
    const MESSAGES: u64 = SMALL_CAPACITY as u64 + PAST_CAPACITY;
    loom::model(|| {
        let (mut tx, mut rx) = ring_batched(SMALL_CAPACITY, 2);
        let producer = thread::spawn(move || {
            let mut sent = 0;
            while sent < MESSAGES {
                let n = tx.try_send_run((MESSAGES - sent).min(2) as usize) as u64;
                if n == 0 {
                    thread::yield_now();
                }
                sent += n;
            }
        });
        let mut got = Vec::new();
        while (got.len() as u64) < MESSAGES {
            if rx.try_recv_run(2, &mut got) == 0 {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
        let expected: Vec<_> = (0..MESSAGES).map(|seq| (seq, value_of(seq))).collect();
        assert_eq!(got, expected);
        assert_eq!(rx.try_recv(), None, "a message past the last one sent");
    });
}

#[test]
fn every_message_arrives_once_in_order_capacity_2() {
    transfer(SMALL_CAPACITY);
}

#[test]
fn every_message_arrives_once_in_order_capacity_4() {
    transfer(CAPACITY);
}

/// Batched release, as in a mapped ring: 2 slots at a time in a ring of 4.
const RELEASE_BATCH: u64 = 2;

#[test]
fn every_message_arrives_once_in_order_with_batched_release() {
    transfer_with(CAPACITY, RELEASE_BATCH);
}

/// A full ring refuses a claim until the consumer releases the oldest slot; once the release
/// is known to the producer the claim succeeds, and it is the released slot. Writing into it
/// while the consumer still read it would fail loom's cell check.
#[test]
fn a_full_ring_refuses_claims_until_the_consumer_releases() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(SMALL_CAPACITY);
        for _ in 0..SMALL_CAPACITY {
            assert!(tx.try_send());
        }
        assert_eq!(tx.writer().try_claim(), None, "claimed past capacity");
        assert!(!tx.has_space());

        let released = Arc::new(AtomicBool::new(false));
        let consumer = thread::spawn({
            let released = released.clone();
            move || {
                assert_eq!(rx.recv(), (0, value_of(0)));
                // Release: pairs with the producer's Acquire load below; orders `release`'s
                // store of `head` before the flag.
                released.store(true, Ordering::Release);
                rx
            }
        });

        loop {
            // Acquire: pairs with the consumer's Release store of the flag, after its release.
            let after_release = released.load(Ordering::Acquire);
            match tx.writer().try_claim() {
                Some(index) => {
                    assert_eq!(index, 0, "the freed slot is the oldest");
                    break;
                }
                None => {
                    assert!(!after_release, "slot released, yet the claim was refused");
                    thread::yield_now();
                }
            }
        }
        assert!(tx.try_send(), "the claimed slot stays claimable");
        assert_eq!(tx.writer().try_claim(), None, "full again");

        let mut rx = consumer.join().unwrap();
        for seq in 1..=SMALL_CAPACITY as u64 {
            assert_eq!(rx.try_recv(), Some((seq, value_of(seq))));
        }
        assert_eq!(rx.try_recv(), None);
    });
}

/// An empty ring shows nothing until the producer's commit, and then the message with its
/// bytes. It runs after a full lap, so every slot holds the previous lap's stamp: a stale slot
/// must not read as the next message.
#[test]
fn an_empty_ring_shows_nothing_until_the_commit() {
    loom::model(|| {
        let (mut tx, mut rx) = ring(SMALL_CAPACITY);
        for _ in 0..SMALL_CAPACITY {
            assert!(tx.try_send());
        }
        for seq in 0..SMALL_CAPACITY as u64 {
            assert_eq!(rx.try_recv(), Some((seq, value_of(seq))));
        }
        assert_eq!(rx.try_recv(), None, "the previous lap read as new");
        assert!(!rx.has_message());

        let sent = Arc::new(AtomicBool::new(false));
        let producer = thread::spawn({
            let sent = sent.clone();
            move || {
                assert!(tx.try_send(), "an empty ring has room");
                // Release: pairs with the consumer's Acquire load below; orders the commit's
                // stamp store before the flag.
                sent.store(true, Ordering::Release);
            }
        });

        let next = SMALL_CAPACITY as u64;
        loop {
            // Acquire: pairs with the producer's Release store of the flag, after its commit.
            let after_commit = sent.load(Ordering::Acquire);
            match rx.try_recv() {
                Some(message) => {
                    assert_eq!(message, (next, value_of(next)));
                    break;
                }
                None => {
                    assert!(
                        !after_commit,
                        "message committed, yet the ring looked empty"
                    );
                    thread::yield_now();
                }
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.try_recv(), None);
    });
}

/// Negative control: a consumer that reads a slot without first seeing its stamp races the
/// producer's write, and loom's cell tracking must say so. If the heap slots ever stopped
/// going through loom's cells, the models above would pass without checking any race; this
/// one would then fail.
#[test]
#[should_panic(expected = "Causality violation")]
fn control_a_read_that_skips_the_stamp_is_caught() {
    loom::model(|| {
        let (mut tx, rx) = ring(SMALL_CAPACITY);
        let producer = thread::spawn(move || assert!(tx.try_send()));
        // Slot 0, read with no `peek`: nothing orders it after the producer's write.
        rx.storage().with_payload(0, |payload| {
            // SAFETY: a heap slot's payload is one 8-aligned `u64`, initialised to zero; the
            // race with the producer's write is what this model expects loom to report.
            unsafe { (payload as *const u64).read() }
        });
        producer.join().unwrap();
    });
}
