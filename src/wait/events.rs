//! The portable [`Park`]: `raw_sync` events (a process-shared pthread mutex and condition
//! variable each) in a trailer of the segment, for systems without futexes (feature
//! `portable`).
//!
//! # Where the events live
//!
//! A portable segment is a native one followed by a trailer; the native layout is untouched:
//!
//! ```text
//! 0 ........ total_size | pad to 64 | trailer header (64) | words: 8 per slot, padded to 64 | events: EVENT_BYTES per slot
//!                       ^ Trailer::offset
//! ```
//!
//! A slot per party that may sleep: one per entry of the subscriber table (the readers sleep
//! on `data`), then one per publisher lane (a writer sleeps on `space`). Each slot has two
//! words, `parked` and `users` (below), and an auto-reset event that only its owner waits
//! on. The trailer's offset and size follow from the validated geometry and shape; an opener
//! checks that the segment ends exactly where they say and that the trailer's header agrees
//! with them ([`Trailer::validate`]), like every other section.
//!
//! # Why one event per sleeper
//!
//! A `raw_sync` event is a flag under a mutex: `wait` sleeps until the flag is set and, on an
//! auto-reset event, clears it as it returns; `set` raises it and signals. There is no
//! compare-and-sleep on a word of ours. An event that several parties wait on must be cleared
//! by someone, and whoever clears it can clear it under a waiter that was woken but has not
//! yet re-checked the flag: that waiter goes back to sleep with its condition true, a lost
//! wake-up. With one waiter per event nobody clears it but the waiter itself (the auto-reset),
//! so a wake-up, once set, stays until its waiter consumes it.
//!
//! # Why no wake-up is lost
//!
//! The contract ([`Park::park`]): sleep while `*word == expected`, atomically with respect to
//! [`Park::wake_all`], which the notifier calls after it changed `word`. Per slot:
//!
//! ```text
//! waiter (park)                          notifier (wake_all), after word += 1
//! parked = 1                             fence(SeqCst)                      [F2]
//! fence(SeqCst)                 [F1]     if parked == 1: event.set()
//! if word != expected: return
//! event.wait()   (returns at once if set since its last wait)
//! parked = 0
//! ```
//!
//! F1 and F2 are in the single total order of SeqCst fences. If F1 comes first, the
//! notifier's load of `parked` after F2 sees the 1 stored before F1, and it sets the event.
//! If F2 comes first, the waiter's load of `word` after F1 sees the change made before F2, and
//! it does not sleep. So either the waiter does not sleep or the event is set. Once set, the
//! flag stays until the waiter's own `wait` consumes it, and no earlier `wait` can have: the
//! value 1 the notifier read is this park's store (or a later park's: every store between
//! is a 0), so its `set` comes after every earlier `wait` of this waiter returned. A set that
//! comes after the waiter returned (its word check saw the change) leaves the flag raised:
//! the waiter's next `park` returns at once, a spurious return the caller's loop absorbs.
//!
//! # What `raw_sync` cannot give, and how far it is contained
//!
//! - Its mutexes are not robust. A process killed inside an event's critical section (the
//!   instructions of a `set`, or between a waiter's wake-up and its return; never while it
//!   sleeps) leaves that mutex locked. A waiter never waits for it for long: every `park`
//!   is a timed wait. A notifier does: `set` locks without a timeout, so the next notifier
//!   that wakes that slot blocks. The slot is the dead process's own, and a party that
//!   takes a slot over re-initialises its event ([`Trailer::attach`]) so the next owner
//!   starts clean. The same holds for a hostile process that writes into the trailer.
//! - A process killed while asleep leaves its reference in the condition variable, and once
//!   a new waiter sleeps on it, the next `set` waits for that reference for good (seen with
//!   glibc 2.36; tests/portable.rs reproduces it). The re-initialisation at takeover clears
//!   it: the new owner of the slot is the only new waiter there can be. `users` counts the notifiers inside a slot's `set`, so that the new owner
//!   re-initialises only when none is (it waits a little for them, then does without).
//! - Its timed waits take an absolute `CLOCK_REALTIME` time and add the timeout's
//!   nanoseconds without a carry: a sum past a second is refused (`EINVAL`) at once. Each wait
//!   here is shortened so that the sum stays below a second (`carry_free`); a wall-clock step
//!   backwards still lengthens a timed wait by the step (a wake-up still ends it at once).
//!
//! This module never waits without a timeout and never allocates after attach; `wake_all`
//! is the wake path (a mutex and a signal per sleeping slot), never the polling path.

