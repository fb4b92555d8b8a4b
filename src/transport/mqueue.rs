//! POSIX message queues (`mq_open`): one publisher and one subscriber on a host, with message
//! boundaries kept by the kernel, and neither a socket nor shared memory. Each frame is one
//! queue message.
//!
//! A topic has two queues in the kernel's message-queue namespace (one per IPC namespace; not a
//! directory, so not found with a path):
//!
//! - `/<prefix><topic>`, the data queue: the publisher's frames, read by the subscriber.
//! - `/<prefix><topic>:join`, the join queue: a subscriber's knock (its pid, identity and a
//!   fresh nonce), read by a thread of the publisher's. A `:` is never in a topic or a prefix,
//!   so this name is no other topic's.
//!
//! A queue has no ends: the kernel tells neither side that the other has gone, and a write to a
//! queue nobody reads fills it. Who is there is told by open-file-description locks
//! (`F_OFD_SETLK`) on the data queue, which the kernel drops with the last descriptor of the
//! process that took them, whatever way it ends:
//!
//! | lock (byte) | held by | for |
//! |---|---|---|
//! | 0, the publisher's | the publisher, for its whole life | a subscriber's liveness check; a creator tells a live queue from a dead one's leftovers |
//! | 1, the claim | whoever unlinks the names, while it does | one process at a time unlinks them, and only those of a queue no publisher holds |
//! | 2, the seat | the subscriber | one subscriber at a time; its publisher stops waiting for one that let go |
//! | 2^32 + pid | the subscriber | its pid, for the error a second subscriber gets, and to match its knock |
//!
//! The greeting: a subscriber takes the seat and knocks; the publisher's thread checks that the
//! knock comes from the seat's holder, answers with a hello frame whose sequence field carries
//! the knock's nonce, and from then on the publisher sends its frames to the data queue (before
//! that, and once the seat is let go, messages to no subscriber are dropped, as on every
//! transport). The subscriber skips what the queue holds before its own hello (what an earlier
//! subscriber left unread).
//!
//! Sizes come from the system: a message may be `/proc/sys/fs/mqueue/msgsize_max` bytes, and
//! a topic whose framed message is longer is refused when it is created; the queue holds
//! `msg_max` messages, within a quarter of the user's `RLIMIT_MSGQUEUE` (or, when that holds
//! none, all of it). The topic's capacity does not set it: the kernel's limit does (10 by
//! default; a Block publisher waits while 10 are unread).
//!
//! This module must never block on a queue (every descriptor is `O_NONBLOCK`; waits are polls
//! with deadlines), trust a byte read from one (a knock and a frame are checked whole before
//! use), unlink a name without holding the claim on the queue it names, or wait on a peer that
//! is gone.

use super::frame::{self, FrameHeader, FrameKind, Hello, HEADER_LEN, HELLO_LEN};
use super::link::{self, Arrivals, FanOut, Framed, Got, Link, Source};
use super::{Endpoint, FrameReceiver, FrameSender, Transport};
use crate::error::{CreateError, OpenError};
use crate::segment::{NameError, SegmentError, MAX_SEGMENT_NAME_LEN};
use crate::sync::{AtomicU64, Ordering};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::mqueue::{self as mq, MQ_OFlag, MqAttr, MqdT};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The POSIX message-queue transport: one publisher and one subscriber per topic, each frame
/// one queue message, on one host, with neither sockets nor shared memory.
///
/// - Names: `/<prefix><topic>` (the frames) and `/<prefix><topic>:join` (a subscriber's
///   knock), in the kernel's message-queue namespace. Mode 0600, or 0660 with
///   [`BusBuilder::group_access`](crate::BusBuilder::group_access), whatever the umask.
/// - One subscriber: a second gets [`OpenError::TooManySubscribers`](crate::OpenError::TooManySubscribers)
///   with the first one's pid. A subscriber receives what is sent after it joined.
/// - Sizes from the system: a framed message must fit `/proc/sys/fs/mqueue/msgsize_max`
///   ([`CreateError::MessageTooLarge`](crate::CreateError::MessageTooLarge) otherwise); the
///   queue holds `msg_max` messages (10 by default), within a quarter of the user's
///   `RLIMIT_MSGQUEUE`, whatever capacity the publisher asked for. A limit that refuses the
///   queue is [`CreateError::LimitReached`](crate::CreateError::LimitReached).
/// - Liveness both ways, from locks the kernel drops with a process: a subscriber reports
///   [`RecvError::PublisherGone`](crate::RecvError::PublisherGone), and a Block publisher stops
///   waiting for a subscriber that died or left. A dead publisher's queues are taken over by
///   the next publisher of the topic, removed by a subscriber that outlived it, or by
///   [`MessageQueue::remove_stale`].
///
/// ```
/// use shmbus::transport::MessageQueue;
/// use std::time::Duration;
///
/// let bus = shmbus::Bus::builder()
///     .prefix("doctest-mqueue.")
///     .transport(MessageQueue::new())
///     .build()?;
/// let mut publisher = bus.publisher::<u64>("ticks").create()?;
/// // In another process (here the same one, for the example):
/// let mut subscriber = bus.subscriber::<u64>("ticks").open()?;
/// assert!(publisher.wait_for_subscribers(1, Duration::from_secs(5)));
/// publisher.send_timeout(42, Duration::from_secs(5))?;
/// let tick = subscriber.recv_timeout(Duration::from_secs(5))?.expect("a message");
/// assert_eq!(*tick, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MessageQueue;

