//! The broadcast ring: one writer, a table of readers, each reading every message.
//!
//! Sequence numbers count messages from 0; message `seq` lives in slot `seq & (capacity - 1)`
//! and is announced by the slot's tag (see `ring::tag`), so a reader finds it by polling the
//! slot it expects next, and the writer never learns who read what unless it must.
//!
//! Shared words (all zero initially):
//!
//! | word | written by | read by |
//! |------|------------|---------|
//! | `WriterWords::tail` | writer, after each commit | joiners (where to start), discovery (lag), a reader more than 2^31 messages behind (where to resume) |
//! | `WriterWords::floor` | writer, at each scan | joiners |
//! | `ReaderEntry::owner` | a reader, to take or leave its entry (CAS); a writer, to evict a dead one (CAS to its own identity marked with [`EVICTING_BIT`], then 0) | readers, writer (when full), discovery |
//! | `ReaderEntry::head` | its reader: `next seq + 1`, `0` while the entry is unused | writer (scans), discovery |
//! | `ReaderEntry::lost` | its reader (Overwrite) | discovery |
//!
//! **Block** (and Fail): the writer may write message `s` while `s < limit`, where `limit` is
//! `capacity` past the lowest head it saw at its last *scan* (and never more than
//! `capacity - history` past the tail at that scan, so that the last `history` messages stay
//! readable for joiners). It scans only when its cached `limit` says the ring is full, so in
//! steady state it reads no reader's line.
//!
//! **Joining without a lock.** A joiner picks a head `h`, stores it, and then loads `floor`;
//! the writer, at each scan, stores `floor = tail - history` and then loads the heads, with a
//! `SeqCst` fence between the store and the load on both sides (Dekker): if a scan missed the
//! joiner's head, the joiner's load sees that scan's floor, and raises `h` to it and tries
//! again. A scan that missed the joiner allows
//! writes below `floor + capacity` only, which reuse slots of messages below `floor <= h`: the
//! joiner's messages are safe. A scan that saw it allows no write past `h + capacity`. The
//! joiner stores its head with Release, so that a scan that sees it also sees everything the
//! entry's previous holder read before it left.
//!
//! **Overwrite**: the writer never waits and never scans. Each slot is a seqlock: the writer
//! marks the tag busy (length [`BUSY`]), fences, stores the payload as atomic words, and stores
//! the final tag with Release; a reader loads the tag, copies the words, fences, and loads the
//! tag again: equal tags mean an untorn copy. A reader that finds a later message than it
//! expects (lapped) resumes at the oldest message that lap left, reckoned from the stamp it
//! found (a lap before it, plus one), never from the writer's tail, a line the writer stores
//! to on every message; and it counts the messages it skipped: its losses are exact. In Rust's memory model a plain
//! copy racing a write is a data race even when the copy is thrown away, so both sides of an
//! Overwrite slot use only atomic word accesses.
//!
//! Hostile peers: every shared word is read once and may hold anything. A head or floor out of
//! range makes the writer see a fuller ring (Block) and a joiner start later; a tag's length
//! above the slot size is reported, never used; the table's length is the creator's, checked
//! on open. No index is ever derived from a shared word without a mask.

use super::{stamp_for, tag, SlotStorage};
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// Attempts a joiner makes before it gives up on a writer whose floor moves every time (see
/// [`Reader::join`]).
pub const JOIN_ATTEMPTS: u32 = 10_000;

/// Attempts `Reader::read_copy` makes at one call (moves of the head after a lap, copies
/// spoilt by a rewrite) before it says `Empty`.
const READ_ATTEMPTS: u32 = 64;

/// The length a tag carries while the writer rewrites an Overwrite slot.
pub const BUSY: u32 = u32::MAX;

/// The writer's shared words, on a line of their own.
#[repr(C)]
#[derive(Debug, Default)]
pub struct WriterWords {
    tail: AtomicU64,
    floor: AtomicU64,
}

impl WriterWords {
    /// Fresh words (heap use; zeroed shared memory is the same state).
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages written so far, as last published (a hint: may lag by one message).
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }
}

/// Set in an entry's `owner` while a writer evicts its dead reader: the word then holds the
/// evicting writer's own identity with this bit set ([`evicting`]), so that an eviction whose
/// writer died half-way can be told from one under way, and finished by whoever finds it.
/// Identities (`segment::identity_of`) keep a pid in their low 32 bits, and pids stay below
/// 2^22 on Linux, so no holder's identity has this bit.
pub const EVICTING_BIT: u64 = 1 << 31;

/// The `owner` word of an entry that writer `evictor` is evicting.
pub fn evicting(evictor: u64) -> u64 {
    evictor | EVICTING_BIT
}

/// Whether an `owner` word marks an eviction under way (or left unfinished); if so, by whom.
pub fn evictor_of(owner: u64) -> Option<u64> {
    (owner & EVICTING_BIT != 0).then_some(owner & !EVICTING_BIT)
}

/// One reader's entry in the table, on a line of its own.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ReaderEntry {
    /// Identity of the process holding the entry (its meaning is the caller's: the bus packs
    /// a pid and a start time); 0 while free; [`evicting`]`(writer)` while a writer evicts it.
    owner: AtomicU64,
    /// The reader's next sequence number plus one; 0 while it is not registered.
    head: AtomicU64,
    /// Messages this reader lost (Overwrite).
    lost: AtomicU64,
    /// What the holder counts for in its topic's wait cell, so that whoever frees the entry of
    /// a holder that died can take it off: [`WAITS_MAY_SLEEP`] while it has raised the cell's
    /// `may_sleep`, [`WAITS_ASLEEP`] while it is one of its `sleepers`. Each bit is set after
    /// the count it stands for is raised, and cleared before that count is lowered: a holder
    /// killed in between leaves a count raised and no bit (a wake-up too many, never one
    /// too few).
    waits: AtomicU32,
}

