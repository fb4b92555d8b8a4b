//! What is on a bus: its topics, their publishers and subscribers, how far behind each
//! subscriber is and what it lost. Read from the segments themselves (no registry to fall out
//! of step), with the same checks a subscriber runs; nothing is written.

use super::subscriber::{open_topic, OpenTopic};
use super::Bus;
use crate::error::{BusError, OpenError};
use crate::layout::{Policy, TypeFingerprint};
use crate::sync::Ordering;

/// One topic, as [`Bus::topics`] and [`Bus::topic_info`] saw it: a snapshot, read without
/// stopping anybody, so its counts may be a message apart from each other.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic's name (without the bus prefix).
    pub topic: String,
    /// What its messages are.
    pub fingerprint: TypeFingerprint,
    /// What its publisher does about slow subscribers.
    pub policy: Policy,
    /// Slots in its ring.
    pub capacity: u64,
    /// Largest message in bytes.
    pub slot_size: u32,
    /// Messages kept for late joiners.
    pub history: u64,
    /// Size of its subscriber table.
    pub max_subscribers: u32,
    /// Size of its publisher table (lanes).
    pub max_publishers: u32,
    /// Pids of its publishers, one per lane in use; empty once the last has closed the topic.
    pub publishers: Vec<u32>,
    /// Messages published so far, by all its publishers.
    pub published: u64,
    /// Its attached subscribers.
    pub subscribers: Vec<SubscriberInfo>,
    /// Subscribers its publishers evicted because their process had died: while they held
    /// the ring back (Block, Fail), or asleep in a blocking wait (any policy).
    pub evictions: u64,
    /// Subscribers counted as asleep in a blocking wait (or about to sleep): while it is above
    /// zero, every message costs its publisher a wake syscall. More than the subscribers
    /// marked [`SubscriberInfo::asleep`] means subscribers killed asleep that nobody has
    /// taken off yet (a Block publisher does when it evicts them; a subscriber that takes
    /// over one's entry does too).
    pub sleepers: u32,
    /// Publishers counted as asleep waiting for room (Block), or about to sleep: while it is
    /// above zero, subscribers make a wake syscall each time they give slots back. A
    /// publisher killed asleep stays counted until another takes its lane over.
    pub publisher_sleepers: u32,
}

/// One subscriber of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberInfo {
    /// Pid of its process.
    pub pid: u32,
    /// Its next message from the first publisher (lane 0), as it last gave slots back (it
    /// gives them back in batches, so this may trail what it has read by up to a batch).
    pub next_seq: u64,
    /// Messages published that it has not read, over all publishers (as of the positions it
    /// last gave back).
    pub lag: u64,
    /// Messages it lost (Overwrite).
    pub lost: u64,
    /// Whether it is asleep in a blocking wait for a message (or about to sleep, or polling
    /// its notifier's descriptor after `Subscriber::arm`).
    pub asleep: bool,
}

impl Bus {
    /// Every topic under this bus's prefix, each described or refused with the reason a
    /// subscriber would get (another format version, a corrupt header, another owner...). A
    /// topic that disappears while being listed is left out.
    ///
    /// ```
    /// # let bus = shmbus::Bus::builder().prefix("doctest-topics.").build()?;
    /// let publisher = bus.publisher::<u64>("ticks").create()?;
    /// let _subscriber = bus.subscriber::<u64>("ticks").open()?;
    /// let topics = bus.topics()?;
    /// let info = topics[0].as_ref().unwrap();
    /// assert_eq!((info.topic.as_str(), info.subscribers.len()), ("ticks", 1));
    /// assert_eq!(info.publishers, [std::process::id()]);
    /// # drop(publisher);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`BusError::List`] if the shared-memory directory cannot be read.
    pub fn topics(&self) -> Result<Vec<Result<TopicInfo, OpenError>>, BusError> {
        let names = self.topic_names()?;
        Ok(names
            .into_iter()
            .map(|topic| self.topic_info(&topic))
            .filter(|r| !matches!(r, Err(OpenError::NotFound { .. })))
            .collect())
    }

    /// One topic's description.
    ///
    /// # Errors
    /// What [`SubscriberBuilder::open`](crate::SubscriberBuilder::open) would refuse, except
    /// the type (any type is described) and a full subscriber table.
    pub fn topic_info(&self, topic: &str) -> Result<TopicInfo, OpenError> {
        let open = open_topic(self, topic)?;
        let control = open.control();
        let (max_readers, lanes) = (open.shape.max_readers, open.geometry.lanes);
        let lane = |k| {
            // SAFETY: `k < lanes`, counted in the validated control size; `open` keeps the
            // mapping while the lanes are read.
            unsafe { control.lane(k, max_readers) }
        };
        // SAFETY: as above.
        let tables: Vec<_> = (0..lanes)
            .map(|k| unsafe { lane(k).table(max_readers) })
            .collect();
        let tails: Vec<u64> = (0..lanes).map(|k| lane(k).writer.tail()).collect();
        // Saturating, here and below: every figure was read from shared memory.
        let published = tails.iter().fold(0u64, |sum, &t| sum.saturating_add(t));
        let subscribers = (0..max_readers as usize)
            .filter_map(|i| {
                let first = &tables[0].entries()[i];
                let owner = first.owner();
                if crate::ring::broadcast::evictor_of(owner).is_some() {
                    return None;
                }
                let pid = crate::segment::identity_pid(owner);
                let next_seq = first.head()?;
                let (mut lag, mut lost) = (0u64, 0u64);
                for (table, &tail) in tables.iter().zip(&tails) {
                    let e = &table.entries()[i];
                    // A head ahead of the tail (a joiner's, read before the tail) lags by 0.
                    lag = lag.saturating_add(e.head().map_or(0, |h| tail.saturating_sub(h)));
                    lost = lost.saturating_add(e.lost());
                }
                (pid != 0).then_some(SubscriberInfo {
                    pid,
                    next_seq,
                    lag,
                    lost,
                    asleep: first.waits() & crate::ring::broadcast::WAITS_ASLEEP != 0,
                })
            })
            .collect();
        let publishers = (0..lanes)
            .map(|k| lane(k).owner.id.load(Ordering::Acquire))
            .filter(|&id| id != 0)
            .map(crate::segment::identity_pid)
            .collect();
        let evictions = (0..lanes)
            .map(|k| lane(k).owner.evictions.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add);
        Ok(TopicInfo {
            topic: topic.into(),
            fingerprint: open
                .header
                .fingerprint()
                .unwrap_or(TypeFingerprint::bytes()),
            policy: open.shape.policy,
            capacity: open.geometry.capacity,
            slot_size: open.geometry.slot_size,
            history: open.shape.history,
            max_subscribers: open.shape.max_readers,
            max_publishers: lanes,
            publishers,
            published,
            subscribers,
            evictions,
            sleepers: control.data.sleepers(),
            publisher_sleepers: control.space.sleepers(),
        })
    }
}

