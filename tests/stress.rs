//! In-process stress tests: publishers and subscribers on threads of one process, checking what
//! each policy promises message by message (order, content, exact loss counts) while the
//! threads race; then the ring and the wait cell themselves on threads that share one mapping.
//!
//! They run in the normal suite, and under ThreadSanitizer and AddressSanitizer
//! (`.ci/sanitizers.sh`). What ThreadSanitizer can see here: it tracks memory by
//! virtual address, and every `Publisher` and `Subscriber` maps its topic's segment anew, so in
//! the bus tests it cannot relate one handle's writes to another's reads (each mapping is only
//! touched by the thread that holds the handle); there it checks the process-local state and the
//! hand-offs between threads, and the tests check the properties. The `ring_*` and `wait_*`
//! tests put the writer and the readers on one mapping (the wait cells on the heap), where it
//! sees every access to the slots and the cursors.
//!
//! In-process only: no child processes (the multi-process tests are in `tests/bus.rs`). No
//! assertion about speed: every wait has a watchdog ([`STALL`]) that fails a test that hangs.
//! Message counts scale with `SHMBUS_STRESS_SCALE` (a factor, 1 by default).

mod common;

use common::msg::{check_message, message, Msg};
use common::{unique_prefix, Cleanup};
use crossbeam_utils::CachePadded;
use progress::Progress;
use shmbus::layout::Geometry;
use shmbus::ring::broadcast::{Peek, Reader, ReaderEntry, Table, Writer, WriterWords};
use shmbus::ring::{MappedSlots, SlotStorage};
use shmbus::segment::{Access, Segment};
use shmbus::wait::{Futex, WaitCell};
use shmbus::{
    Bus, LoanError, Policy, RecvError, Subscriber, TryLoanError, TrySendError, WaitStrategy,
};
use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

/// The longest any single wait may last before the test fails as hung: a watchdog, generous
/// enough for a loaded two-core machine under ThreadSanitizer, never a speed limit.
const STALL: Duration = Duration::from_secs(60);

/// `n` scaled by `SHMBUS_STRESS_SCALE`, and never below `min` (enough laps of the ring for the
/// test to mean something).
fn scaled(n: u64, min: u64) -> u64 {
    let scale = match std::env::var("SHMBUS_STRESS_SCALE") {
        Ok(s) => s
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("SHMBUS_STRESS_SCALE={s}: {e}")),
        Err(_) => 1.0,
    };
    ((n as f64 * scale) as u64).max(min)
}

fn bus(test: &str) -> (Bus, Cleanup) {
    let prefix = unique_prefix(test);
    let cleanup = Cleanup::new(&prefix);
    (Bus::builder().prefix(&prefix).build().unwrap(), cleanup)
}

/// Wait (yielding) until `done()` holds.
///
/// # Panics
/// After [`STALL`]: the other side is stuck.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STALL;
    while !done() {
        assert!(Instant::now() < deadline, "watchdog: {what} for {STALL:?}");
        thread::yield_now();
    }
}

/// How far a test thread has got, for the others to wait on.
mod progress {
    // The shim rule (clippy.toml) keeps the library's atomics under loom; these counters are the
    // tests' own.
    #![allow(clippy::disallowed_types)]
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    pub struct Progress(AtomicU64);

    impl Progress {
        /// Release: what the thread did before is visible to a `get` that sees `n`.
        pub fn set(&self, n: u64) {
            self.0.store(n, Ordering::Release);
        }

        pub fn get(&self) -> u64 {
            self.0.load(Ordering::Acquire)
        }
    }
}

/// Receive messages `0..count` in order, each intact, then the publisher's end.
fn receive_in_order(mut subscriber: Subscriber<Msg>, count: u64) {
    let received = receive_to_the_end(&mut subscriber, &Progress::default());
    assert_eq!(received, count, "every message, then the end");
}

/// Receive messages in order from 0, each intact, until the publisher's end, setting
/// `received` after each; returns how many.
fn receive_to_the_end(subscriber: &mut Subscriber<Msg>, received: &Progress) -> u64 {
    let mut expected = 0;
    loop {
        let sample = match subscriber.recv_timeout(STALL) {
            Ok(Some(sample)) => sample,
            Ok(None) => panic!("watchdog: no message {expected} in {STALL:?}"),
            Err(RecvError::Disconnected) => return expected,
            Err(e) => panic!("message {expected}: {e}"),
        };
        if let Some(problem) = check_message(expected, sample.seq(), &sample) {
            panic!("{problem}");
        }
        drop(sample);
        expected += 1;
        received.set(expected);
    }
}

/// What an Overwrite subscriber has seen: every message it received and lost, counted from
/// where it joined.
struct Account {
    start: u64,
    received: u64,
    last: Option<u64>,
}