/// A bit of [`ReaderEntry`]'s wait marks: the holder has raised its wait cell's `may_sleep`.
pub const WAITS_MAY_SLEEP: u32 = 1;
/// A bit of [`ReaderEntry`]'s wait marks: the holder is counted in its wait cell's `sleepers`.
pub const WAITS_ASLEEP: u32 = 2;

impl ReaderEntry {
    /// A free entry (heap use; zeroed shared memory is the same state).
    pub fn new() -> Self {
        Self::default()
    }

    /// Take this entry for `owner` (a non-zero id) if it is free. A free entry carries no wait
    /// marks (see [`ReaderEntry::evict`]); any found are cleared, never acted on.
    pub fn try_take(&self, owner: u64) -> bool {
        debug_assert_ne!(owner, 0);
        let taken = self
            .owner
            .compare_exchange(0, owner, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if taken {
            self.waits.store(0, Ordering::Relaxed);
        }
        taken
    }

    /// Take this entry from `dead`, a holder known to be gone, for `owner`. Returns the wait
    /// marks `dead` left (see [`ReaderEntry::waits`]: counts the taker must lower for it), or
    /// `None` if the entry was not `dead`'s.
    pub fn take_over(&self, dead: u64, owner: u64) -> Option<u32> {
        self.owner
            .compare_exchange(dead, owner, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(self.waits.swap(0, Ordering::AcqRel))
    }

    /// Set wait marks (`WAITS_*` bits) for the holder: after raising the counts they stand
    /// for. Only the holder calls this.
    pub fn mark_waits(&self, bits: u32) {
        self.waits.fetch_or(bits, Ordering::Release);
    }

    /// Clear wait marks for the holder: before lowering the counts they stand for.
    pub fn unmark_waits(&self, bits: u32) {
        self.waits.fetch_and(!bits, Ordering::Release);
    }

    /// The holder's wait marks, as last written (for inspection and tests).
    pub fn waits(&self) -> u32 {
        self.waits.load(Ordering::Acquire)
    }

    /// Mark the entry held by `owner`, unconditionally: for the entries that mirror, in other
    /// lanes, an entry taken with [`ReaderEntry::try_take`].
    pub fn set_owner(&self, owner: u64) {
        self.owner.store(owner, Ordering::Release);
    }

    /// Who holds the entry (0: nobody), as last written.
    pub fn owner(&self) -> u64 {
        self.owner.load(Ordering::Acquire)
    }

    /// Evict `dead`, a holder known to be gone, as writer `evictor`: unregister its head, so
    /// that the writer stops waiting for it, and free the entry. Returns whether it did
    /// (`false`: the entry changed hands meanwhile, to a reader that is alive). The entry holds
    /// [`evicting`]`(evictor)` while its head is cleared, so a joiner (which takes only a free
    /// entry or a dead holder's) cannot register a head that the eviction then clears. `dead`
    /// may itself be an eviction marker whose writer is known to be gone: this finishes that
    /// eviction.
    ///
    /// Returns the wait marks the dead holder left (counts the evictor must lower for it:
    /// see [`ReaderEntry::waits`]), taken while the entry is still marked as being evicted,
    /// so that they are never a joiner's; `None` if it did not evict.
    pub fn evict(&self, dead: u64, evictor: u64) -> Option<u32> {
        if dead == 0 {
            return None;
        }
        self.owner
            .compare_exchange(dead, evicting(evictor), Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        let waits = self.waits.swap(0, Ordering::AcqRel);
        self.head.store(0, Ordering::Release);
        self.owner.store(0, Ordering::Release);
        Some(waits)
    }

    /// The reader's next sequence number, if it is registered.
    pub fn head(&self) -> Option<u64> {
        match self.head.load(Ordering::Acquire) {
            0 => None,
            h => Some(h.wrapping_sub(1)),
        }
    }

    /// Messages the reader has lost.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// A table of reader entries: `len` entries from `ptr`.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    ptr: *const CachePadded<ReaderEntry>,
    len: usize,
}

impl Table {
    /// # Safety
    /// `ptr` must point to `len` entries that stay valid while the table (or anything built on
    /// it) is used; other processes may write them (all their fields are atomics).
    pub unsafe fn new(ptr: *const CachePadded<ReaderEntry>, len: usize) -> Self {
        Self { ptr, len }
    }

    /// The entries.
    #[inline]
    pub fn entries(&self) -> &[CachePadded<ReaderEntry>] {
        // SAFETY: `new`'s contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The writing side. Not `Sync`: one writer per ring, by contract.
#[derive(Debug)]
pub struct Writer<S> {
    words: *const WriterWords,
    table: Table,
    storage: S,
    mask: u64,
    /// Next sequence to write.
    tail: u64,
    /// Block: the first sequence this writer may not write without scanning again.
    limit: u64,
    /// Block: messages kept readable for joiners (`< capacity`).
    history: u64,
    overwrite: bool,
}

// SAFETY: the writer owns its side of the ring; its pointers refer to shared memory (or heap
// memory) that its constructor's contract keeps alive, reached only through atomics.
unsafe impl<S: Send> Send for Writer<S> {}

impl<S: SlotStorage> Writer<S> {
    /// Attach the writer to a ring, continuing from its published tail (0 for a fresh ring; a
    /// lane another publisher closed goes on where it stopped, so its readers' heads stay
    /// valid).
    ///
    /// # Safety
    /// `words` and `table` must be valid for the writer's life; `storage` must be the ring's
    /// slots; there must be no other writer on this ring while this one lives.
    /// `history < capacity`.
    pub unsafe fn new(
        words: *const WriterWords,
        table: Table,
        storage: S,
        history: u64,
        overwrite: bool,
    ) -> Self {
        let capacity = storage.capacity();
        debug_assert!(history < capacity);
        // SAFETY: valid per the contract.
        let mut tail = unsafe { &*words }.tail.load(Ordering::Acquire);
        // A writer killed between a commit and the store of the tail left the tail one short:
        // the slots say which messages were committed. Going on from the stale tail would
        // rewrite a committed message, perhaps under a reader of it. (Bounded: a lap at most,
        // whatever the slots hold.)
        for _ in 0..capacity {
            let tag = storage
                .tag((tail & (capacity - 1)) as usize)
                .load(Ordering::Acquire);
            if tag as u32 != stamp_for(tail) || (tag >> 32) as u32 == BUSY {
                break;
            }
            tail = tail.wrapping_add(1);
        }
        let mut w = Self {
            words,
            table,
            mask: capacity - 1,
            storage,
            tail,
            limit: tail,
            history: history.min(capacity - 1),
            overwrite,
        };
        if !overwrite {
            w.scan();
        }
        w
    }

    #[inline(always)]
    fn words(&self) -> &WriterWords {
        // SAFETY: valid for our life (constructor's contract).
        unsafe { &*self.words }
    }

    /// The slots.
    #[inline(always)]
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The reader table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Sequence number the next message will get.
    #[inline(always)]
    pub fn next_seq(&self) -> u64 {
        self.tail
    }

    /// Index of a free slot for message `next_seq()`, or `None` when the ring is full for some
    /// reader (Block). The slot is this writer's to write until [`Writer::commit`]; calling
    /// again before that returns the same slot. Not for Overwrite rings, whose writer never
    /// claims: it publishes with [`Writer::publish_words`].
    #[inline(always)]
    pub fn try_claim(&mut self) -> Option<usize> {
        debug_assert!(!self.overwrite);
        let index = (self.tail & self.mask) as usize;
        if self.limit.wrapping_sub(self.tail) as i64 <= 0 {
            self.scan();
            if self.limit.wrapping_sub(self.tail) as i64 <= 0 {
                return None;
            }
        }
        Some(index)
    }

    /// Look at every reader's head and compute how far this writer may go (Block).
    #[cold]
    #[inline(never)]
    fn scan(&mut self) {
        let capacity = self.mask + 1;
        let tail = self.tail;
        let kept = self.history.min(tail);
        self.words().floor.store(tail - kept, Ordering::Relaxed);
        // SeqCst fence: the Dekker pair with the one in `Reader::join` (see the module
        // comment): the floor's store is ordered before the loads of the heads.
        fence(Ordering::SeqCst);
        let mut max_lag = kept;
        for entry in self.table.entries() {
            // Acquire: pairs with each reader's Release store of its head: its reads of the
            // slots before its head happen before we overwrite them.
            let raw = entry.head.load(Ordering::Acquire);
            if raw == 0 {
                continue;
            }
            let head = raw.wrapping_sub(1);
            // A head ahead of the tail (a joiner's, or a hostile one) holds nothing back; one
            // more than a lap behind (hostile) holds everything back.
            let lag = tail.wrapping_sub(head);
            if (lag as i64) < 0 {
                continue;
            }
            max_lag = max_lag.max(lag.min(capacity));
        }
        // Wrapping: the tail came from shared memory when this writer started.
        self.limit = tail.wrapping_add(capacity - max_lag);
    }

    /// Whether a slot is free now, scanning the readers (for waiters). Always true under
    /// Overwrite.
    pub fn has_space(&mut self) -> bool {
        if self.overwrite {
            return true;
        }
        self.scan();
        self.limit.wrapping_sub(self.tail) as i64 > 0
    }

    /// Overwrite: publish message `next_seq()` of `len` bytes (`<= slot_size`) from `words`
    /// (at least `len` bytes of them), over whatever the slot held. Never waits.
    #[inline]
    pub fn publish_words(&mut self, words: &[u64], len: u32) {
        debug_assert!(self.overwrite && len <= self.storage.slot_size());
        let index = (self.tail & self.mask) as usize;
        let busy = (BUSY as u64) << 32 | stamp_for(self.tail) as u64;
        self.storage.tag(index).store(busy, Ordering::Relaxed);
        // Release fence: pairs with the reader's Acquire fence after its copy. A reader whose
        // copy saw any word stored after this fence then loads this busy tag (or a later one)
        // when it validates, and throws the copy away.
        fence(Ordering::Release);
        let slot = self.storage.payload_words(index);
        for (dst, &w) in slot.iter().zip(&words[..(len as usize).div_ceil(8)]) {
            dst.store(w, Ordering::Relaxed);
        }
        self.commit(len);
    }

    /// Block: write up to `max` messages of `len` bytes (`len <= slot_size`), as many as
    /// there is room for, without waiting: for each, `fill` writes the slot's payload through
    /// the pointer it is given (valid for `slot_size` bytes during the call), and the message
    /// is committed as [`Writer::commit`] does. The readers are scanned only when the ring
    /// looked full. Returns how many were written.
    ///
    /// A `fill` that panics leaves its slot unpublished and the messages before it sent.
    #[inline(always)]
    pub fn write_run(&mut self, max: usize, len: u32, mut fill: impl FnMut(*mut u8)) -> usize {
        debug_assert!(!self.overwrite && len <= self.storage.slot_size());
        if self.limit.wrapping_sub(self.tail) as i64 <= 0 {
            self.scan();
        }
        // At most a capacity: the scan's limit is never more than that past the tail.
        let room = (self.limit.wrapping_sub(self.tail) as i64).max(0) as u64;
        let n = (max as u64).min(room) as usize;
        let mask = self.mask;
        // SAFETY: valid for the writer's life (constructor's contract); dereferenced here so
        // that the fields below are borrowed apart.
        let words = unsafe { &*self.words };
        let storage = &self.storage;
        let mut tail = Cursor::new(&mut self.tail);
        for _ in 0..n {
            let index = (tail.value & mask) as usize;
            storage.with_payload_mut(index, &mut fill);
            // Release: as in `commit`.
            storage
                .tag(index)
                .store(tag(tail.value, len), Ordering::Release);
            tail.value = tail.value.wrapping_add(1);
            // Release: as in `commit`; per message, so that a `fill` that panics leaves the
            // shared tail right for a publisher that attaches after this one.
            words.tail.store(tail.value, Ordering::Release);
        }
        drop(tail);
        n
    }

    /// Publish the claimed slot as a message of `len` bytes (`len <= slot_size`).
    ///
    /// Call only after [`Writer::try_claim`] returned `Some` (or from `publish_words`). The
    /// message's bytes must already be written.
    #[inline(always)]
    pub fn commit(&mut self, len: u32) {
        debug_assert!(len <= self.storage.slot_size());
        let index = (self.tail & self.mask) as usize;
        // Release: pairs with the reader's Acquire load of the tag: the payload is visible
        // before the tag says the message is there. One store for stamp and length.
        self.storage
            .tag(index)
            .store(tag(self.tail, len), Ordering::Release);
        self.tail = self.tail.wrapping_add(1);
        // Release: a joiner or a lapped reader that starts from this tail finds the slots
        // before it written (it checks their stamps anyway).
        self.words().tail.store(self.tail, Ordering::Release);
    }
}

/// A sequence number kept in a local during a run (a register, where the field behind `&mut
/// self` would be stored on every step) and written back to its field when the run ends,
/// also when the run's callback panics.
struct Cursor<'a> {
    field: &'a mut u64,
    value: u64,
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    fn new(field: &'a mut u64) -> Self {
        Self {
            value: *field,
            field,
        }
    }
}

impl Drop for Cursor<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        *self.field = self.value;
    }
}

/// A slot a reader found ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// Slot index (`< capacity`).
    pub index: usize,
    /// The message's sequence number.
    pub seq: u64,
    /// Its length in bytes (`<= slot_size`).
    pub len: u32,
}

/// What a reader found at its head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// No message yet.
    Empty,
    /// A message (Block: ready to read in place until [`Reader::release`]).
    Ready(Ready),
    /// The slot claims a length above the slot size: a buggy or hostile writer.
    BadLength {
        /// Sequence number of the bad message.
        seq: u64,
        /// The length it claimed.
        len: u32,
    },
}