use super::Park;
use crate::layout::LayoutError;
use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};
use raw_sync::events::{Event, EventImpl, EventInit, EventState};
use raw_sync::Timeout;
use std::time::{Duration, Instant};

/// Alignment of the trailer and of every section in it: a cache line.
pub const TRAILER_ALIGN: u64 = 64;
/// `b"SHMBEVT\x01"` read as a little-endian `u64`: the first 8 bytes of a trailer.
pub const TRAILER_MAGIC: u64 = u64::from_le_bytes(*b"SHMBEVT\x01");
/// Bytes of the trailer's header.
const HEADER_BYTES: u64 = 64;
/// Bytes reserved for one event (a pthread mutex and condition variable and two flags: 96
/// bytes on Linux x86-64, about 120 on macOS), a multiple of [`TRAILER_ALIGN`].
pub const EVENT_BYTES: u64 = 192;
/// How long a party taking a slot waits for notifiers still inside its old event before it
/// gives up re-initialising it.
const DRAIN: Duration = Duration::from_millis(10);
/// The longest single wait, when the caller gives no deadline: a wait may return early.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a failed wait (an event found broken, or a timed wait refused) pauses before it
/// returns, so that a broken event is polled every millisecond rather than spun on.
const BROKEN_PAUSE: Duration = Duration::from_millis(1);
/// Wake-ups in a row with the word unchanged after which an event counts as stuck raised (a
/// peer wrote its flags: an auto-reset event turned manual never clears) and each further
/// one pauses as a failed wait does. One in a row is the normal late `set` of a notifier that
/// saw this slot parked just before its owner returned; a few notifiers can leave a few.
const STUCK_AFTER: u32 = 4;
/// Room left below the end of the current second when a timed wait is shortened (see
/// [`wait_for`]): covers the time between this module's clock read and `raw_sync`'s.
const CARRY_MARGIN_NS: i64 = 200_000;

/// The trailer's header, as it lies in shared memory. Written by the creator before the
/// segment's header is marked ready (whose Release store publishes it); read once on open.
#[repr(C)]
struct TrailerHeader {
    magic: AtomicU64,
    event_bytes: AtomicU32,
    data_slots: AtomicU32,
    space_slots: AtomicU32,
}

const _: () = assert!(size_of::<TrailerHeader>() as u64 <= HEADER_BYTES);

/// A slot's words, as they lie in shared memory (any bytes are a valid state: a hostile value
/// costs a spurious `set` or a skipped re-initialisation, nothing else).
#[repr(C)]
struct SlotWords {
    /// 1 while the slot's owner is in `park`, past its announcement.
    parked: AtomicU32,
    /// Notifiers inside this slot's `set` right now.
    users: AtomicU32,
}

/// Which of a topic's two wait cells a park serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    /// Readers wait for messages: a slot per subscriber table entry.
    Data,
    /// Writers wait for room: a slot per publisher lane.
    Space,
}

/// Where a portable segment's trailer lies and how many slots it has: computed for a new
/// segment ([`Trailer::for_ring`]) or validated against an opened one ([`Trailer::validate`]).
///
/// Invariants: `offset` is a multiple of [`TRAILER_ALIGN`], and `offset + size()` does not
/// overflow (and, for a validated trailer, is the mapping's length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    offset: u64,
    data_slots: u32,
    space_slots: u32,
}

