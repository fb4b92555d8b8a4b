//! The control block of a topic's segment: the two wait cells, how many publishers are
//! attached, and one lane per publisher: its writer's words, its owner and its table of
//! subscribers. It follows the header (see `crate::layout`); all zero is its initial state, so
//! a freshly truncated segment needs no initialisation beyond the header.
//!
//! ```text
//! | TopicControl | lane 0: LaneControl, entries 0..max_readers | lane 1: ... | ... | notify slots 0..max_readers |
//! ```
//!
//! Subscriber `i` holds entry `i` of every lane (taken in lane 0's table, mirrored in the
//! others), so that each publisher sees every subscriber's position in its own ring, and
//! notify slot `i`, where it registers a notifier other than the futex (`crate::wait::Notifier`).

use crate::ring::broadcast::{
    evictor_of, ReaderEntry, Table, WriterWords, WAITS_ASLEEP, WAITS_MAY_SLEEP,
};
use crate::segment::{identity_alive, identity_pid};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::wait::{NotifySlot, Park, WaitCell};
use crossbeam_utils::CachePadded;

/// As it lies in shared memory, followed by the lanes. Its size, with the lanes', is recorded
/// in the header and checked on open.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct TopicControl {
    /// Readers sleep here for messages; a publisher notifies after each commit.
    pub(crate) data: CachePadded<WaitCell>,
    /// Publishers sleep here for space; a subscriber notifies after each release.
    pub(crate) space: CachePadded<WaitCell>,
    pub(crate) peers: CachePadded<Peers>,
}

/// The head of one publisher's lane, followed by its reader table.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct LaneControl {
    pub(crate) writer: CachePadded<WriterWords>,
    pub(crate) owner: CachePadded<LaneOwner>,
}

/// Who writes a lane, and what it did to dead subscribers.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct LaneOwner {
    /// Identity of the lane's publisher (`segment::identity_of`); 0 while the lane is free
    /// (never used, or closed).
    pub(crate) id: AtomicU64,
    /// Subscribers this lane's publishers evicted because their process was dead.
    pub(crate) evictions: AtomicU64,
    /// What the lane's publisher counts for in the topic's `space` wait cell, as a
    /// subscriber's entry keeps it for `data` (`ReaderEntry::waits`, the same bits): taken
    /// off by the publisher that takes the lane over from a dead one.
    waits: AtomicU32,
}

impl LaneOwner {
    /// The wait marks a dead former owner left, taken (cleared) by the lane's new owner.
    pub(crate) fn take_waits(&self) -> u32 {
        self.waits.swap(0, Ordering::AcqRel)
    }
}

/// Where a party keeps its wait marks (see `ReaderEntry::waits`): a subscriber in its entry
/// of lane 0's table, a publisher in its lane's owner words.
pub(crate) trait WaitMarks {
    /// Set `bits` (`WAITS_*`), after raising the counts they stand for.
    fn mark_waits(&self, bits: u32);
    /// Clear `bits`, before lowering the counts they stand for.
    fn unmark_waits(&self, bits: u32);
}

impl WaitMarks for ReaderEntry {
    fn mark_waits(&self, bits: u32) {
        ReaderEntry::mark_waits(self, bits)
    }
    fn unmark_waits(&self, bits: u32) {
        ReaderEntry::unmark_waits(self, bits)
    }
}

impl WaitMarks for LaneOwner {
    fn mark_waits(&self, bits: u32) {
        self.waits.fetch_or(bits, Ordering::Release);
    }
    fn unmark_waits(&self, bits: u32) {
        self.waits.fetch_and(!bits, Ordering::Release);
    }
}

/// A [`Park`] that keeps its party's wait marks while the party counts among a cell's
/// `sleepers`, so that if it is killed asleep whoever frees its place takes it off, and the
/// other side stops paying a wake syscall for it.
pub(crate) struct Marked<'a, P, M> {
    park: &'a P,
    marks: &'a M,
}

impl<'a, P: Park, M: WaitMarks> Marked<'a, P, M> {
    pub(crate) fn new(park: &'a P, marks: &'a M) -> Self {
        Self { park, marks }
    }
}