/// The reading side: one entry of the table. Not `Sync`.
#[derive(Debug)]
pub struct Reader<S> {
    words: *const WriterWords,
    entry: *const ReaderEntry,
    storage: S,
    mask: u64,
    /// Next sequence to read.
    head: u64,
    /// The head last stored to the entry.
    published: u64,
    release_batch: u64,
    /// Messages skipped after being lapped (Overwrite).
    lost: u64,
}

// SAFETY: as for `Writer`.
unsafe impl<S: Send> Send for Reader<S> {}

impl<S: SlotStorage> Reader<S> {
    /// Register in `entry` (already taken by this reader, see [`ReaderEntry::try_take`]) and
    /// start at the `history` most recent messages, or as many of them as the writer still
    /// keeps (Block: at most the topic's history; Overwrite: what the ring holds, validated
    /// when read).
    ///
    /// Each attempt is one store, one fence and one load; another is needed only when the
    /// writer scanned (and moved its floor) in between, which a writer does once per
    /// `capacity - history` messages. A writer that scans on every message (a history of
    /// `capacity - 1`) could keep a joiner retrying for as long as it writes: after
    /// [`JOIN_ATTEMPTS`] the join gives up (`None`, the entry unregistered) rather than spin on.
    ///
    /// # Safety
    /// `words` and `entry` must be valid for the reader's life, `storage` must be the ring's
    /// slots, and `entry` must be this reader's alone.
    pub unsafe fn join(
        words: *const WriterWords,
        entry: *const ReaderEntry,
        storage: S,
        history: u64,
    ) -> Option<Self> {
        // SAFETY: valid per the contract.
        let (w, e) = unsafe { (&*words, &*entry) };
        let capacity = storage.capacity();
        let tail = w.tail.load(Ordering::Acquire);
        let mut head = tail.wrapping_sub(history.min(tail).min(capacity - 1));
        let mut settled = false;
        for _ in 0..JOIN_ATTEMPTS {
            // Release: pairs with the writer's Acquire load of the heads in `scan`. The entry's
            // previous holder read its last slots before it left (`leave_entry`), and we took
            // the entry after it (the `owner` CAS): a writer that sees this head may reuse
            // those slots, so it must see those reads done. A Relaxed store is no part of the
            // previous holder's release sequence: the chain broke here, and the writer's
            // rewrite raced the last reads (loom-tests/tests/broadcast.rs,
            // `a_reader_in_a_departed_readers_entry_hands_its_reads_on_to_the_writer`).
            e.head.store(head.wrapping_add(1), Ordering::Release);
            // SeqCst fence: the Dekker pair with the one in `Writer::scan` (see the module
            // comment).
            fence(Ordering::SeqCst);
            let floor = w.floor.load(Ordering::Relaxed);
            // A floor ahead of us: a scan may have missed our head; start there instead.
            if (floor.wrapping_sub(head) as i64) <= 0 {
                settled = true;
                break;
            }
            head = floor;
        }
        if !settled {
            e.head.store(0, Ordering::Release);
            return None;
        }
        e.lost.store(0, Ordering::Relaxed);
        Some(Self {
            words,
            entry,
            mask: capacity - 1,
            release_batch: storage.release_batch().max(1),
            storage,
            head,
            published: head,
            lost: 0,
        })
    }

