//! The portable backend (feature `portable`) beyond the conformance suite: what it says it
//! is, its segments checked like native ones (and told apart from them), the stale name of a
//! killed publisher taken over and a live one refused, and the event of a subscriber killed
//! in its sleep made new for the next one (a condition variable whose waiter was killed can
//! block a later wake-up for good: the next owner must not inherit it).
//!
//! Without the feature, only the check that the `portable` spec asks for it runs.

#[cfg(not(feature = "portable"))]
#[test]
fn the_portable_spec_asks_for_the_feature() {
    let e = shmbus::transport::parse("portable").expect_err("not in this build");
    assert!(e.contains("--features portable"), "{e}");
}

#[cfg(feature = "portable")]
mod common;

/// The children's entry (`common::ChildProc` runs it by this exact name).
#[cfg(feature = "portable")]
#[test]
fn child_entry() {
    portable::child_entry()
}

#[cfg(feature = "portable")]
mod portable {
    use super::common::{self, arg, exit_child, say, ChildProc, Cleanup, CHILD_STALL};
    use shmbus::transport::{Portable, Shm};
    use shmbus::{Bus, CreateError, OpenError, WaitStrategy};
    use std::time::Duration;

    /// How long the parent waits for a child to open or create a topic, and for a wake-up
    /// that must come (a watchdog: a lost or blocked one fails the test instead of hanging it).
    const WATCHDOG: Duration = Duration::from_secs(60);

    fn portable_bus(prefix: &str) -> Bus {
        Bus::builder()
            .prefix(prefix)
            .transport(Portable::new())
            .build()
            .expect("a portable bus")
    }

    fn native_bus(prefix: &str) -> Bus {
        Bus::builder()
            .prefix(prefix)
            .transport(Shm::new())
            .build()
            .expect("a native bus")
    }

    pub(super) fn child_entry() {
        let Some(role) = common::child_role() else {
            return;
        };
        let code = match role.as_str() {
            "create-and-hang" => child_create_and_hang(),
            "sleep-in-recv" => child_sleep_in_recv(),
            other => panic!("unknown child role {other}"),
        };
        exit_child(code)
    }

    /// Create topic `t` and wait to be killed.
    fn child_create_and_hang() -> i32 {
        let bus = portable_bus(&arg("prefix"));
        let _publisher = bus.publisher::<u64>("t").create().expect("create");
        say("READY");
        std::thread::sleep(CHILD_STALL);
        0
    }

    /// Subscribe to `t` with a wait that sleeps at once, and sleep in `recv` until killed.
    fn child_sleep_in_recv() -> i32 {
        let bus = portable_bus(&arg("prefix"));
        let mut subscriber = bus
            .subscriber::<u64>("t")
            .wait(WaitStrategy::Futex { spin: 0 })
            .open_timeout(WATCHDOG)
            .expect("open");
        say("READY");
        let _ = subscriber.recv_timeout(CHILD_STALL).map(|s| s.map(|s| *s));
        0
    }

    #[test]
    fn a_portable_topic_says_so_and_carries_messages() {
        let prefix = common::unique_prefix("portable-says");
        let _cleanup = Cleanup::new(&prefix);
        let bus = portable_bus(&prefix);
        assert_eq!(bus.transport(), "portable");
        let mut publisher = bus.publisher::<u64>("t").capacity(8).create().unwrap();
        let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
        assert_eq!(publisher.transport(), "portable");
        assert_eq!(subscriber.transport(), "portable");
        for i in 0..100u64 {
            publisher.send(i).unwrap();
            assert_eq!(*subscriber.recv().unwrap(), i);
        }
        let topics = bus.topics().unwrap();
        let info = topics[0].as_ref().expect("described");
        assert_eq!((info.topic.as_str(), info.published), ("t", 100));
        drop(publisher);
        assert_eq!(
            subscriber.recv().err(),
            Some(shmbus::RecvError::Disconnected)
        );
        drop(subscriber);
        assert_eq!(common::segments_with_prefix(&prefix), Vec::<String>::new());
    }

