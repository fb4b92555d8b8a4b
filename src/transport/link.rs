//! What every copying transport shares: the publisher's fan-out over connections (each with
//! at most one frame pending), and the subscriber's framed receive over a byte stream or a
//! datagram source. A backend only says how to accept, connect, write and read.

use super::frame::{self, Expect, FrameError, FrameHeader, FrameKind, Hello, StreamBuf};
use super::Endpoint;
use crate::error::{OpenError, RecvError};
use crate::layout::Policy;
use crate::sync::{AtomicU32, Ordering};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The publishing end of a copying transport: delivers encoded frames to every subscriber.
pub trait FrameSender: Send + fmt::Debug {
    /// Whether every subscriber can take a frame now (Block, Fail), waiting until `deadline`
    /// for those that cannot (`None`: no wait at all). Under Overwrite always ready.
    fn ready(&mut self, policy: Policy, deadline: Option<Instant>) -> Ready;
    /// Deliver one whole frame to every subscriber that can take it (all of them, after
    /// `ready` said so). A subscriber whose connection failed is dropped.
    fn send(&mut self, frame: &[u8]);
    /// Subscribers connected now.
    fn subscribers(&self) -> usize;
    /// Deliver `frame` (a close) and what is pending, waiting up to `linger` for slow
    /// subscribers, then disconnect everyone.
    fn close(&mut self, frame: &[u8], linger: Duration);
}

/// What [`FrameSender::ready`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ready {
    /// Every subscriber can take a frame.
    Yes,
    /// Some subscriber cannot, and the call was not to wait (or the deadline passed).
    Full,
    /// A frame the transport could not write (a file transport's write that failed: no space
    /// left, a file too large) is still pending; the publisher reports this error.
    Failed(io::ErrorKind),
}

/// The subscribing end of a copying transport: frames from one publisher, checked.
pub trait FrameReceiver: Send + fmt::Debug {
    /// The publisher's greeting.
    fn hello(&self) -> &Hello;
    /// The next data frame, waiting until `deadline` (`Some(now)`: not at all; `None`: for
    /// as long as it takes). Its payload is [`FrameReceiver::payload`] until the next call.
    ///
    /// # Errors
    /// `Disconnected` after a close, `PublisherGone` when the connection ended without one,
    /// `BadFrame` for garbage (the connection is dropped; `Disconnected` follows).
    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Received>, RecvError>;
    /// The payload of the frame last received.
    fn payload(&self, received: &Received) -> &[u8];
    /// Messages lost to the publisher's overwriting so far (gaps in the sequence).
    fn lost(&self) -> u64;
    /// The sequence number expected next (0 before the first message).
    fn next_seq(&self) -> u64;
    /// The descriptor that becomes readable when bytes arrive, if the source has one whose
    /// readiness is its data's (a socket, a pipe, a queue): for a subscriber that waits in its
    /// own epoll. `None` by default.
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// A data frame received: its sequence number and where its payload lies.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Its sequence number.
    pub seq: u64,
    /// Payload length.
    pub len: u32,
    /// Send time (ns since the Unix epoch).
    pub stamp: u64,
    pub(crate) found: frame::Found,
}

// ---------------------------------------------------------------------------------------------
// The publisher's side.

/// One connection's writing end, as a backend provides it.
pub trait Link: Send {
    /// Write some of `bytes` without blocking: a stream may take part of them; a datagram
    /// link takes all or none (`WouldBlock`).
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// The descriptor to poll for room (`POLLOUT`).
    fn fd(&self) -> BorrowedFd<'_>;
    /// Whether the peer's departure must be asked with [`Link::peer_gone`]: a link whose
    /// descriptor shows no hang-up and whose writes do not fail when the reader is gone (a
    /// message queue). A fan-out then asks while a frame waits for room (at most every 10 ms)
    /// and when it counts its subscribers.
    fn watches_peer(&self) -> bool {
        false
    }
    /// Whether the reader at the other end is gone (a system call; asked only of a link whose
    /// [`Link::watches_peer`] says so). A live reader is never called gone.
    fn peer_gone(&self) -> bool {
        false
    }
}

struct Conn {
    link: Box<dyn Link>,
    /// The rest of a frame the kernel did not take yet (a stream's partial write, or a
    /// datagram refused for want of room); sent before anything else.
    pending: Vec<u8>,
    sent: usize,
    dead: bool,
}