    /// This reader's entry in the table.
    #[inline(always)]
    pub fn entry(&self) -> &ReaderEntry {
        // SAFETY: valid for our life (constructor's contract).
        unsafe { &*self.entry }
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

    /// Messages skipped because the writer lapped this reader (Overwrite).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Overwrite: whether the slot at this reader's head holds anything but the previous
    /// lap's message: the next message (perhaps still being written), or a later lap's, which
    /// means messages were lost. The readiness test of an Overwrite reader, which `peek` cannot
    /// be (a later lap's stamp is news too). It reads the slot's own line, never the writer's
    /// tail: a line the writer stores to on every message, which a spinning reader would pull
    /// away from it each time.
    #[inline]
    pub fn has_news(&self) -> bool {
        let index = (self.head & self.mask) as usize;
        // Acquire: pairs with the writer's Release store of the tag in `commit`.
        let stamp = self.storage.tag(index).load(Ordering::Acquire) as u32;
        let ahead = stamp.wrapping_sub(stamp_for(self.head)) as i32;
        ahead >= 0 || (ahead != -((self.mask + 1) as i32) && stamp != 0)
    }

    /// A hint, for a reader about to spin on its head's tag: fetch the slot's payload line
    /// meanwhile (see [`SlotStorage::prepare_read`]).
    #[inline(always)]
    pub fn prepare_read(&self) {
        self.storage.prepare_read((self.head & self.mask) as usize);
    }

    /// Look at slot `head` (Block: a `Ready` slot may be read in place until
    /// [`Reader::release`]).
    #[inline(always)]
    pub fn peek(&self) -> Peek {
        let index = (self.head & self.mask) as usize;
        // Acquire: pairs with the writer's Release store of the tag in `commit`.
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

    /// Block: hand each message from the head on whose tag says it is there with exactly
    /// `len` bytes, up to `max`, to `read` (a pointer to its payload, valid for `len` bytes
    /// during the call: the message is read in place), in order; each slot is released once
    /// `read` returns, as [`Reader::release`] does. Stops at the first slot that is not such a
    /// message (not there yet, or of another length: left for [`Reader::peek`] to report);
    /// having found the ring empty, gives back every slot read ([`Reader::flush`]). Returns
    /// how many were read, and whether slots went back to the writer (which may be waiting
    /// for room).
    ///
    /// A `read` that panics leaves its message unreleased (it comes again) and the ones before
    /// it read.
    #[inline(always)]
    pub fn read_run(
        &mut self,
        max: usize,
        len: u32,
        mut read: impl FnMut(*const u8),
    ) -> (usize, bool) {
        let (mask, batch) = (self.mask, self.release_batch);
        // SAFETY: valid for the reader's life (constructor's contract); dereferenced here so
        // that the fields below are borrowed apart.
        let entry = unsafe { &*self.entry };
        let storage = &self.storage;
        let mut head = Cursor::new(&mut self.head);
        let mut published = Cursor::new(&mut self.published);
        let (mut n, mut freed) = (0, false);
        while n < max {
            let index = (head.value & mask) as usize;
            // Acquire: pairs with the writer's Release store of the tag in `commit`. One
            // comparison checks the stamp and the length together.
            if storage.tag(index).load(Ordering::Acquire) != tag(head.value, len) {
                // Found the ring empty (or a message for `peek`): every slot read goes back.
                if published.value != head.value {
                    published.value = head.value;
                    // Release: as in `publish`.
                    entry
                        .head
                        .store(head.value.wrapping_add(1), Ordering::Release);
                    freed = true;
                }
                break;
            }
            storage.with_payload(index, &mut read);
            head.value = head.value.wrapping_add(1);
            n += 1;
            if head.value.wrapping_sub(published.value) >= batch {
                published.value = head.value;
                // Release: as in `publish`.
                entry
                    .head
                    .store(head.value.wrapping_add(1), Ordering::Release);
                freed = true;
            }
        }
        (n, freed)
    }

    /// Overwrite: copy message `head` into `dst` (at least `slot_size` rounded up to words)
    /// and move past it. Skips ahead, counting losses, when the writer lapped this reader.
    /// Returns `Empty` when the next message is not there yet (or is being written).
    pub fn read_copy(&mut self, dst: &mut [u64]) -> Peek {
        // Bounded: each attempt either moves the head or finds the slot rewritten under the
        // copy; a writer that keeps doing that (or a hostile peer that keeps flipping a stamp)
        // gets `Empty`, and the caller comes back, rather than a reader stuck in here.
        for _ in 0..READ_ATTEMPTS {
            let index = (self.head & self.mask) as usize;
            let tag_word = self.storage.tag(index);
            // Acquire: pairs with the Release store of the final tag in `commit`.
            let first = tag_word.load(Ordering::Acquire);
            let expected = stamp_for(self.head);
            let ahead = (first as u32).wrapping_sub(expected) as i32;
            if ahead < 0 {
                // The slot holds an older message (or none). Only the previous lap is normal;
                // anything else means this reader fell more than 2^31 messages behind.
                let previous_lap = ahead == -((self.mask + 1) as i32) || first as u32 == 0;
                if previous_lap || !self.skip_to_oldest() {
                    return Peek::Empty;
                }
                continue;
            }
            if ahead > 0 {
                // Lapped: the slot holds message `head + ahead`, so everything up to a lap
                // before it was overwritten. Resume at the oldest message that lap left, read
                // from this slot's own stamp rather than from the writer's tail, whose line the
                // writer stores to on every message (a lapped reader that loaded it each time
                // tripled the cost of an Overwrite publisher with 8 subscribers when the two
                // CPUs are far apart). If the writer is further ahead still, the next slot
                // read says so, and this repeats. A stamp less than a lap ahead is no honest
                // writer's (found by the `ring_ops` fuzz target, as an endless loop): nothing
                // to read here.
                let seen = self.head.wrapping_add(ahead as u64);
                if !self.skip_to(seen.wrapping_sub(self.mask)) {
                    return Peek::Empty;
                }
                continue;
            }
            let len = (first >> 32) as u32;
            if len == BUSY {
                return Peek::Empty;
            }
            if len > self.storage.slot_size() {
                let seq = self.head;
                self.head = self.head.wrapping_add(1);
                return Peek::BadLength { seq, len };
            }
            let words = (len as usize).div_ceil(8);
            for (d, s) in dst[..words]
                .iter_mut()
                .zip(self.storage.payload_words(index))
            {
                *d = s.load(Ordering::Relaxed);
            }
            // Acquire fence: pairs with the writer's Release fence after it marks a slot busy.
            fence(Ordering::Acquire);
            if tag_word.load(Ordering::Relaxed) != first {
                // Overwritten while we copied.
                continue;
            }
            let seq = self.head;
            self.head = self.head.wrapping_add(1);
            self.maybe_publish();
            return Peek::Ready(Ready { index, seq, len });
        }
        Peek::Empty
    }

    /// Lapped: resume at the oldest message the ring still holds. Returns whether the head
    /// moved.
    #[cold]
    fn skip_to_oldest(&mut self) -> bool {
        // SAFETY: valid for our life (constructor's contract).
        let tail = unsafe { &*self.words }.tail.load(Ordering::Acquire);
        // Message `tail` may be being written over `tail - capacity`: the oldest whole one is
        // the next.
        self.skip_to(tail.wrapping_sub(self.mask))
    }

    /// Move the head forward to `seq`, counting what is skipped as lost. Returns whether it
    /// moved (never backwards).
    #[cold]
    fn skip_to(&mut self, seq: u64) -> bool {
        if (seq.wrapping_sub(self.head) as i64) <= 0 {
            return false;
        }
        self.lost = self.lost.wrapping_add(seq.wrapping_sub(self.head));
        self.head = seq;
        self.entry().lost.store(self.lost, Ordering::Relaxed);
        true
    }

    /// Be done with slot `head` and move on (Block). Call only after `peek` found the message
    /// (ready or bad). Slots go back `release_batch` at a time (see [`Reader::flush`]); returns
    /// whether the head was published (the caller then wakes a writer that sleeps for space).
    #[inline(always)]
    pub fn release(&mut self) -> bool {
        self.head = self.head.wrapping_add(1);
        self.maybe_publish()
    }

    #[inline(always)]
    fn maybe_publish(&mut self) -> bool {
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
        // Release: pairs with the writer's loads of the heads in `scan`: our reads of the
        // slots before `head` happen before the writer reuses them.
        self.entry()
            .head
            .store(self.head.wrapping_add(1), Ordering::Release);
    }

    /// Leave the table: the writer stops waiting for this reader. The entry stays taken
    /// (release it with [`Reader::leave_entry`] after).
    pub fn unregister(&self) {
        self.entry().head.store(0, Ordering::Release);
    }

    /// Unregister and free the entry, if `owner` still holds it (an entry taken over meanwhile
    /// is its new holder's, head and all).
    pub fn leave_entry(&self, owner: u64) {
        if self.entry().owner() != owner {
            return;
        }
        self.unregister();
        let _ = self
            .entry()
            .owner
            .compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(shmbus_loom)))]
mod tests {
    use super::*;
    use crate::ring::HeapSlots;
    use std::sync::Arc;

