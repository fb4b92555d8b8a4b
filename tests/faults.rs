//! Fault injection: publishers killed with SIGKILL at random points of a stream, over and over.
//! Each kill is checked: every message delivered before it is whole and in its place, the
//! subscriber is told the publisher is gone (never left waiting), and the next publisher takes
//! the dead one's lane over and the sequence goes on. A segment scribbled on, or truncated,
//! under a publisher and a subscriber process kills neither.

mod common;

use common::msg::{check_message, message, Msg};
use common::{arg, arg_u64, child_bus, exit_child, say, ChildProc, Cleanup, CHILD_STALL};
use shmbus::{Bus, RecvError, WaitStrategy};
use std::time::{Duration, Instant};

/// Kills per run: the issue asks for at least 1,000 in CI's time (each costs a process start
/// and a liveness slice, ~20-30 ms).
const KILLS: u32 = 1000;

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "publish-forever" => child_publish_forever(),
        "subscribe-chaos" => child_subscribe_chaos(),
        "scribble" => child_scribble(),
        "publish-until-truncated" => child_publish_until_truncated(),
        "subscribe-until-truncated" => child_subscribe_until_truncated(),
        "fault-elsewhere" => child_fault_elsewhere(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Take over a lane of topic `topic` (the dead predecessor's), say where its numbering goes on,
/// and publish consecutive messages until killed.
fn child_publish_forever() -> i32 {
    let bus = child_bus();
    let mut publisher = bus
        .publisher::<Msg>(&arg("topic"))
        .wait(WaitStrategy::Spin)
        .attach()
        .expect("take the dead publisher's lane over");
    say(&format!("READY next={}", publisher.next_seq()));
    loop {
        let seq = publisher.next_seq();
        if publisher.send_timeout(message(seq), CHILD_STALL).is_err() {
            eprintln!("no free slot for {CHILD_STALL:?} at {seq}");
            return 1;
        }
    }
}

/// Receive from topic `topic` for `millis` ms while another process scribbles over its
/// segment: whatever comes (messages, wrong messages, errors), this must neither panic nor hang.
fn child_subscribe_chaos() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus
        .subscriber::<Msg>(&arg("topic"))
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    say("READY");
    let end = Instant::now() + Duration::from_millis(arg_u64("millis"));
    let (mut good, mut wrong, mut none, mut errors) = (0u64, 0u64, 0u64, 0u64);
    while Instant::now() < end {
        match subscriber.recv_timeout(Duration::from_millis(5)) {
            Ok(Some(sample)) => match check_message(sample.seq(), sample.seq(), &sample) {
                None => good += 1,
                Some(_) => wrong += 1,
            },
            Ok(None) => none += 1,
            Err(_) => errors += 1,
        }
    }
    say(&format!(
        "RESULT good={good} wrong={wrong} none={none} errors={errors}"
    ));
    0
}

/// Write random bytes at random places of segment `segment` (past its header, which openers
/// have read already) until killed.
fn child_scribble() -> i32 {
    let fd = rustix::shm::open(
        arg("segment").as_str(),
        rustix::shm::OFlags::RDWR,
        rustix::fs::Mode::empty(),
    )
    .expect("open the segment");
    let file = std::fs::File::from(fd);
    // SAFETY: shared memory that other processes use while this one writes it: that is the
    // point; this process only writes bytes through raw volatile stores and reads nothing.
    let map = unsafe { memmap2::MmapOptions::new().map_mut(&file) }.expect("map the segment");
    let (base, len) = (map.as_ptr() as *mut u8, map.len());
    let header = shmbus::layout::HEADER_SIZE;
    let mut rng = Rng(arg_u64("seed") | 1);
    say("READY");
    loop {
        let at = header + (rng.next() as usize) % (len - header);
        // SAFETY: `at < len`, inside the mapping.
        unsafe { base.add(at).write_volatile(rng.next() as u8) };
        if rng.next() % 64 == 0 {
            std::thread::yield_now();
        }
    }
}

/// Create topic `topic` (policy `policy`) and publish until the publisher finds its segment
/// truncated; say how many messages it sent.
fn child_publish_until_truncated() -> i32 {
    let policy = match arg("policy").as_str() {
        "overwrite" => shmbus::Policy::Overwrite,
        _ => shmbus::Policy::Block,
    };
    let mut publisher = child_bus()
        .publisher::<Msg>(&arg("topic"))
        .capacity(1024)
        .policy(policy)
        .create()
        .expect("create the topic");
    say("READY");
    let end = Instant::now() + CHILD_STALL;
    let mut seq = 0u64;
    while Instant::now() < end {
        match publisher.send_timeout(message(seq), Duration::from_millis(20)) {
            Ok(()) => seq += 1,
            Err(shmbus::SendTimeoutError::Truncated(_)) => {
                say(&format!("RESULT sent={seq} how=send"));
                return 0;
            }
            Err(_) => {}
        }
        // A publisher that never waits (Overwrite, or a Block one whose subscriber table now
        // reads empty) learns it here.
        if seq % 64 == 0 && publisher.truncated() {
            say(&format!("RESULT sent={seq} how=truncated"));
            return 0;
        }
    }
    eprintln!("still not told of the truncation after {CHILD_STALL:?}");
    1
}

/// Receive from topic `topic` until told the segment was truncated; say what came before.
fn child_subscribe_until_truncated() -> i32 {
    let mut subscriber = child_bus()
        .subscriber::<Msg>(&arg("topic"))
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    say("READY");
    let end = Instant::now() + CHILD_STALL;
    let (mut good, mut wrong, mut corrupt) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        match subscriber.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(sample)) => {
                // Under Overwrite a lapped subscriber skips ahead: check the message against
                // its own number.
                match check_message(sample.seq(), sample.seq(), &sample) {
                    None => good += 1,
                    Some(_) => wrong += 1,
                }
                if good == 1000 {
                    say("STREAMING");
                }
            }
            Ok(None) => {}
            Err(RecvError::Truncated) => {
                say(&format!(
                    "RESULT good={good} wrong={wrong} corrupt={corrupt}"
                ));
                return 0;
            }
            Err(RecvError::Corrupt { .. }) => corrupt += 1,
            Err(e) => {
                eprintln!("expected RecvError::Truncated, got {e:?} after {good} messages");
                return 2;
            }
        }
        if subscriber.truncated() {
            // Asked directly, it knows before its next receive says so.
            assert!(matches!(subscriber.try_recv(), Err(RecvError::Truncated)));
        }
    }
    eprintln!("still not told of the truncation after {CHILD_STALL:?}");
    1
}