impl Conn {
    fn has_pending(&self) -> bool {
        self.sent < self.pending.len()
    }

    /// Push the pending bytes on; returns whether none are left.
    fn flush(&mut self) -> bool {
        while self.has_pending() {
            match self.link.write(&self.pending[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.dead = true;
                    return true;
                }
            }
        }
        self.pending.clear();
        self.sent = 0;
        true
    }

    /// Send a whole frame; what the kernel does not take now is kept pending.
    fn send(&mut self, frame: &[u8]) {
        debug_assert!(!self.has_pending());
        let mut off = 0;
        while off < frame.len() {
            match self.link.write(&frame[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending.clear();
                    self.pending.extend_from_slice(&frame[off..]);
                    self.sent = 0;
                    return;
                }
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }
}

/// Connections accepted by a backend's thread, handed to the publisher.
#[derive(Default)]
pub struct Arrivals {
    /// 1 while `queue` may hold links the publisher has not taken.
    any: AtomicU32,
    queue: Mutex<Vec<Box<dyn Link>>>,
}

impl Arrivals {
    /// A new connection, greeted by `greet` (which writes its hello to the descriptor it is
    /// given and says whether the whole hello went) while this takes it in: under the queue's
    /// lock, the connection joins the queue and `any` is raised *before* the hello is written.
    /// So a publisher that takes its arrivals waits for the hello, and no data frame can precede
    /// it; and a subscriber that has read its hello (its open has returned) is among the
    /// arrivals that any later send of the publisher looks at: none of what is published after
    /// it joined is missed. A connection whose greeting failed is dropped.
    pub fn admit(&self, link: Box<dyn Link>, greet: impl FnOnce(BorrowedFd<'_>) -> bool) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push(link);
        // Release: pairs with the Acquire load in `FanOut::take_arrivals`.
        self.any.store(1, Ordering::Release);
        let greeted = greet(queue.last().expect("just pushed").fd());
        if !greeted {
            queue.pop();
        }
    }

    /// A new connection, greeted already (or one whose first frames the publisher's own
    /// writes order: a pipe, a queue).
    pub fn push(&self, link: Box<dyn Link>) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(link);
        self.any.store(1, Ordering::Release);
    }
}

/// The publisher's fan-out: every connection gets every frame, per the policy. Connections
/// arrive through [`Arrivals`] (checked with one atomic load per frame).
pub struct FanOut {
    conns: Vec<Conn>,
    arrivals: Arc<Arrivals>,
    /// When the links that watch their peer ([`Link::watches_peer`]) are asked next.
    peer_check_at: Instant,
    /// Dropped last: the backend's acceptor, its listening socket, its name.
    _guard: Box<dyn Send>,
}

impl fmt::Debug for FanOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl FanOut {
    /// A fan-out fed by `arrivals`, keeping `guard` alive as long as it lives.
    pub fn new(arrivals: Arc<Arrivals>, guard: Box<dyn Send>) -> Self {
        Self {
            conns: Vec::new(),
            arrivals,
            peer_check_at: Instant::now(),
            _guard: guard,
        }
    }

    /// A fan-out over one fixed link (a pipe, a FIFO, a queue).
    pub fn single(link: Box<dyn Link>, guard: Box<dyn Send>) -> Self {
        let arrivals = Arc::new(Arrivals::default());
        arrivals.push(link);
        Self::new(arrivals, guard)
    }

    #[inline]
    fn take_arrivals(&mut self) {
        if self.arrivals.any.load(Ordering::Acquire) != 0 {
            self.take_arrivals_slow();
        }
    }

    #[cold]
    fn take_arrivals_slow(&mut self) {
        let mut queue = self
            .arrivals
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.arrivals.any.store(0, Ordering::Relaxed);
        for link in queue.drain(..) {
            self.conns.push(Conn {
                link,
                pending: Vec::new(),
                sent: 0,
                dead: false,
            });
        }
    }

    fn reap(&mut self) {
        if self.conns.iter().any(|c| c.dead) {
            self.conns.retain(|c| !c.dead);
        }
    }

    /// Drop the connections with a frame waiting for room whose reader is gone, for the links
    /// that must be asked ([`Link::watches_peer`]); at most every [`LIVENESS_CHECK`].
    #[cold]
    fn check_peers(&mut self) {
        let now = Instant::now();
        if now < self.peer_check_at {
            return;
        }
        self.peer_check_at = now + LIVENESS_CHECK;
        for c in &mut self.conns {
            if c.has_pending() && c.link.watches_peer() && c.link.peer_gone() {
                c.dead = true;
            }
        }
    }

    /// Wait until one of the connections with pending bytes has room, or `deadline` (or the
    /// next look at the peers that must be asked whether they are gone).
    fn wait_room(&self, deadline: Instant) {
        let busy: Vec<BorrowedFd<'_>> = self
            .conns
            .iter()
            .filter(|c| c.has_pending())
            .map(|c| c.link.fd())
            .collect();
        let mut fds: Vec<rustix::event::PollFd<'_>> = busy
            .iter()
            .map(|fd| rustix::event::PollFd::new(fd, rustix::event::PollFlags::OUT))
            .collect();
        if fds.is_empty() {
            return;
        }
        let watched = self
            .conns
            .iter()
            .any(|c| c.has_pending() && c.link.watches_peer());
        let until = if watched {
            deadline.min(self.peer_check_at)
        } else {
            deadline
        };
        let left = until.saturating_duration_since(Instant::now());
        let _ = rustix::event::poll(&mut fds, Some(&timespec(left)));
    }
}

pub(crate) use crate::wait::timespec;

impl FrameSender for FanOut {
    fn ready(&mut self, policy: Policy, deadline: Option<Instant>) -> Ready {
        self.take_arrivals();
        if policy == Policy::Overwrite {
            return Ready::Yes;
        }
        loop {
            let mut full = false;
            for c in &mut self.conns {
                full |= !c.flush();
            }
            if full {
                self.check_peers();
                full = self.conns.iter().any(|c| !c.dead && c.has_pending());
            }
            self.reap();
            if !full {
                return Ready::Yes;
            }
            match deadline {
                Some(d) if Instant::now() < d => self.wait_room(d),
                _ => return Ready::Full,
            }
        }
    }

    #[inline]
    fn send(&mut self, frame: &[u8]) {
        self.take_arrivals();
        for c in &mut self.conns {
            // Overwrite: a connection still busy with an earlier frame misses this one.
            if c.has_pending() && !c.flush() {
                continue;
            }
            c.send(frame);
        }
        self.reap();
    }

    fn subscribers(&self) -> usize {
        // A subscriber that left is noticed when a write to it fails: look for hang-ups too,
        // and ask the links whose descriptor shows none.
        let connected = self
            .conns
            .iter()
            .filter(|c| {
                let fd = c.link.fd();
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::empty(),
                )];
                let hung_up = rustix::event::poll(&mut fds, Some(&timespec(Duration::ZERO)))
                    .is_ok()
                    && fds[0]
                        .revents()
                        .intersects(rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR);
                let gone = c.link.watches_peer() && c.link.peer_gone();
                !c.dead && !hung_up && !gone
            })
            .count();
        let arrived = self
            .arrivals
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        connected + arrived
    }

