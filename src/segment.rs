//! Named shared-memory segments: create, open, unlink, and the checks around each.
//!
//! A segment is a file in a directory of a memory filesystem: `/dev/shm` by default (what
//! `shm_open` uses on Linux), or any directory a [`Bus`](crate::Bus) is given (a tmpfs of a
//! container's own, say). Names are opened with `O_NOFOLLOW` below that directory.
//!
//! Creation is atomic and private: `open(O_CREAT | O_EXCL)` with mode 0600, then `fchmod`
//! (the umask may have narrowed or, with a group mode, the caller may want more), then the size
//! is set and every page reserved with `fallocate`, so that a full `/dev/shm` is a typed
//! [`SegmentError::NoSpace`] now rather than a SIGBUS at the first touch of a missing page.
//! The mapping is populated (`MAP_POPULATE`), so the first messages pay no page faults.
//!
//! Opening checks what the kernel says about the object before mapping it: owned by this
//! user, no permission bits beyond the owner's (and the group's, if asked), a size that can
//! hold a header and no more than the largest segment this build maps.
//!
//! With the cargo feature `portable`, a segment can instead be a named segment of the
//! `shared_memory` crate (`Backend::Portable`, `segment/portable.rs`), for systems without
//! the `shm_open` semantics the checks above rely on. It keeps what it can (the SIGBUS
//! defence, pages touched at creation and attach, the size bound) and says at each method
//! what it cannot (owner and mode checks, the lock that tells a live segment from a stale one).
//!
//! This layer knows nothing of headers or rings: it hands out a mapped region of bytes.

#[cfg(feature = "portable")]
mod portable;

use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{flock, FlockOperation, Mode};
use rustix::io::Errno;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// Longest topic name (bytes).
pub const MAX_NAME_LEN: usize = 128;
/// Longest segment name, prefix and topic together (bytes): the kernel's `NAME_MAX`.
pub const MAX_SEGMENT_NAME_LEN: usize = 255;
/// Where `shm_open` names live on Linux: the default directory of segments.
pub const SHM_DIR: &str = "/dev/shm";

/// Why a topic or prefix name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("name is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The name contains `/`.
    #[error("name contains '/'")]
    Slash,
    /// The name contains `..`.
    #[error("name contains '..'")]
    DotDot,
    /// The name starts with `.`.
    #[error("name starts with '.'")]
    LeadingDot,
    /// The bus prefix and the topic name together exceed [`MAX_SEGMENT_NAME_LEN`] bytes.
    #[error("prefix and name together are {len} bytes long, the limit is {MAX_SEGMENT_NAME_LEN}")]
    TooLongWithPrefix {
        /// Their length together.
        len: usize,
    },
    /// A character other than ASCII letters, digits, `.`, `_` and `-`.
    #[error("name contains {0:?}: only ASCII letters, digits, '.', '_' and '-' are allowed")]
    BadChar(char),
}

/// Check a topic name (or a bus prefix): 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits,
/// `.`, `_` and `-`; no `/`, no `..`, no leading `.`.
///
/// ```
/// use shmbus::segment::{validate_name, NameError};
/// assert!(validate_name("md.eurusd").is_ok());
/// assert_eq!(validate_name("a/b"), Err(NameError::Slash));
/// assert_eq!(validate_name("a..b"), Err(NameError::DotDot));
/// ```
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.contains('/') {
        return Err(NameError::Slash);
    }
    if name.contains("..") {
        return Err(NameError::DotDot);
    }
    if name.starts_with('.') {
        return Err(NameError::LeadingDot);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar(c));
    }
    Ok(())
}

