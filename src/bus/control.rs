//! The control block of a topic's segment: the writer's words, the two wait cells, who
//! publishes, and the table of subscribers. It follows the header (see `crate::layout`); all zero is its initial state, so a
//! freshly truncated segment needs no initialisation beyond the header.

use crate::ring::broadcast::{ReaderEntry, Table, WriterWords};
use crate::sync::AtomicU32;
use crate::wait::WaitCell;
use crossbeam_utils::CachePadded;

/// As it lies in shared memory, followed by the reader table (`max_readers` entries of
/// [`ReaderSlot`]). Its size, with the table's, is recorded in the header and checked on open.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct TopicControl {
    pub(crate) writer: CachePadded<WriterWords>,
    /// Readers sleep here for messages; the publisher notifies after each commit.
    pub(crate) data: CachePadded<WaitCell>,
    /// The publisher sleeps here for space; a subscriber notifies after each release.
    pub(crate) space: CachePadded<WaitCell>,
    pub(crate) peers: CachePadded<Peers>,
}

/// One entry of the reader table, as it lies in shared memory.
pub(crate) type ReaderSlot = CachePadded<ReaderEntry>;

/// Bytes of a control block with a table of `max_readers` entries.
pub(crate) fn control_size(max_readers: u32) -> u32 {
    (size_of::<TopicControl>() + max_readers as usize * size_of::<ReaderSlot>()) as u32
}

impl TopicControl {
    /// The reader table behind the control block.
    ///
    /// # Safety
    /// `self` must lie in a mapping that holds `control_size(max_readers)` bytes from its
    /// start, for as long as the table is used.
    pub(crate) unsafe fn table(&self, max_readers: u32) -> Table {
        // SAFETY: the caller's contract: the entries follow the control block in the mapping;
        // `TopicControl`'s size is a multiple of the entries' alignment (both `CachePadded`).
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
    /// Pid of the publisher; 0 once it has closed the topic. Stored with Release after its last
    /// commit, so a subscriber that loads 0 (Acquire) and then finds the ring empty has seen
    /// every message.
    pub(crate) publisher: AtomicU32,
}

/// Take a free entry of `table` for `pid`, or one whose holder is dead (a pid check;
/// kernel-held liveness comes with the crash-handling work). Returns its index, or the pids of
/// the holders when every entry is held by a live process.
pub(crate) fn claim_entry(table: &Table, pid: u32) -> Result<usize, Vec<u32>> {
    let entries = table.entries();
    for (i, e) in entries.iter().enumerate() {
        if e.try_take(pid) {
            return Ok(i);
        }
    }
    let mut holders = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let holder = e.owner();
        if holder == 0 {
            if e.try_take(pid) {
                return Ok(i);
            }
            continue;
        }
        if !process_alive(holder) && e.take_over(holder, pid) {
            return Ok(i);
        }
        holders.push(holder);
    }
    Err(holders)
}

fn process_alive(pid: u32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    // ESRCH: no such process. EPERM: it exists (another user's).
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}
