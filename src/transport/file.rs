//! The plain-file transport: an append-only spool, `<dir>/<prefix><topic>.spool`, that every
//! subscriber reads and tails. The simplest durable transport: what was published stays in
//! the file after the publisher leaves, and a subscriber that comes later reads it from where
//! it asks (the end, the last N messages, or the start). The same spool format is the journal
//! of [`crate::journal`].
//!
//! **The file** holds frames exactly as every copying transport sends them
//! ([`super::frame`]): a hello, data frames, and a close when the publisher leaves
//! cleanly. The publisher appends (`O_APPEND`) with one `write` per frame; a write the kernel
//! cuts short (a full disk) is finished before anything else is written, so the file is
//! always whole frames followed by at most one frame in progress.
//!
//! **One publisher at a time.** It holds an exclusive `flock` on the spool for as long as it
//! lives (the kernel drops it when the process dies). A publisher that finds the spool of a
//! live one is refused ([`CreateError::AlreadyExists`]); one that finds a dead one's spool
//! goes on with it, after checking that it holds the same type: it appends a new hello and
//! numbers its messages from 0 again (a reader takes a hello in the middle of the file, of
//! the same type, as a new session: its sequence check starts over). If the dead publisher
//! left a frame half-written, the new one does not append after it: it copies the whole frames
//! to a new file and renames that over the spool, so that a reader never sees the torn frame
//! run into new bytes (readers that had the old file open report the dead publisher, as they
//! would have anyway).
//!
//! **Subscribers** open the file read-only and read it with `pread`, waking on inotify's
//! `IN_MODIFY` (polling every millisecond where inotify is not available). A frame still
//! being written is waited for while its publisher lives; a torn frame left by a dead
//! publisher ends the stream with [`RecvError::PublisherGone`] after every whole frame before
//! it. Liveness is the hello's pid and process start time
//! ([`identity_alive`](crate::segment::identity_alive)). The publisher counts its subscribers
//! by the read lock each holds on the spool's first byte (an open-file-description lock, which
//! the kernel drops when the subscriber closes or dies), as `/proc/locks` lists them; a plain
//! reader of the file (`tail`) is not counted.
//!
//! **Policies.** A file is never full: under every policy (Block, Overwrite, Fail) the
//! publisher never waits and nothing is lost. A write that fails (no space left, a file too
//! large) keeps the frame and is tried again before the next one; the failure is reported,
//! typed, by the publisher's next loan or send (`StorageFull`, `FileTooLarge`: the file
//! system's limit; a write past `RLIMIT_FSIZE` also sends `SIGXFSZ`, which ends the process
//! unless it ignores the signal).
//!
//! **What it costs**: a `write` per message on the publisher's side, a `pread` (and, when
//! idle, a `poll` on inotify) per batch on each subscriber's; a subscriber that starts from the
//! end or from the last N messages reads the frame headers of the whole file once to find
//! where to start (frames carry their lengths; there is no index). Each subscriber holds an
//! inotify instance, whose close costs the kernel a few milliseconds (it
//! waits for a grace period): dropping one is not free. Frames carry no checksum: a
//! corrupt header is a typed error ([`RecvError::BadFrame`], or [`OpenError::Refused`] when
//! found while positioning), a corrupt payload byte is delivered as it is. Nothing is
//! `fsync`ed: the spool survives its processes, not a power cut.
//!
//! This module must never write a frame anywhere but at the end of the file, never follow a
//! symbolic link, never trust a byte of the file (a hostile process of the same user may
//! write any), and never wait without a deadline on a publisher that is dead.

use super::frame::{
    self, Expect, FrameError, FrameHeader, FrameKind, Hello, StreamBuf, HEADER_LEN, HELLO_LEN,
    MAX_PAYLOAD,
};
use super::link::{FrameReceiver, FrameSender, Ready, Received};
use super::{Endpoint, Transport};
use crate::error::{CreateError, OpenError, RecvError};
use crate::layout::{PayloadKind, Policy, TypeFingerprint};
use crate::segment::SegmentError;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The extension of a topic's spool file.
pub const EXTENSION: &str = "spool";

/// How much of the file a subscriber asks for at a time.
const CHUNK: usize = 64 * 1024;
/// How often a subscriber without inotify looks at the file again.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How often a waiting subscriber checks that its publisher lives.
const LIVENESS_CHECK: Duration = Duration::from_millis(10);

/// The plain-file transport: spools in a directory (see the [module](self)).
///
/// ```no_run
/// use shmbus::transport::File;
/// let bus = shmbus::Bus::builder().transport(File::new("/var/spool/myapp")).build()?;
/// let mut publisher = bus.publisher::<u64>("fills").create()?;
/// publisher.send(42)?;
/// // Later, in any process: everything the spool holds, from its first message.
/// let mut replay = bus.subscriber::<u64>("fills").from_start().open()?;
/// assert_eq!(*replay.recv()?, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct File {
    dir: PathBuf,
}

impl File {
    /// Spools in `dir` (which every process of a topic must name alike).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The spool's path for `endpoint`: `<dir>/<prefix><topic>.spool`.
    pub fn path(&self, endpoint: &Endpoint<'_>) -> PathBuf {
        self.dir.join(format!("{}.{EXTENSION}", endpoint.name()))
    }
}

