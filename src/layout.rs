//! The on-memory format of a topic's segment: a header, a control block and a slot array.
//!
//! ```text
//! offset 0                 HEADER_SIZE (256)      control_offset + control_size
//! | SegmentHeader ........ | control block ...... | lane 0 | lane 1 | ... | lane lanes-1 |
//!                          ^ control_offset        ^ slots_offset (64-aligned)
//!
//! a lane, tags inline (SLOTS_INLINE):
//! | slot 0 | slot 1 | ... | slot capacity-1 |       slot i at i * slot_stride
//! slot i = [tag: stamp u32, len u32][pad to payload_offset][payload: slot_size bytes][pad]
//!
//! a lane, tags apart (SLOTS_SPLIT):
//! | payload 0 | payload 1 | ... | payload capacity-1 | tag 0 | tag 1 | ... | pad to tags_size |
//!   payload i at i * slot_stride                      tag i at capacity * slot_stride + 8 * i
//! ```
//!
//! Tags inline put a small message and its tag on one cache line: a message moves one line.
//! A payload of whole lines (64 bytes, 1 KiB) would need one more line for its tag, so such
//! slots keep their tags apart, eight to a line: a message then moves its payload's lines and
//! an eighth of a tag line, where inline it moved one line more ([`Geometry::for_config`]
//! chooses, for slots up to [`SPLIT_MAX`] bytes). The tags come after the payloads, so that a segment truncated under its readers
//! (see `crate::sigbus`) never leaves a tag that says "ready" over a payload that is gone: a
//! tag the cut spared lies past every payload of its lane.
//!
//! Everything the header says is computed in one place ([`Geometry::for_config`]) when a segment
//! is created, and checked in one place ([`Geometry::validate`]) when it is opened. A segment is
//! written by other processes, any of which may be buggy or hostile, so validation treats every
//! byte as untrusted: each field is read exactly once (into [`HeaderValues`]), every offset and
//! size is checked with overflow-checked arithmetic against the mapped length, and only a
//! [`Geometry`] that passed all checks is ever used to compute an address.
//!
//! This module computes and checks; it never maps, opens or allocates.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `b"SHMBUS\0\x01"` read as a little-endian `u64`: the first 8 bytes of every segment.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMBUS\0\x01");
/// The format version this build reads and writes. Bumped on any change of the layout.
pub const FORMAT_VERSION: u32 = 4;
/// Bytes reserved for the header at the start of the segment.
pub const HEADER_SIZE: usize = 256;
/// Value of `state` once the creator has initialised everything: `b"REDY"`.
pub const STATE_READY: u32 = u32::from_le_bytes(*b"REDY");
/// `ring_kind` of a broadcast ring: one writer, a table of readers (see `crate::ring::broadcast`).
pub const RING_BROADCAST: u32 = 2;
/// Largest number of readers a topic's table may hold.
pub const MAX_READERS: u32 = 1024;
/// Largest number of publishers (lanes) a topic may have.
pub const MAX_LANES: u32 = 64;
/// Largest number of slots a ring may have.
pub const MAX_CAPACITY: u64 = 1 << 24;
/// Largest payload a slot may hold: 16 MiB.
pub const MAX_SLOT_SIZE: u32 = 16 << 20;
/// Largest payload alignment a slot supports.
pub const MAX_ALIGN: u32 = 4096;
/// Size of a slot's tag (`stamp`, `len`).
pub const SLOT_HEADER_SIZE: u32 = 8;
/// `slot_layout` of a lane whose slots start with their tags.
pub const SLOTS_INLINE: u32 = 0;
/// `slot_layout` of a lane whose tags lie apart, in an array after the payloads.
pub const SLOTS_SPLIT: u32 = 1;
/// Alignment of a split lane's tag array, and of its end (at least): two lines, so that the
/// adjacent-line prefetcher pairs no tag line with a payload line.
pub const TAGS_ALIGN: u64 = 128;
/// Largest slot whose tag goes apart when that saves a line: four lines, where the line saved
/// is a fifth of a message's. Above it the saving is small, and a slot written only in part
/// (a byte message shorter than its slot; a large message of which the first bytes are read
/// first) would pay a line more: its first bytes no longer share its tag's line.
pub const SPLIT_MAX: u64 = 256;
/// Largest segment this build creates or opens (64 GiB): keeps every offset well inside `u64`
/// and `usize` arithmetic.
pub const MAX_SEGMENT_SIZE: u64 = 64 << 30;
/// Bytes of a type's name kept in the header (for error messages; the hash decides).
pub const TYPE_NAME_LEN: usize = 64;
/// Alignment of the control block (what `crossbeam_utils::CachePadded` needs on x86-64).
pub const CONTROL_ALIGN: u64 = 128;
/// Alignment of the slot array: a cache line.
pub const SLOTS_ALIGN: u64 = CACHE_LINE;
/// The cache line size the layout is laid out for (x86-64 and most AArch64).
pub const CACHE_LINE: u64 = 64;

