//! Where a ring's slots live: in a mapped segment, or on the heap (tests, loom).

use crate::sync::{AtomicU64, UnsafeCell};

/// A ring's slot array: for each slot index below `capacity`, a tag word and `slot_size` payload
/// bytes.
///
/// # Safety
/// Implementors guarantee that for every `index < capacity()`, `tag(index)` is valid, and that the pointer handed to the closures of `with_payload` and
/// `with_payload_mut` is valid for reads (and writes) of `slot_size()` bytes and aligned to the
/// payload alignment the ring was built for. Callers must pass `index < capacity()`.
pub unsafe trait SlotStorage {
    /// Number of slots: a power of two.
    fn capacity(&self) -> u64;
    /// Bytes of payload a slot holds.
    fn slot_size(&self) -> u32;
    /// The slot's tag: the stamp (see `ring::stamp_for`) in the low 32 bits, the message's
    /// length in the high 32 (see `ring::tag`), written together with one Release store.
    fn tag(&self, index: usize) -> &AtomicU64;
    /// Read the slot's payload through a pointer valid for the closure's duration.
    fn with_payload<R>(&self, index: usize, f: impl FnOnce(*const u8) -> R) -> R;
    /// Write the slot's payload through a pointer valid for the closure's duration.
    fn with_payload_mut<R>(&self, index: usize, f: impl FnOnce(*mut u8) -> R) -> R;
    /// The slot's payload as `slot_size.div_ceil(8)` atomic words: how both sides reach an
    /// Overwrite slot, which a reader may copy while the writer rewrites it.
    fn payload_words(&self, index: usize) -> &[AtomicU64];
    /// How many slots the consumer frees at once (see `broadcast::Reader::release`): at least
    /// 1, at most a quarter of the capacity.
    fn release_batch(&self) -> u64 {
        1
    }
    /// A hint that a reader spins on slot `index`'s tag: fetch the slot's line that the tag's
    /// line is not, if it has one, for reading, so that it travels while the reader waits
    /// rather than after the tag. Nothing by default.
    #[inline(always)]
    fn prepare_read(&self, _index: usize) {}
}

// SAFETY: forwards to `S`, whose guarantees hold through a shared pointer.
unsafe impl<S: SlotStorage> SlotStorage for std::sync::Arc<S> {
    fn capacity(&self) -> u64 {
        (**self).capacity()
    }
    fn slot_size(&self) -> u32 {
        (**self).slot_size()
    }
    fn tag(&self, index: usize) -> &AtomicU64 {
        (**self).tag(index)
    }
    fn with_payload<R>(&self, index: usize, f: impl FnOnce(*const u8) -> R) -> R {
        (**self).with_payload(index, f)
    }
    fn with_payload_mut<R>(&self, index: usize, f: impl FnOnce(*mut u8) -> R) -> R {
        (**self).with_payload_mut(index, f)
    }
    fn payload_words(&self, index: usize) -> &[AtomicU64] {
        (**self).payload_words(index)
    }
    fn release_batch(&self) -> u64 {
        (**self).release_batch()
    }
    #[inline(always)]
    fn prepare_read(&self, index: usize) {
        (**self).prepare_read(index)
    }
}

/// Slots in a mapped segment's lane (see `crate::layout`): slot `i`'s tag word (little-endian:
/// the stamp in bytes 0..4, the length in bytes 4..8) at `tags + i * tag_stride`, its payload
/// at `payloads + i * stride`. Tags inline: `tags` is the lane's start, `tag_stride` the slot
/// stride, `payloads` the lane's start plus the payload offset. Tags apart: `payloads` is the
/// lane's start, `tags` the tag array after the slots, `tag_stride` 8.
#[cfg(not(shmbus_loom))]
#[derive(Debug)]
pub struct MappedSlots {
    tags: std::ptr::NonNull<u8>,
    /// Distance between tags: 8 (apart) or the slot stride (inline).
    tag_stride: usize,
    payloads: std::ptr::NonNull<u8>,
    /// Distance between payloads: the slot stride, a multiple of the payload alignment and 8.
    stride: usize,
    /// Where the lines a spinning reader prefetches start (`prefetch + i * stride`): the
    /// slot's first line that its tag's line is not, when it has one (see `prepare_read`).
    prefetch: Option<std::ptr::NonNull<u8>>,
    capacity: u64,
    slot_size: u32,
}