impl Transport for File {
    fn name(&self) -> &'static str {
        "file"
    }

    fn keeps_history(&self) -> bool {
        true
    }

    fn publish(&self, endpoint: &Endpoint<'_>) -> Result<Box<dyn FrameSender>, CreateError> {
        let writer = SpoolWriter::create(
            &self.path(endpoint),
            endpoint.topic,
            &endpoint.hello,
            endpoint.group,
        )?;
        Ok(Box::new(writer))
    }

    fn subscribe(
        &self,
        endpoint: &Endpoint<'_>,
        timeout: Duration,
    ) -> Result<Box<dyn FrameReceiver>, OpenError> {
        let reader = SpoolReader::open(
            &self.path(endpoint),
            &ReadOptions {
                topic: endpoint.topic,
                expected: Some(&endpoint.hello.fingerprint).filter(|_| !endpoint.any_type),
                group: endpoint.group,
                start: StartAt::from_history(endpoint.history),
                check_sequence: true,
            },
            Instant::now() + timeout,
        )?;
        Ok(Box::new(reader))
    }
}

// ---------------------------------------------------------------------------------------------
// Scanning: where the whole frames end, which hello is in force, where the last N messages
// start.

/// Why a spool could not be read through.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The system's error.
    Io(io::Error),
    /// A frame that is not valid, at this byte of the file.
    Bad { offset: u64, error: FrameError },
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Io(e) => write!(f, "reading the spool: {e}"),
            ScanError::Bad { offset, error } => {
                write!(f, "the spool is corrupt at byte {offset}: {error}")
            }
        }
    }
}

/// What a scan of a spool's whole frames found.
#[derive(Debug, Default)]
struct Scan {
    /// Where the whole frames end (a frame in progress, or a torn one, starts there).
    whole_end: u64,
    /// The spool's first hello.
    first: Option<Hello>,
    /// The last hello before where the scan stopped, and its offset.
    last_hello: Option<(u64, Hello)>,
    /// Data frames before where the scan stopped.
    data: u64,
    /// Where the scan stopped for the data frame it was asked to find.
    found: Option<u64>,
    /// The offset of the last whole frame if it is a close.
    last_close: Option<u64>,
}

/// Read `buf.len()` bytes at `offset`, fewer only at the end of the file.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match rustix::io::pread(fd, &mut buf[have..], offset + have as u64) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(Errno::INTR) | Err(Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(have)
}

/// Walk the whole frames of the spool up to byte `limit`, checking each header (and each
/// hello: the first frame must be one, later ones must carry the same type); stop early at
/// data frame number `stop_at_data` (counted from 0) if asked.
fn scan(fd: BorrowedFd<'_>, limit: u64, stop_at_data: Option<u64>) -> Result<Scan, ScanError> {
    let mut out = Scan::default();
    let mut buf = vec![0u8; CHUNK];
    // `buf[..have]` holds the file's bytes from `base`.
    let (mut base, mut have) = (0u64, 0usize);
    let mut off = 0u64;
    let bad = |offset, error| ScanError::Bad { offset, error };
    while off + HEADER_LEN as u64 <= limit {
        if off < base || off + HEADER_LEN as u64 > base + have as u64 {
            let want = (limit - off).min(CHUNK as u64) as usize;
            have = pread_full(fd, &mut buf[..want], off).map_err(ScanError::Io)?;
            base = off;
            if have < HEADER_LEN {
                break;
            }
        }
        let at = (off - base) as usize;
        let head: &[u8; HEADER_LEN] = buf[at..at + HEADER_LEN].try_into().unwrap();
        let h = FrameHeader::decode(head, MAX_PAYLOAD).map_err(|e| bad(off, e))?;
        let total = frame::frame_len(h.len as usize) as u64;
        if off + total > limit {
            break;
        }
        match h.kind {
            FrameKind::Hello => {
                if h.len as usize != HELLO_LEN {
                    return Err(bad(off, FrameError::BadHello("wrong length")));
                }
                let mut payload = [0u8; HELLO_LEN];
                let start = at + HEADER_LEN;
                if start + HELLO_LEN <= have {
                    payload.copy_from_slice(&buf[start..start + HELLO_LEN]);
                } else if pread_full(fd, &mut payload, off + HEADER_LEN as u64)
                    .map_err(ScanError::Io)?
                    < HELLO_LEN
                {
                    break;
                }
                let hello = Hello::decode(&payload).map_err(|e| bad(off, e))?;
                if h.type_hash != frame::type_hash(&hello.fingerprint) {
                    return Err(bad(
                        off,
                        FrameError::BadHello("its type hash does not match its fingerprint"),
                    ));
                }
                match &out.first {
                    None => out.first = Some(hello.clone()),
                    Some(first) if first.fingerprint != hello.fingerprint => {
                        return Err(bad(
                            off,
                            FrameError::BadHello("a later hello of another type"),
                        ))
                    }
                    Some(_) => {}
                }
                out.last_hello = Some((off, hello));
            }
            _ if out.first.is_none() => {
                return Err(bad(
                    off,
                    FrameError::UnexpectedKind {
                        found: h.kind as u8,
                    },
                ))
            }
            FrameKind::Data => {
                if stop_at_data == Some(out.data) {
                    out.found = Some(off);
                    out.whole_end = off;
                    return Ok(out);
                }
                out.data += 1;
            }
            FrameKind::Close => {}
            FrameKind::Subscribe | FrameKind::Refuse | FrameKind::Topic => {
                return Err(bad(
                    off,
                    FrameError::UnexpectedKind {
                        found: h.kind as u8,
                    },
                ))
            }
        }
        out.last_close = (h.kind == FrameKind::Close).then_some(off);
        off += total;
    }
    out.whole_end = off;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The publisher's side.

/// Where a subscriber's read lock lies on the spool: byte 0 (the publisher's exclusive lock is
/// a `flock`, which open-file-description locks do not meet).
const READER_LOCK_AT: i64 = 0;

fn reader_lock_range(kind: libc::c_int) -> libc::flock {
    // SAFETY: an all-zero `flock` is a valid value; the fields that matter are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = READER_LOCK_AT;
    fl.l_len = 1;
    fl
}

/// Mark `fd` (a subscriber's, read-only) as a reader of the spool: a read lock on the open file
/// description, which the kernel drops when its last descriptor closes, the process dies
/// included. Best effort: a file system without such locks leaves the reader uncounted.
fn mark_reader(fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let fl = reader_lock_range(libc::F_RDLCK);
    // SAFETY: `F_OFD_SETLK` reads the `flock` the pointer points at during the call; `fd` is
    // open (borrowed).
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
}

/// Counts the subscribers of a spool: the read locks they hold on it (`mark_reader`), as
/// `/proc/locks` lists them. Why not inotify's opens less its closes: inotify merges an event
/// with an identical one not yet read, so two subscribers opening at once counted as one.
struct ReaderCount {
    /// The spool as `/proc/locks` names it: `MAJOR:MINOR:INODE` (hex, hex, decimal).
    id: String,
}

impl ReaderCount {
    fn of(fd: BorrowedFd<'_>) -> Option<Self> {
        let st = rustix::fs::fstat(fd).ok()?;
        let dev = st.st_dev;
        Some(Self {
            id: format!(
                "{:02x}:{:02x}:{}",
                rustix::fs::major(dev),
                rustix::fs::minor(dev),
                st.st_ino
            ),
        })
    }

    /// The read locks held on the spool's reader byte now. Reads `/proc/locks` (every lock
    /// of the system): for the slow path that counts subscribers, never per message.
    fn count(&self) -> usize {
        let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
            return 0;
        };
        let start = READER_LOCK_AT.to_string();
        locks
            .lines()
            .filter(|line| {
                // `N: OFDLCK ADVISORY READ PID MAJ:MIN:INO START END`; a waiter's line has
                // `->` after its number, and is not a holder.
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() >= 8
                    && fields[1] == "OFDLCK"
                    && fields[3] == "READ"
                    && fields[5] == self.id
                    && fields[6] == start
            })
            .count()
    }
}

