//! The subscribing side of a topic: open it, check it, receive messages in place.

use super::backend::{self, Parks, Party};
use super::control::{claim_entry, claim_mirror, control_size, Marked, TopicControl};
use super::payload::AlignedWords;
use super::payload::{Checked, InPlace, Payload};
use super::publisher::LIVENESS_CHECK;
use super::Bus;
use crate::error::{ArmError, OpenError, RecvError};
use crate::layout::{
    Geometry, HeaderValues, LayoutError, Policy, TopicShape, HEADER_SIZE, MAX_LANES, MAX_READERS,
    MAX_SEGMENT_SIZE,
};
use crate::ring::broadcast::{Peek, Reader, ReaderEntry, Ready, WAITS_ASLEEP, WAITS_MAY_SLEEP};
use crate::ring::{MappedSlots, SlotStorage};
use crate::segment::{identity_alive, identity_pid, Segment, SegmentError};
use crate::sync::{spin_hint, Ordering};
use crate::wait::{self, Notifier, NotifySlot, NotifyWaiter, WaitStrategy};
use bytemuck::{CheckedBitPattern, NoUninit};
use std::marker::PhantomData;
use std::ops::Deref;
use std::time::{Duration, Instant};

/// Configures and opens a subscriber. From [`Bus::subscriber`].
#[must_use = "a builder does nothing until `open` is called"]
#[derive(Debug)]
pub struct SubscriberBuilder<'b, T: ?Sized> {
    bus: &'b Bus,
    topic: String,
    wait: WaitStrategy,
    slip: Duration,
    history: u64,
    type_name: Option<String>,
    /// Bytes only: read a topic of any payload type as its bytes (see `any_type`).
    any_type: bool,
    notifier: Notifier,
    _type: PhantomData<fn(&T)>,
}

impl<'b, T: ?Sized + Payload> SubscriberBuilder<'b, T> {
    pub(super) fn new(bus: &'b Bus, topic: &str) -> Self {
        Self {
            bus,
            topic: topic.into(),
            wait: WaitStrategy::default(),
            slip: Duration::ZERO,
            history: 0,
            type_name: None,
            any_type: false,
            notifier: Notifier::Futex,
            _type: PhantomData,
        }
    }

    /// How [`Subscriber::recv`] and [`Subscriber::recv_timeout`] wait for a message.
    pub fn wait(mut self, strategy: WaitStrategy) -> Self {
        self.wait = strategy;
        self
    }

    /// What wakes this subscriber when it sleeps (ring transports): the topic's futex (the
    /// default), or a notifier of its own, an eventfd, a semaphore or a signal ([`Notifier`]).
    /// With [`Notifier::EventFd`] or [`Notifier::Signal`], [`Subscriber::notify_fd`] hands out
    /// a descriptor to wait on with epoll or an async runtime ([`Subscriber::arm`]); the
    /// blocking receives sleep on the notifier too. A copying transport refuses any but the
    /// futex (its connection is what wakes it).
    ///
    /// ```no_run
    /// # let bus = shmbus::Bus::open_default()?;
    /// let subscriber = bus
    ///     .subscriber::<u64>("md.ticks")
    ///     .notifier(shmbus::wait::Notifier::EventFd)
    ///     .open()?;
    /// let fd = subscriber.notify_fd().expect("an eventfd has a descriptor");
    /// # let _ = fd;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// Let a fast publisher get ahead before reading on (off by default: `Duration::ZERO`).
    ///
    /// When [`Subscriber::recv`] or [`Subscriber::recv_timeout`] finds the ring empty right
    /// after at least [`SLIP_RUN`] messages received without finding it empty, it pauses for
    /// `slip` (spinning) before it looks again. A subscriber that keeps pace with its publisher
    /// otherwise reads every cache line while the publisher is still writing it, and the line
    /// crosses between the two cores several times per message; after a slip it reads lines
    /// the publisher has finished. What it costs: a message that arrives during the pause waits
    /// for its end. Round trips and periodic messages (one at a time) never trigger it; nor
    /// does a subscriber that stays exactly in step with its publisher, finding the ring empty
    /// every few messages (the run never reaches [`SLIP_RUN`]).
    ///
    /// A saturated stream of 64-byte messages between two cores far apart moved about twice as
    /// many messages with a 2-8 µs slip (`shmbus bench --only stream`).
    pub fn slip(mut self, slip: Duration) -> Self {
        self.slip = slip;
        self
    }

    /// Start with the last `messages` messages already published, as far as the topic keeps
    /// them (its publisher's [`history`](crate::PublisherBuilder::history) under Block and Fail,
    /// up to its capacity less one under Overwrite); 0 by default: only messages published after
    /// the subscriber joined. [`Subscriber::next_seq`] tells where it started.
    pub fn history(mut self, messages: u64) -> Self {
        self.history = messages;
        self
    }

    /// Start with every message the topic still keeps: `history(u64::MAX)`. On the file
    /// transport ([`crate::transport::File`]), everything its spool holds, from its first
    /// message.
    pub fn from_start(self) -> Self {
        self.history(u64::MAX)
    }

    /// The name expected in the type fingerprint (see
    /// [`PublisherBuilder::type_name`](crate::PublisherBuilder::type_name)).
    pub fn type_name(mut self, name: &str) -> Self {
        self.type_name = Some(name.into());
        self
    }

    /// Open the topic, once, now.
    ///
    /// # Errors
    /// [`OpenError::NotFound`], [`OpenError::NotReady`], [`OpenError::IncompatibleType`],
    /// [`OpenError::UnsupportedVersion`], [`OpenError::TooSmall`], [`OpenError::Corrupt`],
    /// [`OpenError::TooManySubscribers`], [`OpenError::InvalidName`], and [`OpenError::Segment`] for an owner,
    /// a mode or a system error.
    pub fn open(&self) -> Result<Subscriber<T>, OpenError> {
        if let Some(copying) = self.bus.copying() {
            if self.notifier != Notifier::Futex {
                return Err(OpenError::Unsupported {
                    transport: copying.name(),
                    what: format!(
                        "the {:?} notifier (a copying transport's connection wakes its subscriber)",
                        self.notifier
                    ),
                });
            }
            return super::copying::open(
                copying,
                self.bus,
                &self.topic,
                self.copying_options(),
                OPEN_HANDSHAKE,
            )
            .map(|s| Subscriber {
                imp: SubImp::Copy(Box::new(s)),
            });
        }
        self.open_ring().map(|s| Subscriber {
            imp: SubImp::Ring(s),
        })
    }

    fn copying_options(&self) -> super::copying::SubOptions {
        super::copying::SubOptions {
            wait: self.wait,
            history: self.history,
            any_type: self.any_type,
            fingerprint: T::fingerprint(self.type_name.as_deref()),
            fixed_size: T::fixed_size(),
            align: T::align(),
        }
    }

