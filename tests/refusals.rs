//! Every refusal the API promises, each as its typed error; those that concern opening a topic
//! are seen from a second process (this test binary re-executed, see `common`), as a real
//! subscriber would see them.
//!
//! Bad segments are made by hand (`rustix::shm::open` and a write) or by creating a real topic
//! and then corrupting its header through a second mapping. The header's field offsets are
//! named below ([`off`]) and checked against a freshly created segment by
//! `header_offsets_match_a_fresh_segment`, so that a change of the layout fails that test
//! rather than silently corrupting the wrong field.

mod common;

use common::{arg, exit_child, say, ChildProc, Cleanup, Finished};
use memmap2::{MmapMut, MmapOptions};
use rustix::fs::Mode;
use rustix::shm;
use shmbus::layout::{LayoutError, FORMAT_VERSION, HEADER_SIZE, MAGIC, STATE_READY};
use shmbus::segment::{NameError, SegmentError, MAX_NAME_LEN};
use shmbus::{
    Bus, BusError, CreateError, LoanError, OpenError, Payload, RecvError, SendTimeoutError,
    Subscriber, TryLoanError, TrySendError, WaitStrategy,
};
use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

/// Byte offsets of the fields of `SegmentHeader` (`src/layout.rs`, `#[repr(C)]`), as the
/// corruption tests need them. `header_offsets_match_a_fresh_segment` checks each against the
/// values a new topic writes.
mod off {
    pub const MAGIC: usize = 0; // u64
    pub const VERSION: usize = 8; // u32
    pub const STATE: usize = 12; // u32
    pub const RING_KIND: usize = 16; // u32
    pub const HEADER_SIZE: usize = 20; // u32
    pub const TOTAL_SIZE: usize = 24; // u64
    pub const CAPACITY: usize = 32; // u64
    pub const SLOT_SIZE: usize = 40; // u32
    pub const SLOT_STRIDE: usize = 44; // u32
    pub const PAYLOAD_OFFSET: usize = 48; // u32
    pub const CONTROL_SIZE: usize = 52; // u32
    pub const CONTROL_OFFSET: usize = 56; // u64
    pub const SLOTS_OFFSET: usize = 64; // u64
    pub const CREATOR_PID: usize = 72; // u32
    pub const FP_KIND: usize = 76; // u32
    pub const FP_SIZE: usize = 80; // u64
    pub const FP_ALIGN: usize = 88; // u32
    pub const SLOT_LAYOUT: usize = 92; // u32
    pub const POLICY: usize = 168; // u32
    pub const MAX_READERS: usize = 172; // u32
    pub const HISTORY: usize = 176; // u64
    pub const LANES: usize = 184; // u32
    /// Within a slot (`SlotHeader` in `src/layout.rs`): the stamp at 0, the length at 4.
    pub const SLOT_LEN: usize = 4; // u32
}

// ---------------------------------------------------------------------------------------------
// The child side: open (or create) a topic and report what happened.

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let bus = Bus::builder()
        .prefix(&arg("prefix"))
        .group_access(arg("group") == "1")
        .build()
        .expect("valid prefix");
    let topic = arg("topic");
    match role.as_str() {
        "open" => {
            let result = match arg("type").as_str() {
                "u64" => open_as::<u64>(&bus, &topic),
                "u32" => open_as::<u32>(&bus, &topic),
                "pair" => open_as::<[u32; 2]>(&bus, &topic),
                "bytes" => open_as::<[u8]>(&bus, &topic),
                other => panic!("unknown type {other}"),
            };
            if let Err(message) = result {
                say(&format!("MESSAGE {message}"));
            }
        }
        "create" => match create_with_umask(&bus, &topic) {
            Ok(_publisher) => {
                let fd = shm::open(
                    format!("{}{topic}", arg("prefix")).as_str(),
                    shm::OFlags::RDONLY,
                    Mode::empty(),
                )
                .expect("the segment just created");
                let mode = rustix::fs::fstat(&fd).expect("fstat").st_mode & 0o777;
                say(&format!("RESULT Ok mode={mode:o}"));
            }
            Err(e) => {
                say(&format!("RESULT {}", describe_create(&e)));
                say(&format!("MESSAGE {e}"));
            }
        },
        "open-many" => {
            // Open `<topic>0`, `<topic>1`, ... in turn, each with `open_timeout`, as a
            // subscriber started before its publisher does.
            let count: u32 = arg("count").parse().expect("a number");
            for i in 0..count {
                let result = bus
                    .subscriber::<[u8]>(&format!("{topic}{i}"))
                    .open_timeout(common::CHILD_STALL);
                let what = match &result {
                    Ok(_) => "Ok".to_string(),
                    Err(e) => describe_open(e),
                };
                say(&format!("DONE {i} {what}"));
            }
        }
        other => panic!("unknown child role {other}"),
    }
    exit_child(0)
}

/// Create `topic` under the umask the parent asked for, if any: a hostile umask must not
/// change what the segment's mode is.
fn create_with_umask(bus: &Bus, topic: &str) -> Result<shmbus::Publisher<u64>, CreateError> {
    if let Ok(mask) = u32::from_str_radix(&common::arg_or("umask", ""), 8) {
        rustix::process::umask(Mode::from_raw_mode(mask));
    }
    bus.publisher::<u64>(topic).create()
}

