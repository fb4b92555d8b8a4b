//! Pipes: a parent and the child it spawns, joined by an inherited pipe. A pipe carries one
//! topic from its one publisher, at the write end, to its one subscriber, at the read end.
//!
//! [`Pipe::spawn`] makes the pipe and starts the child with its end, whose number it finds in
//! [`PIPE_FD_VAR`]; the child takes it with [`Pipe::from_env`]. Each side builds a
//! [`Bus`](crate::Bus) over its [`Pipe`] and creates the topic's publisher, or opens its
//! subscriber, with the same calls as on any transport.
//!
//! The stream starts with a topic frame (the bus's prefix and the topic's name: no path names
//! a pipe's topic, so the name travels in the stream and a subscriber of another topic is
//! refused) and the publisher's hello; data frames follow. The end of the stream without a
//! close frame is a publisher that died ([`RecvError::PublisherGone`](crate::RecvError::PublisherGone)).
//! A write that fails with `EPIPE` is a subscriber that went away: the publisher then runs free
//! (its messages go nowhere and `subscribers()` is 0). The publisher writes with `write(2)`,
//! so its process must not die of `SIGPIPE`: Rust programs ignore that signal from the start,
//! and a program that restores its default action must not publish on a pipe.
//!
//! This module never takes a descriptor it was not handed (the number in the environment is
//! checked to be an open pipe end before it is owned, and only once), and never lets an end leak
//! into another child: both ends are close-on-exec, except the child's own end in the child.

use super::frame::{self, FrameError, FrameHeader, FrameKind, HEADER_LEN, HELLO_LEN};
use super::link::{self, FanOut, FdLink, Framed, Got, Source};
use super::{Endpoint, FrameReceiver, FrameSender, Transport};
use crate::error::{CreateError, OpenError};
use crate::segment::{NameError, MAX_SEGMENT_NAME_LEN};
use rustix::fs::OFlags;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The environment variable that tells a child spawned by [`Pipe::spawn`] the number of its
/// end of the pipe.
pub const PIPE_FD_VAR: &str = "SHMBUS_PIPE_FD";

/// How long a publisher waits for room for its greeting (a fresh pipe has room at once).
const GREET: Duration = Duration::from_secs(1);

/// Which way a spawned child's pipe carries the topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The parent publishes, the child subscribes: the child gets the read end.
    ToChild,
    /// The child publishes, the parent subscribes: the child gets the write end.
    FromChild,
}

/// Which end of a pipe a [`Pipe`] holds, hence what this process may do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeEnd {
    /// The read end: this process opens the topic's subscriber.
    Read,
    /// The write end: this process creates the topic's publisher.
    Write,
}

