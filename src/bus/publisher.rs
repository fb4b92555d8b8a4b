//! The publishing side of a topic: create it, loan slots, write in place, send.

use super::backend::{self, Parks, Party};
use super::control::{control_size, forget_waits, Marked, TopicControl, WaitMarks};
use super::copying::CopyPublisher;
use super::payload::{AlignedWords, Checked, Payload};
use super::subscriber::open_topic;
use super::Bus;
use crate::error::{
    CreateError, LoanError, OpenError, SendTimeoutError, TryLoanError, TrySendError,
};
use crate::layout::{Geometry, PayloadKind, Policy, SegmentHeader, TopicShape, TypeFingerprint};
use crate::ring::broadcast::{Writer, WAITS_MAY_SLEEP};
use crate::ring::MappedSlots;
use crate::segment::{self, Segment, SegmentError};
use crate::sync::Ordering;
use crate::wait::{self, NotifySlot, TopicWaker, WaitStrategy, Wakers};
use bytemuck::{CheckedBitPattern, NoUninit};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// Configures and creates a topic with its publisher. From [`Bus::publisher`].
#[must_use = "a builder does nothing until `create` is called"]
#[derive(Debug)]
pub struct PublisherBuilder<'b, T: ?Sized> {
    bus: &'b Bus,
    topic: String,
    capacity: u64,
    slot_size: Option<u64>,
    policy: Policy,
    max_subscribers: u32,
    max_publishers: u32,
    history: u64,
    wait: WaitStrategy,
    type_name: Option<String>,
    /// Bytes published under this fingerprint instead of `T`'s (see `as_type`).
    as_type: Option<TypeFingerprint>,
    _type: PhantomData<fn(&T)>,
}

impl<'b, T: ?Sized + Payload> PublisherBuilder<'b, T> {
    pub(super) fn new(bus: &'b Bus, topic: &str) -> Self {
        Self {
            bus,
            topic: topic.into(),
            capacity: 1024,
            slot_size: None,
            policy: Policy::Block,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            max_publishers: 1,
            history: 0,
            wait: WaitStrategy::default(),
            type_name: None,
            as_type: None,
            _type: PhantomData,
        }
    }

    /// The topic's fingerprint, slot size (if fixed) and payload alignment.
    fn shape_of_type(&self) -> (TypeFingerprint, Option<usize>, usize) {
        match self.as_type {
            Some(fp) if fp.kind == PayloadKind::Typed => {
                (fp, usize::try_from(fp.size).ok(), fp.align as usize)
            }
            Some(fp) => (fp, None, T::align()),
            None => (
                T::fingerprint(self.type_name.as_deref()),
                T::fixed_size(),
                T::align(),
            ),
        }
    }

    /// Number of slots: a power of two from 2 up (1024 by default). Under backpressure the
    /// publisher runs at most this many messages (less the history) ahead of the slowest
    /// subscriber; under [`Policy::Overwrite`] a subscriber this far behind starts to lose
    /// messages.
    pub fn capacity(mut self, slots: u64) -> Self {
        self.capacity = slots;
        self
    }

    /// What the publisher does when a subscriber falls behind ([`Policy::Block`] by default).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// How many subscribers may be attached at once (8 by default, up to
    /// [`MAX_READERS`](crate::layout::MAX_READERS)): the size of the topic's subscriber table,
    /// 128 bytes an entry.
    pub fn max_subscribers(mut self, n: u32) -> Self {
        self.max_subscribers = n;
        self
    }

    /// How many publishers the topic admits at once (1 by default, up to
    /// [`MAX_LANES`](crate::layout::MAX_LANES)): each has a ring of its own (`capacity` slots),
    /// and the others join with [`PublisherBuilder::attach`].
    pub fn max_publishers(mut self, n: u32) -> Self {
        self.max_publishers = n;
        self
    }

    /// Keep the last `messages` messages for subscribers that join late and ask for them
    /// ([`SubscriberBuilder::history`](crate::SubscriberBuilder::history)); 0 by default, below
    /// the capacity. Under [`Policy::Block`] the publisher then runs at most
    /// `capacity - history` messages ahead of the slowest subscriber, and keeps that many even
    /// with no subscriber at all; under [`Policy::Overwrite`] the ring keeps them anyway.
    pub fn history(mut self, messages: u64) -> Self {
        self.history = messages;
        self
    }

    /// Largest byte message, for `[u8]` topics (4096 by default). Ignored for typed topics,
    /// whose slot is the type's size.
    pub fn slot_size(mut self, bytes: u64) -> Self {
        self.slot_size = Some(bytes);
        self
    }

    /// How [`Publisher::send`] and [`Publisher::loan`] wait while the ring is full.
    pub fn wait(mut self, strategy: WaitStrategy) -> Self {
        self.wait = strategy;
        self
    }

    /// The name recorded in the type fingerprint, instead of `std::any::type_name::<T>()`.
    /// Set the same name on both sides when publisher and subscriber are built from different
    /// crates that define the same `#[repr(C)]` type.
    pub fn type_name(mut self, name: &str) -> Self {
        self.type_name = Some(name.into());
        self
    }

