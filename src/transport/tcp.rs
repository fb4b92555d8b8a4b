//! TCP: a process's topics served to other hosts, all through one listening address.
//!
//! The first publisher on an address starts a server for it in this process (a listening
//! socket and an acceptor thread); every topic published on that address shares it, and the
//! last one to go stops it. A subscriber connects, names its topic (and gives the token) in a
//! subscribe frame ([`frame::Subscribe`]), and the server answers with that topic's hello and
//! hands the connection to the topic's fan-out, or refuses it with a refuse frame
//! ([`frame::Refusal`]: no such topic, a wrong token) and hangs up.
//!
//! An address is loopback-only unless told otherwise; a publisher bound to any other address
//! (`0.0.0.0`, a host's own address) needs a token, which every subscriber must present.
//! Both ends set `TCP_NODELAY` (a frame goes out when it is sent, not when the kernel has
//! gathered a segment's worth) and TCP keep-alive, so that a peer that vanishes without a word
//! (a host powered off, a cable cut) is noticed by the kernel, not by heartbeats.
//!
//! What this module must never do: serve beyond loopback without a token; compare a token in
//! time that depends on its bytes; let a connection that has not finished its handshake hold
//! the acceptor (handshakes are read in the acceptor's poll loop, each under a deadline, never
//! with a blocking read); read from a connection more than its request's bytes; allocate by a
//! length a peer sent before bounding it.

use super::frame::{self, FrameHeader, FrameKind, Refusal, Subscribe, HEADER_LEN};
use super::link::{self, Arrivals, FanOut, FdLink, Framed, Got, RecvTimeout, Source};
use super::{Endpoint, FrameReceiver, FrameSender, Transport};
use crate::error::{CreateError, OpenError};
use crate::segment::NameError;
use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The environment variable [`parse`](super::parse) takes a TCP token from when the spec
/// string carries none (`tcp:HOST:PORT`): a token on a command line is seen by every user of
/// the machine (`ps`), one in the environment is not.
pub const TOKEN_ENV: &str = "SHMBUS_TCP_TOKEN";

/// How long a connection has to send its whole subscribe frame before the server drops it.
const HANDSHAKE: Duration = Duration::from_secs(2);

/// Connections the server holds while their subscribe frames arrive; past this, the oldest is
/// dropped for the newest (a flood of silent connections cannot fill the server up: a real
/// subscriber sends its request as soon as it is connected).
const MAX_PENDING: usize = 64;

/// TCP keep-alive: a connection idle this long is probed...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// ...this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// ...and dropped after this many probes go unanswered: a vanished peer is noticed in about
/// 10 s.
const KEEPALIVE_PROBES: u32 = 5;
/// A publisher's data left unacknowledged this long (ms) drops the connection: the peer is
/// gone (a live subscriber that does not read still answers the kernel's window probes).
const UNACKED_LIMIT_MS: u32 = 10_000;

/// The TCP transport: topics served to other hosts. Names the address a publisher binds and
/// a subscriber connects to, and the token.
///
/// - **One address, every topic.** The first publisher on an address starts this process's
///   server for it (a listening socket and an acceptor thread); every topic published on that
///   address goes through it, and it stops with the last. Another process cannot serve on the
///   same address ([`ListenError::InUse`]).
/// - **Loopback unless told otherwise.** A publisher on any other address (`0.0.0.0`, the
///   host's own) needs a [`Tcp::token`] ([`ListenError::TokenRequired`]); its server then
///   admits only subscribers that present it ([`OpenError::Refused`] otherwise, even for a
///   topic it does not serve, so that a stranger learns nothing). The token travels in clear
///   text, and nothing is encrypted: on a network you do not trust, run it through a tunnel
///   (WireGuard, SSH, stunnel).
/// - **A subscriber names its topic first**, and gets its hello, or [`OpenError::NotFound`].
///   A connection that does not send a whole, valid request within 2 s is dropped, without
///   holding up the others.
/// - **Latency**: `TCP_NODELAY` on both ends, so a frame leaves when it is sent; one `send`
///   per message and subscriber, never a signal (`MSG_NOSIGNAL`).
/// - **Dead peers**: a peer that closes or dies is seen at once; one whose host vanishes
///   without a word (powered off, cable cut) is dropped by TCP keep-alive after about 10 s, and
///   a publisher's data left unacknowledged for 10 s drops its connection: a subscriber then
///   gets [`RecvError::PublisherGone`](crate::RecvError::PublisherGone), a publisher stops
///   waiting for that subscriber.
/// - **Access** is the token's business: a bus's group access means nothing here.
/// - **No history**, one publisher a topic ([`OpenError::Unsupported`] and
///   [`CreateError::Unsupported`]).
///
/// `Send` and `Sync`: plain data. Its `Debug` output does not show the token.
///
/// ```no_run
/// use shmbus::transport::Tcp;
/// // On host A: every topic of this process, served to other hosts.
/// let serve = Tcp::new("0.0.0.0:7000".parse()?).token(b"a long random secret".to_vec());
/// let bus = shmbus::Bus::builder().transport(serve).build()?;
/// let mut eurusd = bus.publisher::<u64>("md.eurusd").create()?;
/// let mut gbpusd = bus.publisher::<u64>("md.gbpusd").create()?;
/// # let _ = (&mut eurusd, &mut gbpusd);
///
/// // On host B: one of them.
/// let fetch = Tcp::host("hostA:7000").token(b"a long random secret".to_vec());
/// let bus = shmbus::Bus::builder().transport(fetch).build()?;
/// let mut subscriber = bus.subscriber::<u64>("md.eurusd").open()?;
/// # let _ = &mut subscriber;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Tcp {
    addr: Addr,
    /// What a subscriber presents, and what a publisher's server requires (if anything).
    token: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
