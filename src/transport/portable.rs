//! The portable ring transport (feature `portable`): the zero-copy ring of [`Shm`](super::Shm)
//! in named segments of the `shared_memory` crate, with blocking waits on `raw_sync` events
//! placed in each segment, for systems without futex or `shm_open` semantics.
//!
//! The transport only names the backend; the segments are made and opened by
//! `crate::segment` (`segment/portable.rs`), the events by `crate::wait` (`wait/events.rs`),
//! and the bus runs the same ring over them. It must never change what a native topic does.

use super::{RingPlace, Transport};
use crate::segment::Backend;

/// The ring transport of systems without futex or `shm_open` semantics (macOS, Windows, as
/// far as the rest of shmbus builds there): each topic is a `shared_memory` segment whose os
/// id is `/<prefix><topic>`, and a subscriber or publisher that sleeps waits on a `raw_sync`
/// event of its own in a trailer of the segment. The messages, the ring, the policies, the
/// header and type checks and the typed errors are those of [`Shm`](super::Shm).
///
/// ```
/// # #[cfg(feature = "portable")] {
/// let bus = shmbus::Bus::builder()
///     .prefix("doctest-portable.")
///     .transport(shmbus::transport::Portable::new())
///     .build()?;
/// let mut publisher = bus.publisher::<u64>("ticks").create()?;
/// let mut subscriber = bus.subscriber::<u64>("ticks").open()?;
/// publisher.send(7)?;
/// assert_eq!(*subscriber.try_recv()?.expect("sent"), 7);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// What it cannot give, and the native [`Shm`](super::Shm) does:
/// - **No owner or mode check on open**, and no group access: `shared_memory` opens by name and
///   keeps the descriptor, and creates every segment 0600. A segment of another user that this
///   user may open is taken as its own. Creating with
///   [`BusBuilder::group_access`](crate::BusBuilder::group_access) is refused
///   ([`CreateError::Unsupported`](crate::CreateError::Unsupported)).
/// - **No lock that dies with its process.** Whether a topic is stale (`shmbus clean`, a
///   publisher taking over a killed publisher's name) is told from the pids and start times
///   written in the segment alone; between that check and the removal another process may
///   have replaced the segment under the same name (the check is made afresh just before,
///   so the window is a few system calls). A segment whose creator died before its header
///   was ready is never removed (it has no age to judge it by): remove it by hand.
/// - **Truncation** is caught when touched (the SIGBUS defence is kept), not before: a
///   subscriber learns of a cut it has not touched yet only when it touches it.
/// - **Events without robust locks**: a process killed inside an event's few instructions
///   of critical section leaves that event's mutex locked, and the next wake-up of that slot
///   blocks its caller (see `wait/events.rs`; the slot's next owner re-initialises it). The
///   polling path (`try_send`, `try_recv`, spinning waits) never touches an event.
/// - **Timed waits on the wall clock** (`raw_sync` waits until a `CLOCK_REALTIME` time): a step
///   of the clock backwards lengthens a sleeping wait's timeout by the step.
/// - Names as short as the system wants them (31 bytes on macOS).
///
/// What it keeps: creation with `O_EXCL`, every page touched at creation (a full memory
/// filesystem is [`CreateError::NoSpace`](crate::CreateError::NoSpace), not a SIGBUS) and at
/// attach, the header's and the trailer's validation (every offset and size checked against
/// the mapping), the type check, dead publishers reported and dead subscribers evicted (from
/// the identities in the segment), and every typed error.
///
/// On Linux its segments are files of `/dev/shm` like the native ones (listed by
/// [`Bus::topics`](crate::Bus::topics)); a native bus refuses a portable segment as corrupt,
/// and the other way round (their sizes differ by the trailer).
#[derive(Clone, Debug, Default)]
pub struct Portable {
    _private: (),
}

impl Portable {
    /// The portable transport.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Transport for Portable {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn ring(&self) -> Option<RingPlace> {
        Some(RingPlace {
            // Where `shm_open` keeps names on Linux: to list the topics and report free room.
            dir: crate::segment::SHM_DIR.into(),
            persistent: false,
            backend: Backend::Portable,
        })
    }
}
