//! The signal notifier ([`Notifier::Signal`](super::Notifier::Signal)): a publisher queues a
//! real-time signal to the very thread that sleeps (`rt_tgsigqueueinfo`), and that thread,
//! which blocks the signal, takes it with `sigtimedwait`, or through a signalfd polled by the
//! same thread.
//!
//! Why thread-directed: a signal queued to the process goes to any thread that does not block
//! it, and one that has no handler kills the process (the default action of a real-time
//! signal). Queued to the sleeper, which blocks it, it can only be taken by that thread.
//!
//! A publisher signals only a live process (its identity, pid and start time, is checked right
//! before) and only with a real-time signal; a hostile registration can at worst make it queue
//! such a signal to a thread of this user's that blocks or handles it, or be refused by the
//! kernel (another user, a thread not in that process).

use rustix::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::io;
use std::time::Instant;

/// The signal `SIGRTMIN + offset`, if there is one.
pub(crate) fn signo(offset: u8) -> Option<i32> {
    let signo = libc::SIGRTMIN() + offset as i32;
    (signo <= libc::SIGRTMAX()).then_some(signo)
}

fn set_of(signo: i32) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is a valid object for sigemptyset to initialise.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; `signo` is a valid signal number (`signo` above).
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signo);
    }
    set
}

/// The subscriber's half: the signal, and a signalfd for it.
#[derive(Debug)]
pub(crate) struct SignalWaiter {
    signo: i32,
    fd: OwnedFd,
}

impl SignalWaiter {
    /// Wait on `signo` (a real-time signal, from [`signo`]).
    pub(crate) fn new(signo: i32) -> io::Result<Self> {
        let set = set_of(signo);
        // SAFETY: a valid sigset; -1 asks for a new descriptor, which we own from here.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { signo, fd })
    }

    /// The signalfd: readable when the signal is pending for the thread that polls it.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Block the signal in the calling thread, before it arms: a post then stays pending for
    /// it until taken.
    pub(crate) fn block(&self) {
        let set = set_of(self.signo);
        // SAFETY: a valid sigset; the old mask is not asked for.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    }

    /// Sleep until the signal is pending for this thread (and take it), or `deadline`.
    pub(crate) fn wait(&self, deadline: Option<Instant>) {
        let set = set_of(self.signo);
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            libc::timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        let ts = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: a valid sigset and timespec (or null: no limit); the siginfo is not asked
        // for. EAGAIN (the deadline) and EINTR: the caller looks again.
        unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), ts) };
    }

    /// Take every instance of the signal still pending for this thread (real-time signals
    /// queue: each post is one).
    pub(crate) fn drain(&self) {
        let set = set_of(self.signo);
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as in `wait`, with a zero timeout: returns -1 (EAGAIN) once none is pending.
        while unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) } > 0 {}
    }
}

/// The kernel's `siginfo_t` for `SI_QUEUE` on Linux (128 bytes): what `rt_tgsigqueueinfo`
/// reads.
#[repr(C)]
struct QueueInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    value: u64,
    _rest: [u64; 12],
}

/// Queue `signo` with `value` to thread `tid` of subscriber `owner`'s process, if that
/// process is alive and `signo` a real-time signal.
pub(crate) fn post(owner: u64, tid: u32, signo: i32, value: u64) {
    if signo < libc::SIGRTMIN() || signo > libc::SIGRTMAX() || tid == 0 || tid > i32::MAX as u32 {
        return;
    }
    if !crate::segment::identity_alive(owner) {
        return;
    }
    let pid = crate::segment::identity_pid(owner);
    let info = QueueInfo {
        signo,
        errno: 0,
        code: libc::SI_QUEUE,
        _pad: 0,
        pid: rustix::process::getpid().as_raw_nonzero().get(),
        uid: rustix::process::getuid().as_raw(),
        value,
        _rest: [0; 12],
    };
    // SAFETY: rt_tgsigqueueinfo reads a 128-byte siginfo_t from the pointer, which `info` is
    // (repr(C), the kernel's SI_QUEUE layout); the other arguments are plain integers.
    unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            pid as libc::pid_t,
            tid as libc::pid_t,
            signo,
            &info as *const QueueInfo,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_signal_queued_to_the_sleeping_thread_wakes_it_and_is_drained() {
        assert_eq!(size_of::<QueueInfo>(), 128);
        let signo = signo(7).unwrap();
        let me = crate::segment::my_identity();
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            let waiter = SignalWaiter::new(signo).unwrap();
            waiter.block();
            tx.send(rustix::thread::gettid().as_raw_nonzero().get() as u32)
                .unwrap();
            // A deadline an hour away: a lost signal shows as a hang (the test's watchdog).
            waiter.wait(Some(Instant::now() + Duration::from_secs(3600)));
            waiter.drain();
            let fd = waiter.fd();
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut fds, Some(&crate::wait::timespec(Duration::ZERO))).unwrap()
        });
        let tid = rx.recv().unwrap();
        post(me, tid, signo, 1);
        assert_eq!(
            sleeper.join().unwrap(),
            0,
            "woken, and nothing left pending"
        );
        // A dead identity or a signal that is not real-time: nothing is sent (this test would
        // die of SIGINT otherwise).
        post(me, tid, libc::SIGINT, 1);
        post(1 << 40, tid, signo, 1);
    }
}
