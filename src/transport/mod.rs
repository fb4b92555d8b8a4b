//! Transports: how a topic's messages get from its publisher to its subscribers.
//!
//! The same [`Publisher`](crate::Publisher) and [`Subscriber`](crate::Subscriber) run over each
//! of them; a [`Bus`](crate::Bus) names one ([`BusBuilder::transport`](crate::BusBuilder::transport)),
//! [`recommended`] picks one for the machine.
//!
//! | transport | kind | fan-out | when to use it |
//! |---|---|---|---|
//! | [`Shm`] | ring in shared memory, zero-copy | any | the default: processes on one host with a shared `/dev/shm` |
//! | [`MmapFile`] | the same ring in a file | any | a feed that must survive restarts; the journal |
//! | [`Unix`] | Unix seqpacket socket, copying | any | one host, no shared memory (containers) |
//! | [`Tcp`] | TCP, copying | any | another host |
//! | [`Pipe`] | pipe, copying | one | a parent and the child it spawns |
//! | [`Fifo`] | named pipe, copying | one | unrelated processes found by a path, no sockets |
//! | [`MessageQueue`] | POSIX message queue, copying | one | small messages with kernel-kept boundaries |
//! | [`File`] | append-only file, copying | any (each reads the file) | the simplest durable spool: late subscribers read the past; record and replay ([`crate::journal`]) |
//! | `Portable` | ring in `shared_memory` segments, `raw_sync` events (feature `portable`) | any | systems without futex or `shm_open` semantics |
//!
//! The ring transports are the bus of the crate's front page: a message is written in place
//! and read in place. The others copy each message once into the kernel and once out of it,
//! framed ([`frame`]: magic, type hash, sequence, length): a subscriber checks each frame and
//! drops a connection that sends garbage, with a typed error.
//!
//! How the policies map onto a copying transport: each subscriber's connection is a kernel
//! buffer. Under Block the publisher waits while a subscriber's buffer is full (nothing is
//! lost); under Fail it hands the message back instead; under Overwrite it never waits, and a
//! subscriber whose buffer is full misses the message (it learns how many it missed from the
//! sequence numbers: [`Subscriber::lost`](crate::Subscriber::lost)).

mod fifo;
pub mod file;
pub mod frame;
mod link;
mod mqueue;
mod pipe;
#[cfg(feature = "portable")]
mod portable;
mod tcp;
mod unix;

pub use fifo::Fifo;
pub use file::File;
pub use link::{FrameReceiver, FrameSender, Framed, Got, Ready, Received, Source};
pub use mqueue::{MessageQueue, QueueLimit};
pub use pipe::{Direction, Pipe, PipeEnd, PipeEndError, PIPE_FD_VAR};
#[cfg(feature = "portable")]
pub use portable::Portable;
pub use tcp::{ListenError, Tcp, TOKEN_ENV};
pub use unix::Unix;

use crate::error::{CreateError, OpenError};
use frame::Hello;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a bus carries its topics: see the [module](self) for the list and when to use each.
///
/// The ring transports ([`Shm`], [`MmapFile`]) answer [`Transport::ring`]; the copying ones
/// make framed senders and receivers.
pub trait Transport: std::fmt::Debug + Send + Sync {
    /// A short name: `shm`, `mmap-file`, `unix`, `tcp`, `pipe`, `fifo`, `mqueue`, `file`.
    fn name(&self) -> &'static str;

    /// For a ring transport, where its segments live and whether they outlive their
    /// publishers. `None` for a copying transport.
    fn ring(&self) -> Option<RingPlace> {
        None
    }

    /// Make the publishing end of topic `endpoint.topic` (a copying transport).
    ///
    /// # Errors
    /// What the transport refuses: a name in use by a live publisher, a topic too large for
    /// it, a system error.
    fn publish(&self, endpoint: &Endpoint<'_>) -> Result<Box<dyn FrameSender>, CreateError> {
        Err(CreateError::Unsupported {
            transport: self.name(),
            what: format!("publishing {:?} through this call", endpoint.topic),
        })
    }