/// Whether a topic carries one fixed-size `Pod` type or byte messages of variable length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum PayloadKind {
    /// Every message is one value of a `bytemuck::Pod` type.
    Typed = 1,
    /// Messages are byte strings of any length up to the slot size.
    Bytes = 2,
}

/// What a topic's messages are: checked on open so that a subscriber of another type gets
/// [`OpenError::IncompatibleType`](crate::OpenError::IncompatibleType), not garbage.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypeFingerprint {
    /// Typed or bytes.
    pub kind: PayloadKind,
    /// `size_of` the type (0 for bytes).
    pub size: u64,
    /// `align_of` the type (1 for bytes).
    pub align: u32,
    /// FNV-1a hash of the type's name (or of the schema name the user gave).
    pub name_hash: u64,
    /// The first [`TYPE_NAME_LEN`] bytes of that name, zero-padded.
    pub name: [u8; TYPE_NAME_LEN],
}

impl TypeFingerprint {
    /// The fingerprint of a `Pod` type under a name (by default `std::any::type_name::<T>()`).
    pub fn typed<T>(name: &str) -> Self {
        Self::new(
            PayloadKind::Typed,
            size_of::<T>() as u64,
            align_of::<T>() as u32,
            name,
        )
    }

    /// The fingerprint of a byte topic.
    pub fn bytes() -> Self {
        Self::new(PayloadKind::Bytes, 0, 1, "[u8]")
    }

    fn new(kind: PayloadKind, size: u64, align: u32, name: &str) -> Self {
        let mut short = [0u8; TYPE_NAME_LEN];
        let n = name.len().min(TYPE_NAME_LEN);
        short[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self {
            kind,
            size,
            align,
            name_hash: fnv1a(name.as_bytes()),
            name: short,
        }
    }

    /// The stored name, as far as it is valid UTF-8.
    pub fn name(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(TYPE_NAME_LEN);
        match std::str::from_utf8(&self.name[..end]) {
            Ok(s) => s,
            Err(e) => std::str::from_utf8(&self.name[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl std::fmt::Debug for TypeFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} `{}` (size {}, align {}, hash {:016x})",
            self.kind,
            self.name(),
            self.size,
            self.align,
            self.name_hash
        )
    }
}

impl std::fmt::Display for TypeFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            PayloadKind::Bytes => f.write_str("bytes"),
            PayloadKind::Typed => write!(
                f,
                "`{}` (size {}, align {})",
                self.name(),
                self.size,
                self.align
            ),
        }
    }
}

/// 64-bit FNV-1a: a small, stable hash (the same in every build and process).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The segment header as it lies in shared memory. `magic`, `version` and `state` are frozen:
/// every format version keeps them first, in this order.
///
/// Every field is an atomic, read with `Relaxed` loads after the `Acquire` load of `state`: the
/// header is written once by the creator, but a hostile peer may write it at any time, and a
/// plain read racing such a write would be a data race. Nothing here is `Pod` (see STYLE.md 12).
#[repr(C)]
pub(crate) struct SegmentHeader {
    magic: AtomicU64,
    version: AtomicU32,
    /// 0 while the creator initialises; [`STATE_READY`] after (Release, pairs with the Acquire
    /// load in `HeaderValues::read`: every other field is visible before `state` says ready).
    state: AtomicU32,
    ring_kind: AtomicU32,
    header_size: AtomicU32,
    total_size: AtomicU64,
    capacity: AtomicU64,
    slot_size: AtomicU32,
    slot_stride: AtomicU32,
    payload_offset: AtomicU32,
    control_size: AtomicU32,
    control_offset: AtomicU64,
    slots_offset: AtomicU64,
    creator_pid: AtomicU32,
    fp_kind: AtomicU32,
    fp_size: AtomicU64,
    fp_align: AtomicU32,
    slot_layout: AtomicU32,
    fp_name_hash: AtomicU64,
    fp_name: [AtomicU64; TYPE_NAME_LEN / 8],
    policy: AtomicU32,
    max_readers: AtomicU32,
    history: AtomicU64,
    lanes: AtomicU32,
}

const _: () = assert!(size_of::<SegmentHeader>() <= HEADER_SIZE);

/// The header's fields, each read once from shared memory into a local. Not yet validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderValues {
    /// Must equal [`MAGIC`].
    pub magic: u64,
    /// Must equal [`FORMAT_VERSION`].
    pub version: u32,
    /// Must equal [`STATE_READY`].
    pub state: u32,
    /// Which ring algorithm the slots belong to.
    pub ring_kind: u32,
    /// Must equal [`HEADER_SIZE`].
    pub header_size: u32,
    /// The segment's size as its creator computed it.
    pub total_size: u64,
    /// Number of slots.
    pub capacity: u64,
    /// Largest payload in bytes.
    pub slot_size: u32,
    /// Distance between two slots.
    pub slot_stride: u32,
    /// Offset of the payload inside a slot.
    pub payload_offset: u32,
    /// [`SLOTS_INLINE`] or [`SLOTS_SPLIT`].
    pub slot_layout: u32,
    /// Size of the control block.
    pub control_size: u32,
    /// Offset of the control block.
    pub control_offset: u64,
    /// Offset of slot 0.
    pub slots_offset: u64,
    /// Pid of the creating process.
    pub creator_pid: u32,
    /// Raw [`Policy`].
    pub policy: u32,
    /// Entries in the reader table.
    pub max_readers: u32,
    /// Messages the writer keeps for readers that join late.
    pub history: u64,
    /// Rings in the slot array, one per publisher.
    pub lanes: u32,
    /// Raw payload kind.
    pub fp_kind: u32,
    /// Raw type size.
    pub fp_size: u64,
    /// Raw type alignment.
    pub fp_align: u32,
    /// Raw type name hash.
    pub fp_name_hash: u64,
    /// Raw type name bytes.
    pub fp_name: [u8; TYPE_NAME_LEN],
}