impl Account {
    fn new(start: u64) -> Self {
        Self {
            start,
            received: 0,
            last: None,
        }
    }

    /// Message `seq` received, with `lost` lost so far: the sequence only goes up, and what
    /// was received and lost accounts for every message before it, exactly.
    fn saw(&mut self, seq: u64, lost: u64) {
        assert!(
            self.last.is_none_or(|last| seq > last),
            "message {seq} after {:?}",
            self.last
        );
        assert_eq!(
            seq,
            self.start + self.received + lost,
            "message {seq}: {} received and {lost} lost since {}",
            self.received,
            self.start
        );
        self.received += 1;
        self.last = Some(seq);
    }
}

#[test]
fn block_three_subscribers_each_receive_every_message_in_order_and_intact() {
    let (bus, _cleanup) = bus("block");
    let count = scaled(200_000, 2_000);
    // A small ring, so that the publisher keeps finding it full and waiting.
    let mut publisher = bus.publisher::<Msg>("t").capacity(64).create().unwrap();
    // Spin then sleep, sleep at once, spin then yield.
    let waits = [
        WaitStrategy::default(),
        WaitStrategy::Futex { spin: 0 },
        WaitStrategy::SpinYield,
    ];
    let subscribers: Vec<_> = waits
        .iter()
        .map(|&w| bus.subscriber::<Msg>("t").wait(w).open().unwrap())
        .collect();
    thread::scope(|s| {
        let readers: Vec<_> = subscribers
            .into_iter()
            .map(|sub| s.spawn(move || receive_in_order(sub, count)))
            .collect();
        let writer = s.spawn(move || {
            for seq in 0..count {
                if seq % 2 == 0 {
                    publisher
                        .send_timeout(message(seq), STALL)
                        .unwrap_or_else(|_| panic!("watchdog: no slot for {seq} in {STALL:?}"));
                } else {
                    // Written in place, field by field.
                    let mut loan = publisher
                        .loan_timeout(STALL)
                        .unwrap_or_else(|e| panic!("message {seq}: {e}"));
                    assert_eq!(loan.seq(), seq);
                    let whole = message(seq);
                    loan.seq = seq;
                    loan.words = whole.words;
                    loan.check = whole.check;
                    loan.send();
                }
            }
        });
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    });
}

#[test]
fn overwrite_never_waits_and_each_subscriber_accounts_for_every_message() {
    let (bus, _cleanup) = bus("overwrite");
    let count = scaled(300_000, 5_000);
    const CAPACITY: u64 = 16;
    let mut publisher = bus
        .publisher::<Msg>("t")
        .capacity(CAPACITY)
        .policy(Policy::Overwrite)
        .create()
        .unwrap();
    let fast = bus.subscriber::<Msg>("t").open().unwrap();
    let slow = bus
        .subscriber::<Msg>("t")
        .wait(WaitStrategy::SpinYield)
        .open()
        .unwrap();
    let (sent, fast_at) = (Progress::default(), Progress::default());
    // Returns what the subscriber received and lost.
    let receive = |mut sub: Subscriber<Msg>, slow: bool| {
        let mut account = Account::new(sub.next_seq());
        loop {
            let seq = match sub.recv_timeout(STALL) {
                Ok(Some(sample)) => {
                    assert_eq!(*sample, message(sample.seq()), "torn or wrong");
                    sample.seq()
                }
                Ok(None) => panic!("watchdog: no message in {STALL:?}"),
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            };
            account.saw(seq, sub.lost());
            if !slow {
                fast_at.set(seq + 1);
            } else {
                thread::yield_now();
                // Now and then fall two laps behind, so that losses are certain.
                if account.received % 512 == 0 {
                    let target = (seq + 2 * CAPACITY).min(count);
                    wait_for("the publisher to lap", || sent.get() >= target);
                }
            }
        }
        assert_eq!(account.received + sub.lost(), count - account.start);
        (account.received, sub.lost())
    };
    let ((fast_got, _), (_, slow_lost)) = thread::scope(|s| {
        let fast = s.spawn(|| receive(fast, false));
        let slow = s.spawn(|| receive(slow, true));
        let writer = s.spawn(|| {
            for seq in 0..count {
                if seq % 2 == 0 {
                    publisher
                        .try_send(message(seq))
                        .expect("Overwrite never refuses");
                } else {
                    let mut loan = publisher.try_loan().expect("Overwrite never refuses");
                    loan.write(message(seq));
                    loan.send();
                }
                sent.set(seq + 1);
                // Never waiting, the publisher would be done before the subscribers start:
                // now and then it lets the fast one catch up, so that most of the stream is
                // read while slots are being rewritten.
                if seq % 256 == 255 {
                    let behind = seq.saturating_sub(4 * CAPACITY);
                    wait_for("the fast subscriber", || fast_at.get() >= behind);
                }
            }
            drop(publisher);
        });
        writer.join().unwrap();
        (fast.join().unwrap(), slow.join().unwrap())
    });
    assert!(slow_lost > 0, "the slow subscriber was lapped");
    println!(
        "{count} messages; the fast subscriber received {fast_got}, the slow one lost {slow_lost}"
    );
}

