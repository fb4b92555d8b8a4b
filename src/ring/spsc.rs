//! The single-producer single-consumer ring.
//!
//! Sequence numbers count messages from 0; message `seq` lives in slot `seq & (capacity - 1)`.
//! The producer owns `tail` (the next sequence it writes, kept in the producer alone), the
//! consumer owns `head` (the next it reads, shared on a cache line of its own):
//!
//! - The producer writes a slot only while `tail - head < capacity`. It keeps `cached_head` and
//!   reloads the shared `head` only when the cached value says the ring is full, so in steady
//!   state it never reads a line the consumer writes.
//! - The consumer never reads `tail`: it polls the tag of slot `head & mask`, whose stamp says
//!   "message `head` is here" once the producer's Release store of it lands (see `ring::tag`).
//!
//! A message becomes visible with that single Release store, after its bytes and length are
//! written; slots are given back with the consumer's Release store of `head`, after its reads,
//! a batch at a time (`SlotStorage::release_batch`) and all at once before it waits
//! (`Consumer::flush`). Neither side waits here: `try_*` only (waiting is `crate::wait`'s).
//!
//! Hostile peers: `head` is read from shared memory and may be anything; any value only makes
//! the producer see a full or an emptier ring (wrapping arithmetic, no index is derived from it).
//! A tag is read once; a length above the slot size is reported, never used.

use super::{stamp_for, tag, SlotStorage};
use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// The shared cursor of an SPSC ring, as it lies in shared memory (zero initially): the
/// consumer's `head`. The producer's position is its own (`Producer::tail`) and never shared:
/// the consumer learns of messages from the slots' tags.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SpscCursors {
    /// Next sequence the consumer will read; every slot of an earlier sequence is free. On a
    /// line of its own: the producer reads it only when its cached copy says the ring is full.
    head: CachePadded<AtomicU64>,
}

impl SpscCursors {
    /// A fresh cursor (heap use; zeroed shared memory is the same state).
    pub fn new() -> Self {
        Self::default()
    }
}

/// A slot the consumer found ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// Slot index (`< capacity`).
    pub index: usize,
    /// The message's sequence number.
    pub seq: u64,
    /// Its length in bytes (`<= slot_size`).
    pub len: u32,
}

/// What the consumer found at `head`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// No message yet.
    Empty,
    /// A message, ready to read in place until [`Consumer::release`].
    Ready(Ready),
    /// The slot claims a length above the slot size: a buggy or hostile producer.
    BadLength {
        /// Sequence number of the bad message.
        seq: u64,
        /// The length it claimed.
        len: u32,
    },
}

/// The producing side. Not `Sync`: one producer per ring, by contract.
#[derive(Debug)]
pub struct Producer<S> {
    cursors: *const SpscCursors,
    storage: S,
    mask: u64,
    /// Next sequence to write. Always `cached_head <= tail <= cached_head + capacity` unless a
    /// hostile peer wrote `head`.
    tail: u64,
    /// Last value of the consumer's `head` this side loaded.
    cached_head: u64,
}

// SAFETY: the producer owns its side of the ring; the cursor pointer refers to shared memory
// (or heap memory) that its constructor's contract keeps alive, reached only through atomics.
unsafe impl<S: Send> Send for Producer<S> {}

impl<S: SlotStorage> Producer<S> {
    /// Attach the producer to a fresh ring (no message ever written). Taking over a ring
    /// another producer wrote to would need that producer's position, which is not shared.
    ///
    /// # Safety
    /// `cursors` must be valid for the producer's life; `storage` must be the ring's slots;
    /// there must be no other producer on this ring, ever.
    pub unsafe fn new(cursors: *const SpscCursors, storage: S) -> Self {
        // SAFETY: valid per the contract.
        // Acquire: pairs with the consumer's Release store of `head`.
        let head = unsafe { &*cursors }.head.load(Ordering::Acquire);
        Self {
            cursors,
            mask: storage.capacity() - 1,
            storage,
            tail: head,
            cached_head: head,
        }
    }

    #[inline(always)]
    fn cursors(&self) -> &SpscCursors {
        // SAFETY: valid for our life (constructor's contract).
        unsafe { &*self.cursors }
    }

    /// The slots.
    #[inline(always)]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Sequence number the next message will get.
    #[inline(always)]
    pub fn next_seq(&self) -> u64 {
        self.tail
    }

    /// Index of a free slot for message `next_seq()`, or `None` when the ring is full. The slot
    /// is this producer's to write until [`Producer::commit`]; calling again before that returns
    /// the same slot.
    #[inline(always)]
    pub fn try_claim(&mut self) -> Option<usize> {
        let capacity = self.mask + 1;
        if self.tail.wrapping_sub(self.cached_head) >= capacity {
            self.reload_head();
            if self.tail.wrapping_sub(self.cached_head) >= capacity {
                return None;
            }
        }
        Some((self.tail & self.mask) as usize)
    }