    type Slots = Arc<HeapSlots>;

    /// A ring on the heap. The sides point into `words` and `entries`; the tests keep the
    /// `Parts` alive for as long as they use the sides.
    struct Parts {
        words: Box<WriterWords>,
        entries: Box<[CachePadded<ReaderEntry>]>,
        slots: Slots,
    }

    fn parts(capacity: usize, readers: usize) -> Parts {
        Parts {
            words: Box::new(WriterWords::new()),
            entries: (0..readers)
                .map(|_| CachePadded::new(ReaderEntry::new()))
                .collect(),
            slots: Arc::new(HeapSlots::new(capacity)),
        }
    }

    impl Parts {
        fn writer(&self, history: u64, overwrite: bool) -> Writer<Slots> {
            // SAFETY: the parts outlive the writer in every test; one writer per ring.
            unsafe {
                let table = Table::new(self.entries.as_ptr(), self.entries.len());
                Writer::new(&*self.words, table, self.slots.clone(), history, overwrite)
            }
        }

        fn reader(&self, index: usize, history: u64) -> Reader<Slots> {
            assert!(self.entries[index].try_take(index as u64 + 1));
            // SAFETY: the parts outlive the reader; the entry was just taken.
            unsafe {
                Reader::join(
                    &*self.words,
                    &*self.entries[index],
                    self.slots.clone(),
                    history,
                )
            }
            .expect("nobody writes while the tests join")
        }
    }

