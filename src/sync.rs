//! The one shim between shmbus and its concurrency primitives.
//!
//! Every atomic, every cell shared between threads or processes, every spin hint and every yield
//! in the crate comes from here: from `std` in a normal build, from [loom] when the crate is built
//! with `--cfg shmbus_loom` (the `loom-tests/` crate does that). Clippy's `disallowed-types`
//! (see `clippy.toml`) keeps other modules from naming `std::sync::atomic` directly, so nothing
//! escapes the model checker.
//!
//! This module must never hold logic: it only chooses where a primitive comes from.
//!
//! [loom]: https://docs.rs/loom
#![allow(clippy::disallowed_types)] // the one place allowed to name them

#[cfg(not(shmbus_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(shmbus_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A spin-loop hint (`pause` on x86). Under loom it yields to the scheduler, so that a spin loop
/// ends in a model.
// Under loom only the portable layers are built, and they do not spin.
#[cfg_attr(shmbus_loom, allow(dead_code))]
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(not(shmbus_loom))]
    std::hint::spin_loop();
    #[cfg(shmbus_loom)]
    loom::thread::yield_now();
}

/// Give the processor to another thread.
#[cfg_attr(shmbus_loom, allow(dead_code))]
#[inline]
pub(crate) fn yield_now() {
    #[cfg(not(shmbus_loom))]
    std::thread::yield_now();
    #[cfg(shmbus_loom)]
    loom::thread::yield_now();
}

/// A cell whose accesses loom tracks: `with` and `with_mut` hand a raw pointer to a closure, so
/// that under loom a read racing a write is reported. Used for heap-backed slots (tests and loom
/// models); the mapped slots of a real segment are raw memory addressed through the geometry.
#[cfg(not(shmbus_loom))]
#[derive(Debug, Default)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(shmbus_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(shmbus_loom)]
pub(crate) use loom::cell::UnsafeCell;
