//! The subscribing side of a topic: open it, check it, receive messages in place.

use super::control::TopicControl;
use super::{payload::Payload, Bus};
use crate::error::{OpenError, RecvError};
use crate::layout::{Geometry, HeaderValues, LayoutError, HEADER_SIZE, MAX_SEGMENT_SIZE};
use crate::ring::spsc::{Consumer, Peek, Ready};
use crate::ring::MappedSlots;
use crate::segment::{Segment, SegmentError};
use crate::sync::{spin_hint, Ordering};
use crate::wait::{self, Futex, WaitStrategy};
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
    type_name: Option<String>,
    _type: PhantomData<fn(&T)>,
}

impl<'b, T: ?Sized + Payload> SubscriberBuilder<'b, T> {
    pub(super) fn new(bus: &'b Bus, topic: &str) -> Self {
        Self {
            bus,
            topic: topic.into(),
            wait: WaitStrategy::default(),
            slip: Duration::ZERO,
            type_name: None,
            _type: PhantomData,
        }
    }

    /// How [`Subscriber::recv`] and [`Subscriber::recv_timeout`] wait for a message.
    pub fn wait(mut self, strategy: WaitStrategy) -> Self {
        self.wait = strategy;
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
    /// [`OpenError::Busy`], [`OpenError::InvalidName`], and [`OpenError::Segment`] for an owner,
    /// a mode or a system error.
    pub fn open(&self) -> Result<Subscriber<T>, OpenError> {
        let name = self
            .bus
            .segment_name(&self.topic)
            .map_err(|reason| OpenError::InvalidName {
                topic: self.topic.clone(),
                reason,
            })?;
        let topic = || self.topic.clone();
        let segment =
            Segment::open(&name, self.bus.access, 0, MAX_SEGMENT_SIZE).map_err(|e| match e {
                SegmentError::NotFound(_) => OpenError::NotFound { topic: topic() },
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
        let control_size = size_of::<TopicControl>() as u32;
        // SAFETY: the mapping is page-aligned and at least HEADER_SIZE bytes long.
        let header = unsafe { HeaderValues::read(segment.base().as_ptr()) };
        let geometry =
            Geometry::validate(&header, segment.len(), control_size).map_err(|e| match e {
                LayoutError::TooSmall { size } => OpenError::TooSmall {
                    topic: topic(),
                    size,
                },
                LayoutError::NotReady => OpenError::NotReady { topic: topic() },
                LayoutError::UnsupportedVersion { found } => OpenError::UnsupportedVersion {
                    topic: topic(),
                    found,
                },
                reason => OpenError::Corrupt {
                    topic: topic(),
                    reason,
                },
            })?;
        let expected = T::fingerprint(self.type_name.as_deref());
        let found = header.fingerprint();
        if found != Some(expected) {
            return Err(OpenError::IncompatibleType {
                topic: topic(),
                expected: Box::new(expected),
                found: Box::new(found.unwrap_or(expected_unknown())),
            });
        }
        // The fingerprint matched, but a hostile header could still pair it with a geometry
        // that misaligns or undersizes `T`: check what in-place references rely on.
        if let Some(size) = T::fixed_size() {
            let align = T::align() as u32;
            if geometry.slot_size as usize != size
                || geometry.payload_offset % align != 0
                || geometry.slot_stride % align != 0
                || geometry.slots_offset % align as u64 != 0
            {
                return Err(OpenError::Corrupt {
                    topic: topic(),
                    reason: LayoutError::Inconsistent("slot geometry does not fit the type"),
                });
            }
        }
        let base = segment.base();
        // SAFETY: `geometry` was validated against this mapping: the control block lies inside
        // it, 128-aligned; any bytes are valid for its atomics.
        let control = unsafe {
            &*(base.as_ptr().add(geometry.control_offset as usize) as *const TopicControl)
        };
        control
            .peers
            .claim_subscriber(std::process::id())
            .map_err(|pid| OpenError::Busy {
                topic: topic(),
                pid,
            })?;
        // SAFETY: validated geometry (slots inside the mapping, aligned); the mapping lives in
        // `Subscriber::segment`, dropped after the consumer (field order).
        let slots =
            unsafe { MappedSlots::new(base.add(geometry.slots_offset as usize), &geometry) };
        // SAFETY: cursors in the mapping as above; we hold the subscriber's place, so we are
        // the only consumer.
        let consumer = unsafe { Consumer::new(&control.ring, slots) };
        let first_seq = consumer.next_seq();
        let barrier_ok = self.wait.may_sleep() && wait::announce_sleeper(&control.data);
        Ok(Subscriber {
            consumer,
            control,
            wait: self.wait,
            slip: self.slip,
            empty_at: first_seq,
            slips: 0,
            barrier_ok,
            expected_len: T::fixed_size().map(|s| s as u32),
            topic: self.topic.clone(),
            _segment: segment,
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

/// Messages received without finding the ring empty, after which an empty ring makes a
/// subscriber with a [`SubscriberBuilder::slip`] pause.
pub const SLIP_RUN: u64 = 16;

/// A fingerprint to show when a header's payload kind is not one this build knows.
fn expected_unknown() -> crate::layout::TypeFingerprint {
    crate::layout::TypeFingerprint::typed::<()>("<unknown kind>")
}

/// The subscriber of a topic: the only reader of its ring.
///
/// `Send` but not `Sync`: receiving takes `&mut self`, and a [`Sample`] borrows the subscriber
/// until dropped, so one thread at a time reads.
#[derive(Debug)]
pub struct Subscriber<T: ?Sized> {
    consumer: Consumer<MappedSlots>,
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
    /// `Some(size_of::<T>())` for typed topics: every message must have exactly that length.
    expected_len: Option<u32>,
    topic: String,
    // Declared last: dropped after the fields that point into it.
    _segment: Segment,
    _type: PhantomData<fn(&T)>,
}

// SAFETY: the raw pointers point into `segment`, which moves with the subscriber; shared words
// are reached through atomics.
unsafe impl<T: ?Sized> Send for Subscriber<T> {}

impl<T: ?Sized> Subscriber<T> {
    #[inline(always)]
    fn control(&self) -> &TopicControl {
        // SAFETY: in the mapping, which outlives `self`'s use of it.
        unsafe { &*self.control }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many times this subscriber has paused for its [`SubscriberBuilder::slip`].
    pub fn slips(&self) -> u64 {
        self.slips
    }

    /// Sequence number of the next message to receive (messages received so far).
    pub fn next_seq(&self) -> u64 {
        self.consumer.next_seq()
    }

    /// The next message if it is ready and well formed: the whole fast path of every receive,
    /// inlined into the caller's loop so that what it finds stays in registers. Returned
    /// through memory from an out-of-line `recv`, a `Sample` was written as 8-byte stores and
    /// read back as 16-byte loads, a failed store-to-load forwarding per message: it held a
    /// streaming subscriber at ~100 M 8-byte messages/s where this path reaches ~380 M
    /// (`shmbus bench --only stream`, same machine state).
    #[inline(always)]
    fn poll_ready(&self) -> Option<Ready> {
        match self.consumer.peek() {
            Peek::Ready(ready) if self.expected_len.is_none_or(|e| e == ready.len) => Some(ready),
            _ => None,
        }
    }

    /// Look for the next message without waiting.
    #[inline]
    fn poll(&mut self) -> Result<Option<Ready>, RecvError> {
        match self.consumer.peek() {
            Peek::Ready(ready) => match self.expected_len {
                Some(expected) if ready.len != expected => {
                    self.skip_corrupt(ready.seq, ready.len, expected)
                }
                _ => Ok(Some(ready)),
            },
            Peek::Empty => self.poll_empty(),
            Peek::BadLength { seq, len } => {
                let expected = self.expected_len.unwrap_or(self.consumer_slot_size());
                self.skip_corrupt(seq, len, expected)
            }
        }
    }

    fn consumer_slot_size(&self) -> u32 {
        use crate::ring::SlotStorage;
        self.consumer.storage().slot_size()
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
        // About to report "nothing": give back every slot read, so that the publisher never
        // waits for slots this side is done with.
        if self.consumer.flush() {
            self.control().space.notify(&Futex);
        }
        // Acquire: pairs with the publisher's Release store at close; every message it sent is
        // visible, so an empty ring after this load means nothing more will come.
        if self.control().peers.publisher.load(Ordering::Acquire) != 0 {
            return Ok(None);
        }
        match self.consumer.peek() {
            Peek::Empty => Err(RecvError::Disconnected),
            _ => Ok(None), // a message landed meanwhile: the caller polls again
        }
    }

    #[inline(always)]
    fn release(&mut self) {
        if self.consumer.release() {
            self.control().space.notify(&Futex);
        }
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
        let head = self.consumer.next_seq();
        if !self.slip.is_zero() && head.wrapping_sub(self.empty_at) >= SLIP_RUN {
            self.slips += 1;
            let end = Instant::now() + self.slip;
            let end = deadline.map_or(end, |d| d.min(end));
            while Instant::now() < end {
                spin_hint();
            }
        }
        self.empty_at = head;
        loop {
            if let Some(ready) = self.poll()? {
                return Ok(Some(ready));
            }
            // SAFETY: the control block outlives this call; borrowing it through the raw pointer
            // leaves `self.consumer` free for the closure.
            let control = unsafe { &*self.control };
            let consumer = &self.consumer;
            let arrived =
                wait::wait_until(self.wait, &control.data, self.barrier_ok, deadline, || {
                    // Acquire (inside `peek`/the load): what `poll` then reads is visible.
                    !matches!(consumer.peek(), Peek::Empty)
                        || control.peers.publisher.load(Ordering::Acquire) == 0
                });
            if !arrived {
                return self.poll();
            }
        }
    }

    #[inline(always)]
    fn sample(&mut self, ready: Ready) -> Sample<'_, T> {
        Sample {
            ptr: self.consumer.storage().payload_ptr(ready.index),
            len: ready.len,
            seq: ready.seq,
            subscriber: self,
        }
    }

    /// The next message if one is ready, without waiting. Real-time safe: no allocation, lock
    /// or syscall (a wake syscall only if the publisher sleeps on a full ring).
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the publisher has closed and everything was received;
    /// [`RecvError::Corrupt`] for a message with an impossible length (skipped).
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
        let ready = match self.poll_ready() {
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
        if let Some(ready) = self.poll_ready() {
            return Ok(Some(self.sample(ready)));
        }
        match self.recv_deadline(Some(Instant::now() + timeout))? {
            Some(ready) => Ok(Some(self.sample(ready))),
            None => Ok(None),
        }
    }
}

impl<T: ?Sized> Drop for Subscriber<T> {
    fn drop(&mut self) {
        self.consumer.flush();
        let control = self.control();
        control.space.notify(&Futex);
        if self.wait.may_sleep() {
            control.data.lower_may_sleep();
        }
        let me = std::process::id();
        let _ =
            control
                .peers
                .subscriber
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
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
    subscriber: &'s mut Subscriber<T>,
    ptr: *const u8,
    len: u32,
    seq: u64,
}

impl<T: ?Sized> Sample<'_, T> {
    /// The message's sequence number: 0 for the topic's first message, then consecutive.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl<T: ?Sized> Drop for Sample<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.subscriber.release();
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