/// Why [`Pipe::from_env`] or [`Pipe::from_fd`] could not take a pipe end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipeEndError {
    /// [`PIPE_FD_VAR`] is not set: this process was not started by [`Pipe::spawn`].
    #[error("{PIPE_FD_VAR} is not set: this process was not given a pipe end")]
    NotSet,
    /// [`PIPE_FD_VAR`] does not hold a descriptor number.
    #[error("{PIPE_FD_VAR}={value:?} is not a descriptor number")]
    BadNumber {
        /// What it holds.
        value: String,
    },
    /// The descriptor it names is not open.
    #[error("descriptor {fd} is not open")]
    NotOpen {
        /// The number.
        fd: RawFd,
    },
    /// The descriptor is not a pipe or a FIFO.
    #[error("descriptor {fd} is not a pipe")]
    NotAPipe {
        /// The number.
        fd: RawFd,
    },
    /// The descriptor is open for reading and writing (a FIFO opened `O_RDWR`): not one end.
    #[error("descriptor {fd} is open for both reading and writing, not one end of a pipe")]
    BothEnds {
        /// The number.
        fd: RawFd,
    },
    /// [`Pipe::from_env`] was called before in this process: the end has an owner.
    #[error("the pipe end given in {PIPE_FD_VAR} was taken already")]
    Taken,
    /// A system call on the descriptor failed.
    #[error("descriptor {fd}: {source}")]
    Io {
        /// The number.
        fd: RawFd,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// The pipe transport: one end of a pipe, for the one topic it carries from its one publisher
/// (at the write end) to its one subscriber (at the read end).
///
/// The parent makes it with [`Pipe::spawn`] (or [`Pipe::pair`]), the child with
/// [`Pipe::from_env`]; either side gives it to a bus, which creates the publisher (write end)
/// or opens the subscriber (read end) of the topic over it. The end is used once: a second
/// publisher gets [`CreateError::AlreadyExists`], a second subscriber (after one opened)
/// [`OpenError::TooManySubscribers`]. A subscriber whose open fails (no greeting yet, another
/// topic, another type) leaves the end, and what it read of the greeting, for the next try.
///
/// The publisher's greeting names the topic (the bus's prefix and the topic's name): a
/// subscriber of another topic is refused ([`OpenError::Refused`]), as one of another type is
/// ([`OpenError::IncompatibleType`]). The subscriber gets
/// [`RecvError::PublisherGone`](crate::RecvError::PublisherGone) when the publisher's process
/// ends without closing the topic. The publisher finds its subscriber gone when a write fails
/// with `EPIPE`, and then runs free: its messages go nowhere, `subscribers()` is 0. Its
/// process must not die of `SIGPIPE` on that write: Rust programs ignore the signal from the
/// start; a program that restores its default action must not publish on a pipe.
///
/// ```no_run
/// use shmbus::transport::{Direction, Pipe};
/// use shmbus::Bus;
/// use std::process::Command;
///
/// // The parent: spawn the child with the read end, publish on the write end.
/// let (mut child, pipe) = Pipe::spawn(&mut Command::new("./worker"), Direction::ToChild)?;
/// let bus = Bus::builder().transport(pipe).build()?;
/// let mut publisher = bus.publisher::<u64>("jobs").create()?;
/// publisher.send(42)?;
/// drop(publisher); // the child receives a close: `Disconnected`
/// child.wait()?;
///
/// // The child (./worker): take the end from the environment, subscribe.
/// let bus = Bus::builder().transport(Pipe::from_env()?).build()?;
/// let mut subscriber = bus.subscriber::<u64>("jobs").open()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// `Send` and `Sync` (a bus shares its transport): the end is behind a mutex.
pub struct Pipe {
    end: PipeEnd,
    state: Mutex<State>,
}

enum State {
    /// Nobody has taken the end: the descriptor, and what subscribers' attempts read of the
    /// greeting so far (kept for the next attempt).
    Unused { fd: OwnedFd, got: Vec<u8> },
    /// A publisher or a subscriber has the end, or a subscriber's attempt is using it now.
    Taken,
}

impl fmt::Debug for Pipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let taken = matches!(*self.state(), State::Taken);
        f.debug_struct("Pipe")
            .field("end", &self.end)
            .field("taken", &taken)
            .finish()
    }
}