    fn open_ring(&self) -> Result<RingSubscriber<T>, OpenError> {
        let open = open_topic(self.bus, &self.topic)?;
        if !self.any_type {
            open.check_type::<T>(self.type_name.as_deref(), &self.topic)?;
        }
        let (shape, lanes) = (open.shape, open.geometry.lanes);
        let control = open.control() as *const TopicControl;
        // SAFETY: the control block lives in `open.segment`, which the subscriber keeps (as
        // `segment`, dropped last); the raw pointer frees `open` to move.
        let control = unsafe { &*control };
        let lane = |k| {
            // SAFETY: `k < lanes`; the validated control size counts every lane.
            unsafe { control.lane(k, shape.max_readers) }
        };
        // SAFETY: as above, for lane 0's table.
        let table = unsafe { lane(0).table(shape.max_readers) };
        let me = crate::segment::my_identity();
        // Before an entry is taken: nothing to undo if it fails.
        let key = wait::topic_key(&self.bus.dir().join(open.segment.name()));
        let notify =
            NotifyWaiter::new(self.notifier, key, me).map_err(|source| OpenError::Notifier {
                topic: self.topic.clone(),
                notifier: self.notifier,
                source,
            })?;
        let index = claim_entry(&table, &control.data, me).map_err(|pids| {
            OpenError::TooManySubscribers {
                topic: self.topic.clone(),
                max: shape.max_readers,
                pids,
            }
        })?;
        let entry = |k: u32| -> &ReaderEntry {
            // SAFETY: as above.
            let table = unsafe { lane(k).table(shape.max_readers) };
            let entry: *const ReaderEntry = &*table.entries()[index];
            // SAFETY: the entry is in the mapping, which outlives this function (the table
            // value only describes where it is).
            unsafe { &*entry }
        };
        let mut readers: Vec<Reader<MappedSlots>> = Vec::with_capacity(lanes as usize);
        for k in 0..lanes {
            // SAFETY: the lane's words, its entry `index` and its slots are in the mapping,
            // which the subscriber keeps; entry `index` is ours in every lane once taken (in
            // lane 0's table by `claim_entry`, in the others by `claim_mirror`).
            let joined = (k == 0 || claim_mirror(entry(k), &control.data, me))
                .then(|| unsafe {
                    Reader::join(&*lane(k).writer, entry(k), open.slots(k), self.history)
                })
                .flatten();
            match joined {
                Some(reader) => readers.push(reader),
                None => {
                    // Out of every table again (lane 0's last: it holds the index), so that no
                    // publisher waits for a subscriber that is not there.
                    if k != 0 {
                        let _ = entry(k).take_over(me, 0);
                    }
                    for reader in readers.iter().rev() {
                        reader.leave_entry(me);
                    }
                    if k == 0 {
                        let _ = entry(0).take_over(me, 0);
                    }
                    return Err(OpenError::Contended {
                        topic: self.topic.clone(),
                    });
                }
            }
        }
        let mut readers = readers.into_iter();
        let reader = readers.next().expect("a topic has at least one lane");
        let more: Box<[_]> = readers.collect();
        let first_seq = reader.next_seq();
        let copy = (shape.policy == Policy::Overwrite)
            .then(|| AlignedWords::new(open.geometry.slot_size as usize, T::align()));
        // A `Checked` payload under Block and Fail is copied out of its slot to be validated
        // (under Overwrite, `copy` is where it lands already).
        let check = (T::validated() && copy.is_none())
            .then(|| AlignedWords::new(open.geometry.slot_size as usize, T::align()));
        let parks = backend::parks(
            &open.segment,
            &open.geometry,
            &shape,
            Party::Subscriber {
                entry: index as u32,
            },
        );
        // SAFETY: the slots are in the validated control block, in the mapping the subscriber
        // keeps; slot `index` is this subscriber's while it holds entry `index`.
        let notify_slot: *const NotifySlot =
            &unsafe { control.notify_slots(shape.max_readers, lanes) }[index];
        if let Some(waiter) = &notify {
            // SAFETY: as above.
            unsafe { &*notify_slot }.register(me, waiter.code());
        }
        let may_sleep = self.wait.may_sleep() || notify.is_some();
        let barrier_ok = may_sleep && wait::announce_sleeper(&control.data);
        if may_sleep {
            // After the count it stands for (see `ReaderEntry::waits`).
            reader.entry().mark_waits(WAITS_MAY_SLEEP);
        }
        Ok(RingSubscriber {
            reader,
            more,
            lanes,
            max_readers: shape.max_readers,
            reported_dead: vec![0; lanes as usize].into_boxed_slice(),
            phantom_checks: 0,
            cut_at_close: None,
            lane: 0,
            turn: 0,
            copy,
            check,
            policy: shape.policy,
            control,
            wait: self.wait,
            slip: self.slip,
            empty_at: first_seq,
            slips: 0,
            barrier_ok,
            may_sleep,
            notify,
            notify_slot,
            expected_len: T::fixed_size().map(|s| s as u32),
            fingerprint: open.header.fingerprint(),
            slot_size: open.geometry.slot_size,
            topic: self.topic.clone(),
            truncation: open.segment.truncation(),
            transport: self.bus.transport(),
            parks,
            segment: open.segment,
            _type: PhantomData,
        })
    }

    /// Open the topic, retrying while it does not exist yet or is not ready, for up to
    /// `timeout`: for a subscriber started before its publisher.
    ///
    /// # Errors
    /// As [`SubscriberBuilder::open`]; after `timeout`, the last `NotFound` or `NotReady`.
    pub fn open_timeout(&self, timeout: Duration) -> Result<Subscriber<T>, OpenError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.open() {
                Err(OpenError::NotFound { .. } | OpenError::NotReady { .. })
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                result => return result,
            }
        }
    }
}

/// A topic's segment, opened and validated: what a subscriber and discovery both start from.
pub(crate) struct OpenTopic {
    pub(crate) segment: Segment,
    pub(crate) header: HeaderValues,
    pub(crate) geometry: Geometry,
    pub(crate) shape: TopicShape,
}

impl OpenTopic {
    /// Refuse a topic whose messages are not `T`s (under `type_name`, if given).
    pub(crate) fn check_type<T: ?Sized + Payload>(
        &self,
        type_name: Option<&str>,
        topic: &str,
    ) -> Result<(), OpenError> {
        self.check_type_of(
            T::fingerprint(type_name),
            T::fixed_size(),
            T::align(),
            topic,
        )
    }

    /// Refuse a topic whose messages are not of `expected` (of `fixed_size` bytes, if fixed,
    /// aligned to `align`).
    pub(crate) fn check_type_of(
        &self,
        expected: crate::layout::TypeFingerprint,
        fixed_size: Option<usize>,
        align: usize,
        topic: &str,
    ) -> Result<(), OpenError> {
        let found = self.header.fingerprint();
        if found != Some(expected) {
            return Err(OpenError::IncompatibleType {
                topic: topic.into(),
                expected: Box::new(expected),
                found: Box::new(found.unwrap_or(expected_unknown())),
            });
        }
        // The fingerprint matched, but a hostile header could still pair it with a geometry
        // that misaligns or undersizes `T`: check what in-place references rely on.
        let g = &self.geometry;
        if let Some(size) = fixed_size {
            let align = align as u32;
            if g.slot_size as usize != size
                || g.payload_offset % align != 0
                || g.slot_stride % align != 0
                || g.slots_offset % align as u64 != 0
            {
                return Err(OpenError::Corrupt {
                    topic: topic.into(),
                    reason: LayoutError::Inconsistent("slot geometry does not fit the type"),
                });
            }
        }
        Ok(())
    }

    /// The slots of lane `lane` (`< geometry.lanes`), valid while `segment` stays mapped.
    pub(crate) fn slots(&self, lane: u32) -> MappedSlots {
        // SAFETY: the validated geometry puts every lane inside the mapping, each lane's start
        // aligned like the first (a whole number of strides and tag arrays from it).
        unsafe {
            MappedSlots::new(
                self.segment
                    .base()
                    .add(self.geometry.lane_offset(lane) as usize),
                &self.geometry,
            )
        }
    }

    /// The control block.
    pub(crate) fn control(&self) -> &TopicControl {
        // SAFETY: `geometry` was validated against this mapping: the control block lies inside
        // it, 128-aligned; any bytes are valid for its atomics; it lives as long as `self`.
        unsafe {
            &*(self
                .segment
                .base()
                .as_ptr()
                .add(self.geometry.control_offset as usize) as *const TopicControl)
        }
    }
}

impl SubscriberBuilder<'_, [u8]> {
    /// Read the topic whatever its payload type, each message as its bytes: for tools that
    /// look at any topic (`shmbus echo`), never for a program that knows its type. The type
    /// fingerprint is not checked; lengths still are (up to the slot size).
    pub fn any_type(mut self) -> Self {
        self.any_type = true;
        self
    }
}

/// Open topic `topic` of `bus` and check its header: every refusal but the type's.
pub(crate) fn open_topic(bus: &Bus, topic: &str) -> Result<OpenTopic, OpenError> {
    let name = bus
        .segment_name(topic)
        .map_err(|reason| OpenError::InvalidName {
            topic: topic.into(),
            reason,
        })?;
    let topic = || topic.to_string();
    let segment = backend::open_segment(bus, &name, MAX_SEGMENT_SIZE).map_err(|e| match e {
        SegmentError::NotFound(_) => OpenError::NotFound { topic: topic() },
        // A portable segment whose creator has not set its size yet (a native one maps empty).
        SegmentError::BadSize { size: 0, .. } => OpenError::NotReady { topic: topic() },
        e => OpenError::Segment(e),
    })?;
    // `Segment::create` makes the name visible before it sets the size: an empty segment
    // is one being created.
    if segment.is_empty() {
        return Err(OpenError::NotReady { topic: topic() });
    }
    if segment.len() < HEADER_SIZE as u64 {
        return Err(OpenError::TooSmall {
            topic: topic(),
            size: segment.len(),
        });
    }
    // SAFETY: the mapping is page-aligned and at least HEADER_SIZE bytes long.
    let header = unsafe { HeaderValues::read(segment.base().as_ptr()) };
    // The table's size and the lanes come from the header: clamped here, so that the size is
    // computed safely; a wrong one then fails the control size check.
    let control_size = control_size(
        header.max_readers.min(MAX_READERS),
        header.lanes.clamp(1, MAX_LANES),
    );
    let corrupt = |reason| OpenError::Corrupt {
        topic: topic(),
        reason,
    };
    let ring_len = backend::ring_len(&segment, &header);
    let geometry = Geometry::validate(&header, ring_len, control_size).map_err(|e| match e {
        LayoutError::TooSmall { size } => OpenError::TooSmall {
            topic: topic(),
            size,
        },
        LayoutError::NotReady => OpenError::NotReady { topic: topic() },
        LayoutError::UnsupportedVersion { found } => OpenError::UnsupportedVersion {
            topic: topic(),
            found,
        },
        reason => corrupt(reason),
    })?;
    let shape = TopicShape::validate(&header, geometry.capacity).map_err(corrupt)?;
    backend::validate_rest(&segment, &geometry, &shape).map_err(corrupt)?;
    Ok(OpenTopic {
        segment,
        header,
        geometry,
        shape,
    })
}

