//! What a topic holds is given back: 10,000 cycles of creating a topic, opening a subscriber
//! (and a second publisher), sending, and dropping them all leave this process with the file
//! descriptors and mappings it started with, and `/dev/shm` as it was. The only test of its
//! binary: another test's thread would change the process's counts.

mod common;

use common::{segments_with_prefix, unique_prefix, Cleanup};
use shmbus::{Bus, WaitStrategy};

const CYCLES: u32 = 10_000;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn ten_thousand_open_close_cycles_leave_the_counts_where_they_started() {
    let prefix = unique_prefix("cycles");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let cycle = |i: u32| {
        // Spinning strategies: a sleeping one pays a process-wide barrier per attach.
        let mut publisher = bus
            .publisher::<u64>("t")
            .capacity(16)
            .max_publishers(2)
            .wait(WaitStrategy::Spin)
            .create()
            .unwrap();
        let mut second = bus
            .publisher::<u64>("t")
            .wait(WaitStrategy::Spin)
            .attach()
            .unwrap();
        let mut subscriber = bus
            .subscriber::<u64>("t")
            .wait(WaitStrategy::Spin)
            .open()
            .unwrap();
        publisher.try_send(i as u64).unwrap();
        second.try_send(i as u64 + 1).unwrap();
        assert!(subscriber.try_recv().unwrap().is_some());
        let _ = bus.topic_info("t").unwrap();
    };
    // One cycle first: whatever is opened once for good (the allocator's arenas, /proc) is.
    cycle(0);
    let (fds, maps) = (open_fds(), mappings());
    for i in 1..=CYCLES {
        cycle(i);
    }
    assert_eq!(open_fds(), fds, "file descriptors after {CYCLES} cycles");
    assert_eq!(mappings(), maps, "mappings after {CYCLES} cycles");
    assert!(
        segments_with_prefix(&prefix).is_empty(),
        "segments left behind"
    );
}
