//! The FIFO transport beyond the conformance suite (tests/conformance.rs runs its common checks
//! as `fifo:DIR`): one subscriber at a time, a subscriber that leaves and another that comes
//! (greeted on a fresh FIFO, never the rest of the old stream), the names' modes whatever the
//! umask, a killed publisher's names taken over and a live one's refused, and what is refused
//! at the names: a symbolic link, another kind of file, a wider mode, another owner.

mod common;

use common::{arg, arg_or, exit_child, say, ChildProc, CHILD_STALL};
use shmbus::segment::SegmentError;
use shmbus::transport::Fifo;
use shmbus::{Bus, CreateError, OpenError, RecvError};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a subscriber waits for its publisher.
const OPEN: Duration = Duration::from_secs(20);

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("shmbus-fifo-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }

    /// The topic's file named `suffix` (`fifo`, `fifo.lock`).
    fn file(&self, prefix: &str, suffix: &str) -> PathBuf {
        self.0.join(format!("{prefix}t.{suffix}"))
    }

    /// What the directory holds.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("list the directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bus(dir: &str, prefix: &str, group: bool) -> Bus {
    Bus::builder()
        .prefix(prefix)
        .group_access(group)
        .transport(Fifo::new(dir))
        .build()
        .expect("a bus")
}

