//! One error type per operation. Refused messages are handed back; `Debug` never needs
//! `T: Debug`; messages are lower-case.

use crate::layout::{ConfigError, LayoutError, TypeFingerprint, FORMAT_VERSION};
use crate::segment::{NameError, SegmentError};
use std::fmt;

/// Why a bus could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The name prefix is not a valid name.
    #[error("invalid bus prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix.
        prefix: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// The directory of segments is not a directory, or cannot be looked at.
    #[error("cannot use {} as the directory of segments: {source}", dir.display())]
    Dir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The directory of shared-memory segments could not be listed.
    #[error("cannot list {}: {source}", dir.display())]
    List {
        /// The directory.
        dir: std::path::PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The topic name is not valid.
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidName {
        /// The name.
        topic: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// Capacity, slot size or alignment cannot be built.
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(#[from] ConfigError),
    /// The topic exists already (its publisher is alive, or left it behind).
    #[error("topic {topic:?} exists already")]
    AlreadyExists {
        /// The name.
        topic: String,
    },
    /// The shared-memory filesystem cannot hold the topic.
    #[error(
        "no room for topic {topic:?} in {}: it needs {needed} bytes, {available} are available",
        dir.display()
    )]
    NoSpace {
        /// The name.
        topic: String,
        /// The directory of segments (its filesystem is the one that is full).
        dir: std::path::PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// Another failure of the segment layer.
    #[error(transparent)]
    Segment(SegmentError),
    /// A memory-mapped file's topic exists (left by an earlier run), and this publisher could
    /// not go on with it: another type, a corrupt file, every lane taken.
    #[error("topic {topic:?} exists and cannot be taken over: {source}")]
    Existing {
        /// The name.
        topic: String,
        /// Why it could not be attached to.
        #[source]
        source: Box<OpenError>,
    },
    /// The bus's transport cannot do what was asked (an option it has no counterpart for).
    #[error("the {transport} transport does not support {what}")]
    Unsupported {
        /// The transport's name.
        transport: &'static str,
        /// What was asked.
        what: String,
    },
    /// A copying transport's system call failed (its socket, pipe, queue or file).
    #[error("topic {topic:?}: {source}")]
    Transport {
        /// The name.
        topic: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP transport would not, or could not, serve on its address.
    #[error("topic {topic:?}: cannot serve on {addr}: {reason}")]
    Listen {
        /// The name.
        topic: String,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: crate::transport::ListenError,
    },
    /// The topic's largest message, framed, is longer than the system lets a message queue
    /// carry (`/proc/sys/fs/mqueue/msgsize_max`): a smaller slot size, or a larger limit.
    #[error(
        "topic {topic:?}: a framed message takes {needed} bytes, the system's message queues \
         carry at most {limit} (fs.mqueue.msgsize_max)"
    )]
    MessageTooLarge {
        /// The name.
        topic: String,
        /// Bytes of the largest message with its frame header and padding.
        needed: u64,
        /// The system's largest queue message.
        limit: u64,
    },
    /// A system limit on message queues refused the topic's queue: which one, and its figures.
    #[error("topic {topic:?}: {limit}")]
    LimitReached {
        /// The name.
        topic: String,
        /// The limit.
        limit: crate::transport::QueueLimit,
    },
}