/// Open `topic` as a subscriber of `T` (with the type name and the patience the parent asked
/// for), print `RESULT <what happened>`, and hold the subscriber as asked. Returns the error's
/// message, if any.
fn open_as<T: ?Sized + Payload>(bus: &Bus, topic: &str) -> Result<(), String> {
    let mut builder = bus.subscriber::<T>(topic);
    let type_name = arg("type_name");
    if !type_name.is_empty() {
        builder = builder.type_name(&type_name);
    }
    let patience: u64 = arg("timeout_ms").parse().expect("a number");
    let result = if patience == 0 {
        builder.open()
    } else {
        builder.open_timeout(Duration::from_millis(patience))
    };
    match result {
        Ok(subscriber) => {
            say("RESULT Ok");
            if arg("hold") == "leak" {
                // Exit with the subscriber's place still held, as a crashed process would.
                std::mem::forget::<Subscriber<T>>(subscriber);
            }
            Ok(())
        }
        Err(e) => {
            say(&format!("RESULT {}", describe_open(&e)));
            Err(e.to_string())
        }
    }
}

fn describe_open(e: &OpenError) -> String {
    match e {
        OpenError::InvalidName { reason, .. } => format!("InvalidName {}", describe_name(reason)),
        OpenError::NotFound { .. } => "NotFound".into(),
        OpenError::NotReady { .. } => "NotReady".into(),
        OpenError::IncompatibleType {
            expected, found, ..
        } => format!(
            "IncompatibleType expected={}/{}/{:?} found={}/{}/{:?}",
            expected.size, expected.align, expected.kind, found.size, found.align, found.kind
        ),
        OpenError::UnsupportedVersion { found, .. } => format!("UnsupportedVersion found={found}"),
        OpenError::TooSmall { size, .. } => format!("TooSmall size={size}"),
        OpenError::Corrupt { reason, .. } => match reason {
            LayoutError::Inconsistent(_) => "Corrupt Inconsistent".into(),
            LayoutError::BadMagic { found } => format!("Corrupt BadMagic found={found:#x}"),
            LayoutError::UnknownRingKind { found } => {
                format!("Corrupt UnknownRingKind found={found}")
            }
            other => format!("Corrupt {other:?}"),
        },
        OpenError::TooManySubscribers { max, pids, .. } => {
            format!("TooManySubscribers max={max} pids={pids:?}")
        }
        OpenError::Segment(SegmentError::BadMode { mode, allowed, .. }) => {
            format!("Segment BadMode mode={mode:o} allowed={allowed:o}")
        }
        OpenError::Segment(SegmentError::NotOwner { owner, .. }) => {
            format!("Segment NotOwner owner={owner}")
        }
        other => format!("Other {other:?}"),
    }
}

fn describe_create(e: &CreateError) -> String {
    match e {
        CreateError::AlreadyExists { .. } => "AlreadyExists".into(),
        CreateError::InvalidName { reason, .. } => {
            format!("InvalidName {}", describe_name(reason))
        }
        other => format!("Other {other:?}"),
    }
}