impl Pipe {
    /// Make a pipe, and spawn `command` with one end of it: the read end for
    /// [`Direction::ToChild`], the write end for [`Direction::FromChild`]. The child finds its
    /// end's number in [`PIPE_FD_VAR`] (take it with [`Pipe::from_env`]); the other end is
    /// returned, in this process only.
    ///
    /// Both ends are close-on-exec here, so that no other child (spawned meanwhile by another
    /// thread) holds them and every end of stream is seen; the child clears the flag on its
    /// own end between `fork` and `exec` (with [`CommandExt::pre_exec`](std::os::unix::process::CommandExt::pre_exec)).
    /// Spawn `command` this once: it carries the end's number, which is closed in this
    /// process once the child has it.
    ///
    /// ```no_run
    /// use shmbus::transport::{Direction, Pipe};
    /// use std::process::Command;
    /// let (child, pipe) = Pipe::spawn(&mut Command::new("./producer"), Direction::FromChild)?;
    /// let bus = shmbus::Bus::builder().transport(pipe).build()?;
    /// let mut subscriber = bus.subscriber::<u64>("samples").open_timeout(std::time::Duration::from_secs(5))?;
    /// # let _ = (child, subscriber);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The pipe could not be made, or the command not spawned ([`Command::spawn`]'s errors).
    pub fn spawn(command: &mut Command, direction: Direction) -> io::Result<(Child, Pipe)> {
        use std::os::unix::process::CommandExt;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let (mine, theirs, end) = match direction {
            Direction::ToChild => (write, read, PipeEnd::Write),
            Direction::FromChild => (read, write, PipeEnd::Read),
        };
        // Above the standard streams, which the child's set-up replaces (a parent started with
        // one of them closed gets a pipe numbered 0, 1 or 2).
        let theirs = if theirs.as_raw_fd() <= 2 {
            rustix::io::fcntl_dupfd_cloexec(&theirs, 3)?
        } else {
            theirs
        };
        // The two ends are two open file descriptions: this one's flags are not the child's.
        set_nonblocking(mine.as_fd())?;
        let number = theirs.as_raw_fd();
        command.env(PIPE_FD_VAR, number.to_string());
        let clear_cloexec = move || {
            // SAFETY: `number` is open in the child: it is inherited from this process, where
            // `theirs` stays open until `spawn` has returned, and nothing in the child closes
            // it before this call.
            let fd = unsafe { BorrowedFd::borrow_raw(number) };
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        };
        // SAFETY: the closure runs in the child between `fork` and `exec`, where only
        // async-signal-safe calls may be made: it makes one `fcntl` system call, and allocates
        // and locks nothing (an error converts to `io::Error` from its number, without
        // allocating).
        unsafe { command.pre_exec(clear_cloexec) };
        let child = command.spawn()?;
        // The child has its copy: this process must not hold that end, or it would never see
        // the stream end (or EPIPE) when the child goes.
        drop(theirs);
        Ok((child, Pipe::new(mine, end)))
    }

    /// Both ends of a new pipe, for a process that hands one over itself (to a thread, or
    /// through a socket): the write end (the publisher's) and the read end (the subscriber's).
    ///
    /// ```
    /// use shmbus::transport::Pipe;
    /// let (write, read) = Pipe::pair()?;
    /// let publishing = shmbus::Bus::builder().transport(write).build()?;
    /// let subscribing = shmbus::Bus::builder().transport(read).build()?;
    /// let mut publisher = publishing.publisher::<u32>("n").create()?;
    /// let mut subscriber = subscribing.subscriber::<u32>("n").open()?;
    /// publisher.send(7)?;
    /// assert_eq!(subscriber.recv().map(|s| *s), Ok(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// The system's, making the pipe.
    pub fn pair() -> io::Result<(Pipe, Pipe)> {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        set_nonblocking(read.as_fd())?;
        set_nonblocking(write.as_fd())?;
        Ok((
            Pipe::new(write, PipeEnd::Write),
            Pipe::new(read, PipeEnd::Read),
        ))
    }