    #[test]
    fn native_and_portable_segments_refuse_each_other() {
        let prefix = common::unique_prefix("portable-apart");
        let _cleanup = Cleanup::new(&prefix);
        let (native, portable) = (native_bus(&prefix), portable_bus(&prefix));
        let _n = native.publisher::<u64>("n").create().unwrap();
        let _p = portable.publisher::<u64>("p").create().unwrap();
        for (bus, topic) in [(&portable, "n"), (&native, "p")] {
            match bus.subscriber::<u64>(topic).open() {
                Err(OpenError::Corrupt { .. }) => {}
                other => panic!("{topic} through {}: {:?}", bus.transport(), other.err()),
            }
        }
        // Each name is taken for the other backend too.
        assert!(matches!(
            portable.publisher::<u64>("n").create(),
            Err(CreateError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn group_access_is_refused() {
        let prefix = common::unique_prefix("portable-group");
        let _cleanup = Cleanup::new(&prefix);
        let bus = Bus::builder()
            .prefix(&prefix)
            .group_access(true)
            .transport(Portable::new())
            .build()
            .unwrap();
        match bus.publisher::<u64>("t").create() {
            Err(CreateError::Unsupported { transport, .. }) => assert_eq!(transport, "portable"),
            other => panic!("{:?}", other.err()),
        }
        assert_eq!(common::segments_with_prefix(&prefix), Vec::<String>::new());
    }

    /// The trailer is checked like every other section: its place, its size, its header.
    #[test]
    fn a_damaged_trailer_is_refused() {
        let prefix = common::unique_prefix("portable-trailer");
        let _cleanup = Cleanup::new(&prefix);
        let bus = portable_bus(&prefix);
        let _publisher = bus
            .publisher::<u64>("t")
            .capacity(4)
            .max_subscribers(2)
            .create()
            .unwrap();
        let path = format!("/dev/shm/{prefix}t");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let len = file.metadata().unwrap().len();
        // SAFETY: a test's own segment; the publisher writes only its control block and slots
        // meanwhile, never the trailer written here (nobody sleeps).
        let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
        // The trailer's first bytes: its magic, 64-aligned after the ring part.
        let trailer = (0..len as usize - 8)
            .step_by(64)
            .find(|&at| map[at..at + 8] == *b"SHMBEVT\x01")
            .expect("a trailer with its magic");
        let refused = |what: &str| match bus.subscriber::<u64>("t").open() {
            Err(OpenError::Corrupt { .. }) => {}
            other => panic!("{what}: {:?}", other.err()),
        };
        map[trailer] ^= 0xff;
        refused("a trailer without its magic");
        map[trailer] ^= 0xff;
        // The reader slot count (bytes 12..16 of the trailer's header).
        map[trailer + 12] = 3;
        refused("a trailer with another table size");
        map[trailer + 12] = 2;
        assert!(bus.subscriber::<u64>("t").open().is_ok(), "restored");
        drop(map);
        // A segment that does not end where its trailer does.
        file.set_len(len + 4096).unwrap();
        refused("a segment longer than its trailer");
    }

    /// A publisher killed by SIGKILL leaves its name: the next publisher takes it over (from
    /// the identities in the segment: no lock to ask), while a live one's is refused.
    #[test]
    fn a_killed_publishers_name_is_taken_over_and_a_live_ones_refused() {
        let prefix = common::unique_prefix("portable-stale");
        let _cleanup = Cleanup::new(&prefix);
        let bus = portable_bus(&prefix);
        let mut child = ChildProc::spawn("create-and-hang", &[("prefix", &prefix)]);
        child.wait_for_line("READY");
        assert!(matches!(
            bus.publisher::<u64>("t").create(),
            Err(CreateError::AlreadyExists { .. })
        ));
        assert_eq!(bus.clean(false).unwrap(), Vec::<String>::new(), "alive");
        child.kill();
        let _ = child.finish();
        let mut publisher = bus.publisher::<u64>("t").create().expect("taken over");
        let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
        publisher.send(5).unwrap();
        assert_eq!(*subscriber.recv().unwrap(), 5);
    }

    /// A subscriber killed while asleep on its event; the next subscriber takes its table
    /// entry (the table has one) and sleeps on the same slot; every message still wakes it.
    /// Without the slot's event made new, glibc's condition variable (2.36 here) keeps the
    /// dead waiter's reference and the publisher's next wake-up waits for it forever.
    #[test]
    fn a_subscriber_killed_asleep_leaves_no_trap_for_the_next() {
        let prefix = common::unique_prefix("portable-killed-asleep");
        let _cleanup = Cleanup::new(&prefix);
        let bus = portable_bus(&prefix);
        let mut publisher = bus
            .publisher::<u64>("t")
            .max_subscribers(1)
            .create()
            .unwrap();
        let mut child = ChildProc::spawn("sleep-in-recv", &[("prefix", &prefix)]);
        child.wait_for_line("READY");
        // Time to fall asleep in `recv` (if it has not, the test is weaker, not wrong).
        std::thread::sleep(Duration::from_millis(300));
        child.kill();
        let _ = child.finish();
        // Wakes the dead sleeper's slot once (that one goes through).
        publisher.send(0).unwrap();
        let mut subscriber = bus
            .subscriber::<u64>("t")
            .wait(WaitStrategy::Futex { spin: 0 })
            .open()
            .expect("the dead subscriber's entry");
        // The subscriber sleeps in its own thread while the publisher sends, each message
        // after a pause long enough for it to fall asleep; this thread only watches.
        let (tx, rx) = std::sync::mpsc::channel();
        let receiver = std::thread::spawn(move || {
            for _ in 1..=20u64 {
                let got = subscriber.recv_timeout(WATCHDOG).map(|s| s.map(|s| *s));
                tx.send(got).unwrap();
            }
        });
        let sender = std::thread::spawn(move || {
            for i in 1..=20u64 {
                std::thread::sleep(Duration::from_millis(20));
                publisher.send(i).unwrap();
            }
        });
        for i in 1..=20u64 {
            let got = rx.recv_timeout(WATCHDOG).unwrap_or_else(|_| {
                panic!("message {i} never arrived: the publisher's wake-up is stuck")
            });
            assert_eq!(got, Ok(Some(i)));
        }
        receiver.join().unwrap();
        sender.join().unwrap();
    }
}
