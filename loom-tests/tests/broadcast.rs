//! Loom models of the broadcast ring (`shmbus::ring::broadcast`) with more than one reader, with
//! readers that join and leave while the writer runs, and under Overwrite: under Block every
//! reader receives every message from where it joined, once, in order, with its bytes (loom's
//! cells check every payload access for a race with the writer); under Overwrite a reader never
//! returns a torn or stale message, and what it lost plus what it received is exactly what was
//! published.
#![cfg(shmbus_loom)]

use loom::thread;
use shmbus::ring::broadcast::{evicting, WAITS_ASLEEP, WAITS_MAY_SLEEP};
use shmbus::wait::WaitCell;
use shmbus_loom_tests::{value_of, Mode, Ring};
use std::sync::Arc;

/// The smallest ring: every message after the second reuses a slot.
const CAPACITY: usize = 2;

/// Two readers attached from the start each receive every message of a writer that laps the
/// ring: the writer waits for the slower one. The readers share nothing but the writer, so one
/// thread drives both, in turns that loom chooses: the writer in the other thread sees their
/// heads move in every order. (Three threads that all spin exceed loom's branch budget.)
#[test]
fn two_readers_each_receive_every_message() {
    const MESSAGES: u64 = CAPACITY as u64 + 1;
    loom::model(|| {
        let ring = Ring::new(CAPACITY, 2);
        let mut a = ring.join(0, 0);
        let mut b = ring.join(1, 0);
        let mut tx = ring.writer(Mode::Block { history: 0 });
        let readers = thread::spawn(move || {
            let (mut next_a, mut next_b) = (0, 0);
            while next_a < MESSAGES || next_b < MESSAGES {
                let mut idle = true;
                if next_a < MESSAGES {
                    if let Some(message) = a.try_recv() {
                        assert_eq!(message, (next_a, value_of(next_a)));
                        next_a += 1;
                        idle = false;
                    }
                }
                if next_b < MESSAGES {
                    if let Some(message) = b.try_recv() {
                        assert_eq!(message, (next_b, value_of(next_b)));
                        next_b += 1;
                        idle = false;
                    }
                }
                if idle {
                    thread::yield_now();
                }
            }
            assert_eq!(a.try_recv(), None);
        });
        for _ in 0..MESSAGES {
            tx.send();
        }
        readers.join().unwrap();
    });
}

/// A reader joins, asking for history, while the writer publishes with no reader attached
/// (only its history holds it back). Wherever the join lands, the reader then receives a
/// gap-free run of messages up to the last one, each with its bytes: the writer never rewrites
/// a slot the joiner may read (loom's cells would report the race), and the joiner never skips
/// one.
#[test]
fn a_reader_joining_a_running_writer_gets_an_unbroken_run() {
    const MESSAGES: u64 = 3;
    loom::model(|| {
        let ring = Ring::new(CAPACITY, 1);
        let mut tx = ring.writer(Mode::Block { history: 1 });
        let writer = thread::spawn(move || {
            for _ in 0..MESSAGES {
                tx.send();
            }
        });
        let mut rx = ring.join(0, 1);
        let start = rx.reader().next_seq();
        assert!(start <= MESSAGES, "joined past the tail: {start}");
        for seq in start..MESSAGES {
            assert_eq!(rx.recv(), (seq, value_of(seq)));
        }
        writer.join().unwrap();
        assert_eq!(rx.try_recv(), None);
    });
}

/// A writer waits on a full ring for a reader that stops reading and leaves: it goes on once
/// the reader is gone, and the reader's slots are never read after it left.
#[test]
fn a_leaving_reader_frees_a_waiting_writer() {
    loom::model(|| {
        let ring = Ring::new(CAPACITY, 2);
        let mut stays = ring.join(0, 0);
        let leaves = ring.join(1, 0);
        let mut tx = ring.writer(Mode::Block { history: 0 });
        for _ in 0..CAPACITY {
            tx.send();
        }
        let reader = thread::spawn(move || {
            for seq in 0..=CAPACITY as u64 {
                assert_eq!(stays.recv(), (seq, value_of(seq)));
            }
        });
        let leaver = thread::spawn(move || leaves.leave());
        // Full for `leaves` until it has left.
        tx.send();
        leaver.join().unwrap();
        reader.join().unwrap();
    });
}

