//! The POSIX message-queue transport's own checks, beyond the conformance suite's: sizes and
//! limits from the system (refused at create, with the figures), one subscriber (a second
//! refused, with the first one's pid; the next after it gone greeted afresh), the queues' mode
//! whatever the umask, a killed publisher's queues taken over on create (a live one's
//! refused), a subscriber that left or died no longer waited for, knocks that are not
//! knocks ignored, and nothing left in the message-queue namespace after any of it.
//!
//! Publishers and subscribers that must die are processes of their own, killed with SIGKILL.
//! The namespace is listed through a private mount of the mqueue filesystem where this
//! process may mount one (root); elsewhere the names each check used are looked up.

mod common;

use common::{arg, arg_or, exit_child, say, ChildProc, CHILD_STALL};
use nix::mqueue::{mq_open, mq_send, MQ_OFlag};
use shmbus::transport::frame::frame_len;
use shmbus::transport::{MessageQueue, QueueLimit};
use shmbus::{Bus, CreateError, OpenError, Policy, RecvError, TrySendError};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long a subscriber waits for a publisher process to come up.
const OPEN: Duration = Duration::from_secs(20);

fn bus(prefix: &str, group: bool) -> Bus {
    Bus::builder()
        .prefix(prefix)
        .group_access(group)
        .transport(MessageQueue::new())
        .build()
        .expect("a bus")
}

/// A value of `/proc/sys/fs/mqueue/<name>`, or Linux's default.
fn system_limit(name: &str, default: u64) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/fs/mqueue/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// A prefix of the test's own; when dropped, the queues of `topics` that a killed process
/// left are removed, and then the namespace is checked for anything under the prefix.
struct Queues {
    prefix: String,
    topics: &'static [&'static str],
}

impl Queues {
    fn new(test: &str, topics: &'static [&'static str]) -> Self {
        Self {
            prefix: common::unique_prefix(test),
            topics,
        }
    }

    /// What the namespace holds under the prefix, listed if a mount can be had, else the
    /// names of `topics` looked up.
    fn left(&self) -> Vec<String> {
        if let Some(names) = list_namespace() {
            return names
                .into_iter()
                .filter(|n| n.starts_with(&self.prefix))
                .collect();
        }
        let mut left = Vec::new();
        for topic in self.topics {
            for name in [
                format!("/{}{topic}", self.prefix),
                format!("/{}{topic}:join", self.prefix),
            ] {
                if mq_open(
                    name.as_str(),
                    MQ_OFlag::O_RDONLY,
                    nix::sys::stat::Mode::empty(),
                    None,
                )
                .map(|q| drop(owned(q)))
                .is_ok()
                {
                    left.push(name);
                }
            }
        }
        left
    }

    /// Assert that nothing is left under the prefix (the test's own publishers and subscribers
    /// are gone by now).
    fn assert_none_left(&self) {
        let left = self.left();
        assert!(left.is_empty(), "left in the namespace: {left:?}");
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        for topic in self.topics {
            let _ = MessageQueue::remove_stale(&self.prefix, topic);
        }
    }
}

/// A queue descriptor as an owned descriptor (nix's does not close itself).
fn owned(q: nix::mqueue::MqdT) -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor comes from `mq_open` and is handed over whole: nothing else
    // closes it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(q.into_raw_fd()) }
}

