//! The transport conformance suite: the same checks, publisher and subscriber in different
//! processes, against every transport `shmbus::transport::parse` builds (the pipe, which only
//! a parent and its child share, runs the same checks in tests/transport_pipe.rs).
//!
//! Each check runs over every transport in turn and names the one that failed. What each
//! asserts: order kept and nothing lost under Block (typed and byte messages); a receive's and
//! a send's timeout honoured (a transport that is never full, a file, instead never waits);
//! a publisher killed (SIGKILL) reported as `PublisherGone`; a
//! subscriber killed does not keep a Block publisher waiting; a peer that sends garbage gets a
//! typed error (copying transports: a frame that is not one; the ring transports' hostile
//! segments are the subject of tests/refusals.rs and the `bus_segment` fuzz target); a
//! subscriber of another type is refused.

mod common;

use common::{arg, arg_u64, bus_over as bus, exit_child, say, ChildProc, CHILD_STALL};
use shmbus::layout::Policy;
use shmbus::transport::frame::Hello;
use shmbus::transport::Endpoint;
use shmbus::{Bus, OpenError, RecvError, SendTimeoutError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a subscriber waits for a publisher process to come up.
const OPEN: Duration = Duration::from_secs(20);

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shmbus-conf-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
    fn sub(&self, name: &str) -> String {
        let d = self.0.join(name);
        std::fs::create_dir_all(&d).expect("create a directory");
        d.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The transports under test, as spec strings, each with the directories it needs.
fn specs(tmp: &TempDir) -> Vec<String> {
    #[allow(unused_mut)] // each feature adds its own
    let mut specs = vec![
        "shm".into(),
        format!("mmap:{}", tmp.sub("mmap")),
        format!("unix:{}", tmp.sub("unix")),
        format!("tcp:127.0.0.1:{}", common::free_tcp_port()),
        "mqueue".into(),
        format!("file:{}", tmp.sub("file")),
        format!("fifo:{}", tmp.sub("fifo")),
    ];
    #[cfg(feature = "portable")]
    specs.push("portable".into());
    specs
}

/// Whether a transport can never be full (a file): its publisher never waits, under any
/// policy, so the send-timeout check asserts that instead.
fn never_full(spec: &str) -> bool {
    spec.starts_with("file:")
}

/// Whether a transport copies (frames on a kernel object) rather than sharing a ring.
fn copying(spec: &str) -> bool {
    !(spec.starts_with("shm") || spec.starts_with("mmap") || spec.starts_with("portable"))
}

/// A Block publisher of topic `t` (u64) with 16 slots, over `spec`.
fn small_publisher(spec: &str, prefix: &str) -> shmbus::Publisher<u64> {
    bus(spec, prefix)
        .publisher::<u64>("t")
        .capacity(16)
        .create()
        .expect("create")
}

fn child_bus() -> Bus {
    bus(&arg("spec"), &arg("prefix"))
}

fn policy(name: &str) -> Policy {
    match name {
        "block" => Policy::Block,
        "overwrite" => Policy::Overwrite,
        _ => Policy::Fail,
    }
}

/// Run `check` once per transport, each with a prefix of its own; a failure names the
/// transport.
fn each_transport(test: &str, check: impl Fn(&str, &str)) {
    let tmp = TempDir::new(test);
    for (i, spec) in specs(&tmp).iter().enumerate() {
        let prefix = common::unique_prefix(&format!("{test}-{i}"));
        let _cleanup = common::Cleanup::new(&prefix);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(spec, &prefix)));
        // A message queue is named outside any directory, and a publisher killed while no
        // subscriber outlived it leaves its name: removed here, as the directories are.
        let _ = shmbus::transport::MessageQueue::remove_stale(&prefix, "t");
        if let Err(e) = result {
            let what = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("transport {spec}: {what}");
        }
    }
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "pub-u64" => child_publish_u64(),
        "pub-bytes" => child_publish_bytes(),
        "sub-idle" => child_subscribe_idle(),
        "hostile" => child_hostile(),
        "sub-count" => child_subscribe_count(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Publish `count` u64 values (`seq * 7 + 1`) once a subscriber is there, then close (or,
/// with `then=hang`, say so and wait to be killed).
fn child_publish_u64() -> i32 {
    let bus = child_bus();
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(64)
        .policy(policy(&arg("policy")))
        .create()
        .expect("create the topic");
    say("READY");
    if !publisher.wait_for_subscribers(1, CHILD_STALL) {
        eprintln!("no subscriber came");
        return 3;
    }
    for i in 0..arg_u64("count") {
        if let Err(e) = publisher.send_timeout(i * 7 + 1, CHILD_STALL) {
            eprintln!("send {i}: {e}");
            return 4;
        }
    }
    if common::arg_or("then", "close") == "hang" {
        say("SENT");
        std::thread::sleep(CHILD_STALL);
    }
    0
}

/// Publish `count` byte messages, message `i` of length `i % 301` filled with `i as u8`.
fn child_publish_bytes() -> i32 {
    let bus = child_bus();
    let mut publisher = bus
        .publisher::<[u8]>("t")
        .slot_size(300)
        .capacity(64)
        .create()
        .expect("create the topic");
    say("READY");
    if !publisher.wait_for_subscribers(1, CHILD_STALL) {
        return 3;
    }
    for i in 0..arg_u64("count") {
        let len = (i % 301) as usize;
        let mut loan = match publisher.loan_bytes(len, Some(CHILD_STALL)) {
            Ok(loan) => loan,
            Err(_) => return 4,
        };
        loan.fill(i as u8);
        loan.send();
    }
    0
}

/// Open a subscriber and never read; wait to be killed.
fn child_subscribe_idle() -> i32 {
    let bus = child_bus();
    let _subscriber = bus
        .subscriber::<u64>("t")
        .open_timeout(OPEN)
        .expect("open the topic");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    0
}

/// Open a subscriber, say so, then (after `nap` ms) receive until `count` messages came or
/// none came for 10 s, pausing `pace` µs after each; report how many, and whether each was
/// the value expected (`seq * 7 + 1`, numbered from the first received).
fn child_subscribe_count() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .open_timeout(OPEN)
        .expect("open the topic");
    say("READY");
    std::thread::sleep(Duration::from_millis(arg_u64("nap")));
    let (mut count, mut bad) = (0u64, 0u64);
    while count < arg_u64("count") {
        match subscriber.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(sample)) => {
                if *sample != count * 7 + 1 {
                    bad += 1;
                }
                count += 1;
                drop(sample);
                std::thread::sleep(Duration::from_micros(common::arg_u64_or("pace", 0)));
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("after {count}: {e}");
                break;
            }
        }
    }
    say(&format!("RESULT count={count} bad={bad}"));
    0
}