// SAFETY: `MappedSlots` is a view of shared memory that every access reaches through atomics
// (the tag) or through the ring protocol, which hands each slot to one side at a time; the
// pointer is not tied to the creating thread.
#[cfg(not(shmbus_loom))]
unsafe impl Send for MappedSlots {}

#[cfg(not(shmbus_loom))]
impl MappedSlots {
    /// # Safety
    /// `base` must point to a lane of a segment whose geometry is `g` (checked by
    /// `Geometry::validate` or computed by `Geometry::for_config`), mapped and 64-aligned, and
    /// stay mapped for as long as the `MappedSlots` lives.
    pub unsafe fn new(base: std::ptr::NonNull<u8>, g: &crate::layout::Geometry) -> Self {
        let stride = g.slot_stride as usize;
        let (tags, tag_stride, payloads, prefetch) = if g.tags_size == 0 {
            // SAFETY: slot 0 holds its payload at `payload_offset` (the geometry's invariants).
            let payloads = unsafe { base.add(g.payload_offset as usize) };
            // SAFETY: a stride above 64 bytes puts slot 0's second line inside it.
            let second_line = (stride > 64).then(|| unsafe { base.add(64) });
            (base, stride, payloads, second_line)
        } else {
            // SAFETY: the lane holds its slots, then `tags_size` bytes of tags.
            let tags = unsafe { base.add(g.capacity as usize * stride) };
            (tags, 8, base, Some(base))
        };
        Self {
            tags,
            tag_stride,
            payloads,
            stride,
            prefetch,
            capacity: g.capacity,
            slot_size: g.slot_size,
        }
    }

    /// Pointer to the payload of slot `index` (`index < capacity`), valid while the segment is
    /// mapped. For guards that hand the payload to the user in place.
    #[inline(always)]
    pub fn payload_ptr(&self, index: usize) -> *mut u8 {
        debug_assert!((index as u64) < self.capacity);
        // SAFETY: `index < capacity` (the trait's contract for callers), and the geometry puts
        // `capacity` payloads `stride` apart after `payloads`, each inside the lane.
        unsafe { self.payloads.as_ptr().add(index * self.stride) }
    }
}

// SAFETY: `new`'s contract gives a mapped lane: `capacity` tag words, each 8-aligned, and
// `capacity` payloads of `slot_size` bytes, none overlapping another or a tag.
#[cfg(not(shmbus_loom))]
unsafe impl SlotStorage for MappedSlots {
    #[inline(always)]
    fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline(always)]
    fn slot_size(&self) -> u32 {
        self.slot_size
    }

    #[inline(always)]
    fn tag(&self, index: usize) -> &AtomicU64 {
        debug_assert!((index as u64) < self.capacity);
        // SAFETY: `index < capacity`; the tag lies inside the lane, 8-aligned (inline: the
        // slot's start, a multiple of the payload offset, itself at least 8; apart: 8 bytes each
        // from the tag array's start, a whole number of strides (multiples of 8) into the lane); an
        // `AtomicU64` is valid for any bits, and other processes only touch it atomically.
        unsafe { &*(self.tags.as_ptr().add(index * self.tag_stride) as *const AtomicU64) }
    }

    #[inline(always)]
    fn with_payload<R>(&self, index: usize, f: impl FnOnce(*const u8) -> R) -> R {
        f(self.payload_ptr(index))
    }

    #[inline(always)]
    fn with_payload_mut<R>(&self, index: usize, f: impl FnOnce(*mut u8) -> R) -> R {
        f(self.payload_ptr(index))
    }

    #[inline(always)]
    fn payload_words(&self, index: usize) -> &[AtomicU64] {
        // SAFETY: the payload starts 8-aligned (the slots offset, lane sizes, stride and, inline,
        // the payload offset are multiples of 8), and the stride leaves `slot_size` rounded up
        // to 8 bytes after it (`stride >= slot_size`, past the payload offset inline, and both
        // multiples of 8); atomics are valid for any bits, and other processes reach these
        // words atomically too.
        unsafe {
            std::slice::from_raw_parts(
                self.payload_ptr(index) as *const AtomicU64,
                (self.slot_size as usize).div_ceil(8),
            )
        }
    }

    /// Slots covering 1 KiB (`RELEASE_BYTES`): a full ring's producer then refills whole cache lines
    /// the consumer has left, instead of the line it is reading. Measured with
    /// `shmbus bench --only stream`, back to back on one machine: 8-byte messages 55 -> 104 M
    /// msgs/s, 64-byte 60 -> 92 M (release per message -> per 1 KiB of slots).
    fn release_batch(&self) -> u64 {
        (RELEASE_BYTES / self.stride as u64).clamp(1, (self.capacity / 4).max(1))
    }

    /// The slot's first line that its tag's line is not, when it has one, for reading
    /// (`prefetcht0`), each time round a reader's spin on the tag. Without it the reader asks
    /// for the payload's line only once the tag has come, a second transfer after the first;
    /// with it the line is fetched again as soon as the writer has taken it back and written
    /// it, beside the tag's. `shmbus bench --quick --only shm-poll-64B`, six alternated runs
    /// (Intel Xeon, 2026-12-02): the 64-byte round trip over the raw cache line, median
    /// 1.75 -> 1.49. (The writer's own prefetch of the next slot's line for writing, here
    /// until that day, cost the 64-byte stream more than half its rate on that host: medians
    /// of alternated runs 0.33-0.38x the raw ring with it, 0.75-0.98x without. Gone.)
    #[inline(always)]
    fn prepare_read(&self, index: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(lines) = self.prefetch {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch never faults and reads or writes nothing; the address is
            // inside the slot (`new`: `prefetch` starts the slots' lines that are not their
            // tags').
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(lines.as_ptr().add(index * self.stride) as *const i8)
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = index;
    }
}

