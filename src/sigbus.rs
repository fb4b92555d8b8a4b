//! A segment truncated under its mappings must not kill the process.
//!
//! Any process that may write a segment's file (its owner; root) can `ftruncate` it while
//! others have it mapped. A load or store to a mapped page that now lies past the end of the
//! file raises SIGBUS, whose default action kills the process: one buggy or hostile peer
//! would bring down every process on the topic. Checking the size before each access would
//! put a system call on the hot path, and a check is stale the moment it returns; sealing the
//! size (`F_SEAL_SHRINK`) works only on a `memfd`, which other processes cannot open by name.
//!
//! So this process catches the fault. Every mapping of a segment is registered here (start and
//! end, in a fixed table that a signal handler can read: atomics, no locks, no allocation).
//! The SIGBUS handler looks the faulting address up; if it lies in a registered mapping, it
//! maps private zero-filled pages over the rest of that mapping (`MAP_FIXED`), marks the
//! mapping truncated and returns: the access is retried and now reads zeros (or writes into
//! memory nobody else sees). What a zeroed segment shows the ring is what a hostile peer's
//! zeros would show it, which it already treats as untrusted input; the bus then reports the
//! truncation (`RecvError::Truncated`, `LoanError::Truncated`) the next time it finds nothing
//! to read or no room to write, where it looks at [`Registration::truncated`].
//!
//! A fault anywhere else is not ours: the handler passes it to the handler that was installed
//! before it (Rust's own, which reports a stack overflow, or the application's), or, if there
//! was none, restores the default action and returns, so that the access faults again and the
//! process dies of SIGBUS as it would have without shmbus.
//!
//! The handler is installed once, when the first segment is mapped. A program that installs
//! its own SIGBUS handler later and does not chain to the one it replaces loses this defence
//! (but nothing else).

// This module's state is this process's own (never in shared memory) and is read by a signal
// handler, which loom does not model; loom's atomics cannot be statics either. So it names
// std's types directly, the one exception to the shim rule besides `sync.rs`.
#![allow(clippy::disallowed_types)]

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Once;

/// How many mappings can be registered at once. A mapping beyond these works as any other,
/// without the defence (see [`register`]).
const ENTRIES: usize = 1024;

/// `start` of an entry that is being filled in or emptied: never a mapping's address.
const CLAIMED: usize = 1;

/// One registered mapping: `start..end`, or `start == 0` for a free entry.
struct Entry {
    start: AtomicUsize,
    end: AtomicUsize,
    truncated: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // each array element is its own entry
const FREE: Entry = Entry {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    truncated: AtomicBool::new(false),
};

static TABLE: [Entry; ENTRIES] = [FREE; ENTRIES];
/// One past the highest entry ever used: the handler looks no further.
static USED: AtomicUsize = AtomicUsize::new(0);

/// The SIGBUS action in place before ours, written once before ours is installed.
struct Previous(UnsafeCell<MaybeUninit<libc::sigaction>>);
// SAFETY: written once, inside `INSTALL`, before the handler that reads it is installed; only
// read after that.
unsafe impl Sync for Previous {}
static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::uninit()));
static INSTALL: Once = Once::new();
/// Whether our handler is in place (the installation can fail, then nothing is caught).
static INSTALLED: AtomicBool = AtomicBool::new(false);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// A mapping registered for the defence; unregistered on drop (before the mapping is unmapped:
/// the owner drops this first).
#[derive(Debug)]
pub(crate) struct Registration {
    index: usize,
}

impl Registration {
    /// The mapping's truncation flag, for whoever reads the mapping while this lives.
    pub(crate) fn flag(&self) -> Flag {
        Flag { index: self.index }
    }
}

/// Whether a fault past the end of the file was caught in a registered mapping: from the page
/// of that fault on, the mapping is private zeros. Valid while its [`Registration`] lives
/// (its owner keeps both).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flag {
    index: usize,
}

impl Flag {
    /// The flag of a mapping that is not registered: never set.
    pub(crate) const NONE: Flag = Flag { index: usize::MAX };

