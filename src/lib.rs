//! # shmbus
//!
//! A zero-copy message bus over shared memory. A publisher writes each message straight into a
//! slot of a lock-free ring in a mapped segment; a subscriber in another process reads it in
//! place. A message becomes visible with one Release store; a waiting subscriber is woken by a
//! futex only if it sleeps, so the polling path makes no syscall, takes no lock and allocates
//! nothing.
//!
//! ```
//! use bytemuck::{Pod, Zeroable};
//! use shmbus::{Bus, WaitStrategy};
//! use std::time::Duration;
//!
//! #[derive(Clone, Copy, Pod, Zeroable)]
//! #[repr(C)]
//! struct Tick {
//!     price: f64,
//!     size: u32,
//!     venue: u32,
//! }
//!
//! # let bus = Bus::builder().prefix("doctest-quickstart.").build()?;
//! # /*
//! let bus = Bus::open_default()?;
//! # */
//! let mut publisher = bus.publisher::<Tick>("md.eurusd").capacity(1024).create()?;
//! // In another process (here the same one, for the example):
//! let mut subscriber = bus
//!     .subscriber::<Tick>("md.eurusd")
//!     .wait(WaitStrategy::default())
//!     .open()?;
//!
//! let mut slot = publisher.loan()?; // a slot in shared memory
//! slot.write(Tick { price: 1.0842, size: 1_000_000, venue: 7 }); // written in place
//! slot.send(); // one Release store makes it visible
//!
//! while let Some(tick) = subscriber.recv_timeout(Duration::from_millis(10))? {
//!     assert_eq!(tick.size, 1_000_000); // read in place; the slot is released on drop
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The layers, each using only those before it: [`sync`](crate) (the std/loom shim),
//! [`layout`], [`ring`], [`wait`], [`segment`], then the bus ([`Bus`], [`Publisher`],
//! [`Subscriber`]).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod sync;

pub mod ring;
pub mod wait;

#[cfg(not(shmbus_loom))]
pub mod layout;
#[cfg(not(shmbus_loom))]
pub mod segment;
#[cfg(not(shmbus_loom))]
mod sigbus;
#[cfg(not(shmbus_loom))]
pub mod transport;

#[cfg(not(shmbus_loom))]
pub mod journal;

#[cfg(not(shmbus_loom))]
mod bus;
#[cfg(not(shmbus_loom))]
mod error;

#[cfg(not(shmbus_loom))]
pub use bus::{
    Armed, Bus, BusBuilder, Checked, InPlace, Loan, Payload, Publisher, PublisherBuilder, Sample,
    Subscriber, SubscriberBuilder, SubscriberInfo, TopicInfo, DEFAULT_MAX_SUBSCRIBERS,
    DEFAULT_PREFIX, SLIP_RUN,
};
#[cfg(not(shmbus_loom))]
pub use error::{
    ArmError, BusError, CreateError, LoanError, OpenError, RecvError, SendTimeoutError,
    TryLoanError, TrySendError,
};
#[cfg(not(shmbus_loom))]
pub use layout::Policy;
pub use wait::{Notifier, WaitStrategy};

// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Re-exported so that users derive `Pod` and `Zeroable` on their message types.
pub use bytemuck;