    /// Create the topic's segment and return its publisher. The topic's name is removed when
    /// its last publisher is dropped (this one, unless others [attached](Self::attach));
    /// subscribers attached by then read what is left.
    ///
    /// # Errors
    /// [`CreateError::InvalidName`], [`CreateError::InvalidConfig`] (capacity not a power of
    /// two, slot size out of range, history not below the capacity, a subscriber table out of
    /// range), [`CreateError::AlreadyExists`], [`CreateError::NoSpace`]
    /// (the needed and available bytes), [`CreateError::Segment`] for other system errors.
    pub fn create(self) -> Result<Publisher<T>, CreateError> {
        let (fingerprint, fixed_size, align) = self.shape_of_type();
        let exact_len = self
            .as_type
            .and(fixed_size)
            .and_then(|s| u32::try_from(s).ok());
        if self.as_type.is_some() && fixed_size.is_some() && exact_len.is_none() {
            return Err(CreateError::InvalidConfig(
                crate::layout::ConfigError::SlotSize(fingerprint.size),
            ));
        }
        if let Some(transport) = self.bus.copying() {
            let slot_size = fixed_size.map_or(self.slot_size.unwrap_or(4096), |s| s as u64);
            let slot_size = u32::try_from(slot_size)
                .ok()
                .filter(|&s| s > 0 && s <= crate::transport::frame::MAX_PAYLOAD)
                .ok_or(CreateError::InvalidConfig(
                    crate::layout::ConfigError::SlotSize(slot_size),
                ))?;
            if self.max_publishers > 1 || self.history > 0 {
                return Err(CreateError::Unsupported {
                    transport: transport.name(),
                    what: "several publishers or history on one topic".into(),
                });
            }
            let copy = CopyPublisher::create(
                transport,
                self.bus,
                &self.topic,
                fingerprint,
                self.policy,
                slot_size,
                self.capacity,
            )?;
            return Ok(Publisher {
                imp: Imp::Copy(Box::new(copy)),
                topic: self.topic,
                exact_len,
                _type: PhantomData,
            });
        }
        let name =
            self.bus
                .segment_name(&self.topic)
                .map_err(|reason| CreateError::InvalidName {
                    topic: self.topic.clone(),
                    reason,
                })?;
        let slot_size = fixed_size.map_or(self.slot_size.unwrap_or(4096), |s| s as u64);
        let geometry = Geometry::for_config(
            self.capacity,
            slot_size,
            align as u64,
            control_size(
                self.max_subscribers.min(crate::layout::MAX_READERS),
                self.max_publishers.clamp(1, crate::layout::MAX_LANES),
            ),
            self.max_publishers,
        )?;
        let shape = TopicShape::new(
            self.policy,
            self.max_subscribers,
            self.history,
            geometry.capacity,
        )?;
        let size = backend::segment_size(self.bus, &geometry, &shape).ok_or(
            crate::layout::ConfigError::TooLarge {
                capacity: geometry.capacity,
                slot_size: geometry.slot_size as u64,
            },
        )?;
        if self.bus.group_access() && self.bus.backend != crate::segment::Backend::Native {
            return Err(CreateError::Unsupported {
                transport: self.bus.transport(),
                what: "group access (its segments are created owner-only)".into(),
            });
        }
        let mut segment = backend::create_segment(self.bus, &name, size);
        if matches!(segment, Err(SegmentError::AlreadyExists(_))) && self.bus.persistent() {
            // A memory-mapped file's topic, left by an earlier run: go on with it.
            let topic = self.topic.clone();
            return self.attach().map_err(|source| CreateError::Existing {
                topic,
                source: Box::new(source),
            });
        }
        if matches!(segment, Err(SegmentError::AlreadyExists(_))) && self.remove_if_stale() {
            // What a killed publisher left behind, removed: create it afresh.
            segment = backend::create_segment(self.bus, &name, size);
        }
        let segment = segment.map_err(|e| match e {
            SegmentError::AlreadyExists(_) => CreateError::AlreadyExists {
                topic: self.topic.clone(),
            },
            SegmentError::NoSpace {
                dir,
                needed,
                available,
            } => CreateError::NoSpace {
                topic: self.topic.clone(),
                dir,
                needed,
                available,
            },
            e => CreateError::Segment(e),
        })?;
        backend::init_segment(&segment, &geometry, &shape).map_err(CreateError::Segment)?;
        let pid = std::process::id();
        let base = segment.base().as_ptr();
        // SAFETY: `geometry` was computed for this segment's size: the control block lies in
        // it, 128-aligned from a page-aligned base; zeroed memory is its initial state.
        let control =
            unsafe { &*(base.add(geometry.control_offset as usize) as *const TopicControl) };
        control.peers.publishers.store(1, Ordering::Relaxed);
        // SAFETY: lane 0 of `shape.max_readers` entries, counted in the control size.
        unsafe { control.lane(0, shape.max_readers) }
            .owner
            .id
            .store(segment::my_identity(), Ordering::Relaxed);
        // SAFETY: the segment is new (O_EXCL), mapped, page-aligned and larger than a header;
        // nobody can see it as ready before this call marks it so.
        unsafe { SegmentHeader::publish(base, &geometry, &shape, &fingerprint, pid) };
        Ok(self.start(segment, geometry, shape, 0))
    }

    /// Remove the topic's segment if every process on it is dead (see [`Bus::clean`]).
    fn remove_if_stale(&self) -> bool {
        super::discovery::remove_if_stale(self.bus, &self.topic, false)
    }