    /// Whether a subscriber may ask for history ([`Endpoint::history`]): a copying transport
    /// that keeps what was published (a file) says so; the others are refused history before
    /// [`Transport::subscribe`] is called.
    fn keeps_history(&self) -> bool {
        false
    }

    /// Open a subscribing end of topic `endpoint.topic` (a copying transport), waiting up to
    /// `timeout` for the publisher's greeting; the receiver has checked it (type, policy).
    ///
    /// # Errors
    /// [`OpenError::NotFound`] when no publisher is there, [`OpenError::IncompatibleType`],
    /// [`OpenError::Refused`] for a handshake that failed, [`OpenError::Transport`].
    fn subscribe(
        &self,
        endpoint: &Endpoint<'_>,
        timeout: Duration,
    ) -> Result<Box<dyn FrameReceiver>, OpenError> {
        let _ = timeout;
        Err(OpenError::Unsupported {
            transport: self.name(),
            what: format!("subscribing to {:?} through this call", endpoint.topic),
        })
    }
}

/// Where a ring transport keeps its segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingPlace {
    /// The directory of the segment files.
    pub dir: PathBuf,
    /// Whether a topic outlives its publishers: its file is kept at close, and a subscriber
    /// may open it after they are gone and read what it holds.
    pub persistent: bool,
    /// How its segments are made: files in `dir`, or (feature `portable`) named segments of
    /// the `shared_memory` crate, `dir` then naming where the system keeps them, if anywhere.
    pub backend: crate::segment::Backend,
}

/// What a copying transport is told about the topic it carries.
#[derive(Clone, Debug)]
pub struct Endpoint<'a> {
    /// The bus's prefix and the topic's name: `<prefix><topic>` names the socket, FIFO,
    /// queue or file.
    pub prefix: &'a str,
    /// The topic's name.
    pub topic: &'a str,
    /// What the publisher says in its greeting (a subscriber: what it expects).
    pub hello: Hello,
    /// Whether the topic's group may use it (mode 0660 instead of 0600).
    pub group: bool,
    /// A subscriber that takes any type ([`SubscriberBuilder::any_type`](crate::SubscriberBuilder::any_type)).
    pub any_type: bool,
    /// What a subscriber asked of the past ([`SubscriberBuilder::history`](crate::SubscriberBuilder::history)):
    /// a transport that keeps no past refuses anything but 0 with `OpenError::Unsupported`.
    /// A publisher: 0.
    pub history: u64,
}

impl Endpoint<'_> {
    /// `<prefix><topic>`.
    pub fn name(&self) -> String {
        format!("{}{}", self.prefix, self.topic)
    }
}

/// Shared memory: the zero-copy ring in a segment under `/dev/shm` (or another directory of
/// a memory filesystem). The default transport.
#[derive(Clone, Debug)]
pub struct Shm {
    dir: PathBuf,
}

impl Shm {
    /// Segments in `/dev/shm`.
    pub fn new() -> Self {
        Self {
            dir: crate::segment::SHM_DIR.into(),
        }
    }

    /// Segments in another directory, which should be on a memory filesystem.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl Default for Shm {
    fn default() -> Self {
        Self::new()
    }
}

impl Transport for Shm {
    fn name(&self) -> &'static str {
        "shm"
    }
    fn ring(&self) -> Option<RingPlace> {
        Some(RingPlace {
            dir: self.dir.clone(),
            persistent: false,
            backend: crate::segment::Backend::Native,
        })
    }
}

/// The shared-memory ring in a file-backed mapping under a directory of the user's: the
/// topic survives its publishers and restarts. A subscriber that opens it after its publisher
/// exited reads what the ring still holds (up to its capacity; ask with
/// [`SubscriberBuilder::history`](crate::SubscriberBuilder::history)), and a publisher that
/// comes back takes the topic over ([`PublisherBuilder::attach`](crate::PublisherBuilder::attach))
/// and goes on numbering where it was. As fast as [`Shm`] while its pages are resident.
#[derive(Clone, Debug)]
pub struct MmapFile {
    dir: PathBuf,
}

