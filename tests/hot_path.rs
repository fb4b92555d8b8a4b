//! The publish and receive paths make no allocation and no syscall in polling mode, and a
//! publisher makes no wake syscall while its subscriber is awake.
//!
//! Allocations are counted by this binary's global allocator, per thread, while a test's loop
//! runs. Syscalls of the wait layer are counted by `shmbus::wait::stats()`; every other syscall
//! is looked for with `strace`, around a polling loop run in a child process between two
//! marker syscalls.

mod common;

use bytemuck::{Pod, Zeroable};
use common::{exit_child, lock, say, ChildProc, Cleanup};
use shmbus::{Bus, WaitStrategy};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;

/// Iterations of each measured loop.
const ITERATIONS: u64 = 100_000;

// ---------------------------------------------------------------------------------------------
// A counting allocator.

/// Counts the allocator calls (allocations, reallocations and frees) of a thread while that
/// thread has counting switched on; forwards everything to the system allocator.
struct CountingAlloc;

thread_local! {
    // `const` initialisers without destructors: reaching them allocates nothing.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static CALLS: Cell<u64> = const { Cell::new(0) };
}

fn note_call() {
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = CALLS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees are ours; the counting touches only thread-locals that never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_call();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_call();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_call();
        // SAFETY: forwarded unchanged; `ptr` came from `System` through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_call();
        // SAFETY: forwarded unchanged; `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Run `f` and return how many allocator calls this thread made meanwhile.
fn allocator_calls<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = CALLS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, CALLS.with(Cell::get) - before)
}

/// `wait::stats()` counts for the whole process: the tests of this file run one at a time, so
/// that no other test's sleeps and wakes land in a measured window.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
struct Tick {
    seq: u64,
    price: u64,
    size: u32,
    venue: u32,
}

fn tick(seq: u64) -> Tick {
    Tick {
        seq,
        price: seq.wrapping_mul(31),
        size: seq as u32,
        venue: 7,
    }
}

fn bus(test: &str) -> (Bus, Cleanup) {
    let (bus, cleanup, _) = bus_and_prefix(test);
    (bus, cleanup)
}

/// The same, with the bus's prefix, for a child process to open the same bus.
fn bus_and_prefix(test: &str) -> (Bus, Cleanup, String) {
    let prefix = common::unique_prefix(test);
    let cleanup = Cleanup::new(&prefix);
    (
        Bus::builder().prefix(&prefix).build().unwrap(),
        cleanup,
        prefix,
    )
}

#[test]
fn the_counting_allocator_sees_allocations() {
    // Guards the tests below against passing because nothing is counted.
    let (v, calls) = allocator_calls(|| Vec::<u64>::with_capacity(16));
    drop(v);
    assert!(calls >= 1, "{calls}");
}

// ---------------------------------------------------------------------------------------------
// In process: allocator calls and wait-layer syscalls.

#[test]
fn polling_publish_and_receive_neither_allocate_nor_make_syscalls() {
    let _serial = lock(&SERIAL);
    let (bus, _cleanup) = bus("polling");
    let mut publisher = bus
        .publisher::<Tick>("t")
        .capacity(64)
        .wait(WaitStrategy::Spin)
        .create()
        .unwrap();
    let mut subscriber = bus
        .subscriber::<Tick>("t")
        .wait(WaitStrategy::Spin)
        .open()
        .unwrap();
    let stats = shmbus::wait::stats();

    // One message at a time: loan, write in place, send; receive, read in place, release.
    let (sum, calls) = allocator_calls(|| {
        let mut sum = 0u64;
        for seq in 0..ITERATIONS {
            let mut loan = publisher.try_loan().expect("a free slot");
            loan.seq = seq;
            loan.price = seq.wrapping_mul(31);
            loan.size = seq as u32;
            loan.venue = 7;
            loan.send();
            let sample = subscriber.try_recv().expect("no error").expect("a message");
            assert_eq!(sample.seq(), seq);
            sum = sum.wrapping_add(sample.price);
        }
        sum
    });
    assert_eq!(calls, 0, "allocator calls on the hot path");
    assert_eq!(
        sum,
        (0..ITERATIONS).fold(0u64, |s, q| s.wrapping_add(q.wrapping_mul(31)))
    );

    // In bursts that fill the ring: `try_send` up to `Full` (the producer reloads the consumer's
    // cursor), then drain with `try_recv` up to empty.
    let ((), calls) = allocator_calls(|| {
        let mut next_in = publisher.next_seq();
        let mut next_out = next_in;
        while next_out < 2 * ITERATIONS {
            while publisher.try_send(tick(next_in)).is_ok() {
                next_in += 1;
            }
            while let Some(sample) = subscriber.try_recv().expect("no error") {
                assert_eq!(*sample, tick(next_out));
                next_out += 1;
            }
        }
    });
    assert_eq!(calls, 0, "allocator calls on the hot path");
    assert_eq!(shmbus::wait::stats(), stats, "wait-layer syscalls");
}

