//! Named pipes (FIFOs): unrelated processes on one host find a topic by a path, with neither
//! shared memory nor sockets. One publisher, and one subscriber at a time.
//!
//! The files of topic `<name>` (the bus's prefix and the topic's name), in the transport's
//! directory, each of mode 0600 (0660 for a bus with group access) whatever the umask:
//! - `<name>.fifo`, the FIFO a subscriber opens for reading;
//! - `<name>.fifo.lock`, a regular file whose byte-range locks say who is there. They are
//!   open-file-description locks (`F_OFD_SETLK`), which the kernel drops when their holder's
//!   descriptor closes, so a killed process holds none: bytes 0..8 are locked by the live
//!   publisher (and hold its identity), bytes 8..16 by the subscriber (and hold its identity,
//!   for the error a second one gets);
//! - `<name>.fifo.new`, for an instant: a FIFO being made.
//!
//! **A FIFO per connection.** A FIFO keeps one kernel buffer while any of its ends is open: if a
//! subscriber dies with bytes unread, a reader that opens the same FIFO while the publisher
//! still holds its write end reads the rest of the old stream, from the middle of a frame
//! perhaps. So the publisher never uses a FIFO twice: once its open of the write end succeeds
//! (a reader is there), it renames a fresh FIFO over the name before it writes its greeting, and
//! the FIFO it writes to has no name any more. A subscriber that opens the name later gets the
//! fresh one, whose stream starts with a greeting.
//!
//! **Finding the subscriber.** A FIFO's write end cannot be opened before a reader has it
//! (`ENXIO`), and the open of a reader tells no writer. The publisher's greeter thread watches
//! the current FIFO with inotify (`IN_OPEN`, set before the FIFO gets its name, so no open goes
//! untold) and sleeps in `poll` until a reader opens it; it then opens the write end, gives the
//! name a fresh FIFO, hands the connection to the publisher (whose sends see it with one atomic
//! load, as on the other copying transports) and writes the greeting, unless the publisher's
//! first write to it did (see `Greeting`: once a subscriber has its greeting, what is sent
//! reaches it). Where inotify has no
//! instance or watch to give (`fs.inotify.max_user_instances`, 128 by default, is per user),
//! the greeter looks every 2 ms instead.
//!
//! **Death.** A subscriber sees the end of the stream without a close frame when its
//! publisher dies (`PublisherGone`); a publisher's write fails with `EPIPE` when its subscriber
//! is gone (`SIGPIPE` must not kill the process: Rust programs ignore it), and it runs free
//! until the next one comes. A publisher's names outlive a killed publisher: the next publisher
//! of the topic finds the lock free and takes them over; a subscriber that finds them is told
//! there is no topic.
//!
//! This module never follows a symbolic link at its names, never uses a file of another kind,
//! owner or wider mode, and never removes a name it did not make: a publisher takes the names
//! only while it holds the publisher's lock, and removes, when it goes, only the files it made.