/// The longest a sleeping subscriber goes without checking that its publishers are alive.
const MAX_LIVENESS_SLICE: Duration = Duration::from_millis(640);

/// Wake-ups without a message, in one wait, after which the wait stops trusting them (see
/// `recv_deadline`) and polls every [`FALSE_ALARM_PAUSE`] instead.
const FALSE_ALARMS: u32 = 100;
/// How often a wait that stopped trusting its wake-ups polls.
const FALSE_ALARM_PAUSE: Duration = Duration::from_millis(1);

/// Spins of a wait made inline, in `recv` and `recv_timeout`, before the wait out of line
/// (see `RingSubscriber::poll_ready_spinning`). Deadlines are checked only out of line, every
/// 256 spins: the inline ones add at most this many to that.
const INLINE_SPINS: u32 = 64;

/// How a spin ended.
enum Spun {
    Ready(Ready),
    Deadline,
    Exhausted,
}

/// Messages received without finding the ring empty, after which an empty ring makes a
/// subscriber with a [`SubscriberBuilder::slip`] pause.
pub const SLIP_RUN: u64 = 16;

/// A fingerprint to show when a header's payload kind is not one this build knows.
fn expected_unknown() -> crate::layout::TypeFingerprint {
    crate::layout::TypeFingerprint::typed::<()>("<unknown kind>")
}

/// A subscriber of a ring topic: one entry of its subscriber table, a reader of every lane.
#[derive(Debug)]
pub(crate) struct RingSubscriber<T: ?Sized> {
    /// The reader of lane 0 (the only lane of a topic with one publisher).
    reader: Reader<MappedSlots>,
    /// The readers of lanes 1.. (other publishers), empty for a topic with one publisher.
    more: Box<[Reader<MappedSlots>]>,
    /// The lane of the message last handed out.
    lane: usize,
    /// The lane to look at first, next time (round robin, so that no publisher starves).
    turn: usize,
    /// Lanes of the topic, and entries of each lane's table: where the lanes lie.
    lanes: u32,
    max_readers: u32,
    /// Per lane, the dead publisher already reported (`RecvError::PublisherGone`), 0 if none.
    reported_dead: Box<[u64]>,
    /// Liveness checks in a row that found every lane free (see `check_publishers`).
    phantom_checks: u8,
    /// Whether the file was found shorter than the mapping when the topic was first found
    /// closed (`poll_empty`); asked once.
    cut_at_close: Option<bool>,
    /// Overwrite: where each message is copied (and validated) before it is handed out.
    copy: Option<AlignedWords>,
    /// Block and Fail, `Checked` payloads: where each message is copied to be validated.
    check: Option<AlignedWords>,
    policy: Policy,
    /// Points into `segment`'s mapping.
    control: *const TopicControl,
    wait: WaitStrategy,
    /// See [`SubscriberBuilder::slip`].
    slip: Duration,
    /// The sequence number at which a receive last found the ring empty.
    empty_at: u64,
    /// Pauses made for the slip.
    slips: u64,
    barrier_ok: bool,
    /// Whether this subscriber raised the data cell's `may_sleep` (a sleeping strategy or a
    /// notifier of its own).
    may_sleep: bool,
    /// Its own notifier, if not the futex.
    notify: Option<NotifyWaiter>,
    /// Its notify slot in the control block (in the mapping).
    notify_slot: *const NotifySlot,
    /// `Some(size_of::<T>())` for typed topics: every message must have exactly that length.
    expected_len: Option<u32>,
    /// What the header says the topic carries (`None`: a payload kind this build does not
    /// know, for an `any_type` subscriber).
    fingerprint: Option<crate::layout::TypeFingerprint>,
    /// The topic's largest message.
    slot_size: u32,
    topic: String,
    /// Set if the segment is found truncated under this mapping (`crate::sigbus`).
    truncation: crate::sigbus::Flag,
    /// The bus's transport's name.
    transport: &'static str,
    /// How this subscriber sleeps (on `data`) and wakes publishers (on `space`): futexes, or
    /// a portable segment's events. Point into `segment`'s mapping.
    parks: Parks,
    // Declared last: dropped after the fields that point into it.
    segment: Segment,
    _type: PhantomData<fn(&T)>,
}

// SAFETY: the raw pointers (and a portable segment's event handles, addresses in the mapping)
// point into `segment`, which moves with the subscriber; shared words are reached through
// atomics.
unsafe impl<T: ?Sized> Send for RingSubscriber<T> {}

impl<T: ?Sized> RingSubscriber<T> {
    #[inline(always)]
    fn control(&self) -> &TopicControl {
        // SAFETY: in the mapping, which outlives `self`'s use of it.
        unsafe { &*self.control }
    }

    /// Whether another process truncated the topic's segment under this subscriber (the
    /// receives then report [`RecvError::Truncated`]). One relaxed load.
    pub fn truncated(&self) -> bool {
        self.truncation.is_set()
    }

    #[inline]
    fn notify_slot(&self) -> &NotifySlot {
        // SAFETY: in the mapping, which outlives `self`'s use of it (see `open_ring`).
        unsafe { &*self.notify_slot }
    }

    fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.notify.as_ref().and_then(NotifyWaiter::fd)
    }

    /// Arm the notifier and count as a sleeper; `Ok(false)` (and nothing armed) if a message,
    /// or the topic's end, is there already.
    fn arm(&mut self) -> Result<bool, ArmError> {
        let Some(waiter) = self.notify.as_ref().filter(|w| w.fd().is_some()) else {
            return Err(ArmError::NoDescriptor);
        };
        waiter.arm(self.notify_slot());
        let control = self.control();
        control.data.enter();
        self.reader.entry().mark_waits(WAITS_ASLEEP);
        // Acquire (inside `has_news`/the load): as in `recv_deadline`'s wait.
        if self.has_news() || control.peers.publishers.load(Ordering::Acquire) == 0 {
            self.disarm();
            return Ok(false);
        }
        Ok(true)
    }

    /// Undo `arm`, and take the posts that came.
    fn disarm(&mut self) {
        self.reader.entry().unmark_waits(WAITS_ASLEEP);
        self.control().data.leave();
        self.notify_slot().disarm();
        if let Some(waiter) = &self.notify {
            waiter.drain();
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many times this subscriber has paused for its [`SubscriberBuilder::slip`].
    pub fn slips(&self) -> u64 {
        self.slips
    }

    /// Sequence number of the next message to receive from the topic's first publisher:
    /// where this subscriber joined, plus the messages it has received and lost since. (Each
    /// publisher numbers its own messages; see [`Sample::lane`].)
    pub fn next_seq(&self) -> u64 {
        self.reader.next_seq()
    }

    /// Messages this subscriber lost because a publisher overwrote them before it read them
    /// ([`Policy::Overwrite`] only; always 0 otherwise). Exact: with what it received, they
    /// account for every message published since it joined.
    pub fn lost(&self) -> u64 {
        // Saturating: a hostile publisher's stamps can make a loss count anything.
        (self.more.iter().map(Reader::lost)).fold(self.reader.lost(), u64::saturating_add)
    }

    /// The topic's policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn transport(&self) -> &'static str {
        self.transport
    }

    #[inline(always)]
    fn lane_reader(&self, lane: usize) -> &Reader<MappedSlots> {
        match lane {
            0 => &self.reader,
            _ => &self.more[lane - 1],
        }
    }

    #[inline(always)]
    fn lane_reader_mut(&mut self, lane: usize) -> &mut Reader<MappedSlots> {
        match lane {
            0 => &mut self.reader,
            _ => &mut self.more[lane - 1],
        }
    }

    /// The next message if it is ready and well formed: the whole fast path of every receive,
    /// inlined into the caller's loop so that what it finds stays in registers. Returned
    /// through memory from an out-of-line `recv`, a `Sample` was written as 8-byte stores and
    /// read back as 16-byte loads, a failed store-to-load forwarding per message: it held a
    /// streaming subscriber at ~100 M 8-byte messages/s where this path reaches ~380 M
    /// (`shmbus bench --only stream`, same machine state).
    ///
    /// Under Block and Fail only (under Overwrite a message is copied, in `poll`, out of
    /// line). With several publishers it looks at the lane whose turn it is, and moves the
    /// turn on.
    #[inline(always)]
    fn poll_ready(&mut self) -> Option<Ready> {
        if self.copy.is_some() {
            return None;
        }
        if self.more.is_empty() {
            return match self.reader.peek() {
                Peek::Ready(ready) if self.expected_len.is_none_or(|e| e == ready.len) => {
                    Some(ready)
                }
                _ => None,
            };
        }
        let lane = self.turn;
        match self.lane_reader(lane).peek() {
            Peek::Ready(ready) if self.expected_len.is_none_or(|e| e == ready.len) => {
                self.lane = lane;
                self.turn = if lane == self.more.len() { 0 } else { lane + 1 };
                Some(ready)
            }
            _ => None,
        }
    }

    /// While spinning for the next message (Block and Fail): fetch its payload's line beside
    /// the tag's (see `SlotStorage::prepare_read`), in the lane whose turn it is.
    #[inline(always)]
    fn prepare_read(&self) {
        if self.copy.is_none() {
            self.lane_reader(self.turn).prepare_read();
        }
    }

    /// Look for the next message without waiting: in each lane once, from `turn` on.
    #[inline]
    fn poll(&mut self) -> Result<Option<Ready>, RecvError> {
        let lanes = 1 + self.more.len();
        for _ in 0..lanes {
            let lane = self.turn;
            let peek = {
                let reader = match lane {
                    0 => &mut self.reader,
                    _ => &mut self.more[lane - 1],
                };
                match &mut self.copy {
                    // Overwrite: copy and validate; the reader has moved past the message.
                    Some(copy) => reader.read_copy(copy.words_mut()),
                    None => reader.peek(),
                }
            };
            if lanes > 1 {
                self.turn = (lane + 1) % lanes;
            }
            match peek {
                Peek::Empty => continue,
                Peek::Ready(ready) => {
                    self.lane = lane;
                    return match self.expected_len {
                        Some(expected) if ready.len != expected => {
                            self.skip_corrupt(ready.seq, ready.len, expected)
                        }
                        _ => Ok(Some(ready)),
                    };
                }
                Peek::BadLength { seq, len } => {
                    self.lane = lane;
                    let expected = self.expected_len.unwrap_or(self.slot_size());
                    return self.skip_corrupt(seq, len, expected);
                }
            }
        }
        self.poll_empty()
    }

    fn slot_size(&self) -> u32 {
        use crate::ring::SlotStorage;
        self.reader.storage().slot_size()
    }

    #[cold]
    fn skip_corrupt(
        &mut self,
        seq: u64,
        len: u32,
        expected: u32,
    ) -> Result<Option<Ready>, RecvError> {
        self.release();
        Err(RecvError::Corrupt { seq, len, expected })
    }

    #[inline]
    fn poll_empty(&mut self) -> Result<Option<Ready>, RecvError> {
        // Before anything here is believed: a truncated segment reads as zeros past its new
        // end, which look like empty lanes and a closed topic.
        if self.truncation.is_set() {
            return Err(RecvError::Truncated);
        }
        // About to report "nothing": give back every slot read, so that no publisher waits
        // for slots this side is done with.
        let mut flushed = self.reader.flush();
        for reader in self.more.iter_mut() {
            flushed |= reader.flush();
        }
        if flushed {
            self.control().space.notify(&self.parks.space);
        }
        // Acquire: pairs with each publisher's Release decrement at close; every message they
        // sent is visible, so empty lanes after this load mean nothing more will come.
        if self.control().peers.publishers.load(Ordering::Acquire) != 0 {
            return Ok(None);
        }
        if self.has_news() {
            return Ok(None); // a message landed meanwhile: the caller polls again
        }
        // The zeros just read (the count above) may be the truncation's, not a close; or the
        // truncation cut only what this side has not touched: a system call, made once (a
        // real-time loop that keeps polling a closed topic makes no more).
        let segment = &self.segment;
        let cut = *self.cut_at_close.get_or_insert_with(|| segment.shrunk());
        if cut || self.truncation.is_set() {
            return Err(RecvError::Truncated);
        }
        Err(RecvError::Disconnected)
    }

    /// Whether there is something to look at in some lane: a message (Block), or under
    /// Overwrite a message or the news that some were lost.
    #[inline]
    fn has_news(&self) -> bool {
        (0..=self.more.len()).any(|lane| self.lane_has_news(lane))
    }

    /// The same, in one lane.
    #[inline]
    fn lane_has_news(&self, lane: usize) -> bool {
        let r = self.lane_reader(lane);
        if self.copy.is_some() {
            r.has_news()
        } else {
            !matches!(r.peek(), Peek::Empty)
        }
    }

    /// Be done with the message last handed out (Block: give its slot back; under Overwrite
    /// the copy already moved past it).
    #[inline(always)]
    fn release(&mut self) {
        if self.copy.is_some() {
            return;
        }
        let lane = if self.more.is_empty() { 0 } else { self.lane };
        if self.lane_reader_mut(lane).release() {
            self.control().space.notify(&self.parks.space);
        }
    }

    /// `poll_ready`, spinning up to [`INLINE_SPINS`] times while it finds nothing (under the
    /// spinning strategies, Block and Fail, no slip): the first part of a wait, inlined into
    /// `recv` so that a message that comes within it is handed out without a call to the wait
    /// out of line (`recv_deadline`, which then spins its own count). Measured with
    /// `shmbus bench --quick --only shm-poll-8B --only shm-poll-64B`, three runs each, same
    /// machine state: round trip over the raw cache line 1.33-1.47 -> 1.19-1.27 (8 B),
    /// 1.35-1.51 -> 1.13-1.33 (64 B, the bench's receiver then reading only the first word).
    #[inline(always)]
    fn poll_ready_spinning(&mut self) -> Option<Ready> {
        // A message already there costs one look, not the spin count's reckoning.
        if let Some(ready) = self.poll_ready() {
            return Some(ready);
        }
        let spins = match self.wait {
            _ if self.copy.is_some() || !self.slip.is_zero() => 1,
            WaitStrategy::Futex { spin } => spin.clamp(1, INLINE_SPINS),
            _ => INLINE_SPINS,
        };
        for _ in 1..spins {
            self.prepare_read();
            spin_hint();
            if let Some(ready) = self.poll_ready() {
                return Some(ready);
            }
        }
        None
    }

    /// `poll` out of line: the rest of `try_recv` once its fast path found nothing.
    #[inline(never)]
    fn poll_slow(&mut self) -> Result<Option<Ready>, RecvError> {
        self.poll()
    }

    /// Waits for the next message until `deadline`: the slow path of `recv` and
    /// `recv_timeout`, out of line so that their fast path stays small.
    #[inline(never)]
    fn recv_deadline(&mut self, deadline: Option<Instant>) -> Result<Option<Ready>, RecvError> {
        let head = self.reader.next_seq();
        if !self.slip.is_zero() && head.wrapping_sub(self.empty_at) >= SLIP_RUN {
            self.slips += 1;
            let end = Instant::now() + self.slip;
            let end = deadline.map_or(end, |d| d.min(end));
            while Instant::now() < end {
                spin_hint();
            }
        }
        self.empty_at = head;
        // Spin first on the inlined fast path (Block and Fail), then wait the strategy's way
        // without spinning again.
        let mut wait = self.wait;
        if self.copy.is_none() {
            let spins = match wait {
                WaitStrategy::Spin => u32::MAX,
                WaitStrategy::Futex { spin } => spin,
                _ => 0,
            };
            if spins > 0 {
                match self.spin_until(deadline, spins)? {
                    Spun::Ready(ready) => return Ok(Some(ready)),
                    Spun::Deadline => return self.poll(),
                    Spun::Exhausted => {}
                }
                if let WaitStrategy::Futex { .. } = wait {
                    wait = WaitStrategy::Futex { spin: 0 };
                }
            }
        }
        // In slices, so that a publisher that died is noticed (see `check_publishers`): the
        // first of LIVENESS_CHECK, each next one twice as long up to MAX_LIVENESS_SLICE, so that
        // a subscriber asleep on a quiet topic does not wake a hundred times a second.
        let mut slice = LIVENESS_CHECK;
        let mut check_at = Instant::now() + slice;
        // Wake-ups whose news `poll` then did not find. An honest publisher's news is there to
        // find (but for a slot caught mid-write, now and then); shared memory that keeps saying
        // otherwise (a corrupt or hostile segment: found by the `bus_segment` fuzz target, as
        // an endless loop) must not make this wait a busy loop, nor one that misses its
        // deadline.
        let mut false_alarms = 0u32;
        loop {
            if let Some(ready) = self.poll()? {
                return Ok(Some(ready));
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if now >= check_at {
                self.check_publishers()?;
                slice = (slice * 2).min(MAX_LIVENESS_SLICE);
                check_at = now + slice;
            }
            let until = deadline.map_or(check_at, |d| d.min(check_at));
            if false_alarms >= FALSE_ALARMS {
                std::thread::sleep(FALSE_ALARM_PAUSE.min(until.saturating_duration_since(now)));
                continue;
            }
            let this = &*self;
            let control = this.control();
            let ready = || {
                // Acquire (inside `has_news`/the load): what `poll` then reads is visible.
                this.has_news() || control.peers.publishers.load(Ordering::Acquire) == 0
            };
            let (until, barrier_ok) = (Some(until), this.barrier_ok);
            let entry = this.reader.entry();
            let arrived = match &this.notify {
                None => {
                    let park = Marked::new(&this.parks.data, entry);
                    wait::wait_until(wait, &control.data, &park, barrier_ok, until, ready)
                }
                Some(waiter) => {
                    let own = waiter.park(this.notify_slot());
                    let park = Marked::new(&own, entry);
                    wait::wait_until(wait, &control.data, &park, barrier_ok, until, ready)
                }
            };
            if arrived {
                false_alarms += 1;
            }
        }
    }

    /// Report a publisher that died without closing its lane, once every message it
    /// published has been received: once per dead publisher while others live on (receiving
    /// then goes on with them), and on every call once no lane has a live publisher (as
    /// `Disconnected` is for a closed topic). Makes system calls (liveness): called only after
    /// [`LIVENESS_CHECK`] or more of waiting.
    #[cold]
    #[inline(never)]
    fn check_publishers(&mut self) -> Result<(), RecvError> {
        if self.segment.shrunk() {
            // Cut under this subscriber where it has not read yet: nothing more will come.
            return Err(RecvError::Truncated);
        }
        let (mut any_alive, mut any_dead, mut newly_dead) = (false, None, None);
        for k in 0..self.lanes {
            // SAFETY: `k < lanes`, counted in the validated control size; the mapping lives as
            // long as `self`.
            let id = unsafe { self.control().lane(k, self.max_readers) }
                .owner
                .id
                .load(Ordering::Acquire);
            if id == 0 {
                continue;
            }
            if identity_alive(id) {
                any_alive = true;
                continue;
            }
            any_dead = Some(identity_pid(id));
            let lane = k as usize;
            if self.reported_dead[lane] != id && !self.lane_has_news(lane) {
                newly_dead = Some((lane, id));
            }
        }
        // Every lane free while the count says a publisher is still on: a publisher died
        // after counting itself in `attach` and before taking a lane (or one is between the
        // two right now, for microseconds). Twice in a row, LIVENESS_CHECK or more apart, it
        // is the former: the topic is as closed as it will ever be.
        let all_free = !any_alive && any_dead.is_none();
        self.phantom_checks = if all_free { self.phantom_checks + 1 } else { 0 };
        if self.phantom_checks >= 2 && !self.has_news() {
            self.phantom_checks = 2;
            return Err(RecvError::Disconnected);
        }
        if !any_alive {
            return match any_dead {
                Some(pid) if !self.has_news() => Err(RecvError::PublisherGone { pid }),
                _ => Ok(()),
            };
        }
        match newly_dead {
            Some((lane, id)) => {
                self.reported_dead[lane] = id;
                Err(RecvError::PublisherGone {
                    pid: identity_pid(id),
                })
            }
            None => Ok(()),
        }
    }

    /// The spinning part of a wait (Block and Fail): the inlined fast path, over and over, so
    /// that a message is taken the moment its stamp lands, with the full `poll` (a closed
    /// topic, a corrupt message, slots to give back) and the clock every so often. Spinning
    /// through the general wait instead (a readiness check, then `poll` once it holds) cost the
    /// 64-byte round trip 1.30-1.88x the raw cache line where this gives 1.08-1.20x (`shmbus
    /// bench --only shm-poll`, both builds alternated).
    #[inline(never)]
    fn spin_until(&mut self, deadline: Option<Instant>, spins: u32) -> Result<Spun, RecvError> {
        const FULL_POLL_EVERY: u32 = 256;
        let mut i: u32 = 0;
        // When to check that the publishers are alive (system calls): after LIVENESS_CHECK of
        // waiting, then at doubling intervals (as a sleeping wait does), never on the way to
        // a message.
        let mut next_check: Option<Instant> = None;
        let mut interval = LIVENESS_CHECK;
        loop {
            if i % FULL_POLL_EVERY == 0 {
                if let Some(ready) = self.poll()? {
                    return Ok(Spun::Ready(ready));
                }
                if i != 0 {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        return Ok(Spun::Deadline);
                    }
                    match next_check {
                        None => next_check = Some(now + interval),
                        Some(at) if now >= at => {
                            self.check_publishers()?;
                            interval = (interval * 2).min(MAX_LIVENESS_SLICE);
                            next_check = Some(now + interval);
                        }
                        Some(_) => {}
                    }
                }
            } else if let Some(ready) = self.poll_ready() {
                return Ok(Spun::Ready(ready));
            }
            i = i.wrapping_add(1);
            if i == spins {
                return Ok(Spun::Exhausted);
            }
            self.prepare_read();
            spin_hint();
        }
    }

    /// A sample of a private copy of the message, once `valid` says its bytes are a value;
    /// otherwise the message is skipped with [`RecvError::InvalidBitPattern`].
    #[inline]
    fn validated_sample(
        &mut self,
        ready: Ready,
        valid: fn(&[u8]) -> bool,
    ) -> Result<Sample<'_, T>, RecvError> {
        let ptr = match (&mut self.copy, &mut self.check) {
            // Overwrite: copied (and the copy checked against the slot's stamp) already.
            (Some(copy), _) => copy.ptr() as *const u8,
            (None, Some(check)) => {
                let reader = match self.lane {
                    0 => &self.reader,
                    lane => &self.more[lane - 1],
                };
                // Word by word, atomically: the publisher (or anyone) may write the slot
                // while it is read, and no `T` is made of these bytes until they are checked.
                let words = reader.storage().payload_words(ready.index);
                for (to, from) in check.words_mut().iter_mut().zip(words) {
                    *to = from.load(Ordering::Relaxed);
                }
                check.ptr() as *const u8
            }
            (None, None) => unreachable!("a validated payload has a buffer to copy into"),
        };
        // SAFETY: `ptr` is this subscriber's buffer of at least a slot's size, and the length
        // was checked against the type's size (`expected_len`) when the message was found.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, ready.len as usize) };
        if !valid(bytes) {
            self.release();
            return Err(RecvError::InvalidBitPattern { seq: ready.seq });
        }
        Ok(Sample {
            ptr,
            len: ready.len,
            seq: ready.seq,
            owner: Owner::Ring(self),
        })
    }

    #[inline(always)]
    fn sample(&mut self, ready: Ready) -> Sample<'_, T> {
        let ptr = match &mut self.copy {
            Some(copy) => copy.ptr() as *const u8,
            // Lane 0 spelled out: the fast path of a one-publisher topic reads no lane number.
            None if self.more.is_empty() => self.reader.storage().payload_ptr(ready.index),
            None => self
                .lane_reader(self.lane)
                .storage()
                .payload_ptr(ready.index),
        };
        Sample {
            ptr,
            len: ready.len,
            seq: ready.seq,
            owner: Owner::Ring(self),
        }
    }
}

