//! Messages between two processes: at least a million each way, none lost, duplicated,
//! reordered or torn; and the end of a topic seen from the other process.
//!
//! The other process is this test binary re-executed (see `common`). Every message carries its
//! sequence number, several words derived from it and a checksum of them, so that a torn read
//! (words from two different messages) shows as a bad checksum or a wrong word; the receiving
//! side checks every message and reports its count and its errors.

mod common;

use common::msg::{check_message, message, Msg};
use common::{arg, arg_u64, child_bus, exit_child, lock, say, ChildProc, Cleanup, CHILD_STALL};
use shmbus::{Bus, RecvError, Sample, Subscriber, WaitStrategy};
use std::sync::Mutex;
use std::time::Duration;

/// Messages per stream test. The brief asks for at least a million; in a debug build they take
/// a few seconds more, which is still acceptable.
const MESSAGES: u64 = 1_000_000;
/// Slots in the rings of the stream tests.
const CAPACITY: u64 = 1024;
/// Payload bytes of the byte-message test (lengths run from 1 to this).
const BYTES_SLOT: u64 = 256;
/// How long a parent blocking call waits before it checks that its child is still alive.
const PARENT_POLL: Duration = Duration::from_secs(1);

/// The stream tests spin on both sides: two of them at once on a two-core machine would only
/// take turns with each other. They run one at a time (for speed, not for correctness).
static HEAVY: Mutex<()> = Mutex::new(());

fn byte_len(seq: u64) -> usize {
    (seq % BYTES_SLOT) as usize + 1
}

fn byte_at(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> ((i % 8) * 8)) as u8 ^ (i as u8)
}

fn strategy(name: &str) -> WaitStrategy {
    match name {
        "spin" => WaitStrategy::Spin,
        "spinyield" => WaitStrategy::SpinYield,
        "futex" => WaitStrategy::default(),
        other => panic!("unknown wait strategy {other}"),
    }
}

fn strategy_name(s: WaitStrategy) -> &'static str {
    match s {
        WaitStrategy::Spin => "spin",
        WaitStrategy::SpinYield => "spinyield",
        _ => "futex",
    }
}