impl Trailer {
    /// The trailer of a new segment whose ring part is `ring_len` bytes, with `data_slots`
    /// reader slots and `space_slots` writer slots; `None` if it would not fit in a `u64`.
    pub fn for_ring(ring_len: u64, data_slots: u32, space_slots: u32) -> Option<Self> {
        let offset = ring_len.checked_next_multiple_of(TRAILER_ALIGN)?;
        let t = Self {
            offset,
            data_slots,
            space_slots,
        };
        offset.checked_add(t.size())?;
        Some(t)
    }

    /// The whole segment's size: the ring part, padding, the trailer.
    pub fn segment_size(&self) -> u64 {
        self.offset + self.size()
    }

    fn slots(&self) -> u64 {
        self.data_slots as u64 + self.space_slots as u64
    }

    fn words_bytes(&self) -> u64 {
        (self.slots() * size_of::<SlotWords>() as u64).next_multiple_of(TRAILER_ALIGN)
    }

    /// The trailer's size. Slot counts are `u32`s, so this cannot overflow a `u64`.
    fn size(&self) -> u64 {
        HEADER_BYTES + self.words_bytes() + self.slots() * EVENT_BYTES
    }

    /// Check the trailer of an opened segment: `mapped_len` bytes, whose validated ring part
    /// is `ring_len` bytes and has `data_slots` table entries and `space_slots` lanes. The
    /// segment must end where the trailer does, and the trailer's header must say what the
    /// ring's header implies.
    ///
    /// # Safety
    /// `base` must be 8-aligned and valid for reads of `mapped_len` bytes while this runs
    /// (other processes may write them: every read is atomic).
    ///
    /// # Errors
    /// [`LayoutError::Inconsistent`] naming what disagrees.
    pub unsafe fn validate(
        base: *const u8,
        mapped_len: u64,
        ring_len: u64,
        data_slots: u32,
        space_slots: u32,
    ) -> Result<Self, LayoutError> {
        use LayoutError::Inconsistent;
        let t = Self::for_ring(ring_len, data_slots, space_slots)
            .filter(|t| t.segment_size() == mapped_len)
            .ok_or(Inconsistent(
                "the segment does not end where its event trailer does",
            ))?;
        // SAFETY: `offset + size() == mapped_len` and `size() >= HEADER_BYTES`, so the header
        // is inside the mapping, 64-aligned (the caller's base is page-aligned in practice and
        // 8-aligned by contract; offsets are multiples of 64); atomics are valid for any bytes.
        let h = unsafe { &*(base.add(t.offset as usize) as *const TrailerHeader) };
        // Each field read once, Relaxed: the segment header's Acquire load of `state` (read
        // before this) pairs with the creator's Release store made after these were written.
        if h.magic.load(Ordering::Relaxed) != TRAILER_MAGIC {
            return Err(Inconsistent("the event trailer has no magic"));
        }
        if h.event_bytes.load(Ordering::Relaxed) as u64 != EVENT_BYTES {
            return Err(Inconsistent(
                "the event trailer's event size differs from this build's",
            ));
        }
        if h.data_slots.load(Ordering::Relaxed) != data_slots
            || h.space_slots.load(Ordering::Relaxed) != space_slots
        {
            return Err(Inconsistent(
                "the event trailer's slot counts differ from the header's",
            ));
        }
        Ok(t)
    }