fn child_bus() -> Bus {
    bus(&arg("dir"), &arg("prefix"), arg_or("group", "no") == "yes")
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "pub-hold" => child_publish_hold(),
        "sub-hold" => child_subscribe_hold(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Create the topic (under the umask `umask`, octal, if given), say READY, and wait to be
/// killed, sending nothing.
fn child_publish_hold() -> i32 {
    if let Ok(mask) = u32::from_str_radix(&arg_or("umask", ""), 8) {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
    }
    let bus = child_bus();
    let _publisher = bus.publisher::<u64>("t").create().expect("create");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    0
}

/// Open the topic's subscriber, say READY, and wait to be killed, reading nothing.
fn child_subscribe_hold() -> i32 {
    let bus = child_bus();
    let _subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    0
}

#[test]
fn a_second_subscriber_is_refused_while_the_first_holds_the_topic() {
    let tmp = TempDir::new("second-sub");
    let prefix = common::unique_prefix("fifo-second-sub");
    let bus = bus(tmp.path(), &prefix, false);
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    let args = [("dir", tmp.path()), ("prefix", prefix.as_str())];
    let mut child = ChildProc::spawn("sub-hold", &args);
    child.wait_for_line("READY");
    match bus.subscriber::<u64>("t").open() {
        Err(OpenError::TooManySubscribers { max: 1, pids, .. }) => {
            assert_eq!(pids, [child.pid()], "the holder is named")
        }
        other => panic!("a second subscriber: {:?}", other.map(|_| ())),
    }
    assert_eq!(publisher.subscribers(), 1);
    child.kill();
    let _ = child.finish();
    // The holder is gone: the next subscriber comes (the publisher's sends find the old one
    // gone on their way).
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    publisher.send_timeout(5, CHILD_STALL).expect("send");
    assert_eq!(subscriber.recv().map(|s| *s), Ok(5));
    // Within one process too.
    match bus.subscriber::<u64>("t").open() {
        Err(OpenError::TooManySubscribers { max: 1, pids, .. }) => {
            assert_eq!(pids, [std::process::id()])
        }
        other => panic!("a second subscriber: {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_subscriber_that_leaves_and_another_that_comes() {
    let tmp = TempDir::new("leaves");
    let prefix = common::unique_prefix("fifo-leaves");
    let bus = bus(tmp.path(), &prefix, false);
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");

    // One that leaves cleanly.
    let mut first = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    publisher.send_timeout(1, CHILD_STALL).expect("send");
    assert_eq!(first.recv().map(|s| (s.seq(), *s)), Ok((0, 1)));
    drop(first);
    let mut second = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    publisher.send_timeout(2, CHILD_STALL).expect("send");
    assert_eq!(second.recv().map(|s| (s.seq(), *s)), Ok((1, 2)));
    drop(second);

    // One that is killed with messages unread in its FIFO; the next one opens before the
    // publisher has written again, and is greeted, not handed the rest of the old stream.
    let args = [("dir", tmp.path()), ("prefix", prefix.as_str())];
    let mut child = ChildProc::spawn("sub-hold", &args);
    child.wait_for_line("READY");
    for i in 0..100 {
        publisher.send_timeout(100 + i, CHILD_STALL).expect("send");
    }
    child.kill();
    let _ = child.finish();
    let mut third = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    publisher.send_timeout(7, CHILD_STALL).expect("send");
    assert_eq!(third.recv().map(|s| (s.seq(), *s)), Ok((102, 7)));
    assert_eq!(third.try_recv().map(|s| s.map(|s| *s)), Ok(None));
    assert_eq!(publisher.subscribers(), 1);
    drop(third);
    // Noticed without a write (a hang-up), then with one (EPIPE).
    assert_eq!(publisher.subscribers(), 0);
    publisher.send_timeout(8, CHILD_STALL).expect("send");
    assert_eq!(publisher.subscribers(), 0);

    // The names go with the publisher.
    drop(publisher);
    assert_eq!(tmp.names(), Vec::<String>::new());
}

#[test]
fn the_names_have_the_topics_mode_whatever_the_umask() {
    let tmp = TempDir::new("umask");
    for (i, (umask, group, expected)) in [
        ("000", false, 0o600),
        ("077", true, 0o660),
        ("777", false, 0o600),
        ("022", true, 0o660),
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = common::unique_prefix(&format!("fifo-umask-{i}"));
        let group_arg = if group { "yes" } else { "no" };
        let args = [
            ("dir", tmp.path()),
            ("prefix", prefix.as_str()),
            ("umask", umask),
            ("group", group_arg),
        ];
        let mut child = ChildProc::spawn("pub-hold", &args);
        child.wait_for_line("READY");
        let fifo = tmp.file(&prefix, "fifo");
        for path in [&fifo, &tmp.file(&prefix, "fifo.lock")] {
            assert_eq!(
                mode_of(path),
                expected,
                "{} under umask {umask}",
                path.display()
            );
        }
        // The FIFO a subscriber's connection puts at the name is made alike.
        let before = std::fs::symlink_metadata(&fifo).expect("stat").ino();
        let bus = bus(tmp.path(), &prefix, group);
        let subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
        let after = std::fs::symlink_metadata(&fifo).expect("stat");
        assert_ne!(after.ino(), before, "a fresh FIFO at the name");
        assert_eq!(after.permissions().mode() & 0o7777, expected);
        drop(subscriber);
        child.kill();
        let _ = child.finish();
    }
}

#[test]
fn a_killed_publishers_names_are_taken_over_and_a_live_ones_refused() {
    let tmp = TempDir::new("stale");
    let prefix = common::unique_prefix("fifo-stale");
    let args = [("dir", tmp.path()), ("prefix", prefix.as_str())];
    let mut child = ChildProc::spawn("pub-hold", &args);
    child.wait_for_line("READY");
    let bus = bus(tmp.path(), &prefix, false);
    match bus.publisher::<u64>("t").create() {
        Err(CreateError::AlreadyExists { .. }) => {}
        other => panic!(
            "a second publisher of a live topic: {:?}",
            other.map(|_| ())
        ),
    }
    child.kill();
    let _ = child.finish();
    // Its names are left; a subscriber is told there is no topic, not kept waiting.
    assert!(tmp.file(&prefix, "fifo").exists());
    match bus.subscriber::<u64>("t").open() {
        Err(OpenError::NotFound { .. }) => {}
        other => panic!("a subscriber of a dead publisher: {:?}", other.map(|_| ())),
    }
    let mut publisher = bus.publisher::<u64>("t").create().expect("take over");
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    publisher.send_timeout(3, CHILD_STALL).expect("send");
    assert_eq!(subscriber.recv().map(|s| *s), Ok(3));
    drop(publisher);
    assert_eq!(subscriber.recv().err(), Some(RecvError::Disconnected));
}

#[test]
fn a_link_or_another_kind_of_file_at_a_name_is_refused() {
    let tmp = TempDir::new("refused");
    let prefix = common::unique_prefix("fifo-refused");
    let bus = bus(tmp.path(), &prefix, false);
    let fifo = tmp.file(&prefix, "fifo");
    let lock = tmp.file(&prefix, "fifo.lock");
    let target = tmp.0.join("target");
    std::fs::write(&target, b"keep me").expect("write the target");
    let create = || bus.publisher::<u64>("t").create().map(|_| ());

    // The publisher's names.
    std::os::unix::fs::symlink(&target, &fifo).expect("symlink");
    assert!(
        matches!(
            create(),
            Err(CreateError::Segment(SegmentError::Symlink(_)))
        ),
        "a link at the FIFO's name"
    );
    std::fs::remove_file(&fifo).expect("remove");
    std::fs::write(&fifo, b"a regular file").expect("write");
    match create() {
        Err(CreateError::Segment(SegmentError::WrongType {
            expected, found, ..
        })) => assert_eq!((expected, found), ("FIFO", "regular file")),
        other => panic!("a regular file at the FIFO's name: {other:?}"),
    }
    std::fs::remove_file(&fifo).expect("remove");
    std::os::unix::fs::symlink(&target, &lock).expect("symlink");
    assert!(
        matches!(
            create(),
            Err(CreateError::Segment(SegmentError::Symlink(_)))
        ),
        "a link at the lock's name"
    );
    std::fs::remove_file(&lock).expect("remove");
    // Nothing was followed, written or removed.
    assert_eq!(std::fs::read(&target).expect("read"), b"keep me");
    assert_eq!(tmp.names(), ["target"]);

    // The subscriber's, with a stand-in for a live publisher (its lock held by this test, so
    // that no greeter repairs the names meanwhile).
    let _live = hold_publisher_lock(&lock);
    let open = || bus.subscriber::<u64>("t").open().map(|_| ());
    let refused = |what: &str, check: fn(&SegmentError) -> bool| {
        let got = open();
        assert!(
            matches!(&got, Err(OpenError::Segment(e)) if check(e)),
            "{what}: {got:?}"
        );
    };
    std::os::unix::fs::symlink(&target, &fifo).expect("symlink");
    refused("a link at the FIFO's name", |e| {
        matches!(e, SegmentError::Symlink(_))
    });
    std::fs::remove_file(&fifo).expect("remove");
    std::fs::write(&fifo, b"a regular file").expect("write");
    refused("a regular file at the FIFO's name", |e| {
        matches!(e, SegmentError::WrongType { .. })
    });
    std::fs::remove_file(&fifo).expect("remove");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    refused("a FIFO others may read", |e| {
        matches!(e, SegmentError::BadMode { mode: 0o644, .. })
    });
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    refused("a lock file others may write", |e| {
        matches!(e, SegmentError::BadMode { mode: 0o666, .. })
    });
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    if rustix::process::geteuid().is_root() {
        let other = Some(rustix::process::Uid::from_raw(54321));
        rustix::fs::chown(&fifo, other, None).expect("chown");
        refused("another user's FIFO", |e| {
            matches!(e, SegmentError::NotOwner { owner: 54321, .. })
        });
    } else {
        common::skip("changing a file's owner needs root");
    }
    assert_eq!(std::fs::read(&target).expect("read"), b"keep me");
}

/// Make the topic's lock file at `path` and hold the publisher's lock on it (bytes 0..8, an
/// open-file-description lock), as a live publisher does, until the file is dropped.
fn hold_publisher_lock(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create the lock file");
    // SAFETY: `flock` is a C struct of integers, for which all zeros is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_len = 8;
    // SAFETY: `F_OFD_SETLK` reads the `flock` the pointer points at during the call; the
    // descriptor is open (`file` is borrowed).
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(r, 0, "lock: {}", std::io::Error::last_os_error());
    file
}

#[test]
fn a_fifo_removed_under_a_live_publisher_is_put_back() {
    let tmp = TempDir::new("removed");
    let prefix = common::unique_prefix("fifo-removed");
    let bus = bus(tmp.path(), &prefix, false);
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    let fifo = tmp.file(&prefix, "fifo");
    let aside = tmp.0.join("aside");
    // Removed (a cleaner of old files), or renamed away: the publisher makes it again.
    for moved in [false, true] {
        if moved {
            std::fs::rename(&fifo, &aside).expect("rename");
        } else {
            std::fs::remove_file(&fifo).expect("remove");
        }
        let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
        publisher.send_timeout(9, CHILD_STALL).expect("send");
        assert_eq!(subscriber.recv().map(|s| *s), Ok(9));
    }
    drop(publisher);
    // What was renamed away is not the publisher's to remove.
    assert_eq!(tmp.names(), ["aside"]);
}
