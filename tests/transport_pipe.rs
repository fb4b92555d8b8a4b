//! The pipe transport, between this test process and a child it spawns with `Pipe::spawn` (the
//! test binary re-executed, its end inherited): the conformance suite's checks
//! (tests/conformance.rs), mostly with the publisher in the parent and the subscriber in the
//! child, the order check both ways, and a killed publisher in the child. Then what only a pipe
//! has: the topic's name in its greeting, its end taken once, checked when taken from the
//! environment, and inherited by nobody else.

mod common;

use common::{arg, arg_or, arg_u64, child_command, exit_child, say, ChildProc, CHILD_STALL};
use shmbus::layout::{Policy, TypeFingerprint};
use shmbus::transport::frame::Hello;
use shmbus::transport::{Direction, Endpoint, Pipe, PipeEndError, Transport, PIPE_FD_VAR};
use shmbus::{Bus, CreateError, OpenError, RecvError, SendTimeoutError};
use std::time::{Duration, Instant};

/// The bus prefix on both sides (a pipe makes no name on the system: no test shares it).
const PREFIX: &str = "pipe-test.";
/// How long a subscriber waits for its publisher's greeting.
const OPEN: Duration = Duration::from_secs(20);

fn bus(pipe: Pipe) -> Bus {
    Bus::builder()
        .prefix(PREFIX)
        .transport(pipe)
        .build()
        .expect("a bus")
}

/// The bus over the end this child was given.
fn child_bus() -> Bus {
    bus(Pipe::from_env().expect("the pipe end from the environment"))
}

/// Spawn the test binary in `role` with one end of a pipe; the bus over the other end.
fn spawn(role: &str, args: &[(&str, &str)], direction: Direction) -> (ChildProc, Bus) {
    let mut command = child_command(role, args);
    let (child, pipe) = Pipe::spawn(&mut command, direction).expect("spawn with a pipe");
    (ChildProc::adopt(child, role), bus(pipe))
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "pub-u64" => child_publish_u64(),
        "sub-u64" => child_subscribe_u64(),
        "sub-bytes" => child_subscribe_bytes(),
        "sub-timeouts" => child_subscribe_quiet(),
        "sub-idle" => child_subscribe_idle(),
        "sub-garbage" => child_subscribe_garbage(),
        "sub-refused-first" => child_subscribe_refused_first(),
        "sub-twice" => child_subscribe_twice(),
        "from-env" => child_from_env(),
        "pub-grandchild" => child_publish_then_spawn(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Publish `count` u64 values (`seq * 7 + 1`) on the inherited write end, then close (or,
/// with `then=hang`, say so and wait to be killed).
fn child_publish_u64() -> i32 {
    let bus = child_bus();
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(64)
        .create()
        .expect("create the topic");
    say("READY");
    for i in 0..arg_u64("count") {
        if let Err(e) = publisher.send_timeout(i * 7 + 1, CHILD_STALL) {
            eprintln!("send {i}: {e}");
            return 4;
        }
    }
    if arg_or("then", "close") == "hang" {
        say("SENT");
        std::thread::sleep(CHILD_STALL);
    }
    0
}

/// Receive `count` u64 values in order (`seq * 7 + 1`), then the close.
fn child_subscribe_u64() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    for i in 0..arg_u64("count") {
        match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) if (sample.seq(), *sample) == (i, i * 7 + 1) => {}
            Ok(Some(sample)) => {
                eprintln!("message {i}: seq {} value {}", sample.seq(), *sample);
                return 5;
            }
            other => {
                eprintln!("message {i}: {:?}", other.map(|s| s.map(|s| *s)));
                return 6;
            }
        }
    }
    let end = subscriber.recv_timeout(CHILD_STALL).map(|s| s.map(|s| *s));
    if end != Err(RecvError::Disconnected) || subscriber.lost() != 0 {
        eprintln!(
            "after the last message: {end:?}, {} lost",
            subscriber.lost()
        );
        return 7;
    }
    say("RESULT ok");
    0
}