    /// The end a parent's [`Pipe::spawn`] handed to this process, by the number in
    /// [`PIPE_FD_VAR`]. The descriptor is checked before it is owned (open, a pipe or FIFO, one
    /// end only), then made close-on-exec and non-blocking. Succeeds once per process.
    ///
    /// ```no_run
    /// let pipe = shmbus::transport::Pipe::from_env()?;
    /// let bus = shmbus::Bus::builder().transport(pipe).build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`PipeEndError::NotSet`], [`PipeEndError::BadNumber`], [`PipeEndError::NotOpen`],
    /// [`PipeEndError::NotAPipe`], [`PipeEndError::BothEnds`], [`PipeEndError::Taken`] (a
    /// second call), [`PipeEndError::Io`].
    pub fn from_env() -> Result<Pipe, PipeEndError> {
        /// Whether this process has taken its end already.
        static TAKEN: Mutex<bool> = Mutex::new(false);
        let value = std::env::var(PIPE_FD_VAR).map_err(|_| PipeEndError::NotSet)?;
        let number = value
            .trim()
            .parse::<RawFd>()
            .ok()
            .filter(|&n| n >= 0)
            .ok_or_else(|| PipeEndError::BadNumber {
                value: value.clone(),
            })?;
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if *taken {
            return Err(PipeEndError::Taken);
        }
        // SAFETY: `F_GETFD` on any number only reads the descriptor's flags, or fails with
        // `EBADF` when it is not open; it passes no pointer.
        if unsafe { libc::fcntl(number, libc::F_GETFD) } < 0 {
            return Err(PipeEndError::NotOpen { fd: number });
        }
        // SAFETY: `number` is open (just checked), and the checks below only borrow it; the
        // environment says it is the end the parent handed to this process, which nothing
        // else in it owns or closes (`TAKEN` lets one call take it).
        let end = check_end(unsafe { BorrowedFd::borrow_raw(number) })?;
        // SAFETY: as above; from here on `fd` is its one owner.
        let fd = unsafe { OwnedFd::from_raw_fd(number) };
        *taken = true;
        Self::own(fd, end)
    }

    /// A pipe end this process holds already (received over a socket, say): checked as
    /// [`Pipe::from_env`] checks its end, then made close-on-exec and non-blocking.
    ///
    /// # Errors
    /// [`PipeEndError::NotAPipe`], [`PipeEndError::BothEnds`], [`PipeEndError::Io`]; the
    /// descriptor is closed.
    pub fn from_fd(fd: OwnedFd) -> Result<Pipe, PipeEndError> {
        let end = check_end(fd.as_fd())?;
        Self::own(fd, end)
    }

    /// Which end this is: [`PipeEnd::Write`] publishes, [`PipeEnd::Read`] subscribes.
    pub fn end(&self) -> PipeEnd {
        self.end
    }