enum Addr {
    Ip(SocketAddr),
    /// `HOST:PORT`, resolved at each publish and subscribe.
    Name(String),
}

impl fmt::Debug for Tcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr: &dyn fmt::Debug = match &self.addr {
            Addr::Ip(a) => a,
            Addr::Name(n) => n,
        };
        f.debug_struct("Tcp")
            .field("addr", addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Why a TCP publisher could not serve on its address: the reason of
/// [`CreateError::Listen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// Something else listens there: another process (each process serves its own address),
    /// or another socket of this one.
    #[error("the address is in use by another process")]
    InUse,
    /// The address is not a loopback one, and no token was given: anyone who can reach the
    /// host could read the topics.
    #[error(
        "it is not a loopback address, and serving other hosts needs a token \
         (Tcp::token, or the {TOKEN_ENV} variable)"
    )]
    TokenRequired,
    /// This process already serves topics on the address with another token (or none): one
    /// address, one token.
    #[error("this process already serves topics on it with another token")]
    TokenMismatch,
    /// Port 0: the kernel would pick a port no subscriber could know.
    #[error("port 0 names no port a subscriber could find")]
    PortZero,
    /// An empty token, or one longer than [`frame::MAX_TOKEN_LEN`] bytes.
    #[error("a token must be 1 to {} bytes long", frame::MAX_TOKEN_LEN)]
    TokenLength,
}

impl Tcp {
    /// The transport on `addr`: where a publisher listens (loopback unless told otherwise;
    /// any other address needs a [`Tcp::token`]), and where a subscriber connects.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr: Addr::Ip(addr),
            token: None,
        }
    }

    /// The transport on `HOST:PORT` (`hostA:7000`, `[::1]:7000`), resolved each time a topic
    /// is published (its first address is bound) or subscribed to (each is tried in turn).
    pub fn host(host_port: impl Into<String>) -> Self {
        Self {
            addr: Addr::Name(host_port.into()),
            token: None,
        }
    }

    /// The shared secret, 1 to [`frame::MAX_TOKEN_LEN`] bytes: a publisher's server admits
    /// only subscribers that present it (compared in constant time), and a subscriber presents
    /// it. Required for a publisher on an address that is not loopback. It travels in clear
    /// text: it keeps strangers out, not eavesdroppers.
    pub fn token(mut self, token: impl Into<Vec<u8>>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The transport from the part of a spec string after `tcp:`: `HOST:PORT` or
    /// `HOST:PORT#TOKEN`, with the token from [`TOKEN_ENV`] when the string has none.
    pub(crate) fn from_spec(spec: &str) -> Result<Self, String> {
        let (addr, token) = match spec.split_once('#') {
            Some((addr, token)) => (addr, Some(token.as_bytes().to_vec())),
            None => (spec, None),
        };
        let token = token.or_else(|| {
            std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
                .map(String::into_bytes)
        });
        if let Some(t) = &token {
            if t.is_empty() || t.len() > frame::MAX_TOKEN_LEN {
                return Err(format!(
                    "a tcp token must be 1 to {} bytes long",
                    frame::MAX_TOKEN_LEN
                ));
            }
        }
        let mut tcp = match addr.parse::<SocketAddr>() {
            Ok(a) => Tcp::new(a),
            Err(_) => match addr.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Tcp::host(addr)
                }
                _ => {
                    return Err(format!(
                    "transport \"tcp\" needs an address and a port: tcp:HOST:PORT, not tcp:{addr}"
                ))
                }
            },
        };
        tcp.token = token;
        Ok(tcp)
    }

    fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match &self.addr {
            Addr::Ip(a) => Ok(vec![*a]),
            Addr::Name(n) => {
                let addrs: Vec<SocketAddr> = n.to_socket_addrs()?.collect();
                if addrs.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{n} resolves to no address"),
                    ));
                }
                Ok(addrs)
            }
        }
    }

    /// Whether the token, if any, has a length the wire carries.
    fn token_ok(&self) -> bool {
        self.token
            .as_ref()
            .is_none_or(|t| !t.is_empty() && t.len() <= frame::MAX_TOKEN_LEN)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Whether `got` is `expected`, in time that depends on neither's bytes (nor, beyond the
/// copies, on their lengths): both are padded into fixed buffers and every byte is compared.
fn token_matches(expected: &[u8], got: &[u8]) -> bool {
    let mut a = [0u8; frame::MAX_TOKEN_LEN];
    let mut b = [0u8; frame::MAX_TOKEN_LEN];
    if expected.len() > a.len() || got.len() > b.len() {
        return false;
    }
    a[..expected.len()].copy_from_slice(expected);
    b[..got.len()].copy_from_slice(got);
    let mut diff = (expected.len() ^ got.len()) as u64;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= u64::from(x ^ y);
    }
    // Keeps the compiler from turning the fold into a comparison that stops early.
    std::hint::black_box(diff) == 0
}