impl<T: ?Sized + InPlace> RingSubscriber<T> {
    /// The next message if one is ready, without waiting. Real-time safe: no allocation, lock
    /// or syscall (a wake syscall only if the publisher sleeps on a full ring; one `fstat`
    /// the first time it finds the topic closed).
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the publisher has closed and everything was received;
    /// [`RecvError::Corrupt`] for a message with an impossible length (skipped);
    /// [`RecvError::Truncated`] once the segment is found cut.
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_, T>>, RecvError> {
        if let Some(ready) = self.poll_ready() {
            return Ok(Some(self.sample(ready)));
        }
        match self.poll_slow()? {
            Some(ready) => Ok(Some(self.sample(ready))),
            None => Ok(None),
        }
    }

    /// The next message, waiting (per the subscriber's [`WaitStrategy`]) for as long as it
    /// takes: see [`Subscriber::recv_timeout`].
    ///
    /// # Errors
    /// As [`Subscriber::try_recv`].
    #[inline(always)]
    pub fn recv(&mut self) -> Result<Sample<'_, T>, RecvError> {
        let ready = match self.poll_ready_spinning() {
            Some(ready) => ready,
            None => self
                .recv_deadline(None)?
                .expect("a wait without a deadline ends only with a message or an error"),
        };
        Ok(self.sample(ready))
    }

    /// The next message, waiting up to `timeout`; `Ok(None)` if none came.
    ///
    /// # Errors
    /// As [`Subscriber::try_recv`].
    #[inline(always)]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Sample<'_, T>>, RecvError> {
        if let Some(ready) = self.poll_ready_spinning() {
            return Ok(Some(self.sample(ready)));
        }
        match self.recv_deadline(Some(Instant::now() + timeout))? {
            Some(ready) => Ok(Some(self.sample(ready))),
            None => Ok(None),
        }
    }
}