impl HeaderValues {
    /// Read every field once.
    ///
    /// # Safety
    /// `base` must be 8-aligned and valid for reads of [`HEADER_SIZE`] bytes for the duration of
    /// the call (other processes may write those bytes concurrently: all reads are atomic).
    pub unsafe fn read(base: *const u8) -> Self {
        // SAFETY: the caller guarantees `HEADER_SIZE >= size_of::<SegmentHeader>()` readable,
        // 8-aligned bytes; every field is an atomic, for which any bit pattern is valid, and
        // shared references to atomics permit concurrent writes by others.
        let h = unsafe { &*(base as *const SegmentHeader) };
        // Acquire: pairs with the Release store of `state` in `SegmentHeader::publish`; the
        // fields below are read after it.
        let state = h.state.load(Ordering::Acquire);
        let mut fp_name = [0u8; TYPE_NAME_LEN];
        for (chunk, word) in fp_name.chunks_exact_mut(8).zip(&h.fp_name) {
            chunk.copy_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        Self {
            magic: h.magic.load(Ordering::Relaxed),
            version: h.version.load(Ordering::Relaxed),
            state,
            ring_kind: h.ring_kind.load(Ordering::Relaxed),
            header_size: h.header_size.load(Ordering::Relaxed),
            total_size: h.total_size.load(Ordering::Relaxed),
            capacity: h.capacity.load(Ordering::Relaxed),
            slot_size: h.slot_size.load(Ordering::Relaxed),
            slot_stride: h.slot_stride.load(Ordering::Relaxed),
            payload_offset: h.payload_offset.load(Ordering::Relaxed),
            slot_layout: h.slot_layout.load(Ordering::Relaxed),
            control_size: h.control_size.load(Ordering::Relaxed),
            control_offset: h.control_offset.load(Ordering::Relaxed),
            slots_offset: h.slots_offset.load(Ordering::Relaxed),
            creator_pid: h.creator_pid.load(Ordering::Relaxed),
            policy: h.policy.load(Ordering::Relaxed),
            max_readers: h.max_readers.load(Ordering::Relaxed),
            history: h.history.load(Ordering::Relaxed),
            lanes: h.lanes.load(Ordering::Relaxed),
            fp_kind: h.fp_kind.load(Ordering::Relaxed),
            fp_size: h.fp_size.load(Ordering::Relaxed),
            fp_align: h.fp_align.load(Ordering::Relaxed),
            fp_name_hash: h.fp_name_hash.load(Ordering::Relaxed),
            fp_name,
        }
    }

    /// The fingerprint the header claims, if its kind is known.
    pub fn fingerprint(&self) -> Option<TypeFingerprint> {
        let kind = match self.fp_kind {
            1 => PayloadKind::Typed,
            2 => PayloadKind::Bytes,
            _ => return None,
        };
        Some(TypeFingerprint {
            kind,
            size: self.fp_size,
            align: self.fp_align,
            name_hash: self.fp_name_hash,
            name: self.fp_name,
        })
    }
}

/// Why a segment's header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The mapping is smaller than a header.
    #[error("segment of {size} bytes is too small for a {HEADER_SIZE}-byte header")]
    TooSmall {
        /// Size of the segment.
        size: u64,
    },
    /// The first bytes are not shmbus's magic: not a shmbus segment.
    #[error("not a shmbus segment (magic {found:#018x})")]
    BadMagic {
        /// What was found.
        found: u64,
    },
    /// Written by another version of the format.
    #[error("segment format version {found}, this build reads version {FORMAT_VERSION}")]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
    },
    /// The creator has not finished initialising (or died while doing so).
    #[error("segment is not ready (its creator has not finished initialising it)")]
    NotReady,
    /// The header describes a ring kind this build does not know.
    #[error("unknown ring kind {found}")]
    UnknownRingKind {
        /// The kind in the header.
        found: u32,
    },
    /// The fields disagree with each other or with the segment's size.
    #[error("inconsistent header: {0}")]
    Inconsistent(&'static str),
}

