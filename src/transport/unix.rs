//! Unix domain sockets (`SOCK_SEQPACKET`): one host, no shared memory needed (containers that
//! do not share `/dev/shm`, sandboxes). The publisher listens on `<dir>/<prefix><topic>.sock`;
//! each subscriber connects. Seqpacket keeps message boundaries and never splits a frame, so
//! a frame is sent or refused whole. Both sides check the other's credentials
//! (`SO_PEERCRED`): the same user, or a user allowed with [`Unix::allow_uid`].

use super::link::{self, Acceptor, Arrivals, FanOut, FdLink, Framed, Got, RecvTimeout, Source};
use super::{Endpoint, FrameReceiver, FrameSender, Transport};
use crate::error::{CreateError, OpenError};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Unix-socket transport: `SOCK_SEQPACKET` sockets in a directory, for one host without
/// shared memory (containers that do not share `/dev/shm`, sandboxes). The publisher listens on
/// `<dir>/<prefix><topic>.sock` and every subscriber connects; a frame is sent or refused
/// whole (seqpacket keeps message boundaries). Both sides check the other's credentials
/// (`SO_PEERCRED`): the same user, or one allowed with [`Unix::allow_uid`].
///
/// ```no_run
/// let bus = shmbus::Bus::builder()
///     .transport(shmbus::transport::Unix::new("/run/myapp"))
///     .build()?;
/// let mut publisher = bus.publisher::<u64>("ticks").create()?;
/// # let _ = &mut publisher;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Unix {
    dir: PathBuf,
    allowed: Vec<u32>,
}

impl Unix {
    /// Sockets in `dir` (which every process of a topic must name alike).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            allowed: Vec::new(),
        }
    }

    /// Also accept peers running as user `uid` (besides this process's own user).
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.allowed.push(uid);
        self
    }

    /// The socket's path for `endpoint`.
    pub fn path(&self, endpoint: &Endpoint<'_>) -> PathBuf {
        self.dir.join(format!("{}.sock", endpoint.name()))
    }

    fn address(path: &Path) -> io::Result<SocketAddrUnix> {
        SocketAddrUnix::new(path).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path {} is too long (108 bytes at most)",
                    path.display()
                ),
            )
        })
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Whether the peer on `fd` runs as this process's user or one of `allowed`.
fn peer_allowed(fd: &OwnedFd, allowed: &[u32]) -> bool {
    match rustix::net::sockopt::socket_peercred(fd) {
        Ok(cred) => {
            let uid = cred.uid.as_raw();
            uid == rustix::process::geteuid().as_raw() || allowed.contains(&uid)
        }
        Err(_) => false,
    }
}

/// Removes the socket's name when the publisher goes (after its acceptor has stopped).
struct Name {
    path: PathBuf,
    _acceptor: Acceptor,
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Transport for Unix {
    fn name(&self) -> &'static str {
        "unix"
    }

    fn publish(&self, endpoint: &Endpoint<'_>) -> Result<Box<dyn FrameSender>, CreateError> {
        let topic = || endpoint.topic.to_string();
        let io_err = |source| CreateError::Transport {
            topic: topic(),
            source,
        };
        let path = self.path(endpoint);
        let addr = Self::address(&path).map_err(io_err)?;
        let listener = seqpacket().map_err(io_err)?;
        match rustix::net::bind(&listener, &addr) {
            Ok(()) => {}
            Err(rustix::io::Errno::ADDRINUSE) => {
                // A live publisher answers; a dead one's name refuses: take it over.
                let probe = seqpacket().map_err(io_err)?;
                match rustix::net::connect(&probe, &addr) {
                    Err(rustix::io::Errno::CONNREFUSED) => {
                        let _ = std::fs::remove_file(&path);
                        rustix::net::bind(&listener, &addr).map_err(|e| io_err(e.into()))?;
                    }
                    _ => return Err(CreateError::AlreadyExists { topic: topic() }),
                }
            }
            Err(e) => return Err(io_err(e.into())),
        }
        let mode = if endpoint.group { 0o660 } else { 0o600 };
        let created = (|| -> io::Result<()> {
            rustix::fs::chmod(&path, rustix::fs::Mode::from_raw_mode(mode))?;
            rustix::net::listen(&listener, 128)?;
            Ok(())
        })();
        if let Err(e) = created {
            let _ = std::fs::remove_file(&path);
            return Err(io_err(e));
        }
        let arrivals = Arc::new(Arrivals::default());
        let hello = endpoint.hello.clone();
        let allowed = self.allowed.clone();
        let acceptor = Acceptor::spawn(listener, arrivals.clone(), move |conn, arrivals| {
            if peer_allowed(&conn, &allowed) {
                arrivals.admit(Box::new(FdLink::socket(conn)), |fd| {
                    link::greet(fd, &hello, true).is_ok()
                });
            }
        });
        let acceptor = match acceptor {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(io_err(e));
            }
        };
        let guard = Name {
            path,
            _acceptor: acceptor,
        };
        Ok(Box::new(FanOut::new(arrivals, Box::new(guard))))
    }

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
        let deadline = Instant::now() + timeout;
        let path = self.path(endpoint);
        let addr = Self::address(&path).map_err(io_err)?;
        let fd = seqpacket().map_err(io_err)?;
        loop {
            match rustix::net::connect(&fd, &addr) {
                Ok(()) => break,
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::CONNREFUSED) => {
                    return Err(OpenError::NotFound { topic: topic() })
                }
                // The publisher's backlog is full: it is accepting; wait a little.
                Err(rustix::io::Errno::AGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(io_err(e.into())),
            }
        }
        if !peer_allowed(&fd, &self.allowed) {
            return Err(OpenError::Refused {
                topic: topic(),
                reason: "the socket's publisher runs as another user".into(),
            });
        }
        let source = SeqSource {
            fd,
            timeout: RecvTimeout::default(),
        };
        let framed = Framed::open(source, endpoint, deadline)?;
        Ok(Box::new(framed))
    }
}

/// A connected seqpacket socket, read one frame (datagram) at a time.
struct SeqSource {
    fd: OwnedFd,
    timeout: RecvTimeout,
}

impl SeqSource {
    fn recv(&mut self, buf: &mut [u8], flags: rustix::net::RecvFlags) -> io::Result<Got> {
        let room = buf.len();
        match rustix::net::recv(&self.fd, buf, flags | rustix::net::RecvFlags::TRUNC) {
            // Frames are never empty: 0 is the end.
            Ok((_, 0)) => Ok(Got::End),
            // Longer than the buffer (the rest was dropped): reported as what it claims,
            // which the frame check refuses.
            Ok((_, n)) => Ok(Got::Bytes(n.min(room))),
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => Ok(Got::Nothing),
            Err(rustix::io::Errno::CONNRESET) => Ok(Got::End),
            Err(e) => Err(e.into()),
        }
    }
}

impl Source for SeqSource {
    fn datagram(&self) -> bool {
        true
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        self.recv(buf, rustix::net::RecvFlags::DONTWAIT)
    }

    fn read_wait(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> io::Result<Got> {
        if self.timeout.arm(self.fd.as_fd(), deadline)? {
            return self.recv(buf, rustix::net::RecvFlags::empty());
        }
        self.wait(deadline)?;
        self.read(buf)
    }

    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(self.fd.as_fd())
    }

    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        link::wait_readable(self.fd.as_fd(), deadline)
    }
}
