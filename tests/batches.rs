//! Batches (`Publisher::send_many` and its forms, `Subscriber::recv_many` and its forms):
//! a million messages between two processes in batches of every size, none lost, duplicated,
//! reordered or torn, polling and blocking; the same over a copying transport (a loan and a
//! receive per message there); and, in one process, what each form returns at the edges: a
//! full ring, an empty one, a deadline, `Policy::Fail`, `Policy::Overwrite`, two lanes, a
//! closed topic, a callback that panics.

mod common;

use common::msg::{check_message, message, Msg};
use common::{arg, exit_child, lock, say, ChildProc, Cleanup, CHILD_STALL};
use shmbus::{Bus, LoanError, Policy, RecvError, WaitStrategy};
use std::sync::Mutex;
use std::time::Duration;

/// Messages per cross-process stream.
const MESSAGES: u64 = 1_000_000;
/// Messages over a copying transport (a system call each).
const COPIED: u64 = 50_000;
/// Slots in the streams' rings.
const CAPACITY: u64 = 1024;
/// How long a parent's blocking call waits before it checks that its child is still alive.
const PARENT_POLL: Duration = Duration::from_secs(1);

/// The streams spin on both sides: one at a time on a two-core machine.
static HEAVY: Mutex<()> = Mutex::new(());

