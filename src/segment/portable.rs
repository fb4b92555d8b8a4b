//! Portable segments: named shared memory through the `shared_memory` crate, for systems
//! without the `shm_open` semantics the native backend relies on (feature `portable`).
//!
//! A segment named `<prefix><topic>` is the `shared_memory` mapping whose os id is
//! `/<prefix><topic>` (on Linux, the same `/dev/shm` file a native segment of that name would
//! be; the two backends' segments tell each other apart by their size, see
//! `crate::wait::events`). What is kept from the native backend: creation is exclusive (the
//! crate's `O_EXCL`, mode 0600); every page is touched at creation under the SIGBUS defence
//! (`crate::sigbus`), so that a full memory filesystem is a typed [`SegmentError::NoSpace`]
//! now rather than a SIGBUS later, and at attach, so that the first messages pay no page
//! faults; a truncation under the mapping is caught as for a native segment; the size is
//! bounded before the bus trusts the mapping.
//!
//! What is lost, because the crate keeps the descriptor to itself and opens by name only:
//! no owner or mode check on open (any segment this user may open is taken as this user's,
//! including one another user made readable to it); no group mode (the crate creates 0600);
//! no `flock`, hence no way for `shmbus clean` or a returning publisher to tell a segment
//! that a live process holds from a stale one but the identities written in the segment
//! (pid and start time, see `crate::bus`), and no age for an unfinished one; no `fstat`
//! after open (a truncation is known only once touched); the size is checked after the
//! crate mapped the object (an absurd size costs address space, not memory: nothing is
//! touched before the check). Names are bounded by the system's (31 bytes on macOS).
//!
//! This module must never touch a page outside the SIGBUS defence (where the defence could
//! not be set up, it touches none: a missing page would then kill the process), nor remove a
//! name it was not asked to.

use super::{free_space, Backing, Segment, SegmentError};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use rustix::io::Errno;
use shared_memory::{Shmem, ShmemConf, ShmemError};
use std::path::Path;

/// A `shared_memory` mapping, and whether to remove its name when it is unmapped.
pub(super) struct Mapping {
    shmem: Shmem,
    /// 1 once [`Segment::unlink`] was called: the name goes with the mapping.
    unlink: AtomicU32,
}

// SAFETY: a `Shmem` is a mapping's address and length, an os id and a descriptor: nothing tied
// to the thread that made it. Through `&self` only its address and length are read (and
// `unlink`, an atomic, is written), so sharing it between threads is sound too.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("os_id", &self.shmem.get_os_id())
            .field("len", &self.shmem.len())
            .finish()
    }
}

impl Mapping {
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.shmem.as_ptr()
    }

    pub(super) fn len(&self) -> usize {
        self.shmem.len()
    }

    pub(super) fn unlink_on_drop(&self) {
        self.unlink.store(1, Ordering::Relaxed);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // `shared_memory` removes the name of a mapping whose owner drops it, after unmapping.
        let owner = self.unlink.load(Ordering::Relaxed) == 1;
        self.shmem.set_owner(owner);
    }
}

/// The os id of segment `name`.
fn os_id(name: &str) -> String {
    format!("/{name}")
}

/// A system error number carried by a `shared_memory` error.
fn errno(code: u32) -> Errno {
    Errno::from_raw_os_error(code as i32)
}

fn io(op: &'static str, name: &str, code: u32) -> SegmentError {
    super::io_error(op, name, errno(code))
}