#[test]
fn fail_hands_every_refused_message_back_and_every_sent_one_arrives() {
    let (bus, _cleanup) = bus("fail");
    let count = scaled(100_000, 2_000);
    const CAPACITY: u64 = 32;
    let mut publisher = bus
        .publisher::<Msg>("t")
        .capacity(CAPACITY)
        .policy(Policy::Fail)
        .create()
        .unwrap();
    let subscribers = [
        bus.subscriber::<Msg>("t").open().unwrap(),
        bus.subscriber::<Msg>("t")
            .wait(WaitStrategy::SpinYield)
            .open()
            .unwrap(),
    ];
    // Nobody reads yet: the ring takes exactly its capacity, then every form refuses at once.
    for seq in 0..CAPACITY {
        publisher.try_send(message(seq)).unwrap();
    }
    let next = message(CAPACITY);
    assert_eq!(publisher.try_send(next), Err(TrySendError::Full(next)));
    assert_eq!(publisher.send(next), Err(TrySendError::Full(next)));
    assert_eq!(publisher.loan().err(), Some(LoanError::Full));
    assert_eq!(publisher.try_loan().err(), Some(TryLoanError::Full));
    let refused = thread::scope(|s| {
        let readers: Vec<_> = subscribers
            .into_iter()
            .map(|sub| s.spawn(move || receive_in_order(sub, count)))
            .collect();
        let writer = s.spawn(move || {
            let mut refused = 0u64;
            let mut seq = CAPACITY;
            let mut progress_at = Instant::now();
            while seq < count {
                match publisher.try_send(message(seq)) {
                    Ok(()) => {
                        seq += 1;
                        progress_at = Instant::now();
                    }
                    Err(TrySendError::Full(back)) => {
                        assert_eq!(back, message(seq), "handed back intact");
                        refused += 1;
                        assert!(
                            progress_at.elapsed() < STALL,
                            "watchdog: full for {STALL:?}"
                        );
                        thread::yield_now();
                    }
                    Err(e) => panic!("message {seq}: {e}"),
                }
            }
            assert_eq!(publisher.next_seq(), count, "nothing refused took a number");
            refused
        });
        let refused = writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        refused
    });
    // Every attempt either went through (each received once, in order, by both) or came back.
    println!("{count} sent, {refused} refused on the way");
}

#[test]
fn three_publishers_on_threads_reach_two_subscribers_each_in_its_order() {
    let (bus, _cleanup) = bus("lanes");
    const PUBLISHERS: u64 = 3;
    let count = scaled(60_000, 1_000);
    let first = bus
        .publisher::<Msg>("t")
        .capacity(32)
        .max_publishers(PUBLISHERS as u32)
        .create()
        .unwrap();
    let subscribers = [
        bus.subscriber::<Msg>("t").open().unwrap(),
        bus.subscriber::<Msg>("t")
            .wait(WaitStrategy::Futex { spin: 0 })
            .open()
            .unwrap(),
    ];
    // Publisher `p` sends `message(p << 40 | i)` for `i` in `0..count`: whose it is, and its
    // place in that publisher's order.
    const WHO: u32 = 40;
    let receive = |mut sub: Subscriber<Msg>| {
        // Per lane: its publisher and the next number due from it.
        let mut lanes: HashMap<usize, (u64, u64)> = HashMap::new();
        loop {
            let sample = match sub.recv_timeout(STALL) {
                Ok(Some(sample)) => sample,
                Ok(None) => panic!("watchdog: no message in {STALL:?}"),
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            };
            let got = *sample;
            assert_eq!(got, message(got.seq), "torn or wrong");
            let (who, i) = (got.seq >> WHO, got.seq & ((1 << WHO) - 1));
            let lane = lanes.entry(sample.lane()).or_insert((who, 0));
            assert_eq!(lane.0, who, "lane {} carries one publisher", sample.lane());
            assert_eq!(
                (i, sample.seq()),
                (lane.1, lane.1),
                "publisher {who}'s order"
            );
            lane.1 += 1;
        }
        let mut publishers: Vec<_> = lanes.into_values().collect();
        publishers.sort_unstable();
        let expected: Vec<_> = (0..PUBLISHERS).map(|p| (p, count)).collect();
        assert_eq!(
            publishers, expected,
            "every publisher, in a lane of its own"
        );
    };
    thread::scope(|s| {
        let readers: Vec<_> = subscribers
            .into_iter()
            .map(|sub| s.spawn(move || receive(sub)))
            .collect();
        let mut first = Some(first);
        let writers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let (bus, first) = (&bus, first.take());
                s.spawn(move || {
                    // The others attach on their own threads, racing each other for a lane.
                    let mut publisher =
                        first.unwrap_or_else(|| bus.publisher::<Msg>("t").attach().unwrap());
                    for i in 0..count {
                        publisher
                            .send_timeout(message(p << WHO | i), STALL)
                            .unwrap_or_else(|_| panic!("watchdog: publisher {p} stuck at {i}"));
                    }
                    // Handed back, not dropped: the topic closes with its last publisher, and
                    // one that finished first must not close it before the others attach.
                    publisher
                })
            })
            .collect();
        let publishers: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        drop(publishers);
        for r in readers {
            r.join().unwrap();
        }
    });
}

