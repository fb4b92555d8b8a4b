//! What a ring topic does differently on each segment backend (`crate::segment::Backend`):
//! how its segment is sized, made, opened and checked beyond the header, and which `Park` its
//! parties sleep and wake through. The native backend is the files and futexes of the rest of
//! the bus; the portable one (feature `portable`) adds a trailer of `raw_sync` events after
//! the native layout (`crate::wait::events`).
//!
//! Everything here runs when a party creates, opens or attaches; nothing here may run on the
//! publish or receive path.

use super::Bus;
use crate::layout::{Geometry, HeaderValues, LayoutError, TopicShape};
use crate::segment::{Backend, Segment, SegmentError};
#[cfg(feature = "portable")]
use crate::wait::events::{CellKind, Trailer};
use crate::wait::Parker;

/// Which party attaches, and so which slot of each wait cell is its own.
#[derive(Clone, Copy, Debug)]
// Only the portable backend has slots to tell apart.
#[cfg_attr(not(feature = "portable"), allow(dead_code))]
pub(super) enum Party {
    /// A publisher of lane `lane`: it sleeps on the space cell.
    Publisher { lane: u32 },
    /// A subscriber holding entry `entry` of the table: it sleeps on the data cell.
    Subscriber { entry: u32 },
}

/// The two parks of a party: the data cell's (readers sleep, publishers wake) and the space
/// cell's (publishers sleep, readers wake).
#[derive(Debug)]
pub(super) struct Parks {
    pub(super) data: Parker,
    pub(super) space: Parker,
}

/// The portable trailer of a segment of `geometry` and `shape`.
#[cfg(feature = "portable")]
fn trailer(geometry: &Geometry, shape: &TopicShape) -> Option<Trailer> {
    Trailer::for_ring(geometry.total_size, shape.max_readers, geometry.lanes)
}

/// The size of a new segment of `geometry` and `shape` on `bus`'s backend; `None` if it does
/// not fit in a `u64` (only a portable segment, whose trailer comes on top, can say that).
#[cfg_attr(not(feature = "portable"), allow(unused_variables))]
pub(super) fn segment_size(bus: &Bus, geometry: &Geometry, shape: &TopicShape) -> Option<u64> {
    match bus.backend {
        Backend::Native => Some(geometry.total_size),
        #[cfg(feature = "portable")]
        Backend::Portable => trailer(geometry, shape).map(|t| t.segment_size()),
    }
}

/// Create segment `name` of `size` bytes on `bus`'s backend.
pub(super) fn create_segment(bus: &Bus, name: &str, size: u64) -> Result<Segment, SegmentError> {
    match bus.backend {
        Backend::Native => Segment::create(&bus.dir, name, size, bus.access),
        #[cfg(feature = "portable")]
        Backend::Portable => Segment::create_portable(&bus.dir, name, size),
    }
}

/// Open segment `name` on `bus`'s backend, if it is at most `max_size` bytes.
pub(super) fn open_segment(bus: &Bus, name: &str, max_size: u64) -> Result<Segment, SegmentError> {
    match bus.backend {
        Backend::Native => Segment::open(&bus.dir, name, bus.access, 0, max_size),
        #[cfg(feature = "portable")]
        Backend::Portable => Segment::open_portable(&bus.dir, name, max_size),
    }
}

/// The length the header's geometry is validated against: the whole mapping for a native
/// segment; for a portable one, the ring part the header claims, which [`validate_rest`] then
/// checks the trailer against, if it is a length a ring part can have (else the whole
/// mapping, which the header then disagrees with: a not-ready header, all zeros, reads as not
/// ready, a hostile one as inconsistent).
#[cfg_attr(not(feature = "portable"), allow(unused_variables))]
pub(super) fn ring_len(segment: &Segment, header: &HeaderValues) -> u64 {
    match segment.backend() {
        Backend::Native => segment.len(),
        #[cfg(feature = "portable")]
        Backend::Portable => {
            let claimed = header.total_size;
            if (crate::layout::HEADER_SIZE as u64..=segment.len()).contains(&claimed) {
                claimed
            } else {
                segment.len()
            }
        }
    }
}

/// Check what follows the validated ring part of an opened segment (a portable segment's
/// trailer; nothing for a native one).
#[cfg_attr(not(feature = "portable"), allow(unused_variables))]
pub(super) fn validate_rest(
    segment: &Segment,
    geometry: &Geometry,
    shape: &TopicShape,
) -> Result<(), LayoutError> {
    match segment.backend() {
        Backend::Native => Ok(()),
        #[cfg(feature = "portable")]
        Backend::Portable => {
            // SAFETY: the mapping is page-aligned and `segment.len()` bytes long, and lives
            // through this call; the reads are atomic.
            unsafe {
                Trailer::validate(
                    segment.base().as_ptr(),
                    segment.len(),
                    geometry.total_size,
                    shape.max_readers,
                    geometry.lanes,
                )
            }
            .map(drop)
        }
    }
}

/// Initialise what a new segment needs beyond the zeroed ring part, before its header is
/// marked ready: a portable segment's trailer of events.
///
/// # Errors
/// What the event library reported, as an I/O error of the segment.
#[cfg_attr(not(feature = "portable"), allow(unused_variables))]
pub(super) fn init_segment(
    segment: &Segment,
    geometry: &Geometry,
    shape: &TopicShape,
) -> Result<(), SegmentError> {
    match segment.backend() {
        Backend::Native => Ok(()),
        #[cfg(feature = "portable")]
        Backend::Portable => {
            let t = trailer(geometry, shape).expect("the segment was sized with its trailer");
            // SAFETY: the segment was just created (`O_EXCL`), zero-filled, `segment_size()`
            // bytes long, and its header is not ready yet: nobody else uses it.
            unsafe { t.init(segment.base().as_ptr()) }.map_err(|e| SegmentError::Io {
                op: "initialise the events of",
                name: segment.name().into(),
                source: std::io::Error::other(e),
            })
        }
    }
}

/// The parks of `party` on the validated (or just created) `segment`. The segment must stay
/// mapped while they live: their owner drops them before it.
pub(super) fn parks(
    segment: &Segment,
    geometry: &Geometry,
    shape: &TopicShape,
    party: Party,
) -> Parks {
    match segment.backend() {
        Backend::Native => {
            let _ = (geometry, shape, party); // the futex needs no slot
            Parks {
                data: Parker::Futex,
                space: Parker::Futex,
            }
        }
        #[cfg(feature = "portable")]
        Backend::Portable => {
            let t = trailer(geometry, shape).expect("a validated segment has its trailer");
            let base = segment.base().as_ptr();
            let (reader, writer) = match party {
                Party::Publisher { lane } => (None, Some(lane)),
                Party::Subscriber { entry } => (Some(entry), None),
            };
            // SAFETY: `t` was validated against (or computed for) this mapping, which the
            // caller keeps while the parks live; `entry` is this subscriber's table entry and
            // `lane` this publisher's lane, each held by one live party at a time.
            unsafe {
                Parks {
                    data: Parker::Events(t.attach(base, CellKind::Data, reader)),
                    space: Parker::Events(t.attach(base, CellKind::Space, writer)),
                }
            }
        }
    }
}