impl MessageQueue {
    /// The transport: its queues live in the kernel's message-queue namespace, named
    /// `/<prefix><topic>` (and `/<prefix><topic>:join`).
    pub fn new() -> Self {
        Self
    }

    /// Remove the queues a publisher of topic `topic` (of a bus with prefix `prefix`) left
    /// when it died: the kernel keeps a queue until its name is unlinked, and a dead process
    /// cannot. Queues of a live publisher, or another user's, are kept. A new publisher of the
    /// topic takes such leftovers over by itself; this is for a topic that is not coming back.
    /// Returns whether there was something to remove.
    ///
    /// ```
    /// let removed = shmbus::transport::MessageQueue::remove_stale("doctest-mqueue.", "gone")?;
    /// assert!(!removed);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// An invalid name (`InvalidInput`), or the system's error.
    pub fn remove_stale(prefix: &str, topic: &str) -> io::Result<bool> {
        let names = Names::new(prefix, topic)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let queue = match Mqd::open(&names.data, MQ_OFlag::O_RDWR, 0, None) {
            Ok(q) => q,
            Err(Errno::ENOENT) | Err(Errno::EACCES) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if queue.owner()? != rustix::process::geteuid().as_raw() {
            return Ok(false);
        }
        Ok(unlink_orphan(&queue, &names)? == Orphan::Removed)
    }
}

/// Which system limit refused a topic's message queue
/// ([`CreateError::LimitReached`](crate::CreateError::LimitReached)).
///
/// ```
/// use shmbus::transport::QueueLimit;
/// let limit = QueueLimit::QueuesMax { max: 256 };
/// assert!(limit.to_string().contains("queues_max"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueLimit {
    /// The bytes of message queues one user may have (`RLIMIT_MSGQUEUE`), counted over all of
    /// the user's queues: raise it (`ulimit -q`), or close other topics.
    #[error(
        "the user's RLIMIT_MSGQUEUE of {limit} bytes cannot hold a queue of {needed} bytes \
         beside the user's other queues"
    )]
    MsgQueueBytes {
        /// The limit, in bytes.
        limit: u64,
        /// What the queue takes, as this crate counts the kernel's charge (an upper bound).
        needed: u64,
    },
    /// The message queues the whole system may have (`/proc/sys/fs/mqueue/queues_max`).
    #[error("the system's limit of {max} message queues (fs.mqueue.queues_max) is reached")]
    QueuesMax {
        /// The limit.
        max: u64,
    },
}

// ---------------------------------------------------------------------------------------------
// The system's limits.

/// Linux's defaults, taken when `/proc/sys/fs/mqueue` cannot be read.
const DEFAULT_MSG_MAX: u64 = 10;
const DEFAULT_MSGSIZE_MAX: u64 = 8192;
const DEFAULT_QUEUES_MAX: u64 = 256;
/// What the kernel charges to `RLIMIT_MSGQUEUE` for each message of a queue's depth beyond its
/// bytes (a `struct msg_msg` and a priority-tree node, 48 bytes each on 64-bit Linux), rounded
/// up so that a queue counted with it surely fits.
const KERNEL_MSG_OVERHEAD: u64 = 128;
/// A data queue takes at most this fraction (1/4) of the user's `RLIMIT_MSGQUEUE`, so that a
/// few topics of the largest messages fit beside each other.
const RLIMIT_SHARE: u64 = 4;

/// The limits that bound a topic's queues, read when a publisher creates them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    msg_max: u64,
    msgsize_max: u64,
    queues_max: u64,
    /// The user's `RLIMIT_MSGQUEUE` (soft) in bytes; `None` when unlimited.
    rlimit: Option<u64>,
}