#[test]
fn subscribers_join_and_leave_while_the_publisher_streams_and_joiners_get_contiguous_history() {
    let (bus, _cleanup) = bus("churn");
    // The publisher streams at least `count` messages, and on until each churner has joined
    // and left `joins` times.
    let count = scaled(100_000, 2_000);
    let joins = scaled(200, 20);
    const HISTORY: u64 = 16;
    let mut publisher = bus
        .publisher::<Msg>("t")
        .capacity(64)
        .history(HISTORY)
        .create()
        .unwrap();
    let steady = bus.subscriber::<Msg>("t").open().unwrap();
    let sent = Progress::default();
    let churned = [Progress::default(), Progress::default()];
    // Churner `k`: join (asking for some history), take a few messages, leave; `joins` times.
    let churn = |k: u64| {
        for cycle in 0..joins {
            let before = sent.get();
            let history = (cycle * 7 + k) % (HISTORY + 1);
            // Mostly spinning subscribers; now and then a sleeping one raises and lowers the
            // topic's sleeper count (and pays for a `membarrier` to join, so not every time).
            let wait = if cycle % 16 == 15 {
                WaitStrategy::default()
            } else {
                WaitStrategy::SpinYield
            };
            let mut sub = bus
                .subscriber::<Msg>("t")
                .history(history)
                .wait(wait)
                .open()
                .unwrap_or_else(|e| panic!("churner {k}, join {cycle}: {e}"));
            let after = sent.get();
            let start = sub.next_seq();
            // Where it starts: no later than the stream, and no earlier than the history it
            // asked for (the publisher keeps HISTORY, the most anyone asks for).
            assert!(
                start + history >= before && start <= after + 1,
                "joined at {start} asking for {history}, between {before} and {after} sent"
            );
            // Contiguous from there, history and live messages alike.
            let take = 1 + (cycle * 13 + k * 5) % 200;
            for i in 0..take {
                let expected = start + i;
                let sample = match sub.recv_timeout(STALL) {
                    Ok(Some(sample)) => sample,
                    Ok(None) => panic!("watchdog: no message {expected} in {STALL:?}"),
                    Err(e) => panic!("churner {k}, join {cycle}, message {expected}: {e}"),
                };
                if let Some(problem) = check_message(expected, sample.seq(), &sample) {
                    panic!("churner {k}, join {cycle} at {start}: {problem}");
                }
            }
            drop(sub);
            churned[k as usize].set(cycle + 1);
        }
    };
    let total = thread::scope(|s| {
        let churners: Vec<_> = (0..2).map(|k| s.spawn(move || churn(k))).collect();
        let reader = s.spawn(move || {
            let mut steady = steady;
            receive_to_the_end(&mut steady, &Progress::default())
        });
        let writer = s.spawn(|| {
            let mut seq = 0;
            while seq < count || churned.iter().any(|c| c.get() < joins) {
                publisher
                    .send_timeout(message(seq), STALL)
                    .unwrap_or_else(|_| panic!("watchdog: no slot for {seq} in {STALL:?}"));
                seq += 1;
                sent.set(seq);
            }
            drop(publisher);
            seq
        });
        let total = writer.join().unwrap();
        for c in churners {
            c.join().unwrap();
        }
        assert_eq!(
            reader.join().unwrap(),
            total,
            "the steady subscriber got everything"
        );
        total
    });
    println!("{total} messages, {joins} joins and leaves by each of 2 churners");
}