impl<T: bytemuck::Pod> RingSubscriber<T> {
    /// Whether the batch's fast path serves this subscriber: Block or Fail, one lane.
    #[inline(always)]
    fn runs(&self) -> bool {
        self.copy.is_none() && self.more.is_empty()
    }

    /// The batch's fast path (Block or Fail, one lane): messages of `T` handed to `read` in
    /// place, up to `max`; `None` when it does not apply or found nothing (the caller then goes
    /// the general way, which reports what stopped the run).
    #[inline(always)]
    fn read_run(&mut self, max: usize, read: &mut impl FnMut(&T)) -> Option<usize> {
        if !self.runs() {
            return None;
        }
        let (got, freed) = self.reader.read_run(max, size_of::<T>() as u32, |ptr| {
            // SAFETY: as `Sample::deref`: the payload is aligned for `T` (checked at open), the
            // tag says `size_of::<T>()` bytes, the slot stays this subscriber's until the run
            // releases it after this call, and any bytes are a `T` (`Pod`).
            read(unsafe { &*(ptr as *const T) })
        });
        if freed {
            self.control().space.notify(&self.parks.space);
        }
        (got > 0).then_some(got)
    }
}

impl<T: CheckedBitPattern + NoUninit> RingSubscriber<Checked<T>> {
    /// The next message if one is ready, copied and validated, without waiting. Real-time
    /// safe, as [`Subscriber::try_recv`] for in-place payloads.
    ///
    /// # Errors
    /// [`RecvError::InvalidBitPattern`] for a message that is not a valid `T` (skipped), and
    /// those of the in-place form.
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_, Checked<T>>>, RecvError> {
        let ready = match self.poll_ready() {
            Some(ready) => ready,
            None => match self.poll_slow()? {
                Some(ready) => ready,
                None => return Ok(None),
            },
        };
        self.validated_sample(ready, is_valid::<T>).map(Some)
    }

    /// The next message, copied and validated, waiting for as long as it takes.
    ///
    /// # Errors
    /// As [`Subscriber::<Checked<T>>::try_recv`](Subscriber::try_recv).
    #[inline]
    pub fn recv(&mut self) -> Result<Sample<'_, Checked<T>>, RecvError> {
        let ready = match self.poll_ready_spinning() {
            Some(ready) => ready,
            None => self
                .recv_deadline(None)?
                .expect("a wait without a deadline ends only with a message or an error"),
        };
        self.validated_sample(ready, is_valid::<T>)
    }

    /// The next message, copied and validated, waiting up to `timeout`; `Ok(None)` if none
    /// came.
    ///
    /// # Errors
    /// As [`Subscriber::<Checked<T>>::try_recv`](Subscriber::try_recv).
    #[inline]
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Sample<'_, Checked<T>>>, RecvError> {
        let ready = match self.poll_ready_spinning() {
            Some(ready) => ready,
            None => match self.recv_deadline(Some(Instant::now() + timeout))? {
                Some(ready) => ready,
                None => return Ok(None),
            },
        };
        self.validated_sample(ready, is_valid::<T>).map(Some)
    }
}

/// Whether `bytes` (`size_of::<T>()` of them, aligned for `T`) are a valid `T`.
fn is_valid<T: CheckedBitPattern>(bytes: &[u8]) -> bool {
    bytemuck::checked::try_from_bytes::<T>(bytes).is_ok()
}

impl<T: ?Sized> Drop for RingSubscriber<T> {
    fn drop(&mut self) {
        // Out of the tables first: a publisher waiting for this subscriber stops waiting.
        // Lane 0's entry last: while it is held, no other subscriber takes this index in the
        // other lanes.
        let me = crate::segment::my_identity();
        let control = self.control();
        // Before the entry is free: its marks must never be found on a joiner's entry.
        if self.may_sleep {
            self.reader.entry().unmark_waits(WAITS_MAY_SLEEP);
            control.data.lower_may_sleep();
        }
        for reader in self.more.iter() {
            reader.leave_entry(me);
        }
        self.reader.leave_entry(me);
        control.space.notify(&self.parks.space);
        if self.notify.is_some() {
            self.notify_slot().unregister(me);
        }
    }
}

/// A received message, read in place in the shared mapping. Dropping it gives the slot back to
/// the publisher: slots go back in batches of about 1 KiB of slots (so that a streaming
/// publisher refills lines the subscriber has left), and all at once whenever the subscriber
/// finds no message waiting or is dropped.
///
/// The subscriber stays borrowed while a sample lives:
/// ```compile_fail,E0499
/// # let bus = shmbus::Bus::builder().prefix("doctest-sample.").build().unwrap();
/// # let mut publisher = bus.publisher::<u64>("t").create().unwrap();
/// # publisher.try_send(1).unwrap();
/// let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
/// let first = subscriber.try_recv().unwrap().unwrap();
/// let second = subscriber.try_recv(); // error: `subscriber` is still borrowed by `first`
/// println!("{}", *first);
/// ```
pub struct Sample<'s, T: ?Sized> {
    owner: Owner<'s, T>,
    ptr: *const u8,
    len: u32,
    seq: u64,
}

impl<T: ?Sized> Sample<'_, T> {
    /// The message's sequence number: 0 for its publisher's first message, then consecutive
    /// (each publisher of a topic numbers its own messages).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Which of the topic's publishers sent it: the lane it came through (0 for the creator;
    /// see [`PublisherBuilder::attach`](crate::PublisherBuilder::attach)).
    pub fn lane(&self) -> usize {
        match &self.owner {
            Owner::Ring(s) => s.lane,
            Owner::Copy(_) => 0,
        }
    }

    /// When its publisher sent it, in nanoseconds since the Unix epoch: copying transports
    /// stamp each frame (`None` on the ring transports, which do not).
    pub fn sent_at_ns(&self) -> Option<u64> {
        match &self.owner {
            Owner::Ring(_) => None,
            Owner::Copy(c) => Some(c.last_stamp()),
        }
    }
}

/// Whose buffer a sample points into: a ring subscriber's slot (released on drop) or a
/// copying subscriber's receive buffer.
enum Owner<'s, T: ?Sized> {
    Ring(&'s mut RingSubscriber<T>),
    Copy(&'s mut super::copying::CopySubscriber<T>),
}

impl<T: ?Sized> Drop for Sample<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Owner::Ring(subscriber) = &mut self.owner {
            subscriber.release();
        }
    }
}

impl<T: bytemuck::Pod> Deref for Sample<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the slot's payload is aligned for `T` and `size_of::<T>()` long (checked at
        // open against the validated geometry; the length against `size_of::<T>()` in `poll`);
        // the publisher does not reuse the slot before we release it on drop; any bytes are a
        // valid `T` (`Pod`).
        unsafe { &*(self.ptr as *const T) }
    }
}