/// Why a segment could not be created or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A segment of that name exists already.
    #[error("a segment named {0:?} exists already")]
    AlreadyExists(String),
    /// No segment of that name.
    #[error("no segment named {0:?}")]
    NotFound(String),
    /// The kernel refused access.
    #[error("permission denied for segment {0:?}")]
    PermissionDenied(String),
    /// The name is a symbolic link (planted by someone else, or a mistake): never followed.
    #[error("segment name {0:?} is a symbolic link; refusing to follow it")]
    Symlink(String),
    /// The segment belongs to another user.
    #[error("segment {name:?} is owned by uid {owner}, not by this user (uid {me})")]
    NotOwner {
        /// Segment name.
        name: String,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        me: u32,
    },
    /// The segment's mode allows more than it should.
    #[error("segment {name:?} has mode {mode:#o}, wider than {allowed:#o}")]
    BadMode {
        /// Segment name.
        name: String,
        /// Its permission bits.
        mode: u32,
        /// What this opener accepts.
        allowed: u32,
    },
    /// The shared-memory filesystem has no room for the segment.
    #[error(
        "no room in {} for a segment of {needed} bytes ({available} bytes available)",
        dir.display()
    )]
    NoSpace {
        /// The directory of segments.
        dir: PathBuf,
        /// Bytes the segment needs.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The segment's size is outside what a segment can be.
    #[error("segment {name:?} has a size of {size} bytes, outside {min}..={max}")]
    BadSize {
        /// Segment name.
        name: String,
        /// Its size.
        size: u64,
        /// The smallest acceptable.
        min: u64,
        /// The largest acceptable.
        max: u64,
    },
    /// The name is taken by another kind of file than the one expected (a regular file or a
    /// directory where a FIFO transport keeps its FIFO, say): never used, never removed.
    #[error("{name:?} is a {found}, not a {expected}; refusing to use it")]
    WrongType {
        /// The file's name.
        name: String,
        /// What was expected there.
        expected: &'static str,
        /// What is there.
        found: &'static str,
    },
    /// Another system call failed.
    #[error("{op} failed for segment {name:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Segment name.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Access a segment grants beyond its owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Access {
    /// Owner only: mode 0600.
    #[default]
    Owner,
    /// Owner and group: mode 0660.
    Group,
}

impl Access {
    fn mode(self) -> u32 {
        match self {
            Access::Owner => 0o600,
            Access::Group => 0o660,
        }
    }
}

/// How a ring transport's segments are made and found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Files in a directory of a memory filesystem (`/dev/shm`), made and checked with the
    /// system calls this module's top comment lists. The default.
    #[default]
    Native,
    /// Named segments of the `shared_memory` crate (feature `portable`): see
    /// [`Segment::create_portable`] for what they keep and what they lose.
    #[cfg(feature = "portable")]
    Portable,
}

/// A mapped shared-memory segment. Unmapped on drop; the name stays until [`Segment::unlink`].
#[derive(Debug)]
pub struct Segment {
    // Declared first: unregistered before the mapping is unmapped.
    guard: Option<crate::sigbus::Registration>,
    backing: Backing,
    name: String,
    path: PathBuf,
}

/// What keeps a segment mapped.
#[derive(Debug)]
enum Backing {
    /// A file of a memory filesystem, mapped; the file is held open (and `flock`ed) while
    /// mapped.
    Native { map: MmapRaw, file: File },
    /// A `shared_memory` segment (its descriptor, if any, is the crate's).
    #[cfg(feature = "portable")]
    Portable(portable::Mapping),
}