/// Why a topic could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The topic name is not valid.
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidName {
        /// The name.
        topic: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// No such topic.
    #[error("no topic {topic:?}")]
    NotFound {
        /// The name.
        topic: String,
    },
    /// The topic's creator has not finished initialising it (retry, or see `open_timeout`).
    #[error("topic {topic:?} is not ready yet")]
    NotReady {
        /// The name.
        topic: String,
    },
    /// The topic carries another type.
    #[error("topic {topic:?} carries {found}, not {expected}")]
    IncompatibleType {
        /// The name.
        topic: String,
        /// What this subscriber expects.
        expected: Box<TypeFingerprint>,
        /// What the topic carries.
        found: Box<TypeFingerprint>,
    },
    /// The segment was written by another format version.
    #[error(
        "topic {topic:?} has format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion {
        /// The name.
        topic: String,
        /// The version found.
        found: u32,
    },
    /// The segment is too small to hold a header.
    #[error("topic {topic:?} is too small ({size} bytes) to be a shmbus segment")]
    TooSmall {
        /// The name.
        topic: String,
        /// Its size.
        size: u64,
    },
    /// The segment is not a valid shmbus segment: its header is not shmbus's or its fields
    /// disagree with each other.
    #[error("topic {topic:?} is corrupt: {reason}")]
    Corrupt {
        /// The name.
        topic: String,
        /// What is wrong.
        reason: LayoutError,
    },
    /// Every entry of the topic's subscriber table is held by a live process.
    #[error("topic {topic:?} already has its {max} subscribers (pids {pids:?})")]
    TooManySubscribers {
        /// The name.
        topic: String,
        /// The size of its table (the publisher's `max_subscribers`).
        max: u32,
        /// The pids holding the entries.
        pids: Vec<u32>,
    },
    /// A publisher moved on every time this subscriber tried to register its position (only
    /// a publisher whose history is nearly its whole capacity scans that often), or a live
    /// publisher was still evicting a dead subscriber from the entry this one needs in its
    /// lane after a thousand yields; try again.
    #[error("topic {topic:?}: its publishers kept changing its tables while this subscriber joined; try again")]
    Contended {
        /// The name.
        topic: String,
    },
    /// Every publisher lane of the topic is taken (attaching a publisher).
    #[error("topic {topic:?} already has its {max} publishers")]
    TooManyPublishers {
        /// The name.
        topic: String,
        /// Its number of lanes (the creator's `max_publishers`).
        max: u32,
    },
    /// Another failure of the segment layer (owner, mode, permissions, I/O).
    #[error(transparent)]
    Segment(SegmentError),
    /// The bus's transport cannot do what was asked.
    #[error("the {transport} transport does not support {what}")]
    Unsupported {
        /// The transport's name.
        transport: &'static str,
        /// What was asked.
        what: String,
    },
    /// A copying transport's system call failed (connecting, reading the greeting).
    #[error("topic {topic:?}: {source}")]
    Transport {
        /// The name.
        topic: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The publisher's end refused this subscriber, or answered with something that is not
    /// a valid greeting (another user, a wrong token, not a shmbus peer).
    #[error("topic {topic:?}: {reason}")]
    Refused {
        /// The name.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The subscriber's notifier ([`SubscriberBuilder::notifier`](crate::SubscriberBuilder::notifier))
    /// could not be made: its eventfd, socket, semaphore or signalfd, or a signal past
    /// `SIGRTMAX`.
    #[error("topic {topic:?}: the {notifier:?} notifier: {source}")]
    Notifier {
        /// The name.
        topic: String,
        /// The notifier asked for.
        notifier: crate::wait::Notifier,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a slot could not be loaned without waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryLoanError {
    /// Every slot holds a message some subscriber has not released.
    #[error("ring is full")]
    Full,
    /// A byte message longer than the slot size.
    #[error("message of {len} bytes exceeds the slot size of {max}")]
    TooLarge {
        /// Requested length.
        len: usize,
        /// The slot size.
        max: usize,
    },
    /// A byte message of another length than the type's, on a publisher of bytes under a
    /// type's fingerprint ([`PublisherBuilder::as_type`](crate::PublisherBuilder::as_type)).
    #[error("message of {len} bytes where the topic's type has {expected}")]
    WrongLength {
        /// Requested length.
        len: usize,
        /// The type's size.
        expected: usize,
    },
    /// A copying transport could not write an earlier message (the file transport: no space
    /// left, a file too large). That message is kept and written before the next; this loan
    /// is refused until it is.
    #[error("writing an earlier message failed: {kind}")]
    Io {
        /// The error's kind (`StorageFull`, `FileTooLarge`, ...).
        kind: std::io::ErrorKind,
    },
}

/// Why a blocking loan failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoanError {
    /// No slot became free before the deadline.
    #[error("timed out waiting for a free slot")]
    Timeout,
    /// The ring is full and the topic's policy is [`Policy::Fail`](crate::Policy::Fail):
    /// the publisher does not wait.
    #[error("ring is full (policy fail)")]
    Full,
    /// A byte message longer than the slot size.
    #[error("message of {len} bytes exceeds the slot size of {max}")]
    TooLarge {
        /// Requested length.
        len: usize,
        /// The slot size.
        max: usize,
    },
    /// A byte message of another length than the type's ([`TryLoanError::WrongLength`]).
    #[error("message of {len} bytes where the topic's type has {expected}")]
    WrongLength {
        /// Requested length.
        len: usize,
        /// The type's size.
        expected: usize,
    },
    /// The topic's segment was truncated under this publisher (by another process): what it
    /// writes reaches nobody. Noticed while waiting for room; see also
    /// [`Publisher::truncated`](crate::Publisher::truncated).
    #[error("the topic's segment was truncated by another process")]
    Truncated,
    /// A copying transport's peer sent a frame that is not valid (a bad header, another
    /// type, a message out of sequence, a frame cut short): a buggy or hostile publisher, or
    /// a connection out of step. The connection was dropped; the receives that follow return
    /// [`RecvError::Disconnected`].
    #[error("the publisher sent an invalid frame: {0}")]
    BadFrame(crate::transport::frame::FrameError),
    /// A copying transport's system call failed; for a loan, the write of an earlier message
    /// (the file transport: no space left, a file too large), which is kept and written
    /// before the next one.
    #[error("{detail}")]
    Io {
        /// The error's kind.
        kind: std::io::ErrorKind,
        /// The system's message.
        detail: String,
    },
}

/// `try_send` found the ring full; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy, thiserror::Error)]
#[non_exhaustive]
pub enum TrySendError<T> {
    /// The ring is full.
    #[error("ring is full")]
    Full(T),
    /// The topic's segment was truncated by another process ([`LoanError::Truncated`]).
    #[error("the topic's segment was truncated by another process")]
    Truncated(T),
    /// A copying transport could not write an earlier message ([`TryLoanError::Io`]).
    #[error("writing an earlier message failed: {1}")]
    Io(T, std::io::ErrorKind),
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(t) | TrySendError::Truncated(t) | TrySendError::Io(t, _) => t,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Truncated(_) => f.write_str("Truncated(..)"),
            TrySendError::Io(_, kind) => write!(f, "Io(.., {kind:?})"),
        }
    }
}

