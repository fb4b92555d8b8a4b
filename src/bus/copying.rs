//! Publishers and subscribers over a copying transport ([`crate::transport`]): a loan is a
//! buffer of the publisher's own, laid out as a frame (header, then payload), and `send` hands
//! the whole frame to the kernel in one call per subscriber; a subscriber reads frames into a
//! buffer of its own and hands out samples that point into it.

use super::payload::AlignedWords;
use super::subscriber::Sample;
use super::Bus;
use crate::error::{CreateError, LoanError, OpenError, RecvError, TryLoanError};
use crate::layout::{Policy, TypeFingerprint};
use crate::transport::frame::{self, FrameHeader, FrameKind, Hello, HEADER_LEN};
use crate::transport::{Endpoint, FrameReceiver, FrameSender, Ready, Transport};
use crate::wait::WaitStrategy;
use std::marker::PhantomData;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the payload starts in a publisher's frame buffer: the header ends there, so that the
/// payload is aligned for any type up to 64-byte alignment.
const PAYLOAD_AT: usize = 64;

/// How long a closing publisher waits for slow subscribers to take what is pending and its
/// goodbye.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Far enough away to stand for "no deadline".
fn forever() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A write the transport could not make (kept pending: it is tried again first).
fn write_failed(kind: std::io::ErrorKind) -> LoanError {
    LoanError::Io {
        kind,
        detail: format!("writing a message failed: {kind}"),
    }
}

/// The publishing end of a topic on a copying transport.
#[derive(Debug)]
pub(crate) struct CopyPublisher {
    sender: Box<dyn FrameSender>,
    /// The frame being written: header at `PAYLOAD_AT - HEADER_LEN`, payload at `PAYLOAD_AT`.
    frame: AlignedWords,
    policy: Policy,
    type_hash: u64,
    next_seq: u64,
    /// Set by a waiting claim under Block: how long its commit may wait for the frame to be
    /// handed whole to the kernel. `None`: a `try_` call, which never waits.
    deliver_by: Option<Instant>,
    slot_size: u32,
    capacity: u64,
    transport: &'static str,
}