// ---------------------------------------------------------------------------------------------
// The child side.

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "sub-typed" => child_subscribe_typed(),
        "sub-bytes" => child_subscribe_bytes(),
        "pub-typed" => child_publish_typed(),
        "pub-then-hang" => child_publish_then_hang(),
        "hold-unfinished" => child_hold_unfinished(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Receive until the topic closes, checking each message with `check` (given the sequence
/// number expected and the sample; returns what is wrong, if anything); report count and
/// errors. With `blocking`, receives with `recv` (no timeout: only the watchdog ends a lost
/// wake-up), else with `recv_timeout`.
fn receive_all<T: ?Sized + shmbus::InPlace>(
    subscriber: &mut Subscriber<T>,
    blocking: bool,
    check: impl Fn(u64, &Sample<'_, T>) -> Option<String>,
) -> i32 {
    say("READY");
    let (mut received, mut errors, mut disconnected) = (0u64, 0u64, false);
    loop {
        let next = if blocking {
            subscriber.recv().map(Some)
        } else {
            subscriber.recv_timeout(CHILD_STALL)
        };
        match next {
            Ok(Some(sample)) => {
                if let Some(e) = check(received, &sample) {
                    if errors < 10 {
                        eprintln!("{e}");
                    }
                    errors += 1;
                }
                received += 1;
            }
            Ok(None) => {
                eprintln!("no message for {CHILD_STALL:?} after {received}");
                break;
            }
            Err(RecvError::Disconnected) => {
                disconnected = true;
                break;
            }
            Err(e) => {
                eprintln!("recv failed after {received}: {e}");
                errors += 1;
            }
        }
    }
    common::report_received(received, errors, disconnected)
}

/// The bus of a stream's child: the parent's transport (`spec`), the native one by default.
fn stream_child_bus() -> Bus {
    match common::arg_or("spec", "").as_str() {
        "" => child_bus(),
        spec => common::bus_over(spec, &arg("prefix")),
    }
}

/// Receive typed messages until the topic closes, checking each.
fn child_subscribe_typed() -> i32 {
    let bus = stream_child_bus();
    let blocking = common::arg_or("blocking", "0") == "1";
    let mut subscriber = bus
        .subscriber::<Msg>(&arg("topic"))
        .wait(strategy(&arg("wait")))
        .slip(Duration::from_micros(
            common::arg_or("slip_us", "0").parse().expect("slip_us"),
        ))
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    receive_all(&mut subscriber, blocking, |seq, sample| {
        check_message(seq, sample.seq(), sample)
    })
}

/// Receive byte messages until the topic closes, checking length and every byte.
fn child_subscribe_bytes() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus
        .subscriber::<[u8]>(&arg("topic"))
        .wait(strategy(&arg("wait")))
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    receive_all(&mut subscriber, false, |seq, sample| {
        let ok = sample.seq() == seq
            && sample.len() == byte_len(seq)
            && sample
                .iter()
                .enumerate()
                .all(|(i, &b)| b == byte_at(seq, i));
        (!ok).then(|| {
            format!(
                "message {seq}: sample.seq() = {}, len {} (expected {})",
                sample.seq(),
                sample.len(),
                byte_len(seq)
            )
        })
    })
}

/// Create a topic and publish `count` messages with `send_timeout`, then close it.
fn child_publish_typed() -> i32 {
    let bus = child_bus();
    let count = arg_u64("count");
    let mut publisher = bus
        .publisher::<Msg>(&arg("topic"))
        .capacity(CAPACITY)
        .wait(strategy(&arg("wait")))
        .create()
        .expect("create the topic");
    say("READY");
    // A subscriber receives what is published after it attached: wait for the parent's.
    if !publisher.wait_for_subscribers(1, CHILD_STALL) {
        eprintln!("no subscriber within {CHILD_STALL:?}");
        return 1;
    }
    for seq in 0..count {
        if publisher.send_timeout(message(seq), CHILD_STALL).is_err() {
            eprintln!("no free slot for {CHILD_STALL:?} at message {seq}");
            return 1;
        }
    }
    drop(publisher);
    say(&format!("RESULT sent={count}"));
    0
}

/// A zero-filled file of 4 KiB, owner-only, as a creator leaves its segment before it writes
/// the header.
fn unfinished_segment(path: &str) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create the segment");
    file.set_len(4096).expect("size it");
    file
}

/// Make segment `segment` as a creator does before it writes the header (a zero-filled file,
/// held with a shared `flock`), say so, and wait to be killed: a creator that is slow, or
/// stuck, but alive.
fn child_hold_unfinished() -> i32 {
    let file = unfinished_segment(&format!("/dev/shm/{}", arg("segment")));
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared).expect("hold it");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    drop(file);
    1
}