    /// Whether the fault was caught. One relaxed load.
    #[inline]
    pub(crate) fn is_set(self) -> bool {
        TABLE
            .get(self.index)
            .is_some_and(|e| e.truncated.load(Ordering::Relaxed))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let entry = &TABLE[self.index];
        entry.start.store(CLAIMED, Ordering::Release);
        entry.end.store(0, Ordering::Relaxed);
        entry.truncated.store(false, Ordering::Relaxed);
        entry.start.store(0, Ordering::Release);
    }
}

/// Register the mapping `start..start + len` (installing the handler on first use). `None` if
/// the handler could not be installed or the table is full: the mapping then works without
/// the defence.
pub(crate) fn register(start: *mut u8, len: usize) -> Option<Registration> {
    install();
    if !INSTALLED.load(Ordering::Acquire) || len == 0 {
        return None;
    }
    let (start, end) = (start as usize, (start as usize).checked_add(len)?);
    for (index, entry) in TABLE.iter().enumerate() {
        if entry
            .start
            .compare_exchange(0, CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            entry.truncated.store(false, Ordering::Relaxed);
            entry.end.store(end, Ordering::Relaxed);
            USED.fetch_max(index + 1, Ordering::Release);
            // Release: a handler that sees `start` sees `end` too.
            entry.start.store(start, Ordering::Release);
            return Some(Registration { index });
        }
    }
    None
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(page) = usize::try_from(page) {
            if page.is_power_of_two() {
                PAGE_SIZE.store(page, Ordering::Relaxed);
            }
        }
        // SAFETY: an all-zero `sigaction` is a valid value (no handler, empty mask); it is
        // filled in by the kernel below before anything reads it.
        let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
        ours.sa_sigaction = on_sigbus as *const () as usize;
        // SA_ONSTACK: on the alternate stack where there is one (Rust's threads have one for
        // stack overflows). Without SA_NODEFER, SIGBUS is blocked while the handler runs: a
        // fault inside it (there should be none) kills the process, as the kernel does with a
        // blocked fault, rather than recursing.
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `sa_mask` is a plain value we own.
        unsafe { libc::sigemptyset(&mut ours.sa_mask) };
        let previous = PREVIOUS.0.get().cast::<libc::sigaction>();
        // SAFETY: `previous` points at storage for a `sigaction` that nothing else touches
        // yet; `ours` is a valid action. The kernel writes the old action before installing
        // the new one, so the handler never reads it unwritten.
        let rc = unsafe { libc::sigaction(libc::SIGBUS, &ours, previous) };
        INSTALLED.store(rc == 0, Ordering::Release);
    });
}

/// Find the registered mapping that holds `addr`. Async-signal-safe: atomic loads only.
fn lookup(addr: usize) -> Option<&'static Entry> {
    let used = USED.load(Ordering::Acquire).min(ENTRIES);
    TABLE[..used].iter().find(|entry| {
        let start = entry.start.load(Ordering::Acquire);
        start > CLAIMED && addr >= start && addr < entry.end.load(Ordering::Relaxed)
    })
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel hands a SA_SIGINFO handler a valid `siginfo_t`; for SIGBUS, `si_addr`
    // is the faulting address.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(entry) = lookup(addr) {
        let page = addr & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
        let end = entry.end.load(Ordering::Relaxed);
        // SAFETY: `page..end` lies inside a mapping this process registered and has not
        // unmapped (a registration is dropped before its mapping is unmapped, and only the
        // mapping's owner, which is running this access, drops it). Replacing it with private
        // zero pages is what the defence is for; mmap is async-signal-safe (a system call).
        let mapped = unsafe {
            libc::mmap(
                page as *mut libc::c_void,
                end - page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped != libc::MAP_FAILED {
            entry.truncated.store(true, Ordering::Relaxed);
            return;
        }
        // No memory for the zero pages: nothing to do but die as we would have.
    }
    // SAFETY: written before our handler was installed (see `install`).
    let previous = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: an all-zero `sigaction` with SIG_DFL (0) is the default action.
        let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
        default.sa_sigaction = libc::SIG_DFL;
        // SAFETY: valid action; sigaction is async-signal-safe. Returning retries the access,
        // which faults again and takes the default action: the process dies of SIGBUS.
        unsafe { libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut()) };
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this type;
        // we pass it what the kernel passed us.
        let previous: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        previous(signal, info, context);
    } else {
        // SAFETY: installed without SA_SIGINFO: a plain handler.
        let previous: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        previous(signal);
    }
}