/// The socket options both ends set: `TCP_NODELAY`, and keep-alive; a publisher's side also
/// gives up on data left unacknowledged too long.
fn configure(fd: BorrowedFd<'_>, publisher: bool) -> io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_tcp_nodelay(fd, true)?;
    sockopt::set_socket_keepalive(fd, true)?;
    sockopt::set_tcp_keepidle(fd, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(fd, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(fd, KEEPALIVE_PROBES)?;
    if publisher {
        sockopt::set_tcp_user_timeout(fd, UNACKED_LIMIT_MS)?;
    }
    Ok(())
}

fn stream_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    Ok(rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// One non-blocking send of a whole short frame, without `SIGPIPE`: whether it all went.
/// Used on fresh connections, whose send buffers are empty and far larger than a hello or a
/// refusal, so that a peer can never make the acceptor wait.
fn send_whole(fd: BorrowedFd<'_>, bytes: &[u8]) -> bool {
    loop {
        match rustix::net::send(fd, bytes, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => return n == bytes.len(),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
}

/// A control frame's bytes: header, payload, padding.
fn control_frame(kind: FrameKind, type_hash: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; frame::frame_len(payload.len())];
    let header = FrameHeader::control(kind, payload.len() as u32, type_hash);
    frame::encode_frame(&mut out, &header, payload);
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked holding it left the tables consistent: each change is one
    // insert or remove.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The publisher's side: one server per address, shared by the topics published on it.

/// What the acceptor thread and the publishers of an address share.
struct Shared {
    /// The token every subscriber must present, if any.
    token: Option<Vec<u8>>,
    /// The topics served, by full name (`<prefix><topic>`).
    topics: Mutex<HashMap<String, Served>>,
}

/// A topic on a server.
struct Served {
    /// Its hello frame, whole.
    hello: Arc<[u8]>,
    /// Where its admitted connections go: its publisher's fan-out.
    arrivals: Arc<Arrivals>,
}

/// An address's server: its listening socket lives in the acceptor thread, which is stopped
/// and joined (closing the socket) when this is dropped.
struct Server {
    shared: Arc<Shared>,
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// This process's servers, by the address they are bound to. A server is added with the first
/// topic on its address and removed, under this lock, when its last topic goes: a publisher
/// that comes after binds once the old listener is closed.
static SERVERS: Mutex<BTreeMap<SocketAddr, Server>> = Mutex::new(BTreeMap::new());

impl Server {
    fn start(addr: SocketAddr, token: Option<Vec<u8>>) -> io::Result<Self> {
        let listener = stream_socket(&addr)?;
        // A publisher that comes back while its old connections linger in TIME_WAIT binds at
        // once; a live listener still refuses (no SO_REUSEPORT).
        rustix::net::sockopt::set_socket_reuseaddr(&listener, true)?;
        rustix::net::bind(&listener, &addr)?;
        rustix::net::listen(&listener, 128)?;
        let shared = Arc::new(Shared {
            token,
            topics: Mutex::new(HashMap::new()),
        });
        let (stop_read, stop_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("shmbus-tcp-accept".into())
                .spawn(move || accept_loop(&listener, &stop_read, &shared))?
        };
        Ok(Self {
            shared,
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the pipe's write end makes its read end readable (end of file).
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A topic's hold on its server: removes the topic when the publisher goes, and the server
/// with its last topic.
struct TopicGuard {
    addr: SocketAddr,
    name: String,
}

impl Drop for TopicGuard {
    fn drop(&mut self) {
        let mut servers = lock(&SERVERS);
        let Some(server) = servers.get(&self.addr) else {
            return;
        };
        let last = {
            let mut topics = lock(&server.shared.topics);
            topics.remove(&self.name);
            topics.is_empty()
        };
        if last {
            // Joined under the table's lock (the acceptor never takes it).
            drop(servers.remove(&self.addr));
        }
    }
}

/// A connection whose subscribe frame is still arriving.
struct Pending {
    fd: Option<OwnedFd>,
    /// Room for the largest subscribe frame; nothing past the frame's end is ever read.
    buf: Box<[u8; frame::frame_len(frame::MAX_SUBSCRIBE_LEN)]>,
    have: usize,
    deadline: Instant,
}

/// What a step of a handshake came to.
enum Step {
    /// More bytes to come.
    Wait,
    /// Finished: admitted, refused or dropped.
    Done,
}

/// The acceptor: accepts connections, reads each one's subscribe frame (several at once,
/// none with a blocking read), admits or refuses it. Returns when `stop` becomes readable.
fn accept_loop(listener: &OwnedFd, stop: &OwnedFd, shared: &Shared) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    loop {
        let now = Instant::now();
        // Too slow (or silent): dropped.
        pending.retain(|p| p.deadline > now);
        let timeout = pending
            .iter()
            .map(|p| p.deadline)
            .min()
            .map(|d| link::timespec(d.saturating_duration_since(now)));
        let (listen_ready, stop_ready, ready) = {
            let mut fds = Vec::with_capacity(2 + pending.len());
            fds.push(PollFd::new(listener, PollFlags::IN));
            fds.push(PollFd::new(stop, PollFlags::IN));
            for p in &pending {
                if let Some(fd) = &p.fd {
                    fds.push(PollFd::new(fd, PollFlags::IN));
                }
            }
            match rustix::event::poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                // Not expected of poll on descriptors this thread owns: stop serving rather
                // than spin (the publishers' topics then see no new subscriber).
                Err(_) => return,
            }
            let mut polled = fds[2..].iter();
            let ready: Vec<bool> = pending
                .iter()
                .map(|p| p.fd.is_some() && polled.next().is_some_and(|f| !f.revents().is_empty()))
                .collect();
            (
                !fds[0].revents().is_empty(),
                !fds[1].revents().is_empty(),
                ready,
            )
        };
        if stop_ready {
            return;
        }
        let mut i = 0;
        pending.retain_mut(|p| {
            let keep = match ready.get(i) {
                Some(true) => matches!(handshake(p, shared), Step::Wait),
                _ => true,
            };
            i += 1;
            keep
        });
        if listen_ready {
            accept_some(listener, &mut pending);
        }
    }
}

/// Accept what is waiting (a bounded number at a time), each into the pending handshakes.
fn accept_some(listener: &OwnedFd, pending: &mut VecDeque<Pending>) {
    for _ in 0..MAX_PENDING {
        match rustix::net::accept_with(listener, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK) {
            Ok(fd) => {
                if configure(fd.as_fd(), true).is_err() {
                    continue;
                }
                if pending.len() >= MAX_PENDING {
                    pending.pop_front();
                }
                pending.push_back(Pending {
                    fd: Some(fd),
                    buf: Box::new([0; frame::frame_len(frame::MAX_SUBSCRIBE_LEN)]),
                    have: 0,
                    deadline: Instant::now() + HANDSHAKE,
                });
            }
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::CONNABORTED) => {}
            Err(rustix::io::Errno::AGAIN) => return,
            // EMFILE and the like: wait a little rather than spin on a listener that stays
            // readable.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        }
    }
}

/// Read what a pending connection has sent, up to its frame's end, and answer it once whole.
fn handshake(p: &mut Pending, shared: &Shared) -> Step {
    let Some(fd) = p.fd.as_ref() else {
        return Step::Done;
    };
    loop {
        let mut want = HEADER_LEN;
        if p.have >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] = p.buf[..HEADER_LEN].try_into().unwrap();
            let header = match FrameHeader::decode(head, frame::MAX_SUBSCRIBE_LEN as u32) {
                Ok(h) => h,
                // Not a shmbus peer, or another version: hang up without a word.
                Err(_) => return Step::Done,
            };
            if header.kind != FrameKind::Subscribe
                || header.type_hash != 0
                || header.seq != 0
                || header.stamp != 0
            {
                return Step::Done;
            }
            want = frame::frame_len(header.len as usize);
            if p.have >= want {
                let payload = &p.buf[HEADER_LEN..HEADER_LEN + header.len as usize];
                if let Some(fd) = p.fd.take() {
                    answer(fd, payload, shared);
                }
                return Step::Done;
            }
        }
        // `want` is at most the buffer's length: the header's length was bounded above.
        match rustix::net::recv(fd, &mut p.buf[p.have..want], RecvFlags::DONTWAIT) {
            Ok((_, 0)) => return Step::Done,
            Ok((_, n)) => p.have += n,
            Err(rustix::io::Errno::AGAIN) => return Step::Wait,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return Step::Done,
        }
    }
}

/// Admit the connection to the topic its request names, or refuse it.
fn answer(fd: OwnedFd, request: &[u8], shared: &Shared) {
    let refuse = |fd: OwnedFd, why: Refusal| {
        send_whole(
            fd.as_fd(),
            &control_frame(FrameKind::Refuse, 0, &why.encode()),
        );
        // Everything the peer sent has been read: closing sends a FIN after the refusal, not
        // a reset that could overtake it.
    };
    let request = match Subscribe::decode(request) {
        Ok(r) => r,
        Err(_) => return refuse(fd, Refusal::BadRequest),
    };
    // The token first: a peer without it learns nothing, not even which topics exist.
    if let Some(token) = &shared.token {
        if !token_matches(token, request.token) {
            return refuse(fd, Refusal::Token);
        }
    }
    let topic = lock(&shared.topics)
        .get(request.name)
        .map(|t| (t.hello.clone(), t.arrivals.clone()));
    let Some((hello, arrivals)) = topic else {
        return refuse(fd, Refusal::NoSuchTopic);
    };
    // Joined and greeted at once (see `Arrivals::admit`): no data frame can precede the hello,
    // and nothing published after the subscriber has it is missed.
    arrivals.admit(Box::new(FdLink::socket(fd)), |fd| send_whole(fd, &hello));
}

// ---------------------------------------------------------------------------------------------
// The subscriber's side.

/// Connect to one of `addrs` before `deadline`. `Ok(None)`: every address refused (nobody
/// listens there).
fn connect(addrs: &[SocketAddr], deadline: Instant) -> io::Result<Option<OwnedFd>> {
    let mut last = None;
    let mut refused = false;
    for addr in addrs {
        match connect_one(addr, deadline) {
            Ok(fd) => return Ok(Some(fd)),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused = true,
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if !refused => Err(e),
        _ => Ok(None),
    }
}

fn connect_one(addr: &SocketAddr, deadline: Instant) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr)?;
    match rustix::net::connect(&fd, addr) {
        Ok(()) => {}
        Err(rustix::io::Errno::INPROGRESS) | Err(rustix::io::Errno::INTR) => loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {addr} timed out"),
                ));
            }
            let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
            match rustix::event::poll(&mut fds, Some(&link::timespec(left))) {
                Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            match rustix::net::sockopt::socket_error(&fd)? {
                Ok(()) => break,
                Err(e) => return Err(e.into()),
            }
        },
        Err(e) => return Err(e.into()),
    }
    // With nobody listening on a port of the ephemeral range, the kernel may pick that very
    // port for this socket and join it to itself: that is nobody listening.
    let local = rustix::net::getsockname(&fd)?;
    if rustix::net::getpeername(&fd)?.is_some_and(|peer| peer == local) {
        return Err(io::ErrorKind::ConnectionRefused.into());
    }
    Ok(fd)
}

/// Send all of `bytes` before `deadline`, without `SIGPIPE`.
fn send_all_until(fd: BorrowedFd<'_>, bytes: &[u8], deadline: Instant) -> io::Result<()> {
    let mut off = 0;
    while off < bytes.len() {
        match rustix::net::send(fd, &bytes[off..], SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) => off += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                rustix::event::poll(&mut fds, Some(&link::timespec(left)))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How the server answered, as far as this side reads before the framed receiver takes over.
enum FirstFrame {
    /// Not a refusal (a hello, or what the framed receiver will refuse): these bytes were
    /// read already.
    Other(Vec<u8>),
    /// A refusal.
    Refused(Refusal),
    /// A refuse frame that is not a valid one.
    Bad(frame::FrameError),
}

/// Read the server's first frame header, and the whole frame if it is a refusal; anything
/// else is left to the framed receiver (which waits, and checks, as for every transport).
fn first_frame(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<FirstFrame> {
    let mut head = [0u8; HEADER_LEN + frame::REFUSAL_LEN];
    let mut have = 0;
    let mut want = HEADER_LEN;
    loop {
        if have == HEADER_LEN && want == HEADER_LEN {
            let header: &[u8; HEADER_LEN] = head[..HEADER_LEN].try_into().unwrap();
            match FrameHeader::decode(header, frame::HELLO_LEN as u32) {
                Ok(h) if h.kind == FrameKind::Refuse => {
                    if h.len as usize != frame::REFUSAL_LEN {
                        return Ok(FirstFrame::Bad(frame::FrameError::BadRefusal(
                            "wrong length",
                        )));
                    }
                    want = HEADER_LEN + frame::REFUSAL_LEN;
                }
                _ => return Ok(FirstFrame::Other(head[..have].to_vec())),
            }
        }
        if have == want {
            return Ok(match Refusal::decode(&head[HEADER_LEN..want]) {
                Ok(r) => FirstFrame::Refused(r),
                Err(e) => FirstFrame::Bad(e),
            });
        }
        match rustix::net::recv(fd, &mut head[have..want], RecvFlags::DONTWAIT) {
            // The end: the framed receiver reports it.
            Ok((_, 0)) => return Ok(FirstFrame::Other(head[..have].to_vec())),
            Ok((_, n)) => have += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                if Instant::now() >= deadline {
                    // The framed receiver reports the time out.
                    return Ok(FirstFrame::Other(head[..have].to_vec()));
                }
                link::wait_readable(fd, Some(deadline))?;
            }
            Err(rustix::io::Errno::CONNRESET) => {
                return Ok(FirstFrame::Other(head[..have].to_vec()))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A connected TCP socket, read as a byte stream; first the bytes [`first_frame`] read.
struct TcpSource {
    fd: OwnedFd,
    head: Vec<u8>,
    /// Bytes of `head` handed out already.
    at: usize,
    timeout: RecvTimeout,
    /// When this subscriber last asked for delayed acknowledgements (see `delay_acks`).
    delayed_acks_at: Option<Instant>,
}

/// How often a subscriber renews its request for delayed acknowledgements.
const DELAYED_ACKS_RENEW: Duration = Duration::from_millis(20);

impl TcpSource {
    /// Ask for delayed acknowledgements (`TCP_QUICKACK` off), renewed every
    /// [`DELAYED_ACKS_RENEW`]. A subscriber never sends data on its connection, so every
    /// acknowledgement is a segment of its own; in quick-ack mode (where the kernel puts a
    /// connection that only receives) that is one per message, which both ends pay for in a
    /// round trip over two topics (`tcp-64B` against `raw-tcp-64B` in `shmbus bench`: 1.27-1.33x
    /// with them, 1.13-1.21x without). The publisher never waits for them (its window is open
    /// and `TCP_NODELAY` is set). The kernel leaves the mode on its own whenever a delayed
    /// acknowledgement's timer fires, hence the renewal; a system call every 20 ms at most.
    fn delay_acks(&mut self) {
        let now = Instant::now();
        if self
            .delayed_acks_at
            .is_none_or(|at| now.duration_since(at) >= DELAYED_ACKS_RENEW)
        {
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.fd, false);
            self.delayed_acks_at = Some(now);
        }
    }

    fn recv(&mut self, buf: &mut [u8], flags: RecvFlags) -> io::Result<Got> {
        if self.at < self.head.len() {
            let n = buf.len().min(self.head.len() - self.at);
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            return Ok(Got::Bytes(n));
        }
        match rustix::net::recv(&self.fd, buf, flags) {
            Ok((_, 0)) => Ok(Got::End),
            Ok((_, n)) => Ok(Got::Bytes(n)),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(Got::Nothing),
            // The peer is gone: reset, or found dead by keep-alive or an unreachable route.
            Err(rustix::io::Errno::CONNRESET)
            | Err(rustix::io::Errno::TIMEDOUT)
            | Err(rustix::io::Errno::HOSTUNREACH)
            | Err(rustix::io::Errno::NETUNREACH) => Ok(Got::End),
            Err(e) => Err(e.into()),
        }
    }
}

impl Source for TcpSource {
    fn datagram(&self) -> bool {
        false
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        self.recv(buf, RecvFlags::DONTWAIT)
    }

    fn read_wait(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<Got> {
        if self.at < self.head.len() {
            return self.read(buf);
        }
        self.delay_acks();
        if self.timeout.arm(self.fd.as_fd(), deadline)? {
            return self.recv(buf, RecvFlags::empty());
        }
        self.wait(deadline)?;
        self.read(buf)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        if self.at < self.head.len() {
            return Ok(());
        }
        link::wait_readable(self.fd.as_fd(), deadline)
    }
}

impl Transport for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    /// Serve the topic on this transport's address: the process's server for that address,
    /// started with its first topic.
    ///
    /// # Errors
    /// [`CreateError::Listen`] for an address in use by another process, one beyond loopback
    /// without a token, one this process serves with another token, port 0 or a token of a
    /// bad length; [`CreateError::AlreadyExists`] for a topic this process serves already;
    /// [`CreateError::InvalidName`] for a name the subscribe frame cannot carry;
    /// [`CreateError::Transport`] for a name that does not resolve or a system error.
    fn publish(&self, endpoint: &Endpoint<'_>) -> Result<Box<dyn FrameSender>, CreateError> {
        let topic = || endpoint.topic.to_string();
        let name = endpoint.name();
        if name.len() > frame::MAX_TOPIC_NAME_LEN {
            return Err(CreateError::InvalidName {
                topic: topic(),
                reason: NameError::TooLongWithPrefix { len: name.len() },
            });
        }
        let io_err = |source| CreateError::Transport {
            topic: topic(),
            source,
        };
        let addr = self.resolve().map_err(io_err)?[0];
        let listen_err = |reason| CreateError::Listen {
            topic: topic(),
            addr,
            reason,
        };
        if !self.token_ok() {
            return Err(listen_err(ListenError::TokenLength));
        }
        if addr.port() == 0 {
            return Err(listen_err(ListenError::PortZero));
        }
        if self.token.is_none() && !is_loopback(addr.ip()) {
            return Err(listen_err(ListenError::TokenRequired));
        }
        let hello = control_frame(
            FrameKind::Hello,
            frame::type_hash(&endpoint.hello.fingerprint),
            &endpoint.hello.encode(),
        );
        let arrivals = Arc::new(Arrivals::default());
        let mut servers = lock(&SERVERS);
        let server = match servers.entry(addr) {
            std::collections::btree_map::Entry::Occupied(e) => {
                let same = match (&e.get().shared.token, &self.token) {
                    (None, None) => true,
                    (Some(a), Some(b)) => token_matches(a, b),
                    _ => false,
                };
                if !same {
                    return Err(listen_err(ListenError::TokenMismatch));
                }
                e.into_mut()
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                let server = Server::start(addr, self.token.clone()).map_err(|e| {
                    if e.kind() == io::ErrorKind::AddrInUse {
                        listen_err(ListenError::InUse)
                    } else {
                        io_err(e)
                    }
                })?;
                v.insert(server)
            }
        };
        {
            let mut topics = lock(&server.shared.topics);
            if topics.contains_key(&name) {
                return Err(CreateError::AlreadyExists { topic: topic() });
            }
            topics.insert(
                name.clone(),
                Served {
                    hello: hello.into(),
                    arrivals: arrivals.clone(),
                },
            );
        }
        drop(servers);
        let guard = TopicGuard { addr, name };
        Ok(Box::new(FanOut::new(arrivals, Box::new(guard))))
    }

    /// Connect, ask for the topic, and read its hello.
    ///
    /// # Errors
    /// [`OpenError::NotFound`] when nobody listens at the address or its server has no such
    /// topic; [`OpenError::Refused`] for a token refused (or missing), or an answer that is
    /// not a valid one; [`OpenError::NotReady`] when no answer came within `timeout`;
    /// [`OpenError::IncompatibleType`]; [`OpenError::Unsupported`] for history or a token of
    /// a bad length; [`OpenError::Transport`] for a name that does not resolve, an address
    /// that cannot be reached in time, a system error.
    fn subscribe(
        &self,
        endpoint: &Endpoint<'_>,
        timeout: Duration,
    ) -> Result<Box<dyn FrameReceiver>, OpenError> {
        let topic = || endpoint.topic.to_string();
        let io_err = |source| OpenError::Transport {
            topic: topic(),
            source,
        };
        if endpoint.history > 0 {
            return Err(OpenError::Unsupported {
                transport: self.name(),
                what: "history (a socket delivers what is sent after a subscriber connects)".into(),
            });
        }
        if !self.token_ok() {
            return Err(OpenError::Unsupported {
                transport: self.name(),
                what: format!(
                    "a token of that length (1 to {} bytes)",
                    frame::MAX_TOKEN_LEN
                ),
            });
        }
        let name = endpoint.name();
        let token = self.token.as_deref().unwrap_or_default();
        let Some(request) = (Subscribe { name: &name, token }).encode() else {
            return Err(OpenError::InvalidName {
                topic: topic(),
                reason: NameError::TooLongWithPrefix { len: name.len() },
            });
        };
        let request = control_frame(FrameKind::Subscribe, 0, &request);
        let deadline = Instant::now() + timeout;
        let addrs = self.resolve().map_err(io_err)?;
        let Some(fd) = connect(&addrs, deadline).map_err(io_err)? else {
            return Err(OpenError::NotFound { topic: topic() });
        };
        configure(fd.as_fd(), false).map_err(io_err)?;
        send_all_until(fd.as_fd(), &request, deadline).map_err(io_err)?;
        let refused = |reason: String| OpenError::Refused {
            topic: topic(),
            reason,
        };
        let head = match first_frame(fd.as_fd(), deadline).map_err(io_err)? {
            FirstFrame::Other(head) => head,
            FirstFrame::Refused(Refusal::NoSuchTopic) => {
                return Err(OpenError::NotFound { topic: topic() })
            }
            FirstFrame::Refused(Refusal::Token) if self.token.is_none() => {
                return Err(refused(format!(
                    "the publisher requires a token, and none was given (Tcp::token, or the {TOKEN_ENV} variable)"
                )))
            }
            FirstFrame::Refused(Refusal::Token) => {
                return Err(refused("the publisher refused the token".into()))
            }
            FirstFrame::Refused(Refusal::BadRequest) => {
                return Err(refused(
                    "the publisher could not read the request (another version?)".into(),
                ))
            }
            FirstFrame::Bad(e) => return Err(refused(e.to_string())),
        };
        let source = TcpSource {
            fd,
            head,
            at: 0,
            timeout: RecvTimeout::default(),
            delayed_acks_at: None,
        };
        Ok(Box::new(Framed::open(source, endpoint, deadline)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::Hello;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secret", b"secreT"));
        assert!(!token_matches(b"secret", b"secret\0"));
        assert!(!token_matches(b"secret\0", b"secret"));
        assert!(!token_matches(b"secret", b""));
        assert!(token_matches(b"", b""));
        let long = [7u8; frame::MAX_TOKEN_LEN];
        assert!(token_matches(&long, &long));
        assert!(!token_matches(&long, &[7u8; frame::MAX_TOKEN_LEN + 1]));
    }

    #[test]
    fn loopback_is_told_from_the_rest() {
        for a in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(a.parse().unwrap()), "{a}");
        }
        for a in [
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "192.168.1.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_loopback(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn both_ends_set_nodelay_and_keepalive() {
        use rustix::net::sockopt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = connect(&[addr], Instant::now() + Duration::from_secs(10))
            .unwrap()
            .expect("a listener is there");
        let (server, _) = listener.accept().unwrap();
        let server = OwnedFd::from(server);
        for (fd, publisher) in [(&client, false), (&server, true)] {
            assert!(!sockopt::tcp_nodelay(fd).unwrap());
            configure(fd.as_fd(), publisher).unwrap();
            assert!(sockopt::tcp_nodelay(fd).unwrap());
            assert!(sockopt::socket_keepalive(fd).unwrap());
            assert_eq!(sockopt::tcp_keepcnt(fd).unwrap(), KEEPALIVE_PROBES);
        }
        assert_eq!(
            sockopt::tcp_user_timeout(&server).unwrap(),
            UNACKED_LIMIT_MS
        );
    }

    #[test]
    fn a_spec_names_an_address_and_perhaps_a_token() {
        let t = Tcp::from_spec("127.0.0.1:7000").unwrap();
        assert!(matches!(t.addr, Addr::Ip(a) if a == "127.0.0.1:7000".parse().unwrap()));
        let t = Tcp::from_spec("[::1]:7000#tok#en").unwrap();
        assert!(matches!(t.addr, Addr::Ip(a) if a.port() == 7000 && a.ip().is_loopback()));
        assert_eq!(t.token.as_deref(), Some(&b"tok#en"[..]));
        let t = Tcp::from_spec("localhost:7000#s3cr3t").unwrap();
        assert!(matches!(&t.addr, Addr::Name(n) if n == "localhost:7000"));
        for bad in [
            "",
            "7000",
            "host",
            "host:",
            ":7000",
            "host:70000",
            "host:x",
            "h:1#",
        ] {
            assert!(Tcp::from_spec(bad).is_err(), "{bad:?}");
        }
        let long = format!("h:1#{}", "a".repeat(frame::MAX_TOKEN_LEN + 1));
        assert!(Tcp::from_spec(&long).is_err());
        // The token never shows in debug output.
        assert!(!format!("{t:?}").contains("s3cr3t"));
    }

    #[test]
    fn the_hello_frame_decodes_as_the_subscriber_reads_it() {
        let hello = Hello {
            fingerprint: crate::layout::TypeFingerprint::typed::<u64>("u64"),
            pid: std::process::id(),
            identity: 1,
            policy: crate::layout::Policy::Block,
            max_len: 8,
        };
        let th = frame::type_hash(&hello.fingerprint);
        let bytes = control_frame(FrameKind::Hello, th, &hello.encode());
        let header = FrameHeader::decode(
            bytes[..HEADER_LEN].try_into().unwrap(),
            frame::HELLO_LEN as u32,
        )
        .unwrap();
        assert_eq!((header.kind, header.type_hash), (FrameKind::Hello, th));
        assert_eq!(Hello::decode(&bytes[HEADER_LEN..]), Ok(hello));
    }
}
