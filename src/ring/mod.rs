//! The ring algorithms, over a cursor block and a slot array.
//!
//! No syscalls, no allocation on any path, no files: the same code runs over a segment's mapping
//! in production ([`MappedSlots`]) and over heap memory in tests and loom models
//! ([`HeapSlots`]). Waiting and waking are the caller's business (see `crate::wait`).
//!
//! A slot carries a 32-bit *stamp* beside its payload: the producer writes the payload, then
//! stores the stamp with Release; the consumer polls the stamp of the slot it expects next.
//! For a small message the stamp and the payload share one cache line, so a message costs one
//! line moving from the producer's core to the consumer's, where polling a shared tail index
//! and then reading the slot would cost two.

pub mod broadcast;
mod storage;

#[cfg(not(shmbus_loom))]
pub use storage::MappedSlots;
pub use storage::{HeapSlots, SlotStorage};

/// The stamp a slot carries once the message with sequence number `seq` is in it. Zeroed memory
/// (stamp 0) never matches a message the consumer expects before the first lap wraps the 32-bit
/// stamp, and a slot's previous message (`seq - capacity`) never matches `seq`.
#[inline(always)]
pub(crate) fn stamp_for(seq: u64) -> u32 {
    (seq as u32).wrapping_add(1)
}

/// The tag of a slot holding message `seq` of `len` bytes: stamp low, length high, so that in
/// memory (little-endian) the stamp is bytes 0..4 and the length bytes 4..8 of the slot.
#[inline(always)]
pub(crate) fn tag(seq: u64, len: u32) -> u64 {
    (len as u64) << 32 | stamp_for(seq) as u64
}