impl MmapFile {
    /// Topic files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Transport for MmapFile {
    fn name(&self) -> &'static str {
        "mmap-file"
    }
    fn ring(&self) -> Option<RingPlace> {
        Some(RingPlace {
            dir: self.dir.clone(),
            persistent: true,
            backend: crate::segment::Backend::Native,
        })
    }
}

/// A transport from its textual form, as the command-line tool and the tests name them:
///
/// | spec | transport |
/// |---|---|
/// | `shm` or `shm:DIR` | [`Shm`] (in `/dev/shm`, or in `DIR`) |
/// | `mmap:DIR` | [`MmapFile`] |
/// | `unix:DIR` | [`Unix`] |
/// | `tcp:HOST:PORT` | [`Tcp`], with the token in `$SHMBUS_TCP_TOKEN` if that is set ([`TOKEN_ENV`]) |
/// | `tcp:HOST:PORT#TOKEN` | [`Tcp`] with the token `TOKEN` (seen by every user in `ps`: prefer the variable) |
/// | `fifo:DIR` | [`Fifo`] |
/// | `mqueue` | [`MessageQueue`] (named in the kernel's message-queue namespace) |
/// | `file:DIR` | [`File`] |
/// | `portable` | `Portable` (built with `--features portable`; an error without it) |
///
/// `HOST` is an IP address (`127.0.0.1`, `[::1]`) or a name resolved at each publish and
/// subscribe. A [`Pipe`] has no textual form: its end is inherited ([`Pipe::spawn`],
/// [`Pipe::from_env`]).
///
/// # Errors
/// A message naming what is wrong with `spec`.
pub fn parse(spec: &str) -> Result<Box<dyn Transport>, String> {
    let (scheme, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let need_dir = |what: &str| -> Result<PathBuf, String> {
        if rest.is_empty() {
            Err(format!("transport {what:?} needs a directory: {what}:DIR"))
        } else {
            Ok(PathBuf::from(rest))
        }
    };
    Ok(match scheme {
        "shm" if rest.is_empty() => Box::new(Shm::new()),
        "shm" => Box::new(Shm::in_dir(rest)),
        "mmap" | "mmap-file" => Box::new(MmapFile::new(need_dir("mmap")?)),
        "unix" => Box::new(Unix::new(need_dir("unix")?)),
        "tcp" => Box::new(Tcp::from_spec(rest)?),
        "mqueue" if rest.is_empty() => Box::new(MessageQueue::new()),
        "mqueue" => return Err(format!("transport {spec:?}: mqueue takes no argument")),
        "file" => Box::new(File::new(need_dir("file")?)),
        "fifo" => Box::new(Fifo::new(need_dir("fifo")?)),
        #[cfg(feature = "portable")]
        "portable" if rest.is_empty() => Box::new(Portable::new()),
        #[cfg(not(feature = "portable"))]
        "portable" => {
            return Err(format!(
                "transport {spec:?} is not in this build: build shmbus with `--features portable`"
            ))
        }
        _ => {
            return Err(format!(
                "unknown transport {spec:?} (shm, mmap:DIR, unix:DIR, tcp:HOST:PORT, fifo:DIR, mqueue, file:DIR, portable)"
            ))
        }
    })
}

/// The transport for this machine: [`Shm`] when `/dev/shm` is a directory this process can
/// write in, else [`Unix`] sockets in `$XDG_RUNTIME_DIR` (or the temporary directory).
pub fn recommended() -> Box<dyn Transport> {
    let shm = Path::new(crate::segment::SHM_DIR);
    if rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok() && shm.is_dir() {
        return Box::new(Shm::new());
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    Box::new(Unix::new(dir))
}