impl Limits {
    fn read() -> Self {
        let read = |name: &str, default: u64| {
            std::fs::read_to_string(format!("/proc/sys/fs/mqueue/{name}"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
        };
        Self {
            msg_max: read("msg_max", DEFAULT_MSG_MAX),
            msgsize_max: read("msgsize_max", DEFAULT_MSGSIZE_MAX),
            queues_max: read("queues_max", DEFAULT_QUEUES_MAX),
            rlimit: rustix::process::getrlimit(rustix::process::Resource::Msgqueue).current,
        }
    }

    /// What a queue of `depth` messages of `msgsize` bytes costs against `RLIMIT_MSGQUEUE`.
    fn charge(depth: u64, msgsize: u64) -> u64 {
        depth.saturating_mul(msgsize.saturating_add(KERNEL_MSG_OVERHEAD))
    }

    fn join_depth(&self) -> u64 {
        JOIN_DEPTH.min(self.msg_max)
    }

    fn join_charge(&self) -> u64 {
        Self::charge(self.join_depth(), KNOCK_LEN as u64)
    }

    /// The depth of a data queue of `msgsize`-byte messages: `msg_max`, within a quarter of
    /// the user's `RLIMIT_MSGQUEUE` beside the join queue (or, when that holds no message, one
    /// message if the whole limit holds it). 0 when not even one fits.
    fn depth(&self, msgsize: u64) -> u64 {
        let per_message = msgsize.saturating_add(KERNEL_MSG_OVERHEAD);
        let fit = |budget: u64| budget.saturating_sub(self.join_charge()) / per_message;
        let by_rlimit = match self.rlimit {
            None => u64::MAX,
            Some(r) => fit(r / RLIMIT_SHARE).max(fit(r).min(1)),
        };
        self.msg_max.min(by_rlimit)
    }
}

// ---------------------------------------------------------------------------------------------
// Queue descriptors and their locks.

/// A message-queue descriptor, closed when dropped (nix's `MqdT` is not). On Linux it is a
/// file descriptor: polled, `fstat`ed, `fchmod`ed and locked like one.
#[derive(Debug)]
struct Mqd(MqdT);

/// The lock bytes of a data queue (see the module's table).
const PUBLISHER: i64 = 0;
const CLAIM: i64 = 1;
const SEAT: i64 = 2;
const TAG_BASE: i64 = 1 << 32;
const TAG_SPAN: i64 = 1 << 32;

/// How long a claim on a queue's names is waited for: another process holds it only while it
/// looks at the queue and unlinks its names.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

fn lock_range(kind: libc::c_int, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

impl Mqd {
    /// `mq_open`, always non-blocking and close-on-exec.
    fn open(name: &str, flags: MQ_OFlag, mode: u32, attr: Option<&MqAttr>) -> nix::Result<Self> {
        mq::mq_open(
            name,
            flags | MQ_OFlag::O_NONBLOCK | MQ_OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(mode as _),
            attr,
        )
        .map(Mqd)
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    fn send(&self, bytes: &[u8]) -> nix::Result<()> {
        mq::mq_send(&self.0, bytes, 0)
    }

    fn receive(&self, buf: &mut [u8]) -> nix::Result<usize> {
        let mut priority = 0;
        mq::mq_receive(&self.0, buf, &mut priority)
    }

    /// The largest message of the queue, in bytes.
    fn msgsize(&self) -> io::Result<u64> {
        let attr = mq::mq_getattr(&self.0)?;
        Ok(u64::try_from(attr.msgsize()).unwrap_or(0))
    }

    /// The queue's device and inode: which queue it is, whatever name it has now.
    fn id(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstat(self.fd())?;
        Ok((st.st_dev, st.st_ino))
    }

    fn owner(&self) -> io::Result<u32> {
        Ok(rustix::fs::fstat(self.fd())?.st_uid)
    }

    /// Refuse a queue of another user, or one whose mode allows more than `allowed`.
    fn check_owner(&self, name: &str, allowed: u32) -> Result<(), OpenError> {
        let st = rustix::fs::fstat(self.fd()).map_err(|e| {
            OpenError::Segment(SegmentError::Io {
                op: "fstat",
                name: name.into(),
                source: e.into(),
            })
        })?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me {
            return Err(OpenError::Segment(SegmentError::NotOwner {
                name: name.into(),
                owner: st.st_uid,
                me,
            }));
        }
        let mode = st.st_mode & 0o7777;
        if mode & !allowed != 0 {
            return Err(OpenError::Segment(SegmentError::BadMode {
                name: name.into(),
                mode,
                allowed,
            }));
        }
        Ok(())
    }

    /// Take a write lock on `start..start + len` if no other description holds one there.
    fn try_lock(&self, start: i64, len: i64) -> io::Result<bool> {
        match fcntl(
            self.fd(),
            FcntlArg::F_OFD_SETLK(&lock_range(libc::F_WRLCK, start, len)),
        ) {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) | Err(Errno::EACCES) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn unlock(&self, start: i64, len: i64) {
        let _ = fcntl(
            self.fd(),
            FcntlArg::F_OFD_SETLK(&lock_range(libc::F_UNLCK, start, len)),
        );
    }

    /// Where a lock held by another description starts in `start..start + len`, if one is.
    fn held_at(&self, start: i64, len: i64) -> io::Result<Option<i64>> {
        let mut lock = lock_range(libc::F_WRLCK, start, len);
        fcntl(self.fd(), FcntlArg::F_OFD_GETLK(&mut lock))?;
        Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_start))
    }

    /// Whether a live publisher holds the queue (another description than this one).
    fn publisher_held(&self) -> io::Result<bool> {
        Ok(self.held_at(PUBLISHER, 1)?.is_some())
    }

    /// Whether a subscriber holds the seat.
    fn seat_held(&self) -> io::Result<bool> {
        Ok(self.held_at(SEAT, 1)?.is_some())
    }

    /// The pid the seat's holder tagged itself with.
    fn seat_pid(&self) -> Option<u32> {
        let at = self.held_at(TAG_BASE, TAG_SPAN).ok()??;
        u32::try_from(at - TAG_BASE).ok()
    }

    /// Take the claim on the queue's names, waiting up to [`CLAIM_WAIT`] for another holder.
    fn claim(&self) -> io::Result<bool> {
        let deadline = Instant::now() + CLAIM_WAIT;
        loop {
            if self.try_lock(CLAIM, 1)? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether `name` names this queue now.
    fn is_named(&self, name: &str) -> bool {
        let Ok(named) = Mqd::open(name, MQ_OFlag::O_RDONLY, 0, None) else {
            return false;
        };
        matches!((self.id(), named.id()), (Ok(a), Ok(b)) if a == b)
    }
}

impl Drop for Mqd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is this value's own (from `mq_open`), open until now and not
        // used after: the `OwnedFd` closes it, which is what `mq_close` does on Linux.
        drop(unsafe { OwnedFd::from_raw_fd(self.0.as_raw_fd()) });
    }
}

/// The names of a topic's two queues.
#[derive(Clone, Debug)]
struct Names {
    data: String,
    join: String,
}

const JOIN_SUFFIX: &str = ":join";

impl Names {
    fn new(prefix: &str, topic: &str) -> Result<Self, NameError> {
        crate::segment::validate_name(prefix)?;
        crate::segment::validate_name(topic)?;
        let name = format!("{prefix}{topic}");
        // The join queue's name is the longer: it must fit the kernel's NAME_MAX too.
        let len = name.len() + JOIN_SUFFIX.len();
        if len > MAX_SEGMENT_NAME_LEN {
            return Err(NameError::TooLongWithPrefix { len });
        }
        Ok(Self {
            data: format!("/{name}"),
            join: format!("/{name}{JOIN_SUFFIX}"),
        })
    }

    fn of(endpoint: &Endpoint<'_>) -> Result<Self, NameError> {
        Self::new(endpoint.prefix, endpoint.topic)
    }
}

/// What [`unlink_orphan`] found.
#[derive(Debug, PartialEq, Eq)]
enum Orphan {
    /// No live publisher held the queue, and its names are gone now.
    Removed,
    /// A live publisher holds it.
    Live,
    /// The name is another queue's now (taken over, or removed).
    Moved,
    /// Another process held the claim for longer than [`CLAIM_WAIT`].
    Busy,
}

/// Unlink the names of `queue` if no publisher other than this description holds it and they
/// still name it: under the claim, so that no two processes unlink them, and none unlinks a
/// name that a new publisher has just taken over. The join queue goes first: a join queue is
/// never left without its data queue.
fn unlink_orphan(queue: &Mqd, names: &Names) -> io::Result<Orphan> {
    if !queue.claim()? {
        return Ok(Orphan::Busy);
    }
    let outcome = (|| {
        if queue.publisher_held()? {
            return Ok(Orphan::Live);
        }
        if !queue.is_named(&names.data) {
            return Ok(Orphan::Moved);
        }
        for name in [&names.join, &names.data] {
            match mq::mq_unlink(name.as_str()) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        Ok(Orphan::Removed)
    })();
    queue.unlock(CLAIM, 1);
    outcome
}

// ---------------------------------------------------------------------------------------------
// The knock: what a subscriber sends to the join queue.

/// Bytes of a knock: `SHBJ`, version 1, three zero bytes, the pid (u32), four zero bytes, the
/// identity (u64), the nonce (u64); little-endian.
const KNOCK_LEN: usize = 32;
const KNOCK_MAGIC: [u8; 4] = *b"SHBJ";
/// Messages the join queue holds (knocks of subscribers that died before they were read
/// take room until the publisher's thread reads them).
const JOIN_DEPTH: u64 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Knock {
    pid: u32,
    identity: u64,
    nonce: u64,
}

impl Knock {
    fn encode(&self) -> [u8; KNOCK_LEN] {
        let mut out = [0u8; KNOCK_LEN];
        out[0..4].copy_from_slice(&KNOCK_MAGIC);
        out[4] = 1;
        out[8..12].copy_from_slice(&self.pid.to_le_bytes());
        out[16..24].copy_from_slice(&self.identity.to_le_bytes());
        out[24..32].copy_from_slice(&self.nonce.to_le_bytes());
        out
    }

    /// A knock from its bytes, every one checked.
    fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; KNOCK_LEN] = bytes.try_into().ok()?;
        let zero = |r: std::ops::Range<usize>| bytes[r].iter().all(|&b| b == 0);
        if bytes[0..4] != KNOCK_MAGIC || bytes[4] != 1 || !zero(5..8) || !zero(12..16) {
            return None;
        }
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        Some(Self {
            pid: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            identity: u64_at(16),
            nonce: u64_at(24),
        })
    }
}

/// A number no other knock on this host is likely to carry: it pairs a subscriber with the
/// hello that answers it (not a secret: a peer that can open the queues is trusted as far).
fn fresh_nonce() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Relaxed: only the value's uniqueness matters.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // splitmix64's finaliser over the process's identity, the time and the count.
    let mut z =
        crate::segment::my_identity() ^ t.rotate_left(29) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------------
// The publisher's side.

/// How many times a publisher tries to create its queue while other processes take names
/// over under it, before it calls the topic taken.
const CREATE_TRIES: u32 = 8;
/// How long the publisher's thread waits for room for a hello in the data queue (the new
/// subscriber is reading what was left in it meanwhile).
const GREET_WAIT: Duration = Duration::from_secs(1);
/// How often a wait for room looks at whether the subscriber is still there.
const PEER_CHECK: Duration = Duration::from_millis(10);

/// The publisher's data queue, shared by its links and its thread.
#[derive(Debug)]
struct Queue {
    mqd: Mqd,
    /// The greeting now served: a link writes only while it is its own. The thread moves it on
    /// for each subscriber it greets, which ends the link of the one before.
    session: AtomicU64,
}

/// The link to the subscriber of one greeting.
struct QueueLink {
    queue: Arc<Queue>,
    session: u64,
    /// The subscriber's pid, as its knock and its tag on the queue say.
    pid: u32,
    /// The subscriber's identity, from its knock: asked when the locks cannot be.
    identity: u64,
}

impl QueueLink {
    fn current(&self) -> bool {
        // Relaxed: it guards no memory; the order of the frames is the queue's. A frame in flight
        // when the next subscriber is greeted lands after its hello, and that subscriber takes it
        // as its first message.
        self.queue.session.load(Ordering::Relaxed) == self.session
    }
}

impl Link for QueueLink {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if !self.current() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        // EAGAIN (a full queue) reads as `WouldBlock`, EINTR as `Interrupted`.
        self.queue.mqd.send(bytes).map_err(io::Error::from)?;
        Ok(bytes.len())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.queue.mqd.fd()
    }

    fn watches_peer(&self) -> bool {
        true
    }

    fn peer_gone(&self) -> bool {
        if !self.current() {
            return true;
        }
        // The seat let go, or taken by another subscriber (which has not knocked yet).
        match self.queue.mqd.held_at(TAG_BASE, TAG_SPAN) {
            Ok(at) => at != Some(TAG_BASE + i64::from(self.pid)),
            Err(_) => !crate::segment::identity_alive(self.identity),
        }
    }
}

/// The publisher's thread that answers knocks. Stopped and joined when dropped.
struct Watcher {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn spawn(
        queue: Arc<Queue>,
        join: Mqd,
        hello: &Hello,
        arrivals: Arc<Arrivals>,
    ) -> io::Result<Self> {
        let (stop_read, stop_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let payload = hello.encode();
        let type_hash = frame::type_hash(&hello.fingerprint);
        let thread = std::thread::Builder::new()
            .name("shmbus-mq-join".into())
            .spawn(move || {
                let mut greeting = vec![0u8; frame::frame_len(HELLO_LEN)];
                let mut knock = [0u8; KNOCK_LEN];
                loop {
                    let mut fds = [
                        rustix::event::PollFd::new(&join.0, rustix::event::PollFlags::IN),
                        rustix::event::PollFd::new(&stop_read, rustix::event::PollFlags::IN),
                    ];
                    match rustix::event::poll(&mut fds, None) {
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(_) => return,
                    }
                    if !fds[1].revents().is_empty() {
                        return;
                    }
                    loop {
                        match join.receive(&mut knock) {
                            Ok(n) => {
                                let Some(k) = Knock::decode(&knock[..n]) else {
                                    continue;
                                };
                                let mut header = FrameHeader::control(
                                    FrameKind::Hello,
                                    HELLO_LEN as u32,
                                    type_hash,
                                );
                                header.seq = k.nonce;
                                frame::encode_frame(&mut greeting, &header, &payload);
                                greet(&queue, &k, &greeting, &stop_read, &arrivals);
                            }
                            Err(Errno::EINTR) => {}
                            Err(Errno::EAGAIN) => break,
                            Err(_) => return,
                        }
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }
}

/// Answer `knock` with `greeting` (its hello) if it comes from the seat's holder, and hand
/// its link to the publisher. The link joins the arrivals *before* the hello is sent
/// ([`Arrivals::admit`]): a subscriber that has read its hello has returned from its open, and
/// a message its publisher sends from then on must reach it (joined after, it would go to
/// nobody: a conformance test caught that).
///
/// While it sends, a publisher that takes its arrivals waits on their lock: for a moment, or,
/// when an earlier subscriber left the queue full, while the new one reads what was left (at
/// most [`GREET_WAIT`]).
fn greet(queue: &Arc<Queue>, knock: &Knock, greeting: &[u8], stop: &OwnedFd, arrivals: &Arrivals) {
    // A knock of a subscriber that has gone since (or of a process that never took the seat).
    if queue.mqd.seat_pid() != Some(knock.pid) {
        return;
    }
    // Relaxed: see `QueueLink::current`. From here on, the earlier subscriber's link sends
    // nothing more.
    let session = queue.session.fetch_add(1, Ordering::Relaxed) + 1;
    let link = QueueLink {
        queue: queue.clone(),
        session,
        pid: knock.pid,
        identity: knock.identity,
    };
    arrivals.admit(Box::new(link), |_| send_greeting(queue, greeting, stop));
}

/// Put `greeting` in the data queue, waiting up to [`GREET_WAIT`] for room while the seat is
/// held; whether it went.
fn send_greeting(queue: &Queue, greeting: &[u8], stop: &OwnedFd) -> bool {
    let deadline = Instant::now() + GREET_WAIT;
    loop {
        match queue.mqd.send(greeting) {
            Ok(()) => return true,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => {}
            Err(_) => return false,
        }
        if Instant::now() >= deadline || !matches!(queue.mqd.seat_held(), Ok(true)) {
            return false;
        }
        let mut fds = [
            rustix::event::PollFd::new(&queue.mqd.0, rustix::event::PollFlags::OUT),
            rustix::event::PollFd::new(stop, rustix::event::PollFlags::IN),
        ];
        let _ = rustix::event::poll(&mut fds, Some(&link::timespec(PEER_CHECK)));
        if !fds[1].revents().is_empty() {
            return false;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Closing the pipe's write end makes its read end readable (end of file).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a publisher's fan-out keeps until it goes: the thread (stopped first), then the names
/// (unlinked), then the queue.
struct Guard {
    watcher: Option<Watcher>,
    queue: Arc<Queue>,
    names: Names,
}

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.watcher.take());
        let _ = unlink_orphan(&self.queue.mqd, &self.names);
    }
}

/// The error for a failed `mq_open` at create.
fn create_error(e: Errno, topic: &str, limits: &Limits, needed: u64) -> CreateError {
    let topic = topic.to_string();
    match (e, limits.rlimit) {
        // EMFILE is also the process's descriptor limit: that one, if a descriptor cannot be
        // had either.
        (Errno::EMFILE, Some(limit)) if !out_of_descriptors() => CreateError::LimitReached {
            topic,
            limit: QueueLimit::MsgQueueBytes { limit, needed },
        },
        (Errno::ENOSPC, _) => CreateError::LimitReached {
            topic,
            limit: QueueLimit::QueuesMax {
                max: limits.queues_max,
            },
        },
        (e, _) => CreateError::Transport {
            topic,
            source: e.into(),
        },
    }
}

fn out_of_descriptors() -> bool {
    matches!(
        rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ),
        Err(rustix::io::Errno::MFILE)
    )
}

fn attr(depth: u64, msgsize: u64) -> MqAttr {
    let member = |v: u64| mq::mq_attr_member_t::try_from(v).unwrap_or(mq::mq_attr_member_t::MAX);
    MqAttr::new(0, member(depth), member(msgsize), 0)
}

/// Create the data queue `names.data` (taking over a dead publisher's), holding its
/// publisher's lock.
fn create_data(
    names: &Names,
    topic: &str,
    mode: u32,
    depth: u64,
    msgsize: u64,
    limits: &Limits,
) -> Result<Mqd, CreateError> {
    let io_err = |source: io::Error| CreateError::Transport {
        topic: topic.into(),
        source,
    };
    let taken = || CreateError::AlreadyExists {
        topic: topic.into(),
    };
    let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR;
    for _ in 0..CREATE_TRIES {
        match Mqd::open(&names.data, flags, mode, Some(&attr(depth, msgsize))) {
            Ok(queue) => {
                // Nobody but a queue's creator takes this lock: it cannot be refused, unless
                // the descriptor cannot be locked at all.
                if !queue.try_lock(PUBLISHER, 1).map_err(io_err)? {
                    continue;
                }
                // A process that took this new queue for a dead publisher's (between the
                // create and the lock) may have unlinked it: under the claim, which such a
                // process holds from its look at the lock to its unlink, see that the name
                // is still this queue's.
                if !queue.claim().map_err(io_err)? {
                    return Err(taken());
                }
                let ours = queue.is_named(&names.data);
                queue.unlock(CLAIM, 1);
                if !ours {
                    continue;
                }
                // The umask may have taken bits away; never more than asked.
                if let Err(e) =
                    rustix::fs::fchmod(queue.fd(), rustix::fs::Mode::from_raw_mode(mode))
                {
                    let _ = mq::mq_unlink(names.data.as_str());
                    return Err(io_err(e.into()));
                }
                return Ok(queue);
            }
            Err(Errno::EEXIST) => {
                let old = match Mqd::open(&names.data, MQ_OFlag::O_RDWR, 0, None) {
                    Ok(q) => q,
                    Err(Errno::ENOENT) => continue,
                    // Another user's queue: not ours to take over.
                    Err(Errno::EACCES) => return Err(taken()),
                    Err(e) => return Err(io_err(e.into())),
                };
                if old.owner().map_err(io_err)? != rustix::process::geteuid().as_raw() {
                    return Err(taken());
                }
                match unlink_orphan(&old, names).map_err(io_err)? {
                    Orphan::Removed | Orphan::Moved => continue,
                    Orphan::Live | Orphan::Busy => return Err(taken()),
                }
            }
            Err(Errno::ENAMETOOLONG) => {
                return Err(CreateError::InvalidName {
                    topic: topic.into(),
                    reason: NameError::TooLongWithPrefix {
                        len: names.join.len() - 1,
                    },
                })
            }
            Err(e) => {
                return Err(create_error(
                    e,
                    topic,
                    limits,
                    Limits::charge(depth, msgsize),
                ))
            }
        }
    }
    Err(taken())
}

/// Create the join queue: the data queue's name is this publisher's, so a join queue there
/// now is a dead publisher's and is replaced.
fn create_join(names: &Names, topic: &str, mode: u32, limits: &Limits) -> Result<Mqd, CreateError> {
    let io_err = |source: io::Error| CreateError::Transport {
        topic: topic.into(),
        source,
    };
    let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDONLY;
    let attr = attr(limits.join_depth(), KNOCK_LEN as u64);
    for replaced in [false, true] {
        match Mqd::open(&names.join, flags, mode, Some(&attr)) {
            Ok(join) => {
                rustix::fs::fchmod(join.fd(), rustix::fs::Mode::from_raw_mode(mode))
                    .map_err(|e| io_err(e.into()))?;
                return Ok(join);
            }
            Err(Errno::EEXIST) if !replaced => match mq::mq_unlink(names.join.as_str()) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io_err(e.into())),
            },
            Err(e) => return Err(create_error(e, topic, limits, limits.join_charge())),
        }
    }
    Err(CreateError::AlreadyExists {
        topic: topic.into(),
    })
}

impl Transport for MessageQueue {
    fn name(&self) -> &'static str {
        "mqueue"
    }

    fn publish(&self, endpoint: &Endpoint<'_>) -> Result<Box<dyn FrameSender>, CreateError> {
        let topic = endpoint.topic;
        let names = Names::of(endpoint).map_err(|reason| CreateError::InvalidName {
            topic: topic.into(),
            reason,
        })?;
        let limits = Limits::read();
        // Every frame fits a message: the largest data frame, and the hello.
        let data_frame = frame::frame_len(endpoint.hello.max_len as usize) as u64;
        let msgsize = data_frame.max(frame::frame_len(HELLO_LEN) as u64);
        if msgsize > limits.msgsize_max {
            return Err(CreateError::MessageTooLarge {
                topic: topic.into(),
                needed: msgsize,
                limit: limits.msgsize_max,
            });
        }
        let depth = limits.depth(msgsize);
        if depth == 0 {
            return Err(CreateError::LimitReached {
                topic: topic.into(),
                limit: QueueLimit::MsgQueueBytes {
                    limit: limits.rlimit.unwrap_or(0),
                    needed: Limits::charge(1, msgsize) + limits.join_charge(),
                },
            });
        }
        let mode = if endpoint.group { 0o660 } else { 0o600 };
        let queue = create_data(&names, topic, mode, depth, msgsize, &limits)?;
        let queue = Arc::new(Queue {
            mqd: queue,
            session: AtomicU64::new(0),
        });
        let arrivals = Arc::new(Arrivals::default());
        // From here on the names are this publisher's: the guard unlinks them if anything fails.
        let mut guard = Guard {
            watcher: None,
            queue: queue.clone(),
            names: names.clone(),
        };
        let join = create_join(&names, topic, mode, &limits)?;
        let watcher =
            Watcher::spawn(queue, join, &endpoint.hello, arrivals.clone()).map_err(|source| {
                CreateError::Transport {
                    topic: topic.into(),
                    source,
                }
            })?;
        guard.watcher = Some(watcher);
        Ok(Box::new(FanOut::new(arrivals, Box::new(guard))))
    }

    fn subscribe(
        &self,
        endpoint: &Endpoint<'_>,
        timeout: Duration,
    ) -> Result<Box<dyn FrameReceiver>, OpenError> {
        let topic = || endpoint.topic.to_string();
        let io_err = |source: io::Error| OpenError::Transport {
            topic: topic(),
            source,
        };
        if endpoint.history > 0 {
            return Err(OpenError::Unsupported {
                transport: self.name(),
                what: "history (a queue delivers what is sent after a subscriber joins)".into(),
            });
        }
        let names = Names::of(endpoint).map_err(|reason| OpenError::InvalidName {
            topic: topic(),
            reason,
        })?;
        let deadline = Instant::now() + timeout;
        let queue = match Mqd::open(&names.data, MQ_OFlag::O_RDWR, 0, None) {
            Ok(q) => q,
            Err(Errno::ENOENT) => return Err(OpenError::NotFound { topic: topic() }),
            Err(Errno::EACCES) => {
                return Err(OpenError::Segment(SegmentError::PermissionDenied(
                    names.data,
                )))
            }
            Err(e) => return Err(io_err(e.into())),
        };
        let allowed = if endpoint.group { 0o660 } else { 0o600 };
        queue.check_owner(&names.data, allowed)?;
        // Bounded before the receive buffer is allocated: a queue anyone made may say anything.
        let msgsize = queue.msgsize().map_err(io_err)?;
        let largest = frame::frame_len(frame::MAX_PAYLOAD as usize) as u64;
        if !(HEADER_LEN as u64..=largest).contains(&msgsize) {
            return Err(OpenError::Refused {
                topic: topic(),
                reason: format!("the queue's messages of {msgsize} bytes are no frames"),
            });
        }
        // A dead publisher's leftovers: its next publisher takes them over.
        if !queue.publisher_held().map_err(io_err)? {
            return Err(OpenError::NotFound { topic: topic() });
        }
        if !queue.try_lock(SEAT, 1).map_err(io_err)? {
            return Err(OpenError::TooManySubscribers {
                topic: topic(),
                max: 1,
                pids: queue.seat_pid().into_iter().collect(),
            });
        }
        let pid = std::process::id();
        // The pid, in the lock's place: what a knock must match, and what a second
        // subscriber is told.
        if !queue
            .try_lock(TAG_BASE + i64::from(pid), 1)
            .map_err(io_err)?
        {
            return Err(OpenError::Refused {
                topic: topic(),
                reason: "another process holds this subscriber's tag on the queue".into(),
            });
        }
        let knock = Knock {
            pid,
            identity: crate::segment::my_identity(),
            nonce: fresh_nonce(),
        };
        send_knock(&names, &queue, &knock, allowed, deadline, endpoint.topic)?;
        let source = QueueSource {
            queue,
            names,
            nonce: knock.nonce,
            greeted: false,
            scratch: vec![0u8; msgsize as usize].into_boxed_slice(),
        };
        Ok(Box::new(Framed::open(source, endpoint, deadline)?))
    }
}

// ---------------------------------------------------------------------------------------------
// The subscriber's side.

/// Knock on the topic's join queue, waiting until `deadline` for it (the publisher makes it
/// just after the data queue) and for room in it.
fn send_knock(
    names: &Names,
    queue: &Mqd,
    knock: &Knock,
    allowed: u32,
    deadline: Instant,
    topic: &str,
) -> Result<(), OpenError> {
    let io_err = |source: io::Error| OpenError::Transport {
        topic: topic.into(),
        source,
    };
    let not_ready = || OpenError::NotReady {
        topic: topic.into(),
    };
    let join = loop {
        match Mqd::open(&names.join, MQ_OFlag::O_WRONLY, 0, None) {
            Ok(join) => break join,
            Err(Errno::ENOENT) if Instant::now() < deadline => {
                if !queue.publisher_held().map_err(io_err)? {
                    return Err(OpenError::NotFound {
                        topic: topic.into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Errno::ENOENT) => return Err(not_ready()),
            Err(Errno::EACCES) => {
                return Err(OpenError::Segment(SegmentError::PermissionDenied(
                    names.join.clone(),
                )))
            }
            Err(e) => return Err(io_err(e.into())),
        }
    };
    join.check_owner(&names.join, allowed)?;
    let bytes = knock.encode();
    loop {
        match join.send(&bytes) {
            Ok(()) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(not_ready());
                }
                let mut fds = [rustix::event::PollFd::new(
                    &join.0,
                    rustix::event::PollFlags::OUT,
                )];
                let _ = rustix::event::poll(&mut fds, Some(&link::timespec(left)));
            }
            Err(e) => return Err(io_err(e.into())),
        }
    }
}

/// Messages skipped per read while looking for this subscriber's hello, so that a queue fed
/// without end cannot keep a read from returning.
const SKIP_PER_READ: usize = 64;

/// The subscriber's data queue, read one frame (one message) at a time. Holds the seat while
/// it lives.
struct QueueSource {
    queue: Mqd,
    names: Names,
    /// What the hello that answers this subscriber's knock carries.
    nonce: u64,
    greeted: bool,
    /// A receive needs room for the queue's largest message: where one lands when the
    /// caller's buffer is smaller (the hello's, or a small type's), to be copied from.
    scratch: Box<[u8]>,
}

fn received(r: nix::Result<usize>) -> io::Result<Got> {
    match r {
        // A message of 0 bytes is not the end (a queue has none): the frame check refuses it.
        Ok(n) => Ok(Got::Bytes(n)),
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(Got::Nothing),
        Err(e) => Err(e.into()),
    }
}

impl QueueSource {
    fn is_my_hello(&self, bytes: &[u8]) -> bool {
        let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
            return false;
        };
        matches!(
            FrameHeader::decode(head, HELLO_LEN as u32),
            Ok(h) if h.kind == FrameKind::Hello && h.seq == self.nonce
        )
    }

    /// Skip what the queue holds before this subscriber's hello; the hello, once found.
    fn read_hello(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        for _ in 0..SKIP_PER_READ {
            let n = match received(self.queue.receive(&mut self.scratch))? {
                Got::Bytes(n) => n,
                other => return Ok(other),
            };
            if self.is_my_hello(&self.scratch[..n]) {
                self.greeted = true;
                let k = n.min(buf.len());
                buf[..k].copy_from_slice(&self.scratch[..k]);
                return Ok(Got::Bytes(n));
            }
        }
        Ok(Got::Nothing)
    }
}

impl Source for QueueSource {
    fn datagram(&self) -> bool {
        true
    }

    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        if !self.greeted {
            return self.read_hello(buf);
        }
        if buf.len() >= self.scratch.len() {
            return received(self.queue.receive(buf));
        }
        match received(self.queue.receive(&mut self.scratch))? {
            Got::Bytes(n) => {
                // Longer than the buffer: reported as what it is, which the frame check refuses.
                let k = n.min(buf.len());
                buf[..k].copy_from_slice(&self.scratch[..k]);
                Ok(Got::Bytes(n))
            }
            other => Ok(other),
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.queue.fd())
    }

    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        link::wait_readable(self.queue.fd(), deadline)
    }