impl Segment {
    /// Create the segment `name` (a file name) in directory `dir` (normally [`SHM_DIR`]) of
    /// `size` bytes, zero-filled, with every page reserved and mapped.
    ///
    /// # Errors
    /// [`SegmentError::AlreadyExists`] if the name is taken, [`SegmentError::NoSpace`] if the
    /// filesystem cannot hold it, [`SegmentError::Io`] for other failures. On any error after
    /// the name was created, it is unlinked again.
    pub fn create(dir: &Path, name: &str, size: u64, access: Access) -> Result<Self, SegmentError> {
        let no_space = |available| SegmentError::NoSpace {
            dir: dir.into(),
            needed: size,
            available,
        };
        if let Some(available) = free_space(dir).filter(|&a| a < size) {
            return Err(no_space(available));
        }
        let path = dir.join(name);
        // `shm_open(O_CREAT | O_EXCL)` is this `open` of `/dev/shm/<name>` on Linux. O_EXCL
        // fails on any existing name, a symbolic link included.
        let flags = rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC;
        let fd =
            rustix::fs::open(&path, flags, Mode::from_raw_mode(0o600)).map_err(|e| match e {
                Errno::EXIST => SegmentError::AlreadyExists(name.into()),
                Errno::ACCESS | Errno::PERM => SegmentError::PermissionDenied(name.into()),
                e => io_error("open", name, e),
            })?;
        let file = File::from(fd);
        let finish = || -> Result<Self, SegmentError> {
            // Shared for as long as this process has the segment open: the kernel drops it when
            // the process dies, so a segment that nobody holds a lock on has no live process
            // (see `unlink_locked`). Taken before anything else, so that an unfinished segment
            // is held too.
            flock(&file, FlockOperation::LockShared).map_err(|e| io_error("flock", name, e))?;
            // The umask may have removed bits we want, and we never want more than asked.
            rustix::fs::fchmod(&file, Mode::from_raw_mode(access.mode()))
                .map_err(|e| io_error("fchmod", name, e))?;
            rustix::fs::ftruncate(&file, size).map_err(|e| io_error("ftruncate", name, e))?;
            // Reserve every page now: tmpfs allocates lazily, and a page that cannot be
            // allocated at first touch kills the process with SIGBUS.
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).map_err(
                |e| match e {
                    Errno::NOSPC => no_space(free_space(dir).unwrap_or(0)),
                    e => io_error("fallocate", name, e),
                },
            )?;
            Self::map(
                file.try_clone().map_err(|e| io("dup", name, e))?,
                name,
                path.clone(),
                size,
            )
        };
        finish().inspect_err(|_| {
            let _ = rustix::fs::unlink(&path);
        })
    }

    /// Open the existing segment `name` of directory `dir` for reading and writing, after
    /// checking its owner, its
    /// mode (nothing beyond `access`) and its size (`min_size..=max_size`).
    ///
    /// # Errors
    /// [`SegmentError::NotFound`], [`SegmentError::NotOwner`], [`SegmentError::BadMode`],
    /// [`SegmentError::BadSize`], [`SegmentError::PermissionDenied`], [`SegmentError::Io`].
    pub fn open(
        dir: &Path,
        name: &str,
        access: Access,
        min_size: u64,
        max_size: u64,
    ) -> Result<Self, SegmentError> {
        // What `shm_open` does on Linux, with O_NOFOLLOW spelled out (rustix's `shm::open`
        // follows a link): a link planted at the name is refused, not followed into whatever
        // file it points at.
        let flags =
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
        let path = dir.join(name);
        let fd = rustix::fs::open(&path, flags, Mode::empty()).map_err(|e| match e {
            Errno::NOENT => SegmentError::NotFound(name.into()),
            Errno::LOOP => SegmentError::Symlink(name.into()),
            Errno::ACCESS | Errno::PERM => SegmentError::PermissionDenied(name.into()),
            e => io_error("open", name, e),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_error("fstat", name, e))?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            return Err(SegmentError::NotOwner {
                name: name.into(),
                owner: st.st_uid,
                me,
            });
        }
        let mode = st.st_mode & 0o7777;
        if mode & !access.mode() != 0 {
            return Err(SegmentError::BadMode {
                name: name.into(),
                mode,
                allowed: access.mode(),
            });
        }
        let size = st.st_size as u64;
        // Held while mapped, as by the creator (see `create`).
        flock(&fd, FlockOperation::LockShared).map_err(|e| io_error("flock", name, e))?;
        if !(min_size..=max_size).contains(&size) {
            return Err(SegmentError::BadSize {
                name: name.into(),
                size,
                min: min_size,
                max: max_size,
            });
        }
        Self::map(File::from(fd), name, path, size)
    }

    fn map(file: File, name: &str, path: PathBuf, size: u64) -> Result<Self, SegmentError> {
        let len = usize::try_from(size).map_err(|_| SegmentError::BadSize {
            name: name.into(),
            size,
            min: 0,
            max: usize::MAX as u64,
        })?;
        let map = MmapOptions::new()
            .len(len)
            .populate()
            .map_raw(&file)
            .map_err(|e| io("mmap", name, e))?;
        // Before anyone reads it: from now on a truncation of the file is caught.
        let guard = crate::sigbus::register(map.as_mut_ptr(), map.len());
        Ok(Self {
            guard,
            backing: Backing::Native { map, file },
            name: name.into(),
            path,
        })
    }

    /// The native file, `None` for a portable segment.
    fn file(&self) -> Option<&File> {
        match &self.backing {
            Backing::Native { file, .. } => Some(file),
            #[cfg(feature = "portable")]
            Backing::Portable(_) => None,
        }
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Start of the mapping (page-aligned).
    pub fn base(&self) -> NonNull<u8> {
        let ptr = match &self.backing {
            Backing::Native { map, .. } => map.as_mut_ptr(),
            #[cfg(feature = "portable")]
            Backing::Portable(m) => m.as_ptr(),
        };
        NonNull::new(ptr).expect("a mapping is never at address 0")
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> u64 {
        (match &self.backing {
            Backing::Native { map, .. } => map.len(),
            #[cfg(feature = "portable")]
            Backing::Portable(m) => m.len(),
        }) as u64
    }

    /// Whether the mapping is empty (never, for a segment that opened).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How the segment was made.
    pub fn backend(&self) -> Backend {
        match &self.backing {
            Backing::Native { .. } => Backend::Native,
            #[cfg(feature = "portable")]
            Backing::Portable(_) => Backend::Portable,
        }
    }

    /// Remove this segment's name if no other process has it open, and the name still names
    /// it. Every process that creates or opens a segment holds a shared `flock` on it while it
    /// has it (the kernel drops it when the process dies); this takes an exclusive one without
    /// waiting, which succeeds only if nobody else holds any: no live process is using the
    /// segment, and no other cleaner is at it. Two processes that both found it stale cannot
    /// remove it twice, nor the second remove the segment that the first created under the
    /// same name after it. `still_wanted` is asked again under the lock. Returns whether the
    /// name was removed.
    ///
    /// A portable segment has no such lock: `still_wanted` alone decides, and the name goes
    /// when this handle is dropped (see [`Segment::unlink`]). Between its answer and the
    /// removal another process may have replaced the segment under the same name; the caller
    /// makes that window small by checking the name afresh in `still_wanted`.
    ///
    /// # Errors
    /// [`SegmentError::Io`] if a check fails.
    pub fn unlink_locked(&self, still_wanted: impl FnOnce() -> bool) -> Result<bool, SegmentError> {
        use rustix::fs::fstat;
        let Some(file) = self.file() else {
            if !still_wanted() {
                return Ok(false);
            }
            return self.unlink().map(|()| true);
        };
        if flock(file, FlockOperation::NonBlockingLockExclusive).is_err() {
            // Someone else has it: alive, or cleaning it. (Converting our shared lock may have
            // dropped it: take it back.)
            let _ = flock(file, FlockOperation::LockShared);
            return Ok(false);
        }
        let result = (|| {
            let st = fstat(file).map_err(|e| io_error("fstat", &self.name, e))?;
            // Already unlinked: the name, if it exists, is someone else's new segment.
            if st.st_nlink == 0 || !still_wanted() {
                return Ok(false);
            }
            match self.unlink() {
                Ok(()) | Err(SegmentError::NotFound(_)) => Ok(true),
                Err(e) => Err(e),
            }
        })();
        let _ = flock(file, FlockOperation::LockShared);
        result
    }

    /// Whether no other process holds the segment (see [`Segment::unlink_locked`]). Always
    /// `true` for a portable segment, which has no lock to ask: the caller's liveness checks
    /// of the processes named in the segment decide alone.
    pub fn is_unheld(&self) -> bool {
        let Some(file) = self.file() else {
            return true;
        };
        let unheld = flock(file, FlockOperation::NonBlockingLockExclusive).is_ok();
        let _ = flock(file, FlockOperation::LockShared);
        unheld
    }

    /// Whether the file was found truncated under this mapping: an access past its new end
    /// was caught (SIGBUS), and from that page on the mapping now holds private zeros (see
    /// `src/sigbus.rs`). One relaxed load; `false` also where the defence could not be set
    /// up (its table of 1024 mappings full).
    #[inline]
    pub fn truncated(&self) -> bool {
        self.truncation().is_set()
    }

    /// Whether the file is now shorter than the mapping (a system call, `fstat`): a
    /// truncation that this process has not touched the missing part of yet, so that
    /// [`Segment::truncated`] cannot know of it. For slow paths (a topic found closed).
    /// Always `false` for a portable segment: `shared_memory` keeps its descriptor to itself,
    /// so only a truncation that this process touched is known ([`Segment::truncated`]).
    pub fn shrunk(&self) -> bool {
        self.file().is_some_and(|file| {
            rustix::fs::fstat(file).is_ok_and(|st| (st.st_size as u64) < self.len())
        })
    }

    /// The flag [`Segment::truncated`] reads, for a reader that keeps it beside the mapping.
    pub(crate) fn truncation(&self) -> crate::sigbus::Flag {
        self.guard
            .as_ref()
            .map_or(crate::sigbus::Flag::NONE, |g| g.flag())
    }

    /// Remove the segment's name, whatever it names now (see [`Segment::unlink_locked`] for
    /// the careful form); mappings stay valid until unmapped.
    ///
    /// A portable segment's name is removed when this handle is dropped, by `shared_memory`
    /// (whose owner removes the name as it unmaps): every caller drops the segment right after.
    ///
    /// # Errors
    /// [`SegmentError::NotFound`] if the name is gone.
    pub fn unlink(&self) -> Result<(), SegmentError> {
        let name = self.name.as_str();
        #[cfg(feature = "portable")]
        if let Backing::Portable(m) = &self.backing {
            m.unlink_on_drop();
            return Ok(());
        }
        rustix::fs::unlink(&self.path).map_err(|e| match e {
            Errno::NOENT => SegmentError::NotFound(name.into()),
            Errno::ACCESS | Errno::PERM => SegmentError::PermissionDenied(name.into()),
            e => io_error("unlink", name, e),
        })
    }

    /// How long ago the segment was last changed (its `ctime`): an unfinished segment
    /// (`NotReady`) is judged only once it is old enough that its creator cannot be merely
    /// slow (see `create`'s lock, taken a few system calls after the name appears).
    ///
    /// `None` for a portable segment (no descriptor to ask): an unfinished portable segment is
    /// never judged stale.
    pub fn age(&self) -> Option<std::time::Duration> {
        let st = rustix::fs::fstat(self.file()?).ok()?;
        let changed = std::time::UNIX_EPOCH
            + std::time::Duration::new(st.st_ctime as u64, st.st_ctime_nsec as u32);
        std::time::SystemTime::now().duration_since(changed).ok()
    }
}

/// Bytes available to this user in the filesystem of `dir`, if it can be told.
pub fn free_space(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

fn io_error(op: &'static str, name: &str, e: Errno) -> SegmentError {
    io(op, name, e.into())
}

fn io(op: &'static str, name: &str, source: std::io::Error) -> SegmentError {
    SegmentError::Io {
        op,
        name: name.into(),
        source,
    }
}

/// Who a process is, for the tables in a segment: its pid in the low 32 bits and the low 32
/// bits of its start time (clock ticks since boot, `/proc/<pid>/stat` field 22) in the high
/// ones, so that a pid the kernel gave to a new process after the old one died does not read
/// as the old one. Never 0 and never `u64::MAX` for a real process.
pub fn identity_of(pid: u32, start: u64) -> u64 {
    (start & 0xffff_ffff) << 32 | pid as u64
}

/// The largest pid Linux hands out (`PID_MAX_LIMIT` on 64-bit systems).
const PID_MAX_LIMIT: u32 = 1 << 22;

/// This process's identity (see [`identity_of`]); computed once.
pub fn my_identity() -> u64 {
    static ME: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ME.get_or_init(|| {
        let pid = std::process::id();
        identity_of(pid, process_start(pid).unwrap_or(0))
    })
}

/// The pid an identity names.
pub fn identity_pid(identity: u64) -> u32 {
    identity as u32
}

/// Whether the process an identity names is alive: its pid exists and started when the
/// identity says. When that cannot be told (no `/proc`), a pid that exists counts as alive:
/// a live peer is never called dead, at worst a dead one whose pid was reused is called alive.
/// Makes system calls: for slow paths only.
pub fn identity_alive(identity: u64) -> bool {
    let pid = identity_pid(identity);
    // Read from shared memory: anything. Linux pids are 1..=2^22 (`PID_MAX_LIMIT`); a negative
    // one would name a process group.
    if !(1..=PID_MAX_LIMIT).contains(&pid) {
        return false;
    }
    let Some(raw) = rustix::process::Pid::from_raw(pid as i32) else {
        return false;
    };
    // ESRCH: no such process. EPERM: it exists (another user's).
    if matches!(
        rustix::process::test_kill_process(raw),
        Err(rustix::io::Errno::SRCH)
    ) {
        return false;
    }
    match process_start(pid) {
        Some(start) => identity_of(pid, start) == identity,
        None => true,
    }
}

/// A process's start time, in clock ticks since boot, from `/proc/<pid>/stat`.
fn process_start(pid: u32) -> Option<u64> {
    start_time_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses: the fields after it start after the last `)`, and the start
/// time is the 20th of them.
fn start_time_of(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = my_identity();
        assert_eq!(identity_pid(me), std::process::id());
        assert!(identity_alive(me));
        // The same pid with another start time: a process that died and whose pid was reused.
        let start = me >> 32;
        let reused = identity_of(std::process::id(), start.wrapping_add(1));
        assert!(!identity_alive(reused));
        // A pid that names no process (above the kernel's pid_max).
        assert!(!identity_alive(identity_of(0x7fff_fff0, 0)));
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_confuse_the_start_time() {
        let fields_3_to_21 = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18";
        let stat = format!("42 (a) b (c)) {fields_3_to_21} 987654 19 20\n");
        assert_eq!(start_time_of(&stat), Some(987654));
        assert_eq!(start_time_of("42 (truncated"), None);
        assert!(process_start(std::process::id()).is_some());
    }
}
