//! The plain-file transport (`file:DIR`) beyond the conformance suite, publisher and
//! subscribers in different processes: a subscriber that comes after its publisher exited
//! reads the spool from the start (or its last N messages); subscribers tail the spool across
//! many appends; a reader racing a writer that writes each frame in pieces sees only whole
//! frames; a publisher killed in the middle of a frame gives its whole frames, then
//! `PublisherGone`; a corrupted header byte is a typed error; the spool's mode is 0600 (0660
//! for a group bus) whatever the umask, and links, directories and wide modes are refused; a
//! second live publisher is refused and a dead one's spool is continued; a full disk is a
//! typed error that loses nothing (with root, on a tmpfs of its own).

mod common;

use common::{arg, arg_or, arg_u64, exit_child, say, ChildProc, CHILD_STALL};
use shmbus::layout::{Policy, TypeFingerprint};
use shmbus::transport::frame::{self, FrameError, FrameHeader, Hello};
use shmbus::transport::{Endpoint, File, Transport};
use shmbus::{Bus, CreateError, OpenError, RecvError, SendTimeoutError, TrySendError};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a subscriber waits for a publisher process to come up.
const OPEN: Duration = Duration::from_secs(20);

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shmbus-file-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
    fn dir(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
    /// The spool of topic `t` on the bus of `prefix`.
    fn spool(&self, prefix: &str) -> PathBuf {
        self.0.join(format!("{prefix}t.spool"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bus_in(dir: &str, prefix: &str, group: bool) -> Bus {
    Bus::builder()
        .prefix(prefix)
        .group_access(group)
        .transport(File::new(dir))
        .build()
        .expect("a bus")
}

fn child_bus() -> Bus {
    bus_in(&arg("dir"), &arg("prefix"), arg_or("group", "no") == "yes")
}

fn value(i: u64) -> u64 {
    i * 7 + 1
}

/// Byte message `i`: `i % 3001` bytes (frames cross pages), each `i as u8 ^ k`.
fn bytes_message(i: u64) -> Vec<u8> {
    (0..(i % 3001) as usize)
        .map(|k| (i as u8) ^ (k as u8))
        .collect()
}

/// The hello's and the data frames' encoding of a `u64` topic, as this process publishes.
fn u64_hello() -> Hello {
    Hello {
        fingerprint: TypeFingerprint::typed::<u64>(std::any::type_name::<u64>()),
        pid: std::process::id(),
        identity: shmbus::segment::my_identity(),
        policy: Policy::Block,
        max_len: 8,
    }
}

fn data_frame(fp: &TypeFingerprint, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; frame::frame_len(payload.len())];
    let header = FrameHeader::data(payload.len() as u32, frame::type_hash(fp), seq, 0);
    frame::encode_frame(&mut f, &header, payload);
    f
}

/// Byte offset of data frame `i` of a `u64` spool with one hello.
fn u64_frame_at(i: u64) -> u64 {
    (frame::frame_len(frame::HELLO_LEN) + i as usize * frame::frame_len(8)) as u64
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "pub" => child_publish(),
        "pub-bytes" => child_publish_bytes(),
        "sub-bytes" => child_subscribe_bytes(),
        "slow-writer" => child_slow_writer(),
        "create" => child_create(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Publish `count` u64 values once `subs` subscribers are there (0: at once); then close,
/// or (`then=hang`) say SENT and wait to be killed, or (`then=torn`) write half of one more
/// frame into the spool, say SENT and wait to be killed.
fn child_publish() -> i32 {
    let bus = child_bus();
    let mut publisher = bus
        .publisher::<u64>("t")
        .create()
        .expect("create the topic");
    say("READY");
    let subs = arg_or("subs", "0").parse().unwrap();
    if !publisher.wait_for_subscribers(subs, CHILD_STALL) {
        return 3;
    }
    for i in 0..arg_u64("count") {
        publisher.send(value(i)).expect("a file never refuses");
    }
    match arg_or("then", "close").as_str() {
        "close" => return 0,
        "torn" => {
            use std::io::Write;
            let fp = TypeFingerprint::typed::<u64>(std::any::type_name::<u64>());
            let f = data_frame(&fp, publisher.next_seq(), &value(999).to_le_bytes());
            let mut spool = std::fs::OpenOptions::new()
                .append(true)
                .open(arg("spool"))
                .expect("open the spool");
            spool
                .write_all(&f[..f.len() / 2])
                .expect("write half a frame");
        }
        _ => {}
    }
    say("SENT");
    std::thread::sleep(CHILD_STALL);
    0
}

/// Publish `count` byte messages (`bytes_message`) once `subs` subscribers are there, in
/// bursts of 50 with a pause between, so that the subscribers catch up and sleep often.
fn child_publish_bytes() -> i32 {
    let bus = child_bus();
    let mut publisher = bus
        .publisher::<[u8]>("t")
        .slot_size(3000)
        .create()
        .expect("create the topic");
    say("READY");
    if !publisher.wait_for_subscribers(arg_u64("subs") as usize, CHILD_STALL) {
        return 3;
    }
    for i in 0..arg_u64("count") {
        publisher
            .try_send_bytes(&bytes_message(i))
            .expect("a file never refuses");
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    0
}

/// Read byte messages until the publisher closes; check each; report how many.
fn child_subscribe_bytes() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus
        .subscriber::<[u8]>("t")
        .open_timeout(OPEN)
        .expect("open the topic");
    say("READY");
    let mut n = 0u64;
    loop {
        match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) => {
                if sample.seq() != n || *sample != bytes_message(n)[..] {
                    eprintln!("message {n} is wrong (seq {})", sample.seq());
                    return 4;
                }
                n += 1;
            }
            Ok(None) => return 5,
            Err(RecvError::Disconnected) => break,
            Err(e) => {
                eprintln!("after {n}: {e}");
                return 6;
            }
        }
    }
    say(&format!("RESULT count={n}"));
    0
}

/// Take the spool as its publisher would (lock, hello), then append `count` byte frames
/// through a descriptor of its own, each in pieces of 1 to 700 bytes with pauses between: a
/// reader sees frames in progress all the time.
fn child_slow_writer() -> i32 {
    use std::io::Write;
    let transport = File::new(arg("dir"));
    let prefix = arg("prefix");
    let fp = TypeFingerprint::bytes();
    let endpoint = Endpoint {
        prefix: &prefix,
        topic: "t",
        hello: Hello {
            fingerprint: fp,
            pid: std::process::id(),
            identity: shmbus::segment::my_identity(),
            policy: Policy::Block,
            max_len: 3000,
        },
        group: false,
        any_type: false,
        history: 0,
    };
    let _sender = transport.publish(&endpoint).expect("publish");
    let mut spool = std::fs::OpenOptions::new()
        .append(true)
        .open(transport.path(&endpoint))
        .expect("open the spool");
    say("READY");
    let mut piece = 1usize;
    for i in 0..arg_u64("count") {
        let f = data_frame(&fp, i, &bytes_message(i));
        let mut off = 0;
        while off < f.len() {
            piece = (piece * 7 + 13) % 700 + 1;
            let end = (off + piece).min(f.len());
            spool.write_all(&f[off..end]).expect("append");
            off = end;
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    let mut close = [0u8; frame::HEADER_LEN];
    FrameHeader::control(frame::FrameKind::Close, 0, frame::type_hash(&fp)).encode(&mut close);
    spool.write_all(&close).expect("append the close");
    0
}

/// Create the topic under umask `umask` (octal), say READY and wait to be killed.
fn child_create() -> i32 {
    let umask = u32::from_str_radix(&arg("umask"), 8).expect("an octal umask");
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    let bus = child_bus();
    let _publisher = bus
        .publisher::<u64>("t")
        .create()
        .expect("create the topic");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    0
}

fn recv_all(subscriber: &mut shmbus::Subscriber<u64>) -> (Vec<u64>, RecvError) {
    let mut got = vec![];
    loop {
        match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) => got.push(*sample),
            Ok(None) => panic!(
                "nothing within {CHILD_STALL:?} after {} messages",
                got.len()
            ),
            Err(e) => return (got, e),
        }
    }
}

fn values(range: std::ops::Range<u64>) -> Vec<u64> {
    range.map(value).collect()
}

#[test]
fn a_subscriber_after_the_publisher_exited_reads_the_spool_from_where_it_asks() {
    let tmp = TempDir::new("after");
    let prefix = common::unique_prefix("after");
    let args = [("dir", tmp.dir()), ("prefix", &prefix), ("count", "1000")];
    ChildProc::spawn("pub", &args).finish().assert_success();
    let bus = bus_in(tmp.dir(), &prefix, false);

    let mut all = bus
        .subscriber::<u64>("t")
        .from_start()
        .open()
        .expect("open");
    assert_eq!(
        recv_all(&mut all),
        (values(0..1000), RecvError::Disconnected)
    );
    assert_eq!(all.recv().err(), Some(RecvError::Disconnected));

    let mut last = bus.subscriber::<u64>("t").history(10).open().expect("open");
    assert_eq!(
        recv_all(&mut last),
        (values(990..1000), RecvError::Disconnected)
    );

    // From the end (the default): nothing, the publisher has left.
    let mut end = bus.subscriber::<u64>("t").open().expect("open");
    assert_eq!(recv_all(&mut end), (vec![], RecvError::Disconnected));

    // The spool is kept, the data is all there; the bytes view of any type reads it too.
    let mut bytes = bus
        .subscriber::<[u8]>("t")
        .any_type()
        .from_start()
        .open()
        .expect("open");
    assert_eq!(bytes.fingerprint(), Some(u64_hello().fingerprint));
    let first = bytes.recv().expect("the first message");
    assert_eq!(*first, value(0).to_le_bytes());
}

#[test]
fn subscribers_tail_the_spool_across_many_appends() {
    const N: u64 = 20_000;
    let tmp = TempDir::new("tail");
    let prefix = common::unique_prefix("tail");
    let n = N.to_string();
    let args = [
        ("dir", tmp.dir()),
        ("prefix", &prefix),
        ("count", &n),
        ("subs", "3"),
    ];
    let mut publisher = ChildProc::spawn("pub-bytes", &args);
    publisher.wait_for_line("READY");
    let mut subscribers: Vec<ChildProc> = (0..3)
        .map(|_| ChildProc::spawn("sub-bytes", &args))
        .collect();
    for s in &mut subscribers {
        s.wait_for_line("READY");
    }
    publisher.finish().assert_success();
    for s in subscribers {
        let done = s.finish();
        done.assert_success();
        assert_eq!(done.num("count"), N);
    }
}

#[test]
fn a_reader_racing_a_writer_sees_only_whole_frames() {
    const N: u64 = 300;
    let tmp = TempDir::new("race");
    let prefix = common::unique_prefix("race");
    let n = N.to_string();
    let args = [("dir", tmp.dir()), ("prefix", &prefix), ("count", &n)];
    let mut writer = ChildProc::spawn("slow-writer", &args);
    writer.wait_for_line("READY");
    let bus = bus_in(tmp.dir(), &prefix, false);
    let mut subscriber = bus
        .subscriber::<[u8]>("t")
        .from_start()
        .open_timeout(OPEN)
        .expect("open");
    for i in 0..N {
        let sample = subscriber
            .recv_timeout(CHILD_STALL)
            .unwrap_or_else(|e| panic!("message {i}: {e}"))
            .unwrap_or_else(|| panic!("message {i} never came"));
        assert_eq!((sample.seq(), &*sample), (i, &bytes_message(i)[..]));
    }
    assert_eq!(subscriber.recv().err(), Some(RecvError::Disconnected));
    writer.finish().assert_success();
}

#[test]
fn a_publisher_killed_mid_frame_gives_its_whole_frames_then_publisher_gone() {
    let tmp = TempDir::new("torn");
    let prefix = common::unique_prefix("torn");
    let spool = tmp.spool(&prefix);
    let args = [
        ("dir", tmp.dir()),
        ("prefix", &prefix),
        ("count", "10"),
        ("then", "torn"),
        ("spool", spool.to_str().unwrap()),
    ];
    let mut child = ChildProc::spawn("pub", &args);
    child.wait_for_line("SENT");
    let bus = bus_in(tmp.dir(), &prefix, false);
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .from_start()
        .open()
        .expect("open");
    for i in 0..10 {
        assert_eq!(*subscriber.recv().expect("a whole frame"), value(i));
    }
    // Half a frame, its writer alive: a write in progress, waited for.
    let wait = Duration::from_millis(50);
    let start = Instant::now();
    assert_eq!(
        subscriber.recv_timeout(wait).map(|s| s.map(|s| *s)),
        Ok(None)
    );
    assert!(start.elapsed() >= wait);
    let pid = child.pid();
    child.kill();
    let _ = child.finish();
    assert_eq!(
        subscriber.recv().map(|s| *s),
        Err(RecvError::PublisherGone { pid })
    );
    assert_eq!(
        subscriber.recv().map(|s| *s),
        Err(RecvError::PublisherGone { pid })
    );

    // A new publisher goes on with the spool, without the torn frame.
    let mut publisher = bus
        .publisher::<u64>("t")
        .create()
        .expect("take the spool over");
    publisher.send(value(100)).unwrap();
    drop(publisher);
    let mut all = bus
        .subscriber::<u64>("t")
        .from_start()
        .open()
        .expect("open");
    let mut expected = values(0..10);
    expected.push(value(100));
    assert_eq!(recv_all(&mut all), (expected, RecvError::Disconnected));
    assert_eq!(all.next_seq(), 1, "the new publisher numbers from 0 again");
}

#[test]
fn a_corrupted_byte_in_the_spool_is_a_typed_error() {
    let tmp = TempDir::new("corrupt");
    let prefix = common::unique_prefix("corrupt");
    let args = [("dir", tmp.dir()), ("prefix", &prefix), ("count", "10")];
    ChildProc::spawn("pub", &args).finish().assert_success();
    let spool = tmp.spool(&prefix);
    let mut bytes = std::fs::read(&spool).unwrap();
    let bus = bus_in(tmp.dir(), &prefix, false);
    for (at, what) in [(0usize, "magic"), (4, "kind"), (13, "reserved")] {
        let mut bad = bytes.clone();
        bad[u64_frame_at(5) as usize + at] ^= 0x40;
        std::fs::write(&spool, &bad).unwrap();
        let mut subscriber = bus
            .subscriber::<u64>("t")
            .from_start()
            .open()
            .expect("open");
        let (got, error) = recv_all(&mut subscriber);
        assert_eq!(got, values(0..5), "corrupt {what}");
        assert!(
            matches!(error, RecvError::BadFrame(_)),
            "corrupt {what}: {error:?}"
        );
        assert_eq!(subscriber.recv().err(), Some(RecvError::Disconnected));
        // A subscriber that finds its start by reading the headers is refused at once.
        match bus.subscriber::<u64>("t").history(2).open() {
            Err(OpenError::Refused { reason, .. }) => {
                assert!(reason.contains("corrupt"), "{reason}")
            }
            other => panic!("corrupt {what}: {:?}", other.map(|_| ())),
        }
    }
    // A length beyond the type's (the frame still ends inside the file): a typed error.
    let at = u64_frame_at(9) as usize + 8;
    bytes[at..at + 4].copy_from_slice(&16u32.to_le_bytes());
    std::fs::write(&spool, &bytes).unwrap();
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .from_start()
        .open()
        .expect("open");
    let (got, error) = recv_all(&mut subscriber);
    assert_eq!(got, values(0..9));
    assert_eq!(
        error,
        RecvError::BadFrame(FrameError::TooLong { len: 16, max: 8 })
    );
    // Garbage where the hello should be: not a spool.
    std::fs::write(&spool, [0xA5u8; 200]).unwrap();
    assert!(matches!(
        bus.subscriber::<u64>("t").from_start().open(),
        Err(OpenError::Refused { .. })
    ));
    assert!(matches!(
        bus.publisher::<u64>("t").create(),
        Err(CreateError::Existing { .. })
    ));
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_spool_is_private_whatever_the_umask_and_odd_names_are_refused() {
    let tmp = TempDir::new("mode");
    for (umask, group, mode) in [
        ("000", "no", 0o600),
        ("077", "no", 0o600),
        ("077", "yes", 0o660),
        ("027", "yes", 0o660),
    ] {
        let prefix = common::unique_prefix("mode");
        let args = [
            ("dir", tmp.dir()),
            ("prefix", &prefix),
            ("umask", umask),
            ("group", group),
        ];
        let mut child = ChildProc::spawn("create", &args);
        child.wait_for_line("READY");
        assert_eq!(
            mode_of(&tmp.spool(&prefix)),
            mode,
            "umask {umask}, group {group}"
        );
        child.kill();
        let _ = child.finish();
    }

    let prefix = common::unique_prefix("mode-odd");
    let bus = bus_in(tmp.dir(), &prefix, false);
    let spool = tmp.spool(&prefix);
    // A symbolic link at the name: never followed.
    let target = tmp.0.join("target");
    std::fs::write(&target, b"").unwrap();
    std::os::unix::fs::symlink(&target, &spool).unwrap();
    assert!(matches!(
        bus.publisher::<u64>("t").create(),
        Err(CreateError::Segment(
            shmbus::segment::SegmentError::Symlink(_)
        ))
    ));
    assert!(matches!(
        bus.subscriber::<u64>("t").open(),
        Err(OpenError::Segment(shmbus::segment::SegmentError::Symlink(
            _
        )))
    ));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"",
        "the target is untouched"
    );
    std::fs::remove_file(&spool).unwrap();
    // A directory at the name.
    std::fs::create_dir(&spool).unwrap();
    assert!(bus.publisher::<u64>("t").create().is_err());
    assert!(bus.subscriber::<u64>("t").open().is_err());
    std::fs::remove_dir(&spool).unwrap();
    // A spool that others may read or write: refused.
    drop(bus.publisher::<u64>("t").create().expect("create"));
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        bus.subscriber::<u64>("t").from_start().open(),
        Err(OpenError::Segment(
            shmbus::segment::SegmentError::BadMode { .. }
        ))
    ));
}

#[test]
fn a_second_live_publisher_is_refused_and_a_dead_ones_spool_is_continued() {
    let tmp = TempDir::new("second");
    let prefix = common::unique_prefix("second");
    let args = [
        ("dir", tmp.dir()),
        ("prefix", &prefix),
        ("count", "5"),
        ("then", "hang"),
    ];
    let mut child = ChildProc::spawn("pub", &args);
    child.wait_for_line("SENT");
    let bus = bus_in(tmp.dir(), &prefix, false);
    assert!(matches!(
        bus.publisher::<u64>("t").create(),
        Err(CreateError::AlreadyExists { .. })
    ));
    let mut old = bus.subscriber::<u64>("t").history(2).open().expect("open");
    child.kill();
    let _ = child.finish();
    assert!(matches!(
        bus.publisher::<u32>("t").create(),
        Err(CreateError::Existing { .. })
    ));
    let mut publisher = bus.publisher::<u64>("t").create().expect("take over");
    for i in 5..8 {
        publisher.send(value(i)).unwrap();
    }
    drop(publisher);
    // A reader that was there reads on into the new session.
    assert_eq!(recv_all(&mut old), (values(3..8), RecvError::Disconnected));
    let mut all = bus
        .subscriber::<u64>("t")
        .from_start()
        .open()
        .expect("open");
    assert_eq!(recv_all(&mut all), (values(0..8), RecvError::Disconnected));
}

#[test]
fn a_full_disk_is_a_typed_error_that_loses_nothing() {
    // root only: a tmpfs of its own, so that the disk that fills is the test's.
    let tmpfs = match common::SmallTmpfs::mount("file-full", 256) {
        Ok(t) => t,
        Err(why) => return common::skip(&why),
    };
    let dir = tmpfs.dir.to_str().unwrap().to_string();
    let prefix = common::unique_prefix("full");
    let filler = tmpfs.dir.join("filler");
    let bus = bus_in(&dir, &prefix, false);
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    let mut subscriber = bus.subscriber::<u64>("t").open().expect("open");
    // Take the rest of the room.
    let _ = std::fs::write(&filler, vec![0u8; 256 * 1024]);
    let mut sent = 0u64;
    let refused = loop {
        match publisher.try_send(value(sent)) {
            Ok(()) => sent += 1,
            Err(TrySendError::Io(v, kind)) => break (v, kind),
            Err(e) => panic!("after {sent}: {e}"),
        }
        assert!(sent < 1_000_000, "the tmpfs never filled");
    };
    // The message whose write failed is kept: the one refused is the next.
    assert_eq!(refused, (value(sent), std::io::ErrorKind::StorageFull));
    assert!(matches!(
        publisher.send_timeout(value(sent), Duration::from_millis(1)),
        Err(SendTimeoutError::Io(_, std::io::ErrorKind::StorageFull))
    ));
    std::fs::remove_file(&filler).unwrap();
    publisher.send(value(sent)).expect("room again");
    drop(publisher);
    assert_eq!(
        recv_all(&mut subscriber),
        (values(0..sent + 1), RecvError::Disconnected)
    );
}