/// How old an unfinished segment (`NotReady`) must be before it can be judged stale: its
/// creator takes its lock a few system calls after the name appears, so a younger one may
/// belong to a creator that is merely slow.
const UNFINISHED_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Remove topic `topic`'s segment if it is stale (or, with `dry_run`, say whether it is):
/// a segment that validates and whose processes are all dead, or an unfinished one
/// (`NotReady`) older than [`UNFINISHED_GRACE`] that no process holds. Either way the removal
/// itself succeeds only if no process holds the segment's lock (see
/// `Segment::unlink_locked`). Segments that do not validate otherwise are never touched.
pub(crate) fn remove_if_stale(bus: &Bus, topic: &str, dry_run: bool) -> bool {
    match open_topic(bus, topic) {
        // A memory-mapped file's topic outlives its processes by design: it is a journal.
        Ok(_) if bus.persistent() => false,
        Ok(open) => {
            // A portable segment has no lock to take: just before its name is removed, the
            // name is opened afresh, so that a topic a live process made under it since is
            // left alone (see `Segment::unlink_locked`).
            let lockless = open.segment.backend() != crate::segment::Backend::Native;
            let still_stale = || {
                is_stale(&open) && (!lockless || open_topic(bus, topic).is_ok_and(|t| is_stale(&t)))
            };
            is_stale(&open)
                && if dry_run {
                    open.segment.is_unheld()
                } else {
                    open.segment.unlink_locked(still_stale).unwrap_or(false)
                }
        }
        Err(OpenError::NotReady { .. }) => {
            let Ok(name) = bus.segment_name(topic) else {
                return false;
            };
            let Ok(segment) =
                super::backend::open_segment(bus, &name, crate::layout::MAX_SEGMENT_SIZE)
            else {
                return false;
            };
            if segment.age().is_none_or(|age| age < UNFINISHED_GRACE) {
                return false;
            }
            if dry_run {
                segment.is_unheld()
            } else {
                segment.unlink_locked(|| true).unwrap_or(false)
            }
        }
        Err(_) => false,
    }
}

/// Whether a topic's segment is stale: no process that holds one of its lanes or one of its
/// subscriber entries is alive (pid and start time). Makes system calls.
pub(crate) fn is_stale(open: &OpenTopic) -> bool {
    let control = open.control();
    let (max_readers, lanes) = (open.shape.max_readers, open.geometry.lanes);
    (0..lanes).all(|k| {
        // SAFETY: `k < lanes`, counted in the validated control size; `open` keeps the mapping.
        let lane = unsafe { control.lane(k, max_readers) };
        let held = |id: u64| id != 0 && crate::ring::broadcast::evictor_of(id).is_none();
        let owner = lane.owner.id.load(Ordering::Acquire);
        if held(owner) && crate::segment::identity_alive(owner) {
            return false;
        }
        // SAFETY: as above.
        let table = unsafe { lane.table(max_readers) };
        table.entries().iter().all(|e| {
            let id = e.owner();
            !held(id) || !crate::segment::identity_alive(id)
        })
    })
}

impl Bus {
    /// Remove the segments of this bus (this user's, under its prefix) whose every publisher and
    /// subscriber is dead: what processes killed before they could close their topics left
    /// behind. A segment with any live process on it is never touched, nor one that does not
    /// validate (another format version, a corrupt or unfinished header: not this build's to
    /// judge). With `dry_run`, only lists them. Returns the topics removed (or to remove).
    ///
    /// # Errors
    /// [`BusError::List`] if the shared-memory directory cannot be read.
    pub fn clean(&self, dry_run: bool) -> Result<Vec<String>, BusError> {
        let mut removed = Vec::new();
        for name in self.topic_names()? {
            if remove_if_stale(self, &name, dry_run) {
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// The names of the segments under this bus's prefix (the topics, whether they validate
    /// or not), sorted. [`Bus::topic_info`] describes each.
    ///
    /// # Errors
    /// [`BusError::List`] if the directory of segments cannot be read.
    pub fn topic_names(&self) -> Result<Vec<String>, BusError> {
        let list = |source| BusError::List {
            dir: self.dir.clone(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(list)? {
            let entry = entry.map_err(list)?;
            if let Some(topic) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&self.prefix))
            {
                names.push(topic.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}