#[test]
fn sleeping_subscribers_are_woken_for_every_burst() {
    let (bus, _cleanup) = bus("futex");
    let bursts = scaled(300, 50);
    let burst_len = |b: u64| b % 5 + 1;
    let count: u64 = (0..bursts).map(burst_len).sum();
    let mut publisher = bus.publisher::<Msg>("t").capacity(64).create().unwrap();
    // One sleeps at once, one spins first: both sleep in every pause.
    let subscribers = [WaitStrategy::Futex { spin: 0 }, WaitStrategy::default()]
        .map(|w| bus.subscriber::<Msg>("t").wait(w).open().unwrap());
    let received = [Progress::default(), Progress::default()];
    let before = shmbus::wait::stats();
    thread::scope(|s| {
        let readers: Vec<_> = subscribers
            .into_iter()
            .zip(&received)
            .map(|(mut sub, received)| {
                s.spawn(move || assert_eq!(receive_to_the_end(&mut sub, received), count))
            })
            .collect();
        let writer = s.spawn(|| {
            let mut seq = 0;
            for b in 0..bursts {
                for _ in 0..burst_len(b) {
                    publisher
                        .send_timeout(message(seq), STALL)
                        .unwrap_or_else(|_| panic!("watchdog: no slot for {seq} in {STALL:?}"));
                    seq += 1;
                }
                // Each burst is taken (the subscribers were woken for it), then a pause in
                // which they go back to sleep.
                wait_for("the subscribers to take a burst", || {
                    received.iter().all(|r| r.get() == seq)
                });
                thread::sleep(Duration::from_micros(300));
            }
            drop(publisher);
        });
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    });
    // The test exercised what it is about. The counters are the process's: run alone (as the
    // sanitizer script runs it) they count this test's sleeps and wake-ups only.
    let after = shmbus::wait::stats();
    assert!(
        after.futex_waits > before.futex_waits && after.futex_wakes > before.futex_wakes,
        "the subscribers slept and were woken: {before:?} -> {after:?}"
    );
    println!("{count} messages in {bursts} bursts: {before:?} -> {after:?}");
}

/// Largest byte message of the byte tests: not a multiple of 8, so that a slot's last word is
/// partly payload.
const BYTE_SLOT: usize = 1000;

/// Length of byte message `seq`: every length from 0 to [`BYTE_SLOT`] in turn.
fn byte_len(seq: u64) -> usize {
    (seq.wrapping_mul(7919) % (BYTE_SLOT as u64 + 1)) as usize
}

