//! Topic shapes through `Geometry::for_config`, checked against a model of the layout, and every
//! geometry it builds round-tripped through a header and `Geometry::validate`: what a creator
//! writes, an opener must accept, unchanged.
//!
//! Then, for segments small enough to allocate, the same header as bytes at the start of a real
//! segment, opened as `segment_header` opens one; and that segment again after a hostile peer
//! overwrote a few bytes of its header. Raw bytes seldom validate, so this is how the fuzzer
//! reaches an accepted geometry over real memory, and the edits probe the checks just beside it.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shmbus::layout::{
    ConfigError, Geometry, HeaderValues, TypeFingerprint, CONTROL_ALIGN, FORMAT_VERSION,
    HEADER_SIZE, MAGIC, MAX_ALIGN, MAX_CAPACITY, MAX_LANES, MAX_SEGMENT_SIZE, MAX_SLOT_SIZE,
    RING_BROADCAST, SLOTS_ALIGN, SLOT_HEADER_SIZE, SPLIT_MAX, STATE_READY,
};
use shmbus_fuzz::{check_geometry, check_segment, header_bytes, SegmentBuf};

/// A number that is often a power of two or small (so that valid shapes are common), and any
/// value otherwise.
#[derive(Arbitrary, Debug)]
enum Number {
    PowerOfTwo(u8),
    Small(u16),
    Any(u64),
}

impl Number {
    fn value(&self) -> u64 {
        match *self {
            Number::PowerOfTwo(shift) => 1u64 << (shift % 64),
            Number::Small(n) => n.into(),
            Number::Any(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Shape {
    capacity: Number,
    slot_size: Number,
    align: Number,
    /// Truncated to `u32`.
    control_size: Number,
    /// Truncated to `u32`.
    lanes: Number,
    /// Bytes of the header a peer overwrites: (offset, new value).
    edits: Vec<(u8, u8)>,
}

/// Largest segment built in memory: bigger ones cost more to allocate and zero than they teach.
const MAX_BUILT_SEGMENT: u64 = 64 << 10;

fuzz_target!(|shape: Shape| {
    let (capacity, slot_size, align) = (
        shape.capacity.value(),
        shape.slot_size.value(),
        shape.align.value(),
    );
    let control_size = shape.control_size.value() as u32;
    let lanes = shape.lanes.value() as u32;
    let result = Geometry::for_config(capacity, slot_size, align, control_size, lanes);

    // The model: the first bad argument, in the order `for_config` checks them; then the
    // layout of `shmbus::layout`'s module comment, in arithmetic that cannot overflow.
    let expected = if !capacity.is_power_of_two() || !(2..=MAX_CAPACITY).contains(&capacity) {
        Err(ConfigError::Capacity(capacity))
    } else if !(1..=MAX_SLOT_SIZE as u64).contains(&slot_size) {
        Err(ConfigError::SlotSize(slot_size))
    } else if !align.is_power_of_two() || align > MAX_ALIGN as u64 {
        Err(ConfigError::Align(align))
    } else if !(1..=MAX_LANES).contains(&lanes) {
        Err(ConfigError::Lanes(lanes))
    } else {
        let up = |x: u128, to: u128| x.div_ceil(to) * to;
        let payload_offset = align.max(SLOT_HEADER_SIZE.into()) as u128;
        // A slot that fits in a cache line takes a power-of-two share of one; a larger one
        // whole lines; and the tags go apart (8 bytes each, in an array after the payloads,
        // rounded up to 128 and the payload offset) where that takes fewer lines a slot of at
        // most SPLIT_MAX bytes.
        let used = payload_offset + slot_size as u128;
        let inline = if used <= 64 {
            used.next_power_of_two()
        } else {
            up(used, payload_offset.max(64))
        };
        let apart = up(slot_size as u128, payload_offset.max(64));
        let (stride, tags) = if apart < inline && slot_size <= SPLIT_MAX {
            (apart, up(capacity as u128 * 8, payload_offset.max(128)))
        } else {
            (inline, 0)
        };
        let control_offset = up(HEADER_SIZE as u128, CONTROL_ALIGN.into());
        let slots_offset = up(
            control_offset + control_size as u128,
            SLOTS_ALIGN.max(align).into(),
        );
        let total = slots_offset + lanes as u128 * (tags + capacity as u128 * stride);
        if inline > u32::MAX.into() || total > MAX_SEGMENT_SIZE.into() {
            Err(ConfigError::TooLarge {
                capacity,
                slot_size,
            })
        } else {
            Ok(total as u64)
        }
    };
    let g = match (result, expected) {
        (Ok(g), Ok(total)) => {
            assert_eq!(g.total_size, total, "size differs from the model's");
            g
        }
        (result, expected) => {
            return assert_eq!(result.map(|g| g.total_size), expected, "model disagrees")
        }
    };

    check_geometry(&g, g.total_size);
    // What `for_config` promises beyond `Geometry`'s invariants: the shape asked for, and
    // payloads aligned for the type in every slot.
    assert_eq!(
        (g.capacity, g.slot_size as u64, g.lanes),
        (capacity, slot_size, lanes)
    );
    assert_eq!(g.control_size, control_size);
    assert!(
        u64::from(g.payload_offset).is_multiple_of(align),
        "payload unaligned"
    );
    assert!(
        g.slot_stride.is_multiple_of(g.payload_offset),
        "later slots' payloads unaligned"
    );

    let fp = TypeFingerprint::bytes();
    let header = HeaderValues {
        magic: MAGIC,
        version: FORMAT_VERSION,
        state: STATE_READY,
        ring_kind: RING_BROADCAST,
        header_size: HEADER_SIZE as u32,
        total_size: g.total_size,
        capacity: g.capacity,
        slot_size: g.slot_size,
        slot_stride: g.slot_stride,
        payload_offset: g.payload_offset,
        slot_layout: g.slot_layout(),
        control_size: g.control_size,
        control_offset: g.control_offset,
        slots_offset: g.slots_offset,
        creator_pid: 1,
        policy: 2,
        max_readers: 3,
        history: 1,
        lanes: g.lanes,
        fp_kind: fp.kind as u32,
        fp_size: fp.size,
        fp_align: fp.align,
        fp_name_hash: fp.name_hash,
        fp_name: fp.name,
    };
    assert_eq!(
        Geometry::validate(&header, g.total_size, control_size),
        Ok(g),
        "a created geometry is refused on open"
    );
    // The same header against a segment of another size, or another control block, is refused.
    for other_len in [g.total_size - 1, g.total_size + 1] {
        assert!(Geometry::validate(&header, other_len, control_size).is_err());
    }
    assert!(Geometry::validate(&header, g.total_size, control_size ^ 1).is_err());

    if g.total_size > MAX_BUILT_SEGMENT {
        return;
    }
    let header_bytes = header_bytes(&header);
    let header_buf = SegmentBuf::new(&header_bytes);
    // SAFETY: the buffer is 8-aligned with HEADER_SIZE readable bytes, alive for the call.
    let read_back = unsafe { HeaderValues::read(header_buf.as_ptr()) };
    assert_eq!(
        read_back, header,
        "fuzz/src/lib.rs's copy of the header layout is out of date"
    );
    let mut segment = vec![0u8; g.total_size as usize];
    segment[..HEADER_SIZE].copy_from_slice(&header_bytes);
    assert_eq!(
        check_segment(&segment),
        Some(g),
        "a created segment is refused on open"
    );
    if shape.edits.is_empty() {
        return;
    }
    for &(offset, value) in &shape.edits {
        segment[offset as usize] = value;
    }
    check_segment(&segment);
});