    fn send(w: &mut Writer<Slots>, v: u64) -> bool {
        let Some(i) = w.try_claim() else {
            return false;
        };
        // SAFETY: heap slots are 8 aligned bytes, the claimed one the writer's.
        w.storage()
            .with_payload_mut(i, |p| unsafe { (p as *mut u64).write(v) });
        w.commit(8);
        true
    }

    fn recv(r: &mut Reader<Slots>) -> Option<u64> {
        match r.peek() {
            Peek::Ready(ready) => {
                // SAFETY: heap slots are 8 aligned bytes, written before the stamp.
                let v = r
                    .storage()
                    .with_payload(ready.index, |p| unsafe { (p as *const u64).read() });
                r.release();
                Some(v)
            }
            Peek::Empty => {
                r.flush();
                None
            }
            bad => panic!("{bad:?}"),
        }
    }

    /// Let the writer see every slot free again (a test helper: as if the reader kept up).
    fn recv_all(p: &Parts, w: &mut Writer<Slots>) {
        p.entries[0]
            .head
            .store(w.next_seq().wrapping_add(1), Ordering::Relaxed);
    }

    #[test]
    fn the_writer_waits_for_the_slowest_reader() {
        let p = parts(4, 2);
        let (mut a, mut b) = (p.reader(0, 0), p.reader(1, 0));
        let mut w = p.writer(0, false);
        for v in 0..4 {
            assert!(send(&mut w, v));
        }
        assert!(!send(&mut w, 4), "full");
        for v in 0..4 {
            assert_eq!(recv(&mut a), Some(v));
        }
        assert!(!send(&mut w, 4), "still full for b");
        assert_eq!(recv(&mut b), Some(0));
        assert!(send(&mut w, 4), "b freed one slot");
        assert!(!send(&mut w, 5));
        b.leave_entry(2);
        assert!(send(&mut w, 5), "a leaving reader holds nothing back");
        assert_eq!(recv(&mut a), Some(4));
        assert_eq!(recv(&mut a), Some(5));
        assert_eq!(recv(&mut a), None);
    }

