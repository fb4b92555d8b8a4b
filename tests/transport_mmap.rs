//! The memory-mapped-file transport's own promise, beyond the conformance suite: a topic
//! survives its publishers. A subscriber started after the publisher's process exited (or was
//! killed) reads what the ring holds; a publisher that comes back goes on with the topic and
//! its numbering; nothing removes the file but the user.
//!
//! Every publisher and subscriber here is a process of its own (this binary re-executed).

mod common;

use common::{arg, arg_u64, exit_child, say, ChildProc};
use shmbus::transport::MmapFile;
use shmbus::{Bus, Policy, RecvError};
use std::path::PathBuf;
use std::time::Duration;

/// Slots in the test topics' rings.
const CAPACITY: u64 = 64;
/// Messages a late subscriber asks for (and the publisher keeps for it under Block).
const HISTORY: u64 = 40;

/// The value of message `seq`.
fn value(seq: u64) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
}

/// A directory of the test's own (on disk, not a memory filesystem), removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shmbus-mmap-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bus(dir: &str) -> Bus {
    Bus::builder()
        .prefix("mm.")
        .transport(MmapFile::new(dir))
        .build()
        .expect("a bus")
}

fn policy(name: &str) -> Policy {
    match name {
        "overwrite" => Policy::Overwrite,
        _ => Policy::Block,
    }
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "publish" => child_publish(),
        "read" => child_read(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Create (or go on with) the topic, publish `count` messages with no subscriber, say where
/// the numbering started and ended, then exit (or, with `then=hang`, wait to be killed).
fn child_publish() -> i32 {
    let bus = bus(&arg("dir"));
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(CAPACITY)
        .history(HISTORY)
        .policy(policy(&arg("policy")))
        .create()
        .expect("create or go on with the topic");
    let first = publisher.next_seq();
    for _ in 0..arg_u64("count") {
        let seq = publisher.next_seq();
        publisher
            .try_send(value(seq))
            .unwrap_or_else(|_| panic!("message {seq} refused"));
    }
    say(&format!(
        "RESULT first={first} next={}",
        publisher.next_seq()
    ));
    if arg("then") == "hang" {
        std::thread::sleep(common::CHILD_STALL);
    }
    0
}

/// Open the topic with history and read until it ends; report what was read and how it ended.
fn child_read() -> i32 {
    let bus = bus(&arg("dir"));
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .history(arg_u64("history"))
        .open()
        .expect("open the topic");
    let first = subscriber.next_seq();
    let mut count = 0u64;
    let mut bad = 0u64;
    let end = loop {
        match subscriber.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(sample)) => {
                if *sample != value(sample.seq()) || sample.seq() != first + count {
                    bad += 1;
                }
                count += 1;
            }
            Ok(None) => break "timeout".to_string(),
            Err(RecvError::Disconnected) => break "closed".to_string(),
            Err(RecvError::PublisherGone { .. }) => break "gone".to_string(),
            Err(e) => break format!("error:{e:?}").replace(' ', "_"),
        }
    };
    say(&format!(
        "RESULT first={first} count={count} bad={bad} end={end}"
    ));
    0
}

fn publish(dir: &str, policy: &str, count: u64) -> (u64, u64) {
    let n = count.to_string();
    let args = [
        ("dir", dir),
        ("policy", policy),
        ("count", &n),
        ("then", "exit"),
    ];
    let done = ChildProc::spawn("publish", &args).finish();
    done.assert_success();
    (done.num("first"), done.num("next"))
}

fn read(dir: &str, history: u64) -> common::Finished {
    let h = history.to_string();
    let done = ChildProc::spawn("read", &[("dir", dir), ("history", &h)]).finish();
    done.assert_success();
    done
}

#[test]
fn a_subscriber_started_after_its_publisher_exited_reads_what_is_there() {
    for policy in ["block", "overwrite"] {
        let tmp = TempDir::new(&format!("late-{policy}"));
        let dir = tmp.path();
        // More than the ring holds: the last HISTORY are there to read.
        let (first, next) = publish(&dir, policy, 1000);
        assert_eq!((first, next), (0, 1000), "{policy}");
        let file = tmp.0.join("mm.t");
        assert!(
            file.exists(),
            "{policy}: the topic's file is kept when its publisher leaves"
        );
        let done = read(&dir, HISTORY);
        assert_eq!(done.num("first"), 1000 - HISTORY, "{policy}: {done:?}");
        assert_eq!(done.num("count"), HISTORY, "{policy}: {done:?}");
        assert_eq!(done.num("bad"), 0, "{policy}: {done:?}");
        assert_eq!(done.result()["end"], "closed", "{policy}: {done:?}");
        // Reading does not consume it: a second reader finds the same.
        let again = read(&dir, HISTORY);
        assert_eq!(again.num("first"), 1000 - HISTORY, "{policy}");
        assert_eq!(again.num("count"), HISTORY, "{policy}");
        assert!(file.exists(), "{policy}: subscribers never remove the file");
    }
}

#[test]
fn a_publisher_that_comes_back_goes_on_with_the_topic_and_its_numbering() {
    let tmp = TempDir::new("restart");
    let dir = tmp.path();
    assert_eq!(publish(&dir, "block", 100), (0, 100));
    assert_eq!(
        publish(&dir, "block", 100),
        (100, 200),
        "the numbering goes on"
    );
    assert_eq!(publish(&dir, "block", 5), (200, 205));
    let done = read(&dir, HISTORY);
    assert_eq!(done.num("first"), 205 - HISTORY, "{done:?}");
    assert_eq!(done.num("count"), HISTORY, "{done:?}");
    assert_eq!(done.num("bad"), 0, "{done:?}");
}

#[test]
fn a_killed_publishers_messages_are_read_and_its_successor_goes_on() {
    let tmp = TempDir::new("killed");
    let dir = tmp.path();
    let args = [
        ("dir", dir.as_str()),
        ("policy", "block"),
        ("count", "30"),
        ("then", "hang"),
    ];
    let mut child = ChildProc::spawn("publish", &args);
    child.wait_for_line("RESULT");
    child.kill();
    let _ = child.finish();
    // All 30 are there; past them, the dead publisher is reported, not waited for.
    let done = read(&dir, HISTORY);
    assert_eq!(
        (done.num("first"), done.num("count"), done.num("bad")),
        (0, 30, 0),
        "{done:?}"
    );
    assert_eq!(done.result()["end"], "gone", "{done:?}");
    // A new publisher takes the dead one's lane over and goes on numbering.
    assert_eq!(publish(&dir, "block", 10), (30, 40));
    let done = read(&dir, HISTORY);
    assert_eq!((done.num("first"), done.num("count")), (0, 40), "{done:?}");
    assert_eq!(done.result()["end"], "closed", "{done:?}");
}

#[test]
fn a_topic_of_another_type_in_the_directory_is_refused_not_replaced() {
    let tmp = TempDir::new("other-type");
    let dir = tmp.path();
    assert_eq!(publish(&dir, "block", 3), (0, 3));
    let bus = bus(&dir);
    match bus.publisher::<u32>("t").capacity(CAPACITY).create() {
        Err(shmbus::CreateError::Existing { source, .. }) => {
            assert!(
                matches!(*source, shmbus::OpenError::IncompatibleType { .. }),
                "{source:?}"
            );
        }
        other => panic!(
            "a u32 publisher over a u64 journal: {:?}",
            other.map(|_| ())
        ),
    }
    // The u64 messages are still there.
    let done = read(&dir, HISTORY);
    assert_eq!(done.num("count"), 3, "{done:?}");
}
