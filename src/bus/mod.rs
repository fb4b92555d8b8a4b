//! The user API: a [`Bus`] names topics; a topic has up to `max_publishers` [`Publisher`]s and
//! up to `max_subscribers` [`Subscriber`]s, each typed by its [`Payload`].
//!
//! **Many to many: a lane per publisher, merged at the reader.** Each publisher of a topic
//! writes a ring of its own (a *lane*: `crate::ring::broadcast`, one writer), and a subscriber
//! holds a position in every lane and takes them in turns. The other design, one ring that all
//! publishers claim slots in (a shared tail advanced with a CAS, per-slot sequence numbers),
//! was rejected because:
//! - its publishers contend: every message is a CAS on one cache line that all of them
//!   write, where a lane's writer touches nothing another writer does;
//! - a publisher killed between its claim and its commit leaves a hole that every reader
//!   stops at until someone detects the death and fills it; in a lane, a dead publisher stops
//!   only its own lane;
//! - one publisher's order is kept by construction, and a topic with one publisher (the common
//!   case) pays nothing for the others: its subscribers keep the inlined one-lane fast path.
//!
//! What lanes cost: memory (`max_publishers` rings, fixed at creation) and no order between
//! publishers (a subscriber sees each publisher's messages in order, interleaved in turns;
//! `Sample::lane` says whose message it is).

mod backend;
mod control;
mod copying;
mod discovery;
mod payload;
mod publisher;
mod subscriber;

pub use discovery::{SubscriberInfo, TopicInfo};
pub use payload::{Checked, InPlace, Payload};
pub use publisher::{Loan, Publisher, PublisherBuilder, DEFAULT_MAX_SUBSCRIBERS};
pub use subscriber::{Armed, Sample, Subscriber, SubscriberBuilder, SLIP_RUN};

use crate::error::BusError;
use crate::segment::{validate_name, Access, Backend, NameError, MAX_SEGMENT_NAME_LEN, SHM_DIR};
use crate::transport::{Shm, Transport};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default prefix of segment names: topic `md.eurusd` lives in `/dev/shm/shmbus.md.eurusd`.
pub const DEFAULT_PREFIX: &str = "shmbus.";

/// A namespace of topics: every topic's segment is the file `<prefix><topic>` in a directory of
/// a memory filesystem, `/dev/shm` unless [`BusBuilder::dir`] says otherwise.
///
/// Cheap to create and to clone; holds no resources. `Send` and `Sync`.
///
/// ```
/// let bus = shmbus::Bus::open_default()?;
/// let tests = shmbus::Bus::builder().prefix("myapp-test.").build()?;
/// # let _ = (bus, tests);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Bus {
    prefix: String,
    access: Access,
    dir: PathBuf,
    /// Whether the ring's segments outlive their publishers ([`crate::transport::MmapFile`]).
    persistent: bool,
    /// How the ring's segments are made (native files, or the `portable` feature's).
    backend: Backend,
    /// A copying transport, or `None` for a ring transport (in `dir`).
    copying: Option<Arc<dyn Transport>>,
}

impl Bus {
    /// The bus with the default prefix, owner-only access.
    ///
    /// # Errors
    /// [`BusError::Dir`] if `/dev/shm` is not a directory this process can use.
    pub fn open_default() -> Result<Self, BusError> {
        Self::builder().build()
    }

    /// A builder for a bus with another prefix or access.
    pub fn builder() -> BusBuilder {
        BusBuilder {
            prefix: DEFAULT_PREFIX.into(),
            access: Access::Owner,
            transport: Arc::new(Shm::in_dir(SHM_DIR)),
        }
    }