impl CopyPublisher {
    /// Create the topic on `transport`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        transport: &dyn Transport,
        bus: &Bus,
        topic: &str,
        fingerprint: TypeFingerprint,
        policy: Policy,
        slot_size: u32,
        capacity: u64,
    ) -> Result<Self, CreateError> {
        bus.segment_name(topic)
            .map_err(|reason| CreateError::InvalidName {
                topic: topic.into(),
                reason,
            })?;
        let hello = Hello {
            fingerprint,
            pid: std::process::id(),
            identity: crate::segment::my_identity(),
            policy,
            max_len: slot_size,
        };
        let endpoint = Endpoint {
            prefix: bus.prefix(),
            topic,
            hello,
            group: bus.group_access(),
            any_type: false,
            history: 0,
        };
        let sender = transport.publish(&endpoint)?;
        Ok(Self {
            sender,
            frame: AlignedWords::new(PAYLOAD_AT + frame::padded(slot_size as usize), 64),
            policy,
            type_hash: frame::type_hash(&fingerprint),
            next_seq: 0,
            deliver_by: None,
            slot_size,
            capacity,
            transport: transport.name(),
        })
    }

    pub(crate) fn payload_ptr(&mut self) -> *mut u8 {
        // SAFETY: the buffer holds `PAYLOAD_AT` bytes of header room and a padded slot.
        unsafe { self.frame.ptr().add(PAYLOAD_AT) }
    }

    /// A loan's buffer if every subscriber can take a frame now (always under Overwrite).
    #[inline]
    pub(crate) fn try_claim(&mut self) -> Result<*mut u8, TryLoanError> {
        self.deliver_by = None;
        match self.sender.ready(self.policy, None) {
            Ready::Yes => Ok(self.payload_ptr()),
            Ready::Full => Err(TryLoanError::Full),
            Ready::Failed(kind) => Err(TryLoanError::Io { kind }),
        }
    }

    /// As `try_claim`, waiting (Block) until `deadline`.
    pub(crate) fn claim(&mut self, deadline: Option<Instant>) -> Result<*mut u8, LoanError> {
        let claimed = self.try_claim();
        // A waiting send (Block) also waits, at commit, for its frame to be handed whole to
        // the kernel: a frame left pending would otherwise go out only at the next call.
        if self.policy == Policy::Block {
            self.deliver_by = Some(deadline.unwrap_or_else(forever));
        }
        match claimed {
            Ok(ptr) => return Ok(ptr),
            Err(TryLoanError::Io { kind }) => return Err(write_failed(kind)),
            Err(_) => {}
        }
        if self.policy == Policy::Fail {
            return Err(LoanError::Full);
        }
        match self
            .sender
            .ready(self.policy, Some(deadline.unwrap_or_else(forever)))
        {
            Ready::Yes => Ok(self.payload_ptr()),
            Ready::Full => Err(LoanError::Timeout),
            Ready::Failed(kind) => Err(write_failed(kind)),
        }
    }

    /// Frame the loan's `len` bytes and hand them to every subscriber.
    #[inline]
    pub(crate) fn commit(&mut self, len: u32) {
        let header = FrameHeader::data(len, self.type_hash, self.next_seq, now_ns());
        let total = frame::frame_len(len as usize);
        let start = PAYLOAD_AT - HEADER_LEN;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(self.frame.words_mut());
        let head: &mut [u8; HEADER_LEN] = (&mut bytes[start..PAYLOAD_AT]).try_into().unwrap();
        header.encode(head);
        bytes[PAYLOAD_AT + len as usize..start + total].fill(0);
        self.sender.send(&bytes[start..start + total]);
        self.next_seq += 1;
        if let Some(deadline) = self.deliver_by.take() {
            // What the kernel did not take now, pushed on until the send's deadline (a
            // subscriber that does not read by then gets it at the publisher's next call).
            let _ = self.sender.ready(Policy::Block, Some(deadline));
        }
    }

    /// Push on whatever frames the kernel did not take whole yet, waiting up to `deadline`;
    /// returns whether none is left.
    pub(crate) fn flush(&mut self, deadline: Instant) -> bool {
        self.sender.ready(Policy::Block, Some(deadline)) == Ready::Yes
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn subscribers(&self) -> usize {
        self.sender.subscribers()
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    pub(crate) fn slot_size(&self) -> u32 {
        self.slot_size
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn transport(&self) -> &'static str {
        self.transport
    }
}

impl Drop for CopyPublisher {
    fn drop(&mut self) {
        let mut close = [0u8; HEADER_LEN];
        FrameHeader::control(FrameKind::Close, 0, self.type_hash).encode(&mut close);
        self.sender.close(&close, CLOSE_LINGER);
    }
}

/// What a subscriber builder says, for a copying transport.
#[derive(Debug)]
pub(crate) struct SubOptions {
    pub(crate) wait: WaitStrategy,
    pub(crate) history: u64,
    pub(crate) any_type: bool,
    pub(crate) fingerprint: TypeFingerprint,
    pub(crate) fixed_size: Option<usize>,
    pub(crate) align: usize,
}

/// Open a subscriber of `topic` on `transport`.
pub(crate) fn open<T: ?Sized>(
    transport: &dyn Transport,
    bus: &Bus,
    topic: &str,
    options: SubOptions,
    handshake: Duration,
) -> Result<CopySubscriber<T>, OpenError> {
    bus.segment_name(topic)
        .map_err(|reason| OpenError::InvalidName {
            topic: topic.into(),
            reason,
        })?;
    if options.history > 0 && !transport.keeps_history() {
        return Err(OpenError::Unsupported {
            transport: transport.name(),
            what: "history (a copying transport delivers what is sent after a subscriber connects)"
                .into(),
        });
    }
    let endpoint = Endpoint {
        prefix: bus.prefix(),
        topic,
        hello: Hello {
            fingerprint: options.fingerprint,
            pid: std::process::id(),
            identity: crate::segment::my_identity(),
            policy: Policy::Block,
            max_len: options.fixed_size.map_or(frame::MAX_PAYLOAD, |s| s as u32),
        },
        group: bus.group_access(),
        any_type: options.any_type,
        history: options.history,
    };
    let rx = transport.subscribe(&endpoint, handshake)?;
    let hello = rx.hello().clone();
    // Payloads land 8-aligned in the receive buffer; a type that needs more is copied out.
    let scratch = (options.align > 8 || options.fixed_size.is_some())
        .then(|| AlignedWords::new(hello.max_len as usize, options.align.max(8)));
    Ok(CopySubscriber {
        rx,
        policy: hello.policy,
        align: options.align,
        scratch,
        wait: options.wait,
        topic: topic.into(),
        stamp: 0,
        transport: transport.name(),
        _type: PhantomData,
    })
}

/// The subscribing end of a topic on a copying transport.
#[derive(Debug)]
pub(crate) struct CopySubscriber<T: ?Sized> {
    rx: Box<dyn FrameReceiver>,
    policy: Policy,
    align: usize,
    /// Where a payload is copied when it must be aligned beyond 8 or validated.
    scratch: Option<AlignedWords>,
    wait: WaitStrategy,
    topic: String,
    stamp: u64,
    transport: &'static str,
    _type: PhantomData<fn(&T)>,
}

impl<T: ?Sized> CopySubscriber<T> {
    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }
    pub(crate) fn next_seq(&self) -> u64 {
        self.rx.next_seq()
    }
    pub(crate) fn lost(&self) -> u64 {
        self.rx.lost()
    }
    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }
    pub(crate) fn transport(&self) -> &'static str {
        self.transport
    }
    pub(crate) fn last_stamp(&self) -> u64 {
        self.stamp
    }
    pub(crate) fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.rx.fd()
    }
    pub(crate) fn fingerprint(&self) -> TypeFingerprint {
        self.rx.hello().fingerprint
    }
    pub(crate) fn slot_size(&self) -> u32 {
        self.rx.hello().max_len
    }

    /// The next frame, waiting per the strategy until `deadline`.
    fn next(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<crate::transport::Received>, RecvError> {
        match self.wait {
            // Never sleep in the kernel: poll without waiting until the deadline.
            WaitStrategy::Spin | WaitStrategy::SpinYield => loop {
                if let Some(r) = self.rx.recv(Some(Instant::now()))? {
                    return Ok(Some(r));
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
                if self.wait == WaitStrategy::SpinYield {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            },
            _ => self.rx.recv(deadline),
        }
    }

    /// The next message, with its payload where a `T` may be read from it.
    pub(crate) fn recv_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Sample<'_, T>>, RecvError> {
        let Some(r) = self.next(deadline)? else {
            return Ok(None);
        };
        self.stamp = r.stamp;
        let payload = self.rx.payload(&r);
        let mut ptr = payload.as_ptr();
        if (ptr as usize) % self.align != 0 {
            let scratch = self
                .scratch
                .as_mut()
                .expect("a type aligned beyond 8 has a scratch buffer");
            let to = scratch.ptr();
            // SAFETY: the scratch buffer holds the topic's largest payload, and `payload` is no
            // longer (the frame check bounds it by the greeting's largest payload).
            unsafe { std::ptr::copy_nonoverlapping(ptr, to, payload.len()) };
            ptr = to;
        }
        let (len, seq) = (r.len, r.seq);
        Ok(Some(Sample::copied(self, ptr, len, seq)))
    }

    /// The next message, copied out and validated by `valid` (a `Checked` payload).
    pub(crate) fn recv_checked(
        &mut self,
        deadline: Option<Instant>,
        valid: fn(&[u8]) -> bool,
    ) -> Result<Option<Sample<'_, T>>, RecvError> {
        let Some(r) = self.next(deadline)? else {
            return Ok(None);
        };
        self.stamp = r.stamp;
        let payload = self.rx.payload(&r);
        let scratch = self
            .scratch
            .as_mut()
            .expect("a typed payload has a scratch buffer");
        let to = scratch.ptr();
        // SAFETY: as in `recv_until`.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), to, payload.len()) };
        // SAFETY: `to` holds `payload.len()` bytes just written.
        let bytes = unsafe { std::slice::from_raw_parts(to, payload.len()) };
        if !valid(bytes) {
            return Err(RecvError::InvalidBitPattern { seq: r.seq });
        }
        let (len, seq) = (r.len, r.seq);
        Ok(Some(Sample::copied(self, to, len, seq)))
    }
}