    /// Join the existing topic as one more publisher, in a lane of its own: subscribers
    /// receive every publisher's messages, each publisher's in its order (lanes take turns, so
    /// there is no order between publishers). The topic must have been created with room for
    /// it ([`PublisherBuilder::max_publishers`]); its capacity, policy and history are the
    /// creator's (what this builder says of them is ignored). The topic's name is removed when
    /// its last publisher is dropped.
    ///
    /// ```
    /// # let bus = shmbus::Bus::builder().prefix("doctest-attach.").build()?;
    /// let mut first = bus.publisher::<u64>("orders").max_publishers(2).create()?;
    /// let mut second = bus.publisher::<u64>("orders").attach()?;
    /// let mut subscriber = bus.subscriber::<u64>("orders").open()?;
    /// first.send(1)?;
    /// second.send(2)?;
    /// let mut got = vec![];
    /// while let Some(sample) = subscriber.try_recv()? {
    ///     got.push((sample.lane(), *sample));
    /// }
    /// got.sort();
    /// assert_eq!(got, [(0, 1), (1, 2)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// What [`SubscriberBuilder::open`](crate::SubscriberBuilder::open) refuses (a topic not
    /// found, or closed by its last publisher, another type, a bad segment), and
    /// [`OpenError::TooManyPublishers`] when every lane is taken.
    pub fn attach(self) -> Result<Publisher<T>, OpenError> {
        if let Some(transport) = self.bus.copying() {
            return Err(OpenError::Unsupported {
                transport: transport.name(),
                what: "several publishers on one topic".into(),
            });
        }
        let open = open_topic(self.bus, &self.topic)?;
        let (fingerprint, fixed_size, align) = self.shape_of_type();
        open.check_type_of(fingerprint, fixed_size, align, &self.topic)?;
        let (geometry, shape) = (open.geometry, open.shape);
        let control = open.control();
        // A memory-mapped file's topic, closed by its last publisher, is reopened: its name
        // is kept at close, so nobody is removing it.
        if self.bus.persistent() {
            control.peers.rejoin();
        } else if !control.peers.join() {
            // Its last publisher has left: the name is on its way out.
            return Err(OpenError::NotFound { topic: self.topic });
        }
        let me = segment::my_identity();
        let take = |k: u32, from: u64| {
            // SAFETY: `k < lanes`, counted in the validated control size.
            let owner = &unsafe { control.lane(k, shape.max_readers) }.owner.id;
            owner
                .compare_exchange(from, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        };
        // A free lane first; else the lane of a publisher whose process is dead, which goes on
        // from where that one stopped (its subscribers' positions stay valid).
        let mut lane = (0..geometry.lanes).find(|&k| take(k, 0));
        let from_dead = lane.is_none();
        if from_dead {
            lane = (0..geometry.lanes).find(|&k| {
                // SAFETY: as above.
                let holder = unsafe { control.lane(k, shape.max_readers) }
                    .owner
                    .id
                    .load(Ordering::Acquire);
                holder != 0 && !segment::identity_alive(holder) && take(k, holder)
            });
            if lane.is_some() {
                // The dead publisher never took itself off the count: this one replaces it.
                control.peers.leave();
            }
        }
        if let Some(k) = lane {
            // The lane's wait marks, cleared for this owner: a dead one's counts come off the
            // space cell (it may have died asleep there); a free lane's were cleared by its
            // last owner, and a peer's are not acted on.
            // SAFETY: as above.
            let marks = unsafe { control.lane(k, shape.max_readers) }
                .owner
                .take_waits();
            if from_dead {
                forget_waits(&control.space, marks);
            }
        }
        let Some(lane) = lane else {
            if control.peers.leave() {
                // The others left meanwhile: the name goes with the last one out.
                let _ = open.segment.unlink();
            }
            return Err(OpenError::TooManyPublishers {
                topic: self.topic,
                max: geometry.lanes,
            });
        };
        Ok(self.start(open.segment, geometry, shape, lane))
    }

    /// The publisher of lane `lane` (taken for this process) of a validated segment.
    fn start(
        self,
        segment: Segment,
        geometry: Geometry,
        shape: TopicShape,
        lane: u32,
    ) -> Publisher<T> {
        let base = segment.base();
        // SAFETY: `geometry` is validated for (or computed for) this mapping: the control
        // block lies in it, 128-aligned; `Publisher::segment` keeps it mapped.
        let control = unsafe {
            &*(base.as_ptr().add(geometry.control_offset as usize) as *const TopicControl)
        };
        // SAFETY: `lane < lanes`, counted in the control size.
        let lane_control = unsafe { control.lane(lane, shape.max_readers) };
        // SAFETY: the lane's slots lie in the mapping per `geometry`, and the mapping lives in
        // `Publisher::segment`, which outlives the writer (field order).
        let slots =
            unsafe { MappedSlots::new(base.add(geometry.lane_offset(lane) as usize), &geometry) };
        // SAFETY: as above, for the lane's table.
        let table = unsafe { lane_control.table(shape.max_readers) };
        // SAFETY: the writer's words and the table are in the mapping (as above); this is the
        // lane's only writer (it created the topic, or took the lane from 0 with a CAS).
        // History < capacity (a validated shape).
        let writer = unsafe {
            Writer::new(
                &*lane_control.writer,
                table,
                slots,
                shape.history,
                shape.policy == Policy::Overwrite,
            )
        };
        let parks = backend::parks(&segment, &geometry, &shape, Party::Publisher { lane });
        let may_wait = shape.policy == Policy::Block && self.wait.may_sleep();
        let barrier_ok = may_wait && wait::announce_sleeper(&control.space);
        if may_wait {
            // After the count it stands for (see `ReaderEntry::waits`).
            lane_control.owner.mark_waits(WAITS_MAY_SLEEP);
        }
        let (_, fixed_size, align) = self.shape_of_type();
        let exact_len = self.as_type.and(fixed_size).map(|s| s as u32);
        let staging = (shape.policy == Policy::Overwrite)
            .then(|| AlignedWords::new(geometry.slot_size as usize, align));
        // SAFETY: in the validated control block, in the mapping `Publisher::segment` keeps.
        let notify_slots = unsafe { control.notify_slots(shape.max_readers, geometry.lanes) };
        let key = wait::topic_key(&self.bus.dir().join(segment.name()));
        let wakers = RefCell::new(Wakers::new(key, lane as u64, notify_slots.len()));
        Publisher {
            imp: Imp::Ring(Ring {
                inner: Inner {
                    writer,
                    control,
                    lane: &*lane_control.owner,
                    capacity: geometry.capacity,
                    policy: shape.policy,
                    wait: self.wait,
                    barrier_ok,
                    staging,
                    slot_size: geometry.slot_size,
                    truncation: segment.truncation(),
                    persistent: self.bus.persistent(),
                    transport: self.bus.transport(),
                    parks,
                    notify_slots: notify_slots as *const [NotifySlot],
                    wakers,
                    full_since: None,
                    wakes: 0,
                },
                segment,
            }),
            topic: self.topic,
            exact_len,
            _type: PhantomData,
        }
    }
}

impl<'b> PublisherBuilder<'b, [u8]> {
    /// Publish byte messages under another type's fingerprint: the topic says it carries
    /// what `fingerprint` describes (a typed subscriber of that type opens it; one of another
    /// type is refused as usual), and each message must be exactly that type's size
    /// ([`TryLoanError::WrongLength`] otherwise). A byte fingerprint
    /// ([`TypeFingerprint::bytes`]) is a plain byte topic. For tools that move messages
    /// without knowing their type: the journal's [`Replayer`](crate::journal::Replayer)
    /// republishes recorded messages with it.
    ///
    /// The type check is then this publisher's word: the bytes it sends are read as the
    /// type's values. That is no memory hazard (a subscriber reads in place only `Pod` types,
    /// for which any bytes are a value, and checks every length; a
    /// [`Checked`](crate::Checked) subscriber validates each message), but bytes that are not
    /// what the type means are wrong values for its subscribers.
    ///
    /// ```
    /// use shmbus::layout::TypeFingerprint;
    /// # let bus = shmbus::Bus::builder().prefix("doctest-as-type.").build()?;
    /// let tick = TypeFingerprint::typed::<u64>(std::any::type_name::<u64>());
    /// let mut publisher = bus.publisher::<[u8]>("ticks").as_type(tick).create()?;
    /// let mut subscriber = bus.subscriber::<u64>("ticks").open()?;
    /// publisher.try_send_bytes(&7u64.to_le_bytes())?;
    /// assert_eq!(*subscriber.try_recv()?.unwrap(), 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn as_type(mut self, fingerprint: TypeFingerprint) -> Self {
        self.as_type = Some(fingerprint);
        self
    }
}