/// A segment's geometry: every offset and size needed to address the control block and the
/// slots, all checked against each other and the mapping's length.
///
/// Invariants (established by [`Geometry::for_config`] and [`Geometry::validate`], the only
/// constructors): `capacity` is a power of two in `2..=MAX_CAPACITY`; `payload_offset >= 8` is a
/// power of two, a multiple of the payload alignment; `slot_stride` is a multiple of
/// `payload_offset` (so every slot's payload is aligned) and at least `payload_offset +
/// slot_size` with tags inline, `slot_size` with tags apart; `for_config` also makes it a power
/// of two up to a cache line and a multiple of one above (`validate` accepts any stride with
/// the first two properties); `tags_size` is 0 with tags inline, and with tags apart
/// `capacity * 8` rounded up to [`TAGS_ALIGN`] and to `payload_offset`;
/// `control_offset + control_size <= slots_offset`;
/// `slots_offset + lanes * lane_size() <= total_size <= MAX_SEGMENT_SIZE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of slots, a power of two.
    pub capacity: u64,
    /// Largest payload in bytes.
    pub slot_size: u32,
    /// Distance between slots in bytes.
    pub slot_stride: u32,
    /// Offset of the payload inside a slot (tags inline); with tags apart, the payloads'
    /// alignment (a payload starts its slot).
    pub payload_offset: u32,
    /// Bytes of the tag array at the end of each lane: 0 when the tags are inline
    /// ([`SLOTS_INLINE`]); with the tags apart ([`SLOTS_SPLIT`]), 8 a slot, rounded up.
    pub tags_size: u64,
    /// Offset of the control block from the segment's start.
    pub control_offset: u64,
    /// Size of the control block.
    pub control_size: u32,
    /// Offset of slot 0 of lane 0 from the segment's start.
    pub slots_offset: u64,
    /// Rings in the slot array, one after another: one per publisher.
    pub lanes: u32,
    /// The whole segment's size.
    pub total_size: u64,
}

/// Why a requested topic shape cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Capacity must be a power of two between 2 and [`MAX_CAPACITY`].
    #[error("capacity {0} is not a power of two between 2 and {MAX_CAPACITY}")]
    Capacity(u64),
    /// Slot size must be between 1 and [`MAX_SLOT_SIZE`].
    #[error("slot size {0} is not between 1 and {MAX_SLOT_SIZE} bytes")]
    SlotSize(u64),
    /// The payload type's alignment is above [`MAX_ALIGN`].
    #[error("payload alignment {0} is above {MAX_ALIGN}")]
    Align(u64),
    /// A topic has between 1 and [`MAX_LANES`] publishers.
    #[error("{0} publishers is not between 1 and {MAX_LANES}")]
    Lanes(u32),
    /// The reader table must have between 1 and [`MAX_READERS`] entries.
    #[error("{0} subscribers is not between 1 and {MAX_READERS}")]
    Readers(u32),
    /// The history kept for late joiners must be below the capacity.
    #[error("a history of {history} messages is not below the capacity ({capacity})")]
    History {
        /// Requested history.
        history: u64,
        /// The topic's capacity.
        capacity: u64,
    },
    /// The whole segment would exceed [`MAX_SEGMENT_SIZE`].
    #[error("a segment of {capacity} slots of {slot_size} bytes exceeds the {MAX_SEGMENT_SIZE}-byte limit")]
    TooLarge {
        /// Requested capacity.
        capacity: u64,
        /// Requested slot size.
        slot_size: u64,
    },
}

/// The tag array of a lane whose tags lie apart: 8 bytes a slot, rounded up so that the next
/// lane's payloads are aligned ([`TAGS_ALIGN`], `payload_offset`: both powers of two). Cannot
/// overflow: `capacity <= MAX_CAPACITY` and `payload_offset <= MAX_ALIGN` (checked before).
fn tags_size_for(capacity: u64, payload_offset: u64) -> u64 {
    align_up(capacity * 8, TAGS_ALIGN.max(payload_offset)).expect("small values")
}

const fn align_up(x: u64, to: u64) -> Option<u64> {
    // `to` is a power of two here.
    match x.checked_add(to - 1) {
        Some(v) => Some(v & !(to - 1)),
        None => None,
    }
}