impl Segment {
    /// Create the portable segment `name` of `size` bytes, zero-filled, every page touched
    /// (see the module comment of `segment/portable.rs` for what a portable segment keeps and
    /// loses). `dir` is where the system keeps such names, if it has a directory for them
    /// (`/dev/shm` on Linux): only to report the room left when there is none.
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`] if the name is taken, [`SegmentError::NoSpace`] if the
    /// system cannot hold it, [`SegmentError::PermissionDenied`], [`SegmentError::BadSize`]
    /// for a size this process cannot map, [`SegmentError::Io`] for other failures. On any
    /// error after the name was created, it is removed again.
    pub fn create_portable(dir: &Path, name: &str, size: u64) -> Result<Self, SegmentError> {
        let no_space = |available| SegmentError::NoSpace {
            dir: dir.into(),
            needed: size,
            available,
        };
        if let Some(available) = free_space(dir).filter(|&a| a < size) {
            return Err(no_space(available));
        }
        let len = map_len(name, size)?;
        let shmem = ShmemConf::new()
            .os_id(os_id(name))
            .size(len)
            .create()
            .map_err(|e| match e {
                ShmemError::MappingIdExists => SegmentError::AlreadyExists(name.into()),
                ShmemError::MapCreateFailed(code) | ShmemError::UnknownOsError(code)
                    if matches!(errno(code), Errno::ACCESS | Errno::PERM) =>
                {
                    SegmentError::PermissionDenied(name.into())
                }
                ShmemError::MapCreateFailed(code) => io("shm_open or mmap", name, code),
                ShmemError::UnknownOsError(code) => io("ftruncate", name, code),
                e => SegmentError::Io {
                    op: "create",
                    name: name.into(),
                    source: std::io::Error::other(e.to_string()),
                },
            })?;
        // Until the pages are reserved, the crate owns the name: dropping `mapping` on an
        // error below removes it (`unlink` is 1).
        let mapping = Mapping {
            shmem,
            unlink: AtomicU32::new(1),
        };
        let segment = Self::guarded(dir, name, mapping);
        if !segment.touch_pages(true) {
            return Err(no_space(free_space(dir).unwrap_or(0)));
        }
        if let Backing::Portable(m) = &segment.backing {
            m.unlink.store(0, Ordering::Relaxed);
        }
        Ok(segment)
    }

    /// Open the existing portable segment `name`, if its size is at most `max_size`, and
    /// touch every page of it. No owner or mode check: see the module comment of
    /// `segment/portable.rs`.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`]; [`SegmentError::BadSize`] with a size of 0 for a segment
    /// whose creator has not yet set its size, or for one larger than `max_size`;
    /// [`SegmentError::PermissionDenied`], [`SegmentError::Symlink`], [`SegmentError::Io`].
    pub fn open_portable(dir: &Path, name: &str, max_size: u64) -> Result<Self, SegmentError> {
        let bad_size = |size| SegmentError::BadSize {
            name: name.into(),
            size,
            min: 1,
            max: max_size,
        };
        let shmem = ShmemConf::new()
            .os_id(os_id(name))
            .open()
            .map_err(|e| match e {
                ShmemError::MapOpenFailed(code) => match errno(code) {
                    Errno::NOENT => SegmentError::NotFound(name.into()),
                    Errno::ACCESS | Errno::PERM => SegmentError::PermissionDenied(name.into()),
                    Errno::LOOP => SegmentError::Symlink(name.into()),
                    // `mmap` of the 0 bytes of a segment whose creator has not sized it yet.
                    Errno::INVAL => bad_size(0),
                    _ => io("shm_open or mmap", name, code),
                },
                e => SegmentError::Io {
                    op: "open",
                    name: name.into(),
                    source: std::io::Error::other(e.to_string()),
                },
            })?;
        let mapping = Mapping {
            shmem,
            unlink: AtomicU32::new(0),
        };
        // Checked before a byte of it is read: the crate mapped whatever size the object had.
        if mapping.len() as u64 > max_size || mapping.len() == 0 {
            return Err(bad_size(mapping.len() as u64));
        }
        let segment = Self::guarded(dir, name, mapping);
        // A truncation found while touching is reported by the bus as for any other
        // (`Segment::truncated`).
        segment.touch_pages(false);
        Ok(segment)
    }

    /// `mapping` as a segment, registered with the SIGBUS defence.
    fn guarded(dir: &Path, name: &str, mapping: Mapping) -> Self {
        let guard = crate::sigbus::register(mapping.as_ptr(), mapping.len());
        Self {
            guard,
            backing: Backing::Portable(mapping),
            name: name.into(),
            path: dir.join(name),
        }
    }

    /// Touch every page of the mapping (`write`: with an atomic add of 0, which makes the
    /// system allocate the page), under the SIGBUS defence. Returns whether every page was
    /// there; touches nothing if the defence could not be set up (a missing page would then
    /// kill the process), and says so by returning `true` (nothing was found missing).
    fn touch_pages(&self, write: bool) -> bool {
        if self.guard.is_none() {
            return true;
        }
        let base = self.base().as_ptr();
        let mut offset = 0usize;
        while (offset as u64) < self.len() {
            // SAFETY: `offset` is inside the mapping and page-aligned (the mapping is), so 8
            // aligned bytes are there; any bytes are a valid atomic, and atomics may be
            // accessed while other processes write them. A page missing from the object
            // faults, and the registered defence maps zeros over it (see `crate::sigbus`).
            let word = unsafe { &*(base.add(offset) as *const AtomicU64) };
            if write {
                word.fetch_add(0, Ordering::Relaxed);
            } else {
                word.load(Ordering::Relaxed);
            }
            offset += TOUCH_STRIDE;
        }
        !self.truncated()
    }
}

/// Distance between two touches: the smallest page size of the systems this runs on (a larger
/// page is touched several times, which costs nothing more than once).
const TOUCH_STRIDE: usize = 4096;

/// `size` as a length this process can map.
fn map_len(name: &str, size: u64) -> Result<usize, SegmentError> {
    usize::try_from(size)
        .ok()
        .filter(|&l| l > 0)
        .ok_or(SegmentError::BadSize {
            name: name.into(),
            size,
            min: 1,
            max: usize::MAX as u64,
        })
}
