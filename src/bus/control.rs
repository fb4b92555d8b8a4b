//! The control block of a topic's segment: the two wait cells, how many publishers are
//! attached, and one lane per publisher: its writer's words, its owner and its table of
//! subscribers. It follows the header (see `crate::layout`); all zero is its initial state, so
//! a freshly truncated segment needs no initialisation beyond the header.
//!
//! ```text
//! | TopicControl | lane 0: LaneControl, entries 0..max_readers | lane 1: ... | ...
//! ```
//!
//! Subscriber `i` holds entry `i` of every lane (taken in lane 0's table, mirrored in the
//! others), so that each publisher sees every subscriber's position in its own ring.

use crate::ring::broadcast::{ReaderEntry, Table, WriterWords, EVICTING};
use crate::segment::{identity_alive, identity_pid};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::wait::WaitCell;
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
}

/// One entry of a reader table, as it lies in shared memory.
pub(crate) type ReaderSlot = CachePadded<ReaderEntry>;

fn lane_size(max_readers: u32) -> usize {
    size_of::<LaneControl>() + max_readers as usize * size_of::<ReaderSlot>()
}

/// Bytes of a control block with `lanes` lanes of `max_readers` entries each.
pub(crate) fn control_size(max_readers: u32, lanes: u32) -> u32 {
    (size_of::<TopicControl>() + lanes as usize * lane_size(max_readers)) as u32
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

    /// Count one publisher less. Returns whether it was the last.
    pub(crate) fn leave(&self) -> bool {
        self.publishers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            == Ok(1)
    }
}

/// Take a free entry of `table` for identity `me` (`segment::my_identity`), or one whose
/// holder is dead (its pid gone, or reused by a process that started later). Returns its
/// index, or the pids of the holders when every entry is held by a live process.
pub(crate) fn claim_entry(table: &Table, me: u64) -> Result<usize, Vec<u32>> {
    let entries = table.entries();
    for (i, e) in entries.iter().enumerate() {
        if e.try_take(me) {
            return Ok(i);
        }
    }
    let mut holders = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let mut holder = e.owner();
        // A publisher is evicting the dead holder: two stores away from a free entry.
        for _ in 0..EVICTION_PATIENCE {
            if holder != EVICTING {
                break;
            }
            std::thread::yield_now();
            holder = e.owner();
        }
        if holder == 0 {
            if e.try_take(me) {
                return Ok(i);
            }
            continue;
        }
        if holder != EVICTING && !identity_alive(holder) && e.take_over(holder, me) {
            return Ok(i);
        }
        holders.push(identity_pid(holder));
    }
    Err(holders)
}

/// How many times a claimant yields for an eviction under way before it counts the entry as
/// held. An entry stays [`EVICTING`] for good only if its evictor died between two stores.
const EVICTION_PATIENCE: u32 = 1000;

/// Evict the dead subscribers of `table` (a publisher's own lane) that hold it back: those
/// registered at a head at least `min_lag` behind `tail`. Returns how many it evicted. Makes
/// system calls (the liveness checks): for a publisher that found its ring full.
pub(crate) fn evict_dead(table: &Table, tail: u64, min_lag: u64) -> u64 {
    let mut evicted = 0;
    for e in table.entries() {
        let Some(head) = e.head() else { continue };
        let holder = e.owner();
        if tail.wrapping_sub(head) < min_lag || holder == 0 || holder == EVICTING {
            continue;
        }
        if !identity_alive(holder) && e.evict(holder) {
            evicted += 1;
        }
    }
    evicted
}