use super::frame::{FrameHeader, FrameKind, Hello, HEADER_LEN, HELLO_LEN};
use super::link::{self, Arrivals, FanOut, Framed, Got, Link};
use super::pipe::{frame_at, read_some, StreamSource};
use super::{Endpoint, FrameReceiver, FrameSender, Transport};
use crate::error::{CreateError, OpenError};
use crate::segment::SegmentError;
use rustix::fs::{FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The FIFO transport: named pipes in a directory, for unrelated processes on one host with
/// neither shared memory nor sockets. One publisher per topic, and one subscriber at a time.
///
/// Topic `<name>` (the bus's prefix and the topic's name) is the FIFO `<dir>/<name>.fifo`,
/// beside a lock file `<dir>/<name>.fifo.lock`, both of mode 0600 (0660 for a bus with group
/// access) whatever the umask, and removed when the publisher goes. A second publisher gets
/// [`CreateError::AlreadyExists`] while the first lives; the names a killed publisher left are
/// taken over. A second subscriber gets [`OpenError::TooManySubscribers`] while the first
/// holds the topic; when it goes, the next one that comes is greeted. A symbolic link, another
/// kind of file, another user's file or a wider mode at a name is refused
/// ([`CreateError::Segment`], [`OpenError::Segment`]).
///
/// The publisher greets a subscriber from a thread of its own, woken by inotify when a reader
/// opens the FIFO (where the user has no inotify instance left, it looks every 2 ms). A
/// subscriber gets [`RecvError::PublisherGone`](crate::RecvError::PublisherGone) when the
/// publisher's process ends without closing the topic; the publisher finds its subscriber gone
/// when a write fails with `EPIPE` (its process must not die of `SIGPIPE`: Rust programs ignore
/// it), and runs free until the next one comes.
///
/// ```no_run
/// use shmbus::transport::Fifo;
/// let bus = shmbus::Bus::builder().transport(Fifo::new("/run/myapp")).build()?;
/// let mut publisher = bus.publisher::<u64>("status").create()?; // /run/myapp/shmbus.status.fifo
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Fifo {
    dir: PathBuf,
}

impl Fifo {
    /// FIFOs in `dir`, which every process of a topic must name alike. It should be a
    /// directory that only the topic's user (and group) can write in: whoever can write in it
    /// can replace the names (a subscriber still checks the owner and mode of what it opens).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The FIFO's path for `endpoint`: `<dir>/<prefix><topic>.fifo`.
    pub fn path(&self, endpoint: &Endpoint<'_>) -> PathBuf {
        self.dir.join(format!("{}.fifo", endpoint.name()))
    }

    fn names(&self, endpoint: &Endpoint<'_>) -> Paths {
        let fifo = format!("{}.fifo", endpoint.name());
        Paths {
            fifo: self.dir.join(&fifo),
            new: self.dir.join(format!("{fifo}.new")),
            lock: self.dir.join(format!("{fifo}.lock")),
            fifo_name: fifo.clone(),
            lock_name: format!("{fifo}.lock"),
        }
    }
}

/// A topic's paths, and the names its errors give.
#[derive(Debug)]
struct Paths {
    fifo: PathBuf,
    new: PathBuf,
    lock: PathBuf,
    fifo_name: String,
    lock_name: String,
}

/// How often a publisher's greeter looks for a reader where inotify cannot tell it of one.
const POLL_WITHOUT_INOTIFY: Duration = Duration::from_millis(2);
/// How long a subscriber waiting for its greeting sleeps while no writer has its FIFO.
const NO_WRITER_NAP: Duration = Duration::from_millis(1);
/// How often a subscriber waiting for its greeting checks that the publisher is alive.
const LIVENESS_CHECK: Duration = Duration::from_millis(10);
/// How long a subscriber tries the subscriber's lock before it is refused (see `subscribe`).
const LOCK_GRACE: Duration = Duration::from_millis(100);
/// How long a greeting may wait for room (a fresh FIFO has room at once).
const GREET: Duration = Duration::from_secs(1);
/// How many times creation starts again when a lock file is removed under it.
const LOCK_ATTEMPTS: usize = 16;

// ---------------------------------------------------------------------------------------------
// The lock file.

/// The lock file's byte range that the publisher locks, where it writes its identity.
const PUBLISHER: i64 = 0;
/// The range that the subscriber locks, where it writes its identity.
const SUBSCRIBER: i64 = 8;
/// The length of each range (a `u64` identity).
const RANGE: i64 = 8;

fn flock_of(start: i64) -> libc::flock {
    // SAFETY: `flock` is a C struct of integers, for which all zeros is a valid value (and
    // the `l_pid` that open-file-description locks require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = RANGE;
    fl
}

/// Take the write lock on the range at `start` without waiting; `Ok(false)`: another open
/// file description holds it.
fn try_lock(fd: BorrowedFd<'_>, start: i64) -> io::Result<bool> {
    let fl = flock_of(start);
    // SAFETY: `F_OFD_SETLK` reads the `flock` that the pointer points at during the call;
    // `fd` is open (borrowed).
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether another open file description holds a lock on the range at `start`.
fn is_locked(fd: BorrowedFd<'_>, start: i64) -> io::Result<bool> {
    let mut fl = flock_of(start);
    // SAFETY: `F_OFD_GETLK` reads and writes the `flock` that the pointer points at during
    // the call (exclusively borrowed); `fd` is open (borrowed).
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The identity written at `start`, if it is that of a live process (the file's bytes are
/// anyone's guess: this is for an error message).
fn live_pid_at(fd: BorrowedFd<'_>, start: i64) -> Vec<u32> {
    let mut bytes = [0u8; 8];
    match rustix::io::pread(fd, &mut bytes, start as u64) {
        Ok(8) => {
            let identity = u64::from_le_bytes(bytes);
            if crate::segment::identity_alive(identity) {
                vec![crate::segment::identity_pid(identity)]
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
}

fn write_identity(fd: BorrowedFd<'_>, start: i64) -> io::Result<()> {
    let bytes = crate::segment::my_identity().to_le_bytes();
    if rustix::io::pwrite(fd, &bytes, start as u64)? != bytes.len() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checks on what is found at a name.

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of an unknown type",
    }
}

/// Check what the kernel says of a file at `name`: a `want`, owned by this user, no
/// permission bits beyond `allowed`.
fn check_stat(st: &Stat, want: FileType, allowed: u32, name: &str) -> Result<(), SegmentError> {
    let found = FileType::from_raw_mode(st.st_mode);
    if found == FileType::Symlink {
        return Err(SegmentError::Symlink(name.into()));
    }
    if found != want {
        return Err(SegmentError::WrongType {
            name: name.into(),
            expected: type_name(want),
            found: type_name(found),
        });
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(SegmentError::NotOwner {
            name: name.into(),
            owner: st.st_uid,
            me,
        });
    }
    let mode = st.st_mode & 0o7777;
    if mode & !allowed != 0 {
        return Err(SegmentError::BadMode {
            name: name.into(),
            mode,
            allowed,
        });
    }
    Ok(())
}

/// The identity of a file: its device and inode numbers.
#[allow(clippy::unnecessary_cast)] // `u64` here, narrower on some targets
fn file_id(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

fn open_error(name: &str, e: Errno) -> SegmentError {
    match e {
        Errno::NOENT => SegmentError::NotFound(name.into()),
        Errno::LOOP => SegmentError::Symlink(name.into()),
        Errno::ACCESS | Errno::PERM => SegmentError::PermissionDenied(name.into()),
        e => SegmentError::Io {
            op: "open",
            name: name.into(),
            source: e.into(),
        },
    }
}

fn mode_of(group: bool) -> u32 {
    if group {
        0o660
    } else {
        0o600
    }
}

// ---------------------------------------------------------------------------------------------
// The publisher's side.

/// A publisher's hold on the topic's names: the lock file (locked) and the FIFO it made last.
/// Removes the names it made when dropped, then lets the lock go.
struct Names {
    paths: Paths,
    /// The FIFO at `paths.fifo` that this publisher made last (device, inode): the one a
    /// subscriber may open, the one the publisher may open for writing and, at the end, remove.
    current: Option<(u64, u64)>,
    mode: u32,
    /// What tells of a reader opening the current FIFO (`IN_OPEN`), and its watch. `None`
    /// where inotify is out of instances or watches: the greeter then looks every few
    /// milliseconds.
    watch: Option<OwnedFd>,
    wd: Option<i32>,
    /// Dropped last: the lock says the names are this publisher's.
    lock: OwnedFd,
}

impl Names {
    /// Take the publisher's lock, making the lock file or taking over one whose publisher is
    /// gone.
    fn take(paths: Paths, mode: u32, topic: &str) -> Result<Self, CreateError> {
        let io_err = |e: io::Error| CreateError::Transport {
            topic: topic.into(),
            source: e,
        };
        for _ in 0..LOCK_ATTEMPTS {
            let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let create = flags | OFlags::CREATE | OFlags::EXCL;
            let lock = match rustix::fs::open(&paths.lock, create, Mode::from_raw_mode(0o600)) {
                Ok(fd) => {
                    // The umask may have narrowed the mode, or a group mode widens it.
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
                        .map_err(|e| io_err(e.into()))?;
                    fd
                }
                Err(Errno::EXIST) => match rustix::fs::open(&paths.lock, flags, Mode::empty()) {
                    Ok(fd) => {
                        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
                        check_stat(&st, FileType::RegularFile, mode, &paths.lock_name)
                            .map_err(CreateError::Segment)?;
                        fd
                    }
                    // Removed meanwhile (its publisher left): start again.
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(CreateError::Segment(open_error(&paths.lock_name, e))),
                },
                Err(e) => return Err(CreateError::Segment(open_error(&paths.lock_name, e))),
            };
            if !try_lock(lock.as_fd(), PUBLISHER).map_err(io_err)? {
                return Err(CreateError::AlreadyExists {
                    topic: topic.into(),
                });
            }
            // A publisher that was leaving may have removed the file between the open and the
            // lock: a lock on a file without a name guards nothing.
            let mine = rustix::fs::fstat(&lock).map_err(|e| io_err(e.into()))?;
            match rustix::fs::lstat(&paths.lock) {
                Ok(st) if file_id(&st) == file_id(&mine) => {}
                _ => continue,
            }
            write_identity(lock.as_fd(), PUBLISHER).map_err(io_err)?;
            let watch = rustix::fs::inotify::init(
                rustix::fs::inotify::CreateFlags::CLOEXEC
                    | rustix::fs::inotify::CreateFlags::NONBLOCK,
            )
            .ok();
            return Ok(Self {
                paths,
                current: None,
                mode,
                watch,
                wd: None,
                lock,
            });
        }
        Err(io_err(io::Error::other(
            "the lock file kept being removed while this publisher took it",
        )))
    }

    /// Put a fresh FIFO at the name (over what is there), and make it the current one.
    fn replace(&mut self) -> io::Result<()> {
        let new = self.paths.new.clone();
        // Left by a killed publisher or a failed attempt; the name is this publisher's.
        let _ = rustix::fs::unlink(&new);
        rustix::fs::mkfifoat(rustix::fs::CWD, &new, Mode::from_raw_mode(0o600))?;
        let made = self.finish_new(&new);
        if made.is_err() {
            let _ = rustix::fs::unlink(&new);
        }
        made
    }

    /// Set the new FIFO's mode, check it, watch it, and rename it over the name.
    fn finish_new(&mut self, new: &Path) -> io::Result<()> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Opened (for reading: a FIFO that no writer has is opened at once) to set its mode
        // through the descriptor, not through a name someone could swap for a link.
        let fd = match rustix::fs::open(new, flags, Mode::empty()) {
            Ok(fd) => fd,
            // A umask that took the owner's read bit: set the mode through the name first.
            Err(Errno::ACCESS) => {
                rustix::fs::chmod(new, Mode::from_raw_mode(self.mode))?;
                rustix::fs::open(new, flags, Mode::empty())?
            }
            Err(e) => return Err(e.into()),
        };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(self.mode))?;
        let st = rustix::fs::fstat(&fd)?;
        drop(fd);
        if FileType::from_raw_mode(st.st_mode) != FileType::Fifo {
            return Err(io::Error::other(
                "the new FIFO was replaced by another file",
            ));
        }
        // Watched before it has the name, so that no reader's open goes untold.
        let mut wd = None;
        if let Some(watch) = &self.watch {
            // A reader's open; and the FIFO removed or renamed by someone (a cleaner of old
            // files, say), which the next look repairs.
            use rustix::fs::inotify::WatchFlags;
            let events = WatchFlags::OPEN | WatchFlags::DELETE_SELF | WatchFlags::MOVE_SELF;
            match rustix::fs::inotify::add_watch(watch, new, events) {
                Ok(w) => wd = Some(w),
                // Out of watches: look every few milliseconds instead.
                Err(_) => self.watch = None,
            }
        }
        rustix::fs::rename(new, &self.paths.fifo)?;
        self.current = Some(file_id(&st));
        let old = std::mem::replace(&mut self.wd, wd);
        if let (Some(watch), Some(old)) = (&self.watch, old) {
            // The same inode gives the same watch: keep it.
            if Some(old) != wd {
                let _ = rustix::fs::inotify::remove_watch(watch, old);
            }
        }
        Ok(())
    }

    /// The write end of the current FIFO if a reader has it, after the name was given a fresh
    /// FIFO (so that nobody else opens this one). `None` while no reader is there.
    fn open_writer(&mut self) -> Option<OwnedFd> {
        let flags = OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(&self.paths.fifo, flags, Mode::empty()) {
            Ok(fd) => fd,
            // No reader.
            Err(Errno::NXIO) => return None,
            // The FIFO was removed, or a link put in its place: the name is this
            // publisher's while it holds the lock, give it a FIFO again.
            Err(Errno::NOENT) | Err(Errno::LOOP) => {
                let _ = self.replace();
                return None;
            }
            Err(_) => return None,
        };
        let ours = rustix::fs::fstat(&fd).is_ok_and(|st| {
            FileType::from_raw_mode(st.st_mode) == FileType::Fifo
                && Some(file_id(&st)) == self.current
        });
        if !ours {
            // Another file at the name (this publisher writes only to FIFOs it made).
            drop(fd);
            let _ = self.replace();
            return None;
        }
        // The next subscriber gets a fresh FIFO; if there is none to give, this one is not
        // used (it would be shared with whoever opens the name next).
        self.replace().ok()?;
        Some(fd)
    }

    /// The greeter's loop: connect each reader that opens the FIFO, until `stop` is readable.
    fn serve(mut self, stop: &OwnedFd, hello: &Arc<[u8]>, arrivals: &Arrivals) {
        loop {
            if let Some(fd) = self.open_writer() {
                // Handed over first, greeted second: see `Greeting`.
                let link = FifoLink {
                    fd: Arc::new(fd),
                    greeting: Arc::new(Greeting {
                        state: Mutex::new(Greeted::Not),
                        frame: hello.clone(),
                    }),
                    greeted: false,
                };
                let (fd, greeting) = (link.fd.clone(), link.greeting.clone());
                arrivals.push(Box::new(link));
                greeting.send(fd.as_fd());
                continue;
            }
            let timeout = match self.watch {
                Some(_) => None,
                None => Some(link::timespec(POLL_WITHOUT_INOTIFY)),
            };
            let watch = self.watch.as_ref().map(|w| w.as_fd());
            let mut fds = vec![rustix::event::PollFd::new(
                stop,
                rustix::event::PollFlags::IN,
            )];
            if let Some(w) = &watch {
                fds.push(rustix::event::PollFd::new(w, rustix::event::PollFlags::IN));
            }
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                // Nothing to wait with: look every few milliseconds rather than spin.
                Err(_) => std::thread::sleep(POLL_WITHOUT_INOTIFY),
            }
            if !fds[0].revents().is_empty() {
                return;
            }
            if let Some(w) = watch {
                // What the events say does not matter: any open of the FIFO is worth a look.
                let mut events = [0u8; 1024];
                while matches!(rustix::io::read(w, &mut events), Ok(n) if n > 0) {}
            }
        }
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let is = |path: &Path, id: (u64, u64)| {
            rustix::fs::lstat(path).is_ok_and(|st| file_id(&st) == id)
        };
        if let Some(id) = self.current {
            if is(&self.paths.fifo, id) {
                let _ = rustix::fs::unlink(&self.paths.fifo);
            }
        }
        if rustix::fs::lstat(&self.paths.new)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo)
        {
            let _ = rustix::fs::unlink(&self.paths.new);
        }
        // Removed while locked: a publisher that comes now makes a new file (one that opened
        // this one before sees it has no name once it has the lock, and starts again).
        if let Ok(mine) = rustix::fs::fstat(&self.lock) {
            if is(&self.paths.lock, file_id(&mine)) {
                let _ = rustix::fs::unlink(&self.paths.lock);
            }
        }
    }
}

/// A connection's greeting, written once, by whichever comes first: the greeter, right after
/// it hands the connection to the publisher, or the publisher's first write to it.
///
/// The connection is handed over before the greeting is written so that a subscriber that has
/// its greeting (its open has returned) is among the publisher's connections already: a
/// message sent after that reaches it. Greeted first and handed over second, a message sent
/// between the two would miss it.
struct Greeting {
    state: Mutex<Greeted>,
    /// The hello frame.
    frame: Arc<[u8]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Greeted {
    Not,
    Yes,
    /// The write failed (the reader left): the connection is dead.
    Failed,
}

impl Greeting {
    /// Write the greeting to `fd` unless it was written; returns whether it was.
    fn send(&self, fd: BorrowedFd<'_>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == Greeted::Not {
            // A fresh FIFO has room for it at once: the deadline only bounds the unexpected.
            let deadline = Instant::now() + GREET;
            *state = match link::write_all_until(fd, &self.frame, false, deadline) {
                Ok(()) => Greeted::Yes,
                Err(_) => Greeted::Failed,
            };
        }
        *state == Greeted::Yes
    }
}

/// The write end of one connection's FIFO, greeted before its first frame.
struct FifoLink {
    fd: Arc<OwnedFd>,
    greeting: Arc<Greeting>,
    /// Whether this side knows the greeting is written (then no lock is taken).
    greeted: bool,
}

impl Link for FifoLink {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if !self.greeted {
            if !self.greeting.send(self.fd.as_fd()) {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.greeted = true;
        }
        rustix::io::write(&*self.fd, bytes).map_err(io::Error::from)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A thread that greets each subscriber that opens the FIFO and hands its connection to the
/// publisher's fan-out. Stopped and joined when dropped; the names go with it.
struct Greeter {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Greeter {
    fn spawn(names: Names, hello: &Hello, arrivals: Arc<Arrivals>) -> io::Result<Self> {
        let payload = hello.encode();
        let mut frame = vec![0u8; super::frame::frame_len(payload.len())];
        let header = FrameHeader::control(
            FrameKind::Hello,
            payload.len() as u32,
            super::frame::type_hash(&hello.fingerprint),
        );
        super::frame::encode_frame(&mut frame, &header, &payload);
        let hello: Arc<[u8]> = frame.into();
        let (stop_read, stop_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("shmbus-fifo".into())
            .spawn(move || names.serve(&stop_read, &hello, &arrivals))?;
        Ok(Self {
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        // Closing the pipe's write end makes its read end readable (end of file).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The subscriber's side.

/// Read the publisher's hello frame from a FIFO opened before any writer had it, waiting until
/// `deadline`, and checking on the way that the publisher (its lock) is alive.
fn read_greeting(
    fd: BorrowedFd<'_>,
    lock: BorrowedFd<'_>,
    topic: &str,
    deadline: Instant,
) -> Result<Vec<u8>, OpenError> {
    let io_err = |source: io::Error| OpenError::Transport {
        topic: topic.into(),
        source,
    };
    let mut got = Vec::with_capacity(super::frame::frame_len(HELLO_LEN));
    let mut check_at = Instant::now() + LIVENESS_CHECK;
    loop {
        let want = match frame_at(&got, HELLO_LEN as u32) {
            Err(e) => {
                return Err(OpenError::Refused {
                    topic: topic.into(),
                    reason: format!("the FIFO's greeting: {e}"),
                })
            }
            Ok(None) => HEADER_LEN,
            Ok(Some((_, len))) if got.len() >= len => return Ok(got),
            Ok(Some((_, len))) => len,
        };
        let no_writer = match read_some(fd, &mut got, want).map_err(io_err)? {
            Got::Bytes(_) => continue,
            // Before the greeting, the end of the stream means that no writer has the FIFO
            // yet; in the middle of it, a publisher that died.
            Got::End if got.is_empty() => true,
            Got::End => {
                return Err(OpenError::Refused {
                    topic: topic.into(),
                    reason: "the publisher hung up in the middle of its greeting".into(),
                })
            }
            Got::Nothing => false,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(OpenError::NotReady {
                topic: topic.into(),
            });
        }
        if now >= check_at {
            if !is_locked(lock, PUBLISHER).map_err(io_err)? {
                return Err(OpenError::NotFound {
                    topic: topic.into(),
                });
            }
            check_at = now + LIVENESS_CHECK;
        }
        let until = deadline.min(check_at);
        if no_writer {
            // Nothing to poll for: a FIFO whose writer came and went polls as hung up at once.
            std::thread::sleep(NO_WRITER_NAP.min(until.saturating_duration_since(now)));
        } else {
            link::wait_readable(fd, Some(until)).map_err(io_err)?;
        }
    }
}

impl Transport for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn publish(&self, endpoint: &Endpoint<'_>) -> Result<Box<dyn FrameSender>, CreateError> {
        let topic = endpoint.topic;
        let io_err = |source| CreateError::Transport {
            topic: topic.into(),
            source,
        };
        let mode = mode_of(endpoint.group);
        let mut names = Names::take(self.names(endpoint), mode, topic)?;
        // Nothing at the FIFO's name, or a FIFO of this user's that a killed publisher left
        // (the lock was free): it is replaced. Anything else is refused.
        match rustix::fs::lstat(&names.paths.fifo) {
            Err(Errno::NOENT) => {}
            Ok(st) => check_stat(&st, FileType::Fifo, 0o7777, &names.paths.fifo_name)
                .map_err(CreateError::Segment)?,
            Err(e) => return Err(io_err(e.into())),
        }
        names.replace().map_err(io_err)?;
        let arrivals = Arc::new(Arrivals::default());
        let greeter = Greeter::spawn(names, &endpoint.hello, arrivals.clone()).map_err(io_err)?;
        Ok(Box::new(FanOut::new(arrivals, Box::new(greeter))))
    }

    fn subscribe(
        &self,
        endpoint: &Endpoint<'_>,
        timeout: Duration,
    ) -> Result<Box<dyn FrameReceiver>, OpenError> {
        let topic = endpoint.topic;
        let io_err = |source| OpenError::Transport {
            topic: topic.into(),
            source,
        };
        if endpoint.history > 0 {
            return Err(OpenError::Unsupported {
                transport: self.name(),
                what: "history (a FIFO delivers what is sent after the subscriber opens)".into(),
            });
        }
        let deadline = Instant::now() + timeout;
        let paths = self.names(endpoint);
        let allowed = mode_of(endpoint.group);
        let not_found = || OpenError::NotFound {
            topic: topic.into(),
        };

        // The lock file: a live publisher, and the subscriber's place free.
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let lock = match rustix::fs::open(&paths.lock, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Err(not_found()),
            Err(e) => return Err(OpenError::Segment(open_error(&paths.lock_name, e))),
        };
        let st = rustix::fs::fstat(&lock).map_err(|e| io_err(e.into()))?;
        check_stat(&st, FileType::RegularFile, allowed, &paths.lock_name)
            .map_err(OpenError::Segment)?;
        if !is_locked(lock.as_fd(), PUBLISHER).map_err(io_err)? {
            // A killed publisher's names.
            return Err(not_found());
        }
        // A subscriber that has just left may still hold its lock for an instant: through a
        // copy of its descriptor in a child that another thread of its process forked and that
        // has not yet run `exec` (which closes it). So a held lock is tried again for a moment
        // before this subscriber is refused.
        let grace = Instant::now() + LOCK_GRACE.min(timeout);
        while !try_lock(lock.as_fd(), SUBSCRIBER).map_err(io_err)? {
            if Instant::now() >= grace {
                return Err(OpenError::TooManySubscribers {
                    topic: topic.into(),
                    max: 1,
                    pids: live_pid_at(lock.as_fd(), SUBSCRIBER),
                });
            }
            std::thread::sleep(NO_WRITER_NAP);
        }
        // For the error a second subscriber gets; nothing depends on it.
        let _ = write_identity(lock.as_fd(), SUBSCRIBER);

        // The FIFO: looked at before it is opened (opening a device can do things), and the
        // one opened checked to be the one looked at.
        let st = match rustix::fs::lstat(&paths.fifo) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(not_found()),
            Err(e) => return Err(io_err(e.into())),
        };
        check_stat(&st, FileType::Fifo, allowed, &paths.fifo_name).map_err(OpenError::Segment)?;
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::open(&paths.fifo, flags, Mode::empty()) {
            Ok(fd) => fd,
            // Replaced meanwhile (the publisher made a fresh one): try again.
            Err(Errno::NOENT) => {
                return Err(OpenError::NotReady {
                    topic: topic.into(),
                })
            }
            Err(e) => return Err(OpenError::Segment(open_error(&paths.fifo_name, e))),
        };
        let opened = rustix::fs::fstat(&fd).map_err(|e| io_err(e.into()))?;
        if file_id(&opened) != file_id(&st) {
            return Err(OpenError::NotReady {
                topic: topic.into(),
            });
        }
        check_stat(&opened, FileType::Fifo, allowed, &paths.fifo_name)
            .map_err(OpenError::Segment)?;

        let hello = read_greeting(fd.as_fd(), lock.as_fd(), topic, deadline)?;
        let source = StreamSource::new(Arc::new(fd), hello, Some(lock));
        Ok(Box::new(Framed::open(source, endpoint, deadline)?))
    }
}
