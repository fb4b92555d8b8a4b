//! The eventfd notifier ([`Notifier::EventFd`](super::Notifier::EventFd)): a subscriber sleeps
//! on an eventfd of its own, and publishers in other processes write to it.
//!
//! An eventfd has no name, so a publisher gets it from the subscriber over a Unix socket
//! (`SCM_RIGHTS`). Neither side runs a thread for that:
//! - the subscriber listens on an abstract seqpacket socket named for the topic and its own
//!   identity, and hands out one descriptor, an epoll instance over the eventfd *and* the
//!   listener: it becomes readable when a publisher posts, or when a publisher connects;
//! - a publisher that must wake a subscriber whose eventfd it does not have yet connects to
//!   that socket: the connection alone makes the subscriber's descriptor readable, so that
//!   first wake-up is not lost. The subscriber, once awake, accepts it, checks the peer's
//!   user, and sends the eventfd; the publisher takes it at its next wake-up and writes to it
//!   from then on.
//!
//! Everything a publisher receives is checked: the sender's user (`SO_PEERCRED`), the
//! identity it sends, and that the descriptor is an eventfd (`/proc/self/fd`). A hostile
//! process of the same user can at worst hand over an eventfd of its own, which wakes nobody.

use rustix::event::epoll;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::time::Instant;

/// The abstract socket name of a subscriber's eventfd rendezvous for topic `key`.
fn address(key: u64, owner: u64) -> io::Result<SocketAddrUnix> {
    let name = format!("shmbus-notify/{key:016x}/{owner:016x}");
    Ok(SocketAddrUnix::new_abstract_name(name.as_bytes())?)
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// Whether the peer on `fd` runs as this process's user.
fn same_user(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_peercred(fd)
        .is_ok_and(|cred| cred.uid == rustix::process::geteuid())
}

/// The subscriber's half: the eventfd, the rendezvous socket and the epoll over both.
#[derive(Debug)]
pub(crate) struct EventFdWaiter {
    event: OwnedFd,
    listener: OwnedFd,
    epoll: OwnedFd,
    owner: u64,
}

impl EventFdWaiter {
    /// An eventfd for the subscriber `owner` of topic `key`, with its rendezvous socket.
    pub(crate) fn new(key: u64, owner: u64) -> io::Result<Self> {
        let event = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let listener = seqpacket()?;
        rustix::net::bind(&listener, &address(key, owner)?)?;
        rustix::net::listen(&listener, 16)?;
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        for fd in [&event, &listener] {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(0),
                epoll::EventFlags::IN,
            )?;
        }
        Ok(Self {
            event,
            listener,
            epoll,
            owner,
        })
    }

    /// The descriptor that becomes readable when a publisher posts (or comes for the eventfd).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Sleep until a post, a publisher's connection, or `deadline`.
    pub(crate) fn wait(&self, deadline: Option<Instant>) {
        let timeout =
            deadline.map(|d| crate::wait::timespec(d.saturating_duration_since(Instant::now())));
        let mut events = [MaybeUninit::uninit(); 2];
        let _ = epoll::wait(&self.epoll, &mut events[..], timeout.as_ref());
    }

    /// Consume what woke us: hand the eventfd to every publisher that connected for it, and
    /// reset the eventfd's count.
    pub(crate) fn drain(&self) {
        loop {
            match rustix::net::accept_with(
                &self.listener,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(conn) => {
                    if same_user(conn.as_fd()) {
                        let _ = self.send_to(&conn);
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break,
            }
        }
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.event, &mut count);
    }

    fn send_to(&self, conn: &OwnedFd) -> io::Result<()> {
        let fds = [self.event.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        let owner = self.owner.to_le_bytes();
        rustix::net::sendmsg(
            conn,
            &[IoSlice::new(&owner)],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        )?;
        Ok(())
    }
}

/// A publisher's half for one subscriber: its eventfd once received, or the connection that
/// asked for it.
#[derive(Debug, Default)]
pub(crate) struct EventFdPoster {
    event: Option<OwnedFd>,
    pending: Option<OwnedFd>,
    /// The subscriber refused or is gone: give up on it.
    failed: bool,
}

impl EventFdPoster {
    /// Wake subscriber `owner` of topic `key`.
    pub(crate) fn post(&mut self, key: u64, owner: u64) {
        if self.event.is_none() && !self.failed {
            self.receive(owner);
        }
        if let Some(event) = &self.event {
            // EAGAIN (the count is near overflow) still leaves it readable.
            let _ = rustix::io::write(event, &1u64.to_ne_bytes());
            return;
        }
        if self.pending.is_none() && !self.failed {
            // The connection itself wakes the subscriber (its epoll watches the listener).
            match connect(key, owner) {
                Ok(conn) => self.pending = Some(conn),
                Err(_) => self.failed = true,
            }
        }
    }

    /// Take the eventfd from the pending connection, if the subscriber has sent it.
    fn receive(&mut self, owner: u64) {
        let Some(conn) = &self.pending else {
            return;
        };
        let mut payload = [0u8; 8];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            conn,
            &mut [IoSliceMut::new(&mut payload)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        );
        let mut received = None;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                // Keep the first; the others are closed as the iterator drops them.
                for fd in fds {
                    received.get_or_insert(fd);
                }
            }
        }
        match got {
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
            Ok(msg) if msg.bytes == 8 && u64::from_le_bytes(payload) == owner => {
                self.pending = None;
                match received {
                    Some(fd) if is_eventfd(fd.as_fd()) => self.event = Some(fd),
                    _ => self.failed = true,
                }
            }
            _ => {
                self.pending = None;
                self.failed = true;
            }
        }
    }
}

fn connect(key: u64, owner: u64) -> io::Result<OwnedFd> {
    let conn = seqpacket()?;
    rustix::net::connect(&conn, &address(key, owner)?)?;
    if !same_user(conn.as_fd()) {
        return Err(io::Error::from(io::ErrorKind::PermissionDenied));
    }
    Ok(conn)
}

/// Whether `fd` is an eventfd (as `/proc/self/fd` names it).
fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_gets_the_eventfd_on_its_second_post_and_every_post_wakes() {
        let (key, owner) = (0x5eed_0001, crate::segment::my_identity());
        let waiter = EventFdWaiter::new(key, owner).unwrap();
        let readable = |w: &EventFdWaiter| {
            let fd = w.fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut fds, Some(&crate::wait::timespec(Default::default()))).unwrap()
                == 1
        };
        assert!(!readable(&waiter));
        let mut poster = EventFdPoster::default();
        // First post: a connection, which wakes the waiter.
        poster.post(key, owner);
        assert!(poster.pending.is_some() && poster.event.is_none());
        assert!(readable(&waiter));
        waiter.drain();
        assert!(!readable(&waiter));
        // Second post: the eventfd arrived; it is written.
        poster.post(key, owner);
        assert!(poster.event.is_some(), "{poster:?}");
        assert!(readable(&waiter));
        waiter.drain();
        assert!(!readable(&waiter));
        poster.post(key, owner);
        assert!(readable(&waiter));
    }

    #[test]
    fn a_poster_gives_up_on_a_subscriber_that_is_not_there() {
        let mut poster = EventFdPoster::default();
        poster.post(0x5eed_0002, 12345);
        assert!(poster.failed && poster.pending.is_none() && poster.event.is_none());
    }
}