impl Geometry {
    /// The geometry of a new segment holding `lanes` rings of `capacity` slots of `slot_size`
    /// payload bytes each, aligned to `align`, behind a control block of `control_size` bytes.
    pub fn for_config(
        capacity: u64,
        slot_size: u64,
        align: u64,
        control_size: u32,
        lanes: u32,
    ) -> Result<Self, ConfigError> {
        if !capacity.is_power_of_two() || !(2..=MAX_CAPACITY).contains(&capacity) {
            return Err(ConfigError::Capacity(capacity));
        }
        if !(1..=MAX_SLOT_SIZE as u64).contains(&slot_size) {
            return Err(ConfigError::SlotSize(slot_size));
        }
        if !align.is_power_of_two() || align > MAX_ALIGN as u64 {
            return Err(ConfigError::Align(align));
        }
        if !(1..=MAX_LANES).contains(&lanes) {
            return Err(ConfigError::Lanes(lanes));
        }
        let too_large = ConfigError::TooLarge {
            capacity,
            slot_size,
        };
        let payload_offset = align.max(SLOT_HEADER_SIZE as u64);
        // No slot shares a cache line with its neighbour or crosses one line more than it
        // must: a small slot takes a power-of-two share of a line, a larger one whole lines.
        // A message then costs its own lines only, and a reader polling one slot never holds
        // the line the writer is filling for the next. Measured against the dense 72-byte
        // stride for 64-byte messages (`shmbus bench`, both builds alternated): the polling
        // round trip went from 1.35-1.40x to 1.21-1.28x the raw cache-line round trip, but
        // streaming fell from ~320 M to ~85 M msgs/s when the two CPUs are close: each
        // 64-byte message moved two lines. Where the tags apart save a line per message (a
        // payload of whole lines, up to SPLIT_MAX), they are taken: see the module comment.
        // Measured for 64-byte messages (`shmbus bench --quick --only shm-stream-64B --only
        // shm-poll-64B`, four runs of each build alternated, the receiver reading the whole
        // message): one-way rate 0.58-0.71x -> 0.72-0.83x the raw ring; round trip
        // 1.41-1.61x -> 1.34-1.60x the raw cache line (two lines each way either way).
        let used = payload_offset + slot_size;
        let inline_stride = if used <= CACHE_LINE {
            Some(used.next_power_of_two())
        } else {
            align_up(used, payload_offset.max(CACHE_LINE))
        }
        .filter(|&s| s <= u32::MAX as u64)
        .ok_or(too_large.clone())?;
        let split_stride =
            align_up(slot_size, payload_offset.max(CACHE_LINE)).expect("small values");
        let (slot_stride, tags_size) = if split_stride < inline_stride && slot_size <= SPLIT_MAX {
            (split_stride, tags_size_for(capacity, payload_offset))
        } else {
            (inline_stride, 0)
        };
        let control_offset = align_up(HEADER_SIZE as u64, CONTROL_ALIGN).expect("small constant");
        let slots_offset = align_up(control_offset + control_size as u64, SLOTS_ALIGN.max(align))
            .expect("small values");
        let total_size = capacity
            .checked_mul(slot_stride)
            .and_then(|s| s.checked_add(tags_size))
            .and_then(|s| s.checked_mul(lanes as u64))
            .and_then(|s| s.checked_add(slots_offset))
            .filter(|&t| t <= MAX_SEGMENT_SIZE)
            .ok_or(too_large)?;
        Ok(Self {
            capacity,
            slot_size: slot_size as u32,
            slot_stride: slot_stride as u32,
            payload_offset: payload_offset as u32,
            tags_size,
            control_offset,
            control_size,
            slots_offset,
            lanes,
            total_size,
        })
    }

    /// Offset of lane `lane` (its first slot) from the segment's start (`lane < lanes`).
    pub fn lane_offset(&self, lane: u32) -> u64 {
        debug_assert!(lane < self.lanes);
        // Cannot overflow: `validate` and `for_config` checked the whole array's end.
        self.slots_offset + lane as u64 * self.lane_size()
    }

    /// Bytes of one lane: its tag array (if apart) and its slots.
    pub fn lane_size(&self) -> u64 {
        self.tags_size + self.capacity * self.slot_stride as u64
    }

    /// [`SLOTS_INLINE`] or [`SLOTS_SPLIT`], as the header says it.
    pub fn slot_layout(&self) -> u32 {
        if self.tags_size == 0 {
            SLOTS_INLINE
        } else {
            SLOTS_SPLIT
        }
    }