impl<T: CheckedBitPattern + NoUninit> Deref for Sample<'_, Checked<T>> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the sample points at the subscriber's private copy of the message (never at
        // shared memory: see `validated_sample`), aligned for `T`, `size_of::<T>()` bytes that
        // `CheckedBitPattern` found to be a valid `T`; the copy stays as it is while the
        // sample borrows the subscriber.
        unsafe { &*(self.ptr as *const T) }
    }
}

impl<T: CheckedBitPattern + NoUninit + std::fmt::Debug> std::fmt::Debug for Sample<'_, Checked<T>> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("seq", &self.seq)
            .field("value", &**self)
            .finish()
    }
}

impl Deref for Sample<'_, [u8]> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= slot_size` (checked in `peek`), so the bytes lie in the slot, which
        // stays ours until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) }
    }
}

impl<T: bytemuck::Pod + std::fmt::Debug> std::fmt::Debug for Sample<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sample")
            .field("seq", &self.seq)
            .field("value", &**self)
            .finish()
    }
}

/// How long `open` waits for a copying transport's publisher to greet a new subscriber.
const OPEN_HANDSHAKE: Duration = Duration::from_secs(2);

/// A subscriber of a topic.
///
/// On a ring transport (shared memory, the default) it holds an entry of the topic's
/// subscriber table and a position in every publisher's lane, and reads messages in place; on
/// a copying transport ([`crate::transport`]) it holds a connection and reads each message
/// into a buffer of its own. The calls are the same.
///
/// `Send` but not `Sync`: receiving takes `&mut self`, and a [`Sample`] borrows the subscriber
/// until dropped, so one thread at a time reads.
#[derive(Debug)]
pub struct Subscriber<T: ?Sized> {
    imp: SubImp<T>,
}

/// The ring is inline (it is the fast path: no indirection per message); the copying state,
/// behind a system call per message anyway, is boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum SubImp<T: ?Sized> {
    Ring(RingSubscriber<T>),
    Copy(Box<super::copying::CopySubscriber<T>>),
}

impl<T: ?Sized> Subscriber<T> {
    /// Whether another process truncated the topic's segment under this subscriber (the
    /// receives then report [`RecvError::Truncated`]). One relaxed load. Always `false` on a
    /// copying transport.
    pub fn truncated(&self) -> bool {
        match &self.imp {
            SubImp::Ring(s) => s.truncated(),
            SubImp::Copy(_) => false,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        match &self.imp {
            SubImp::Ring(s) => s.topic(),
            SubImp::Copy(s) => s.topic(),
        }
    }

    /// How many times this subscriber has paused for its [`SubscriberBuilder::slip`] (ring
    /// transports).
    pub fn slips(&self) -> u64 {
        match &self.imp {
            SubImp::Ring(s) => s.slips(),
            SubImp::Copy(_) => 0,
        }
    }

    /// Sequence number of the next message to receive from the topic's first publisher:
    /// where this subscriber joined, plus the messages it has received and lost since. (Each
    /// publisher numbers its own messages; see [`Sample::lane`].) On a copying transport,
    /// 0 until the first message arrives.
    pub fn next_seq(&self) -> u64 {
        match &self.imp {
            SubImp::Ring(s) => s.next_seq(),
            SubImp::Copy(s) => s.next_seq(),
        }
    }

    /// Messages this subscriber lost because a publisher overwrote them before it read them
    /// ([`Policy::Overwrite`] only; always 0 otherwise). Exact: with what it received, they
    /// account for every message published since it joined.
    pub fn lost(&self) -> u64 {
        match &self.imp {
            SubImp::Ring(s) => s.lost(),
            SubImp::Copy(s) => s.lost(),
        }
    }

    /// The topic's policy.
    pub fn policy(&self) -> Policy {
        match &self.imp {
            SubImp::Ring(s) => s.policy(),
            SubImp::Copy(s) => s.policy(),
        }
    }

    /// The name of the transport this subscriber reads through (`shm`, `unix`, ...).
    pub fn transport(&self) -> &'static str {
        match &self.imp {
            SubImp::Ring(s) => s.transport(),
            SubImp::Copy(s) => s.transport(),
        }
    }

    /// What the topic says it carries: its publisher's type fingerprint. What an
    /// [`any_type`](SubscriberBuilder::any_type) subscriber learns of the type it reads as
    /// bytes. `None` for a ring topic whose payload kind this build does not know.
    pub fn fingerprint(&self) -> Option<crate::layout::TypeFingerprint> {
        match &self.imp {
            SubImp::Ring(s) => s.fingerprint,
            SubImp::Copy(s) => Some(s.fingerprint()),
        }
    }

    /// The topic's largest message in bytes (its slot size; a typed topic's type size).
    pub fn slot_size(&self) -> usize {
        match &self.imp {
            SubImp::Ring(s) => s.slot_size as usize,
            SubImp::Copy(s) => s.slot_size() as usize,
        }
    }

    /// A descriptor that becomes readable when a publisher wakes this subscriber, for epoll,
    /// mio or an async runtime. On a ring transport: with [`Notifier::EventFd`] an epoll
    /// instance over the eventfd (and the socket publishers fetch it through), with
    /// [`Notifier::Signal`] a signalfd (poll it from the thread that arms); `None` with the
    /// futex or a semaphore. On a copying transport: its connection (socket, pipe, FIFO,
    /// queue), readable when bytes arrive; `None` for the file, whose readiness is not its
    /// data's. See [`Subscriber::arm`] for the loop that uses it.
    ///
    /// A publisher that dies posts nothing: a program that waits on the descriptor alone also
    /// wakes now and then to call [`Subscriber::recv_timeout`], which reports it.
    pub fn notify_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.imp {
            SubImp::Ring(s) => s.notify_fd(),
            SubImp::Copy(s) => s.fd(),
        }
    }

    /// Get ready to wait on [`Subscriber::notify_fd`] outside shmbus: on a ring transport, arm
    /// the notifier (the next publisher's wake-up posts to it) and count as a sleeper;
    /// `Ok(None)` when a message, or the topic's end, is there already: receive instead of
    /// waiting. Hold the returned guard while you wait for the descriptor to be readable;
    /// dropping it disarms and takes the posts that came. A message that arrives while armed
    /// is always posted. On a copying transport there is nothing to arm: the guard only
    /// lends the connection's descriptor (receive until `try_recv` says `None` before each
    /// wait: what it has read already does not make the descriptor readable again).
    ///
    /// ```no_run
    /// # use shmbus::wait::Notifier;
    /// # let bus = shmbus::Bus::open_default()?;
    /// # let mut subscriber = bus.subscriber::<u64>("t").notifier(Notifier::EventFd).open()?;
    /// use rustix::event::{poll, PollFd, PollFlags};
    /// loop {
    ///     while let Some(tick) = subscriber.try_recv()? {
    ///         println!("{}", *tick);
    ///     }
    ///     if let Some(armed) = subscriber.arm()? {
    ///         let fd = armed.fd();
    ///         poll(&mut [PollFd::new(&fd, PollFlags::IN)], None)?;
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`ArmError::NoDescriptor`] when [`Subscriber::notify_fd`] is `None`.
    pub fn arm(&mut self) -> Result<Option<Armed<'_, T>>, ArmError> {
        match &mut self.imp {
            // `then`, not `then_some`: a guard built for nothing would disarm on its drop.
            SubImp::Ring(s) => Ok(s.arm()?.then(|| Armed {
                on: ArmedOn::Ring(s),
            })),
            SubImp::Copy(s) => match s.fd() {
                Some(fd) => Ok(Some(Armed {
                    on: ArmedOn::Copy(fd),
                })),
                None => Err(ArmError::NoDescriptor),
            },
        }
    }
}

/// A subscriber armed to wait on its notifier's descriptor ([`Subscriber::arm`]). Dropping
/// it disarms.
#[must_use = "dropping the guard disarms at once"]
#[derive(Debug)]
pub struct Armed<'s, T: ?Sized> {
    on: ArmedOn<'s, T>,
}

#[derive(Debug)]
enum ArmedOn<'s, T: ?Sized> {
    /// A ring subscriber whose notifier is armed.
    Ring(&'s mut RingSubscriber<T>),
    /// A copying subscriber's connection.
    Copy(std::os::fd::BorrowedFd<'s>),
}

impl<T: ?Sized> Armed<'_, T> {
    /// The descriptor to wait on ([`Subscriber::notify_fd`]).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.on {
            ArmedOn::Ring(s) => s
                .notify_fd()
                .expect("only a subscriber with a notifier descriptor is armed"),
            ArmedOn::Copy(fd) => *fd,
        }
    }
}

impl<T: ?Sized> Drop for Armed<'_, T> {
    fn drop(&mut self) {
        if let ArmedOn::Ring(s) = &mut self.on {
            s.disarm();
        }
    }
}