/// How long a publisher waits on a full ring before it checks whether the subscribers that
/// hold it back are alive (a few system calls each).
pub const LIVENESS_CHECK: Duration = Duration::from_millis(10);

/// Wake-ups a publisher makes between two looks for subscribers killed asleep (see
/// `Inner::woke`): each look is a liveness check per subscriber marked asleep, a thousandth
/// of the wake syscalls that come before it.
const REAP_EVERY: u32 = 1024;

/// Subscribers a topic admits at once unless its publisher asks for another number.
pub const DEFAULT_MAX_SUBSCRIBERS: u32 = 8;

/// The state a loan needs, apart from the segment that keeps it mapped.
#[derive(Debug)]
struct Inner {
    writer: Writer<MappedSlots>,
    /// Points into `Publisher::segment`'s mapping, which outlives it.
    control: *const TopicControl,
    /// Who owns this publisher's lane, and its eviction count (in the mapping too).
    lane: *const super::control::LaneOwner,
    capacity: u64,
    policy: Policy,
    wait: WaitStrategy,
    barrier_ok: bool,
    /// Set if the segment is found truncated under this mapping (`crate::sigbus`).
    truncation: crate::sigbus::Flag,
    /// Overwrite: where a loan is written before `send` stores it into the slot, word by word
    /// (subscribers may be copying the slot meanwhile; see `crate::ring::broadcast`).
    staging: Option<AlignedWords>,
    slot_size: u32,
    /// The topic outlives its publishers (a memory-mapped file): its name is kept at close.
    persistent: bool,
    /// The bus's transport's name.
    transport: &'static str,
    /// How this publisher sleeps (on `space`) and wakes subscribers (on `data`): futexes, or
    /// a portable segment's events. Point into `Publisher::segment`'s mapping.
    parks: Parks,
    /// The subscribers' notify slots (in the mapping).
    notify_slots: *const [NotifySlot],
    /// What this publisher keeps to post to armed notifiers.
    wakers: RefCell<Wakers>,
    /// Fail: when a blocking call first found the ring full, and the sequence number it was
    /// at then (see `fail_full`).
    full_since: Option<(Instant, u64)>,
    /// Wake-ups made since the last look for subscribers killed asleep (see `woke`).
    wakes: u32,
}

impl Inner {
    #[inline(always)]
    fn control(&self) -> &TopicControl {
        // SAFETY: the control block is in the mapping, which outlives `Inner` (see `Publisher`).
        unsafe { &*self.control }
    }

    /// How this publisher wakes the topic's sleepers: the futex, then armed notifiers.
    #[inline(always)]
    fn waker(&self) -> TopicWaker<'_> {
        // SAFETY: the slots are in the mapping, which outlives `Inner` (see `Publisher`).
        TopicWaker::new(
            &self.parks.data,
            unsafe { &*self.notify_slots },
            &self.wakers,
        )
    }

    /// A slot for the next message: under Block the ring's own (or `None` while it is full
    /// for some subscriber), under Overwrite the staging buffer (always). The pointer is where
    /// the loan writes.
    #[inline(always)]
    fn try_claim(&mut self) -> Option<*mut u8> {
        match &mut self.staging {
            Some(staging) => Some(staging.ptr()),
            None => {
                let index = self.writer.try_claim()?;
                Some(self.writer.storage().payload_ptr(index))
            }
        }
    }

    /// As `try_claim`, waiting (Block) until `deadline` while the ring is full.
    #[inline]
    fn claim(&mut self, deadline: Option<Instant>) -> Result<*mut u8, LoanError> {
        if let Some(ptr) = self.try_claim() {
            return Ok(ptr);
        }
        self.claim_slow(deadline)
    }

    /// Waits for a slot (Block), in slices of [`LIVENESS_CHECK`]: after each slice in which
    /// the ring stayed full, it evicts the subscribers that hold it back if their process is
    /// dead, so that a killed subscriber stops its publisher for one slice at most.
    #[cold]
    fn claim_slow(&mut self, deadline: Option<Instant>) -> Result<*mut u8, LoanError> {
        if self.truncation.is_set() {
            return Err(LoanError::Truncated);
        }
        if self.policy == Policy::Fail {
            return self.fail_full();
        }
        // SAFETY: the control block outlives this call (see `control`); borrowing it through the
        // raw pointer leaves `self.writer` free for the closure.
        let control = unsafe { &*self.control };
        let (wait, barrier_ok) = (self.wait, self.barrier_ok);
        loop {
            let slice = Instant::now() + LIVENESS_CHECK;
            let until = deadline.map_or(slice, |d| d.min(slice));
            let writer = &mut self.writer;
            // SAFETY: the lane's owner words are in the mapping, which outlives `Inner`.
            let park = Marked::new(&self.parks.space, unsafe { &*self.lane });
            if wait::wait_until(wait, &control.space, &park, barrier_ok, Some(until), || {
                writer.has_space()
            }) {
                if let Some(ptr) = self.try_claim() {
                    return Ok(ptr);
                }
            }
            if self.truncation.is_set() {
                return Err(LoanError::Truncated);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LoanError::Timeout);
            }
            self.evict_dead();
        }
    }

    /// Fail, the ring full: the message goes back at once. But once the ring has stayed full
    /// (no message sent) for [`LIVENESS_CHECK`], this first evicts the subscribers that hold
    /// it if their process is dead (a few system calls, what a Block publisher makes after
    /// each such slice of waiting) and looks again: a killed subscriber must not keep a Fail
    /// topic full for as long as it lives. Only the calls that may wait come here (`send`,
    /// `loan`, their timeout forms); `try_*` never make the system calls.
    #[cold]
    fn fail_full(&mut self) -> Result<*mut u8, LoanError> {
        let now = Instant::now();
        let at = self.writer.next_seq();
        match self.full_since {
            Some((since, seq)) if seq == at => {
                if now.saturating_duration_since(since) < LIVENESS_CHECK {
                    return Err(LoanError::Full);
                }
                self.evict_dead();
                if let Some(ptr) = self.try_claim() {
                    self.full_since = None;
                    return Ok(ptr);
                }
                self.full_since = Some((now, at));
            }
            _ => self.full_since = Some((now, at)),
        }
        Err(LoanError::Full)
    }

    /// Evict this lane's dead subscribers that lag by half the ring or more.
    #[cold]
    fn evict_dead(&mut self) {
        let evicted = super::control::evict_dead(
            self.writer.table(),
            &self.control().data,
            self.writer.next_seq(),
            self.capacity / 2,
            segment::my_identity(),
        );
        self.count_evictions(evicted);
    }

    /// Add `evicted` to this lane's eviction count (`TopicInfo::evictions`).
    fn count_evictions(&self, evicted: u64) {
        if evicted > 0 {
            // SAFETY: the lane's owner words are in the mapping, which outlives `Inner`.
            unsafe { &*self.lane }
                .evictions
                .fetch_add(evicted, Ordering::Relaxed);
        }
    }

    /// Block: up to `max` messages of `T` written in place by `fill`, as many as there is room
    /// for, then one wake-up. See [`Publisher::try_send_many`].
    #[inline(always)]
    fn write_run<T: bytemuck::Pod>(&mut self, max: usize, fill: &mut impl FnMut(&mut T)) -> usize {
        debug_assert!(self.staging.is_none());
        let sent = self.writer.write_run(max, size_of::<T>() as u32, |ptr| {
            // SAFETY: as a loan's (`Loan::deref_mut`): the slot is aligned for `T` and holds
            // `size_of::<T>()` bytes or more (checked at create and attach), it is this
            // writer's until committed, and any bytes are a `T` (`Pod`).
            fill(unsafe { &mut *(ptr as *mut T) })
        });
        if sent > 0 && self.control().data.notify_with(|| self.waker()) {
            self.woke();
        }
        sent
    }

    #[inline(always)]
    fn commit(&mut self, len: u32) {
        match &self.staging {
            Some(staging) => self.writer.publish_words(staging.words(), len),
            None => self.writer.commit(len),
        }
        if self.control().data.notify_with(|| self.waker()) {
            self.woke();
        }
    }

    /// A wake-up was made: a subscriber sleeps, or was killed asleep and still counts as a
    /// sleeper. Every [`REAP_EVERY`] wake-ups, look for the latter (a liveness check per
    /// subscriber marked asleep) and evict them: a subscriber killed asleep then costs at
    /// most that many wake syscalls, under any policy, rather than one a message for as long
    /// as the topic lives.
    #[cold]
    #[inline(never)]
    fn woke(&mut self) {
        self.wakes += 1;
        if self.wakes < REAP_EVERY {
            return;
        }
        self.wakes = 0;
        let evicted = super::control::evict_dead_sleepers(
            self.writer.table(),
            &self.control().data,
            segment::my_identity(),
        );
        self.count_evictions(evicted);
    }
}

