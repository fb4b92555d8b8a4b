//! Helpers shared by the fuzz targets: what an opener does with a segment's bytes
//! ([`check_segment`]), the invariants a [`Geometry`] promises written out as assertions, a
//! segment buffer whose size ASan knows to the byte, and the header's byte layout for targets
//! that build segments.
//!
//! The targets themselves stay thin; what they check lives here so that both check the same
//! promises.

pub mod frames;

use shmbus::layout::{
    Geometry, HeaderValues, LayoutError, TopicShape, CONTROL_ALIGN, HEADER_SIZE, MAX_CAPACITY,
    MAX_LANES, MAX_READERS, MAX_SEGMENT_SIZE, MAX_SLOT_SIZE, SLOTS_ALIGN, SLOT_HEADER_SIZE,
    TYPE_NAME_LEN,
};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

/// Open `segment` as `Subscriber::open` does: read the header once (`HeaderValues::read`),
/// then `Geometry::validate` it against the segment's real length. Returns the geometry if it
/// was accepted, after asserting its invariants and reading its extreme bytes.
///
/// # Panics
/// If validation breaks a promise: a short segment not refused as `TooSmall`, or an accepted
/// geometry that breaks an invariant or reaches outside the segment.
pub fn check_segment(segment: &[u8]) -> Option<Geometry> {
    let buf = SegmentBuf::new(segment);
    let len = buf.len() as u64;
    // SAFETY: the buffer is 8-aligned with at least HEADER_SIZE readable bytes (zero-padded
    // past `len`), and lives until the end of this function.
    let values = unsafe { HeaderValues::read(buf.as_ptr()) };
    // The control block size the opener expects: the bus passes its own constant; taking the
    // header's lets inputs with any size reach the checks after that one.
    let result = Geometry::validate(&values, len, values.control_size);
    if len < HEADER_SIZE as u64 {
        assert_eq!(result, Err(LayoutError::TooSmall { size: len }));
        return None;
    }
    let geometry = result.ok()?;
    check_geometry(&geometry, len);
    // The topic's shape, checked after the geometry as the opener does: a typed error or a
    // shape that keeps its invariants.
    if let Ok(shape) = TopicShape::validate(&values, geometry.capacity) {
        assert!((1..=MAX_READERS).contains(&shape.max_readers));
        assert!(shape.history < geometry.capacity);
        assert_eq!(shape.policy as u32, values.policy);
    }
    // SAFETY: `check_geometry` just asserted that the geometry lies inside the `len` bytes of
    // the buffer; were that assertion wrong, ASan reports the read.
    unsafe { buf.touch_geometry(&geometry) };
    Some(geometry)
}

/// The bytes of a header holding `h`, as the creator's `SegmentHeader::publish` lays them out
/// (`#[repr(C)]`, native byte order), for targets that build whole segments. The layout is
/// private to shmbus, so the targets check this copy of it by reading it back with
/// `HeaderValues::read`.
pub fn header_bytes(h: &HeaderValues) -> [u8; HEADER_SIZE] {
    let mut out = [0u8; HEADER_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        out[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &h.magic.to_ne_bytes());
    put(8, &h.version.to_ne_bytes());
    put(12, &h.state.to_ne_bytes());
    put(16, &h.ring_kind.to_ne_bytes());
    put(20, &h.header_size.to_ne_bytes());
    put(24, &h.total_size.to_ne_bytes());
    put(32, &h.capacity.to_ne_bytes());
    put(40, &h.slot_size.to_ne_bytes());
    put(44, &h.slot_stride.to_ne_bytes());
    put(48, &h.payload_offset.to_ne_bytes());
    put(52, &h.control_size.to_ne_bytes());
    put(56, &h.control_offset.to_ne_bytes());
    put(64, &h.slots_offset.to_ne_bytes());
    put(72, &h.creator_pid.to_ne_bytes());
    put(76, &h.fp_kind.to_ne_bytes());
    put(80, &h.fp_size.to_ne_bytes());
    put(88, &h.fp_align.to_ne_bytes());
    put(92, &h.slot_layout.to_ne_bytes());
    put(96, &h.fp_name_hash.to_ne_bytes());
    // The name is stored as little-endian words (see `HeaderValues::read`).
    for (i, chunk) in h.fp_name.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        put(104 + 8 * i, &word.to_ne_bytes());
    }
    const _: () = assert!(104 + TYPE_NAME_LEN <= 168);
    put(168, &h.policy.to_ne_bytes());
    put(172, &h.max_readers.to_ne_bytes());
    put(176, &h.history.to_ne_bytes());
    put(184, &h.lanes.to_ne_bytes());
    const _: () = assert!(188 <= HEADER_SIZE);
    out
}