/// `send_timeout` found no free slot in time; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy, thiserror::Error)]
#[non_exhaustive]
pub enum SendTimeoutError<T> {
    /// The deadline passed with the ring still full.
    #[error("timed out waiting for a free slot")]
    Timeout(T),
    /// The ring is full and the topic's policy is [`Policy::Fail`](crate::Policy::Fail).
    #[error("ring is full (policy fail)")]
    Full(T),
    /// The topic's segment was truncated by another process ([`LoanError::Truncated`]).
    #[error("the topic's segment was truncated by another process")]
    Truncated(T),
    /// A copying transport could not write an earlier message ([`TryLoanError::Io`]).
    #[error("writing an earlier message failed: {1}")]
    Io(T, std::io::ErrorKind),
}

impl<T> SendTimeoutError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(t)
            | SendTimeoutError::Full(t)
            | SendTimeoutError::Truncated(t)
            | SendTimeoutError::Io(t, _) => t,
        }
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Full(_) => f.write_str("Full(..)"),
            SendTimeoutError::Truncated(_) => f.write_str("Truncated(..)"),
            SendTimeoutError::Io(_, kind) => write!(f, "Io(.., {kind:?})"),
        }
    }
}

/// Why a receive failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The publisher closed the topic and every message it sent has been received.
    #[error("the publisher has closed the topic")]
    Disconnected,
    /// A publisher of the topic died without closing its lane (killed, or crashed), and every
    /// message it published has been received. Reported once while other publishers live on
    /// (receiving goes on with them), and on every call once none does. A new publisher may
    /// take the dead one's lane over ([`PublisherBuilder::attach`](crate::PublisherBuilder::attach));
    /// receiving then goes on.
    /// Noticed by the blocking receives after 10 ms to 640 ms of waiting (the longer they have
    /// slept, the less often they look); `try_recv` makes no system call, so it does not look.
    #[error("the publisher (pid {pid}) died without closing the topic")]
    PublisherGone {
        /// Pid of the dead publisher (of one of them, with several lanes).
        pid: u32,
    },
    /// A message whose slot header is invalid (a buggy or hostile publisher). It was skipped;
    /// the next receive goes on with the next message.
    #[error("message {seq} is corrupt: length {len} where {expected} was allowed")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// The length its slot claimed.
        len: u32,
        /// The length allowed (the type's size, or at most the slot size for bytes).
        expected: u32,
    },
    /// A message that is not a valid value of a [`Checked`](crate::Checked) topic's type (a
    /// `bool` that is neither 0 nor 1, an enum's unknown discriminant): a buggy or hostile
    /// publisher. It was skipped; the next receive goes on with the next message.
    #[error("message {seq} is not a valid value of the topic's type")]
    InvalidBitPattern {
        /// Its sequence number.
        seq: u64,
    },
    /// The topic's segment was truncated under this subscriber by another process (a buggy
    /// or hostile peer with write access to it): the part past the new end reads as zeros
    /// here, and nothing more will arrive. Reported, on every call, once a receive finds
    /// nothing to read after the truncation was caught (a SIGBUS, handled: see
    /// [`Segment::truncated`](crate::segment::Segment::truncated)), and by the blocking
    /// receives' liveness checks and in place of `Disconnected` if the file is found shorter
    /// than the mapping. Open the topic again once a publisher has created it again.
    #[error("the topic's segment was truncated by another process")]
    Truncated,
    /// A copying transport's peer sent a frame that is not valid (a bad header, another
    /// type, a message out of sequence, a frame cut short): a buggy or hostile publisher, or
    /// a connection out of step. The connection was dropped; the receives that follow return
    /// [`RecvError::Disconnected`].
    #[error("the publisher sent an invalid frame: {0}")]
    BadFrame(crate::transport::frame::FrameError),
    /// A copying transport's system call failed while receiving.
    #[error("receive failed: {detail}")]
    Io {
        /// The error's kind.
        kind: std::io::ErrorKind,
        /// The system's message.
        detail: String,
    },
}

/// Why a subscriber could not be armed to wait on its notifier's descriptor
/// ([`Subscriber::arm`](crate::Subscriber::arm)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArmError {
    /// The subscriber has no descriptor to wait on: its notifier is the futex or a semaphore,
    /// or it reads a file.
    #[error(
        "this subscriber has no notifier descriptor (open it with an eventfd or signal notifier)"
    )]
    NoDescriptor,
}