/// A copying transport's "publisher" that greets properly and then sends `garbage`.
fn child_hostile() -> i32 {
    let transport = shmbus::transport::parse(&arg("spec")).expect("a valid spec");
    let prefix = arg("prefix");
    let endpoint = Endpoint {
        prefix: &prefix,
        topic: "t",
        hello: Hello {
            fingerprint: shmbus::layout::TypeFingerprint::typed::<u64>(std::any::type_name::<u64>()),
            pid: std::process::id(),
            identity: shmbus::segment::my_identity(),
            policy: Policy::Block,
            max_len: 8,
        },
        group: false,
        any_type: false,
        history: 0,
    };
    let mut sender = transport.publish(&endpoint).expect("publish");
    say("READY");
    let deadline = Instant::now() + CHILD_STALL;
    while sender.subscribers() == 0 {
        if Instant::now() > deadline {
            return 3;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // 48 bytes: a frame's length, but not a frame (no magic).
    let garbage = [0xA5u8; 48];
    let _ = sender.ready(Policy::Block, Some(deadline));
    sender.send(&garbage);
    say("SENT");
    std::thread::sleep(CHILD_STALL);
    0
}

#[test]
fn order_is_kept_and_nothing_is_lost_under_block() {
    each_transport("order", |spec, prefix| {
        const N: u64 = 20_000;
        let n = N.to_string();
        let args = [
            ("spec", spec),
            ("prefix", prefix),
            ("policy", "block"),
            ("count", &n),
        ];
        let mut child = ChildProc::spawn("pub-u64", &args);
        child.wait_for_line("READY");
        let bus = bus(spec, prefix);
        let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
        for i in 0..N {
            let sample = subscriber
                .recv()
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
            assert_eq!((sample.seq(), *sample), (i, i * 7 + 1), "message {i}");
        }
        assert_eq!(subscriber.recv().err(), Some(RecvError::Disconnected));
        assert_eq!(subscriber.lost(), 0);
        child.finish().assert_success();
    });
}

#[test]
fn byte_messages_of_every_length_arrive_whole_and_in_order() {
    each_transport("bytes", |spec, prefix| {
        const N: u64 = 3_000;
        let n = N.to_string();
        let args = [("spec", spec), ("prefix", prefix), ("count", &n)];
        let mut child = ChildProc::spawn("pub-bytes", &args);
        child.wait_for_line("READY");
        let bus = bus(spec, prefix);
        let mut subscriber = bus
            .subscriber::<[u8]>("t")
            .open_timeout(OPEN)
            .expect("open");
        for i in 0..N {
            let sample = subscriber
                .recv()
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
            let len = (i % 301) as usize;
            assert_eq!(sample.len(), len, "message {i}");
            assert!(sample.iter().all(|&b| b == i as u8), "message {i}'s bytes");
        }
        assert_eq!(subscriber.recv().err(), Some(RecvError::Disconnected));
        child.finish().assert_success();
    });
}

#[test]
fn a_receive_timeout_is_honoured_on_a_quiet_topic() {
    each_transport("recv-timeout", |spec, prefix| {
        let args = [
            ("spec", spec),
            ("prefix", prefix),
            ("policy", "block"),
            ("count", "0"),
            ("then", "hang"),
        ];
        let mut child = ChildProc::spawn("pub-u64", &args);
        child.wait_for_line("READY");
        let bus = bus(spec, prefix);
        let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
        child.wait_for_line("SENT");
        for timeout in [Duration::ZERO, Duration::from_millis(30)] {
            let start = Instant::now();
            let got = subscriber.recv_timeout(timeout).map(|s| s.map(|s| *s));
            assert_eq!(got, Ok(None), "a quiet topic");
            // The deadline is honoured: not before it (how long after is the machine's business).
            assert!(start.elapsed() >= timeout, "returned before its timeout");
        }
        assert_eq!(subscriber.try_recv().map(|s| s.map(|s| *s)), Ok(None));
        child.kill();
        let _ = child.finish();
    });
}

#[test]
fn a_send_timeout_is_honoured_while_a_subscriber_does_not_read() {
    each_transport("send-timeout", |spec, prefix| {
        let mut publisher = small_publisher(spec, prefix);
        let args = [("spec", spec), ("prefix", prefix)];
        let mut child = ChildProc::spawn("sub-idle", &args);
        child.wait_for_line("READY");
        assert!(publisher.wait_for_subscribers(1, OPEN));
        let timeout = Duration::from_millis(20);
        if never_full(spec) {
            // Nothing to fill: every send completes while the subscriber does not read.
            for i in 0..100_000u64 {
                publisher
                    .send_timeout(i, timeout)
                    .unwrap_or_else(|e| panic!("send {i} of a transport never full: {e}"));
            }
            assert_eq!(publisher.try_send(7), Ok(()));
            child.kill();
            let _ = child.finish();
            return;
        }
        // Fill the ring (or the kernel's buffers) until a send times out: the value comes back.
        let mut sent = 0u64;
        let refused = loop {
            let start = Instant::now();
            match publisher.send_timeout(sent, timeout) {
                Ok(()) => sent += 1,
                Err(SendTimeoutError::Timeout(v)) => {
                    assert!(start.elapsed() >= timeout, "timed out before its timeout");
                    break v;
                }
                Err(e) => panic!("after {sent} messages: {e}"),
            }
            assert!(sent < 50_000_000, "the buffers never filled");
        };
        assert_eq!(refused, sent, "the refused message is handed back");
        assert_eq!(publisher.try_send(7).map_err(|e| e.into_inner()), Err(7));
        child.kill();
        let _ = child.finish();
    });
}

/// Messages a publisher sends before it is killed, unread until then: within what every
/// transport buffers (a message queue holds 10 by default, `fs.mqueue.msg_max`, and its
/// hello takes one until it is read).
const SENT_BEFORE_DEATH: u64 = 8;

#[test]
fn a_killed_publisher_is_reported() {
    each_transport("killed-pub", |spec, prefix| {
        let count = SENT_BEFORE_DEATH.to_string();
        let args = [
            ("spec", spec),
            ("prefix", prefix),
            ("policy", "block"),
            ("count", &count),
            ("then", "hang"),
        ];
        let mut child = ChildProc::spawn("pub-u64", &args);
        child.wait_for_line("READY");
        let bus = bus(spec, prefix);
        let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
        child.wait_for_line("SENT");
        let pid = child.pid();
        child.kill();
        let _ = child.finish();
        // What it sent before it died is delivered, then its death is reported.
        for i in 0..SENT_BEFORE_DEATH {
            let sample = subscriber
                .recv()
                .unwrap_or_else(|e| panic!("message {i}: {e}"));
            assert_eq!(*sample, i * 7 + 1);
        }
        assert_eq!(
            subscriber.recv().err(),
            Some(RecvError::PublisherGone { pid })
        );
    });
}

#[test]
fn a_killed_subscriber_does_not_keep_a_block_publisher_waiting() {
    each_transport("killed-sub", |spec, prefix| {
        let mut publisher = small_publisher(spec, prefix);
        let args = [("spec", spec), ("prefix", prefix)];
        let mut child = ChildProc::spawn("sub-idle", &args);
        child.wait_for_line("READY");
        assert!(publisher.wait_for_subscribers(1, OPEN));
        child.kill();
        let _ = child.finish();
        // Every send completes: the dead subscriber is dropped (a copying transport's write
        // fails) or evicted (a ring's publisher checks the holders' liveness while it waits).
        for i in 0..10_000u64 {
            publisher
                .send_timeout(i, CHILD_STALL)
                .unwrap_or_else(|e| panic!("send {i}: {e}"));
        }
        assert_eq!(publisher.subscribers(), 0);
    });
}

#[test]
fn a_peer_that_sends_garbage_gets_a_typed_error() {
    each_transport("garbage", |spec, prefix| {
        if !copying(spec) {
            return; // ring transports: tests/refusals.rs, the chaos test, fuzz/bus_segment
        }
        let args = [("spec", spec), ("prefix", prefix)];
        let mut child = ChildProc::spawn("hostile", &args);
        child.wait_for_line("READY");
        let bus = bus(spec, prefix);
        let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
        child.wait_for_line("SENT");
        match subscriber.recv_timeout(CHILD_STALL).map(|s| s.map(|s| *s)) {
            Err(RecvError::BadFrame(_)) => {}
            other => panic!("garbage received as {other:?}"),
        }
        // The connection was dropped: nothing more comes from it.
        assert_eq!(subscriber.recv().err(), Some(RecvError::Disconnected));
        child.kill();
        let _ = child.finish();
    });
}

#[test]
fn a_subscriber_of_another_type_is_refused() {
    each_transport("other-type", |spec, prefix| {
        let args = [
            ("spec", spec),
            ("prefix", prefix),
            ("policy", "block"),
            ("count", "0"),
            ("then", "hang"),
        ];
        let mut child = ChildProc::spawn("pub-u64", &args);
        child.wait_for_line("READY");
        let bus = bus(spec, prefix);
        match bus.subscriber::<u32>("t").open_timeout(OPEN) {
            Err(OpenError::IncompatibleType { .. }) => {}
            other => panic!("a u32 subscriber of a u64 topic: {:?}", other.map(|_| ())),
        }
        child.kill();
        let _ = child.finish();
    });
}

/// A subscriber whose open has returned gets what is published from then on: a message sent
/// the moment it says it is there reaches it, with no wait for subscribers on the publisher's
/// side (where a connection that was greeted but not yet handed to the publisher would miss
/// it). Several rounds, each a new subscriber process, to give a race its chances.
#[test]
fn a_message_sent_as_soon_as_a_subscriber_has_opened_reaches_it() {
    each_transport("first-message", |spec, prefix| {
        let mut publisher = small_publisher(spec, prefix);
        for round in 0..10 {
            let args = [
                ("spec", spec),
                ("prefix", prefix),
                ("count", "1"),
                ("nap", "0"),
            ];
            let mut child = ChildProc::spawn("sub-count", &args);
            child.wait_for_line("READY");
            publisher
                .send_timeout(1, CHILD_STALL)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            let done = child.finish();
            done.assert_success();
            assert_eq!(
                (done.num("count"), done.num("bad")),
                (1, 0),
                "round {round}: {}",
                done.result_line()
            );
        }
    });
}

/// Under Block, a blocking send is delivered by the time it returns, or is on its way without
/// help: a publisher that sends to a subscriber slower than itself (so that the kernel's
/// buffers are full at its sends), and then makes no other call, still has every message
/// received, the last one included.
#[test]
fn a_block_publishers_last_send_is_delivered_without_another_call() {
    each_transport("last-send", |spec, prefix| {
        const N: u64 = 2_000;
        let bus = bus(spec, prefix);
        let mut publisher = bus
            .publisher::<u64>("t")
            .capacity(64)
            .create()
            .expect("create");
        let n = N.to_string();
        let args = [
            ("spec", spec),
            ("prefix", prefix),
            ("count", n.as_str()),
            ("nap", "100"),
            ("pace", "500"),
        ];
        let mut child = ChildProc::spawn("sub-count", &args);
        child.wait_for_line("READY");
        assert!(publisher.wait_for_subscribers(1, OPEN));
        for i in 0..N {
            publisher
                .send_timeout(i * 7 + 1, CHILD_STALL)
                .unwrap_or_else(|e| panic!("send {i}: {e}"));
        }
        // No call after the last send (not even a drop) until the subscriber has counted.
        let done = child.finish();
        done.assert_success();
        assert_eq!(
            (done.num("count"), done.num("bad")),
            (N, 0),
            "{}",
            done.result_line()
        );
        drop(publisher);
    });
}

/// A subscriber that waits in its own poll on `Subscriber::notify_fd` (an eventfd on a ring
/// transport, its connection on a copying one) after `Subscriber::arm` is woken for every
/// message and receives them all, in order. The file has no such descriptor (its readiness is
/// not its data's) and says so.
#[test]
fn a_subscriber_polling_its_descriptor_receives_everything() {
    each_transport("poll-fd", |spec, prefix| {
        const N: u64 = 2_000;
        let n = N.to_string();
        let args = [
            ("spec", spec),
            ("prefix", prefix),
            ("policy", "block"),
            ("count", n.as_str()),
        ];
        let mut child = ChildProc::spawn("pub-u64", &args);
        child.wait_for_line("READY");
        let bus = bus(spec, prefix);
        let mut builder = bus.subscriber::<u64>("t");
        if !copying(spec) {
            builder = builder.notifier(shmbus::Notifier::EventFd);
        }
        let mut subscriber = builder.open_timeout(OPEN).expect("open");
        if never_full(spec) {
            assert!(subscriber.notify_fd().is_none());
            assert_eq!(subscriber.arm().err(), Some(shmbus::ArmError::NoDescriptor));
            child.kill();
            let _ = child.finish();
            return;
        }
        let mut received = 0u64;
        loop {
            let got = subscriber.try_recv().map(|s| s.map(|s| (s.seq(), *s)));
            match got {
                Ok(Some(message)) => {
                    assert_eq!(message, (received, received * 7 + 1));
                    received += 1;
                }
                Ok(None) => {
                    let Some(armed) = subscriber.arm().expect("a descriptor") else {
                        continue;
                    };
                    assert!(
                        common::readable_within(armed.fd(), 20),
                        "armed after {received} messages and never woken"
                    );
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("after {received} messages: {e}"),
            }
        }
        assert_eq!(received, N);
        child.finish().assert_success();
    });
}