impl<P: Park, M: WaitMarks> Park for Marked<'_, P, M> {
    fn park(&self, word: &AtomicU32, expected: u32, deadline: Option<std::time::Instant>) {
        self.park.park(word, expected, deadline)
    }
    fn wake_all(&self, word: &AtomicU32) {
        self.park.wake_all(word)
    }
    fn prepare(&self) {
        self.park.prepare()
    }
    fn finish(&self) {
        self.park.finish()
    }
    fn counted(&self, asleep: bool) {
        if asleep {
            self.marks.mark_waits(WAITS_ASLEEP);
        } else {
            self.marks.unmark_waits(WAITS_ASLEEP);
        }
    }
}

/// One entry of a reader table, as it lies in shared memory.
pub(crate) type ReaderSlot = CachePadded<ReaderEntry>;

fn lane_size(max_readers: u32) -> usize {
    size_of::<LaneControl>() + max_readers as usize * size_of::<ReaderSlot>()
}

/// Where the notify slots start, from the control block's start.
fn notify_offset(max_readers: u32, lanes: u32) -> usize {
    size_of::<TopicControl>() + lanes as usize * lane_size(max_readers)
}

/// Bytes of a control block with `lanes` lanes of `max_readers` entries each (and as many
/// notify slots).
pub(crate) fn control_size(max_readers: u32, lanes: u32) -> u32 {
    (notify_offset(max_readers, lanes) + max_readers as usize * size_of::<NotifySlot>()) as u32
}

impl TopicControl {
    /// Lane `lane`.
    ///
    /// # Safety
    /// `self` must lie in a mapping that holds `control_size(max_readers, lanes)` bytes from its
    /// start, with `lane < lanes`, for as long as the lane is used.
    pub(crate) unsafe fn lane(&self, lane: u32, max_readers: u32) -> &LaneControl {
        // SAFETY: the caller's contract: the lanes follow the control block in the mapping;
        // every size involved is a multiple of the lanes' alignment (all `CachePadded`).
        unsafe {
            &*((self as *const Self).add(1) as *const u8)
                .add(lane as usize * lane_size(max_readers))
                .cast::<LaneControl>()
        }
    }
}

impl TopicControl {
    /// The subscribers' notify slots (slot `i` for the holder of reader entry `i`).
    ///
    /// # Safety
    /// As for [`TopicControl::lane`]: `self` lies in a mapping that holds
    /// `control_size(max_readers, lanes)` bytes from its start, for as long as the slots are
    /// used.
    pub(crate) unsafe fn notify_slots(&self, max_readers: u32, lanes: u32) -> &[NotifySlot] {
        // SAFETY: the caller's contract: the slots end the control block, at an offset that is
        // a multiple of 128 (every part before them is `CachePadded`), so they are aligned;
        // any bytes are valid for their atomics.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self as *const u8)
                    .add(notify_offset(max_readers, lanes))
                    .cast::<NotifySlot>(),
                max_readers as usize,
            )
        }
    }
}

impl LaneControl {
    /// The lane's reader table.
    ///
    /// # Safety
    /// As for [`TopicControl::lane`], which returned `self`.
    pub(crate) unsafe fn table(&self, max_readers: u32) -> Table {
        // SAFETY: the caller's contract: the entries follow the lane's head in the mapping.
        unsafe {
            Table::new(
                (self as *const Self).add(1) as *const ReaderSlot,
                max_readers as usize,
            )
        }
    }
}

/// Who publishes.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Peers {
    /// Publishers attached. The creator makes it 1; each publisher that attaches adds one
    /// (never from 0: a topic whose last publisher left is closed for good) and takes it back
    /// when it closes, with Release after its last commit, so that a subscriber that loads 0
    /// (Acquire) and then finds every lane drained has seen every message.
    pub(crate) publishers: AtomicU32,
}

impl Peers {
    /// Count one more publisher, unless the topic is closed. Returns whether it was counted.
    pub(crate) fn join(&self) -> bool {
        self.publishers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n != 0).then(|| n.saturating_add(1))
            })
            .is_ok()
    }

    /// Count one more publisher, also on a closed topic (one that outlives its publishers:
    /// a memory-mapped file's).
    pub(crate) fn rejoin(&self) {
        self.publishers.fetch_add(1, Ordering::AcqRel);
    }

    /// Count one publisher less. Returns whether it was the last.
    pub(crate) fn leave(&self) -> bool {
        self.publishers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            == Ok(1)
    }
}