/// With a subscriber open (so that shmbus's SIGBUS handler is in place), map a file of this
/// process's own, truncate it and read past its end: shmbus must pass that fault on, and the
/// process dies of SIGBUS as it would without shmbus.
fn child_fault_elsewhere() -> i32 {
    let _subscriber = child_bus()
        .subscriber::<Msg>(&arg("topic"))
        .open()
        .expect("open the topic");
    let path = arg("file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(1 << 16).unwrap();
    // SAFETY: this process's own file; reading it past its end after the truncation below is
    // the fault this child exists to take.
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }.unwrap();
    file.set_len(0).unwrap();
    say("READY");
    // SAFETY: inside the mapping; the page is past the file's end: SIGBUS.
    let byte = unsafe { map.as_ptr().add(1 << 15).read_volatile() };
    eprintln!("read {byte} past the end of the file and lived");
    0
}

/// A small xorshift, seeded from the clock: where in the stream each kill lands.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn publishers_killed_at_random_points_never_show_a_torn_message_nor_leave_a_subscriber_waiting() {
    let prefix = common::unique_prefix("kills");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    // This process holds lane 0 (idle) so that the topic outlives every child; the children
    // take lane 1 in turn, each from the dead one before it.
    let _holder = bus
        .publisher::<Msg>("t")
        .capacity(256)
        .max_publishers(2)
        .create()
        .unwrap();
    let mut subscriber = bus
        .subscriber::<Msg>("t")
        .wait(WaitStrategy::Spin)
        .open()
        .unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed:#x}");
    let mut rng = Rng(seed);
    let (mut next, mut received, mut mid_stream) = (0u64, 0u64, 0u32);
    for kill in 0..KILLS {
        let mut child = ChildProc::spawn("publish-forever", &[("prefix", &prefix), ("topic", "t")]);
        let ready = child.wait_for_line("READY");
        assert_eq!(
            ready,
            format!("READY next={next}"),
            "kill {kill}: the lane goes on"
        );
        // Let it run for a random number of messages (0 to ~2 ring laps), reading as it goes.
        let target = next + rng.next() % 512;
        while next < target {
            match subscriber.recv_timeout(CHILD_STALL) {
                Ok(Some(sample)) => {
                    assert_eq!(sample.lane(), 1);
                    if let Some(e) = check_message(next, sample.seq(), &sample) {
                        panic!("kill {kill} (seed {seed:#x}): {e}");
                    }
                    next += 1;
                    received += 1;
                }
                other => panic!("kill {kill}: {:?}", other.map(|s| s.is_some())),
            }
        }
        child.kill();
        assert!(!child.finish().status.success());
        // Whatever it had published is delivered, whole and in order; then it is reported gone.
        loop {
            match subscriber.recv_timeout(CHILD_STALL) {
                Ok(Some(sample)) => {
                    if let Some(e) = check_message(next, sample.seq(), &sample) {
                        panic!("kill {kill} (seed {seed:#x}), after the kill: {e}");
                    }
                    next += 1;
                    received += 1;
                    mid_stream += 1;
                }
                Err(RecvError::PublisherGone { .. }) => break,
                other => panic!("kill {kill}: {:?}", other.map(|s| s.is_some())),
            }
        }
    }
    assert_eq!(received, next);
    // Most kills land while the child is writing or waiting for room: some messages are still
    // in flight after them. (Printed, not asserted: where a kill lands is up to the scheduler.)
    eprintln!(
        "{KILLS} kills, {received} messages, {mid_stream} received after their publisher was killed"
    );
}

