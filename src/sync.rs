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
pub(crate) use std::sync::atomic::{fence, Ordering};

#[cfg(not(shmbus_loom))]
pub(crate) use std_atomics::{AtomicU32, AtomicU64};

/// Newtypes over std's atomics, with the subset of the API shmbus uses. They are what the rest
/// of the crate names, so that clippy's `disallowed-types` (which sees through a plain
/// re-export) flags any other use of std's types. `repr(transparent)`: the same size, alignment
/// and bit validity as the std type, hence as the integer, so they can be laid over shared memory.
#[cfg(not(shmbus_loom))]
mod std_atomics {
    use std::sync::atomic::Ordering;

    macro_rules! atomic {
        ($name:ident, $int:ty) => {
            #[doc = concat!("`std::sync::atomic::", stringify!($name), "`, through the shim.")]
            #[repr(transparent)]
            #[derive(Debug, Default)]
            pub struct $name(std::sync::atomic::$name);

            #[allow(dead_code)] // each build uses a different subset
            impl $name {
                #[inline(always)]
                pub const fn new(v: $int) -> Self {
                    Self(std::sync::atomic::$name::new(v))
                }
                #[inline(always)]
                pub fn load(&self, order: Ordering) -> $int {
                    self.0.load(order)
                }
                #[inline(always)]
                pub fn store(&self, v: $int, order: Ordering) {
                    self.0.store(v, order)
                }
                #[inline(always)]
                pub fn swap(&self, v: $int, order: Ordering) -> $int {
                    self.0.swap(v, order)
                }
                #[inline(always)]
                pub fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_add(v, order)
                }
                #[inline(always)]
                pub fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_sub(v, order)
                }
                #[inline(always)]
                pub fn fetch_or(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_or(v, order)
                }
                #[inline(always)]
                pub fn fetch_and(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_and(v, order)
                }
                #[inline(always)]
                pub fn compare_exchange(
                    &self,
                    current: $int,
                    new: $int,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$int, $int> {
                    self.0.compare_exchange(current, new, success, failure)
                }
                #[inline(always)]
                pub fn fetch_update(
                    &self,
                    set: Ordering,
                    fetch: Ordering,
                    f: impl FnMut($int) -> Option<$int>,
                ) -> Result<$int, $int> {
                    self.0.fetch_update(set, fetch, f)
                }
                /// The std atomic, for system calls that take one (the futex).
                #[inline(always)]
                pub fn as_std(&self) -> &std::sync::atomic::$name {
                    &self.0
                }
            }
        };
    }

    atomic!(AtomicU32, u32);
    atomic!(AtomicU64, u64);
}

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