/// Take off `cell` what a dead party's wait marks say it still counted for there (a dead
/// subscriber's in `data`, as `ReaderEntry::evict` and `take_over` hand them back; a dead
/// publisher's in `space`, as `LaneOwner::take_waits` does).
pub(crate) fn forget_waits(cell: &WaitCell, marks: u32) {
    cell.forget(marks & WAITS_ASLEEP != 0, marks & WAITS_MAY_SLEEP != 0);
}

/// Take a free entry of `table` (lane 0's) for identity `me` (`segment::my_identity`), or one
/// whose holder is dead (its pid gone, or reused by a process that started later), or one
/// whose eviction was left unfinished by a dead writer; what a dead holder still counted for
/// in `data` (the topic's data wait cell) is taken off. Returns its index, or the pids of the
/// holders when every entry is held by a live process.
pub(crate) fn claim_entry(table: &Table, data: &WaitCell, me: u64) -> Result<usize, Vec<u32>> {
    let entries = table.entries();
    for (i, e) in entries.iter().enumerate() {
        if e.try_take(me) {
            return Ok(i);
        }
    }
    let mut holders = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let holder = settled_owner(e);
        if holder == 0 {
            if e.try_take(me) {
                return Ok(i);
            }
            continue;
        }
        let gone = match evictor_of(holder) {
            // Still evicting after all that patience: alive but slow; count it as held.
            Some(evictor) => !identity_alive(evictor),
            None => !identity_alive(holder),
        };
        if gone {
            if let Some(marks) = e.take_over(holder, me) {
                forget_waits(data, marks);
                return Ok(i);
            }
        }
        holders.push(identity_pid(evictor_of(holder).unwrap_or(holder)));
    }
    Err(holders)
}

/// The entry's holder once any eviction under way by a live writer is over: a writer evicting
/// is two stores away from a free entry, so this yields up to [`EVICTION_PATIENCE`] times for
/// it. Returns at once if the evicting writer is dead (its eviction will never finish).
fn settled_owner(e: &ReaderEntry) -> u64 {
    let mut holder = e.owner();
    let Some(evictor) = evictor_of(holder) else {
        return holder;
    };
    if !identity_alive(evictor) {
        return holder;
    }
    for _ in 0..EVICTION_PATIENCE {
        std::thread::yield_now();
        holder = e.owner();
        if evictor_of(holder).is_none() {
            break;
        }
    }
    holder
}

/// Take entry `e` of a lane other than lane 0 for `me`, which holds the same index in lane
/// 0's table: whoever holds it here is a former holder of the index (dead: a live one frees
/// its other lanes before lane 0), or a writer evicting one. Waits for a live writer's
/// eviction (see [`settled_owner`]); takes over from anyone else, a dead writer's unfinished
/// eviction included (what the former holder counted for in `data` taken off, though a
/// subscriber marks only its lane-0 entry). Returns whether the entry is `me`'s.
pub(crate) fn claim_mirror(e: &ReaderEntry, data: &WaitCell, me: u64) -> bool {
    let holder = settled_owner(e);
    if holder == me {
        return true;
    }
    let gone = match evictor_of(holder) {
        Some(evictor) => !identity_alive(evictor),
        None => true,
    };
    if !gone {
        return false;
    }
    if holder == 0 {
        return e.try_take(me);
    }
    match e.take_over(holder, me) {
        Some(marks) => {
            forget_waits(data, marks);
            true
        }
        None => false,
    }
}

/// How many times a claimant yields for an eviction under way before it counts the entry as
/// held.
const EVICTION_PATIENCE: u32 = 1000;

/// Evict the dead subscribers of `table` (a publisher's own lane) that hold it back: those
/// registered at a head at least `min_lag` behind `tail`. Makes system calls (the liveness
/// checks): for a publisher that found its ring full. See [`evict_dead_where`].
pub(crate) fn evict_dead(table: &Table, data: &WaitCell, tail: u64, min_lag: u64, me: u64) -> u64 {
    evict_dead_where(table, data, me, |e| {
        e.head()
            .is_some_and(|head| tail.wrapping_sub(head) >= min_lag)
    })
}