    /// Write a new segment's trailer: its header and an auto-reset event in every slot.
    ///
    /// # Safety
    /// `base` must be valid for writes of `segment_size()` bytes, page-aligned, zero-filled,
    /// and not yet visible as ready to any other process.
    ///
    /// # Errors
    /// What `raw_sync` reports for an event it could not initialise, or an event larger than
    /// [`EVENT_BYTES`] on this system.
    pub unsafe fn init(&self, base: *mut u8) -> Result<(), String> {
        for slot in 0..self.slots() as usize {
            // SAFETY: `slot < slots()`: inside the trailer, which the caller lets us write;
            // nobody else uses the segment yet.
            unsafe { self.new_event(base, slot) }?;
        }
        // SAFETY: the header lies in the trailer (see `validate`), aligned; atomics.
        let h = unsafe { &*(base.add(self.offset as usize) as *const TrailerHeader) };
        h.event_bytes.store(EVENT_BYTES as u32, Ordering::Relaxed);
        h.data_slots.store(self.data_slots, Ordering::Relaxed);
        h.space_slots.store(self.space_slots, Ordering::Relaxed);
        // Relaxed: the segment header's Release store of `state`, made after this, publishes
        // the whole trailer to openers.
        h.magic.store(TRAILER_MAGIC, Ordering::Relaxed);
        Ok(())
    }

    /// The park of this party for one cell. `mine` is the party's own slot in that cell (its
    /// subscriber table entry for [`CellKind::Data`], its lane for [`CellKind::Space`]) if it
    /// sleeps there: that slot's event is re-initialised first, unless a notifier is still
    /// inside it after 10 ms (see the module comment). Allocates one handle per slot of
    /// the cell, now, so that waking never allocates.
    ///
    /// # Safety
    /// `base` must be the start of the mapping this trailer was computed or validated for,
    /// which must stay mapped while the returned park lives; `mine`, if given, must be this
    /// party's alone among the live parties of the segment.
    pub unsafe fn attach(&self, base: *mut u8, cell: CellKind, mine: Option<u32>) -> EventPark {
        let (first, count) = match cell {
            CellKind::Data => (0, self.data_slots as usize),
            CellKind::Space => (self.data_slots as usize, self.space_slots as usize),
        };
        let mine = mine.map(|m| m as usize).filter(|&m| m < count);
        if let Some(m) = mine {
            // SAFETY: `first + m < slots()`; the mapping outlives this call.
            let words = unsafe { self.words(base, first + m) };
            // SeqCst, both this store and the load of `users` below, and the notifier's
            // increment of `users` and its load of `parked` in `wake_all`: in their single
            // total order, either the notifier sees `parked == 0` and stays out of the event,
            // or this side sees its `users` and does not re-initialise under it.
            words.parked.store(0, Ordering::SeqCst);
            let until = Instant::now() + DRAIN;
            while words.users.load(Ordering::SeqCst) != 0 && Instant::now() < until {
                crate::sync::yield_now();
            }
            if words.users.load(Ordering::SeqCst) == 0 {
                // SAFETY: the slot is ours (caller), no notifier is inside it (above) and
                // none enters while `parked` is 0; the memory is in the mapping.
                let _ = unsafe { self.new_event(base, first + m) };
            }
        }
        let events = (first..first + count)
            .map(|slot| {
                // SAFETY: `slot < slots()`: its event lies in the trailer, in the mapping.
                let mem = unsafe { self.event_ptr(base, slot) };
                // SAFETY: as above; `from_existing` only reads two flag bytes (checked to be
                // 0 or 1) and wraps the address. A slot whose flags a peer corrupted gets no
                // handle: it is never woken, and its owner polls (see `park`).
                unsafe { Event::from_existing(mem) }.ok().map(|(e, _)| e)
            })
            .collect();
        EventPark {
            // SAFETY: `first < slots()` or `count == 0`; in the mapping either way.
            words: unsafe { self.words(base, first) } as *const SlotWords,
            events,
            mine,
            unchanged: std::cell::Cell::new(0),
        }
    }

    /// Slot `slot`'s words.
    ///
    /// # Safety
    /// `slot <= slots()` (one past the end only to take an address), `base` the mapping's
    /// start, mapped for the returned lifetime.
    unsafe fn words<'a>(&self, base: *mut u8, slot: usize) -> &'a SlotWords {
        let at = self.offset + HEADER_BYTES + (slot * size_of::<SlotWords>()) as u64;
        // SAFETY: inside the words section (caller), 4-aligned; atomics.
        unsafe { &*(base.add(at as usize) as *const SlotWords) }
    }