    fn end_is_told(&self) -> bool {
        // A queue has no end: the publisher's lock says whether it lives.
        false
    }

    fn publisher_alive(&self, hello: &Hello) -> bool {
        // The publisher's lock goes with its last descriptor, whatever way it ends, and reads
        // the same from another pid namespace; its identity is the fallback.
        match self.queue.publisher_held() {
            Ok(held) => held,
            Err(_) => crate::segment::identity_alive(hello.identity),
        }
    }
}

impl Drop for QueueSource {
    fn drop(&mut self) {
        // A publisher that died left its names: taken away by the subscriber that outlived it
        // (unless a new publisher has taken them over already).
        if matches!(self.queue.publisher_held(), Ok(false)) {
            let _ = unlink_orphan(&self.queue, &self.names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_knock_round_trips_and_a_bad_one_is_refused() {
        let k = Knock {
            pid: 42,
            identity: 7 << 32 | 42,
            nonce: 0xdead_beef,
        };
        assert_eq!(Knock::decode(&k.encode()), Some(k));
        for at in [0, 4, 5, 12] {
            let mut b = k.encode();
            b[at] ^= 0x40;
            assert_eq!(Knock::decode(&b), None, "byte {at}");
        }
        assert_eq!(Knock::decode(&k.encode()[..31]), None);
        assert_eq!(Knock::decode(&[0u8; 33]), None);
    }

    #[test]
    fn the_depth_fits_the_limits() {
        let limits = Limits {
            msg_max: 10,
            msgsize_max: 8192,
            queues_max: 256,
            rlimit: Some(819_200),
        };
        assert_eq!(limits.depth(144), 10);
        // A quarter of 819200 bytes, less the join queue, in messages of 8192 bytes: 24.
        let deep = Limits {
            msg_max: 1000,
            ..limits
        };
        assert_eq!(deep.depth(8192), 24);
        // Less than a quarter holds one: the whole limit is asked for one.
        let tight = Limits {
            rlimit: Some(10_000),
            ..limits
        };
        assert_eq!(tight.depth(8192), 1);
        let none = Limits {
            rlimit: Some(1000),
            ..limits
        };
        assert_eq!(none.depth(8192), 0);
        let unlimited = Limits {
            rlimit: None,
            ..deep
        };
        assert_eq!(unlimited.depth(8192), 1000);
    }

    #[test]
    fn names_leave_room_for_the_join_suffix() {
        let n = Names::new("p.", "t").unwrap();
        assert_eq!((n.data.as_str(), n.join.as_str()), ("/p.t", "/p.t:join"));
        // 127 + 123 + 5 = 255 bytes, the kernel's NAME_MAX; one more is refused.
        let prefix = "p".repeat(127);
        assert!(Names::new(&prefix, &"t".repeat(123)).is_ok());
        assert_eq!(
            Names::new(&prefix, &"t".repeat(124)).err(),
            Some(NameError::TooLongWithPrefix { len: 256 })
        );
        assert!(Names::new("a/b", "t").is_err());
    }
}