    #[cold]
    fn reload_head(&mut self) {
        // Acquire: pairs with the consumer's Release store of `head` in `release`: its reads of
        // the slots before `head` happen before we overwrite them.
        self.cached_head = self.cursors().head.load(Ordering::Acquire);
    }

    /// Whether a slot is free now, reloading the consumer's head (for waiters).
    #[inline]
    pub fn has_space(&mut self) -> bool {
        self.reload_head();
        self.tail.wrapping_sub(self.cached_head) < self.mask + 1
    }

    /// Publish the claimed slot as a message of `len` bytes (`len <= slot_size`).
    ///
    /// Call only after [`Producer::try_claim`] returned `Some` (the slot is then still this
    /// producer's). The message's bytes must already be written.
    #[inline(always)]
    pub fn commit(&mut self, len: u32) {
        debug_assert!(len <= self.storage.slot_size());
        debug_assert!(self.tail.wrapping_sub(self.cached_head) < self.mask + 1);
        let index = (self.tail & self.mask) as usize;
        // Release: pairs with the consumer's Acquire load of the tag in `peek`: the payload is
        // visible before the tag says the message is there. One store for stamp and length, so
        // that neither can be seen without the other.
        self.storage
            .tag(index)
            .store(tag(self.tail, len), Ordering::Release);
        self.tail = self.tail.wrapping_add(1);
    }
}

/// The consuming side. Not `Sync`: one consumer per ring, by contract.
#[derive(Debug)]
pub struct Consumer<S> {
    cursors: *const SpscCursors,
    storage: S,
    mask: u64,
    /// Next sequence to read.
    head: u64,
    /// The `head` last stored to shared memory: `published <= head`, and
    /// `head - published < release_batch` after every `release` and `0` after every `flush`.
    published: u64,
    /// Slots freed at once (`storage.release_batch()`), at least 1.
    release_batch: u64,
}

// SAFETY: as for `Producer`.
unsafe impl<S: Send> Send for Consumer<S> {}

impl<S: SlotStorage> Consumer<S> {
    /// Attach the consumer to a ring, continuing from the published head.
    ///
    /// # Safety
    /// As for [`Producer::new`], with "consumer" for "producer".
    pub unsafe fn new(cursors: *const SpscCursors, storage: S) -> Self {
        // SAFETY: valid per the contract.
        let head = unsafe { &*cursors }.head.load(Ordering::Relaxed);
        Self {
            cursors,
            mask: storage.capacity() - 1,
            release_batch: storage.release_batch().max(1),
            storage,
            head,
            published: head,
        }
    }

    /// The slots.
    #[inline(always)]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Sequence number of the next message to read.
    #[inline(always)]
    pub fn next_seq(&self) -> u64 {
        self.head
    }

    /// Look at slot `head`. A `Ready` slot may be read in place until [`Consumer::release`].
    #[inline(always)]
    pub fn peek(&self) -> Peek {
        let index = (self.head & self.mask) as usize;
        // Acquire: pairs with the producer's Release store of the tag in `commit`.
        let tag = self.storage.tag(index).load(Ordering::Acquire);
        if tag as u32 != stamp_for(self.head) {
            return Peek::Empty;
        }
        let len = (tag >> 32) as u32;
        if len > self.storage.slot_size() {
            return Peek::BadLength {
                seq: self.head,
                len,
            };
        }
        Peek::Ready(Ready {
            index,
            seq: self.head,
            len,
        })
    }

    /// Be done with slot `head` and move on to the next message. Call only after `peek` found
    /// the message (ready or bad).
    ///
    /// Slots go back to the producer `release_batch` at a time: a consumer that published its
    /// head after every message would have the producer refill the slot just read, on the very
    /// cache line the consumer reads next, and that line would cross between the two cores on
    /// every message of a full ring. Returns whether the head was published (the caller then
    /// wakes a producer that sleeps for space). Call [`Consumer::flush`] before waiting for
    /// messages, so that a producer never waits for slots that were already read.
    #[inline(always)]
    pub fn release(&mut self) -> bool {
        self.head = self.head.wrapping_add(1);
        if self.head.wrapping_sub(self.published) < self.release_batch {
            return false;
        }
        self.publish();
        true
    }

    /// Give back every slot read so far. Returns whether there was anything to give back.
    #[inline]
    pub fn flush(&mut self) -> bool {
        if self.published == self.head {
            return false;
        }
        self.publish();
        true
    }