/// Receive `count` byte messages, message `i` of length `i % 301` filled with `i as u8`.
fn child_subscribe_bytes() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus
        .subscriber::<[u8]>("t")
        .open_timeout(OPEN)
        .expect("open");
    for i in 0..arg_u64("count") {
        let sample = match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) => sample,
            other => {
                eprintln!("message {i}: {:?}", other.map(|s| s.map(|s| s.len())));
                return 5;
            }
        };
        let len = (i % 301) as usize;
        if sample.len() != len || !sample.iter().all(|&b| b == i as u8) {
            eprintln!(
                "message {i}: {} bytes, {:?}...",
                sample.len(),
                sample.first()
            );
            return 6;
        }
    }
    let end = subscriber
        .recv_timeout(CHILD_STALL)
        .map(|s| s.map(|s| s.len()));
    if end != Err(RecvError::Disconnected) {
        eprintln!("after the last message: {end:?}");
        return 7;
    }
    say("RESULT ok");
    0
}

/// On a quiet topic, each receive timeout is honoured (not before it), and `try_recv` finds
/// nothing.
fn child_subscribe_quiet() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    for timeout in [Duration::ZERO, Duration::from_millis(30)] {
        let start = Instant::now();
        let got = subscriber.recv_timeout(timeout).map(|s| s.map(|s| *s));
        if got != Ok(None) {
            eprintln!("a quiet topic gave {got:?}");
            return 5;
        }
        if start.elapsed() < timeout {
            eprintln!("returned before its timeout of {timeout:?}");
            return 6;
        }
    }
    if subscriber.try_recv().map(|s| s.map(|s| *s)) != Ok(None) {
        return 7;
    }
    say("RESULT ok");
    0
}

/// Open the subscriber and never read; wait to be killed.
fn child_subscribe_idle() -> i32 {
    let bus = child_bus();
    let _subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    0
}

/// Expect a typed error for the garbage the parent sends after its greeting, then the end.
fn child_subscribe_garbage() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    match subscriber.recv_timeout(CHILD_STALL).map(|s| s.map(|s| *s)) {
        Err(RecvError::BadFrame(e)) => say(&format!("BADFRAME {e}")),
        other => {
            eprintln!("garbage received as {other:?}");
            return 5;
        }
    }
    // The connection was dropped: nothing more comes from it.
    match subscriber.recv().map(|s| *s) {
        Err(RecvError::Disconnected) => {
            say("RESULT ok");
            0
        }
        other => {
            eprintln!("after the garbage: {other:?}");
            6
        }
    }
}

/// Open a subscriber the pipe must refuse (`refuse=type`: of another type; `refuse=topic`: of
/// another topic), then the right one on the same end, and receive the parent's one message.
fn child_subscribe_refused_first() -> i32 {
    let bus = child_bus();
    let refused = match arg("refuse").as_str() {
        "type" => match bus.subscriber::<u32>("t").open_timeout(OPEN) {
            Err(OpenError::IncompatibleType { .. }) => true,
            other => {
                eprintln!("a u32 subscriber of a u64 topic: {:?}", other.map(|_| ()));
                false
            }
        },
        _ => match bus.subscriber::<u64>("other").open_timeout(OPEN) {
            Err(OpenError::Refused { reason, .. }) if reason.contains("pipe-test.t") => true,
            other => {
                eprintln!("a subscriber of another topic: {:?}", other.map(|_| ()));
                false
            }
        },
    };
    if !refused {
        return 5;
    }
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .open_timeout(OPEN)
        .expect("the right subscriber, after a refused one");
    match subscriber.recv_timeout(CHILD_STALL).map(|s| s.map(|s| *s)) {
        Ok(Some(7)) => {
            say("RESULT ok");
            0
        }
        other => {
            eprintln!("the message: {other:?}");
            6
        }
    }
}

/// A second subscriber on the end gets a typed error; so does a second `from_env`.
fn child_subscribe_twice() -> i32 {
    let bus = child_bus();
    let _first = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    match bus.subscriber::<u64>("t").open() {
        Err(OpenError::TooManySubscribers { max: 1, .. }) => {}
        other => {
            eprintln!("a second subscriber: {:?}", other.map(|_| ()));
            return 5;
        }
    }
    match Pipe::from_env() {
        Err(PipeEndError::Taken) => {}
        other => {
            eprintln!("a second from_env: {other:?}");
            return 6;
        }
    }
    say("RESULT ok");
    0
}

/// Take the end the environment names, and say how it went.
fn child_from_env() -> i32 {
    let what = match Pipe::from_env() {
        Ok(pipe) => format!("ok {:?}", pipe.end()),
        Err(PipeEndError::NotSet) => "not-set".into(),
        Err(PipeEndError::BadNumber { .. }) => "bad-number".into(),
        Err(PipeEndError::NotOpen { .. }) => "not-open".into(),
        Err(PipeEndError::NotAPipe { .. }) => "not-a-pipe".into(),
        Err(e) => format!("other {e}"),
    };
    say(&format!("RESULT {what}"));
    0
}