    #[test]
    fn with_no_reader_the_writer_keeps_only_its_history() {
        let p = parts(8, 1);
        let mut w = p.writer(3, false);
        for v in 0..100 {
            assert!(send(&mut w, v), "nobody to wait for: {v}");
        }
        let mut late = p.reader(0, 3);
        assert_eq!(late.next_seq(), 97);
        for v in 97..100 {
            assert_eq!(recv(&mut late), Some(v));
        }
        assert_eq!(recv(&mut late), None);
        // Asking for more than the history gets what the writer promised to keep, at least.
        let p = parts(8, 1);
        let mut w = p.writer(3, false);
        for v in 0..100 {
            assert!(send(&mut w, v));
        }
        let greedy = p.reader(0, 7);
        assert!(
            (93..=97).contains(&greedy.next_seq()),
            "{}",
            greedy.next_seq()
        );
    }

    #[test]
    fn a_hostile_head_holds_the_writer_back_at_most_a_lap() {
        let p = parts(4, 1);
        let _r = p.reader(0, 0);
        let mut w = p.writer(0, false);
        for _ in 0..6 {
            send(&mut w, 0);
            recv_all(&p, &mut w);
        }
        // Whatever a peer writes as a head, the writer never writes more than a lap past it,
        // and a head that cannot be a reader's (ahead of the writer) holds nothing back.
        for bad in [u64::MAX, 1 << 40, 3, 0, 1, 2] {
            p.entries[0].head.store(bad, Ordering::Relaxed);
            w.has_space(); // a scan: the writer sees the head now, not at its next full ring
            let start = w.next_seq();
            while w.next_seq() - start < 100 && send(&mut w, 0) {}
            let sent = w.next_seq() - start;
            // Sequence numbers wrap: a head is behind the writer by `start - head` mod 2^64.
            let behind = start.wrapping_sub(bad.wrapping_sub(1)) as i64;
            if bad == 0 || behind < 0 {
                assert_eq!(sent, 100, "head {bad} held the writer back");
            } else {
                assert_eq!(sent, 4 - behind.min(4) as u64, "head {bad}");
            }
        }
    }