/// A publisher of a topic: the only writer of its lane (its ring).
///
/// `Send` (it may move to another thread) but not `Sync`: loans take `&mut self`, so one
/// thread at a time writes. Dropping it closes its lane; dropping the topic's last publisher
/// closes the topic: subscribers receive what is left, then
/// [`RecvError::Disconnected`](crate::RecvError::Disconnected), and the name is unlinked.
#[derive(Debug)]
pub struct Publisher<T: ?Sized> {
    imp: Imp,
    topic: String,
    /// Bytes published under a type's fingerprint (`PublisherBuilder::as_type`): the type's
    /// size, which every message must have.
    exact_len: Option<u32>,
    _type: PhantomData<fn(&T)>,
}

/// A publisher on a ring transport, or on a copying one. The ring is inline (it is the fast
/// path: no indirection per message); the copying state, behind a system call per message
/// anyway, is boxed.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Imp {
    Ring(Ring),
    Copy(Box<CopyPublisher>),
}

/// The ring publisher's state.
#[derive(Debug)]
struct Ring {
    inner: Inner,
    // Declared last: dropped after `inner`, whose pointers point into it.
    segment: Segment,
}

// SAFETY: `Inner`'s raw pointers (and a portable segment's event handles, which are addresses
// in the mapping) point into `segment`, which moves with it; the shared words are all atomics,
// and the slots are this publisher's alone until sent. A copying publisher's parts are `Send`.
unsafe impl<T: ?Sized> Send for Publisher<T> {}

/// Where a loan's `send` goes.
enum Target<'p> {
    Ring(&'p mut Inner),
    Copy(&'p mut CopyPublisher),
}

impl<T: ?Sized> Publisher<T> {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The name of the transport this publisher writes through (`shm`, `unix`, ...).
    pub fn transport(&self) -> &'static str {
        match &self.imp {
            Imp::Ring(r) => r.inner.transport,
            Imp::Copy(c) => c.transport(),
        }
    }

    /// Whether another process truncated the topic's segment under this publisher: what it
    /// sends since reaches nobody. The waiting calls report it (`LoanError::Truncated` and
    /// the like) when they find the ring full; a publisher that never waits (Overwrite, or
    /// one far ahead of its subscribers) can ask here. One relaxed load. Always `false` on a
    /// copying transport.
    pub fn truncated(&self) -> bool {
        match &self.imp {
            Imp::Ring(r) => r.inner.truncation.is_set(),
            Imp::Copy(_) => false,
        }
    }

    /// Number of slots (on a copying transport, the capacity asked for: the kernel's buffers
    /// hold what is in flight).
    pub fn capacity(&self) -> u64 {
        use crate::ring::SlotStorage;
        match &self.imp {
            Imp::Ring(r) => r.inner.writer.storage().capacity(),
            Imp::Copy(c) => c.capacity(),
        }
    }

    /// The topic's policy.
    pub fn policy(&self) -> Policy {
        match &self.imp {
            Imp::Ring(r) => r.inner.policy,
            Imp::Copy(c) => c.policy(),
        }
    }

    /// Sequence number the next message will get (messages sent so far).
    pub fn next_seq(&self) -> u64 {
        match &self.imp {
            Imp::Ring(r) => r.inner.writer.next_seq(),
            Imp::Copy(c) => c.next_seq(),
        }
    }

    /// How many subscribers are attached now.
    ///
    /// A subscriber receives the messages published after it attached (and the history it
    /// asked for): a publisher whose first messages must reach a subscriber waits for it with
    /// [`Publisher::wait_for_subscribers`] before it sends them.
    pub fn subscribers(&self) -> usize {
        match &self.imp {
            Imp::Ring(r) => r
                .inner
                .writer
                .table()
                .entries()
                .iter()
                .filter(|e| e.head().is_some())
                .count(),
            Imp::Copy(c) => c.subscribers(),
        }
    }

    /// Push on what this publisher still holds, waiting up to `timeout`; returns whether
    /// nothing is left. On a copying transport a `try_` send whose frame the kernel did not
    /// take whole (a subscriber's buffer was full) keeps the rest, and the next call sends it
    /// first; a program that sends with `try_send` and then waits for something else calls
    /// this. The waiting sends (`send`, `send_timeout`, a loan from `loan`) push their frame
    /// on themselves, within their deadline. On a ring transport a sent message is in place
    /// already: `true` at once.
    ///
    /// ```no_run
    /// # let bus = shmbus::Bus::open_default()?;
    /// # let mut publisher = bus.publisher::<u64>("t").create()?;
    /// let _ = publisher.try_send(7);
    /// assert!(publisher.flush(std::time::Duration::from_secs(1)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush(&mut self, timeout: Duration) -> bool {
        match &mut self.imp {
            Imp::Ring(_) => true,
            Imp::Copy(c) => c.flush(Instant::now() + timeout),
        }
    }

    /// Wait until at least `n` subscribers are attached, checking every 100 µs, for up to
    /// `timeout`. Returns whether they are.
    pub fn wait_for_subscribers(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.subscribers() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Largest payload in bytes.
    pub fn slot_size(&self) -> usize {
        match &self.imp {
            Imp::Ring(r) => r.inner.slot_size as usize,
            Imp::Copy(c) => c.slot_size() as usize,
        }
    }

    /// A slot (a buffer, on a copying transport) if one is free now.
    #[inline(always)]
    fn try_claim(&mut self) -> Result<*mut u8, TryLoanError> {
        match &mut self.imp {
            Imp::Ring(r) => r.inner.try_claim().ok_or(TryLoanError::Full),
            Imp::Copy(c) => c.try_claim(),
        }
    }

    /// A slot, waiting (Block) until `deadline`.
    #[inline]
    fn claim(&mut self, deadline: Option<Instant>) -> Result<*mut u8, LoanError> {
        match &mut self.imp {
            Imp::Ring(r) => r.inner.claim(deadline),
            Imp::Copy(c) => c.claim(deadline),
        }
    }

    #[inline(always)]
    fn commit(&mut self, len: u32) {
        match &mut self.imp {
            Imp::Ring(r) => r.inner.commit(len),
            Imp::Copy(c) => c.commit(len),
        }
    }

    #[inline(always)]
    fn loan_at(&mut self, ptr: *mut u8, len: u32) -> Loan<'_, T> {
        Loan {
            ptr,
            len,
            target: match &mut self.imp {
                Imp::Ring(r) => Target::Ring(&mut r.inner),
                Imp::Copy(c) => Target::Copy(c),
            },
            _type: PhantomData,
        }
    }
}