/// Publish one message, spawn a grandchild that outlives this child (it must not inherit the
/// write end), say its pid, and wait to be killed.
fn child_publish_then_spawn() -> i32 {
    let bus = child_bus();
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    publisher.send_timeout(1, CHILD_STALL).expect("send");
    // Killed by the parent test, and reaped by whoever adopts it once this child is killed.
    #[allow(clippy::zombie_processes)]
    let grandchild = std::process::Command::new("sleep")
        .arg("120")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn sleep");
    say(&format!("GRANDCHILD {}", grandchild.id()));
    std::thread::sleep(CHILD_STALL);
    0
}

#[test]
fn order_is_kept_and_nothing_is_lost_from_parent_to_child() {
    const N: u64 = 20_000;
    let n = N.to_string();
    let (child, bus) = spawn("sub-u64", &[("count", &n)], Direction::ToChild);
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(64)
        .create()
        .expect("create");
    assert_eq!(publisher.subscribers(), 1);
    for i in 0..N {
        publisher
            .send_timeout(i * 7 + 1, CHILD_STALL)
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
    }
    drop(publisher);
    child.finish().assert_success();
}

#[test]
fn order_is_kept_and_nothing_is_lost_from_child_to_parent() {
    const N: u64 = 20_000;
    let n = N.to_string();
    let (child, bus) = spawn("pub-u64", &[("count", &n)], Direction::FromChild);
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
}

#[test]
fn byte_messages_of_every_length_arrive_whole_and_in_order() {
    const N: u64 = 3_000;
    let n = N.to_string();
    let (child, bus) = spawn("sub-bytes", &[("count", &n)], Direction::ToChild);
    let mut publisher = bus
        .publisher::<[u8]>("t")
        .slot_size(300)
        .create()
        .expect("create");
    for i in 0..N {
        let mut loan = publisher
            .loan_bytes((i % 301) as usize, Some(CHILD_STALL))
            .unwrap_or_else(|e| panic!("loan {i}: {e}"));
        loan.fill(i as u8);
        loan.send();
    }
    drop(publisher);
    child.finish().assert_success();
}

#[test]
fn a_receive_timeout_is_honoured_on_a_quiet_topic() {
    let (child, bus) = spawn("sub-timeouts", &[], Direction::ToChild);
    let publisher = bus.publisher::<u64>("t").create().expect("create");
    let finished = child.finish();
    drop(publisher);
    finished.assert_success();
}

#[test]
fn a_send_timeout_is_honoured_while_the_subscriber_does_not_read() {
    let (mut child, bus) = spawn("sub-idle", &[], Direction::ToChild);
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(16)
        .create()
        .expect("create");
    child.wait_for_line("READY");
    // Fill the pipe until a send times out: the value comes back.
    let timeout = Duration::from_millis(20);
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
        assert!(sent < 50_000_000, "the pipe never filled");
    };
    assert_eq!(refused, sent, "the refused message is handed back");
    assert_eq!(publisher.try_send(7).map_err(|e| e.into_inner()), Err(7));
    child.kill();
    let _ = child.finish();
}

#[test]
fn a_killed_publisher_is_reported() {
    let args = [("count", "50"), ("then", "hang")];
    let (mut child, bus) = spawn("pub-u64", &args, Direction::FromChild);
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    child.wait_for_line("SENT");
    let pid = child.pid();
    child.kill();
    let _ = child.finish();
    // What it sent before it died is delivered, then its death is reported.
    for i in 0..50 {
        let sample = subscriber
            .recv()
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(*sample, i * 7 + 1);
    }
    assert_eq!(
        subscriber.recv().err(),
        Some(RecvError::PublisherGone { pid })
    );
}

#[test]
fn a_killed_subscriber_does_not_keep_a_block_publisher_waiting() {
    let (mut child, bus) = spawn("sub-idle", &[], Direction::ToChild);
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(16)
        .create()
        .expect("create");
    child.wait_for_line("READY");
    child.kill();
    let _ = child.finish();
    // Every send completes: the write fails (EPIPE), the subscriber is dropped, and the
    // publisher runs free.
    for i in 0..10_000u64 {
        publisher
            .send_timeout(i, CHILD_STALL)
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
    }
    assert_eq!(publisher.subscribers(), 0);
}