/// The names in the message-queue namespace, through a mount of the mqueue filesystem of this
/// test's own (unmounted at once); `None` where it cannot be mounted (not root).
fn list_namespace() -> Option<Vec<String>> {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "shmbus-mqueue-ns-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).ok()?;
    let mounted = Command::new("mount")
        .args(["-t", "mqueue", "shmbus-test"])
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let names = mounted.then(|| {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    if mounted {
        let _ = Command::new("umount").arg(&dir).status();
    }
    let _ = std::fs::remove_dir(&dir);
    names
}

/// The permission bits of queue `name`, from `fstat` on a descriptor of it.
fn mode_of(name: &str) -> u32 {
    let q = mq_open(
        name,
        MQ_OFlag::O_RDONLY,
        nix::sys::stat::Mode::empty(),
        None,
    )
    .unwrap_or_else(|e| panic!("open {name}: {e}"));
    let q = owned(q);
    rustix::fs::fstat(q.as_fd()).expect("fstat").st_mode & 0o7777
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "pub" => child_publish(),
        "sub-idle" => child_subscribe_idle(),
        "limits" => child_limits(),
        "queues-max" => child_queues_max(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Create topic `t` under umask `umask` (octal), with group access if `group=yes`; say READY
/// and wait to be killed.
fn child_publish() -> i32 {
    let umask = u32::from_str_radix(&arg_or("umask", "022"), 8).expect("an octal umask");
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    let bus = bus(&arg("prefix"), arg_or("group", "no") == "yes");
    let _publisher = bus
        .publisher::<u64>("t")
        .create()
        .expect("create the topic");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    0
}

/// Open a subscriber of `t` and never read; wait to be killed.
fn child_subscribe_idle() -> i32 {
    let bus = bus(&arg("prefix"), false);
    let _subscriber = bus
        .subscriber::<u64>("t")
        .open_timeout(OPEN)
        .expect("open the topic");
    say("READY");
    std::thread::sleep(CHILD_STALL);
    0
}

/// Under an `RLIMIT_MSGQUEUE` of `rlimit` bytes, create topics until one is refused; print
/// how, and remove what was made.
fn child_limits() -> i32 {
    let rlimit: u64 = arg("rlimit").parse().expect("a number");
    rustix::process::setrlimit(
        rustix::process::Resource::Msgqueue,
        rustix::process::Rlimit {
            current: Some(rlimit),
            maximum: rustix::process::getrlimit(rustix::process::Resource::Msgqueue).maximum,
        },
    )
    .expect("lower RLIMIT_MSGQUEUE");
    let bus = bus(&arg("prefix"), false);
    let mut made = Vec::new();
    let refused = loop {
        if made.len() >= 64 {
            break "none".to_string();
        }
        match bus
            .publisher::<[u8]>(&format!("t{}", made.len()))
            .slot_size(1000)
            .create()
        {
            Ok(p) => made.push(p),
            Err(CreateError::LimitReached {
                limit: QueueLimit::MsgQueueBytes { limit, needed },
                ..
            }) => break format!("rlimit limit={limit} needed={needed}"),
            Err(e) => break format!("other {e}"),
        }
    };
    say(&format!("RESULT made={} {refused}", made.len()));
    drop(made);
    0
}

/// In an IPC namespace of its own (its queues go with it), whose `queues_max` is 3: create
/// two topics (two queues each); print how the second was refused. Says `skip` where the
/// namespace cannot be had or set (not privileged).
fn child_queues_max() -> i32 {
    // SAFETY: only the IPC namespace is unshared, not the descriptor table (the case the
    // function's contract is about); the threads started after this inherit it.
    let unshared = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWIPC) };
    if let Err(e) = unshared {
        say(&format!("RESULT skip unshare:{e}"));
        return 0;
    }
    if let Err(e) = std::fs::write("/proc/sys/fs/mqueue/queues_max", "3") {
        say(&format!("RESULT skip queues_max:{e}"));
        return 0;
    }
    let bus = bus(&arg("prefix"), false);
    let first = bus.publisher::<u64>("a").create().expect("the first topic");
    let how = match bus.publisher::<u64>("b").create() {
        Ok(_) => "created".to_string(),
        Err(CreateError::LimitReached {
            limit: QueueLimit::QueuesMax { max },
            ..
        }) => format!("queues_max max={max}"),
        Err(e) => format!("other {e}"),
    };
    drop(first);
    say(&format!("RESULT {how}"));
    0
}

#[test]
fn a_queue_beyond_the_systems_queues_max_is_refused_naming_the_limit() {
    let queues = Queues::new("mq-queues-max", &["a", "b"]);
    let mut child = ChildProc::spawn("queues-max", &[("prefix", &queues.prefix)]);
    child.wait_for_line("RESULT");
    let finished = child.finish();
    finished.assert_success();
    let result = finished.result();
    if let Some(why) = result
        .keys()
        .find(|k| k.starts_with("unshare:") || k.starts_with("queues_max:"))
    {
        common::skip(&format!(
            "no IPC namespace of its own to set queues_max in: {why}"
        ));
        return;
    }
    assert!(
        result.contains_key("queues_max"),
        "{}",
        finished.result_line()
    );
    assert_eq!(result["max"], "3", "{}", finished.result_line());
    // Its namespace went with it: nothing in this one.
    queues.assert_none_left();
}

#[test]
fn a_message_larger_than_the_system_limit_is_refused_at_create_with_both_sizes() {
    let queues = Queues::new("mq-too-large", &["big", "max"]);
    let bus = bus(&queues.prefix, false);
    let msgsize_max = system_limit("msgsize_max", 8192);
    let slot = usize::try_from(msgsize_max).expect("a size");
    match bus.publisher::<[u8]>("big").slot_size(slot as u64).create() {
        Err(e @ CreateError::MessageTooLarge { .. }) => {
            let text = e.to_string();
            let CreateError::MessageTooLarge { needed, limit, .. } = e else {
                unreachable!()
            };
            assert_eq!((needed, limit), (frame_len(slot) as u64, msgsize_max));
            assert!(
                text.contains(&needed.to_string()) && text.contains(&limit.to_string()),
                "both sizes in {text:?}"
            );
        }
        other => panic!("a {slot}-byte slot: {:?}", other.map(|_| ())),
    }
    // The largest slot that fits, framed, takes the limit to the byte, and carries a message
    // that long.
    let largest = (msgsize_max as usize - frame_len(0)) & !7;
    let mut publisher = bus
        .publisher::<[u8]>("max")
        .slot_size(largest as u64)
        .create()
        .expect("the largest slot that fits");
    let mut subscriber = bus.subscriber::<[u8]>("max").open().expect("open");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    let mut loan = publisher
        .loan_bytes(largest, Some(CHILD_STALL))
        .expect("a loan");
    loan.fill(0x5a);
    loan.send();
    let sample = subscriber
        .recv_timeout(CHILD_STALL)
        .expect("receive")
        .expect("a message");
    assert_eq!(sample.len(), largest);
    assert!(sample.iter().all(|&b| b == 0x5a));
    drop(sample);
    drop((subscriber, publisher));
    queues.assert_none_left();
}

#[test]
fn a_second_subscriber_is_refused_and_the_next_one_after_the_first_died_starts_afresh() {
    let queues = Queues::new("mq-second", &["t"]);
    let bus = bus(&queues.prefix, false);
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    let mut child = ChildProc::spawn("sub-idle", &[("prefix", &queues.prefix)]);
    child.wait_for_line("READY");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    match bus.subscriber::<u64>("t").open() {
        Err(OpenError::TooManySubscribers { max: 1, pids, .. }) => {
            assert_eq!(pids, vec![child.pid()])
        }
        other => panic!("a second subscriber: {:?}", other.map(|_| ())),
    }
    // Messages the first one never read, then it dies holding them.
    for i in 0..3 {
        publisher
            .send_timeout(i, CHILD_STALL)
            .expect("send to the first");
    }
    child.kill();
    let _ = child.finish();
    // The next subscriber skips what was left for the first one, and reads from its own
    // greeting on.
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .open()
        .expect("open after it died");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    for i in 100..120 {
        publisher.send_timeout(i, CHILD_STALL).expect("send");
        let sample = subscriber
            .recv_timeout(CHILD_STALL)
            .expect("receive")
            .expect("a message");
        assert_eq!(*sample, i);
    }
    // In one process too: a second description of the queue is refused its seat.
    match bus.subscriber::<u64>("t").open() {
        Err(OpenError::TooManySubscribers { max: 1, pids, .. }) => {
            assert_eq!(pids, vec![std::process::id()])
        }
        other => panic!("a second subscriber here: {:?}", other.map(|_| ())),
    }
    drop(subscriber);
    drop(publisher);
    queues.assert_none_left();
}

#[test]
fn the_queues_mode_is_exact_whatever_the_umask() {
    for (umask, group, expected) in [
        ("777", "no", 0o600),
        ("077", "yes", 0o660),
        ("000", "no", 0o600),
        ("000", "yes", 0o660),
    ] {
        let queues = Queues::new("mq-mode", &["t"]);
        let args = [
            ("prefix", queues.prefix.as_str()),
            ("umask", umask),
            ("group", group),
        ];
        let mut child = ChildProc::spawn("pub", &args);
        child.wait_for_line("READY");
        for name in [
            format!("/{}t", queues.prefix),
            format!("/{}t:join", queues.prefix),
        ] {
            assert_eq!(
                mode_of(&name),
                expected,
                "{name} under umask {umask}, group {group}"
            );
        }
        child.kill();
        let _ = child.finish();
        assert!(
            MessageQueue::remove_stale(&queues.prefix, "t").expect("remove"),
            "a killed publisher's queues are stale"
        );
        queues.assert_none_left();
    }
}

#[test]
fn a_killed_publishers_queues_are_taken_over_on_create_and_a_live_ones_refused() {
    let queues = Queues::new("mq-takeover", &["t"]);
    let mut child = ChildProc::spawn("pub", &[("prefix", &queues.prefix)]);
    child.wait_for_line("READY");
    let bus = bus(&queues.prefix, false);
    match bus.publisher::<u64>("t").create() {
        Err(CreateError::AlreadyExists { .. }) => {}
        other => panic!("a live publisher's topic: {:?}", other.map(|_| ())),
    }
    assert!(!MessageQueue::remove_stale(&queues.prefix, "t").expect("look"));
    child.kill();
    let _ = child.finish();
    let mut publisher = bus
        .publisher::<u64>("t")
        .create()
        .expect("take the dead one's queues over");
    let mut subscriber = bus.subscriber::<u64>("t").open().expect("open");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    publisher.send_timeout(7, CHILD_STALL).expect("send");
    let sample = subscriber
        .recv_timeout(CHILD_STALL)
        .expect("receive")
        .expect("a message");
    assert_eq!(*sample, 7);
    drop(sample);
    drop(publisher);
    // A clean close reaches the subscriber, and the names are gone with the publisher.
    assert_eq!(
        subscriber.recv_timeout(CHILD_STALL).err(),
        Some(RecvError::Disconnected)
    );
    queues.assert_none_left();
}

#[test]
fn a_subscriber_that_outlived_its_killed_publisher_removes_its_queues() {
    let queues = Queues::new("mq-outlived", &["t"]);
    let mut child = ChildProc::spawn("pub", &[("prefix", &queues.prefix)]);
    child.wait_for_line("READY");
    let bus = bus(&queues.prefix, false);
    let mut subscriber = bus.subscriber::<u64>("t").open_timeout(OPEN).expect("open");
    let pid = child.pid();
    child.kill();
    let _ = child.finish();
    assert_eq!(
        subscriber.recv_timeout(CHILD_STALL).err(),
        Some(RecvError::PublisherGone { pid })
    );
    drop(subscriber);
    // Nothing to remove: the subscriber did it (checked with the names left before `Queues`
    // is dropped).
    queues.assert_none_left();
}

#[test]
fn a_block_publisher_stops_waiting_for_a_subscriber_that_left() {
    let queues = Queues::new("mq-left", &["t"]);
    let bus = bus(&queues.prefix, false);
    let mut publisher = bus
        .publisher::<u64>("t")
        .policy(Policy::Block)
        .create()
        .expect("create");
    let subscriber = bus.subscriber::<u64>("t").open().expect("open");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    let mut sent = 0u64;
    loop {
        match publisher.try_send(sent) {
            Ok(()) => sent += 1,
            Err(TrySendError::Full(_)) => break,
            Err(e) => panic!("after {sent}: {e}"),
        }
        assert!(sent < 1_000_000, "the queue never filled");
    }
    // The subscriber goes (its process lives on): the publisher's waits end rather than run
    // to their timeout, and what it sends goes nowhere.
    drop(subscriber);
    for i in 0..100 {
        publisher
            .send_timeout(sent + i, CHILD_STALL)
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
    }
    assert_eq!(publisher.subscribers(), 0);
    drop(publisher);
    queues.assert_none_left();
}

#[test]
fn knocks_that_are_not_knocks_are_ignored() {
    let queues = Queues::new("mq-bad-knock", &["t"]);
    let bus = bus(&queues.prefix, false);
    let mut publisher = bus.publisher::<u64>("t").create().expect("create");
    let join = format!("/{}t:join", queues.prefix);
    let q = mq_open(
        join.as_str(),
        MQ_OFlag::O_WRONLY | MQ_OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
        None,
    )
    .expect("open the join queue");
    // A knock's length of garbage, a short one, and a well-formed knock from a process that
    // holds no seat.
    let mut forged = [0u8; 32];
    forged[..4].copy_from_slice(b"SHBJ");
    forged[4] = 1;
    forged[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    for junk in [&[0xA5u8; 32][..], &[1, 2, 3][..], &forged[..]] {
        mq_send(&q, junk, 0).expect("knock");
    }
    drop(owned(q));
    let mut subscriber = bus.subscriber::<u64>("t").open().expect("open");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    publisher.send_timeout(9, CHILD_STALL).expect("send");
    let sample = subscriber
        .recv_timeout(CHILD_STALL)
        .expect("receive")
        .expect("a message");
    assert_eq!(*sample, 9);
    drop(sample);
    drop((subscriber, publisher));
    queues.assert_none_left();
}

#[test]
fn a_queue_the_users_rlimit_cannot_hold_is_refused_naming_the_limit() {
    // 1000 bytes hold not one message of a 1000-byte slot: refused before `mq_open`. 16 KiB
    // hold a few such queues: the kernel refuses one past them (counting the user's other
    // queues too).
    for (rlimit, made) in [(1000u64, 0..=0), (16 * 1024, 0..=64)] {
        let queues = Queues::new("mq-rlimit", &[]);
        let rlimit_arg = rlimit.to_string();
        let mut child = ChildProc::spawn(
            "limits",
            &[("prefix", &queues.prefix), ("rlimit", &rlimit_arg)],
        );
        let finished = {
            child.wait_for_line("RESULT");
            child.finish()
        };
        finished.assert_success();
        let result = finished.result();
        assert!(
            result.contains_key("rlimit"),
            "refused for another reason: {}",
            finished.result_line()
        );
        assert_eq!(result["limit"], rlimit_arg, "{}", finished.result_line());
        assert!(
            made.contains(&finished.num("made")),
            "{}",
            finished.result_line()
        );
        queues.assert_none_left();
    }
}