/// Overwrite: the writer laps a reader that copies as it goes. Every message the reader
/// returns is whole and in order, and at the end its losses plus what it received equal what
/// was published, exactly.
#[test]
fn an_overwritten_reader_counts_exactly_what_it_lost() {
    const MESSAGES: u64 = CAPACITY as u64 + 2;
    loom::model(|| {
        let ring = Ring::new(CAPACITY, 1);
        let mut rx = ring.join(0, 0);
        let mut tx = ring.writer(Mode::Overwrite);
        let writer = thread::spawn(move || {
            for _ in 0..MESSAGES {
                tx.overwrite();
            }
        });
        let mut received = 0;
        let mut last = None;
        while rx.reader().next_seq() < MESSAGES {
            match rx.try_copy() {
                Some((seq, value)) => {
                    assert_eq!(value, value_of(seq), "torn or stale copy of {seq}");
                    assert!(last.is_none_or(|l| seq > l), "{seq} after {last:?}");
                    last = Some(seq);
                    received += 1;
                }
                None => thread::yield_now(),
            }
        }
        writer.join().unwrap();
        assert_eq!(rx.try_copy(), None);
        assert!(!rx.reader().has_news(), "news after the last message");
        assert_eq!(received + rx.reader().lost(), MESSAGES);
        assert_eq!(last, Some(MESSAGES - 1), "the last message is never lost");
    });
}