#[test]
fn polling_byte_messages_neither_allocate_nor_make_syscalls() {
    let _serial = lock(&SERIAL);
    let (bus, _cleanup) = bus("polling-bytes");
    let mut publisher = bus
        .publisher::<[u8]>("b")
        .capacity(64)
        .slot_size(64)
        .wait(WaitStrategy::Spin)
        .create()
        .unwrap();
    let mut subscriber = bus
        .subscriber::<[u8]>("b")
        .wait(WaitStrategy::Spin)
        .open()
        .unwrap();
    let stats = shmbus::wait::stats();
    let payload = [0x5au8; 64];
    let ((), calls) = allocator_calls(|| {
        for seq in 0..ITERATIONS {
            let len = (seq % 64) as usize + 1;
            if seq % 2 == 0 {
                let mut loan = publisher.try_loan_bytes(len).expect("a free slot");
                loan.fill(seq as u8);
                loan.send();
            } else {
                publisher
                    .try_send_bytes(&payload[..len])
                    .expect("a free slot");
            }
            let sample = subscriber.try_recv().expect("no error").expect("a message");
            assert_eq!(sample.len(), len);
        }
    });
    assert_eq!(calls, 0, "allocator calls on the hot path");
    assert_eq!(shmbus::wait::stats(), stats, "wait-layer syscalls");
}

#[test]
fn an_awake_futex_subscriber_costs_the_publisher_no_wake() {
    let _serial = lock(&SERIAL);
    let (bus, _cleanup) = bus("awake");
    // Both sides may sleep: each has announced itself (the one-time barrier at attach), so both
    // notify paths run their sleeper check. Nobody ever sleeps here: every receive finds its
    // message ready and every send finds a free slot.
    let mut publisher = bus
        .publisher::<Tick>("t")
        .capacity(64)
        .wait(WaitStrategy::default())
        .create()
        .unwrap();
    let mut subscriber = bus
        .subscriber::<Tick>("t")
        .wait(WaitStrategy::default())
        .open()
        .unwrap();
    let stats = shmbus::wait::stats();
    let ((), calls) = allocator_calls(|| {
        for seq in 0..ITERATIONS {
            // Alternate the polling calls and the blocking ones that find no need to block.
            if seq % 2 == 0 {
                publisher.try_send(tick(seq)).expect("a free slot");
                let sample = subscriber.try_recv().expect("no error").expect("a message");
                assert_eq!(sample.seq(), seq);
            } else {
                publisher.send(tick(seq)).unwrap();
                let sample = subscriber.recv().expect("a message");
                assert_eq!(*sample, tick(seq));
            }
        }
    });
    let after = shmbus::wait::stats();
    assert_eq!(after.futex_wakes, stats.futex_wakes, "wake syscalls");
    assert_eq!(after.futex_waits, stats.futex_waits, "wait syscalls");
    assert_eq!(after, stats);
    assert_eq!(calls, 0, "allocator calls on the hot path");
}

// ---------------------------------------------------------------------------------------------
// A subscriber killed asleep.

/// Open topic `t` with the default strategy (spin, then sleep on the futex), say OPEN, and wait
/// for a message that never comes: asleep until killed.
fn child_sleep_on_empty() -> ! {
    let mut subscriber = common::child_bus()
        .subscriber::<Tick>("t")
        .wait(WaitStrategy::default())
        .open()
        .unwrap();
    say("OPEN");
    let _ = subscriber.recv();
    exit_child(1)
}