    #[test]
    fn an_overwritten_reader_skips_to_the_oldest_and_counts_its_losses() {
        let p = parts(4, 1);
        let mut r = p.reader(0, 0);
        let mut w = p.writer(0, true);
        for v in 0..10u64 {
            w.publish_words(&[v * 10], 8);
        }
        let mut word = [0u64];
        // Tail 10: the ring holds 6..=9. The reader finds 8 in its slot 0, so everything up to
        // 4 is gone; slot 1 then shows 9 (5 is gone too), and slot 2 holds 6: it resumes there.
        let mut got = Vec::new();
        while let Peek::Ready(ready) = r.read_copy(&mut word) {
            assert_eq!(word[0], ready.seq * 10);
            got.push(ready.seq);
        }
        assert_eq!(got, [6, 7, 8, 9]);
        assert_eq!(r.lost(), 6);
        assert_eq!(p.entries[0].lost(), 6);
        assert!(!r.has_news());
    }

    #[test]
    fn a_new_writer_goes_on_after_the_last_committed_message_even_if_the_tail_lags() {
        let p = parts(8, 1);
        let mut r = p.reader(0, 0);
        let mut w = p.writer(0, false);
        for v in 0..5 {
            assert!(send(&mut w, v));
        }
        drop(w);
        // The writer died after committing message 4 but before storing the tail.
        p.words.tail.store(4, Ordering::Relaxed);
        let mut heir = p.writer(0, false);
        assert_eq!(heir.next_seq(), 5, "message 4 is not written again");
        assert!(send(&mut heir, 5));
        let got: Vec<_> = std::iter::from_fn(|| recv(&mut r)).collect();
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
        // An Overwrite writer killed while rewriting a slot (busy) did not commit it.
        let p = parts(4, 1);
        let mut w = p.writer(0, true);
        w.publish_words(&[7], 8);
        let busy = (BUSY as u64) << 32 | stamp_for(1) as u64;
        p.slots.tag(1).store(busy, Ordering::Relaxed);
        drop(w);
        assert_eq!(p.writer(0, true).next_seq(), 1);
    }

    #[test]
    fn a_stamp_less_than_a_lap_ahead_reads_as_nothing_rather_than_looping() {
        // No honest writer leaves message 1 in slot 0 of a ring of 4; the `ring_ops` fuzz
        // target found the reader skipping ahead by nothing, forever.
        let p = parts(4, 1);
        let mut r = p.reader(0, 0);
        p.slots.tag(0).store(tag(1, 8), Ordering::Relaxed);
        assert_eq!(r.read_copy(&mut [0u64]), Peek::Empty);
        assert_eq!(r.next_seq(), 0);
    }

    #[test]
    fn a_length_above_the_slot_size_is_reported() {
        let p = parts(2, 1);
        let r = p.reader(0, 0);
        let mut w = p.writer(0, false);
        let i = w.try_claim().unwrap();
        w.commit(8);
        w.storage().tag(i).store(tag(0, 9), Ordering::Relaxed);
        assert_eq!(r.peek(), Peek::BadLength { seq: 0, len: 9 });
    }

    /// Runs: a reader's run gives slots back a release batch at a time and, finding the ring
    /// empty, all of them; it stops at a message of another length and leaves it for `peek`;
    /// a writer's run takes the room there is.
    #[test]
    fn runs_release_in_batches_and_stop_where_peek_must_look() {
        let p = Parts {
            slots: Arc::new(HeapSlots::with_release_batch(8, 3)),
            ..parts(8, 1)
        };
        let mut r = p.reader(0, 0);
        let mut w = p.writer(0, false);
        let head = |p: &Parts| p.entries[0].head.load(Ordering::Relaxed).wrapping_sub(1);
        let mut next = 0u64;
        let fill = |ptr: *mut u8| {
            // SAFETY: heap slots are 8 aligned bytes, the run's slot the writer's.
            unsafe { (ptr as *mut u64).write(next) };
            next += 1;
        };
        assert_eq!(w.write_run(100, 8, fill), 8, "a ring's room, no more");
        assert_eq!(w.write_run(100, 8, |_| unreachable!()), 0, "full");
        let mut got = Vec::new();
        let mut read = |ptr: *const u8| {
            // SAFETY: heap slots are 8 aligned bytes, written before the stamp.
            got.push(unsafe { (ptr as *const u64).read() })
        };
        assert_eq!(
            r.read_run(2, 8, &mut read),
            (2, false),
            "under a batch: nothing back"
        );
        assert_eq!(head(&p), 0);
        assert_eq!(r.read_run(5, 8, &mut read), (5, true), "3 and 6 back");
        assert_eq!(head(&p), 6);
        assert_eq!(r.read_run(5, 8, &mut read), (1, true), "empty: all back");
        assert_eq!(head(&p), 8);
        assert_eq!(got, (0..8).collect::<Vec<_>>());
        assert_eq!(r.read_run(5, 8, |_| unreachable!()), (0, false));
        // A message of 4 bytes stops a run of 8-byte ones, and peek reports it.
        let mut four = |ptr: *mut u8| {
            // SAFETY: heap slots are 8 aligned bytes, the run's slot the writer's.
            unsafe { (ptr as *mut u32).write(7) }
        };
        assert_eq!(w.write_run(1, 4, &mut four), 1);
        assert_eq!(r.read_run(5, 8, |_| unreachable!()), (0, false));
        assert!(matches!(
            r.peek(),
            Peek::Ready(Ready { len: 4, seq: 8, .. })
        ));
    }
}