#[test]
fn a_subscriber_reading_a_segment_another_process_scribbles_on_neither_panics_nor_hangs() {
    let prefix = common::unique_prefix("chaos");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    for policy in [shmbus::Policy::Block, shmbus::Policy::Overwrite] {
        let topic = format!("t-{policy}");
        let mut publisher = bus
            .publisher::<Msg>(&topic)
            .capacity(64)
            .policy(policy)
            .max_subscribers(2)
            .create()
            .unwrap();
        let mut subscriber = ChildProc::spawn(
            "subscribe-chaos",
            &[("prefix", &prefix), ("topic", &topic), ("millis", "1500")],
        );
        subscriber.wait_for_line("READY");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("{policy}: seed {seed:#x}");
        let mut scribbler = ChildProc::spawn(
            "scribble",
            &[
                ("segment", &format!("{prefix}{topic}")),
                ("seed", &seed.to_string()),
            ],
        );
        scribbler.wait_for_line("READY");
        // Publish (never waiting: the scribbled heads may say anything) until the subscriber
        // has had its time.
        let end = Instant::now() + Duration::from_millis(1500);
        let mut seq = 0;
        while Instant::now() < end {
            if publisher.try_send(message(seq)).is_ok() {
                seq += 1;
            } else {
                std::thread::yield_now();
            }
        }
        let out = subscriber.finish();
        scribbler.kill();
        let _ = scribbler.finish();
        out.assert_success();
        eprintln!("{policy}: {seq} sent; {}", out.result_line());
    }
}

#[test]
fn a_segment_truncated_under_a_publisher_and_a_subscriber_kills_neither_and_both_are_told() {
    let prefix = common::unique_prefix("truncate");
    let _cleanup = Cleanup::new(&prefix);
    for policy in ["block", "overwrite"] {
        // To nothing, to the header's page, and through the middle of the slots.
        for cut in ["zero", "header", "half"] {
            let topic = format!("t-{policy}-{cut}");
            let mut publisher = ChildProc::spawn(
                "publish-until-truncated",
                &[("prefix", &prefix), ("topic", &topic), ("policy", policy)],
            );
            publisher.wait_for_line("READY");
            let mut subscriber = ChildProc::spawn(
                "subscribe-until-truncated",
                &[("prefix", &prefix), ("topic", &topic)],
            );
            subscriber.wait_for_line("STREAMING");
            let path = format!("/dev/shm/{prefix}{topic}");
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let size = file.metadata().unwrap().len();
            let to = match cut {
                "zero" => 0,
                "header" => 4096,
                _ => size / 2,
            };
            file.set_len(to).unwrap();
            let (published, received) = (publisher.finish(), subscriber.finish());
            // Neither died of SIGBUS; each said how it learned.
            published.assert_success();
            received.assert_success();
            eprintln!(
                "{policy}, cut to {to} of {size} bytes: publisher {}; subscriber {}",
                published.result_line(),
                received.result_line()
            );
        }
    }
}

#[test]
fn a_fault_outside_every_segment_still_kills_the_process_with_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let prefix = common::unique_prefix("elsewhere");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let _publisher = bus.publisher::<Msg>("t").create().unwrap();
    let file = std::env::temp_dir().join(format!("{prefix}file"));
    let mut child = ChildProc::spawn(
        "fault-elsewhere",
        &[
            ("prefix", &prefix),
            ("topic", "t"),
            ("file", file.to_str().unwrap()),
        ],
    );
    child.wait_for_line("READY");
    let done = child.finish();
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        done.status.signal(),
        Some(rustix::process::Signal::BUS.as_raw()),
        "{done:#?}"
    );
}