    /// Where slot `slot`'s event lies.
    ///
    /// # Safety
    /// `slot < slots()`, `base` the mapping's start.
    unsafe fn event_ptr(&self, base: *mut u8, slot: usize) -> *mut u8 {
        let at = self.offset + HEADER_BYTES + self.words_bytes() + slot as u64 * EVENT_BYTES;
        // SAFETY: inside the trailer (caller), 64-aligned.
        unsafe { base.add(at as usize) }
    }

    /// Initialise slot `slot`'s event in place (auto-reset, cleared).
    ///
    /// # Safety
    /// As `event_ptr`, and nobody else uses the event while this runs.
    unsafe fn new_event(&self, base: *mut u8, slot: usize) -> Result<(), String> {
        // SAFETY: caller.
        let mem = unsafe { self.event_ptr(base, slot) };
        if Event::size_of(Some(mem)) as u64 > EVENT_BYTES {
            return Err(format!(
                "a raw_sync event takes {} bytes here, more than the {EVENT_BYTES} reserved",
                Event::size_of(Some(mem))
            ));
        }
        // SAFETY: `EVENT_BYTES` bytes at `mem` are ours to write (caller), and the event fits.
        unsafe { Event::new(mem, true) }
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// One party's [`Park`] on one wait cell of a portable segment: its own slot's event to sleep
/// on, every slot's event to wake. See the module comment for the protocol.
pub struct EventPark {
    /// The cell's first slot's words; `events.len()` of them. In the mapping, which outlives
    /// this park (its owner drops the park first).
    words: *const SlotWords,
    /// A handle per slot of the cell; `None` for a slot whose event was found corrupt.
    events: Box<[Option<Box<dyn EventImpl>>]>,
    /// This party's slot, if it sleeps on this cell.
    mine: Option<usize>,
    /// Wake-ups in a row that found the word unchanged (see [`STUCK_AFTER`]).
    unchanged: std::cell::Cell<u32>,
}

impl std::fmt::Debug for EventPark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPark")
            .field("slots", &self.events.len())
            .field("mine", &self.mine)
            .finish()
    }
}

impl EventPark {
    fn words(&self, slot: usize) -> &SlotWords {
        debug_assert!(slot < self.events.len());
        // SAFETY: `slot < events.len()`, the cell's slot count; the words are in the mapping,
        // which outlives `self`.
        unsafe { &*self.words.add(slot) }
    }
}

impl Park for EventPark {
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
        let left = match deadline {
            None => MAX_WAIT,
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        if left.is_zero() {
            return;
        }
        let Some((me, event)) = self
            .mine
            .and_then(|m| Some((m, self.events[m].as_deref()?)))
        else {
            // No slot of ours (or a corrupt one): poll.
            return std::thread::sleep(BROKEN_PAUSE.min(left));
        };
        let words = self.words(me);
        words.parked.store(1, Ordering::Relaxed);
        // SeqCst fence [F1]: pairs with [F2] in `wake_all` (see the module comment).
        fence(Ordering::SeqCst);
        if word.load(Ordering::Relaxed) != expected {
            words.parked.store(0, Ordering::Relaxed);
            return;
        }
        let waited = wait_for(event, left.min(MAX_WAIT));
        words.parked.store(0, Ordering::Relaxed);
        match waited {
            Waited::Woken if word.load(Ordering::Relaxed) == expected => {
                let unchanged = self.unchanged.get().saturating_add(1);
                self.unchanged.set(unchanged);
                if unchanged >= STUCK_AFTER {
                    std::thread::sleep(BROKEN_PAUSE.min(left));
                }
            }
            Waited::Woken => self.unchanged.set(0),
            Waited::TimedOut => {
                self.unchanged.set(0);
                #[cfg(test)]
                if word.load(Ordering::Relaxed) != expected {
                    tests::TIMED_OUT_WHEN_CHANGED.fetch_add(1, Ordering::Relaxed);
                }
            }
            Waited::Failed => std::thread::sleep(BROKEN_PAUSE.min(left)),
        }
    }