/// Byte `i` of byte message `seq`.
fn byte_at(seq: u64, i: usize) -> u8 {
    ((seq ^ (i as u64) << 32).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn fill_bytes(seq: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = byte_at(seq, i);
    }
}

/// A byte stream of every length, loaned and written in place or copied in, to a subscriber
/// that waits and one that yields after each message; each checks every byte of what it gets.
fn byte_stream(policy: Policy) {
    let (bus, _cleanup) = bus(&format!("bytes-{policy:?}"));
    let count = scaled(50_000, 1_000);
    let mut publisher = bus
        .publisher::<[u8]>("t")
        .capacity(32)
        .slot_size(BYTE_SLOT as u64)
        .policy(policy)
        .create()
        .unwrap();
    assert_eq!(
        publisher.try_send_bytes(&[0; BYTE_SLOT + 1]),
        Err(TryLoanError::TooLarge {
            len: BYTE_SLOT + 1,
            max: BYTE_SLOT
        })
    );
    let subscribers = [WaitStrategy::default(), WaitStrategy::SpinYield]
        .map(|w| bus.subscriber::<[u8]>("t").wait(w).open().unwrap());
    let receive = |mut sub: Subscriber<[u8]>, slow: bool| {
        let mut account = Account::new(sub.next_seq());
        loop {
            let seq = match sub.recv_timeout(STALL) {
                Ok(Some(sample)) => {
                    let seq = sample.seq();
                    assert_eq!(sample.len(), byte_len(seq), "message {seq}'s length");
                    if let Some(i) = (0..sample.len()).find(|&i| sample[i] != byte_at(seq, i)) {
                        panic!("message {seq}: byte {i} of {} is wrong", sample.len());
                    }
                    seq
                }
                Ok(None) => panic!("watchdog: no message in {STALL:?}"),
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            };
            account.saw(seq, sub.lost());
            if slow {
                thread::yield_now();
            }
        }
        assert_eq!(account.received + sub.lost(), count - account.start);
        if policy != Policy::Overwrite {
            assert_eq!(sub.lost(), 0);
        }
    };
    thread::scope(|s| {
        let readers: Vec<_> = subscribers
            .into_iter()
            .zip([false, true])
            .map(|(sub, slow)| s.spawn(move || receive(sub, slow)))
            .collect();
        let writer = s.spawn(move || {
            let mut buf = vec![0u8; BYTE_SLOT];
            for seq in 0..count {
                let len = byte_len(seq);
                if seq % 2 == 0 {
                    let mut loan = publisher
                        .loan_bytes(len, Some(STALL))
                        .unwrap_or_else(|e| panic!("message {seq}: {e}"));
                    fill_bytes(seq, &mut loan);
                    loan.send();
                    continue;
                }
                let bytes = &mut buf[..len];
                fill_bytes(seq, bytes);
                wait_for("a free slot", || match publisher.try_send_bytes(bytes) {
                    Ok(()) => true,
                    Err(TryLoanError::Full) => false,
                    Err(e) => panic!("message {seq}: {e}"),
                });
            }
        });
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    });
}

#[test]
fn block_byte_messages_of_every_length_arrive_byte_for_byte() {
    byte_stream(Policy::Block);
}

#[test]
fn overwrite_byte_messages_of_every_length_arrive_whole_or_are_counted_lost() {
    byte_stream(Policy::Overwrite);
}

/// Bytes of a `Msg`, as a ring's tag records them.
const MSG_LEN: u32 = size_of::<Msg>() as u32;

/// A ring whose slots lie in one mapping that every thread of a test uses, so that
/// ThreadSanitizer sees each slot's writes and reads (the writer's words and the reader table
/// are on the heap, where it sees them too). Slots of one `Msg`.
struct OneMapping {
    segment: Segment,
    geometry: Geometry,
    words: WriterWords,
    entries: Box<[CachePadded<ReaderEntry>]>,
}

impl OneMapping {
    fn new(prefix: &str, capacity: u64, readers: usize) -> Self {
        let geometry =
            Geometry::for_config(capacity, MSG_LEN.into(), align_of::<Msg>() as u64, 0, 1).unwrap();
        let name = format!("{prefix}ring");
        let segment = Segment::create(
            std::path::Path::new(shmbus::segment::SHM_DIR),
            &name,
            geometry.total_size,
            Access::Owner,
        )
        .unwrap();
        Self {
            segment,
            geometry,
            words: WriterWords::new(),
            entries: (0..readers)
                .map(|_| CachePadded::new(ReaderEntry::new()))
                .collect(),
        }
    }

    /// A view of the slots, for one side.
    fn slots(&self) -> MappedSlots {
        // SAFETY: `geometry` was computed for this segment's size: its one lane's slots lie at
        // `lane_offset(0)`, 64-aligned from the page-aligned base. `self.segment` keeps them
        // mapped for as long as the sides live (they end in the test's thread scope, `self`
        // after it).
        unsafe {
            MappedSlots::new(
                self.segment
                    .base()
                    .add(self.geometry.lane_offset(0) as usize),
                &self.geometry,
            )
        }
    }

    /// The ring's one writer.
    fn writer(&self, history: u64, overwrite: bool) -> Writer<MappedSlots> {
        // SAFETY: the entries live in `self`, which outlives the table and the writer.
        let table = unsafe { Table::new(self.entries.as_ptr(), self.entries.len()) };
        // SAFETY: `words` and `table` live in `self`, which outlives the writer; the slots are
        // this ring's; each test makes one writer; `history < capacity` in every test.
        unsafe { Writer::new(&self.words, table, self.slots(), history, overwrite) }
    }

    /// Reader `reader` (owner id `reader + 1`), starting `history` messages back.
    fn join(&self, reader: usize, history: u64) -> Reader<MappedSlots> {
        assert!(
            self.entries[reader].try_take(reader as u64 + 1),
            "entry {reader} is free"
        );
        self.join_taken(reader, history)
    }

    /// A reader in entry `index`, which the caller has just taken for it.
    fn join_taken(&self, index: usize, history: u64) -> Reader<MappedSlots> {
        // SAFETY: `words` and the entry live in `self`, which outlives the reader; the slots
        // are this ring's; the caller took the entry for this reader alone.
        unsafe { Reader::join(&self.words, &*self.entries[index], self.slots(), history) }
            .expect("a writer that scans once per lap or so lets a joiner in")
    }
}

/// Write message `seq` in place (Block), waiting for a free slot.
fn write_block(w: &mut Writer<MappedSlots>, seq: u64) {
    let mut claimed = w.try_claim();
    if claimed.is_none() {
        wait_for("a free slot", || {
            claimed = w.try_claim();
            claimed.is_some()
        });
    }
    let index = claimed.expect("claimed");
    // SAFETY: the claimed slot is the writer's until `commit` (every reader has released the
    // message it held): `MSG_LEN` bytes, aligned for `Msg`.
    unsafe { (w.storage().payload_ptr(index) as *mut Msg).write(message(seq)) };
    w.commit(MSG_LEN);
}

/// Read messages from where `r` joined up to `count`, in place, each intact; then leave.
fn read_block(mut r: Reader<MappedSlots>, owner: u64, count: u64) {
    let start = r.next_seq();
    let mut idle: Option<Instant> = None;
    while r.next_seq() < count {
        match r.peek() {
            Peek::Ready(ready) => {
                assert_eq!(ready.len, MSG_LEN);
                // SAFETY: a ready slot is this reader's to read until `release`: `MSG_LEN`
                // bytes, aligned for `Msg` (the geometry was made for it); any bytes are a
                // `Msg` (`Pod`).
                let got = unsafe { (r.storage().payload_ptr(ready.index) as *const Msg).read() };
                if let Some(problem) = check_message(r.next_seq(), ready.seq, &got) {
                    panic!("reader {owner}, joined at {start}: {problem}");
                }
                r.release();
                idle = None;
            }
            Peek::Empty => {
                r.flush();
                let since = *idle.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < STALL,
                    "watchdog: no message {} in {STALL:?}",
                    r.next_seq()
                );
                thread::yield_now();
            }
            bad => panic!("reader {owner}: {bad:?}"),
        }
    }
    r.leave_entry(owner);
}