fn describe_name(reason: &NameError) -> String {
    match reason {
        NameError::Empty => "Empty".into(),
        NameError::TooLong { len } => format!("TooLong len={len}"),
        NameError::Slash => "Slash".into(),
        NameError::DotDot => "DotDot".into(),
        NameError::LeadingDot => "LeadingDot".into(),
        NameError::BadChar(c) => format!("BadChar {c:?}"),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The parent side: helpers.

/// A test's own bus, and the removal of everything it leaves in `/dev/shm`.
struct Fixture {
    prefix: String,
    bus: Bus,
    _cleanup: Cleanup,
}

fn fixture(test: &str) -> Fixture {
    let prefix = common::unique_prefix(test);
    let cleanup = Cleanup::new(&prefix);
    Fixture {
        bus: Bus::builder().prefix(&prefix).build().unwrap(),
        prefix,
        _cleanup: cleanup,
    }
}

impl Fixture {
    /// The `shm_open` name of `topic`.
    fn segment(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// Open `topic` as a subscriber of `ty` in a child process; what it reported.
    fn open_in_child(&self, topic: &str, ty: &str) -> Finished {
        self.open_in_child_with(topic, ty, &[])
    }

    fn open_in_child_with(&self, topic: &str, ty: &str, extra: &[(&str, &str)]) -> Finished {
        let mut args = vec![
            ("prefix", self.prefix.as_str()),
            ("topic", topic),
            ("type", ty),
            ("type_name", ""),
            ("timeout_ms", "0"),
            ("hold", "drop"),
            ("group", "0"),
        ];
        for &(k, v) in extra {
            args.retain(|&(key, _)| key != k);
            args.push((k, v));
        }
        let out = ChildProc::spawn("open", &args).finish();
        out.assert_success();
        check_message(&out);
        out
    }
}

/// Error messages are lower-case (STYLE.md, 14).
fn check_message(out: &Finished) {
    if let Some(message) = out
        .lines
        .iter()
        .find_map(|l| common::after_marker(l, "MESSAGE "))
    {
        let first = message.chars().next().expect("a message");
        assert!(
            !first.is_uppercase(),
            "error message not lower-case: {message:?}"
        );
    }
}

fn assert_refused(out: &Finished, expected: &str) {
    assert_eq!(out.result_line(), expected, "{out:#?}");
}

/// Map segment `name` read-write, as a hostile or buggy peer would.
fn map_segment(name: &str) -> MmapMut {
    let fd = shm::open(name, shm::OFlags::RDWR, Mode::empty()).expect("open the segment");
    let file = File::from(fd);
    // SAFETY: the segment is shared memory that other processes may write while it is mapped;
    // the tests write only header words and slot lengths that the library reads with atomic
    // loads, and read only words it wrote before it marked the header ready.
    unsafe { MmapOptions::new().map_mut(&file) }.expect("map the segment")
}

fn get_u32(map: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(map[at..at + 4].try_into().unwrap())
}

fn get_u64(map: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(map[at..at + 8].try_into().unwrap())
}

fn put_u32(map: &mut [u8], at: usize, v: u32) {
    map[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(map: &mut [u8], at: usize, v: u64) {
    map[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Create segment `name` by hand with `contents` and permission bits `mode`.
fn raw_segment(name: &str, contents: &[u8], mode: u32) {
    let fd = shm::open(
        name,
        shm::OFlags::CREATE | shm::OFlags::EXCL | shm::OFlags::RDWR,
        Mode::from_raw_mode(0o600),
    )
    .expect("create the segment");
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).expect("fchmod");
    File::from(fd)
        .write_all(contents)
        .expect("write the segment");
}

// ---------------------------------------------------------------------------------------------
// Names and creation.

#[test]
fn creating_an_existing_topic_is_already_exists() {
    let f = fixture("already-exists");
    let _publisher = f.bus.publisher::<u64>("taken").create().unwrap();
    let out = ChildProc::spawn(
        "create",
        &[("prefix", &f.prefix), ("topic", "taken"), ("group", "0")],
    )
    .finish();
    out.assert_success();
    check_message(&out);
    assert_refused(&out, "AlreadyExists");
    // And in this process too.
    assert!(matches!(
        f.bus.publisher::<u64>("taken").create(),
        Err(CreateError::AlreadyExists { topic }) if topic == "taken"
    ));
}

#[test]
fn opening_a_missing_topic_is_not_found() {
    let f = fixture("not-found");
    assert_refused(&f.open_in_child("nobody", "u64"), "NotFound");
    // With patience, still NotFound once the time is up.
    let out = f.open_in_child_with("nobody", "u64", &[("timeout_ms", "50")]);
    assert_refused(&out, "NotFound");
}

#[test]
fn invalid_names_are_refused_on_open_and_create() {
    let f = fixture("invalid-names");
    let too_long = "x".repeat(MAX_NAME_LEN + 1);
    let cases = [
        ("a/b", "InvalidName Slash".to_string()),
        ("/abs", "InvalidName Slash".to_string()),
        ("..", "InvalidName DotDot".to_string()),
        ("a..b", "InvalidName DotDot".to_string()),
        ("", "InvalidName Empty".to_string()),
        (
            too_long.as_str(),
            format!("InvalidName TooLong len={}", MAX_NAME_LEN + 1),
        ),
        (".hidden", "InvalidName LeadingDot".to_string()),
        ("a b", "InvalidName BadChar ' '".to_string()),
    ];
    for (name, expected) in &cases {
        assert_refused(&f.open_in_child(name, "u64"), expected);
        let created = f.bus.publisher::<u64>(name).create();
        assert!(
            matches!(&created, Err(CreateError::InvalidName { topic, .. }) if topic == name),
            "create {name:?}: {:?}",
            created.err()
        );
    }
    // The longest valid name works (behind a short prefix), and is removed with its publisher.
    let longest = "y".repeat(MAX_NAME_LEN);
    assert!(f.bus.publisher::<u64>(&longest).create().is_ok());
    assert!(common::segments_with_prefix(&f.prefix).is_empty());
}

/// A valid prefix and a valid topic can make a segment name longer than `shm_open` takes
/// (`NAME_MAX`, 255 bytes): the bus should refuse it as an invalid name, not as an I/O error.
#[test]
fn a_prefix_and_topic_too_long_together_are_an_invalid_name() {
    let prefix = format!("{}.", "p".repeat(MAX_NAME_LEN - 1));
    let topic = "t".repeat(MAX_NAME_LEN);
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    match bus.publisher::<u64>(&topic).create() {
        Err(CreateError::InvalidName { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    match bus.subscriber::<u64>(&topic).open() {
        Err(OpenError::InvalidName { .. }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn invalid_prefixes_are_refused() {
    for (prefix, reason) in [
        ("", NameError::Empty),
        ("a/", NameError::Slash),
        ("a..", NameError::DotDot),
    ] {
        match Bus::builder().prefix(prefix).build() {
            Err(BusError::InvalidPrefix {
                prefix: p,
                reason: r,
            }) => {
                assert_eq!((p.as_str(), r), (prefix, reason))
            }
            other => panic!("prefix {prefix:?}: {other:?}"),
        }
    }
}

#[test]
fn invalid_configurations_are_refused() {
    use shmbus::layout::{ConfigError, MAX_SLOT_SIZE};
    let f = fixture("invalid-config");
    for capacity in [0, 1, 3, 1000] {
        assert!(matches!(
            f.bus.publisher::<u64>("t").capacity(capacity).create(),
            Err(CreateError::InvalidConfig(ConfigError::Capacity(c))) if c == capacity
        ));
    }
    for slot_size in [0, MAX_SLOT_SIZE as u64 + 1] {
        assert!(matches!(
            f.bus.publisher::<[u8]>("t").slot_size(slot_size).create(),
            Err(CreateError::InvalidConfig(ConfigError::SlotSize(s))) if s == slot_size
        ));
    }
    assert!(matches!(
        f.bus
            .publisher::<[u8]>("t")
            .capacity(1 << 24)
            .slot_size(MAX_SLOT_SIZE as u64)
            .create(),
        Err(CreateError::InvalidConfig(ConfigError::TooLarge { .. }))
    ));
    assert!(common::segments_with_prefix(&f.prefix).is_empty());
}

#[test]
fn a_topic_larger_than_the_shared_memory_filesystem_is_no_space() {
    let f = fixture("no-space");
    let Some(available) = shmbus::segment::free_space(f.bus.dir()) else {
        common::skip("the free space of /dev/shm cannot be told");
        return;
    };
    // 16 MiB slots: 2048 of them make 32 GiB, the largest this test asks for.
    let slot = 16u64 << 20;
    let Some(capacity) = (1..=11).map(|p| 1u64 << p).find(|c| c * slot > available) else {
        common::skip(&format!(
            "/dev/shm has {available} bytes free, more than this test can ask"
        ));
        return;
    };
    match f
        .bus
        .publisher::<[u8]>("huge")
        .capacity(capacity)
        .slot_size(slot)
        .create()
    {
        Err(CreateError::NoSpace {
            topic,
            dir,
            needed,
            available: free,
        }) => {
            assert_eq!(topic, "huge");
            assert_eq!(dir, std::path::Path::new("/dev/shm"));
            assert!(needed > capacity * slot, "needed {needed}");
            assert!(needed > free, "needed {needed}, available {free}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(common::segments_with_prefix(&f.prefix).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Types and places.

#[test]
fn a_subscriber_of_another_type_is_incompatible() {
    let f = fixture("incompatible");
    let _p64 = f.bus.publisher::<u64>("u64").create().unwrap();
    // Same size, different type (and alignment).
    assert_refused(
        &f.open_in_child("u64", "pair"),
        "IncompatibleType expected=8/4/Typed found=8/8/Typed",
    );
    // Different size.
    assert_refused(
        &f.open_in_child("u64", "u32"),
        "IncompatibleType expected=4/4/Typed found=8/8/Typed",
    );
    // Bytes against a typed topic, and the other way round.
    assert_refused(
        &f.open_in_child("u64", "bytes"),
        "IncompatibleType expected=0/1/Bytes found=8/8/Typed",
    );
    let _bytes = f.bus.publisher::<[u8]>("bytes").create().unwrap();
    assert_refused(
        &f.open_in_child("bytes", "u64"),
        "IncompatibleType expected=8/8/Typed found=0/1/Bytes",
    );
    // The same type under another schema name.
    assert_refused(
        &f.open_in_child_with("u64", "u64", &[("type_name", "other::Name")]),
        "IncompatibleType expected=8/8/Typed found=8/8/Typed",
    );
    // And the right type opens.
    assert_refused(&f.open_in_child("u64", "u64"), "Ok");
    // Two programs that agree on a schema name open each other's topics.
    let _named = f
        .bus
        .publisher::<[u32; 2]>("named")
        .type_name("app::Pair")
        .create()
        .unwrap();
    assert_refused(
        &f.open_in_child_with("named", "pair", &[("type_name", "app::Pair")]),
        "Ok",
    );
    assert_refused(
        &f.open_in_child("named", "pair"),
        "IncompatibleType expected=8/4/Typed found=8/4/Typed",
    );
}

#[test]
fn a_subscriber_past_the_table_is_refused() {
    let f = fixture("busy");
    let _publisher = f
        .bus
        .publisher::<u64>("t")
        .max_subscribers(2)
        .create()
        .unwrap();
    let first = f.bus.subscriber::<u64>("t").open().unwrap();
    let _second = f.bus.subscriber::<u64>("t").open().unwrap();
    let me = std::process::id();
    assert_refused(
        &f.open_in_child("t", "u64"),
        &format!("TooManySubscribers max=2 pids=[{me}, {me}]"),
    );
    // In this process as well.
    assert!(matches!(
        f.bus.subscriber::<u64>("t").open(),
        Err(OpenError::TooManySubscribers { max: 2, .. })
    ));
    // Once one has gone, its entry is free again.
    drop(first);
    assert_refused(&f.open_in_child("t", "u64"), "Ok");
}

#[test]
fn the_place_of_a_dead_subscriber_is_taken_over() {
    let f = fixture("dead-subscriber");
    let mut publisher = f
        .bus
        .publisher::<u64>("t")
        .capacity(4)
        .max_subscribers(1)
        .create()
        .unwrap();
    // The child opens and exits without dropping its subscriber: its pid stays in the table's
    // only entry. `finish` reaps it, so its pid no longer names a process (not even a zombie).
    assert_refused(&f.open_in_child_with("t", "u64", &[("hold", "leak")]), "Ok");
    let mut subscriber = f.bus.subscriber::<u64>("t").open().unwrap();
    publisher.try_send(7).unwrap();
    assert_eq!(*subscriber.try_recv().unwrap().unwrap(), 7);
}

#[test]
fn open_timeout_waits_through_a_topic_being_created() {
    // A subscriber started first polls with `open_timeout` while the publisher creates the
    // topic. Between `shm_open(O_CREAT|O_EXCL)` and the header's ready mark the segment exists
    // with size 0, then with a zeroed header: `open` must call that "not ready" (which
    // `open_timeout` retries), not a corrupt or too-small segment. A large segment widens the
    // window (reserving and touching its pages takes milliseconds).
    let f = fixture("creation-race");
    const ROUNDS: u32 = 10;
    let rounds = ROUNDS.to_string();
    let mut child = ChildProc::spawn(
        "open-many",
        &[
            ("prefix", &f.prefix),
            ("topic", "race"),
            ("count", &rounds),
            ("group", "0"),
        ],
    );
    let mut seen = Vec::new();
    for i in 0..ROUNDS {
        // Let the child start polling for this topic.
        std::thread::sleep(Duration::from_millis(20));
        let publisher = f
            .bus
            .publisher::<[u8]>(&format!("race{i}"))
            .capacity(64)
            .slot_size(1 << 20)
            .create()
            .unwrap();
        let line = child.wait_for_line(&format!("DONE {i} "));
        seen.push(line);
        drop(publisher);
    }
    child.finish().assert_success();
    let bad: Vec<_> = seen.iter().filter(|l| !l.ends_with(" Ok")).collect();
    assert!(bad.is_empty(), "refused while being created: {bad:#?}");
}

// ---------------------------------------------------------------------------------------------
// Bad segments.

#[test]
fn header_offsets_match_a_fresh_segment() {
    let f = fixture("offsets");
    let publisher = f.bus.publisher::<u64>("t").capacity(64).create().unwrap();
    let map = map_segment(&f.segment("t"));
    assert_eq!(get_u64(&map, off::MAGIC), MAGIC);
    assert_eq!(get_u32(&map, off::VERSION), FORMAT_VERSION);
    assert_eq!(get_u32(&map, off::STATE), STATE_READY);
    assert_eq!(
        get_u32(&map, off::RING_KIND),
        shmbus::layout::RING_BROADCAST
    );
    assert_eq!(get_u32(&map, off::HEADER_SIZE) as usize, HEADER_SIZE);
    assert_eq!(get_u64(&map, off::TOTAL_SIZE), map.len() as u64);
    assert_eq!(get_u64(&map, off::CAPACITY), publisher.capacity());
    assert_eq!(
        get_u32(&map, off::SLOT_SIZE) as usize,
        publisher.slot_size()
    );
    assert_eq!(get_u32(&map, off::CREATOR_PID), std::process::id());
    assert_eq!(get_u32(&map, off::FP_KIND), 1);
    assert_eq!(get_u64(&map, off::FP_SIZE), 8);
    assert_eq!(get_u32(&map, off::FP_ALIGN), 8);
    // The geometry fields agree with what `Geometry::for_config` computes for this topic.
    let control_size = get_u32(&map, off::CONTROL_SIZE);
    let g = shmbus::layout::Geometry::for_config(64, 8, 8, control_size, 1).unwrap();
    assert_eq!(get_u32(&map, off::SLOT_STRIDE), g.slot_stride);
    assert_eq!(get_u32(&map, off::PAYLOAD_OFFSET), g.payload_offset);
    assert_eq!(get_u32(&map, off::SLOT_LAYOUT), g.slot_layout());
    assert_eq!(get_u64(&map, off::CONTROL_OFFSET), g.control_offset);
    assert_eq!(get_u64(&map, off::SLOTS_OFFSET), g.slots_offset);
    assert_eq!(g.total_size, map.len() as u64);
}

/// Create topic `topic` (u64, 16 slots), apply `corrupt` to its header through a second
/// mapping, and return what a subscriber in a child process makes of it.
fn corrupted(f: &Fixture, topic: &str, corrupt: impl FnOnce(&mut [u8])) -> Finished {
    let publisher = f.bus.publisher::<u64>(topic).capacity(16).create().unwrap();
    let mut map = map_segment(&f.segment(topic));
    corrupt(&mut map);
    let out = f.open_in_child(topic, "u64");
    drop(publisher);
    out
}

#[test]
fn another_format_version_is_unsupported() {
    let f = fixture("version");
    let out = corrupted(&f, "t", |h| put_u32(h, off::VERSION, FORMAT_VERSION + 1));
    assert_refused(
        &out,
        &format!("UnsupportedVersion found={}", FORMAT_VERSION + 1),
    );
}

#[test]
fn a_segment_too_small_for_a_header_is_too_small() {
    let f = fixture("too-small");
    // Size 0 is a segment whose creator has not set its size yet: `NotReady` (see
    // `an_empty_segment_is_one_being_created`).
    for size in [1usize, 100, HEADER_SIZE - 1] {
        let topic = format!("small{size}");
        raw_segment(&f.segment(&topic), &vec![0xAB; size], 0o600);
        assert_refused(
            &f.open_in_child(&topic, "u64"),
            &format!("TooSmall size={size}"),
        );
    }
}

#[test]
fn an_empty_segment_is_one_being_created() {
    let f = fixture("empty");
    raw_segment(&f.segment("empty"), &[], 0o600);
    assert_refused(&f.open_in_child("empty", "u64"), "NotReady");
}

#[test]
fn a_segment_not_marked_ready_is_not_ready() {
    let f = fixture("not-ready");
    let out = corrupted(&f, "t", |h| put_u32(h, off::STATE, 0));
    assert_refused(&out, "NotReady");
    // With patience: still NotReady when the time is up.
    let publisher = f.bus.publisher::<u64>("t2").create().unwrap();
    put_u32(&mut map_segment(&f.segment("t2")), off::STATE, 0);
    let out = f.open_in_child_with("t2", "u64", &[("timeout_ms", "50")]);
    assert_refused(&out, "NotReady");
    drop(publisher);
}

#[test]
fn inconsistent_headers_are_corrupt() {
    let f = fixture("inconsistent");
    type Corruption = (&'static str, fn(&mut [u8]));
    let cases: [Corruption; 20] = [
        ("capacity not a power of two", |h| {
            put_u64(h, off::CAPACITY, 12)
        }),
        ("capacity zero", |h| put_u64(h, off::CAPACITY, 0)),
        ("capacity past the end", |h| {
            put_u64(h, off::CAPACITY, 1 << 20)
        }),
        ("slot size zero", |h| put_u32(h, off::SLOT_SIZE, 0)),
        ("slot size too large", |h| {
            put_u32(h, off::SLOT_SIZE, u32::MAX)
        }),
        ("stride below the slot", |h| put_u32(h, off::SLOT_STRIDE, 8)),
        ("unknown slot layout", |h| put_u32(h, off::SLOT_LAYOUT, 7)),
        // A tag array the segment was not sized for: the lanes then run past its end.
        ("tags apart in a segment laid out inline", |h| {
            put_u32(h, off::SLOT_LAYOUT, shmbus::layout::SLOTS_SPLIT)
        }),
        ("slots past the end", |h| {
            let total = get_u64(h, off::TOTAL_SIZE);
            put_u64(h, off::SLOTS_OFFSET, total)
        }),
        ("slots offset overflowing", |h| {
            put_u64(h, off::SLOTS_OFFSET, u64::MAX - 63)
        }),
        ("control block past the end", |h| {
            put_u64(h, off::CONTROL_OFFSET, 1 << 40)
        }),
        ("recorded size differs", |h| {
            let total = get_u64(h, off::TOTAL_SIZE);
            put_u64(h, off::TOTAL_SIZE, total + 4096)
        }),
        ("unknown policy", |h| put_u32(h, off::POLICY, 9)),
        ("no subscriber entries", |h| put_u32(h, off::MAX_READERS, 0)),
        (
            "more subscriber entries than the control block holds",
            |h| put_u32(h, off::MAX_READERS, get_u32(h, off::MAX_READERS) + 1),
        ),
        ("subscriber entries past the limit", |h| {
            put_u32(h, off::MAX_READERS, u32::MAX)
        }),
        ("history of a whole ring", |h| put_u64(h, off::HISTORY, 16)),
        ("no publisher lane", |h| put_u32(h, off::LANES, 0)),
        ("more lanes than the segment holds", |h| {
            put_u32(h, off::LANES, 2)
        }),
        ("lanes past the limit", |h| put_u32(h, off::LANES, u32::MAX)),
    ];
    for (i, (what, corrupt)) in cases.into_iter().enumerate() {
        let out = corrupted(&f, &format!("t{i}"), corrupt);
        assert_eq!(
            out.result_line(),
            "Corrupt Inconsistent",
            "{what}: {out:#?}"
        );
    }
    // A consistent geometry that does not fit the type is refused too: a u64 topic whose
    // recorded slot size is 16.
    let out = corrupted(&f, "geometry", |h| put_u32(h, off::SLOT_SIZE, 16));
    assert_refused(&out, "Corrupt Inconsistent");
}

#[test]
fn a_segment_that_is_not_shmbus_is_bad_magic() {
    let f = fixture("bad-magic");
    // A foreign file of a plausible size.
    raw_segment(&f.segment("foreign"), &[0x42; 8192], 0o600);
    assert_refused(
        &f.open_in_child("foreign", "u64"),
        "Corrupt BadMagic found=0x4242424242424242",
    );
    // A real topic whose magic was overwritten.
    let out = corrupted(&f, "t", |h| put_u64(h, off::MAGIC, 0xdead_beef));
    assert_refused(&out, "Corrupt BadMagic found=0xdeadbeef");
    // A ring kind this build does not know.
    let out = corrupted(&f, "kind", |h| put_u32(h, off::RING_KIND, 7));
    assert_refused(&out, "Corrupt UnknownRingKind found=7");
}

#[test]
fn a_segment_open_to_others_is_refused() {
    let f = fixture("mode");
    let _publisher = f.bus.publisher::<u64>("t").create().unwrap();
    let fd = shm::open(f.segment("t").as_str(), shm::OFlags::RDWR, Mode::empty()).unwrap();
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644)).unwrap();
    assert_refused(
        &f.open_in_child("t", "u64"),
        "Segment BadMode mode=644 allowed=600",
    );
    // A group-readable segment: refused by an owner-only bus, accepted by a group bus.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o660)).unwrap();
    assert_refused(
        &f.open_in_child("t", "u64"),
        "Segment BadMode mode=660 allowed=600",
    );
    assert_refused(&f.open_in_child_with("t", "u64", &[("group", "1")]), "Ok");
    // Even a group bus refuses a world-readable one.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o664)).unwrap();
    assert_refused(
        &f.open_in_child_with("t", "u64", &[("group", "1")]),
        "Segment BadMode mode=664 allowed=660",
    );
}

#[test]
fn a_segment_of_another_user_is_refused() {
    let f = fixture("owner");
    let _publisher = f.bus.publisher::<u64>("t").create().unwrap();
    let fd = shm::open(f.segment("t").as_str(), shm::OFlags::RDWR, Mode::empty()).unwrap();
    let other = rustix::process::geteuid().as_raw().wrapping_add(1);
    let uid = rustix::process::Uid::from_raw(other);
    if let Err(e) = rustix::fs::fchown(&fd, Some(uid), None) {
        common::skip(&format!(
            "cannot give a segment to another user ({e}): not root"
        ));
        return;
    }
    assert_refused(
        &f.open_in_child("t", "u64"),
        &format!("Segment NotOwner owner={other}"),
    );
}

// ---------------------------------------------------------------------------------------------
// Full rings, sizes and timeouts.

#[test]
fn try_send_on_a_full_ring_hands_the_message_back() {
    let f = fixture("full");
    let mut publisher = f.bus.publisher::<u64>("t").capacity(4).create().unwrap();
    // The ring fills for a subscriber that does not read (with none, nothing holds it back).
    let mut subscriber = f.bus.subscriber::<u64>("t").open().unwrap();
    for v in 0..4 {
        publisher.try_send(v).unwrap();
    }
    let refused = publisher.try_send(0xfeed_f00d);
    assert_eq!(refused, Err(TrySendError::Full(0xfeed_f00d)));
    assert_eq!(refused.unwrap_err().into_inner(), 0xfeed_f00d);
    assert_eq!(format!("{:?}", TrySendError::Full(1u64)), "Full(..)");
    assert_eq!(publisher.try_loan().err(), Some(TryLoanError::Full));
    assert_eq!(publisher.next_seq(), 4, "a refused message takes no number");
    // One message out, one slot free.
    assert_eq!(*subscriber.try_recv().unwrap().unwrap(), 0);
    publisher.try_send(4).unwrap();
    assert_eq!(publisher.try_send(5), Err(TrySendError::Full(5)));
    // Byte topics refuse the same way, sending nothing.
    let mut bytes = f
        .bus
        .publisher::<[u8]>("b")
        .capacity(2)
        .slot_size(8)
        .create()
        .unwrap();
    let _reader = f.bus.subscriber::<[u8]>("b").open().unwrap();
    bytes.try_send_bytes(b"one").unwrap();
    bytes.try_send_bytes(b"two").unwrap();
    assert_eq!(bytes.try_send_bytes(b"three"), Err(TryLoanError::Full));
    assert_eq!(bytes.try_loan_bytes(1).err(), Some(TryLoanError::Full));
}

#[test]
fn a_byte_message_over_the_slot_size_is_too_large() {
    let f = fixture("too-large");
    let mut publisher = f
        .bus
        .publisher::<[u8]>("t")
        .capacity(4)
        .slot_size(16)
        .create()
        .unwrap();
    let mut subscriber = f.bus.subscriber::<[u8]>("t").open().unwrap();
    let max = 16;
    assert_eq!(
        publisher.try_loan_bytes(17).err(),
        Some(TryLoanError::TooLarge { len: 17, max })
    );
    assert_eq!(
        publisher.loan_bytes(1000, Some(Duration::ZERO)).err(),
        Some(LoanError::TooLarge { len: 1000, max })
    );
    assert_eq!(
        publisher.try_send_bytes(&[1; 17]),
        Err(TryLoanError::TooLarge { len: 17, max })
    );
    assert_eq!(publisher.next_seq(), 0, "nothing was sent");
    assert!(subscriber.try_recv().unwrap().is_none(), "nothing arrived");
    // Exactly the slot size fits, and arrives whole; so does an empty message.
    let full: Vec<u8> = (1..=16).collect();
    publisher.try_send_bytes(&full).unwrap();
    publisher.try_send_bytes(&[]).unwrap();
    assert_eq!(&*subscriber.try_recv().unwrap().unwrap(), &full[..]);
    assert_eq!(subscriber.try_recv().unwrap().unwrap().len(), 0);
}

#[test]
fn recv_timeout_on_an_empty_topic_returns_none_after_the_timeout() {
    let f = fixture("recv-timeout");
    let _publisher = f.bus.publisher::<u64>("t").create().unwrap();
    for wait in [
        WaitStrategy::Spin,
        WaitStrategy::SpinYield,
        WaitStrategy::default(),
    ] {
        let mut subscriber = f.bus.subscriber::<u64>("t").wait(wait).open().unwrap();
        let timeout = Duration::from_millis(30);
        let start = Instant::now();
        assert!(
            subscriber.recv_timeout(timeout).unwrap().is_none(),
            "{wait:?}"
        );
        assert!(start.elapsed() >= timeout, "{wait:?}: returned early");
        assert!(subscriber.try_recv().unwrap().is_none());
        assert!(subscriber.recv_timeout(Duration::ZERO).unwrap().is_none());
    }
}

#[test]
fn send_timeout_on_a_full_ring_hands_the_message_back() {
    let f = fixture("send-timeout");
    for (i, wait) in [
        WaitStrategy::Spin,
        WaitStrategy::SpinYield,
        WaitStrategy::default(),
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("t{i}");
        let mut publisher = f
            .bus
            .publisher::<u64>(&topic)
            .capacity(2)
            .wait(wait)
            .create()
            .unwrap();
        // A subscriber that reads nothing: the ring stays full.
        let _subscriber = f.bus.subscriber::<u64>(&topic).open().unwrap();
        publisher.try_send(1).unwrap();
        publisher.try_send(2).unwrap();
        let timeout = Duration::from_millis(30);
        let start = Instant::now();
        let refused = publisher.send_timeout(0xabcd, timeout);
        assert!(start.elapsed() >= timeout, "{wait:?}: returned early");
        assert_eq!(refused, Err(SendTimeoutError::Timeout(0xabcd)), "{wait:?}");
        assert_eq!(refused.unwrap_err().into_inner(), 0xabcd);
        assert_eq!(
            publisher.loan_timeout(timeout).err(),
            Some(LoanError::Timeout)
        );
        assert_eq!(publisher.next_seq(), 2);
    }
    let mut bytes = f
        .bus
        .publisher::<[u8]>("b")
        .capacity(2)
        .slot_size(4)
        .create()
        .unwrap();
    let _reader = f.bus.subscriber::<[u8]>("b").open().unwrap();
    bytes.try_send_bytes(b"a").unwrap();
    bytes.try_send_bytes(b"b").unwrap();
    assert_eq!(
        bytes.loan_bytes(1, Some(Duration::from_millis(10))).err(),
        Some(LoanError::Timeout)
    );
}

#[test]
fn a_message_with_a_corrupt_length_is_reported_and_skipped() {
    let f = fixture("corrupt-message");
    // Bytes: a length past the slot size.
    let mut publisher = f
        .bus
        .publisher::<[u8]>("b")
        .capacity(4)
        .slot_size(16)
        .create()
        .unwrap();
    let mut subscriber = f.bus.subscriber::<[u8]>("b").open().unwrap();
    publisher.try_send_bytes(b"hello").unwrap();
    publisher.try_send_bytes(b"world").unwrap();
    let mut map = map_segment(&f.segment("b"));
    let slots = get_u64(&map, off::SLOTS_OFFSET) as usize;
    put_u32(&mut map, slots + off::SLOT_LEN, 17); // slot 0
    assert_eq!(
        subscriber.try_recv().err(),
        Some(RecvError::Corrupt {
            seq: 0,
            len: 17,
            expected: 16
        })
    );
    let next = subscriber.try_recv().unwrap().unwrap();
    assert_eq!((next.seq(), &*next), (1, &b"world"[..]));
    drop(next);

    // Typed: a length other than the type's size.
    let mut publisher = f.bus.publisher::<u64>("t").capacity(4).create().unwrap();
    let mut subscriber = f.bus.subscriber::<u64>("t").open().unwrap();
    publisher.try_send(1).unwrap();
    publisher.try_send(2).unwrap();
    let mut map = map_segment(&f.segment("t"));
    let slots = get_u64(&map, off::SLOTS_OFFSET) as usize;
    let stride = get_u32(&map, off::SLOT_STRIDE) as usize;
    put_u32(&mut map, slots + stride + off::SLOT_LEN, 4); // slot 1
    assert_eq!(*subscriber.try_recv().unwrap().unwrap(), 1);
    assert_eq!(
        subscriber.try_recv().err(),
        Some(RecvError::Corrupt {
            seq: 1,
            len: 4,
            expected: 8
        })
    );
    assert!(subscriber.try_recv().unwrap().is_none());
    publisher.try_send(3).unwrap();
    let next = subscriber.try_recv().unwrap().unwrap();
    assert_eq!((next.seq(), *next), (2, 3));
}

#[test]
fn a_segment_is_created_owner_only_whatever_the_umask() {
    let f = fixture("umask");
    for (i, umask) in ["0", "777", "22"].into_iter().enumerate() {
        let topic = format!("t{i}");
        let out = ChildProc::spawn(
            "create",
            &[
                ("prefix", &f.prefix),
                ("topic", &topic),
                ("group", "0"),
                ("umask", umask),
            ],
        )
        .finish();
        out.assert_success();
        assert_eq!(out.result_line(), "Ok mode=600", "umask {umask}: {out:#?}");
    }
}

#[test]
fn a_symlink_at_a_topic_name_is_neither_followed_nor_replaced() {
    let f = fixture("symlink");
    // A name taken by a link to a file of this user's: a squatter hoping that a creator or an
    // opener follows it.
    let target = format!("/tmp/{}target", f.prefix);
    std::fs::write(&target, [0u8; 8192]).unwrap();
    let link = format!("/dev/shm/{}", f.segment("t"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    // Opening refuses (the kernel will not follow it: shm_open opens with O_NOFOLLOW).
    let opened = f.bus.subscriber::<u64>("t").open();
    assert!(
        matches!(opened, Err(OpenError::Segment(SegmentError::Symlink(_)))),
        "{:?}",
        opened.err()
    );
    // Creating refuses, and neither removes the link nor touches its target.
    assert!(matches!(
        f.bus.publisher::<u64>("t").create(),
        Err(CreateError::AlreadyExists { .. })
    ));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(f.bus.clean(false).unwrap().is_empty());
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "clean removed the link"
    );
    assert_eq!(std::fs::read(&target).unwrap(), [0u8; 8192]);
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&target).unwrap();
}