    /// The bus's transport, by name (`shm`, `mmap-file`, `unix`, ...).
    pub fn transport(&self) -> &'static str {
        match &self.copying {
            Some(t) => t.name(),
            None => ring_transport_name(self.persistent, self.backend),
        }
    }

    /// The copying transport, if the bus has one.
    pub(crate) fn copying(&self) -> Option<&dyn Transport> {
        self.copying.as_deref()
    }

    /// Whether topics outlive their publishers (a memory-mapped file).
    pub(crate) fn persistent(&self) -> bool {
        self.persistent
    }

    /// Whether the owner's group may use the bus's topics.
    pub(crate) fn group_access(&self) -> bool {
        self.access == Access::Group
    }

    /// The prefix of this bus's segment names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The directory of this bus's segments (a ring transport's; `/dev/shm` by default).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Start creating topic `topic` and its publisher.
    ///
    /// ```
    /// # let bus = shmbus::Bus::builder().prefix("doctest-pub.").build()?;
    /// let mut publisher = bus.publisher::<u64>("counter").capacity(64).create()?;
    /// publisher.try_send(42)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publisher<T: ?Sized + Payload>(&self, topic: &str) -> PublisherBuilder<'_, T> {
        PublisherBuilder::new(self, topic)
    }

    /// Start opening a subscriber of topic `topic`.
    pub fn subscriber<T: ?Sized + Payload>(&self, topic: &str) -> SubscriberBuilder<'_, T> {
        SubscriberBuilder::new(self, topic)
    }

    /// The file name of a topic's segment (in [`Bus::dir`]).
    pub(crate) fn segment_name(&self, topic: &str) -> Result<String, NameError> {
        validate_name(topic)?;
        let len = self.prefix.len() + topic.len();
        if len > MAX_SEGMENT_NAME_LEN {
            return Err(NameError::TooLongWithPrefix { len });
        }
        Ok(format!("{}{}", self.prefix, topic))
    }
}

/// Builds a [`Bus`]. From [`Bus::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct BusBuilder {
    prefix: String,
    access: Access,
    transport: Arc<dyn Transport>,
}

impl BusBuilder {
    /// The prefix of segment names (`shmbus.` by default): the same rules as a topic name.
    /// Tests and separate applications use their own.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Let the owner's group read and write the segments (mode 0660), and accept such
    /// segments on open. Owner-only (0600) by default.
    pub fn group_access(mut self, yes: bool) -> Self {
        self.access = if yes { Access::Group } else { Access::Owner };
        self
    }

    /// The directory the segments live in: `/dev/shm` by default. Another directory should be
    /// on a memory filesystem (a tmpfs of the application's own, with a size limit of its
    /// own, say): on a disk-backed one the kernel writes the messages back to the disk. Every
    /// process of a topic must use the same directory.
    ///
    /// ```no_run
    /// let bus = shmbus::Bus::builder().dir("/run/myapp/bus").build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.transport = Arc::new(Shm::in_dir(dir));
        self
    }

    /// The transport the bus's topics use: shared memory ([`Shm`], the default), a
    /// memory-mapped file, sockets, pipes, a message queue or a file (see
    /// [`crate::transport`]), or what [`crate::transport::recommended`] picks. The publisher
    /// and subscriber calls are the same on each; what a transport cannot do (history and
    /// several publishers on the copying ones) is refused with `Unsupported`.
    ///
    /// ```no_run
    /// use shmbus::transport::Unix;
    /// let bus = shmbus::Bus::builder().transport(Unix::new("/run/myapp")).build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transport(mut self, transport: impl Transport + 'static) -> Self {
        self.transport = Arc::new(transport);
        self
    }

    /// As [`BusBuilder::transport`], for a transport chosen at run time (such as
    /// [`crate::transport::recommended`]'s).
    pub fn transport_boxed(mut self, transport: Box<dyn Transport>) -> Self {
        self.transport = Arc::from(transport);
        self
    }

    /// The bus.
    ///
    /// # Errors
    /// [`BusError::InvalidPrefix`] for a prefix that is not a valid name, [`BusError::Dir`]
    /// if the directory is not one (or cannot be looked at).
    pub fn build(self) -> Result<Bus, BusError> {
        validate_name(&self.prefix).map_err(|reason| BusError::InvalidPrefix {
            prefix: self.prefix.clone(),
            reason,
        })?;
        let Some(ring) = self.transport.ring() else {
            return Ok(Bus {
                prefix: self.prefix,
                access: self.access,
                dir: SHM_DIR.into(),
                persistent: false,
                backend: Backend::Native,
                copying: Some(self.transport),
            });
        };
        let dir_error = |source| BusError::Dir {
            dir: ring.dir.clone(),
            source,
        };
        let meta = std::fs::metadata(&ring.dir).map_err(dir_error)?;
        if !meta.is_dir() {
            return Err(dir_error(std::io::Error::from(
                std::io::ErrorKind::NotADirectory,
            )));
        }
        Ok(Bus {
            prefix: self.prefix,
            access: self.access,
            dir: ring.dir,
            persistent: ring.persistent,
            backend: ring.backend,
            copying: None,
        })
    }
}

/// The name of a ring transport: `shm`, `mmap-file` or `portable`.
fn ring_transport_name(persistent: bool, backend: Backend) -> &'static str {
    match backend {
        #[cfg(feature = "portable")]
        Backend::Portable => "portable",
        _ if persistent => "mmap-file",
        _ => "shm",
    }
}