    #[inline(always)]
    fn publish(&mut self) {
        self.published = self.head;
        // Release: pairs with the producer's Acquire load of `head` in `reload_head`: our reads
        // of the slots before `head` happen before the producer reuses them.
        // SAFETY: the cursors are valid for our life (constructor's contract).
        unsafe { &*self.cursors }
            .head
            .store(self.head, Ordering::Release);
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;
    use crate::ring::HeapSlots;
    use std::sync::Arc;

    struct Ring {
        // Declared first so that it is dropped last: both sides point into it.
        p: Producer<Arc<HeapSlots>>,
        c: Consumer<Arc<HeapSlots>>,
        _cursors: Box<SpscCursors>,
    }

    fn ring(capacity: usize) -> Ring {
        let cursors = Box::new(SpscCursors::new());
        let slots = Arc::new(HeapSlots::new(capacity));
        // SAFETY: the cursors live in the same `Ring` as both sides; one producer, one consumer.
        let p = unsafe { Producer::new(&*cursors, slots.clone()) };
        // SAFETY: as above.
        let c = unsafe { Consumer::new(&*cursors, slots) };
        Ring {
            p,
            c,
            _cursors: cursors,
        }
    }

    fn send(p: &mut Producer<Arc<HeapSlots>>, v: u64) -> bool {
        let Some(i) = p.try_claim() else {
            return false;
        };
        // SAFETY: heap slots are 8 aligned bytes.
        p.storage()
            .with_payload_mut(i, |ptr| unsafe { (ptr as *mut u64).write(v) });
        p.commit(8);
        true
    }

    fn recv(c: &mut Consumer<Arc<HeapSlots>>) -> Option<u64> {
        match c.peek() {
            Peek::Ready(r) => {
                // SAFETY: heap slots are 8 aligned bytes, written before the stamp.
                let v = c
                    .storage()
                    .with_payload(r.index, |ptr| unsafe { (ptr as *const u64).read() });
                c.release();
                Some(v)
            }
            Peek::Empty => None,
            Peek::BadLength { .. } => panic!("bad length"),
        }
    }

    #[test]
    fn fills_drains_and_wraps_in_order() {
        let mut r = ring(4);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..100 {
            while send(&mut r.p, next_in) {
                next_in += 1;
            }
            assert_eq!(next_in - next_out, 4, "round {round}: full at capacity");
            for _ in 0..(round % 4 + 1) {
                assert_eq!(recv(&mut r.c), Some(next_out));
                next_out += 1;
            }
        }
        while let Some(v) = recv(&mut r.c) {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert_eq!(r.p.next_seq(), r.c.next_seq());
    }

    #[test]
    fn slots_go_back_in_batches_and_on_flush() {
        let cursors = Box::new(SpscCursors::new());
        let slots = Arc::new(HeapSlots::with_release_batch(8, 2));
        // SAFETY: `cursors` outlives both sides (declared first, dropped last); one of each.
        let mut p = unsafe { Producer::new(&*cursors, slots.clone()) };
        // SAFETY: as above.
        let mut c = unsafe { Consumer::new(&*cursors, slots) };
        for v in 0..8 {
            assert!(send(&mut p, v));
        }
        assert!(!send(&mut p, 8), "full");
        assert_eq!(recv(&mut c), Some(0));
        assert!(!send(&mut p, 8), "one slot read, none given back yet");
        assert_eq!(recv(&mut c), Some(1));
        assert!(send(&mut p, 8), "two read: a batch given back");
        assert!(send(&mut p, 9));
        assert!(!send(&mut p, 10));
        assert_eq!(recv(&mut c), Some(2));
        assert!(c.flush(), "one slot pending");
        assert!(!c.flush(), "nothing pending");
        assert!(send(&mut p, 10));
    }

    #[test]
    fn a_length_above_the_slot_size_is_reported() {
        let mut r = ring(2);
        let i = r.p.try_claim().unwrap();
        r.p.commit(8);
        // A hostile producer rewrites the length after publishing.
        r.p.storage().tag(i).store(tag(0, 9), Ordering::Relaxed);
        assert_eq!(r.c.peek(), Peek::BadLength { seq: 0, len: 9 });
    }

    #[test]
    fn a_hostile_head_never_lets_the_producer_run_past_capacity() {
        let mut r = ring(4);
        // Whatever `head` says, the producer writes at most `capacity` messages past it.
        for bad in [u64::MAX, 1 << 40, 3, 0] {
            r._cursors.head.store(bad, Ordering::Relaxed);
            let mut sent = 0;
            while sent < 100 && send(&mut r.p, 0) {
                sent += 1;
            }
            assert!(sent <= 4, "head {bad}: {sent} sends");
        }
    }
}
