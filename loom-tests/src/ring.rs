//! A model SPSC ring: both sides of `shmbus::ring::spsc` over heap slots, with `u64` messages.

use loom::thread;
use shmbus::ring::spsc::{Consumer, Peek, Producer, SpscCursors};
use shmbus::ring::{HeapSlots, SlotStorage};
use std::sync::Arc;

/// Bytes of every model message: one `u64`, the whole of a heap slot.
pub const MESSAGE_LEN: u32 = 8;

/// The payload of message `seq`: never zero (the value of a slot never written) and different
/// for every sequence number, so reading the previous lap's message or unwritten bytes fails the
/// value check even where no race is involved.
pub fn value_of(seq: u64) -> u64 {
    0x5eed_0000_0000_0000 | (seq + 1)
}

/// The ring's slots, shared by its two sides.
pub type Slots = Arc<HeapSlots>;

/// The producing side of a model ring.
#[derive(Debug)]
pub struct Tx {
    // Declared before the cursors it points into, so that it is dropped first.
    producer: Producer<Slots>,
    _cursors: Arc<SpscCursors>,
}

/// The consuming side of a model ring.
#[derive(Debug)]
pub struct Rx {
    consumer: Consumer<Slots>,
    _cursors: Arc<SpscCursors>,
}

/// A fresh ring of `capacity` slots. Call inside `loom::model`: its atomics and cells belong to
/// one execution.
pub fn ring(capacity: usize) -> (Tx, Rx) {
    ring_with(HeapSlots::new(capacity))
}

/// A fresh ring whose consumer gives slots back `batch` at a time, as mapped rings do.
pub fn ring_batched(capacity: usize, batch: u64) -> (Tx, Rx) {
    ring_with(HeapSlots::with_release_batch(capacity, batch))
}

fn ring_with(slots: HeapSlots) -> (Tx, Rx) {
    let cursors = Arc::new(SpscCursors::new());
    let slots: Slots = Arc::new(slots);
    // SAFETY: `Tx` keeps the cursors alive for the producer's life; the slots are this ring's;
    // this is the ring's only producer.
    let producer = unsafe { Producer::new(&*cursors, slots.clone()) };
    // SAFETY: as above, for the only consumer.
    let consumer = unsafe { Consumer::new(&*cursors, slots) };
    let tx = Tx {
        producer,
        _cursors: cursors.clone(),
    };
    let rx = Rx {
        consumer,
        _cursors: cursors,
    };
    (tx, rx)
}

impl Tx {
    /// The library's producer, for models that drive it step by step.
    pub fn producer(&mut self) -> &mut Producer<Slots> {
        &mut self.producer
    }

    /// Write message `next_seq()` (its value is `value_of(seq)`) if a slot is free: claim,
    /// write in place, commit. Returns whether it was sent.
    pub fn try_send(&mut self) -> bool {
        let seq = self.producer.next_seq();
        let Some(index) = self.producer.try_claim() else {
            return false;
        };
        self.producer.storage().with_payload_mut(index, |payload| {
            // SAFETY: a heap slot's payload is one 8-aligned `u64`, and the claimed slot is the
            // producer's until `commit` (loom's cell checks that the consumer is not in it).
            unsafe { (payload as *mut u64).write(value_of(seq)) }
        });
        self.producer.commit(MESSAGE_LEN);
        true
    }

    /// Send the next message, yielding to the scheduler while the ring is full.
    pub fn send(&mut self) {
        while !self.try_send() {
            thread::yield_now();
        }
    }

    /// Whether a slot is free now (reloads the consumer's head).
    pub fn has_space(&mut self) -> bool {
        self.producer.has_space()
    }
}

impl Rx {
    /// Read the next message in place and release its slot, if one is there; returns its
    /// sequence number and value. Finding none, gives back every slot read (`flush`).
    ///
    /// # Panics
    /// If the ring reports a bad length or a wrong sequence number: an honest producer never
    /// causes either.
    pub fn try_recv(&mut self) -> Option<(u64, u64)> {
        let expected_seq = self.consumer.next_seq();
        let ready = match self.consumer.peek() {
            Peek::Empty => {
                // As the bus does before it waits: give back every slot read.
                self.consumer.flush();
                return None;
            }
            Peek::Ready(ready) => ready,
            bad @ Peek::BadLength { .. } => panic!("an honest producer gave {bad:?}"),
        };
        assert_eq!(ready.seq, expected_seq, "messages out of order");
        assert_eq!(ready.len, MESSAGE_LEN, "length of message {}", ready.seq);
        let value = self
            .consumer
            .storage()
            .with_payload(ready.index, |payload| {
                // SAFETY: a heap slot's payload is one 8-aligned `u64`; the stamp said the message is
                // in it, so the producer wrote it before (loom's cell checks that it is not still
                // writing).
                unsafe { (payload as *const u64).read() }
            });
        let _published = self.consumer.release();
        Some((ready.seq, value))
    }

    /// Receive the next message, yielding to the scheduler while the ring is empty.
    pub fn recv(&mut self) -> (u64, u64) {
        loop {
            if let Some(message) = self.try_recv() {
                return message;
            }
            thread::yield_now();
        }
    }

    /// The ring's slots, for models that bypass the protocol.
    pub fn storage(&self) -> &Slots {
        self.consumer.storage()
    }

    /// Whether the next message is there (its stamp is loaded with Acquire).
    pub fn has_message(&self) -> bool {
        !matches!(self.consumer.peek(), Peek::Empty)
    }
}
