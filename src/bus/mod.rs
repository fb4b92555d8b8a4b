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

mod control;
mod discovery;
mod payload;
mod publisher;
mod subscriber;

pub use discovery::{SubscriberInfo, TopicInfo};
pub use payload::{Checked, InPlace, Payload};
pub use publisher::{Loan, Publisher, PublisherBuilder, DEFAULT_MAX_SUBSCRIBERS};
pub use subscriber::{Sample, Subscriber, SubscriberBuilder, SLIP_RUN};

use crate::error::BusError;
use crate::segment::{validate_name, Access, NameError, MAX_SEGMENT_NAME_LEN, SHM_DIR};
use std::path::{Path, PathBuf};

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
            dir: SHM_DIR.into(),
        }
    }

    /// The prefix of this bus's segment names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The directory of this bus's segments.
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
    dir: PathBuf,
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
        self.dir = dir.into();
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
        let dir_error = |source| BusError::Dir {
            dir: self.dir.clone(),
            source,
        };
        let meta = std::fs::metadata(&self.dir).map_err(dir_error)?;
        if !meta.is_dir() {
            return Err(dir_error(std::io::Error::from(
                std::io::ErrorKind::NotADirectory,
            )));
        }
        Ok(Bus {
            prefix: self.prefix,
            access: self.access,
            dir: self.dir,
        })
    }
}