    /// Check a header read from a segment of `mapped_len` bytes, expecting a control block of
    /// `control_size` bytes. Every field is checked against the others and against the mapping:
    /// the result can address nothing outside `0..mapped_len`.
    ///
    /// The checks run in the order a user would want to hear about problems: not a segment at
    /// all, then not ready, then another version, then inconsistent. The first 16 bytes (magic,
    /// version, state) keep their places and meaning in every format version, so that this
    /// order holds across versions.
    pub fn validate(
        h: &HeaderValues,
        mapped_len: u64,
        control_size: u32,
    ) -> Result<Self, LayoutError> {
        use LayoutError::Inconsistent;
        if mapped_len < HEADER_SIZE as u64 {
            return Err(LayoutError::TooSmall { size: mapped_len });
        }
        // A segment being created is zero-filled until its creator writes the header, so an
        // all-zero start means "not ready", not "foreign". Until `state` says ready no other
        // field can be trusted to be written, so it is checked before the version.
        if h.magic != MAGIC {
            if h.magic == 0 && h.state == 0 {
                return Err(LayoutError::NotReady);
            }
            return Err(LayoutError::BadMagic { found: h.magic });
        }
        if h.state != STATE_READY {
            return Err(LayoutError::NotReady);
        }
        if h.version != FORMAT_VERSION {
            return Err(LayoutError::UnsupportedVersion { found: h.version });
        }
        if h.ring_kind != RING_BROADCAST {
            return Err(LayoutError::UnknownRingKind { found: h.ring_kind });
        }
        if h.header_size as usize != HEADER_SIZE {
            return Err(Inconsistent("header size differs from this build's"));
        }
        if h.total_size != mapped_len {
            return Err(Inconsistent(
                "recorded size differs from the segment's size",
            ));
        }
        if !h.capacity.is_power_of_two() || !(2..=MAX_CAPACITY).contains(&h.capacity) {
            return Err(Inconsistent("capacity is not a power of two in range"));
        }
        if !(1..=MAX_SLOT_SIZE).contains(&h.slot_size) {
            return Err(Inconsistent("slot size out of range"));
        }
        if !h.payload_offset.is_power_of_two()
            || !(SLOT_HEADER_SIZE..=MAX_ALIGN).contains(&h.payload_offset)
        {
            return Err(Inconsistent("payload offset out of range"));
        }
        let (min_stride, tags_size) = match h.slot_layout {
            SLOTS_INLINE => (h.payload_offset as u64 + h.slot_size as u64, 0),
            SLOTS_SPLIT => (
                h.slot_size as u64,
                tags_size_for(h.capacity, h.payload_offset as u64),
            ),
            _ => return Err(Inconsistent("unknown slot layout")),
        };
        if (h.slot_stride as u64) < min_stride || h.slot_stride % h.payload_offset != 0 {
            return Err(Inconsistent(
                "slot stride smaller than a slot, or not a multiple of the payload offset",
            ));
        }
        if h.control_size != control_size {
            return Err(Inconsistent("control block size differs from this build's"));
        }
        if h.control_offset < HEADER_SIZE as u64 || h.control_offset % CONTROL_ALIGN != 0 {
            return Err(Inconsistent(
                "control block offset overlaps the header or is unaligned",
            ));
        }
        let control_end = h.control_offset.checked_add(control_size as u64);
        if control_end.is_none_or(|end| end > h.slots_offset) {
            return Err(Inconsistent("control block overlaps the slots"));
        }
        if h.slots_offset % SLOTS_ALIGN != 0 || h.slots_offset % h.payload_offset as u64 != 0 {
            return Err(Inconsistent("slot array is unaligned"));
        }
        if !(1..=MAX_LANES).contains(&h.lanes) {
            return Err(Inconsistent("publisher lanes out of range"));
        }
        let slots_end = h
            .capacity
            .checked_mul(h.slot_stride as u64)
            .and_then(|s| s.checked_add(tags_size))
            .and_then(|s| s.checked_mul(h.lanes as u64))
            .and_then(|s| s.checked_add(h.slots_offset));
        if slots_end.is_none_or(|end| end > mapped_len) || mapped_len > MAX_SEGMENT_SIZE {
            return Err(Inconsistent("slots extend past the end of the segment"));
        }
        Ok(Self {
            capacity: h.capacity,
            slot_size: h.slot_size,
            slot_stride: h.slot_stride,
            payload_offset: h.payload_offset,
            tags_size,
            control_offset: h.control_offset,
            control_size,
            slots_offset: h.slots_offset,
            lanes: h.lanes,
            total_size: mapped_len,
        })
    }
}

/// What a topic promises its publisher and subscribers, chosen at creation and kept in the
/// header.
///
/// ```
/// use shmbus::Policy;
/// // A market-data feed: the publisher never waits; a slow reader learns what it lost.
/// let feed = Policy::Overwrite;
/// // A command queue: nothing is lost; the publisher waits for the slowest reader.
/// assert_eq!(Policy::default(), Policy::Block);
/// # let _ = feed;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Policy {
    /// Backpressure: the publisher waits (or, with `try_*`, hands the message back) while the
    /// slowest subscriber is `capacity` messages behind. Subscribers read in place.
    #[default]
    Block = 1,
    /// Latest wins: the publisher never waits; a subscriber that falls a lap behind skips to
    /// the oldest message still in the ring and counts what it lost. Subscribers receive
    /// copies, validated against the publisher's overwriting (a seqlock).
    Overwrite = 2,
    /// As `Block`, but no call of the publisher waits: `send` and `loan` return the message or
    /// an error at once when the ring is full for any subscriber. A subscriber whose process
    /// died is evicted by `send` and `loan` once they have found the ring full for 10 ms with
    /// nothing sent (a few system calls then; the `try_*` forms never make them).
    Fail = 3,
}

impl Policy {
    /// The policy a header's raw value names.
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Block),
            2 => Some(Self::Overwrite),
            3 => Some(Self::Fail),
            _ => None,
        }
    }

    /// Whether the publisher waits for (or refuses on) the slowest subscriber.
    pub fn backpressure(self) -> bool {
        !matches!(self, Self::Overwrite)
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Block => "block",
            Self::Overwrite => "overwrite",
            Self::Fail => "fail",
        })
    }
}

/// A topic's policy and reader table, checked like the geometry.
///
/// Invariants (from [`TopicShape::validate`] or checked by [`TopicShape::new`]):
/// `1 <= max_readers <= MAX_READERS`; `history < capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicShape {
    /// What the publisher does when a subscriber falls behind.
    pub policy: Policy,
    /// Entries in the reader table: at most this many subscribers at once.
    pub max_readers: u32,
    /// Messages kept for subscribers that join late and ask for them.
    pub history: u64,
}