/// Create a topic, publish `count` messages, say so, and wait to be killed.
fn child_publish_then_hang() -> i32 {
    let bus = child_bus();
    let count = arg_u64("count");
    // Kept as history, for a subscriber that attaches later.
    let mut publisher = bus
        .publisher::<Msg>(&arg("topic"))
        .capacity(CAPACITY)
        .history(count)
        .create()
        .expect("create the topic");
    for seq in 0..count {
        publisher.try_send(message(seq)).expect("room in the ring");
    }
    say("READY");
    std::thread::sleep(CHILD_STALL);
    1
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/// Waits for a receiving child and checks its report: exactly `n` messages, none wrong, then
/// the topic's close.
fn assert_received_all(child: ChildProc, n: u64) {
    let out = child.finish();
    out.assert_success();
    assert_eq!(out.num("received"), n, "{out:#?}");
    assert_eq!(out.num("errors"), 0, "{out:#?}");
    assert_eq!(out.num("disconnected"), 1, "{out:#?}");
}

/// Publish `MESSAGES` typed messages to a subscriber in a child process; the child checks them.
fn typed_stream(test: &str, wait: WaitStrategy, slip_us: u32) {
    typed_stream_over("shm", test, wait, slip_us)
}

/// As [`typed_stream`], over the ring transport `spec` (`shm` or `portable`).
fn typed_stream_over(spec: &str, test: &str, wait: WaitStrategy, slip_us: u32) {
    let _one_at_a_time = lock(&HEAVY);
    let prefix = common::unique_prefix(test);
    let _cleanup = Cleanup::new(&prefix);
    let bus = common::bus_over(spec, &prefix);
    let mut publisher = bus
        .publisher::<Msg>("stream")
        .capacity(CAPACITY)
        .wait(wait)
        .create()
        .unwrap();
    let mut child = ChildProc::spawn(
        "sub-typed",
        &[
            ("prefix", &prefix),
            ("topic", "stream"),
            ("wait", strategy_name(wait)),
            ("slip_us", &slip_us.to_string()),
            ("spec", spec),
        ],
    );
    child.wait_for_line("READY");
    for seq in 0..MESSAGES {
        // Written in place, field by field: the zero-copy path.
        let mut loan = loop {
            match publisher.loan_timeout(PARENT_POLL) {
                Ok(loan) => break loan,
                Err(_) => child.check(),
            }
        };
        let m = message(seq);
        loan.seq = m.seq;
        loan.words = m.words;
        loan.check = m.check;
        assert_eq!(loan.seq(), seq);
        loan.send();
    }
    assert_eq!(publisher.next_seq(), MESSAGES);
    drop(publisher); // closes the topic: the child sees Disconnected after the last message
    assert_received_all(child, MESSAGES);
}

#[test]
fn a_million_messages_polling_on_both_sides() {
    typed_stream("million-spin", WaitStrategy::Spin, 0);
}

/// A subscriber that pauses whenever it catches up (`SubscriberBuilder::slip`) still sees
/// every message once, in order; the publisher meanwhile fills the ring and waits for space.
#[test]
fn a_million_messages_to_a_slipping_subscriber() {
    typed_stream("million-slip", WaitStrategy::Spin, 20);
}

#[test]
fn a_million_messages_blocking_on_both_sides() {
    typed_stream("million-futex", WaitStrategy::default(), 0);
}

/// The same stream over the portable backend (`shared_memory` segments), polling.
#[cfg(feature = "portable")]
#[test]
fn a_million_messages_polling_on_both_sides_over_the_portable_backend() {
    typed_stream_over("portable", "million-spin-portable", WaitStrategy::Spin, 0);
}

/// The same stream over the portable backend, both sides sleeping on its `raw_sync` events.
#[cfg(feature = "portable")]
#[test]
fn a_million_messages_blocking_on_both_sides_over_the_portable_backend() {
    typed_stream_over(
        "portable",
        "million-futex-portable",
        WaitStrategy::default(),
        0,
    );
}

#[test]
fn a_million_byte_messages_of_varying_length() {
    let _one_at_a_time = lock(&HEAVY);
    let prefix = common::unique_prefix("million-bytes");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus
        .publisher::<[u8]>("bytes")
        .capacity(CAPACITY)
        .slot_size(BYTES_SLOT)
        .create()
        .unwrap();
    assert_eq!(publisher.slot_size(), BYTES_SLOT as usize);
    let mut child = ChildProc::spawn(
        "sub-bytes",
        &[("prefix", &prefix), ("topic", "bytes"), ("wait", "futex")],
    );
    child.wait_for_line("READY");
    for seq in 0..MESSAGES {
        let len = byte_len(seq);
        let mut loan = loop {
            match publisher.loan_bytes(len, Some(PARENT_POLL)) {
                Ok(loan) => break loan,
                Err(shmbus::LoanError::Timeout) => child.check(),
                Err(e) => panic!("loan_bytes({len}): {e}"),
            }
        };
        assert_eq!(loan.len(), len);
        for (i, b) in loan.iter_mut().enumerate() {
            *b = byte_at(seq, i);
        }
        loan.send();
    }
    drop(publisher);
    assert_received_all(child, MESSAGES);
}

#[test]
fn a_million_messages_from_a_child_publisher() {
    let _one_at_a_time = lock(&HEAVY);
    let prefix = common::unique_prefix("million-from-child");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let count = MESSAGES.to_string();
    let mut child = ChildProc::spawn(
        "pub-typed",
        &[
            ("prefix", &prefix),
            ("topic", "stream"),
            ("count", &count),
            ("wait", "futex"),
        ],
    );
    child.wait_for_line("READY");
    // The child waits for this subscriber before it publishes.
    let mut subscriber = bus
        .subscriber::<Msg>("stream")
        .wait(WaitStrategy::default())
        .open()
        .unwrap();
    let mut received = 0u64;
    loop {
        match subscriber.recv_timeout(PARENT_POLL) {
            Ok(Some(sample)) => {
                if let Some(e) = check_message(received, sample.seq(), &sample) {
                    panic!("{e}");
                }
                received += 1;
            }
            Ok(None) => {
                // Nothing for a while: the child must still be running, or it has closed the
                // topic (then the next receive reports it).
                if received < MESSAGES {
                    child.check();
                }
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("recv after {received} messages: {e}"),
        }
    }
    assert_eq!(received, MESSAGES);
    assert_eq!(subscriber.next_seq(), MESSAGES);
    let out = child.finish();
    out.assert_success();
    assert_eq!(out.num("sent"), MESSAGES, "{out:#?}");
    // Still disconnected on every later call.
    assert_eq!(subscriber.try_recv().err(), Some(RecvError::Disconnected));
}

#[test]
fn dropping_the_publisher_disconnects_after_the_last_message() {
    let prefix = common::unique_prefix("disconnect");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    // A small ring, so that the child reads while the parent still publishes.
    let mut publisher = bus.publisher::<Msg>("topic").capacity(8).create().unwrap();
    let mut child = ChildProc::spawn(
        "sub-typed",
        &[
            ("prefix", &prefix),
            ("topic", "topic"),
            ("wait", "futex"),
            ("blocking", "1"),
        ],
    );
    child.wait_for_line("READY");
    const SENT: u64 = 100;
    for seq in 0..SENT {
        let mut m = message(seq);
        while let Err(e) = publisher.send_timeout(m, PARENT_POLL) {
            m = e.into_inner();
            child.check();
        }
    }
    drop(publisher);
    assert_received_all(child, SENT);
}

#[test]
fn dropping_the_publisher_wakes_a_sleeping_subscriber() {
    let prefix = common::unique_prefix("disconnect-sleeper");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let publisher = bus.publisher::<Msg>("topic").create().unwrap();
    // A subscriber that spins only briefly, then sleeps on the futex in `recv_timeout`.
    let mut child = ChildProc::spawn(
        "sub-typed",
        &[
            ("prefix", &prefix),
            ("topic", "topic"),
            ("wait", "futex"),
            ("blocking", "1"),
        ],
    );
    child.wait_for_line("READY");
    // Give it time to fall asleep (it is correct either way; asleep is the case of interest).
    std::thread::sleep(Duration::from_millis(200));
    drop(publisher);
    assert_received_all(child, 0);
}

#[test]
fn a_killed_publisher_is_reported() {
    let prefix = common::unique_prefix("killed-publisher");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut child = ChildProc::spawn(
        "pub-then-hang",
        &[("prefix", &prefix), ("topic", "t"), ("count", "10")],
    );
    child.wait_for_line("READY");
    let mut subscriber = bus.subscriber::<Msg>("t").history(10).open().unwrap();
    // And one that spins (another waiting path), with nothing to read.
    let mut spinner = bus
        .subscriber::<Msg>("t")
        .wait(WaitStrategy::Spin)
        .open()
        .unwrap();
    let child_pid = child.pid();
    child.kill();
    let out = child.finish();
    assert!(!out.status.success());
    // What it sent before it died is still delivered...
    for seq in 0..10 {
        let sample = subscriber.recv_timeout(PARENT_POLL).unwrap().unwrap();
        assert!(check_message(seq, sample.seq(), &sample).is_none());
    }
    // ...and then its death is reported rather than waited on, by every blocking receive.
    let pid = child_pid;
    for _ in 0..3 {
        match subscriber.recv_timeout(CHILD_STALL) {
            Err(RecvError::PublisherGone { pid: gone }) => assert_eq!(gone, pid),
            other => panic!(
                "a dead publisher looks alive: {:?}",
                other.map(|s| s.is_some())
            ),
        }
    }
    match subscriber.recv() {
        Err(RecvError::PublisherGone { pid: gone }) => assert_eq!(gone, pid),
        other => panic!("recv: {:?}", other.map(|s| s.seq())),
    }
    match spinner.recv() {
        Err(RecvError::PublisherGone { pid: gone }) => assert_eq!(gone, pid),
        other => panic!("a spinning recv: {:?}", other.map(|s| s.seq())),
    }
    // A publisher that takes the dead one's lane over goes on where it stopped.
    let mut heir = bus.publisher::<Msg>("t").attach().unwrap();
    heir.send(message(10)).unwrap();
    let sample = subscriber.recv_timeout(CHILD_STALL).unwrap().unwrap();
    assert!(check_message(10, sample.seq(), &sample).is_none());
}

#[test]
fn the_topic_of_a_killed_publisher_is_replaced_on_create() {
    let prefix = common::unique_prefix("stale-topic");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut child = ChildProc::spawn(
        "pub-then-hang",
        &[("prefix", &prefix), ("topic", "t"), ("count", "1")],
    );
    child.wait_for_line("READY");
    child.kill();
    assert!(!child.finish().status.success());
    let created = bus.publisher::<Msg>("t").create();
    assert!(created.is_ok(), "{:?}", created.err());
    // A live one is never replaced.
    assert!(matches!(
        bus.publisher::<Msg>("t").create(),
        Err(shmbus::CreateError::AlreadyExists { .. })
    ));
}

#[test]
fn clean_removes_the_topics_of_dead_processes_and_only_those() {
    let prefix = common::unique_prefix("clean");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let live = bus.publisher::<Msg>("live").create().unwrap();
    // A subscriber alone keeps a topic alive too, once its publisher is gone.
    let mut child = ChildProc::spawn(
        "pub-then-hang",
        &[("prefix", &prefix), ("topic", "dead"), ("count", "1")],
    );
    child.wait_for_line("READY");
    let mut orphan = ChildProc::spawn(
        "pub-then-hang",
        &[("prefix", &prefix), ("topic", "watched"), ("count", "1")],
    );
    orphan.wait_for_line("READY");
    let watcher = bus.subscriber::<Msg>("watched").open().unwrap();
    for c in [&child, &orphan] {
        c.kill();
    }
    assert!(!child.finish().status.success());
    assert!(!orphan.finish().status.success());
    assert_eq!(bus.clean(true).unwrap(), ["dead"], "a dry run lists");
    assert_eq!(bus.clean(true).unwrap(), ["dead"], "and removes nothing");
    assert_eq!(bus.clean(false).unwrap(), ["dead"]);
    assert!(bus.clean(false).unwrap().is_empty());
    let left: Vec<_> = bus
        .topics()
        .unwrap()
        .into_iter()
        .map(|t| t.unwrap().topic)
        .collect();
    assert_eq!(left, ["live", "watched"]);
    drop(watcher);
    assert_eq!(bus.clean(false).unwrap(), ["watched"]);
    drop(live);
}

#[test]
fn an_unfinished_segment_is_replaced_once_old_and_unheld_and_never_while_held() {
    let prefix = common::unique_prefix("unfinished");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    // A creator killed before it wrote the header: its name, zero-filled, held by nobody.
    drop(unfinished_segment(&format!("/dev/shm/{prefix}orphan")));
    // A creator still at work (alive, holding its segment).
    let mut busy = ChildProc::spawn("hold-unfinished", &[("segment", &format!("{prefix}busy"))]);
    busy.wait_for_line("READY");
    // Young, both are only "not ready": an opener retries, a creator is refused.
    assert!(matches!(
        bus.subscriber::<Msg>("orphan").open(),
        Err(shmbus::OpenError::NotReady { .. })
    ));
    assert!(matches!(
        bus.publisher::<Msg>("orphan").create(),
        Err(shmbus::CreateError::AlreadyExists { .. })
    ));
    assert!(bus.clean(true).unwrap().is_empty(), "too young to judge");
    // Once older than the grace (1 s; the creator locks its segment a few system calls after
    // its name appears), the orphan is stale and the held one is not.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(bus.clean(true).unwrap(), ["orphan"]);
    let created = bus.publisher::<Msg>("orphan").create();
    assert!(created.is_ok(), "{:?}", created.err());
    assert!(matches!(
        bus.publisher::<Msg>("busy").create(),
        Err(shmbus::CreateError::AlreadyExists { .. })
    ));
    assert!(bus.clean(false).unwrap().is_empty());
    busy.kill();
    assert!(!busy.finish().status.success());
    // Its creator dead, the held one is released by the kernel: now it goes.
    assert_eq!(bus.clean(false).unwrap(), ["busy"]);
}

/// The segment's bytes, read through a mapping of this process's own.
fn segment_words(name: &str) -> (memmap2::MmapMut, Vec<u32>) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/{name}"))
        .unwrap();
    // SAFETY: a segment other processes use; this test reads it and writes one word, which is
    // what it exists to do (as a peer could).
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let words = map
        .chunks_exact(4)
        .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
        .collect();
    (map, words)
}

#[test]
fn a_publisher_that_died_while_attaching_does_not_keep_subscribers_waiting() {
    let prefix = common::unique_prefix("phantom");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let name = format!("{prefix}topic");
    let publisher = bus
        .publisher::<Msg>("topic")
        .max_publishers(2)
        .create()
        .unwrap();
    // Find the count of publishers: the one word that goes from 1 to 2 when a second attaches
    // (one that spins: a sleeping one would count itself among the sleepers too).
    let (_, before) = segment_words(&name);
    let second = bus
        .publisher::<Msg>("topic")
        .wait(WaitStrategy::Spin)
        .attach()
        .unwrap();
    let (mut map, after) = segment_words(&name);
    drop(second);
    let count: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] == 1 && after[i] == 2)
        .collect();
    assert_eq!(count.len(), 1, "the count of publishers is one word");
    // A publisher that counted itself in `attach` and was killed before it took a lane.
    map[count[0] * 4..count[0] * 4 + 4].copy_from_slice(&2u32.to_ne_bytes());

    let mut child = ChildProc::spawn(
        "sub-typed",
        &[
            ("prefix", &prefix),
            ("topic", "topic"),
            ("wait", "futex"),
            ("blocking", "1"),
        ],
    );
    child.wait_for_line("READY");
    let mut publisher = publisher;
    const SENT: u64 = 10;
    for seq in 0..SENT {
        publisher.send(message(seq)).unwrap();
    }
    // The last live publisher leaves: the count stays at 1 (the dead attacher's), every lane
    // is free. The subscriber, in `recv` without a timeout, must still be told.
    drop(publisher);
    assert_received_all(child, SENT);
    // The name was not removed (the count never reached 0); nobody is on it: stale.
    assert_eq!(bus.clean(false).unwrap(), ["topic"]);
}