/// Many to many, as the bus builds it: each publisher writes a lane of its own (a ring with one
/// writer), and a reader takes the lanes in turns. Two writers in two threads, one reader: every
/// message of each arrives once, in that writer's order, whatever the interleaving. (A lap per
/// writer, so that no writer waits: three threads that all spin exceed loom's branch budget,
/// and a full lane is what the one-lane models check.)
#[test]
fn two_writers_in_two_lanes_reach_one_reader_each_in_its_order() {
    const EACH: u64 = CAPACITY as u64;
    loom::model(|| {
        let lanes = [Ring::new(CAPACITY, 1), Ring::new(CAPACITY, 1)];
        let mut readers = [lanes[0].join(0, 0), lanes[1].join(0, 0)];
        let writers: Vec<_> = lanes
            .iter()
            .map(|lane| {
                let mut tx = lane.writer(Mode::Block { history: 0 });
                thread::spawn(move || {
                    for _ in 0..EACH {
                        assert!(tx.try_send(), "a lap fits");
                    }
                })
            })
            .collect();
        let mut next = [0u64; 2];
        let mut turn = 0;
        while next.iter().any(|&n| n < EACH) {
            let lane = turn;
            turn = (turn + 1) % 2;
            match readers[lane].try_recv() {
                Some(message) => {
                    assert_eq!(message, (next[lane], value_of(next[lane])), "lane {lane}");
                    next[lane] += 1;
                }
                None => thread::yield_now(),
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(readers[0].try_recv(), None);
        assert_eq!(readers[1].try_recv(), None);
    });
}

/// The identity of the lane's writer in the eviction models (any number without `EVICTING_BIT`).
const WRITER: u64 = 100;
/// A writer of the lane before `WRITER`, dead.
const DEAD_WRITER: u64 = 99;

/// A writer evicts a dead reader while a new reader takes the dead one's entry over (the bus's
/// `evict_dead` against `claim_entry`). Whatever the interleaving, exactly one of two things
/// happens: the eviction wins and the newcomer takes the freed entry, or the newcomer wins and
/// the eviction does nothing. Either way the newcomer ends registered (its head set) and owns
/// the entry: an eviction never unregisters a live reader.
#[test]
fn an_eviction_never_unregisters_the_reader_that_took_the_entry_over() {
    loom::model(|| {
        let ring = Ring::new(CAPACITY, 1);
        let dead = ring.join(0, 0); // owner 1, registered, then never heard from again
        drop(dead);
        let evictor = thread::spawn({
            let ring = ring.clone();
            move || ring.entry(0).evict(1, WRITER).is_some()
        });
        let newcomer = ring.take_over(0, 1, 2);
        let evicted = evictor.join().unwrap();
        let newcomer = newcomer.expect("the entry was the dead one's or free");
        assert_eq!(ring.entry(0).owner(), 2, "evicted: {evicted}");
        assert!(
            ring.entry(0).head().is_some(),
            "the newcomer's head was cleared (evicted: {evicted})"
        );
        drop(newcomer);
    });
}

/// A subscriber with a sleeping strategy died asleep: the topic's wait cell still counts it in
/// `may_sleep` and in `sleepers`, and its entry's marks say so. A writer evicts it while a new
/// reader takes its entry over and then counts and marks itself (the bus's `evict_dead`
/// against `claim_entry`, then the newcomer's attach and sleep). Whatever the interleaving,
/// the dead reader's counts come off exactly once, and the newcomer's never: a count taken
/// off twice would let a notifier skip the wake-up a live sleeper needs. (It fails with the
/// evictor taking the marks after it frees the entry: tried.)
#[test]
fn a_dead_sleepers_counts_come_off_once_and_a_newcomers_never() {
    loom::model(|| {
        let ring = Ring::new(CAPACITY, 1);
        let cell = Arc::new(WaitCell::new());
        let dead = ring.join(0, 0); // owner 1
        cell.raise_may_sleep();
        ring.entry(0).mark_waits(WAITS_MAY_SLEEP);
        cell.enter();
        ring.entry(0).mark_waits(WAITS_ASLEEP);
        drop(dead);
        let forget = |cell: &WaitCell, marks: u32| {
            cell.forget(marks & WAITS_ASLEEP != 0, marks & WAITS_MAY_SLEEP != 0)
        };
        let evictor = thread::spawn({
            let (ring, cell) = (ring.clone(), cell.clone());
            move || {
                if let Some(marks) = ring.entry(0).evict(1, WRITER) {
                    forget(&cell, marks);
                }
            }
        });
        let newcomer = ring
            .take_over_forgetting(0, 1, 2, |marks| forget(&cell, marks))
            .expect("the entry was the dead one's or free");
        // The newcomer attaches with a sleeping strategy and goes to sleep: each count raised,
        // then marked.
        cell.raise_may_sleep();
        ring.entry(0).mark_waits(WAITS_MAY_SLEEP);
        cell.enter();
        ring.entry(0).mark_waits(WAITS_ASLEEP);
        evictor.join().unwrap();
        assert_eq!(
            (cell.sleepers(), cell.may_sleep_count()),
            (1, 1),
            "the newcomer alone is counted"
        );
        assert_eq!(ring.entry(0).waits(), WAITS_ASLEEP | WAITS_MAY_SLEEP);
        drop(newcomer);
    });
}

/// A writer died half-way through an eviction: the entry holds its marker (and maybe the dead
/// reader's head) for good. The lane's next writer finishes that eviction while a new reader
/// takes the entry over from the marker (the bus's `evict_dead` against `claim_mirror`):
/// whatever the interleaving, the newcomer ends registered and owns the entry.
#[test]
fn an_eviction_left_by_a_dead_writer_is_finished_without_unregistering_a_newcomer() {
    loom::model(|| {
        let ring = Ring::new(CAPACITY, 1);
        let dead = ring.join(0, 0); // registered, then never heard from again
        drop(dead);
        let left = evicting(DEAD_WRITER);
        ring.entry(0).set_owner(left); // the dead writer's first store, not its second
        let next_writer = thread::spawn({
            let ring = ring.clone();
            move || ring.entry(0).evict(left, WRITER).is_some()
        });
        let newcomer = ring.take_over(0, left, 2);
        let finished = next_writer.join().unwrap();
        let newcomer = newcomer.expect("the entry was the dead writer's marker or free");
        assert_eq!(ring.entry(0).owner(), 2, "finished: {finished}");
        assert!(
            ring.entry(0).head().is_some(),
            "the newcomer's head was cleared (finished: {finished})"
        );
        drop(newcomer);
    });
}

/// A reader leaves with a slot it read not yet given back (a batch is 2), and a new reader
/// takes its entry and joins at the tail (the bus's `claim_entry` reuses a departed
/// subscriber's entry). A writer that sees the new reader's head reuses the slot the first one
/// read, so the joiner's store of its head must carry the first reader's departure to the
/// writer: with a Relaxed store it did not, and loom reported the writer's rewrite of slot 0
/// racing the first reader's read of it.
#[test]
fn a_reader_in_a_departed_readers_entry_hands_its_reads_on_to_the_writer() {
    loom::model(|| {
        let ring = Ring::batched(CAPACITY, 1, 2);
        let mut first = ring.join(0, 0);
        let mut tx = ring.writer(Mode::Block { history: 0 });
        for _ in 0..CAPACITY {
            tx.send();
        }
        let readers = thread::spawn({
            let ring = ring.clone();
            move || {
                assert_eq!(first.try_recv(), Some((0, value_of(0))));
                first.leave();
                ring.join(0, 0)
            }
        });
        // Full until the writer sees the first reader gone or the second at the tail.
        while !tx.try_send() {
            thread::yield_now();
        }
        drop(readers.join().unwrap());
    });
}