    fn wake_all(&self, word: &AtomicU32) {
        // The caller changed `word` already; what is left is to wake whoever sleeps.
        let _ = word;
        // SeqCst fence [F2]: pairs with [F1] in `park`; orders the caller's change of `word`
        // before the loads of `parked`.
        fence(Ordering::SeqCst);
        for (slot, event) in self.events.iter().enumerate() {
            let words = self.words(slot);
            if words.parked.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let Some(event) = event else { continue };
            // SeqCst: see `Trailer::attach` (a new owner re-initialising the event).
            words.users.fetch_add(1, Ordering::SeqCst);
            if words.parked.load(Ordering::SeqCst) != 0 {
                let _ = event.set(EventState::Signaled);
            }
            // Release: pairs with the owner's SeqCst load in `attach`; our use of the event
            // is over before it may re-initialise it.
            words.users.fetch_sub(1, Ordering::Release);
        }
    }
}

/// How a wait on an event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waited {
    /// The event was set (now or before the wait).
    Woken,
    /// Its timeout passed (or the wall clock was at the end of a second: see [`carry_free`]).
    TimedOut,
    /// It failed before its timeout: a broken event, or a timed wait refused.
    Failed,
}

/// Wait on `event` for up to `timeout` (shortened, see the module comment).
fn wait_for(event: &dyn EventImpl, timeout: Duration) -> Waited {
    let Some(timeout) = carry_free(timeout) else {
        // The wall clock is within the margin of a second's end: let it pass.
        crate::sync::yield_now();
        return Waited::TimedOut;
    };
    let start = Instant::now();
    match event.wait(Timeout::Val(timeout)) {
        Ok(()) => Waited::Woken,
        // `raw_sync` reports a timeout as an error: only an early one is a failure.
        Err(_) if start.elapsed() >= timeout => Waited::TimedOut,
        Err(_) => Waited::Failed,
    }
}