/// Bytes of slots the consumer frees at once in a mapped ring (256 bytes gave 8-byte messages
/// the same gain but 64-byte ones none; 4096 gave no more than 1024).
#[cfg(not(shmbus_loom))]
const RELEASE_BYTES: u64 = 1024;

/// Slots on the heap, for in-process tests and loom models. Each payload lives in a cell whose
/// accesses loom tracks, so a read that races a write fails the model.
#[derive(Debug)]
pub struct HeapSlots {
    release_batch: u64,
    tags: Box<[AtomicU64]>,
    payloads: Box<[UnsafeCell<[u64; HEAP_SLOT_WORDS]>]>,
    /// The payloads of Overwrite rings (a ring uses either these or `payloads`, never both).
    words: Box<[[AtomicU64; HEAP_SLOT_WORDS]]>,
}

/// Payload words of a heap slot: 8 bytes are enough for the models.
const HEAP_SLOT_WORDS: usize = 1;

impl HeapSlots {
    /// `capacity` slots (a power of two, at least 2) of 8 bytes each.
    ///
    /// # Panics
    /// If `capacity` is not a power of two of at least 2.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity.is_power_of_two() && capacity >= 2);
        Self {
            release_batch: 1,
            tags: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            payloads: (0..capacity)
                .map(|_| UnsafeCell::new([0; HEAP_SLOT_WORDS]))
                .collect(),
            words: (0..capacity)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }
}

impl HeapSlots {
    /// The same, with the consumer freeing slots `batch` at a time (as mapped rings do).
    ///
    /// # Panics
    /// If `capacity` is not a power of two of at least 2, or `batch` is 0.
    pub fn with_release_batch(capacity: usize, batch: u64) -> Self {
        assert!(batch >= 1);
        Self {
            release_batch: batch,
            ..Self::new(capacity)
        }
    }
}

// SAFETY: the payload cells are only reached through the ring protocol, which hands each slot to
// one side at a time (that is what the loom models check); everything else is atomic.
unsafe impl Sync for HeapSlots {}
// SAFETY: as above; nothing in it is tied to a thread.
unsafe impl Send for HeapSlots {}

// SAFETY: every index below `capacity` has a tag and an 8-aligned 8-byte payload.
unsafe impl SlotStorage for HeapSlots {
    fn capacity(&self) -> u64 {
        self.tags.len() as u64
    }

    fn slot_size(&self) -> u32 {
        (HEAP_SLOT_WORDS * 8) as u32
    }

    fn tag(&self, index: usize) -> &AtomicU64 {
        &self.tags[index]
    }

    fn with_payload<R>(&self, index: usize, f: impl FnOnce(*const u8) -> R) -> R {
        self.payloads[index].with(|p| f(p as *const u8))
    }

    fn with_payload_mut<R>(&self, index: usize, f: impl FnOnce(*mut u8) -> R) -> R {
        self.payloads[index].with_mut(|p| f(p as *mut u8))
    }

    fn payload_words(&self, index: usize) -> &[AtomicU64] {
        &self.words[index]
    }

    fn release_batch(&self) -> u64 {
        self.release_batch
    }
}