/// Starts a subscriber of `t` in a child process, waits until it sleeps (its entry marked
/// asleep, the topic counting one sleeper), and kills it.
fn kill_a_sleeping_subscriber(bus: &Bus, prefix: &str) {
    let mut child = ChildProc::spawn("sleep-on-empty", &[("prefix", prefix)]);
    child.wait_for_line("OPEN");
    let deadline = std::time::Instant::now() + common::CHILD_STALL;
    loop {
        let info = bus.topic_info("t").unwrap();
        if info.sleepers == 1 && info.subscribers.iter().all(|s| s.asleep) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the subscriber never slept: {info:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill();
    assert!(!child.finish().status.success());
    let info = bus.topic_info("t").unwrap();
    assert_eq!(info.sleepers, 1, "killed asleep, still counted: {info:?}");
}

/// After the dead sleeper is gone: evicted once, nobody counted asleep, and no wait-layer
/// syscall in `ITERATIONS` more messages.
fn assert_gone_and_free(bus: &Bus, publisher: &mut shmbus::Publisher<Tick>, from: u64) {
    let info = bus.topic_info("t").unwrap();
    assert_eq!(
        (info.evictions, info.sleepers, info.subscribers.len()),
        (1, 0, 0),
        "{info:?}"
    );
    let before = shmbus::wait::stats();
    for seq in from..from + ITERATIONS {
        publisher.try_send(tick(seq)).expect("a free slot");
    }
    assert_eq!(
        shmbus::wait::stats(),
        before,
        "no wait-layer syscall once it is evicted"
    );
}

#[test]
fn a_subscriber_killed_asleep_costs_its_publisher_wake_ups_only_until_it_is_evicted() {
    const CAPACITY: u64 = 16;
    let _serial = lock(&SERIAL);
    let (bus, _cleanup, prefix) = bus_and_prefix("killed-asleep");
    let mut publisher = bus
        .publisher::<Tick>("t")
        .capacity(CAPACITY)
        .wait(WaitStrategy::Spin)
        .create()
        .unwrap();
    kill_a_sleeping_subscriber(&bus, &prefix);

    // A wake syscall a message for the dead sleeper, until the ring is full.
    let before = shmbus::wait::stats();
    for seq in 0..CAPACITY {
        publisher.try_send(tick(seq)).expect("a free slot");
    }
    let woken = shmbus::wait::stats().futex_wakes - before.futex_wakes;
    assert_eq!(woken, CAPACITY, "one wake-up a message while it is counted");

    // Full: the publisher finds it dead, evicts it and takes it off the wait cell.
    publisher
        .send_timeout(tick(CAPACITY), common::CHILD_STALL)
        .expect("room once the dead subscriber is evicted");
    assert_gone_and_free(&bus, &mut publisher, CAPACITY + 1);
}

#[test]
fn under_overwrite_a_subscriber_killed_asleep_costs_at_most_1024_wake_ups() {
    /// The publisher's `REAP_EVERY`: wake-ups between two looks for dead sleepers.
    const REAP_EVERY: u64 = 1024;
    let _serial = lock(&SERIAL);
    let (bus, _cleanup, prefix) = bus_and_prefix("killed-asleep-overwrite");
    let mut publisher = bus
        .publisher::<Tick>("t")
        .capacity(16)
        .policy(shmbus::Policy::Overwrite)
        .create()
        .unwrap();
    kill_a_sleeping_subscriber(&bus, &prefix);
    // Overwrite never waits for it, so nothing fills up: the wake-ups themselves make the
    // publisher look for subscribers killed asleep.
    let before = shmbus::wait::stats();
    let sent = 3 * REAP_EVERY;
    for seq in 0..sent {
        publisher
            .try_send(tick(seq))
            .expect("Overwrite always has room");
    }
    let woken = shmbus::wait::stats().futex_wakes - before.futex_wakes;
    assert_eq!(woken, REAP_EVERY, "wake-ups until the look that evicts it");
    assert_gone_and_free(&bus, &mut publisher, sent);
}

/// Create topic `t` (Block, 16 slots, the default strategy), say CREATED, wait for a
/// subscriber, then publish until the ring is full: asleep, waiting for room, until killed.
fn child_publish_until_asleep() -> ! {
    let mut publisher = common::child_bus()
        .publisher::<Tick>("t")
        .capacity(16)
        .wait(WaitStrategy::default())
        .create()
        .unwrap();
    say("CREATED");
    assert!(publisher.wait_for_subscribers(1, common::CHILD_STALL));
    for seq in 0.. {
        publisher.send(tick(seq)).unwrap();
    }
    exit_child(1)
}

#[test]
fn a_publisher_killed_asleep_costs_wake_ups_only_until_its_lane_is_taken_over() {
    let _serial = lock(&SERIAL);
    let (bus, _cleanup, prefix) = bus_and_prefix("publisher-killed-asleep");
    let mut child = ChildProc::spawn("publish-until-asleep", &[("prefix", &prefix)]);
    child.wait_for_line("CREATED");
    let mut subscriber = bus
        .subscriber::<Tick>("t")
        .wait(WaitStrategy::Spin)
        .open()
        .unwrap();
    let deadline = std::time::Instant::now() + common::CHILD_STALL;
    while bus.topic_info("t").unwrap().publisher_sleepers != 1 {
        assert!(std::time::Instant::now() < deadline, "it never slept");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill();
    assert!(!child.finish().status.success());

    // Giving slots back wakes the dead publisher, in vain.
    let before = shmbus::wait::stats();
    let mut next = 0;
    while let Some(sample) = subscriber.try_recv().unwrap() {
        assert_eq!(*sample, tick(next));
        next += 1;
    }
    assert_eq!(next, 16, "a full ring");
    assert!(shmbus::wait::stats().futex_wakes > before.futex_wakes);
    assert_eq!(bus.topic_info("t").unwrap().publisher_sleepers, 1);

    // A new publisher takes its lane over, and it off the space cell: no wake-up any more.
    let mut publisher = bus.publisher::<Tick>("t").attach().unwrap();
    assert_eq!(bus.topic_info("t").unwrap().publisher_sleepers, 0);
    let before = shmbus::wait::stats();
    for seq in next..next + ITERATIONS {
        publisher.try_send(tick(seq)).expect("a free slot");
        let sample = subscriber.try_recv().unwrap().expect("a message");
        assert_eq!(*sample, tick(seq));
    }
    assert_eq!(shmbus::wait::stats(), before, "no wait-layer syscall");
}

// ---------------------------------------------------------------------------------------------
// In a child process, under strace: no syscall at all between two markers.

/// Marker paths: `faccessat` on them fails with ENOENT and shows in strace with the path.
const MARK_START: &str = "/shmbus-hot-path-marker-start";
const MARK_END: &str = "/shmbus-hot-path-marker-end";

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    match role.as_str() {
        "poll-loop" => child_poll_loop(),
        "sleep-on-empty" => child_sleep_on_empty(),
        "publish-until-asleep" => child_publish_until_asleep(),
        other => panic!("unknown child role {other}"),
    }
}

/// Set up a polling publisher and subscriber, warm them up, then run the loop between the two
/// marker syscalls.
fn child_poll_loop() -> ! {
    let bus = Bus::builder()
        .prefix(&common::arg("prefix"))
        .build()
        .unwrap();
    let mut publisher = bus
        .publisher::<Tick>("t")
        .capacity(64)
        .wait(WaitStrategy::Spin)
        .create()
        .unwrap();
    let mut subscriber = bus
        .subscriber::<Tick>("t")
        .wait(WaitStrategy::Spin)
        .open()
        .unwrap();
    let mut round = |seq: u64| {
        let mut loan = publisher.try_loan().expect("a free slot");
        loan.write(tick(seq));
        loan.send();
        let sample = subscriber.try_recv().expect("no error").expect("a message");
        sample.seq() == seq && *sample == tick(seq)
    };
    for seq in 0..1000 {
        assert!(round(seq));
    }
    let _ = rustix::fs::access(MARK_START, rustix::fs::Access::EXISTS);
    let mut ok = true;
    for seq in 1000..1000 + ITERATIONS {
        ok &= round(seq);
    }
    let _ = rustix::fs::access(MARK_END, rustix::fs::Access::EXISTS);
    drop(publisher);
    say(&format!("RESULT ok={}", ok as u8));
    exit_child(if ok { 0 } else { 1 })
}

#[test]
fn polling_makes_no_syscall_between_markers_under_strace() {
    let _serial = lock(&SERIAL);
    let strace_works = std::process::Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !strace_works {
        common::skip("strace is not installed or cannot trace here (apt-get install strace)");
        return;
    }
    let prefix = common::unique_prefix("strace");
    let _cleanup = Cleanup::new(&prefix);
    let trace = std::env::temp_dir().join(format!("{}strace.txt", prefix));
    let trace_path = trace.to_str().expect("a UTF-8 temp path").to_owned();
    let wrapper = ["strace", "-f", "-qq", "-o", trace_path.as_str()];
    let out =
        ChildProc::spawn_wrapped(Some(&wrapper), "poll-loop", &[("prefix", &prefix)]).finish();
    let text = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_file(&trace);
    out.assert_success();
    assert_eq!(out.num("ok"), 1, "{out:#?}");

    // With -f, each line starts with the thread id.
    let lines: Vec<&str> = text.lines().collect();
    let find = |marker: &str| {
        lines
            .iter()
            .position(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no {marker} in the trace:\n{text}"))
    };
    let (start, end) = (find(MARK_START), find(MARK_END));
    assert!(start < end);
    let tid = |line: &str| line.split_whitespace().next().unwrap_or("").to_owned();
    let looping = tid(lines[start]);
    assert_eq!(tid(lines[end]), looping, "markers from one thread");
    let between: Vec<&str> = lines[start + 1..end]
        .iter()
        .copied()
        .filter(|l| tid(l) == looping)
        .collect();
    assert!(
        between.is_empty(),
        "syscalls on the polling path:\n{}",
        between.join("\n")
    );
}