/// `timeout`, shortened so that `raw_sync`'s absolute deadline (now on `CLOCK_REALTIME` plus
/// the timeout, nanoseconds added without a carry) has fewer than 10^9 nanoseconds; `None`
/// when no such timeout is left this second and `timeout` has no whole seconds.
fn carry_free(timeout: Duration) -> Option<Duration> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let room = 999_999_999 - now.tv_nsec as i64 - CARRY_MARGIN_NS;
    let nanos = timeout.subsec_nanos() as i64;
    if nanos <= room {
        return Some(timeout);
    }
    if room > 0 {
        return Some(Duration::new(timeout.as_secs(), room as u32));
    }
    (timeout.as_secs() > 0).then(|| Duration::from_secs(timeout.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::WaitCell;
    use std::sync::Arc;

    /// Waits that ran to their timeout although their word had changed: lost wake-ups (the
    /// tests give every wait a timeout far longer than a wake-up can take).
    pub(super) static TIMED_OUT_WHEN_CHANGED: AtomicU64 = AtomicU64::new(0);

    /// A trailer in heap memory (8-aligned, as the events need), as a segment would hold it.
    struct Memory {
        words: Vec<u64>,
        trailer: Trailer,
    }

    impl Memory {
        fn new(data_slots: u32, space_slots: u32) -> Arc<Self> {
            let trailer = Trailer::for_ring(0, data_slots, space_slots).unwrap();
            let mut words = vec![0u64; trailer.segment_size() as usize / 8];
            // SAFETY: the buffer is `segment_size()` bytes, zeroed, 8-aligned, and ours.
            unsafe { trailer.init(words.as_mut_ptr() as *mut u8) }.unwrap();
            Arc::new(Self { words, trailer })
        }

        fn park(&self, cell: CellKind, mine: Option<u32>) -> EventPark {
            // SAFETY: the memory outlives every park of a test (each test joins its threads
            // before dropping it); each `mine` is used by one thread.
            unsafe {
                self.trailer
                    .attach(self.words.as_ptr() as *mut u8, cell, mine)
            }
        }
    }

    /// Parks in one thread, wakes from another: the test's threads share them through the
    /// `Arc` of the memory they point into.
    struct Shared<T>(T);
    // SAFETY: an `EventPark` is addresses into memory the test keeps alive, and `raw_sync`'s
    // handles have no thread affinity; each test uses a waiter's park from one thread.
    unsafe impl<T> Send for Shared<T> {}
    // SAFETY: as above.
    unsafe impl<T> Sync for Shared<T> {}

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn the_trailer_validates_and_each_disagreement_is_refused() {
        let m = Memory::new(8, 2);
        let base = m.words.as_ptr() as *const u8;
        let len = m.trailer.segment_size();
        // SAFETY: `base` is valid for `len` bytes while `m` lives.
        let check = |len, data, space| unsafe { Trailer::validate(base, len, 0, data, space) };
        assert_eq!(check(len, 8, 2), Ok(m.trailer));
        assert!(
            check(len - 64, 8, 2).is_err(),
            "a segment shorter than its trailer"
        );
        assert!(
            check(len + 64, 8, 2).is_err(),
            "a segment longer than its trailer"
        );
        assert!(check(len, 9, 2).is_err(), "another table size");
        assert!(check(len, 8, 1).is_err(), "another lane count");
        // A trailer whose header was not written (or was overwritten).
        let zeros = vec![0u64; len as usize / 8];
        // SAFETY: as above, for `zeros`.
        let bad = unsafe { Trailer::validate(zeros.as_ptr() as *const u8, len, 0, 8, 2) };
        assert_eq!(
            bad,
            Err(LayoutError::Inconsistent("the event trailer has no magic"))
        );
    }

    /// Two threads take turns through two cells, each sleeping on its own slot's event every
    /// turn: every wake-up must arrive (a lost one runs its wait to the 30 s timeout).
    #[test]
    fn turns_taken_through_events_lose_no_wake_up() {
        const TURNS: u64 = 2_000;
        let m = Memory::new(1, 1);
        let cells = Arc::new((WaitCell::new(), WaitCell::new()));
        cells.0.raise_may_sleep();
        cells.1.raise_may_sleep();
        let ball = Arc::new(AtomicU64::new(0));
        let before = TIMED_OUT_WHEN_CHANGED.load(Ordering::Relaxed);
        // Thread A sleeps on data slot 0 and wakes space; B sleeps on space slot 0, wakes data.
        let a_parks = Shared((
            m.park(CellKind::Data, Some(0)),
            m.park(CellKind::Space, None),
        ));
        let b_parks = Shared((
            m.park(CellKind::Data, None),
            m.park(CellKind::Space, Some(0)),
        ));
        let a = {
            let (cells, ball) = (cells.clone(), ball.clone());
            std::thread::spawn(move || {
                let parks = a_parks;
                for turn in 0..TURNS {
                    // A's turns are the odd values of the ball.
                    let deadline = Some(Instant::now() + LONG);
                    let mine = || ball.load(Ordering::Acquire) == 2 * turn + 1;
                    assert!(cells.0.wait(&parks.0 .0, deadline, mine), "turn {turn}");
                    ball.store(2 * turn + 2, Ordering::Release);
                    cells.1.notify(&parks.0 .1);
                }
            })
        };
        let parks = b_parks;
        for turn in 0..TURNS {
            ball.store(2 * turn + 1, Ordering::Release);
            cells.0.notify(&parks.0 .0);
            let deadline = Some(Instant::now() + LONG);
            let mine = || ball.load(Ordering::Acquire) == 2 * turn + 2;
            assert!(cells.1.wait(&parks.0 .1, deadline, mine), "turn {turn}");
        }
        a.join().unwrap();
        assert_eq!(TIMED_OUT_WHEN_CHANGED.load(Ordering::Relaxed), before);
    }

    /// Several sleepers on one cell, each on its own slot, all woken by each notification.
    #[test]
    fn every_sleeper_of_a_cell_is_woken() {
        const SLEEPERS: u32 = 3;
        const ROUNDS: u64 = 300;
        let m = Memory::new(SLEEPERS, 1);
        let cell = Arc::new(WaitCell::new());
        let progress = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let before = TIMED_OUT_WHEN_CHANGED.load(Ordering::Relaxed);
        let sleepers: Vec<_> = (0..SLEEPERS)
            .map(|k| {
                cell.raise_may_sleep();
                let park = Shared(m.park(CellKind::Data, Some(k)));
                let (cell, progress, seen) = (cell.clone(), progress.clone(), seen.clone());
                std::thread::spawn(move || {
                    let park = park;
                    for round in 1..=ROUNDS {
                        let deadline = Some(Instant::now() + LONG);
                        let ready = || progress.load(Ordering::Acquire) >= round;
                        assert!(cell.wait(&park.0, deadline, ready), "round {round}");
                        seen.fetch_add(1, Ordering::Release);
                    }
                })
            })
            .collect();
        let notifier = m.park(CellKind::Data, None);
        for round in 1..=ROUNDS {
            progress.store(round, Ordering::Release);
            cell.notify(&notifier);
            // The next round once every sleeper saw this one (the watchdog is the test's).
            while seen.load(Ordering::Acquire) < round * SLEEPERS as u64 {
                std::thread::yield_now();
            }
        }
        for s in sleepers {
            s.join().unwrap();
        }
        assert_eq!(TIMED_OUT_WHEN_CHANGED.load(Ordering::Relaxed), before);
    }

    /// `raw_sync` refuses at once a timed wait whose deadline's nanoseconds pass a second: a
    /// wait shortened by `carry_free` sleeps instead (a quiet wait makes few parks, not a
    /// busy loop of refused ones).
    #[test]
    fn a_quiet_wait_sleeps_through_the_carry() {
        struct Counting<'a>(&'a EventPark, AtomicU64);
        impl Park for Counting<'_> {
            fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<Instant>) {
                self.1.fetch_add(1, Ordering::Relaxed);
                self.0.park(word, expected, deadline)
            }
            fn wake_all(&self, word: &AtomicU32) {
                self.0.wake_all(word)
            }
        }
        let m = Memory::new(1, 1);
        let park = m.park(CellKind::Data, Some(0));
        let counting = Counting(&park, AtomicU64::new(0));
        let cell = WaitCell::new();
        cell.raise_may_sleep();
        // 0.6 s and some: most starting points in a second need the carry.
        let timeout = Duration::from_millis(600) + Duration::from_nanos(123_457);
        for _ in 0..2 {
            let start = Instant::now();
            assert!(!cell.wait(&counting, Some(start + timeout), || false));
            assert!(start.elapsed() >= timeout, "returned before its timeout");
        }
        // A refused wait returns in microseconds: thousands of parks. Sleeping ones: a few per
        // wait (a shortened wait, the wall clock at a second's end, then the rest).
        let parks = counting.1.load(Ordering::Relaxed);
        assert!(parks < 1_000, "{parks} parks for two quiet waits");
    }

    #[test]
    fn a_shortened_timeout_never_grows() {
        for nanos in [0, 1, 500_000_000, 999_999_999] {
            for secs in [0, 1, 7] {
                let t = Duration::new(secs, nanos);
                if let Some(short) = carry_free(t) {
                    assert!(short <= t, "{t:?} became {short:?}");
                }
            }
        }
    }
}