/// Evict the subscribers of `table` (a publisher's own lane) that their marks say died asleep
/// (see `ReaderEntry::waits`), whatever their position. Makes system calls (a liveness check
/// per subscriber marked asleep): for a publisher whose wake-ups go on and on, which they do
/// for a subscriber killed asleep under any policy (under Overwrite nothing else would ever
/// free it). See [`evict_dead_where`].
pub(crate) fn evict_dead_sleepers(table: &Table, data: &WaitCell, me: u64) -> u64 {
    evict_dead_where(table, data, me, |e| e.waits() & WAITS_ASLEEP != 0)
}

/// Evict the subscribers of `table` for which `suspect` holds and whose process is dead
/// (`suspect` first: it spares the liveness check of the others), and finish the evictions a
/// dead writer of this lane before `me` left half-done; what each counted for in `data` (the
/// topic's data wait cell: a subscriber killed asleep, or attached with a sleeping strategy)
/// is taken off. Returns how many it evicted.
fn evict_dead_where(
    table: &Table,
    data: &WaitCell,
    me: u64,
    suspect: impl Fn(&ReaderEntry) -> bool,
) -> u64 {
    let mut evicted = 0;
    for e in table.entries() {
        let holder = e.owner();
        if holder == 0 {
            continue;
        }
        let dead = match evictor_of(holder) {
            // Only this lane's writer evicts in its table, and this writer is not evicting
            // now: the marker is a dead predecessor's.
            Some(evictor) => !identity_alive(evictor),
            None => suspect(e) && !identity_alive(holder),
        };
        if !dead {
            continue;
        }
        if let Some(marks) = e.evict(holder, me) {
            forget_waits(data, marks);
            evicted += 1;
        }
    }
    evicted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::broadcast::{evicting, Reader};
    use crate::ring::HeapSlots;
    use crate::segment::{identity_of, my_identity};
    use crossbeam_utils::CachePadded;
    use std::sync::Arc;

    /// An identity that is not alive: this process's pid with another start time (a pid the
    /// kernel reused, as far as the tables can tell).
    fn dead_identity() -> u64 {
        let me = my_identity();
        identity_of(std::process::id(), (me >> 32).wrapping_add(1))
    }

    /// What the tests keep alive: the writer's words, the entries, the "dead" reader (kept, not
    /// dropped: a reader does not unregister on drop anyway, as a killed one would not), and
    /// the table over the entries.
    type Parts = (
        Box<WriterWords>,
        Box<[CachePadded<ReaderEntry>]>,
        Reader<Arc<HeapSlots>>,
        Table,
    );

    /// A table of `n` entries, entry 0 registered (head set) by a reader that then "died"
    /// (never unregistered), its owner word then set to `owner`.
    fn table_with_stale_head(n: usize, owner: u64) -> Parts {
        let words = Box::new(WriterWords::new());
        let entries: Box<[_]> = (0..n)
            .map(|_| CachePadded::new(ReaderEntry::new()))
            .collect();
        // SAFETY: `words` and `entries` outlive every use of the reader and the table here
        // (returned with them, heap-allocated so they do not move).
        let reader =
            unsafe { Reader::join(&*words, &*entries[0], Arc::new(HeapSlots::new(4)), 0) }.unwrap();
        entries[0].set_owner(owner);
        // SAFETY: as above.
        let table = unsafe { Table::new(entries.as_ptr(), n) };
        (words, entries, reader, table)
    }

    #[test]
    fn an_eviction_left_by_a_dead_writer_is_finished_by_the_next_writer() {
        let me = my_identity();
        let (_w, entries, _r, table) = table_with_stale_head(2, evicting(dead_identity()));
        assert!(entries[0].head().is_some());
        assert_eq!(evict_dead(&table, &WaitCell::new(), 0, u64::MAX, me), 1);
        assert_eq!((entries[0].owner(), entries[0].head()), (0, None));
    }

    #[test]
    fn a_live_writers_eviction_is_left_to_it() {
        let me = my_identity();
        // Another writer of this process (alive) is evicting entry 0.
        let (_w, entries, _r, table) = table_with_stale_head(1, evicting(me));
        assert_eq!(evict_dead(&table, &WaitCell::new(), 0, u64::MAX, me), 0);
        assert_eq!(entries[0].owner(), evicting(me));
        // A joiner waits for it a while, then counts the entry as held by that writer.
        assert_eq!(
            claim_entry(&table, &WaitCell::new(), 7),
            Err(vec![std::process::id()])
        );
        assert!(!claim_mirror(&entries[0], &WaitCell::new(), 7));
    }

    #[test]
    fn a_joiner_takes_an_entry_whose_evicting_writer_died() {
        let (_w, entries, _r, table) = table_with_stale_head(1, evicting(dead_identity()));
        assert_eq!(claim_entry(&table, &WaitCell::new(), 7), Ok(0));
        assert_eq!(entries[0].owner(), 7);
        let (_w, entries, _r, _table) = table_with_stale_head(1, evicting(dead_identity()));
        assert!(claim_mirror(&entries[0], &WaitCell::new(), 7));
        assert_eq!(entries[0].owner(), 7);
    }

    #[test]
    fn a_mirror_entry_is_taken_from_a_former_holder_or_free() {
        let (_w, entries, _r, _table) = table_with_stale_head(2, dead_identity());
        assert!(claim_mirror(&entries[0], &WaitCell::new(), 7));
        assert!(claim_mirror(&entries[1], &WaitCell::new(), 7));
        assert!(
            claim_mirror(&entries[1], &WaitCell::new(), 7),
            "already ours"
        );
        assert_eq!((entries[0].owner(), entries[1].owner()), (7, 7));
    }

    /// A cell as a subscriber with a sleeping strategy leaves it when killed asleep: counted
    /// in `may_sleep` and in `sleepers`, its entry marked for both.
    fn cell_of_a_sleeper_killed_in(entry: &ReaderEntry) -> WaitCell {
        let cell = WaitCell::new();
        cell.raise_may_sleep();
        entry.mark_waits(WAITS_MAY_SLEEP);
        cell.enter();
        entry.mark_waits(WAITS_ASLEEP);
        cell
    }

    #[test]
    fn evicting_a_subscriber_killed_asleep_takes_it_off_the_wait_cell() {
        let me = my_identity();
        let (_w, entries, _r, table) = table_with_stale_head(2, dead_identity());
        let cell = cell_of_a_sleeper_killed_in(&entries[0]);
        // Another subscriber, alive and asleep, stays counted.
        cell.raise_may_sleep();
        cell.enter();
        assert_eq!((cell.sleepers(), cell.may_sleep_count()), (2, 2));
        assert_eq!(evict_dead(&table, &cell, 0, 0, me), 1);
        assert_eq!((cell.sleepers(), cell.may_sleep_count()), (1, 1));
        assert_eq!(entries[0].waits(), 0);
        // Nothing is taken off twice.
        assert_eq!(evict_dead(&table, &cell, 0, 0, me), 0);
        assert_eq!((cell.sleepers(), cell.may_sleep_count()), (1, 1));
    }

    #[test]
    fn a_joiner_taking_a_dead_sleepers_entry_takes_it_off_the_wait_cell() {
        let (_w, entries, _r, table) = table_with_stale_head(1, dead_identity());
        let cell = cell_of_a_sleeper_killed_in(&entries[0]);
        assert_eq!(claim_entry(&table, &cell, 7), Ok(0));
        assert_eq!((cell.sleepers(), cell.may_sleep_count()), (0, 0));
        assert_eq!(entries[0].waits(), 0, "the joiner starts unmarked");
    }

    #[test]
    fn marks_found_on_a_free_entry_are_cleared_and_never_lower_a_count() {
        let entries: Box<[_]> = (0..1)
            .map(|_| CachePadded::new(ReaderEntry::new()))
            .collect();
        // SAFETY: `entries` outlives the table.
        let table = unsafe { Table::new(entries.as_ptr(), 1) };
        // Marks no holder set (a hostile peer's), on a free entry.
        entries[0].mark_waits(WAITS_ASLEEP | WAITS_MAY_SLEEP);
        let cell = WaitCell::new();
        cell.enter();
        assert_eq!(claim_entry(&table, &cell, 7), Ok(0));
        assert_eq!(entries[0].waits(), 0);
        assert_eq!(cell.sleepers(), 1, "a live sleeper's count is left alone");
        // And a count at zero stays there, whatever the marks say.
        let empty = WaitCell::new();
        forget_waits(&empty, WAITS_ASLEEP | WAITS_MAY_SLEEP);
        assert_eq!((empty.sleepers(), empty.may_sleep_count()), (0, 0));
    }
}