#[test]
fn ring_block_readers_on_the_writers_mapping_read_every_slot_intact() {
    let prefix = unique_prefix("ring-block");
    let _cleanup = Cleanup::new(&prefix);
    const CAPACITY: u64 = 32;
    const HISTORY: u64 = 8;
    const READERS: usize = 3;
    let count = scaled(200_000, 2_000);
    let ring = OneMapping::new(&prefix, CAPACITY, READERS);
    let first = ring.join(0, 0);
    thread::scope(|s| {
        let ring = &ring;
        let mut readers = vec![s.spawn(move || read_block(first, 1, count))];
        for k in 1..READERS {
            readers.push(s.spawn(move || {
                // Join while the writer runs: the lock-free join against its scans.
                let at = count * k as u64 / 4;
                wait_for("the writer to get going", || ring.words.tail() >= at);
                read_block(ring.join(k, HISTORY), k as u64 + 1, count);
            }));
        }
        let writer = s.spawn(move || {
            let mut w = ring.writer(HISTORY, false);
            for seq in 0..count {
                write_block(&mut w, seq);
            }
        });
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
    });
}

#[test]
fn ring_block_readers_join_and_leave_on_the_writers_mapping_and_read_contiguous_history() {
    let prefix = unique_prefix("ring-churn");
    let _cleanup = Cleanup::new(&prefix);
    const CAPACITY: u64 = 32;
    const HISTORY: u64 = 8;
    // Two churners share two entries, so that each often takes the one the other just left.
    const CHURNERS: usize = 2;
    let joins = scaled(2_000, 200);
    let ring = OneMapping::new(&prefix, CAPACITY, CHURNERS);
    let churned: [Progress; CHURNERS] = Default::default();
    // Churner `k`: take a free entry, join asking for some history, read a few messages in
    // place, leave; `joins` times.
    let churn = |k: usize| {
        let owner = 100 + k as u64;
        for cycle in 0..joins {
            let mut index = None;
            wait_for("a free entry", || {
                index = (0..CHURNERS).find(|&i| ring.entries[i].try_take(owner));
                index.is_some()
            });
            let history = (cycle * 7 + k as u64) % (HISTORY + 1);
            let mut r = ring.join_taken(index.expect("taken"), history);
            let start = r.next_seq();
            let take = 1 + (cycle * 13 + k as u64 * 5) % 64;
            for i in 0..take {
                let expected = start + i;
                let mut ready = None;
                wait_for("a message", || match r.peek() {
                    Peek::Ready(found) => {
                        ready = Some(found);
                        true
                    }
                    Peek::Empty => false,
                    bad => panic!("churner {k}: {bad:?}"),
                });
                let ready = ready.expect("ready");
                // SAFETY: as in `read_block`.
                let got = unsafe { (r.storage().payload_ptr(ready.index) as *const Msg).read() };
                if let Some(problem) = check_message(expected, ready.seq, &got) {
                    panic!("churner {k}, join {cycle} at {start}: {problem}");
                }
                r.release();
            }
            r.leave_entry(owner);
            churned[k].set(cycle + 1);
        }
    };
    let written = thread::scope(|s| {
        let churners: Vec<_> = (0..CHURNERS).map(|k| s.spawn(move || churn(k))).collect();
        let writer = s.spawn(|| {
            let mut w = ring.writer(HISTORY, false);
            let mut seq = 0;
            while churned.iter().any(|c| c.get() < joins) {
                write_block(&mut w, seq);
                seq += 1;
            }
            seq
        });
        let written = writer.join().unwrap();
        for c in churners {
            c.join().unwrap();
        }
        written
    });
    println!("{written} messages, {joins} joins and leaves by each of {CHURNERS} readers");
}