impl TopicShape {
    /// A shape for a ring of `capacity` slots.
    ///
    /// # Errors
    /// [`ConfigError::Readers`], [`ConfigError::History`].
    pub fn new(
        policy: Policy,
        max_readers: u32,
        history: u64,
        capacity: u64,
    ) -> Result<Self, ConfigError> {
        if !(1..=MAX_READERS).contains(&max_readers) {
            return Err(ConfigError::Readers(max_readers));
        }
        if history >= capacity {
            return Err(ConfigError::History { history, capacity });
        }
        Ok(Self {
            policy,
            max_readers,
            history,
        })
    }

    /// Check the header's policy, table size and history against a validated `capacity`.
    ///
    /// # Errors
    /// [`LayoutError::Inconsistent`].
    pub fn validate(h: &HeaderValues, capacity: u64) -> Result<Self, LayoutError> {
        let policy =
            Policy::from_raw(h.policy).ok_or(LayoutError::Inconsistent("unknown policy"))?;
        Self::new(policy, h.max_readers, h.history, capacity).map_err(|e| match e {
            ConfigError::Readers(_) => LayoutError::Inconsistent("reader table size out of range"),
            _ => LayoutError::Inconsistent("history not below the capacity"),
        })
    }
}

impl SegmentHeader {
    /// Write a new header for `geometry` and `fingerprint`, then mark it ready.
    ///
    /// # Safety
    /// `base` must be 8-aligned and valid for writes of [`HEADER_SIZE`] bytes; the segment must
    /// not yet be visible as ready to anyone (it was just created with `O_EXCL`).
    pub(crate) unsafe fn publish(
        base: *mut u8,
        geometry: &Geometry,
        shape: &TopicShape,
        fingerprint: &TypeFingerprint,
        creator_pid: u32,
    ) {
        // SAFETY: see the function's contract; the fields are atomics, valid for any bytes.
        let h = unsafe { &*(base as *const SegmentHeader) };
        let r = Ordering::Relaxed;
        h.magic.store(MAGIC, r);
        h.version.store(FORMAT_VERSION, r);
        h.ring_kind.store(RING_BROADCAST, r);
        h.header_size.store(HEADER_SIZE as u32, r);
        h.total_size.store(geometry.total_size, r);
        h.capacity.store(geometry.capacity, r);
        h.slot_size.store(geometry.slot_size, r);
        h.slot_stride.store(geometry.slot_stride, r);
        h.payload_offset.store(geometry.payload_offset, r);
        h.slot_layout.store(geometry.slot_layout(), r);
        h.control_size.store(geometry.control_size, r);
        h.control_offset.store(geometry.control_offset, r);
        h.slots_offset.store(geometry.slots_offset, r);
        h.creator_pid.store(creator_pid, r);
        h.policy.store(shape.policy as u32, r);
        h.max_readers.store(shape.max_readers, r);
        h.history.store(shape.history, r);
        h.lanes.store(geometry.lanes, r);
        h.fp_kind.store(fingerprint.kind as u32, r);
        h.fp_size.store(fingerprint.size, r);
        h.fp_align.store(fingerprint.align, r);
        h.fp_name_hash.store(fingerprint.name_hash, r);
        for (word, chunk) in h.fp_name.iter().zip(fingerprint.name.chunks_exact(8)) {
            word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), r);
        }
        // Release: pairs with the Acquire load of `state` in `HeaderValues::read`, so an opener
        // that sees READY sees every field above (and the zeroed control block and slots).
        h.state.store(STATE_READY, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for(g: &Geometry) -> HeaderValues {
        let fp = TypeFingerprint::typed::<u64>("u64");
        HeaderValues {
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
            policy: 1,
            max_readers: 4,
            history: 0,
            lanes: g.lanes,
            fp_kind: 1,
            fp_size: fp.size,
            fp_align: fp.align,
            fp_name_hash: fp.name_hash,
            fp_name: fp.name,
        }
    }

    #[test]
    fn a_computed_geometry_validates() {
        for (cap, size, align) in [(2, 1, 1), (1024, 64, 8), (8, 65536, 16), (4, 3, 4096)] {
            let g = Geometry::for_config(cap, size, align, 640, 1).unwrap();
            assert_eq!(
                Geometry::validate(&header_for(&g), g.total_size, 640),
                Ok(g)
            );
            assert_eq!(g.payload_offset as u64 % align, 0);
            let payload_at = if g.tags_size == 0 {
                g.payload_offset
            } else {
                0
            };
            assert!(g.slot_stride as u64 >= payload_at as u64 + size);
        }
    }

    #[test]
    fn slots_never_share_or_needlessly_cross_a_cache_line() {
        for align in [1u64, 2, 4, 8, 16, 64, 128] {
            for size in 1..=300u64 {
                let g = Geometry::for_config(64, size, align, 640, 1).unwrap();
                let inline = g.tags_size == 0;
                let payload_at = if inline { g.payload_offset as u64 } else { 0 };
                let (stride, used) = (g.slot_stride as u64, payload_at + size);
                assert_eq!(
                    stride % g.payload_offset as u64,
                    0,
                    "size {size} align {align}"
                );
                assert!(stride >= used);
                // Tags apart exactly when the tag inline would take the slot more lines.
                let unit = CACHE_LINE.max(g.payload_offset as u64);
                let lines_inline = (g.payload_offset as u64 + size).div_ceil(unit) * unit;
                let lines_apart = size.div_ceil(unit) * unit;
                assert_eq!(
                    !inline,
                    lines_apart < lines_inline
                        && g.payload_offset as u64 + size > CACHE_LINE
                        && size <= SPLIT_MAX,
                    "size {size} align {align}: {g:?}"
                );
                if !inline {
                    assert_eq!(g.tags_size % (TAGS_ALIGN.max(g.payload_offset as u64)), 0);
                    assert!(g.tags_size >= 64 * 8);
                }
                if used <= CACHE_LINE && inline {
                    assert_eq!(
                        CACHE_LINE % stride,
                        0,
                        "size {size} align {align}: {stride}"
                    );
                } else {
                    assert_eq!(
                        stride % CACHE_LINE,
                        0,
                        "size {size} align {align}: {stride}"
                    );
                }
                assert_eq!(g.slots_offset % CACHE_LINE, 0);
            }
        }
        let g = Geometry::for_config(1024, 64, 8, 640, 1).unwrap();
        assert_eq!(
            (g.slot_stride, g.tags_size, g.slot_layout()),
            (64, 1024 * 8, SLOTS_SPLIT),
            "a 64-byte message: one line of its own, its tag apart"
        );
        let g = Geometry::for_config(1024, 56, 8, 640, 1).unwrap();
        assert_eq!(
            (g.slot_stride, g.tags_size, g.slot_layout()),
            (64, 0, SLOTS_INLINE),
            "a 56-byte message and its tag: one line"
        );
    }

    #[test]
    fn an_eight_byte_message_takes_sixteen_bytes() {
        let g = Geometry::for_config(1024, 8, 8, 640, 1).unwrap();
        assert_eq!(g.slot_stride, 16);
        assert_eq!(g.payload_offset, 8);
    }

    #[test]
    fn bad_configs_are_refused() {
        assert_eq!(
            Geometry::for_config(3, 8, 8, 0, 1),
            Err(ConfigError::Capacity(3))
        );
        assert_eq!(
            Geometry::for_config(1, 8, 8, 0, 1),
            Err(ConfigError::Capacity(1))
        );
        assert_eq!(
            Geometry::for_config(4, 0, 8, 0, 1),
            Err(ConfigError::SlotSize(0))
        );
        assert!(matches!(
            Geometry::for_config(MAX_CAPACITY, MAX_SLOT_SIZE as u64, 8, 0, 1),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    #[test]
    fn each_inconsistency_is_refused() {
        let g = Geometry::for_config(16, 64, 8, 640, 1).unwrap();
        let ok = header_for(&g);
        let len = g.total_size;
        let check = |f: &dyn Fn(&mut HeaderValues), mapped: u64| {
            let mut h = ok;
            f(&mut h);
            Geometry::validate(&h, mapped, 640)
        };
        assert_eq!(
            check(&|_| {}, 100),
            Err(LayoutError::TooSmall { size: 100 })
        );
        assert!(matches!(
            check(&|h| h.magic = 7, len),
            Err(LayoutError::BadMagic { found: 7 })
        ));
        assert_eq!(
            check(&|h| h.version = 9, len),
            Err(LayoutError::UnsupportedVersion { found: 9 })
        );
        assert_eq!(check(&|h| h.state = 0, len), Err(LayoutError::NotReady));
        let inconsistent: [&dyn Fn(&mut HeaderValues); 10] = [
            &|h| h.capacity = 12,
            &|h| h.capacity = 0,
            &|h| h.slot_size = 0,
            &|h| h.slot_size = MAX_SLOT_SIZE + 1,
            &|h| h.slot_stride = 8,
            &|h| h.payload_offset = 3,
            &|h| h.control_offset = 0,
            &|h| h.slots_offset = h.control_offset,
            &|h| h.capacity = 1 << 20,
            &|h| h.total_size += 64,
        ];
        for f in inconsistent {
            assert!(
                matches!(check(f, len), Err(LayoutError::Inconsistent(_))),
                "{:?}",
                check(f, len)
            );
        }
    }

    #[test]
    fn fingerprints_tell_types_apart() {
        let a = TypeFingerprint::typed::<u64>("a::Tick");
        let b = TypeFingerprint::typed::<u64>("b::Tick");
        assert_ne!(a, b);
        assert_eq!(a, TypeFingerprint::typed::<u64>("a::Tick"));
        assert_ne!(a, TypeFingerprint::typed::<u32>("a::Tick"));
        assert_eq!(a.name(), "a::Tick");
    }
}