    fn own(fd: OwnedFd, end: PipeEnd) -> Result<Pipe, PipeEndError> {
        let io_err = |e: rustix::io::Errno| PipeEndError::Io {
            fd: fd.as_raw_fd(),
            source: e.into(),
        };
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC).map_err(io_err)?;
        set_nonblocking(fd.as_fd()).map_err(|e| PipeEndError::Io {
            fd: fd.as_raw_fd(),
            source: e,
        })?;
        Ok(Pipe::new(fd, end))
    }

    fn new(fd: OwnedFd, end: PipeEnd) -> Pipe {
        Pipe {
            end,
            state: Mutex::new(State::Unused {
                fd,
                got: Vec::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the topic frame and the hello into `got` (keeping what earlier attempts read),
    /// check the topic's name, and return where the hello starts.
    fn handshake(
        fd: BorrowedFd<'_>,
        got: &mut Vec<u8>,
        endpoint: &Endpoint<'_>,
        deadline: Instant,
    ) -> Result<usize, OpenError> {
        let topic = || endpoint.topic.to_string();
        let refused = |reason: String| OpenError::Refused {
            topic: topic(),
            reason,
        };
        let bad = |e: FrameError| refused(format!("the pipe's greeting: {e}"));
        loop {
            // What the greeting needs next: the topic frame, then the hello, each header first.
            let want = match frame_at(got, MAX_SEGMENT_NAME_LEN as u32).map_err(bad)? {
                None => HEADER_LEN,
                Some((header, _)) if header.kind != FrameKind::Topic => {
                    return Err(refused(format!(
                        "the pipe's first frame is a {:?}, not the topic's name",
                        header.kind
                    )))
                }
                Some((_, name_len)) if got.len() < name_len => name_len,
                Some((header, name_len)) => {
                    let name = &got[HEADER_LEN..HEADER_LEN + header.len as usize];
                    let expected = endpoint.name();
                    if name != expected.as_bytes() {
                        return Err(refused(format!(
                            "the pipe carries {:?}, not {expected:?}",
                            String::from_utf8_lossy(name)
                        )));
                    }
                    match frame_at(&got[name_len..], HELLO_LEN as u32).map_err(bad)? {
                        None => name_len + HEADER_LEN,
                        Some((_, hello_len)) if got.len() < name_len + hello_len => {
                            name_len + hello_len
                        }
                        // Framed::open checks the hello itself.
                        Some(_) => return Ok(name_len),
                    }
                }
            };
            match read_some(fd, got, want).map_err(|source| OpenError::Transport {
                topic: topic(),
                source,
            })? {
                Got::Bytes(_) => continue,
                Got::End => {
                    return Err(refused(
                        "the pipe's write end was closed before a publisher greeted".into(),
                    ))
                }
                Got::Nothing => {}
            }
            if Instant::now() >= deadline {
                return Err(OpenError::NotReady { topic: topic() });
            }
            link::wait_readable(fd, Some(deadline)).map_err(|source| OpenError::Transport {
                topic: topic(),
                source,
            })?;
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)?;
    rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)?;
    Ok(())
}

/// Which end of a pipe `fd` is, after checking it is one.
fn check_end(fd: BorrowedFd<'_>) -> Result<PipeEnd, PipeEndError> {
    let number = fd.as_raw_fd();
    let io_err = |e: rustix::io::Errno| PipeEndError::Io {
        fd: number,
        source: e.into(),
    };
    let st = rustix::fs::fstat(fd).map_err(io_err)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Fifo {
        return Err(PipeEndError::NotAPipe { fd: number });
    }
    let mode = rustix::fs::fcntl_getfl(fd).map_err(io_err)? & OFlags::RWMODE;
    if mode == OFlags::RDONLY {
        Ok(PipeEnd::Read)
    } else if mode == OFlags::WRONLY {
        Ok(PipeEnd::Write)
    } else {
        Err(PipeEndError::BothEnds { fd: number })
    }
}

/// The topic frame and the hello a pipe's publisher writes first.
fn greeting(endpoint: &Endpoint<'_>) -> Vec<u8> {
    let name = endpoint.name();
    let type_hash = frame::type_hash(&endpoint.hello.fingerprint);
    let hello = endpoint.hello.encode();
    let mut out = vec![0u8; frame::frame_len(name.len()) + frame::frame_len(hello.len())];
    let header = FrameHeader::control(FrameKind::Topic, name.len() as u32, type_hash);
    let at = frame::encode_frame(&mut out, &header, name.as_bytes());
    let header = FrameHeader::control(FrameKind::Hello, hello.len() as u32, type_hash);
    frame::encode_frame(&mut out[at..], &header, &hello);
    out
}

/// The header of the frame at the start of `bytes` and the bytes the whole frame takes, once
/// a header's worth is there (`Ok(None)` before). The header is checked, its length against
/// `max_len`, before anything of that length is read.
pub(super) fn frame_at(
    bytes: &[u8],
    max_len: u32,
) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = FrameHeader::decode(head, max_len)?;
    Ok(Some((header, frame::frame_len(header.len as usize))))
}

/// Read into `got`, without blocking, at most the bytes that bring it to `want` (a greeting is
/// read exactly: nothing after it is taken from the descriptor).
pub(super) fn read_some(fd: BorrowedFd<'_>, got: &mut Vec<u8>, want: usize) -> io::Result<Got> {
    let mut chunk = [0u8; 512];
    let room = want.saturating_sub(got.len()).min(chunk.len());
    if room == 0 {
        return Ok(Got::Nothing);
    }
    let read = link::read_fd(fd, &mut chunk[..room])?;
    if let Got::Bytes(n) = read {
        got.extend_from_slice(&chunk[..n]);
    }
    Ok(read)
}

/// A subscriber's byte stream from a pipe or a FIFO: the greeting read during the handshake is
/// served first, then the descriptor's bytes.
pub(super) struct StreamSource {
    fd: Arc<OwnedFd>,
    /// Bytes read before the framed receiver took over, served first.
    replay: Vec<u8>,
    /// How many of `replay` were served.
    served: usize,
    /// Kept open as long as the stream, and closed after it (a FIFO subscriber's lock).
    _hold: Option<OwnedFd>,
}

impl StreamSource {
    pub(super) fn new(fd: Arc<OwnedFd>, replay: Vec<u8>, hold: Option<OwnedFd>) -> Self {
        Self {
            fd,
            replay,
            served: 0,
            _hold: hold,
        }
    }
}

impl Source for StreamSource {
    fn datagram(&self) -> bool {
        false
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        if self.served < self.replay.len() {
            let n = buf.len().min(self.replay.len() - self.served);
            buf[..n].copy_from_slice(&self.replay[self.served..self.served + n]);
            self.served += n;
            if self.served == self.replay.len() {
                self.replay = Vec::new();
                self.served = 0;
            }
            return Ok(Got::Bytes(n));
        }
        link::read_fd(self.fd.as_fd(), buf)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        if self.served < self.replay.len() {
            return Ok(());
        }
        link::wait_readable(self.fd.as_fd(), deadline)
    }
}

impl Transport for Pipe {
    fn name(&self) -> &'static str {
        "pipe"
    }

    fn publish(&self, endpoint: &Endpoint<'_>) -> Result<Box<dyn FrameSender>, CreateError> {
        let topic = || endpoint.topic.to_string();
        if self.end != PipeEnd::Write {
            return Err(CreateError::Unsupported {
                transport: self.name(),
                what: "publishing on the read end of a pipe (it is the subscriber's)".into(),
            });
        }
        let len = endpoint.name().len();
        if len > MAX_SEGMENT_NAME_LEN {
            return Err(CreateError::InvalidName {
                topic: topic(),
                reason: NameError::TooLongWithPrefix { len },
            });
        }
        let fd = match std::mem::replace(&mut *self.state(), State::Taken) {
            State::Unused { fd, .. } => fd,
            State::Taken => return Err(CreateError::AlreadyExists { topic: topic() }),
        };
        let greeting = greeting(endpoint);
        match link::write_all_until(fd.as_fd(), &greeting, false, Instant::now() + GREET) {
            Ok(()) => Ok(Box::new(FanOut::single(
                Box::new(FdLink::pipe(fd)),
                Box::new(()),
            ))),
            // The subscriber's end is closed already: nobody will ever read, run free.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                Ok(Box::new(FanOut::new(Arc::default(), Box::new(()))))
            }
            Err(source) => Err(CreateError::Transport {
                topic: topic(),
                source,
            }),
        }
    }

    fn subscribe(
        &self,
        endpoint: &Endpoint<'_>,
        timeout: Duration,
    ) -> Result<Box<dyn FrameReceiver>, OpenError> {
        if endpoint.history > 0 {
            return Err(OpenError::Unsupported {
                transport: self.name(),
                what: "history (a pipe delivers what is sent after the subscriber opens)".into(),
            });
        }
        if self.end != PipeEnd::Read {
            return Err(OpenError::Unsupported {
                transport: self.name(),
                what: "subscribing on the write end of a pipe (it is the publisher's)".into(),
            });
        }
        let deadline = Instant::now() + timeout;
        let (fd, mut got) = match std::mem::replace(&mut *self.state(), State::Taken) {
            State::Unused { fd, got } => (fd, got),
            State::Taken => {
                return Err(OpenError::TooManySubscribers {
                    topic: endpoint.topic.into(),
                    max: 1,
                    pids: vec![std::process::id()],
                })
            }
        };
        let fd = Arc::new(fd);
        let opened = Self::handshake(fd.as_fd(), &mut got, endpoint, deadline).and_then(|at| {
            let source = StreamSource::new(fd.clone(), got[at..].to_vec(), None);
            Framed::open(source, endpoint, deadline)
        });
        match opened {
            Ok(framed) => Ok(Box::new(framed)),
            Err(e) => {
                // The end and what was read of the greeting, for the next attempt (the failed
                // receiver, and its copy of the descriptor, are gone).
                if let Ok(fd) = Arc::try_unwrap(fd) {
                    *self.state() = State::Unused { fd, got };
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Policy, TypeFingerprint};
    use frame::Hello;

    fn endpoint<'a>(prefix: &'a str, topic: &'a str) -> Endpoint<'a> {
        Endpoint {
            prefix,
            topic,
            hello: Hello {
                fingerprint: TypeFingerprint::typed::<u64>("u64"),
                pid: std::process::id(),
                identity: 1,
                policy: Policy::Block,
                max_len: 8,
            },
            group: false,
            any_type: false,
            history: 0,
        }
    }

    #[test]
    fn the_greeting_names_the_topic_and_a_subscriber_of_another_is_refused() {
        let (write, read) = Pipe::pair().unwrap();
        let _sender = write.publish(&endpoint("p.", "t")).unwrap();
        let short = Duration::from_millis(10);
        match read.subscribe(&endpoint("p.", "other"), short) {
            Err(OpenError::Refused { reason, .. }) => {
                assert!(reason.contains("\"p.t\""), "{reason}")
            }
            other => panic!("another topic's subscriber: {other:?}"),
        }
        // The greeting was kept for the next try.
        let mut rx = read.subscribe(&endpoint("p.", "t"), short).unwrap();
        assert_eq!(rx.hello().max_len, 8);
        assert!(rx.recv(Some(Instant::now())).unwrap().is_none());
        assert!(matches!(
            read.subscribe(&endpoint("p.", "t"), short),
            Err(OpenError::TooManySubscribers { max: 1, .. })
        ));
        assert!(matches!(
            write.publish(&endpoint("p.", "t")),
            Err(CreateError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn a_subscriber_that_comes_before_the_greeting_can_try_again() {
        let (write, read) = Pipe::pair().unwrap();
        let short = Duration::from_millis(5);
        assert!(matches!(
            read.subscribe(&endpoint("p.", "t"), short),
            Err(OpenError::NotReady { .. })
        ));
        let _sender = write.publish(&endpoint("p.", "t")).unwrap();
        assert!(read.subscribe(&endpoint("p.", "t"), short).is_ok());
    }

    #[test]
    fn each_end_does_only_its_part() {
        let (write, read) = Pipe::pair().unwrap();
        assert_eq!((write.end(), read.end()), (PipeEnd::Write, PipeEnd::Read));
        assert!(matches!(
            read.publish(&endpoint("p.", "t")),
            Err(CreateError::Unsupported { .. })
        ));
        assert!(matches!(
            write.subscribe(&endpoint("p.", "t"), Duration::ZERO),
            Err(OpenError::Unsupported { .. })
        ));
    }

    #[test]
    fn a_stream_that_is_not_a_greeting_is_refused() {
        let (write, read) = Pipe::pair().unwrap();
        let State::Unused { fd, .. } = std::mem::replace(&mut *write.state(), State::Taken) else {
            unreachable!()
        };
        rustix::io::write(&fd, &[0x5a; 64]).unwrap();
        match read.subscribe(&endpoint("p.", "t"), Duration::from_millis(10)) {
            Err(OpenError::Refused { reason, .. }) => assert!(reason.contains("magic"), "{reason}"),
            other => panic!("garbage greeting: {other:?}"),
        }
        // A hello where the topic's name should be.
        let (write, read) = Pipe::pair().unwrap();
        let State::Unused { fd, .. } = std::mem::replace(&mut *write.state(), State::Taken) else {
            unreachable!()
        };
        let mut bytes = greeting(&endpoint("p.", "t"));
        let at = frame::frame_len("p.t".len());
        bytes.drain(..at);
        rustix::io::write(&fd, &bytes).unwrap();
        drop(fd);
        assert!(matches!(
            read.subscribe(&endpoint("p.", "t"), Duration::from_millis(10)),
            Err(OpenError::Refused { .. })
        ));
    }

    #[test]
    fn a_descriptor_that_is_not_a_pipe_is_refused() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(matches!(
            Pipe::from_fd(file.into()),
            Err(PipeEndError::NotAPipe { .. })
        ));
    }
}