impl<T: ?Sized + InPlace> Subscriber<T> {
    /// The next message if one is ready, without waiting. On a ring transport real-time safe:
    /// no allocation, lock or syscall (a wake syscall only if the publisher sleeps on a full
    /// ring; one `fstat` the first time it finds the topic closed). On a copying transport one
    /// non-blocking read.
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the publisher has closed and everything was received;
    /// [`RecvError::Corrupt`] for a message with an impossible length (skipped);
    /// [`RecvError::Truncated`] once the segment is found cut; on a copying transport
    /// [`RecvError::PublisherGone`] when the connection ends without the publisher's goodbye,
    /// [`RecvError::BadFrame`] for garbage.
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_, T>>, RecvError> {
        match &mut self.imp {
            SubImp::Ring(s) => s.try_recv(),
            SubImp::Copy(s) => s.recv_until(Some(Instant::now())),
        }
    }

    /// The next message, waiting (per the subscriber's [`WaitStrategy`]) for as long as it
    /// takes: see [`Subscriber::recv_timeout`].
    ///
    /// # Errors
    /// As [`Subscriber::try_recv`].
    #[inline(always)]
    pub fn recv(&mut self) -> Result<Sample<'_, T>, RecvError> {
        match &mut self.imp {
            SubImp::Ring(s) => s.recv(),
            SubImp::Copy(s) => s
                .recv_until(None)
                .map(|s| s.expect("a wait without a deadline ends with a message or an error")),
        }
    }

    /// The next message, waiting up to `timeout`; `Ok(None)` if none came.
    ///
    /// # Errors
    /// As [`Subscriber::try_recv`].
    #[inline(always)]
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Sample<'_, T>>, RecvError> {
        match &mut self.imp {
            SubImp::Ring(s) => s.recv_timeout(timeout),
            SubImp::Copy(s) => s.recv_until(Some(Instant::now() + timeout)),
        }
    }
}

/// Batches: many messages a call, read in place (see [`Subscriber::try_recv_many`]).
impl<T: bytemuck::Pod> Subscriber<T> {
    /// Hand every message already there, up to `max`, to `read`, in order, without waiting;
    /// returns how many. Each is read in place, as through a [`Sample`], and its slot goes
    /// back once `read` returns. Real-time safe on a ring transport, as
    /// [`Subscriber::try_recv`].
    ///
    /// On a ring transport under Block and Fail with one publisher, one loop reads the ring
    /// with a single comparison a message; a stream of 8-byte messages moves 2-3x as many a
    /// second as with a sample each (`shmbus bench --only shm-stream-batch-8B`). Elsewhere
    /// it is a `try_recv` per message.
    ///
    /// A `read` that panics leaves its message unreleased: the next receive returns it again.
    ///
    /// ```
    /// # let bus = shmbus::Bus::builder().prefix("doctest-recv-many.").build().unwrap();
    /// let mut publisher = bus.publisher::<u64>("ticks").create().unwrap();
    /// let mut subscriber = bus.subscriber::<u64>("ticks").open().unwrap();
    /// for i in 0..10 {
    ///     publisher.try_send(i).unwrap();
    /// }
    /// let mut sum = 0;
    /// assert_eq!(subscriber.try_recv_many(64, |tick| sum += *tick)?, 10);
    /// assert_eq!(sum, 45);
    /// assert_eq!(subscriber.try_recv_many(64, |tick| sum += *tick)?, 0);
    /// # Ok::<(), shmbus::RecvError>(())
    /// ```
    ///
    /// # Errors
    /// As [`Subscriber::try_recv`]. An error ends the batch; the messages handed to `read`
    /// before it were received.
    #[inline]
    pub fn try_recv_many(
        &mut self,
        max: usize,
        mut read: impl FnMut(&T),
    ) -> Result<usize, RecvError> {
        if let SubImp::Ring(s) = &mut self.imp {
            if let Some(got) = s.read_run(max, &mut read) {
                return Ok(got);
            }
        }
        self.recv_rest(0, max, &mut read)
    }

    /// Like [`Subscriber::try_recv_many`], first waiting (per the subscriber's
    /// [`WaitStrategy`]) for a message if none is there: returns at least one (unless `max` is
    /// 0).
    ///
    /// # Errors
    /// As [`Subscriber::try_recv_many`].
    #[inline]
    pub fn recv_many(&mut self, max: usize, read: impl FnMut(&T)) -> Result<usize, RecvError> {
        self.recv_many_until(max, None, read)
    }

    /// Like [`Subscriber::recv_many`], waiting up to `timeout`: `Ok(0)` if nothing came.
    ///
    /// # Errors
    /// As [`Subscriber::try_recv_many`].
    pub fn recv_many_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
        read: impl FnMut(&T),
    ) -> Result<usize, RecvError> {
        self.recv_many_until(max, Some(timeout), read)
    }

    #[inline]
    fn recv_many_until(
        &mut self,
        max: usize,
        timeout: Option<Duration>,
        mut read: impl FnMut(&T),
    ) -> Result<usize, RecvError> {
        let got = self.try_recv_many(max, &mut read)?;
        if got > 0 || max == 0 {
            return Ok(got);
        }
        {
            let first = match timeout {
                None => Some(self.recv()?),
                Some(timeout) => self.recv_timeout(timeout)?,
            };
            match first {
                Some(sample) => read(&sample),
                None => return Ok(0),
            }
        }
        // The rest: on a ring's fast path, what one run finds. Not `try_recv_many`, whose
        // empty path (`try_recv`'s) costs more than the run's one look, and comes after most
        // first messages of a subscriber that keeps pace with its publisher.
        match &mut self.imp {
            SubImp::Ring(s) if s.runs() => Ok(1 + s.read_run(max - 1, &mut read).unwrap_or(0)),
            _ => Ok(1 + self.try_recv_many(max - 1, read)?),
        }
    }

    /// The general way: a `try_recv` a message while `got < max`.
    fn recv_rest(
        &mut self,
        mut got: usize,
        max: usize,
        read: &mut impl FnMut(&T),
    ) -> Result<usize, RecvError> {
        while got < max {
            match self.try_recv()? {
                Some(sample) => read(&sample),
                None => break,
            }
            got += 1;
        }
        Ok(got)
    }
}

impl<T: CheckedBitPattern + NoUninit> Subscriber<Checked<T>> {
    /// The next message if one is ready, copied and validated, without waiting. Real-time
    /// safe on a ring transport, as [`Subscriber::try_recv`] for in-place payloads.
    ///
    /// # Errors
    /// [`RecvError::InvalidBitPattern`] for a message that is not a valid `T` (skipped), and
    /// those of the in-place form.
    #[inline]
    pub fn try_recv(&mut self) -> Result<Option<Sample<'_, Checked<T>>>, RecvError> {
        match &mut self.imp {
            SubImp::Ring(s) => s.try_recv(),
            SubImp::Copy(s) => s.recv_checked(Some(Instant::now()), is_valid::<T>),
        }
    }

    /// The next message, copied and validated, waiting for as long as it takes.
    ///
    /// # Errors
    /// As [`Subscriber::<Checked<T>>::try_recv`](Subscriber::try_recv).
    #[inline]
    pub fn recv(&mut self) -> Result<Sample<'_, Checked<T>>, RecvError> {
        match &mut self.imp {
            SubImp::Ring(s) => s.recv(),
            SubImp::Copy(s) => s
                .recv_checked(None, is_valid::<T>)
                .map(|s| s.expect("a wait without a deadline ends with a message or an error")),
        }
    }

    /// The next message, copied and validated, waiting up to `timeout`; `Ok(None)` if none
    /// came.
    ///
    /// # Errors
    /// As [`Subscriber::<Checked<T>>::try_recv`](Subscriber::try_recv).
    #[inline]
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Sample<'_, Checked<T>>>, RecvError> {
        match &mut self.imp {
            SubImp::Ring(s) => s.recv_timeout(timeout),
            SubImp::Copy(s) => s.recv_checked(Some(Instant::now() + timeout), is_valid::<T>),
        }
    }
}

impl<'s, T: ?Sized> Sample<'s, T> {
    /// A sample of a copying subscriber's buffer.
    pub(super) fn copied(
        owner: &'s mut super::copying::CopySubscriber<T>,
        ptr: *const u8,
        len: u32,
        seq: u64,
    ) -> Self {
        Sample {
            owner: Owner::Copy(owner),
            ptr,
            len,
            seq,
        }
    }
}