/// The writing end of a spool: the file, locked, appended to one frame per `write`.
pub(crate) struct SpoolWriter {
    fd: OwnedFd,
    path: PathBuf,
    /// A frame (or frames) the kernel did not take whole; written before anything else.
    pending: Vec<u8>,
    /// The last write's failure, while `pending` holds what it did not write.
    failed: Option<io::ErrorKind>,
    readers: Option<ReaderCount>,
    type_hash: u64,
}

impl fmt::Debug for SpoolWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolWriter")
            .field("path", &self.path)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl SpoolWriter {
    /// Create the spool at `path` (or go on with a dead publisher's) and append `hello`.
    /// `topic` names it in errors.
    pub(crate) fn create(
        path: &Path,
        topic: &str,
        hello: &Hello,
        group: bool,
    ) -> Result<Self, CreateError> {
        let io_err = |source: io::Error| CreateError::Transport {
            topic: topic.into(),
            source,
        };
        let name = path.display().to_string();
        let mode = Mode::from_raw_mode(if group { 0o660 } else { 0o600 });
        let flags =
            OFlags::WRONLY | OFlags::APPEND | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK;
        // A few rounds: the name may go (removed) or change (a takeover renamed a new file
        // over it) between the calls below.
        for _ in 0..8 {
            match rustix::fs::open(path, flags | OFlags::CREATE | OFlags::EXCL, mode) {
                Ok(fd) => {
                    // The umask may have narrowed the mode: set it as asked.
                    rustix::fs::fchmod(&fd, mode).map_err(|e| io_err(e.into()))?;
                    // Someone who found the new file existing may have locked it first: the
                    // topic is theirs.
                    if lock(&fd).is_err() {
                        return Err(CreateError::AlreadyExists {
                            topic: topic.into(),
                        });
                    }
                    return Self::start(fd, path, topic, hello);
                }
                Err(Errno::EXIST) => {}
                Err(Errno::LOOP) => return Err(CreateError::Segment(SegmentError::Symlink(name))),
                Err(Errno::ACCESS) | Err(Errno::PERM) => {
                    return Err(CreateError::Segment(SegmentError::PermissionDenied(name)))
                }
                Err(e) => return Err(io_err(e.into())),
            }
            // It exists: a live publisher's (refused), or a dead one's (taken over).
            let fd = match rustix::fs::open(path, (flags - OFlags::WRONLY) | OFlags::RDWR, mode) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(Errno::LOOP) => return Err(CreateError::Segment(SegmentError::Symlink(name))),
                Err(Errno::ACCESS) | Err(Errno::PERM) => {
                    return Err(CreateError::Segment(SegmentError::PermissionDenied(name)))
                }
                Err(e) => return Err(io_err(e.into())),
            };
            check_file(&fd, &name, group).map_err(|e| match e {
                Checked::Segment(e) => CreateError::Segment(e),
                Checked::Io(e) => io_err(e),
            })?;
            if lock(&fd).is_err() {
                return Err(CreateError::AlreadyExists {
                    topic: topic.into(),
                });
            }
            if !same_file(&fd, path) {
                continue;
            }
            rustix::fs::fchmod(&fd, mode).map_err(|e| io_err(e.into()))?;
            let existing = |source: OpenError| CreateError::Existing {
                topic: topic.into(),
                source: Box::new(source),
            };
            let size = rustix::fs::fstat(&fd)
                .map_err(|e| io_err(e.into()))?
                .st_size as u64;
            let found = scan(fd.as_fd(), size, None).map_err(|e| {
                existing(OpenError::Refused {
                    topic: topic.into(),
                    reason: e.to_string(),
                })
            })?;
            if let Some(first) = &found.first {
                if first.fingerprint != hello.fingerprint {
                    return Err(existing(OpenError::IncompatibleType {
                        topic: topic.into(),
                        expected: Box::new(hello.fingerprint),
                        found: Box::new(first.fingerprint),
                    }));
                }
            }
            if found.whole_end == size {
                return Self::start(fd, path, topic, hello);
            }
            // A torn frame at the end: go on in a copy of the whole frames.
            let fresh = rewrite(&fd, path, found.whole_end, mode).map_err(io_err)?;
            return Self::start(fresh, path, topic, hello);
        }
        Err(io_err(io::Error::other(
            "the spool kept changing while this publisher opened it",
        )))
    }

    /// The spool is this process's (locked): append the hello.
    fn start(fd: OwnedFd, path: &Path, topic: &str, hello: &Hello) -> Result<Self, CreateError> {
        let type_hash = frame::type_hash(&hello.fingerprint);
        let mut writer = Self {
            readers: ReaderCount::of(fd.as_fd()),
            fd,
            path: path.into(),
            pending: Vec::new(),
            failed: None,
            type_hash,
        };
        let payload = hello.encode();
        let mut out = vec![0u8; frame::frame_len(payload.len())];
        let header = FrameHeader::control(FrameKind::Hello, payload.len() as u32, type_hash);
        frame::encode_frame(&mut out, &header, &payload);
        match writer.append(&out) {
            Ok(()) => Ok(writer),
            Err(e) if e.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) => {
                let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                Err(CreateError::NoSpace {
                    topic: topic.into(),
                    available: crate::segment::free_space(&dir).unwrap_or(0),
                    dir,
                    needed: out.len() as u64,
                })
            }
            Err(source) => Err(CreateError::Transport {
                topic: topic.into(),
                source,
            }),
        }
    }

    /// Write what is pending. On failure it stays pending.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let mut off = 0;
        let result = loop {
            if off == self.pending.len() {
                break Ok(());
            }
            match rustix::io::write(&self.fd, &self.pending[off..]) {
                Ok(n) => off += n,
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(e) => break Err(io::Error::from(e)),
            }
        };
        self.pending.drain(..off);
        self.failed = result.as_ref().err().map(|e| e.kind());
        result
    }

    /// Append a whole frame: in one `write` unless the kernel takes less (a full disk), in
    /// which case the rest stays pending and the error is returned.
    pub(crate) fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        if self.pending.is_empty() {
            let mut off = 0;
            while off < frame.len() {
                match rustix::io::write(&self.fd, &frame[off..]) {
                    Ok(n) => off += n,
                    Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                    Err(e) => {
                        self.pending.extend_from_slice(&frame[off..]);
                        self.failed = Some(io::Error::from(e).kind());
                        return Err(e.into());
                    }
                }
            }
            return Ok(());
        }
        self.pending.extend_from_slice(frame);
        self.flush()
    }

    /// Append the close frame (after what is pending): the publisher leaves cleanly. The lock
    /// goes with the descriptor.
    pub(crate) fn finish(&mut self) -> io::Result<()> {
        let mut close = [0u8; HEADER_LEN];
        FrameHeader::control(FrameKind::Close, 0, self.type_hash).encode(&mut close);
        self.append(&close)
    }
}