/// Copy messages out from where `r` joined up to `count`, each whole, accounting for every
/// one, setting `at` after each; a slow reader falls two laps behind every 512 messages.
/// Returns what it lost.
fn read_overwrite(
    mut r: Reader<MappedSlots>,
    count: u64,
    slow: bool,
    words: &WriterWords,
    at: &Progress,
) -> u64 {
    let mut account = Account::new(r.next_seq());
    let mut copy = [0u64; MSG_LEN as usize / 8];
    let mut idle: Option<Instant> = None;
    while r.next_seq() < count {
        match r.read_copy(&mut copy) {
            Peek::Ready(ready) => {
                assert_eq!(ready.len, MSG_LEN);
                let got: Msg = shmbus::bytemuck::cast(copy);
                if let Some(problem) = check_message(ready.seq, ready.seq, &got) {
                    panic!("{problem}");
                }
                account.saw(ready.seq, r.lost());
                at.set(ready.seq + 1);
                idle = None;
                if slow && account.received % 512 == 0 {
                    let target = (ready.seq + 2 * r.storage().capacity()).min(count);
                    wait_for("the writer to lap", || words.tail() >= target);
                }
            }
            Peek::Empty => {
                let since = *idle.get_or_insert_with(Instant::now);
                assert!(
                    since.elapsed() < STALL,
                    "watchdog: nothing new in {STALL:?}"
                );
                thread::yield_now();
            }
            bad => panic!("{bad:?}"),
        }
    }
    assert_eq!(account.received + r.lost(), count - account.start);
    r.lost()
}

#[test]
fn ring_overwrite_readers_on_the_writers_mapping_copy_whole_messages_and_count_losses() {
    let prefix = unique_prefix("ring-overwrite");
    let _cleanup = Cleanup::new(&prefix);
    const CAPACITY: u64 = 16;
    let count = scaled(300_000, 5_000);
    let ring = OneMapping::new(&prefix, CAPACITY, 2);
    let (fast, slow) = (ring.join(0, 0), ring.join(1, 0));
    let fast_at = Progress::default();
    let slow_lost = thread::scope(|s| {
        let words = &ring.words;
        let fast = s.spawn(|| read_overwrite(fast, count, false, words, &fast_at));
        let slow = s.spawn(|| read_overwrite(slow, count, true, words, &Progress::default()));
        let writer = s.spawn(|| {
            let mut w = ring.writer(0, true);
            for seq in 0..count {
                let words: [u64; MSG_LEN as usize / 8] = shmbus::bytemuck::cast(message(seq));
                w.publish_words(&words, MSG_LEN);
                // As in the bus test: let the fast reader catch up now and then, so that it
                // copies slots while they are being rewritten.
                if seq % 256 == 255 {
                    let behind = seq.saturating_sub(4 * CAPACITY);
                    wait_for("the fast reader", || fast_at.get() >= behind);
                }
            }
        });
        writer.join().unwrap();
        fast.join().unwrap();
        slow.join().unwrap()
    });
    assert!(slow_lost > 0, "the slow reader was lapped");
    println!("{count} messages; the slow reader lost {slow_lost}");
}

#[test]
fn wait_cells_never_lose_a_wake_up_between_two_sleepers() {
    // Ping-pong over two cells, both sides sleeping at once: a lost wake-up leaves a side asleep
    // until its watchdog (the cell's own wait has no liveness slices to hide it).
    let rounds = scaled(5_000, 300);
    let (ping, pong) = (WaitCell::new(), WaitCell::new());
    // Raised before the threads start, which orders it before every notify (what the
    // `membarrier` at attach does between processes).
    ping.raise_may_sleep();
    pong.raise_may_sleep();
    let (sent, acked) = (Progress::default(), Progress::default());
    thread::scope(|s| {
        let ponger = s.spawn(|| {
            for i in 1..=rounds {
                let woken = ping.wait(&Futex, Some(Instant::now() + STALL), || sent.get() >= i);
                assert!(woken, "lost wake-up: ping {i} not seen in {STALL:?}");
                acked.set(i);
                pong.notify(&Futex);
            }
        });
        let pinger = s.spawn(|| {
            for i in 1..=rounds {
                sent.set(i);
                ping.notify(&Futex);
                let woken = pong.wait(&Futex, Some(Instant::now() + STALL), || acked.get() >= i);
                assert!(woken, "lost wake-up: pong {i} not seen in {STALL:?}");
            }
        });
        pinger.join().unwrap();
        ponger.join().unwrap();
    });
}