impl<T: bytemuck::Pod> Publisher<T> {
    /// Loan the next slot without waiting: `Err(TryLoanError::Full)` when the slowest
    /// subscriber has not released the slot (never under [`Policy::Overwrite`]). Real-time
    /// safe: no allocation, lock or syscall.
    ///
    /// Under Block and Fail the loan is the slot itself, in shared memory; under Overwrite it
    /// is a private buffer that `send` stores into the slot (subscribers may be copying it).
    ///
    /// # Errors
    /// [`TryLoanError::Full`].
    #[inline]
    pub fn try_loan(&mut self) -> Result<Loan<'_, T>, TryLoanError> {
        let ptr = self.try_claim()?;
        Ok(self.loan_at(ptr, size_of::<T>() as u32))
    }

    /// Loan the next slot, waiting (per the publisher's [`WaitStrategy`]) while the ring is
    /// full. Waits for as long as it takes: see [`Publisher::loan_timeout`].
    ///
    /// # Errors
    /// [`LoanError::Full`] at once under [`Policy::Fail`].
    #[inline]
    pub fn loan(&mut self) -> Result<Loan<'_, T>, LoanError> {
        let ptr = self.claim(None)?;
        Ok(self.loan_at(ptr, size_of::<T>() as u32))
    }

    /// Like [`Publisher::loan`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`LoanError::Timeout`]; [`LoanError::Full`] at once under [`Policy::Fail`].
    pub fn loan_timeout(&mut self, timeout: Duration) -> Result<Loan<'_, T>, LoanError> {
        let ptr = self.claim(Some(Instant::now() + timeout))?;
        Ok(self.loan_at(ptr, size_of::<T>() as u32))
    }

    /// Copy `value` into the next slot and send it, without waiting.
    ///
    /// # Errors
    /// [`TrySendError::Full`] hands `value` back; so does [`TrySendError::Io`], when a copying
    /// transport could not write an earlier message (the file transport: a full disk).
    #[inline]
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        match self.try_loan() {
            Ok(mut loan) => {
                loan.write(value);
                loan.send();
                Ok(())
            }
            Err(TryLoanError::Io { kind }) => Err(TrySendError::Io(value, kind)),
            Err(_) => Err(TrySendError::Full(value)),
        }
    }

    /// Copy `value` into the next slot and send it, waiting while the ring is full.
    ///
    /// # Errors
    /// [`TrySendError::Full`] hands `value` back, at once, under [`Policy::Fail`] only.
    #[inline]
    pub fn send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        match self.claim(None) {
            Ok(ptr) => {
                let mut loan = self.loan_at(ptr, size_of::<T>() as u32);
                loan.write(value);
                loan.send();
                Ok(())
            }
            Err(LoanError::Truncated) => Err(TrySendError::Truncated(value)),
            Err(LoanError::Io { kind, .. }) => Err(TrySendError::Io(value, kind)),
            Err(_) => Err(TrySendError::Full(value)),
        }
    }

    /// Like [`Publisher::send`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] hands `value` back; [`SendTimeoutError::Full`] too, at
    /// once, under [`Policy::Fail`]; and [`SendTimeoutError::Io`] ([`TrySendError::Io`]).
    pub fn send_timeout(&mut self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match self.loan_timeout(timeout) {
            Ok(mut loan) => {
                loan.write(value);
                loan.send();
                Ok(())
            }
            Err(LoanError::Full) => Err(SendTimeoutError::Full(value)),
            Err(LoanError::Truncated) => Err(SendTimeoutError::Truncated(value)),
            Err(LoanError::Io { kind, .. }) => Err(SendTimeoutError::Io(value, kind)),
            Err(_) => Err(SendTimeoutError::Timeout(value)),
        }
    }
}

