//! The semaphore notifier ([`Notifier::Semaphore`](super::Notifier::Semaphore)): a POSIX named
//! semaphore of the subscriber's own, named for the topic and its identity. The subscriber
//! creates it (`O_EXCL`, mode 0600) and removes it at close; a publisher opens it by name the
//! first time it must wake that subscriber, and posts once per sleep.
//!
//! glibc keeps named semaphores as files in `/dev/shm` (`sem.<name>`); what a hostile
//! registration can make a publisher do is open a semaphore of this user with a name of this
//! pattern and post to it.

use std::ffi::CString;
use std::io;
use std::time::{Instant, SystemTime};

fn name(key: u64, owner: u64) -> CString {
    CString::new(format!("/shmbus-{key:016x}-{owner:016x}")).expect("no NUL in a hex name")
}

/// An open named semaphore.
#[derive(Debug)]
struct Sem(*mut libc::sem_t);

// SAFETY: a `sem_t *` from `sem_open` may be used from any thread of the process; the
// semaphore's operations are thread-safe.
unsafe impl Send for Sem {}

impl Sem {
    fn open(name: &CString, create: bool) -> io::Result<Self> {
        let sem = if create {
            // SAFETY: `name` is a NUL-terminated string; with O_CREAT, sem_open reads a mode
            // and an initial value as variadic arguments (promoted to unsigned int).
            unsafe {
                libc::sem_open(
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL,
                    0o600 as libc::c_uint,
                    0 as libc::c_uint,
                )
            }
        } else {
            // SAFETY: as above, without O_CREAT: no variadic arguments are read.
            unsafe { libc::sem_open(name.as_ptr(), 0) }
        };
        if sem == libc::SEM_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(sem))
    }
}

impl Drop for Sem {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from a successful `sem_open` and is closed once.
        unsafe { libc::sem_close(self.0) };
    }
}

/// The subscriber's half: its semaphore, unlinked when it closes.
#[derive(Debug)]
pub(crate) struct SemWaiter {
    sem: Sem,
    name: CString,
}

impl SemWaiter {
    /// Create the semaphore of subscriber `owner` of topic `key`. One left by a process that
    /// had the same identity (it cannot be alive: identities include the start time) is
    /// replaced.
    pub(crate) fn new(key: u64, owner: u64) -> io::Result<Self> {
        let name = name(key, owner);
        let sem = match Sem::open(&name, true) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // SAFETY: a NUL-terminated name.
                unsafe { libc::sem_unlink(name.as_ptr()) };
                Sem::open(&name, true)?
            }
            other => other?,
        };
        // sem_open applies the umask to 0600; make it exactly that (glibc's file for it).
        let file = format!("/dev/shm/sem.{}", &name.to_string_lossy()[1..]);
        let _ = rustix::fs::chmod(file.as_str(), rustix::fs::Mode::from_raw_mode(0o600));
        Ok(Self { sem, name })
    }

    /// Sleep until posted or `deadline`.
    pub(crate) fn wait(&self, deadline: Option<Instant>) {
        match deadline {
            None => {
                // SAFETY: an open semaphore. EINTR: the caller looks again.
                unsafe { libc::sem_wait(self.sem.0) };
            }
            Some(deadline) => {
                // sem_timedwait takes CLOCK_REALTIME: convert what is left.
                let left = deadline.saturating_duration_since(Instant::now());
                let at = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    + left;
                let ts = libc::timespec {
                    tv_sec: at.as_secs() as libc::time_t,
                    tv_nsec: at.subsec_nanos() as _,
                };
                // SAFETY: an open semaphore and a valid timespec. ETIMEDOUT and EINTR: the
                // caller looks again.
                unsafe { libc::sem_timedwait(self.sem.0, &ts) };
            }
        }
    }

    /// Take every post left (each wakes at most one wait; stale ones would wake later waits
    /// for nothing).
    pub(crate) fn drain(&self) {
        // SAFETY: an open semaphore; sem_trywait fails with EAGAIN once the count is 0.
        while unsafe { libc::sem_trywait(self.sem.0) } == 0 {}
    }
}

impl Drop for SemWaiter {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated name; the semaphore itself is closed by `Sem`'s drop.
        unsafe { libc::sem_unlink(self.name.as_ptr()) };
    }
}

/// A publisher's half for one subscriber: its semaphore, opened at the first post.
#[derive(Debug, Default)]
pub(crate) struct SemPoster {
    sem: Option<Sem>,
    failed: bool,
}

impl SemPoster {
    /// Wake subscriber `owner` of topic `key`.
    pub(crate) fn post(&mut self, key: u64, owner: u64) {
        if self.sem.is_none() && !self.failed {
            match Sem::open(&name(key, owner), false) {
                Ok(sem) => self.sem = Some(sem),
                Err(_) => self.failed = true,
            }
        }
        if let Some(sem) = &self.sem {
            // SAFETY: an open semaphore. EOVERFLOW (SEM_VALUE_MAX posts pending) still wakes.
            unsafe { libc::sem_post(sem.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_post_wakes_a_wait_and_the_name_goes_at_close() {
        let (key, owner) = (0x5eed_0003, crate::segment::my_identity());
        let waiter = SemWaiter::new(key, owner).unwrap();
        let file = format!("/dev/shm/sem.shmbus-{key:016x}-{owner:016x}");
        let mode = std::fs::metadata(&file).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let mut poster = SemPoster::default();
        poster.post(key, owner);
        poster.post(key, owner);
        // Posted: the wait returns at once (a deadline an hour away would show a hang).
        waiter.wait(Some(Instant::now() + Duration::from_secs(3600)));
        waiter.drain();
        // SAFETY: an open semaphore.
        assert_ne!(unsafe { libc::sem_trywait(waiter.sem.0) }, 0, "drained");
        drop(waiter);
        assert!(!std::path::Path::new(&file).exists());
        let mut late = SemPoster::default();
        late.post(key, owner);
        assert!(late.failed);
    }
}