/// The batch sizes a side cycles through: 1, two primes, a ring's quarter, more than a ring.
const SIZES: [usize; 5] = [1, 7, 97, 256, 5000];

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "sub-batches" => child_subscribe_batches(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Receive in batches until the topic closes, checking every message; report count and errors.
fn child_subscribe_batches() -> i32 {
    let bus = common::bus_over(&arg("spec"), &arg("prefix"));
    let wait = match arg("wait").as_str() {
        "spin" => WaitStrategy::Spin,
        _ => WaitStrategy::default(),
    };
    let mut subscriber = bus
        .subscriber::<Msg>("stream")
        .wait(wait)
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    say("READY");
    let (mut received, mut errors, mut disconnected) = (0u64, 0u64, false);
    for round in 0.. {
        let max = SIZES[round % SIZES.len()];
        let got = subscriber.recv_many_timeout(max, CHILD_STALL, |m| {
            if let Some(e) = check_message(received, m.seq, m) {
                if errors < 10 {
                    eprintln!("{e}");
                }
                errors += 1;
            }
            received += 1;
        });
        match got {
            Ok(0) => {
                eprintln!("no message for {CHILD_STALL:?} after {received}");
                break;
            }
            Ok(n) if n > max => {
                eprintln!("a batch of {n} where at most {max} were asked for");
                errors += 1;
            }
            Ok(_) => {}
            Err(RecvError::Disconnected) => {
                disconnected = true;
                break;
            }
            Err(e) => {
                eprintln!("recv_many failed after {received}: {e}");
                errors += 1;
                break;
            }
        }
    }
    common::report_received(received, errors, disconnected)
}

/// Publish `n` messages over `spec` in batches of every size in [`SIZES`] to a child that
/// receives them in batches too; the child checks each.
fn batch_stream(spec: &str, test: &str, wait: &str, n: u64) {
    let _one_at_a_time = lock(&HEAVY);
    let prefix = common::unique_prefix(test);
    let _cleanup = Cleanup::new(&prefix);
    let bus = common::bus_over(spec, &prefix);
    let mut publisher = bus
        .publisher::<Msg>("stream")
        .capacity(CAPACITY)
        .wait(match wait {
            "spin" => WaitStrategy::Spin,
            _ => WaitStrategy::default(),
        })
        .create()
        .unwrap();
    let mut child = ChildProc::spawn(
        "sub-batches",
        &[("prefix", &prefix), ("spec", spec), ("wait", wait)],
    );
    child.wait_for_line("READY");
    assert!(publisher.wait_for_subscribers(1, CHILD_STALL));
    let mut seq = 0u64;
    let mut round = 0;
    while seq < n {
        let max = SIZES[round % SIZES.len()].min((n - seq) as usize);
        round += 1;
        let before = seq;
        // Written in place, field by field.
        let sent = publisher.send_many_timeout(max, PARENT_POLL, |slot| {
            let m = message(seq);
            slot.seq = m.seq;
            slot.words = m.words;
            slot.check = m.check;
            seq += 1;
        });
        match sent {
            Ok(k) => {
                assert!((1..=max).contains(&k), "sent {k} of a batch of {max}");
                assert_eq!(
                    seq - before,
                    k as u64,
                    "fill was called once per message sent"
                );
            }
            Err(LoanError::Timeout) => child.check(),
            Err(e) => panic!("send_many after {seq}: {e}"),
        }
    }
    assert_eq!(publisher.next_seq(), n);
    drop(publisher); // the child sees Disconnected after the last message
    let out = child.finish();
    out.assert_success();
    assert_eq!(out.num("received"), n, "{out:#?}");
    assert_eq!(out.num("errors"), 0, "{out:#?}");
    assert_eq!(out.num("disconnected"), 1, "{out:#?}");
}

#[test]
fn a_million_messages_in_batches_polling_on_both_sides() {
    batch_stream("shm", "batch-spin", "spin", MESSAGES);
}

#[test]
fn a_million_messages_in_batches_blocking_on_both_sides() {
    batch_stream("shm", "batch-futex", "futex", MESSAGES);
}

/// A copying transport takes the general way (a loan and a receive per message): the same
/// guarantees.
#[test]
fn batches_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("shmbus-batch-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the sockets");
    batch_stream(
        &format!("unix:{}", dir.display()),
        "batch-unix",
        "futex",
        COPIED,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// One process: the edges.

fn bus(test: &str) -> (Bus, Cleanup) {
    let prefix = common::unique_prefix(test);
    let cleanup = Cleanup::new(&prefix);
    (Bus::builder().prefix(&prefix).build().unwrap(), cleanup)
}

#[test]
fn a_batch_takes_the_room_there_is_and_no_more() {
    let (bus, _cleanup) = bus("batch-room");
    let mut publisher = bus.publisher::<u64>("t").capacity(8).create().unwrap();
    let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
    let next = std::cell::Cell::new(0u64);
    let fill = |slot: &mut u64| {
        *slot = next.get();
        next.set(next.get() + 1);
    };
    assert_eq!(publisher.try_send_many(0, fill), Ok(0));
    assert_eq!(publisher.try_send_many(5, fill), Ok(5));
    assert_eq!(
        publisher.try_send_many(100, fill),
        Ok(3),
        "the ring's last 3 slots"
    );
    assert_eq!(publisher.try_send_many(100, fill), Ok(0), "full");
    assert_eq!(
        publisher.send_many_timeout(1, Duration::from_millis(20), fill),
        Err(LoanError::Timeout)
    );
    assert_eq!(
        next.get(),
        8,
        "fill is called for the messages sent, and only for them"
    );
    let mut got = Vec::new();
    assert_eq!(subscriber.try_recv_many(0, |m| got.push(*m)), Ok(0));
    assert_eq!(subscriber.try_recv_many(3, |m| got.push(*m)), Ok(3));
    assert_eq!(subscriber.recv_many(100, |m| got.push(*m)), Ok(5));
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    assert_eq!(subscriber.try_recv_many(100, |m| got.push(*m)), Ok(0));
    assert_eq!(
        subscriber.recv_many_timeout(100, Duration::from_millis(20), |m| got.push(*m)),
        Ok(0)
    );
    // The slots read went back: a whole ring's room again.
    assert_eq!(publisher.try_send_many(100, fill), Ok(8));
    assert_eq!(subscriber.recv_many(100, |m| got.push(*m)), Ok(8));
    assert_eq!(got, (0..16).collect::<Vec<_>>());
}

#[test]
fn batches_under_fail_and_overwrite() {
    let (bus, _cleanup) = bus("batch-policies");
    // Fail: a full ring is an error at once, for the waiting form too.
    let mut fail = bus
        .publisher::<u64>("fail")
        .capacity(4)
        .policy(Policy::Fail)
        .create()
        .unwrap();
    let _holder = bus.subscriber::<u64>("fail").open().unwrap();
    assert_eq!(fail.send_many(10, |s| *s = 1), Ok(4));
    assert_eq!(fail.send_many(10, |s| *s = 1), Err(LoanError::Full));
    assert_eq!(fail.try_send_many(10, |s| *s = 1), Ok(0));
    // Overwrite: never full; a subscriber that fell behind gets the newest and counts the rest.
    let mut over = bus
        .publisher::<u64>("over")
        .capacity(4)
        .policy(Policy::Overwrite)
        .create()
        .unwrap();
    let mut subscriber = bus.subscriber::<u64>("over").open().unwrap();
    let mut next = 0u64;
    assert_eq!(
        over.try_send_many(10, |s| {
            *s = next;
            next += 1;
        }),
        Ok(10)
    );
    let mut got = Vec::new();
    assert_eq!(subscriber.try_recv_many(100, |m| got.push(*m)), Ok(4));
    assert_eq!(got, vec![6, 7, 8, 9]);
    assert_eq!(subscriber.lost(), 6);
}

#[test]
fn a_batch_reads_every_lane() {
    let (bus, _cleanup) = bus("batch-lanes");
    let mut first = bus
        .publisher::<u64>("t")
        .max_publishers(2)
        .create()
        .unwrap();
    let mut second = bus.publisher::<u64>("t").attach().unwrap();
    let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
    assert_eq!(first.try_send_many(3, |s| *s = 1), Ok(3));
    assert_eq!(second.try_send_many(2, |s| *s = 2), Ok(2));
    let mut got = Vec::new();
    assert_eq!(subscriber.try_recv_many(100, |m| got.push(*m)), Ok(5));
    got.sort_unstable();
    assert_eq!(got, vec![1, 1, 1, 2, 2]);
}

#[test]
fn a_closed_topic_ends_a_batch_with_disconnected_after_the_last_message() {
    let (bus, _cleanup) = bus("batch-closed");
    let mut publisher = bus.publisher::<u64>("t").create().unwrap();
    let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
    assert_eq!(publisher.try_send_many(3, |s| *s = 7), Ok(3));
    drop(publisher);
    let mut got = 0;
    assert_eq!(subscriber.recv_many(10, |_| got += 1), Ok(3));
    assert_eq!(got, 3);
    assert_eq!(
        subscriber.recv_many(10, |_| got += 1),
        Err(RecvError::Disconnected)
    );
    assert_eq!(
        subscriber.try_recv_many(10, |_| got += 1),
        Err(RecvError::Disconnected)
    );
}

#[test]
fn a_callback_that_panics_leaves_its_message_and_the_rest_to_come_again() {
    let (bus, _cleanup) = bus("batch-panic");
    let mut publisher = bus.publisher::<u64>("t").capacity(8).create().unwrap();
    let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
    // A fill that panics at its third message: two sent, the third not.
    let mut next = 0u64;
    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        publisher.try_send_many(5, |slot| {
            if next == 2 {
                panic!("fill fails");
            }
            *slot = next;
            next += 1;
        })
    }));
    assert!(sent.is_err());
    assert_eq!(publisher.next_seq(), 2);
    assert_eq!(
        publisher.try_send_many(3, |slot| {
            *slot = next;
            next += 1;
        }),
        Ok(3)
    );
    // A read that panics at message 3: 0..3 received, 3 comes again.
    let mut got = Vec::new();
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        subscriber.try_recv_many(10, |m| {
            if *m == 3 {
                panic!("read fails");
            }
            got.push(*m);
        })
    }));
    assert!(read.is_err());
    assert_eq!(got, vec![0, 1, 2]);
    assert_eq!(subscriber.try_recv_many(10, |m| got.push(*m)), Ok(2));
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
}