/// Batches: many messages a call, written in place (see [`Publisher::try_send_many`]).
impl<T: bytemuck::Pod> Publisher<T> {
    /// Send up to `max` messages, as many as there is room for now, without waiting: `fill`
    /// writes each in place, in its slot (which holds whatever was there before: write every
    /// field). Returns how many were sent; 0 when the ring is full (never under
    /// [`Policy::Overwrite`]). Real-time safe, as [`Publisher::try_loan`].
    ///
    /// On a ring transport under Block and Fail, one check for room serves the whole batch
    /// and the subscribers are woken once, after the last message (a syscall only if one
    /// sleeps); a stream of 8-byte messages moves 2-3x as many a second as with a loan each
    /// (`shmbus bench --only shm-stream-batch-8B`). Elsewhere it is a loan per message.
    ///
    /// A `fill` that panics leaves its slot unsent, and the messages before it sent.
    ///
    /// ```
    /// # let bus = shmbus::Bus::builder().prefix("doctest-send-many.").build().unwrap();
    /// let mut publisher = bus.publisher::<u64>("ticks").capacity(64).create().unwrap();
    /// let mut next = 0u64;
    /// // A batch takes the room there is: with nobody subscribed, the whole ring (a subscriber
    /// // that has not read the last messages yet would leave less).
    /// let sent = publisher.try_send_many(100, |slot| {
    ///     *slot = next;
    ///     next += 1;
    /// })?;
    /// assert_eq!((sent, next), (64, 64));
    /// # Ok::<(), shmbus::TryLoanError>(())
    /// ```
    ///
    /// # Errors
    /// [`TryLoanError::Io`] on a copying transport, when the write of an earlier message
    /// failed (see [`Publisher::try_loan`]) and nothing was sent.
    #[inline]
    pub fn try_send_many(
        &mut self,
        max: usize,
        mut fill: impl FnMut(&mut T),
    ) -> Result<usize, TryLoanError> {
        if let Imp::Ring(r) = &mut self.imp {
            if r.inner.staging.is_none() {
                return Ok(r.inner.write_run(max, &mut fill));
            }
        }
        let mut sent = 0;
        while sent < max {
            match self.try_loan() {
                Ok(mut loan) => {
                    fill(&mut loan);
                    loan.send();
                    sent += 1;
                }
                Err(TryLoanError::Full) => break,
                Err(e) if sent == 0 => return Err(e),
                // Kept by the transport, and told again at the next call.
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Send up to `max` messages, waiting (per the publisher's [`WaitStrategy`]) until there
    /// is room for one, then as [`Publisher::try_send_many`]: returns how many were sent, at
    /// least one (unless `max` is 0). On a copying transport each message waits as
    /// [`Publisher::send`] does, and all `max` are sent.
    ///
    /// # Errors
    /// As [`Publisher::loan`]: [`LoanError::Full`] at once under [`Policy::Fail`].
    #[inline]
    pub fn send_many(&mut self, max: usize, fill: impl FnMut(&mut T)) -> Result<usize, LoanError> {
        self.send_many_until(max, None, fill)
    }

    /// Like [`Publisher::send_many`], giving up after `timeout` (on a copying transport, with
    /// what was sent by then).
    ///
    /// # Errors
    /// [`LoanError::Timeout`] when no slot came free in time (nothing was sent); as
    /// [`Publisher::loan_timeout`] otherwise.
    pub fn send_many_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
        fill: impl FnMut(&mut T),
    ) -> Result<usize, LoanError> {
        self.send_many_until(max, Some(Instant::now() + timeout), fill)
    }

    fn send_many_until(
        &mut self,
        max: usize,
        deadline: Option<Instant>,
        mut fill: impl FnMut(&mut T),
    ) -> Result<usize, LoanError> {
        if max == 0 {
            return Ok(0);
        }
        if let Imp::Ring(r) = &mut self.imp {
            if r.inner.staging.is_none() {
                let sent = r.inner.write_run(max, &mut fill);
                if sent > 0 {
                    return Ok(sent);
                }
                // Room for one, waited for; the run then finds it (and whatever else came
                // free).
                r.inner.claim(deadline)?;
                return Ok(r.inner.write_run(max, &mut fill));
            }
        }
        let mut sent = 0;
        while sent < max {
            let ptr = match self.claim(deadline) {
                Ok(ptr) => ptr,
                Err(LoanError::Timeout) if sent > 0 => break,
                Err(e) => return Err(e),
            };
            let mut loan = self.loan_at(ptr, size_of::<T>() as u32);
            fill(&mut loan);
            loan.send();
            sent += 1;
        }
        Ok(sent)
    }
}

impl<T: CheckedBitPattern + NoUninit> Publisher<Checked<T>> {
    /// Copy `value`'s bytes into the slot `ptr` and send them.
    #[inline]
    fn write_and_send(&mut self, ptr: *mut u8, value: &T) {
        let bytes = bytemuck::bytes_of(value);
        // SAFETY: `ptr` is the claimed slot (or the Overwrite staging buffer): at least
        // `size_of::<T>()` bytes (the topic's slot size is the type's), this publisher's alone
        // until the commit below.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        self.commit(bytes.len() as u32);
    }

    /// Send `value` without waiting.
    ///
    /// # Errors
    /// [`TrySendError::Full`] hands `value` back; so does [`TrySendError::Io`], when a copying
    /// transport could not write an earlier message (the file transport: a full disk).
    #[inline]
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        match self.try_claim() {
            Ok(ptr) => {
                self.write_and_send(ptr, &value);
                Ok(())
            }
            Err(TryLoanError::Io { kind }) => Err(TrySendError::Io(value, kind)),
            Err(_) => Err(TrySendError::Full(value)),
        }
    }

    /// Send `value`, waiting while the ring is full.
    ///
    /// # Errors
    /// [`TrySendError::Full`] at once under [`Policy::Fail`]; [`TrySendError::Truncated`].
    #[inline]
    pub fn send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        match self.claim(None) {
            Ok(ptr) => {
                self.write_and_send(ptr, &value);
                Ok(())
            }
            Err(LoanError::Truncated) => Err(TrySendError::Truncated(value)),
            Err(LoanError::Io { kind, .. }) => Err(TrySendError::Io(value, kind)),
            Err(_) => Err(TrySendError::Full(value)),
        }
    }

    /// Like [`Publisher::<Checked<T>>::send`](Publisher::send), giving up after `timeout`.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`], [`SendTimeoutError::Full`] (Fail),
    /// [`SendTimeoutError::Truncated`]: each hands `value` back.
    pub fn send_timeout(&mut self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        match self.claim(Some(Instant::now() + timeout)) {
            Ok(ptr) => {
                self.write_and_send(ptr, &value);
                Ok(())
            }
            Err(LoanError::Full) => Err(SendTimeoutError::Full(value)),
            Err(LoanError::Truncated) => Err(SendTimeoutError::Truncated(value)),
            Err(LoanError::Io { kind, .. }) => Err(SendTimeoutError::Io(value, kind)),
            Err(_) => Err(SendTimeoutError::Timeout(value)),
        }
    }
}

impl Publisher<[u8]> {
    fn check_len(&self, len: usize) -> Result<u32, TryLoanError> {
        if let Some(expected) = self.exact_len {
            if len != expected as usize {
                return Err(TryLoanError::WrongLength {
                    len,
                    expected: expected as usize,
                });
            }
        }
        if len > self.slot_size() {
            return Err(TryLoanError::TooLarge {
                len,
                max: self.slot_size(),
            });
        }
        Ok(len as u32)
    }

