//! Loom models of shmbus's portable concurrency: the ring with one reader (`tests/spsc.rs`)
//! and with several, joining, leaving and lapped (`tests/broadcast.rs`), and the wait/wake
//! protocol (`tests/wake.rs`), with the helpers they share (here).
//!
//! Built with `--cfg shmbus_loom`, the `shmbus` crate takes its atomics and cells from loom
//! (`src/sync.rs`) and compiles only its portable layers (`ring`, `wait`), so these models check
//! the very code that runs over a mapped segment in production. Without that cfg this crate, and
//! every test file in it, compiles to nothing, so a plain `cargo test --workspace` skips them.
//!
//! Run them as CI does (in release: loom is slow unoptimised; seconds on 2 cores):
//!
//! ```text
//! RUSTFLAGS="--cfg shmbus_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p shmbus-loom-tests --release --target-dir target/loom
//! ```
//!
//! The separate target directory keeps the loom build of `shmbus` from evicting the normal one.
//! To see the interleaving of a failing model, run it alone with `LOOM_LOG=trace`; loom's
//! `LOOM_CHECKPOINT_FILE` replays it.

#[cfg(shmbus_loom)]
mod park;
#[cfg(shmbus_loom)]
mod ring;

#[cfg(shmbus_loom)]
pub use park::{ArmedPark, ModelFutex, ModelNotifier, SlotPoster};
#[cfg(shmbus_loom)]
pub use ring::{ring, ring_batched, value_of, Mode, Ring, Rx, Slots, Tx, MESSAGE_LEN};
