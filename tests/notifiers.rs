//! Notifiers other than the futex (`shmbus::wait::Notifier`), across processes: subscriber
//! processes that sleep on an eventfd, a semaphore or a signal of their own, or poll their
//! notifier's descriptor after `Subscriber::arm`, all on one topic, are woken for every burst
//! of a publisher in another process and receive every message, in order.
//!
//! Each subscriber sleeps at once when it finds nothing (`WaitStrategy::Futex { spin: 0 }`),
//! and the publisher pauses between bursts, so that every burst finds them asleep; each child
//! reports its wait counters, which show that it slept on its notifier and never on the futex.

mod common;

use common::{arg, exit_child, say, ChildProc, Cleanup, CHILD_STALL};
use shmbus::wait::Notifier;
use shmbus::{Bus, RecvError, WaitStrategy};
use std::time::Duration;

/// Bursts the publisher sends, and messages per burst.
const BURSTS: u64 = 200;
const BURST: u64 = 10;
/// The pause between bursts: long enough for every subscriber to go to sleep.
const PAUSE: Duration = Duration::from_millis(2);

fn value(seq: u64) -> u64 {
    seq.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5
}

fn notifier(name: &str) -> Notifier {
    match name {
        "futex" => Notifier::Futex,
        "eventfd" => Notifier::EventFd,
        "semaphore" => Notifier::Semaphore,
        "signal" => Notifier::Signal { offset: 5 },
        other => panic!("unknown notifier {other}"),
    }
}

fn bus(prefix: &str) -> Bus {
    Bus::builder().prefix(prefix).build().expect("a bus")
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "subscribe" => child_subscribe(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Receive until the topic closes, sleeping on the notifier named by `notifier`: in `recv`
/// (`mode=recv`) or by polling the notifier's descriptor after `arm` (`mode=arm`).
fn child_subscribe() -> i32 {
    let bus = bus(&arg("prefix"));
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .wait(WaitStrategy::Futex { spin: 0 })
        .notifier(notifier(&arg("notifier")))
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    say("READY");
    let before = shmbus::wait::stats();
    let (mut count, mut bad, mut polls) = (0u64, 0u64, 0u64);
    let arm = arg("mode") == "arm";
    loop {
        let got = if arm {
            subscriber.try_recv().map(|s| s.map(|s| (s.seq(), *s)))
        } else {
            subscriber.recv().map(|s| Some((s.seq(), *s)))
        };
        match got {
            Ok(Some((seq, v))) => {
                if seq != count || v != value(seq) {
                    bad += 1;
                }
                count += 1;
            }
            Ok(None) => {
                // Nothing there: arm, and wait for the descriptor (a watchdog of a minute).
                let woken = match subscriber.arm().expect("a descriptor to wait on") {
                    None => true,
                    Some(armed) => {
                        polls += 1;
                        common::readable_within(armed.fd(), 60)
                    }
                };
                assert!(
                    woken,
                    "{}: armed and never woken after {count} messages, {polls} polls",
                    arg("notifier")
                );
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("after {count} messages: {e}"),
        }
    }
    let after = shmbus::wait::stats();
    say(&format!(
        "RESULT count={count} bad={bad} polls={polls} futex_waits={} notifier_sleeps={}",
        after.futex_waits - before.futex_waits,
        after.notifier_sleeps - before.notifier_sleeps,
    ));
    0
}

#[test]
fn subscribers_sleeping_on_every_notifier_are_woken_by_a_publisher_in_another_process() {
    let prefix = common::unique_prefix("notifiers");
    let _cleanup = Cleanup::new(&prefix);
    let bus = bus(&prefix);
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(64)
        .max_subscribers(8)
        .create()
        .expect("create the topic");
    let kinds = [
        ("futex", "recv"),
        ("eventfd", "recv"),
        ("semaphore", "recv"),
        ("signal", "recv"),
        ("eventfd", "arm"),
        ("signal", "arm"),
    ];
    let mut children: Vec<_> = kinds
        .iter()
        .map(|(n, mode)| {
            let args = [("prefix", prefix.as_str()), ("notifier", n), ("mode", mode)];
            ChildProc::spawn("subscribe", &args)
        })
        .collect();
    for child in &mut children {
        child.wait_for_line("READY");
    }
    assert!(publisher.wait_for_subscribers(kinds.len(), CHILD_STALL));
    let posts_before = shmbus::wait::stats().notifier_posts;
    for _ in 0..BURSTS {
        for _ in 0..BURST {
            let seq = publisher.next_seq();
            publisher
                .send_timeout(value(seq), CHILD_STALL)
                .unwrap_or_else(|e| panic!("message {seq}: {e}"));
        }
        std::thread::sleep(PAUSE);
    }
    let posts = shmbus::wait::stats().notifier_posts - posts_before;
    drop(publisher);
    for (child, (n, mode)) in children.into_iter().zip(kinds) {
        let done = child.finish();
        done.assert_success();
        let what = format!("{n} ({mode}): {}", done.result_line());
        assert_eq!(done.num("count"), BURSTS * BURST, "{what}");
        assert_eq!(done.num("bad"), 0, "{what}");
        if n == "futex" {
            assert!(done.num("futex_waits") > 0, "{what}: it never slept");
        } else {
            // Asleep on its notifier (recv) or polling its descriptor (arm), never the futex.
            assert_eq!(done.num("futex_waits"), 0, "{what}");
            let slept = done.num("notifier_sleeps") + done.num("polls");
            assert!(slept > 0, "{what}: it never slept on its notifier");
        }
    }
    assert!(posts > 0, "the publisher never posted to a notifier");
}

#[test]
fn a_notifier_is_refused_by_a_copying_transport_and_a_bad_signal_by_every_one() {
    let prefix = common::unique_prefix("notifier-refused");
    let _cleanup = Cleanup::new(&prefix);
    let bus = bus(&prefix);
    let _publisher = bus
        .publisher::<u64>("t")
        .create()
        .expect("create the topic");
    // SIGRTMIN + 200 is past SIGRTMAX on Linux.
    match bus
        .subscriber::<u64>("t")
        .notifier(Notifier::Signal { offset: 200 })
        .open()
    {
        Err(shmbus::OpenError::Notifier { .. }) => {}
        other => panic!("a signal past SIGRTMAX: {:?}", other.map(|_| ())),
    }
    // A futex subscriber has nothing to poll.
    let mut plain = bus.subscriber::<u64>("t").open().expect("open");
    assert!(plain.notify_fd().is_none());
    assert_eq!(plain.arm().err(), Some(shmbus::ArmError::NoDescriptor));
    let dir = std::env::temp_dir().join(format!("shmbus-notifier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unix = Bus::builder()
        .prefix(&prefix)
        .transport(shmbus::transport::Unix::new(&dir))
        .build()
        .unwrap();
    match unix
        .subscriber::<u64>("t")
        .notifier(Notifier::EventFd)
        .open()
    {
        Err(shmbus::OpenError::Unsupported { .. }) => {}
        other => panic!("an eventfd on a socket: {:?}", other.map(|_| ())),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