    fn close(&mut self, frame: &[u8], linger: Duration) {
        self.take_arrivals();
        let deadline = Instant::now() + linger;
        // Each connection: what is pending, then the close, as far as it takes them in time.
        for c in &mut self.conns {
            if c.flush_until(deadline) && !c.dead {
                c.send(frame);
                c.flush_until(deadline);
            }
        }
        self.conns.clear();
    }
}

impl Conn {
    /// Flush, waiting for room until `deadline`; returns whether nothing is left pending.
    fn flush_until(&mut self, deadline: Instant) -> bool {
        loop {
            if self.flush() {
                return true;
            }
            let watched = self.link.watches_peer();
            if watched && self.link.peer_gone() {
                self.dead = true;
                return true;
            }
            let mut left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if watched {
                left = left.min(LIVENESS_CHECK);
            }
            let fd = self.link.fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::OUT,
            )];
            let _ = rustix::event::poll(&mut fds, Some(&timespec(left)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The subscriber's side.

/// What a read found.
#[derive(Debug)]
pub enum Got {
    /// Bytes (a stream) or one datagram of this many bytes.
    Bytes(usize),
    /// Nothing now.
    Nothing,
    /// The other end is gone: the stream ended.
    End,
}

/// One connection's reading end, as a backend provides it.
pub trait Source: Send {
    /// Whether each read returns exactly one frame (a datagram, a queue message).
    fn datagram(&self) -> bool;
    /// Read without blocking.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<Got>;
    /// Sleep until there may be something to read, or `deadline` (`None`: no limit).
    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()>;
    /// Read, waiting until there is something to read or `deadline` (`None`: no limit):
    /// `Got::Nothing` once it passes. By default a read, and if it finds nothing a wait and
    /// a read again (one system call while messages are waiting, three for a subscriber that
    /// waits for each); a source that can block in the read itself (a socket under
    /// `SO_RCVTIMEO`) does it in one system call either way.
    fn read_wait(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<Got> {
        match self.read(buf)? {
            Got::Nothing => {
                self.wait(deadline)?;
                self.read(buf)
            }
            got => Ok(got),
        }
    }
    /// The descriptor that becomes readable when bytes arrive, for a subscriber that waits in
    /// its own epoll ([`Subscriber::notify_fd`](crate::Subscriber::notify_fd)); `None` by
    /// default (a source whose readiness is not its data's).
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Whether the kernel tells this source's end (a stream's end of file, a reset): its
    /// publisher's liveness need not be polled while it waits. A file or a queue says `false`
    /// (and answers [`Source::publisher_alive`]).
    fn end_is_told(&self) -> bool {
        true
    }
    /// Whether the publisher `hello` names is alive, for a source whose end is not told by
    /// the kernel (a file, a queue). Streams say `true`: their end is `Got::End`.
    fn publisher_alive(&self, hello: &Hello) -> bool {
        let _ = hello;
        true
    }
}

/// Wait for `fd` to be readable until `deadline`.
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<()> {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = deadline.map(|d| timespec(d.saturating_duration_since(Instant::now())));
    match rustix::event::poll(&mut fds, timeout.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Read from a non-blocking descriptor: 0 bytes is the end, `EAGAIN` nothing.
pub fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Got> {
    match rustix::io::read(fd, buf) {
        Ok(0) => Ok(Got::End),
        Ok(n) => Ok(Got::Bytes(n)),
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(Got::Nothing),
        Err(rustix::io::Errno::CONNRESET) | Err(rustix::io::Errno::PIPE) => Ok(Got::End),
        Err(e) => Err(e.into()),
    }
}

/// The state of a framed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame arrived.
    Closed,
    /// The stream ended without a close.
    Gone,
    /// A bad frame arrived and the connection was dropped.
    Dropped,
}

/// How often a source whose end the kernel does not tell checks its publisher's liveness.
const LIVENESS_CHECK: Duration = Duration::from_millis(10);

/// A framed receiver over any [`Source`]: checks each frame against the topic (type,
/// length, sequence) and turns an end, a close or garbage into the bus's errors.
pub struct Framed<S: Source> {
    source: S,
    buf: StreamBuf,
    hello: Hello,
    expect: Expect,
    lost: u64,
    state: State,
}

impl<S: Source> fmt::Debug for Framed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Framed")
            .field("hello", &self.hello)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Read chunk of a stream source.
const CHUNK: usize = 64 * 1024;

impl<S: Source> Framed<S> {
    /// Read the publisher's greeting (waiting until `deadline`) and check it against what
    /// the subscriber expects: its type (unless `any_type`), a sane largest payload.
    pub fn open(
        mut source: S,
        endpoint: &Endpoint<'_>,
        deadline: Instant,
    ) -> Result<Self, OpenError> {
        let (topic, expected, any_type) = (endpoint.topic, &endpoint.hello, endpoint.any_type);
        let chunk = if source.datagram() { 0 } else { CHUNK };
        let mut buf = StreamBuf::new(frame::HELLO_LEN as u32, chunk.min(4096));
        let refused = |reason: String| OpenError::Refused {
            topic: topic.into(),
            reason,
        };
        let io_err = |e: io::Error| OpenError::Transport {
            topic: topic.into(),
            source: e,
        };
        let found = loop {
            if source.datagram() {
                match source.read(buf.datagram_room()).map_err(io_err)? {
                    Got::Bytes(n) => {
                        break buf
                            .datagram(n, frame::HELLO_LEN as u32)
                            .map_err(|e| refused(e.to_string()))?
                    }
                    Got::End => return Err(refused("the publisher hung up".into())),
                    Got::Nothing => {}
                }
            } else {
                if let Some(found) = buf
                    .next(frame::HELLO_LEN as u32)
                    .map_err(|e| refused(e.to_string()))?
                {
                    break found;
                }
                match source.read(buf.spare()).map_err(io_err)? {
                    Got::Bytes(n) => {
                        buf.filled(n);
                        continue;
                    }
                    Got::End => return Err(refused("the publisher hung up".into())),
                    Got::Nothing => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(OpenError::NotReady {
                    topic: topic.into(),
                });
            }
            source.wait(Some(deadline)).map_err(io_err)?;
        };
        if found.header.kind != FrameKind::Hello {
            return Err(refused(format!(
                "the first frame is a {:?}, not a hello",
                found.header.kind
            )));
        }
        let hello = Hello::decode(buf.payload(&found)).map_err(|e| refused(e.to_string()))?;
        if !any_type && hello.fingerprint != expected.fingerprint {
            return Err(OpenError::IncompatibleType {
                topic: topic.into(),
                expected: Box::new(expected.fingerprint),
                found: Box::new(hello.fingerprint),
            });
        }
        if found.header.type_hash != frame::type_hash(&hello.fingerprint) {
            return Err(refused(
                "the hello's type hash does not match its fingerprint".into(),
            ));
        }
        let exact_len = match hello.fingerprint.kind {
            crate::layout::PayloadKind::Typed => {
                let size = u32::try_from(hello.fingerprint.size)
                    .map_err(|_| refused("type size out of range".into()))?;
                if size != hello.max_len {
                    return Err(refused("largest payload is not the type's size".into()));
                }
                Some(size)
            }
            crate::layout::PayloadKind::Bytes => None,
        };
        // A stream's bytes after the hello (data already) are kept.
        let mut data_buf = StreamBuf::new(hello.max_len, chunk);
        if !source.datagram() {
            let rest = buf.partial();
            if rest > 0 {
                let spare = data_buf.spare();
                let bytes = buf.unparsed();
                spare[..rest].copy_from_slice(bytes);
                data_buf.filled(rest);
            }
        }
        Ok(Self {
            expect: Expect {
                type_hash: frame::type_hash(&hello.fingerprint),
                exact_len,
                max_len: hello.max_len,
                gaps: hello.policy == Policy::Overwrite,
                next_seq: None,
            },
            source,
            buf: data_buf,
            hello,
            lost: 0,
            state: State::Open,
        })
    }

    fn ended(&self) -> RecvError {
        match self.state {
            State::Gone => RecvError::PublisherGone {
                pid: self.hello.pid,
            },
            _ => RecvError::Disconnected,
        }
    }

    fn bad(&mut self, e: FrameError) -> RecvError {
        self.state = State::Dropped;
        RecvError::BadFrame(e)
    }

    /// The next frame already in the buffer, or read: without waiting (`wait` is `None`), or
    /// waiting until the deadline it holds (`Some(None)`: no limit).
    fn poll(&mut self, wait: Option<Option<Instant>>) -> Result<Option<frame::Found>, RecvError> {
        let max = self.expect.max_len;
        loop {
            if !self.source.datagram() {
                match self.buf.next(max) {
                    Ok(Some(found)) => return Ok(Some(found)),
                    Ok(None) => {}
                    Err(e) => return Err(self.bad(e)),
                }
            }
            let room = if self.source.datagram() {
                self.buf.datagram_room()
            } else {
                self.buf.spare()
            };
            let got = match wait {
                None => self.source.read(room),
                Some(deadline) => self.source.read_wait(room, deadline),
            };
            match got {
                Ok(Got::Bytes(n)) if self.source.datagram() => {
                    return match self.buf.datagram(n, max) {
                        Ok(found) => Ok(Some(found)),
                        Err(e) => Err(self.bad(e)),
                    }
                }
                Ok(Got::Bytes(n)) => self.buf.filled(n),
                Ok(Got::Nothing) => return Ok(None),
                Ok(Got::End) => {
                    let partial = self.buf.partial();
                    if partial > 0 && !self.source.datagram() {
                        return Err(self.bad(FrameError::Truncated {
                            have: partial,
                            need: frame::HEADER_LEN.max(partial + 1),
                        }));
                    }
                    self.state = State::Gone;
                    return Err(self.ended());
                }
                Err(e) => {
                    self.state = State::Gone;
                    return Err(RecvError::Io {
                        kind: e.kind(),
                        detail: e.to_string(),
                    });
                }
            }
        }
    }
}

impl<S: Source> FrameReceiver for Framed<S> {
    fn hello(&self) -> &Hello {
        &self.hello
    }

    fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Received>, RecvError> {
        if self.state != State::Open {
            return Err(self.ended());
        }
        // A source whose end the kernel does not tell is asked about its publisher every
        // LIVENESS_CHECK while this waits.
        let liveness = !self.source.end_is_told();
        let mut check_at = Instant::now() + LIVENESS_CHECK;
        loop {
            let until = match deadline {
                _ if !liveness => deadline,
                None => Some(check_at),
                Some(d) => Some(d.min(check_at)),
            };
            // Waiting in the read itself: one system call per message for a subscriber that
            // waits for each (a read that finds nothing, a poll, then a read cost three).
            let wait = match until {
                Some(u) if u <= Instant::now() => None,
                _ => Some(until),
            };
            if let Some(found) = self.poll(wait)? {
                match found.header.kind {
                    FrameKind::Data => {
                        let h: FrameHeader = found.header;
                        match self.expect.accept(&h) {
                            Ok(lost) => self.lost = self.lost.saturating_add(lost),
                            Err(e) => return Err(self.bad(e)),
                        }
                        return Ok(Some(Received {
                            seq: h.seq,
                            len: h.len,
                            stamp: h.stamp,
                            found,
                        }));
                    }
                    FrameKind::Close => {
                        self.state = State::Closed;
                        return Err(RecvError::Disconnected);
                    }
                    kind => return Err(self.bad(FrameError::UnexpectedKind { found: kind as u8 })),
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if liveness && now >= check_at {
                if !self.source.publisher_alive(&self.hello) {
                    // One more look: what it wrote before it died is delivered first.
                    if let Some(found) = self.poll(None)? {
                        let _ = found;
                        continue;
                    }
                    self.state = State::Gone;
                    return Err(self.ended());
                }
                check_at = now + LIVENESS_CHECK;
            }
        }
    }

    fn payload(&self, received: &Received) -> &[u8] {
        self.buf.payload(&received.found)
    }

    fn lost(&self) -> u64 {
        self.lost
    }

    fn next_seq(&self) -> u64 {
        self.expect.next_seq.unwrap_or(0)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.source.fd()
    }
}

/// Write the greeting of `hello` to a freshly accepted connection, blocking up to a second.
pub fn greet(fd: BorrowedFd<'_>, hello: &Hello, datagram: bool) -> io::Result<()> {
    let payload = hello.encode();
    let mut out = vec![0u8; frame::frame_len(payload.len())];
    let header = FrameHeader::control(
        FrameKind::Hello,
        payload.len() as u32,
        frame::type_hash(&hello.fingerprint),
    );
    frame::encode_frame(&mut out, &header, &payload);
    write_all_until(fd, &out, datagram, Instant::now() + Duration::from_secs(1))
}

/// Write to a socket without raising `SIGPIPE` (a peer that hung up is `EPIPE`, not the end
/// of a program that does not ignore the signal), or to any other descriptor.
fn write_nosignal(fd: BorrowedFd<'_>, bytes: &[u8]) -> rustix::io::Result<usize> {
    match rustix::net::send(fd, bytes, rustix::net::SendFlags::NOSIGNAL) {
        Err(rustix::io::Errno::NOTSOCK) => rustix::io::write(fd, bytes),
        other => other,
    }
}

/// Write all of `bytes` to a non-blocking descriptor, polling for room until `deadline`.
pub fn write_all_until(
    fd: BorrowedFd<'_>,
    bytes: &[u8],
    datagram: bool,
    deadline: Instant,
) -> io::Result<()> {
    let mut off = 0;
    while off < bytes.len() {
        match write_nosignal(fd, &bytes[off..]) {
            Ok(n) if datagram && n != bytes.len() => {
                return Err(io::Error::other("datagram cut short"))
            }
            Ok(n) => off += n,
            Err(rustix::io::Errno::AGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let mut fds = [rustix::event::PollFd::new(
                    &fd,
                    rustix::event::PollFlags::OUT,
                )];
                rustix::event::poll(&mut fds, Some(&timespec(left)))?;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Wraps an owned descriptor as a [`Link`] written with `send(MSG_NOSIGNAL)` (sockets) or
/// `write` (pipes; Rust programs ignore `SIGPIPE`).
pub struct FdLink {
    fd: std::os::fd::OwnedFd,
    socket: bool,
}

impl FdLink {
    /// A socket link (non-blocking already).
    pub fn socket(fd: std::os::fd::OwnedFd) -> Self {
        Self { fd, socket: true }
    }
    /// A pipe link (non-blocking already).
    pub fn pipe(fd: std::os::fd::OwnedFd) -> Self {
        Self { fd, socket: false }
    }
}

impl Link for FdLink {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let r = if self.socket {
            rustix::net::send(
                &self.fd,
                bytes,
                rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::DONTWAIT,
            )
        } else {
            rustix::io::write(&self.fd, bytes)
        };
        r.map_err(io::Error::from)
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A thread that accepts a publisher's connections: `admit` checks and greets each one and
/// returns the link to add (or `None` to refuse it). Stopped and joined when dropped.
pub struct Acceptor {
    stop: Option<std::os::fd::OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    /// Accept on `listener` (non-blocking) until dropped, handing admitted links to `arrivals`.
    pub fn spawn(
        listener: std::os::fd::OwnedFd,
        arrivals: Arc<Arrivals>,
        mut admit: impl FnMut(std::os::fd::OwnedFd, &Arrivals) + Send + 'static,
    ) -> io::Result<Self> {
        let (stop_read, stop_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let thread = std::thread::Builder::new()
            .name("shmbus-accept".into())
            .spawn(move || loop {
                let mut fds = [
                    rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN),
                    rustix::event::PollFd::new(&stop_read, rustix::event::PollFlags::IN),
                ];
                match rustix::event::poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(_) => return,
                }
                if !fds[1].revents().is_empty() {
                    return;
                }
                match rustix::net::accept_with(
                    &listener,
                    rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
                ) {
                    Ok(conn) => admit(conn, &arrivals),
                    Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                    Err(rustix::io::Errno::CONNABORTED) => {}
                    // EMFILE and the like: wait a little rather than spin.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            })?;
        Ok(Self {
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Closing the pipe's write end makes its read end readable (end of file).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A blocking receive that returns by a deadline, for a socket subscriber: the socket is put in
/// blocking mode (its non-blocking reads pass `MSG_DONTWAIT`) and `SO_RCVTIMEO` is set to
/// what is left before each wait, only when it changes (a subscriber waiting with no deadline
/// sets it once). Deadlines closer than [`RecvTimeout::FINEST`] are waited for with `poll`,
/// whose timer is finer than the socket's (jiffies).
#[derive(Debug, Default)]
pub struct RecvTimeout {
    /// What `SO_RCVTIMEO` holds now (`None`: not set by us, the kernel's default: no limit).
    current: Option<Duration>,
    blocking: bool,
}

impl RecvTimeout {
    /// Below this, the socket's timer (rounded up to jiffies) could overshoot by more than
    /// the wait itself.
    pub const FINEST: Duration = Duration::from_millis(5);

    /// Get `fd` ready for a blocking receive that returns by `deadline` (`None`: no limit).
    /// `Ok(false)`: the deadline is too close for the socket's timer (wait with `poll`).
    pub fn arm(&mut self, fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
        let timeout = match deadline {
            None => Duration::ZERO,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left < Self::FINEST {
                    return Ok(false);
                }
                // Whole milliseconds, rounded up: a new value on every call of a subscriber
                // with a deadline would cost a system call each.
                Duration::from_millis(left.as_millis() as u64 + 1)
            }
        };
        if !self.blocking {
            let flags = rustix::fs::fcntl_getfl(fd)?;
            rustix::fs::fcntl_setfl(fd, flags - rustix::fs::OFlags::NONBLOCK)?;
            self.blocking = true;
        }
        if self.current != Some(timeout) {
            let value = (!timeout.is_zero()).then_some(timeout);
            rustix::net::sockopt::set_socket_timeout(
                fd,
                rustix::net::sockopt::Timeout::Recv,
                value,
            )?;
            self.current = Some(timeout);
        }
        Ok(true)
    }
}