/// Assert every invariant documented on [`Geometry`] for a segment of `mapped_len` bytes.
/// The arithmetic is done in `u128`, so that the checker cannot overflow where the library
/// might.
pub fn check_geometry(g: &Geometry, mapped_len: u64) {
    let wide = |x: u64| x as u128;
    assert!(
        g.capacity.is_power_of_two() && (2..=MAX_CAPACITY).contains(&g.capacity),
        "capacity {} is not a power of two in 2..={MAX_CAPACITY}",
        g.capacity
    );
    assert!(
        (1..=MAX_SLOT_SIZE).contains(&g.slot_size),
        "slot size {} out of range",
        g.slot_size
    );
    assert!(
        g.payload_offset >= SLOT_HEADER_SIZE && g.payload_offset.is_power_of_two(),
        "payload offset {} is not a power of two >= {SLOT_HEADER_SIZE}",
        g.payload_offset
    );
    // Tags inline: the payload after its tag in the slot; tags apart: the payload alone, and
    // the tag array rounded up so that the payloads after it stay aligned.
    let inline = g.tags_size == 0;
    let payload_at = if inline { g.payload_offset } else { 0 };
    assert!(
        wide(g.slot_stride.into()) >= wide(payload_at.into()) + wide(g.slot_size.into()),
        "stride {} smaller than payload offset {payload_at} + slot size {}",
        g.slot_stride,
        g.slot_size
    );
    assert!(
        g.slot_stride.is_multiple_of(g.payload_offset),
        "stride {} not a multiple of the payload offset {}",
        g.slot_stride,
        g.payload_offset
    );
    if !inline {
        assert!(
            wide(g.tags_size) >= wide(g.capacity) * 8
                && g.tags_size.is_multiple_of(g.payload_offset.into())
                && g.tags_size.is_multiple_of(64),
            "tag array of {} bytes for {} slots, payload offset {}",
            g.tags_size,
            g.capacity,
            g.payload_offset
        );
    }
    assert!(
        g.slot_stride.is_multiple_of(8),
        "stride {} not 8-aligned",
        g.slot_stride
    );
    assert!(
        g.control_offset >= HEADER_SIZE as u64 && g.control_offset.is_multiple_of(CONTROL_ALIGN),
        "control block at {} overlaps the header or is unaligned",
        g.control_offset
    );
    assert!(
        wide(g.control_offset) + wide(g.control_size.into()) <= wide(g.slots_offset),
        "control block {}+{} runs into the slots at {}",
        g.control_offset,
        g.control_size,
        g.slots_offset
    );
    assert!(
        g.slots_offset.is_multiple_of(SLOTS_ALIGN),
        "slot array unaligned"
    );
    assert!(
        (1..=MAX_LANES).contains(&g.lanes),
        "lanes {} out of range",
        g.lanes
    );
    assert!(
        g.slots_offset.is_multiple_of(g.payload_offset.into()),
        "slot array not aligned to the payload offset"
    );
    let lane = wide(g.tags_size) + wide(g.capacity) * wide(g.slot_stride.into());
    let slots_end = wide(g.slots_offset) + wide(g.lanes.into()) * lane;
    assert!(
        slots_end <= wide(g.total_size),
        "slots end at {slots_end}, past the segment's {} bytes",
        g.total_size
    );
    assert!(g.total_size <= MAX_SEGMENT_SIZE, "segment above the limit");
    assert_eq!(g.total_size, mapped_len, "geometry for another size");
}

/// A zeroed, 8-aligned heap buffer holding a segment of exactly `len` bytes, padded with zeros
/// to at least [`HEADER_SIZE`] so that the header can always be read. The allocation is exactly
/// `max(len, HEADER_SIZE)` bytes, so ASan reports a touch one byte past it.
pub struct SegmentBuf {
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
}

impl SegmentBuf {
    /// A buffer holding `bytes` (the segment), zero-padded up to a header's size.
    pub fn new(bytes: &[u8]) -> Self {
        let layout = Layout::from_size_align(bytes.len().max(HEADER_SIZE), 8).expect("small");
        // SAFETY: the layout's size is at least HEADER_SIZE, never zero.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation failed");
        // SAFETY: the allocation holds at least `bytes.len()` bytes and is fresh, so it does not
        // overlap `bytes`.
        unsafe {
            ptr.as_ptr()
                .copy_from_nonoverlapping(bytes.as_ptr(), bytes.len())
        };
        Self {
            ptr,
            layout,
            len: bytes.len(),
        }
    }

    /// The segment's real length (without the padding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the segment is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start of the buffer: 8-aligned, at least [`HEADER_SIZE`] readable bytes.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Touch the bytes a user of geometry `g` reaches first and last: both ends of the control
    /// block, and the first byte, the last payload byte and the last byte of slot 0 and of the
    /// last slot. Addresses are computed as a mapping's user computes them (base plus offset,
    /// unchecked), so a geometry that reaches past the segment is an out-of-bounds read, which
    /// ASan reports.
    ///
    /// # Safety
    /// `g` must lie inside this buffer: [`check_geometry`]`(g, self.len())` passed.
    pub unsafe fn touch_geometry(&self, g: &Geometry) {
        let touch = |offset: u64| {
            // SAFETY: `offset` is inside the segment per the caller's contract, which a
            // wrong `check_geometry` would break: this read is the second line of defence,
            // the one ASan watches.
            unsafe { self.ptr.as_ptr().add(offset as usize).read_volatile() }
        };
        if g.control_size > 0 {
            touch(g.control_offset);
            touch(g.control_offset + g.control_size as u64 - 1);
        }
        let stride = g.slot_stride as u64;
        let payload_at = if g.tags_size == 0 { g.payload_offset as u64 } else { 0 };
        // The first slot of the first lane, and the last of the last: their tags, and their
        // payloads' ends.
        for (lane, slot) in [(0, 0), (g.lanes - 1, g.capacity - 1)] {
            let lane_at = g.lane_offset(lane);
            let start = lane_at + slot * stride;
            let tag = if g.tags_size == 0 {
                start
            } else {
                lane_at + g.capacity * stride + slot * 8
            };
            touch(tag);
            touch(tag + 7);
            touch(start + payload_at + g.slot_size as u64 - 1);
            touch(start + stride - 1);
        }
    }
}

impl Drop for SegmentBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
