//! The control block of a topic's segment: the ring's cursors, the two wait cells, and who is
//! attached. It follows the header (see `crate::layout`); all zero is its initial state, so a
//! freshly truncated segment needs no initialisation beyond the header.

use crate::ring::spsc::SpscCursors;
use crate::sync::{AtomicU32, Ordering};
use crate::wait::WaitCell;
use crossbeam_utils::CachePadded;

/// As it lies in shared memory. Its size is recorded in the header and checked on open.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct TopicControl {
    pub(crate) ring: SpscCursors,
    /// Readers sleep here for messages; the publisher notifies after each commit.
    pub(crate) data: CachePadded<WaitCell>,
    /// The publisher sleeps here for space; the subscriber notifies after each release.
    pub(crate) space: CachePadded<WaitCell>,
    pub(crate) peers: CachePadded<Peers>,
}

/// Who is attached.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct Peers {
    /// Pid of the publisher; 0 once it has closed the topic. Stored with Release after its last
    /// commit, so a subscriber that loads 0 (Acquire) and then finds the ring empty has seen
    /// every message.
    pub(crate) publisher: AtomicU32,
    /// Pid of the attached subscriber, 0 if none.
    pub(crate) subscriber: AtomicU32,
}

impl Peers {
    /// Take the subscriber's place for `pid`. A place held by a process that no longer exists
    /// is taken over (a pid check; kernel-held liveness comes with the crash-handling work).
    pub(crate) fn claim_subscriber(&self, pid: u32) -> Result<(), u32> {
        let mut current = 0;
        loop {
            match self.subscriber.compare_exchange(
                current,
                pid,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(holder) if holder == current => continue,
                Err(holder) => {
                    if process_alive(holder) {
                        return Err(holder);
                    }
                    current = holder;
                }
            }
        }
    }
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