    /// Loan the next slot for a byte message of `len` bytes, without waiting.
    ///
    /// # Errors
    /// [`TryLoanError::TooLarge`] if `len` exceeds the slot size (nothing is truncated);
    /// [`TryLoanError::WrongLength`] if the publisher sends under a type's fingerprint
    /// ([`PublisherBuilder::as_type`]) and `len` is not its size; [`TryLoanError::Full`];
    /// [`TryLoanError::Io`] when a copying transport could not write an earlier message.
    pub fn try_loan_bytes(&mut self, len: usize) -> Result<Loan<'_, [u8]>, TryLoanError> {
        let len = self.check_len(len)?;
        let ptr = self.try_claim()?;
        Ok(self.loan_at(ptr, len))
    }

    /// Loan the next slot for a byte message of `len` bytes, waiting while the ring is full
    /// (`timeout`: `None` waits for as long as it takes).
    ///
    /// # Errors
    /// [`LoanError::TooLarge`]; [`LoanError::WrongLength`]; [`LoanError::Timeout`];
    /// [`LoanError::Full`] at once under [`Policy::Fail`]; [`LoanError::Io`] when a copying
    /// transport could not write an earlier message.
    pub fn loan_bytes(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<Loan<'_, [u8]>, LoanError> {
        let len = self.check_len(len).map_err(|e| match e {
            TryLoanError::WrongLength { len, expected } => LoanError::WrongLength { len, expected },
            TryLoanError::TooLarge { len, max } => LoanError::TooLarge { len, max },
            _ => unreachable!("check_len refuses lengths only"),
        })?;
        let ptr = self.claim(timeout.map(|t| Instant::now() + t))?;
        Ok(self.loan_at(ptr, len))
    }

    /// Copy `bytes` into the next slot and send them, without waiting.
    ///
    /// # Errors
    /// As [`Publisher::try_loan_bytes`].
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> Result<(), TryLoanError> {
        let mut loan = self.try_loan_bytes(bytes.len())?;
        loan.copy_from_slice(bytes);
        loan.send();
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let control = self.inner.control();
        // SAFETY: the lane's owner words are in the mapping, still mapped (`segment` is
        // dropped after this).
        let owner = unsafe { &*self.inner.lane };
        if self.inner.policy == Policy::Block && self.inner.wait.may_sleep() {
            // Before the lane is free: its marks must never be found on the next owner's.
            owner.unmark_waits(WAITS_MAY_SLEEP);
            control.space.lower_may_sleep();
        }
        owner.id.store(0, Ordering::Release);
        // Release (inside `leave`): pairs with the subscriber's Acquire load in `poll_empty`:
        // every message committed before it is visible to a subscriber that sees the topic
        // closed.
        let last = control.peers.leave();
        control.data.notify(&self.inner.waker());
        if last && !self.inner.persistent {
            let _ = self.segment.unlink();
        }
    }
}

/// A slot of the ring, loaned to the publisher to write in place.
///
/// The slot holds whatever bytes it held before (an earlier message, or zeros): for a `Pod`
/// type any bytes are a valid value, so the loan derefs to `T` at once. Write every field you
/// need (or the whole value with [`Loan::write`]), then [`Loan::send`]. Dropping a loan unsent
/// gives the slot back: nothing is published.
///
/// The publisher stays borrowed while a loan lives:
/// ```compile_fail,E0499
/// # let bus = shmbus::Bus::builder().prefix("doctest-loan.").build().unwrap();
/// let mut publisher = bus.publisher::<u64>("t").create().unwrap();
/// let loan = publisher.try_loan().unwrap();
/// let second = publisher.try_loan(); // error: `publisher` is already borrowed by `loan`
/// loan.send();
/// ```
#[must_use = "a loan publishes nothing until `send` is called"]
pub struct Loan<'p, T: ?Sized> {
    target: Target<'p>,
    ptr: *mut u8,
    /// Bytes the message will have: `size_of::<T>()`, or the byte length asked for.
    len: u32,
    _type: PhantomData<&'p mut T>,
}

impl<T: ?Sized> Loan<'_, T> {
    /// Publish the message: one Release store makes it visible, then a sleeping subscriber is
    /// woken (a syscall only if one sleeps).
    #[inline]
    pub fn send(self) {
        match self.target {
            Target::Ring(inner) => inner.commit(self.len),
            Target::Copy(copy) => copy.commit(self.len),
        }
    }

    /// The sequence number the message will have.
    pub fn seq(&self) -> u64 {
        match &self.target {
            Target::Ring(inner) => inner.writer.next_seq(),
            Target::Copy(copy) => copy.next_seq(),
        }
    }
}

impl<T: bytemuck::Pod> Loan<'_, T> {
    /// Overwrite the whole slot with `value`.
    #[inline]
    pub fn write(&mut self, value: T) {
        **self = value;
    }
}

impl<T: bytemuck::Pod> Deref for Loan<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the slot's payload is aligned for `T` (the geometry's payload offset and stride
        // are multiples of `align_of::<T>()`) and holds `size_of::<T>()` initialised bytes (the
        // segment was zero-filled); any bytes are a valid `T` (`Pod`); the slot is the
        // publisher's alone until `send` (every subscriber released it). Under Overwrite the
        // pointer is the publisher's staging buffer, aligned for `T` and as long as a slot.
        unsafe { &*(self.ptr as *const T) }
    }
}

impl<T: bytemuck::Pod> DerefMut for Loan<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes the reference unique in this process.
        unsafe { &mut *(self.ptr as *mut T) }
    }
}

impl Deref for Loan<'_, [u8]> {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `len <= slot_size` was checked when the loan was made; the slot's bytes are
        // initialised and the publisher's alone until `send`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) }
    }
}

impl DerefMut for Loan<'_, [u8]> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len as usize) }
    }
}