#[test]
fn a_peer_that_sends_garbage_gets_a_typed_error() {
    let mut command = child_command("sub-garbage", &[]);
    let (child, pipe) = Pipe::spawn(&mut command, Direction::ToChild).expect("spawn");
    let mut child = ChildProc::adopt(child, "sub-garbage");
    // A "publisher" that greets properly, then sends what is not a frame.
    let endpoint = Endpoint {
        prefix: PREFIX,
        topic: "t",
        hello: Hello {
            fingerprint: TypeFingerprint::typed::<u64>(std::any::type_name::<u64>()),
            pid: std::process::id(),
            identity: shmbus::segment::my_identity(),
            policy: Policy::Block,
            max_len: 8,
        },
        group: false,
        any_type: false,
        history: 0,
    };
    let mut sender = pipe.publish(&endpoint).expect("publish");
    let garbage = [0xA5u8; 48];
    let _ = sender.ready(Policy::Block, Some(Instant::now() + CHILD_STALL));
    sender.send(&garbage);
    let line = child.wait_for_line("BADFRAME");
    assert!(line.contains("magic"), "{line}");
    child.finish().assert_success();
}

#[test]
fn a_subscriber_of_another_type_is_refused_and_the_end_stays_for_the_right_one() {
    let (child, bus) = spawn(
        "sub-refused-first",
        &[("refuse", "type")],
        Direction::ToChild,
    );
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    publisher.send_timeout(7, CHILD_STALL).expect("send");
    child.finish().assert_success();
}

#[test]
fn a_subscriber_of_another_topic_is_refused_by_name() {
    let (child, bus) = spawn(
        "sub-refused-first",
        &[("refuse", "topic")],
        Direction::ToChild,
    );
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    publisher.send_timeout(7, CHILD_STALL).expect("send");
    child.finish().assert_success();
}

#[test]
fn a_second_publisher_or_subscriber_on_one_end_gets_a_typed_error() {
    let (child, bus) = spawn("sub-twice", &[], Direction::ToChild);
    let publisher = bus.publisher::<u64>("t").create().expect("create");
    match bus.publisher::<u64>("t").create() {
        Err(CreateError::AlreadyExists { .. }) => {}
        other => panic!("a second publisher: {:?}", other.map(|_| ())),
    }
    // The ends are the publisher's and the subscriber's.
    match bus.subscriber::<u64>("t").open() {
        Err(OpenError::Unsupported { .. }) => {}
        other => panic!("a subscriber on the write end: {:?}", other.map(|_| ())),
    }
    child.finish().assert_success();
    drop(publisher);
}

#[test]
fn the_end_in_the_environment_is_checked_before_it_is_taken() {
    let cases = [
        (None, "not-set"),
        (Some("seven"), "bad-number"),
        (Some("-3"), "bad-number"),
        (Some("987"), "not-open"),
        // Standard input: /dev/null.
        (Some("0"), "not-a-pipe"),
    ];
    for (value, expected) in cases {
        let mut command = child_command("from-env", &[]);
        match value {
            Some(v) => command.env(PIPE_FD_VAR, v),
            None => command.env_remove(PIPE_FD_VAR),
        };
        let child = ChildProc::adopt(command.spawn().expect("spawn"), "from-env");
        let finished = child.finish();
        finished.assert_success();
        assert_eq!(
            finished.result_line().trim(),
            expected,
            "{PIPE_FD_VAR}={value:?}"
        );
    }
    let (child, _bus) = spawn("from-env", &[], Direction::FromChild);
    assert_eq!(child.finish().result_line().trim(), "ok Write");
    let (child, _bus) = spawn("from-env", &[], Direction::ToChild);
    assert_eq!(child.finish().result_line().trim(), "ok Read");
}

#[test]
fn no_other_process_inherits_an_end() {
    let (mut child, bus) = spawn("pub-grandchild", &[], Direction::FromChild);
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    let line = child.wait_for_line("GRANDCHILD ");
    let grandchild: i32 = line["GRANDCHILD ".len()..]
        .trim()
        .parse()
        .expect("the grandchild's pid");
    assert_eq!(subscriber.recv().map(|s| *s), Ok(1));
    let pid = child.pid();
    child.kill();
    let _ = child.finish();
    // The grandchild lives on; had it inherited the write end, the stream would not end.
    let got = subscriber
        .recv_timeout(Duration::from_secs(60))
        .map(|s| s.map(|s| *s));
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(grandchild).expect("a pid"),
        rustix::process::Signal::KILL,
    );
    assert_eq!(got, Err(RecvError::PublisherGone { pid }));
}