impl FrameSender for SpoolWriter {
    fn ready(&mut self, _policy: Policy, _deadline: Option<Instant>) -> Ready {
        // A file is never full: only a write that failed holds the publisher back.
        if self.pending.is_empty() {
            return Ready::Yes;
        }
        match self.flush() {
            Ok(()) => Ready::Yes,
            Err(e) => Ready::Failed(e.kind()),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        // A failure keeps the frame pending: `ready` tries it again and reports it.
        let _ = self.append(frame);
    }

    fn subscribers(&self) -> usize {
        self.readers.as_ref().map_or(0, ReaderCount::count)
    }

    fn close(&mut self, _frame: &[u8], _linger: Duration) {
        // The same close frame as `frame`, after what is pending.
        let _ = self.finish();
    }
}

/// Take the publisher's exclusive lock, without waiting.
fn lock(fd: &OwnedFd) -> rustix::io::Result<()> {
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

/// Whether `path` still names the file open as `fd`.
fn same_file(fd: &OwnedFd, path: &Path) -> bool {
    let (Ok(a), Ok(b)) = (
        rustix::fs::fstat(fd),
        rustix::fs::statat(rustix::fs::CWD, path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
    ) else {
        return false;
    };
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

enum Checked {
    Segment(SegmentError),
    Io(io::Error),
}

/// Refuse a spool that is not a regular file of this user's with a mode within what the bus
/// allows.
fn check_file(fd: &OwnedFd, name: &str, group: bool) -> Result<u64, Checked> {
    let st = rustix::fs::fstat(fd).map_err(|e| Checked::Io(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Checked::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is not a regular file"),
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(Checked::Segment(SegmentError::NotOwner {
            name: name.into(),
            owner: st.st_uid,
            me,
        }));
    }
    let allowed = if group { 0o660 } else { 0o600 };
    let mode = st.st_mode & 0o7777;
    if mode & !allowed != 0 {
        return Err(Checked::Segment(SegmentError::BadMode {
            name: name.into(),
            mode,
            allowed,
        }));
    }
    Ok(st.st_size as u64)
}

/// Copy the first `len` bytes of the locked spool `old` to a new file, locked, and rename it
/// over `path`; returns it (open for appending).
fn rewrite(old: &OwnedFd, path: &Path, len: u64, mode: Mode) -> io::Result<OwnedFd> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    // A leftover of a dead process that had this pid.
    let _ = rustix::fs::unlink(&tmp);
    let fd = rustix::fs::open(
        &tmp,
        OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::CLOEXEC
            | OFlags::NOFOLLOW,
        mode,
    )?;
    let copied = (|| -> io::Result<()> {
        rustix::fs::fchmod(&fd, mode)?;
        lock(&fd)?;
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < len {
            let want = (len - off).min(CHUNK as u64) as usize;
            let n = pread_full(old.as_fd(), &mut buf[..want], off)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut done = 0;
            while done < n {
                match rustix::io::write(&fd, &buf[done..n]) {
                    Ok(w) => done += w,
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            off += n as u64;
        }
        rustix::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = rustix::fs::unlink(&tmp);
        return Err(e);
    }
    Ok(fd)
}

// ---------------------------------------------------------------------------------------------
// The subscriber's side.

/// Where a reader starts in a spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// The first frame.
    Start,
    /// After what the spool holds when the reader opens it.
    End,
    /// The last N data frames the spool holds when the reader opens it.
    Last(u64),
}

impl StartAt {
    /// A subscriber's history: 0 the end, `u64::MAX` the start, else the last N.
    pub(crate) fn from_history(history: u64) -> Self {
        match history {
            0 => StartAt::End,
            u64::MAX => StartAt::Start,
            n => StartAt::Last(n),
        }
    }
}

/// What a reader is told when it opens a spool.
pub(crate) struct ReadOptions<'a> {
    /// Names the spool in errors.
    pub(crate) topic: &'a str,
    /// The type expected (`None`: any).
    pub(crate) expected: Option<&'a TypeFingerprint>,
    /// Whether a group-readable spool (0660) is accepted.
    pub(crate) group: bool,
    pub(crate) start: StartAt,
    /// Whether data frames must be numbered in sequence (a topic's spool), or may be
    /// numbered anyhow (a journal keeps what its source numbered, several publishers' lanes
    /// included).
    pub(crate) check_sequence: bool,
}

/// The reader's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame was read: `Disconnected` until a new hello follows.
    Closed,
    /// The publisher is dead and nothing more is there: `PublisherGone` until a new hello
    /// follows (in this file: a takeover of a torn spool writes a new one).
    Gone,
    /// A bad frame was read: `Disconnected` for good.
    Dropped,
}

/// How a reader sleeps until the file changes.
enum Notify {
    Inotify {
        fd: OwnedFd,
        buf: Vec<MaybeUninit<u8>>,
    },
    Poll,
}

impl Notify {
    fn watch(path: &Path) -> Self {
        use rustix::fs::inotify;
        let Ok(fd) = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        else {
            return Notify::Poll;
        };
        match inotify::add_watch(
            &fd,
            path,
            inotify::WatchFlags::MODIFY | inotify::WatchFlags::DONT_FOLLOW,
        ) {
            Ok(_) => Notify::Inotify {
                fd,
                buf: vec![MaybeUninit::uninit(); 1024],
            },
            Err(_) => Notify::Poll,
        }
    }

    /// Forget the events so far (the file is read right after).
    fn drain(&mut self) {
        if let Notify::Inotify { fd, buf } = self {
            while let Ok((filled, _)) = rustix::io::read(&*fd, &mut buf[..]) {
                if filled.is_empty() {
                    break;
                }
            }
        }
    }

    /// Sleep until the file may have changed, or `until`.
    fn wait(&mut self, until: Instant) -> io::Result<()> {
        let left = until.saturating_duration_since(Instant::now());
        match self {
            Notify::Inotify { fd, .. } => super::link::wait_readable(fd.as_fd(), Some(until)),
            Notify::Poll => {
                std::thread::sleep(left.min(POLL_INTERVAL));
                Ok(())
            }
        }
    }
}

/// The reading end of a spool: frames checked as every copying transport's are, a hello in
/// the middle of the file taken as a new session of the same type.
pub(crate) struct SpoolReader {
    fd: OwnedFd,
    /// The file offset of the next byte to read into `buf`.
    offset: u64,
    buf: StreamBuf,
    /// What `buf` was sized for (the largest payload accepted).
    buf_max: u32,
    hello: Hello,
    expect: Expect,
    check_sequence: bool,
    lost: u64,
    state: State,
    notify: Notify,
}

impl fmt::Debug for SpoolReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolReader")
            .field("hello", &self.hello)
            .field("offset", &self.offset)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The checks of a frame's hello against the spool's type: its type hash, a typed topic's
/// largest payload.
fn expect_for(hello: &Hello, header_hash: u64) -> Result<Expect, FrameError> {
    let type_hash = frame::type_hash(&hello.fingerprint);
    if header_hash != type_hash {
        return Err(FrameError::BadHello(
            "its type hash does not match its fingerprint",
        ));
    }
    let exact_len = match hello.fingerprint.kind {
        PayloadKind::Typed => {
            if hello.fingerprint.size != hello.max_len as u64 {
                return Err(FrameError::BadHello(
                    "largest payload is not the type's size",
                ));
            }
            Some(hello.max_len)
        }
        PayloadKind::Bytes => None,
    };
    Ok(Expect {
        type_hash,
        exact_len,
        max_len: hello.max_len,
        gaps: hello.policy == Policy::Overwrite,
        next_seq: None,
    })
}

impl SpoolReader {
    /// Open the spool at `path` and place the reader where `options.start` says, waiting
    /// until `deadline` for a publisher that has created the file but not written its hello.
    pub(crate) fn open(
        path: &Path,
        options: &ReadOptions<'_>,
        deadline: Instant,
    ) -> Result<Self, OpenError> {
        let topic = options.topic;
        let name = path.display().to_string();
        let io_err = |source: io::Error| OpenError::Transport {
            topic: topic.into(),
            source,
        };
        let refused = |reason: String| OpenError::Refused {
            topic: topic.into(),
            reason,
        };
        // The size before the open: the publisher counts this subscriber from its open on,
        // and may publish as soon as it does; what it publishes then must come after the end.
        let before =
            rustix::fs::statat(rustix::fs::CWD, path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => OpenError::NotFound {
                topic: topic.into(),
            },
            Errno::LOOP => OpenError::Segment(SegmentError::Symlink(name.clone())),
            Errno::ACCESS | Errno::PERM => {
                OpenError::Segment(SegmentError::PermissionDenied(name.clone()))
            }
            e => io_err(e.into()),
        })?;
        // Counted by the publisher from here on (see `ReaderCount`).
        mark_reader(fd.as_fd());
        let size_now = check_file(&fd, &name, options.group).map_err(|e| match e {
            Checked::Segment(e) => OpenError::Segment(e),
            Checked::Io(e) => io_err(e),
        })?;
        let end = match (before, rustix::fs::fstat(&fd)) {
            (Ok(b), Ok(a)) if a.st_dev == b.st_dev && a.st_ino == b.st_ino => b.st_size as u64,
            // Replaced in between (a takeover): its size now will do.
            _ => size_now,
        };
        // Watching before the first read: no change after it goes unnoticed.
        let notify = Notify::watch(path);
        let placeholder = Hello {
            fingerprint: TypeFingerprint::bytes(),
            pid: 0,
            identity: 0,
            policy: Policy::Block,
            max_len: HELLO_LEN as u32,
        };
        let mut reader = Self {
            fd,
            offset: 0,
            buf: StreamBuf::new(HELLO_LEN as u32, CHUNK),
            buf_max: HELLO_LEN as u32,
            expect: expect_for(&placeholder, frame::type_hash(&placeholder.fingerprint))
                .expect("the placeholder is consistent"),
            hello: placeholder,
            check_sequence: options.check_sequence,
            lost: 0,
            state: State::Open,
            notify,
        };
        let scanned = match options.start {
            StartAt::Start => None,
            StartAt::End | StartAt::Last(_) => {
                let whole = scan(reader.fd.as_fd(), end, None).map_err(|e| match e {
                    ScanError::Io(e) => io_err(e),
                    e => refused(e.to_string()),
                })?;
                match options.start {
                    StartAt::Last(n) if n < whole.data => {
                        let target = whole.data - n;
                        let at =
                            scan(reader.fd.as_fd(), end, Some(target)).map_err(|e| match e {
                                ScanError::Io(e) => io_err(e),
                                e => refused(e.to_string()),
                            })?;
                        Some(at).filter(|s| s.found.is_some())
                    }
                    StartAt::Last(_) => {
                        // Fewer than asked: all of them, from the start.
                        None
                    }
                    _ => Some(whole),
                }
            }
        };
        match scanned
            .as_ref()
            .and_then(|s| s.last_hello.clone().map(|h| (s, h)))
        {
            Some((s, (_, hello))) => {
                reader.expect = expect_for(&hello, frame::type_hash(&hello.fingerprint))
                    .map_err(|e| refused(e.to_string()))?;
                reader.grow(hello.max_len);
                reader.hello = hello;
                reader.offset = s.found.or(s.last_close).unwrap_or(s.whole_end);
            }
            None => {
                // From the first frame, which must be the hello (waited for).
                let hello = reader.first_hello(deadline, topic)?;
                reader.hello = hello;
            }
        }
        if let Some(expected) = options.expected {
            if *expected != reader.hello.fingerprint {
                return Err(OpenError::IncompatibleType {
                    topic: topic.into(),
                    expected: Box::new(*expected),
                    found: Box::new(reader.hello.fingerprint),
                });
            }
        }
        Ok(reader)
    }

    /// Read the spool's first frame, waiting for it until `deadline`: it must be a hello.
    fn first_hello(&mut self, deadline: Instant, topic: &str) -> Result<Hello, OpenError> {
        let refused = |reason: String| OpenError::Refused {
            topic: topic.into(),
            reason,
        };
        loop {
            match self.poll() {
                Ok(Some(found)) if found.header.kind == FrameKind::Hello => {
                    let hello = Hello::decode(self.buf.payload(&found))
                        .and_then(|hello| {
                            self.expect = expect_for(&hello, found.header.type_hash)?;
                            Ok(hello)
                        })
                        .map_err(|e| refused(format!("invalid hello: {e}")))?;
                    self.grow(hello.max_len);
                    return Ok(hello);
                }
                Ok(Some(found)) => {
                    return Err(refused(format!(
                        "the spool's first frame is a {:?}, not a hello",
                        found.header.kind
                    )))
                }
                Ok(None) => {}
                Err(e) => return Err(refused(e.to_string())),
            }
            if Instant::now() >= deadline {
                return Err(OpenError::NotReady {
                    topic: topic.into(),
                });
            }
            self.notify.drain();
            if self.poll_bytes().unwrap_or(0) > 0 {
                continue;
            }
            let until = deadline.min(Instant::now() + LIVENESS_CHECK);
            self.notify
                .wait(until)
                .map_err(|source| OpenError::Transport {
                    topic: topic.into(),
                    source,
                })?;
        }
    }

    /// Make room for frames of `max_len` payload bytes, keeping the bytes held.
    fn grow(&mut self, max_len: u32) {
        let max_len = max_len.max(HELLO_LEN as u32);
        if max_len <= self.buf_max {
            return;
        }
        let mut bigger = StreamBuf::new(max_len, CHUNK);
        let held = self.buf.unparsed();
        bigger.spare()[..held.len()].copy_from_slice(held);
        bigger.filled(held.len());
        self.buf = bigger;
        self.buf_max = max_len;
    }

    /// Read what the file has past `offset` into the buffer; returns the bytes read.
    fn poll_bytes(&mut self) -> io::Result<usize> {
        let room = self.buf.spare();
        let want = room.len().min(CHUNK);
        match rustix::io::pread(&self.fd, &mut room[..want], self.offset) {
            Ok(n) => {
                self.buf.filled(n);
                self.offset += n as u64;
                Ok(n)
            }
            Err(Errno::INTR) | Err(Errno::AGAIN) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// The next whole frame, from the buffer or read now without waiting.
    fn poll(&mut self) -> Result<Option<frame::Found>, FrameError> {
        loop {
            if let Some(found) = self.buf.next(self.buf_max)? {
                return Ok(Some(found));
            }
            match self.poll_bytes() {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                // Reported as nothing now; a persistent failure shows as a dead publisher or
                // a timeout, never as a spin (the caller waits between polls).
                Err(_) => return Ok(None),
            }
        }
    }

    fn bad(&mut self, e: FrameError) -> RecvError {
        self.state = State::Dropped;
        RecvError::BadFrame(e)
    }

    fn ended(&self) -> RecvError {
        match self.state {
            State::Gone => RecvError::PublisherGone {
                pid: self.hello.pid,
            },
            _ => RecvError::Disconnected,
        }
    }

    /// A hello in the middle of the spool: a new session of the same type.
    fn next_session(&mut self, found: &frame::Found) -> Result<(), FrameError> {
        let hello = Hello::decode(self.buf.payload(found))?;
        if hello.fingerprint != self.hello.fingerprint {
            return Err(FrameError::BadHello("a later hello of another type"));
        }
        self.expect = expect_for(&hello, found.header.type_hash)?;
        self.grow(hello.max_len);
        self.hello = hello;
        self.state = State::Open;
        Ok(())
    }

    /// Take the next frame as it comes: a message (returned), a hello (a new session), a
    /// close. `Ok(None)`: nothing whole now.
    fn step(&mut self) -> Result<Option<Received>, RecvError> {
        while let Some(found) = self.poll().map_err(|e| self.bad(e))? {
            let h = found.header;
            match h.kind {
                FrameKind::Data if self.state == State::Open => {
                    if h.len > self.hello.max_len {
                        return Err(self.bad(FrameError::TooLong {
                            len: h.len,
                            max: self.hello.max_len,
                        }));
                    }
                    if !self.check_sequence {
                        // Any number follows any: only the type and length are checked.
                        self.expect.next_seq = None;
                    }
                    let lost = self.expect.accept(&h);
                    match lost {
                        Ok(lost) => self.lost = self.lost.saturating_add(lost),
                        Err(e) => return Err(self.bad(e)),
                    }
                    return Ok(Some(Received {
                        seq: h.seq,
                        len: h.len,
                        stamp: h.stamp,
                        found,
                    }));
                }
                FrameKind::Hello => {
                    if let Err(e) = self.next_session(&found) {
                        return Err(self.bad(e));
                    }
                }
                FrameKind::Close if self.state == State::Open => {
                    self.state = State::Closed;
                    return Err(RecvError::Disconnected);
                }
                kind => return Err(self.bad(FrameError::UnexpectedKind { found: kind as u8 })),
            }
        }
        Ok(None)
    }
}

impl FrameReceiver for SpoolReader {
    fn hello(&self) -> &Hello {
        &self.hello
    }

    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Received>, RecvError> {
        match self.state {
            State::Dropped => return Err(RecvError::Disconnected),
            State::Closed | State::Gone => {
                // Over until a new publisher's hello follows.
                return match self.step()? {
                    Some(received) => Ok(Some(received)),
                    None if self.state == State::Open => self.recv(deadline),
                    None => Err(self.ended()),
                };
            }
            State::Open => {}
        }
        // The fast path: a frame already read, or one read now.
        if let Some(received) = self.step()? {
            return Ok(Some(received));
        }
        let mut check_at = Instant::now() + LIVENESS_CHECK;
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if now >= check_at {
                if !crate::segment::identity_alive(self.hello.identity) {
                    // One more look: what it wrote before it died is delivered first, and a
                    // new publisher may have taken over.
                    if let Some(received) = self.step()? {
                        return Ok(Some(received));
                    }
                    if !crate::segment::identity_alive(self.hello.identity) {
                        self.state = State::Gone;
                        return Err(self.ended());
                    }
                }
                check_at = now + LIVENESS_CHECK;
            }
            // Forget the changes so far, look once more, then sleep: a write after this look
            // wakes the sleep.
            self.notify.drain();
            if let Some(received) = self.step()? {
                return Ok(Some(received));
            }
            let until = deadline.map_or(check_at, |d| d.min(check_at));
            if let Err(e) = self.notify.wait(until) {
                return Err(RecvError::Io {
                    kind: e.kind(),
                    detail: e.to_string(),
                });
            }
            if let Some(received) = self.step()? {
                return Ok(Some(received));
            }
        }
    }

    fn payload(&self, received: &Received) -> &[u8] {
        self.buf.payload(&received.found)
    }

    fn lost(&self) -> u64 {
        self.lost
    }

    fn next_seq(&self) -> u64 {
        self.expect.next_seq.unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(max_len: u32) -> Hello {
        Hello {
            fingerprint: TypeFingerprint::typed::<u64>("u64"),
            pid: std::process::id(),
            identity: crate::segment::my_identity(),
            policy: Policy::Block,
            max_len,
        }
    }

    /// A directory of the test's own, removed when dropped.
    struct Tmp(PathBuf);

    impl Tmp {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("shmbus-file-unit-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
        fn path(&self) -> PathBuf {
            self.0.join("t.spool")
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn data(w: &mut SpoolWriter, seq: u64, value: u64) {
        let mut f = [0u8; HEADER_LEN + 8];
        let h = FrameHeader::data(8, frame::type_hash(&hello(8).fingerprint), seq, 1000 + seq);
        frame::encode_frame(&mut f, &h, &value.to_le_bytes());
        w.append(&f).unwrap();
    }

    fn options(start: StartAt) -> ReadOptions<'static> {
        ReadOptions {
            topic: "t",
            expected: None,
            group: false,
            start,
            check_sequence: true,
        }
    }

    fn read_all(r: &mut SpoolReader) -> (Vec<u64>, RecvError) {
        let mut got = vec![];
        loop {
            match r.recv(Some(Instant::now())) {
                Ok(Some(m)) => got.push(u64::from_le_bytes(r.payload(&m).try_into().unwrap())),
                Ok(None) => return (got, RecvError::Disconnected),
                Err(e) => return (got, e),
            }
        }
    }

    #[test]
    fn a_reader_starts_where_it_asks() {
        let tmp = Tmp::new("start");
        let path = tmp.path();
        let mut w = SpoolWriter::create(&path, "t", &hello(8), false).unwrap();
        for i in 0..10 {
            data(&mut w, i, i * 3);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut all = SpoolReader::open(&path, &options(StartAt::Start), deadline).unwrap();
        let mut last = SpoolReader::open(&path, &options(StartAt::Last(3)), deadline).unwrap();
        let mut end = SpoolReader::open(&path, &options(StartAt::End), deadline).unwrap();
        let mut more = SpoolReader::open(&path, &options(StartAt::Last(99)), deadline).unwrap();
        data(&mut w, 10, 30);
        w.finish().unwrap();
        let every: Vec<u64> = (0..11).map(|i| i * 3).collect();
        assert_eq!(read_all(&mut all), (every.clone(), RecvError::Disconnected));
        assert_eq!(read_all(&mut more), (every, RecvError::Disconnected));
        assert_eq!(
            read_all(&mut last),
            (vec![21, 24, 27, 30], RecvError::Disconnected)
        );
        assert_eq!(read_all(&mut end), (vec![30], RecvError::Disconnected));
        // After the close, from the end: the close is read, and said.
        let mut late = SpoolReader::open(&path, &options(StartAt::End), deadline).unwrap();
        assert_eq!(read_all(&mut late), (vec![], RecvError::Disconnected));
        drop(w);
    }

    #[test]
    fn a_reader_without_inotify_polls() {
        let tmp = Tmp::new("poll");
        let path = tmp.path();
        let mut w = SpoolWriter::create(&path, "t", &hello(8), false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut r = SpoolReader::open(&path, &options(StartAt::End), deadline).unwrap();
        r.notify = Notify::Poll;
        let writer = std::thread::spawn(move || {
            for i in 0..50 {
                std::thread::sleep(Duration::from_micros(200));
                data(&mut w, i, i);
            }
            w.finish().unwrap();
        });
        let mut got = vec![];
        let end = loop {
            match r.recv(Some(Instant::now() + Duration::from_secs(60))) {
                Ok(Some(m)) => got.push(u64::from_le_bytes(r.payload(&m).try_into().unwrap())),
                Ok(None) => panic!("nothing within a minute"),
                Err(e) => break e,
            }
        };
        writer.join().unwrap();
        assert_eq!((got, end), ((0..50).collect(), RecvError::Disconnected));
    }

    #[test]
    fn the_publisher_counts_every_open_reader_and_forgets_a_closed_one() {
        let tmp = Tmp::new("count");
        let path = tmp.path();
        let w = SpoolWriter::create(&path, "t", &hello(8), false).unwrap();
        assert_eq!(w.subscribers(), 0);
        let deadline = Instant::now() + Duration::from_secs(1);
        // Opened back to back: inotify would have merged their opens into one event.
        let readers: Vec<SpoolReader> = (0..3)
            .map(|_| SpoolReader::open(&path, &options(StartAt::End), deadline).unwrap())
            .collect();
        // A plain reader of the file (`tail`) holds no lock and is not counted.
        let plain = std::fs::File::open(&path).unwrap();
        assert_eq!(w.subscribers(), 3);
        let mut readers = readers;
        drop(readers.pop());
        assert_eq!(w.subscribers(), 2);
        drop(readers);
        drop(plain);
        assert_eq!(w.subscribers(), 0);
    }

    #[test]
    fn a_second_session_continues_the_spool() {
        let tmp = Tmp::new("sessions");
        let path = tmp.path();
        let mut w = SpoolWriter::create(&path, "t", &hello(8), false).unwrap();
        assert!(matches!(
            SpoolWriter::create(&path, "t", &hello(8), false),
            Err(CreateError::AlreadyExists { .. })
        ));
        data(&mut w, 0, 1);
        // A torn frame, as a publisher killed mid-write leaves it.
        let mut f = [0u8; HEADER_LEN + 8];
        frame::encode_frame(
            &mut f,
            &FrameHeader::data(8, frame::type_hash(&hello(8).fingerprint), 1, 0),
            &2u64.to_le_bytes(),
        );
        rustix::io::write(&w.fd, &f[..20]).unwrap();
        drop(w);
        let mut w = SpoolWriter::create(&path, "t", &hello(8), false).unwrap();
        data(&mut w, 0, 5);
        w.finish().unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut all = SpoolReader::open(&path, &options(StartAt::Start), deadline).unwrap();
        assert_eq!(read_all(&mut all), (vec![1, 5], RecvError::Disconnected));
        let other = Hello {
            fingerprint: TypeFingerprint::typed::<u32>("u32"),
            max_len: 4,
            ..hello(4)
        };
        drop(w);
        assert!(matches!(
            SpoolWriter::create(&path, "t", &other, false),
            Err(CreateError::Existing { .. })
        ));
        // Every frame but the torn one was kept, and the copy left nothing beside the spool.
        assert_eq!(std::fs::read_dir(&tmp.0).unwrap().count(), 1);
    }
}
