//! A model broadcast ring: the writer and readers of `shmbus::ring::broadcast` over heap slots,
//! with `u64` messages.

use crossbeam_utils::CachePadded;
use loom::thread;
use shmbus::ring::broadcast::{evictor_of, Peek, Reader, ReaderEntry, Table, Writer, WriterWords};
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

/// The ring's slots, shared by its sides.
pub type Slots = Arc<HeapSlots>;

/// What a ring's sides point into: the writer's words and the reader table. Every side holds
/// an `Arc` of it, so it outlives them all.
#[derive(Debug)]
pub struct Shared {
    words: WriterWords,
    entries: Box<[CachePadded<ReaderEntry>]>,
}

/// A ring's parts, before any side is attached: make the writer with [`Ring::writer`] and the
/// readers with [`Ring::join`] (in any thread, at any time).
#[derive(Clone, Debug)]
pub struct Ring {
    shared: Arc<Shared>,
    slots: Slots,
}

/// How the writer treats a reader that falls behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Wait for the slowest reader (the bus's Block and Fail), keeping `history` messages.
    Block {
        /// Messages kept for joiners.
        history: u64,
    },
    /// Never wait; readers copy and validate (the bus's Overwrite).
    Overwrite,
}

impl Ring {
    /// A fresh ring of `capacity` slots with a table of `readers` entries. Call inside
    /// `loom::model`: its atomics and cells belong to one execution.
    pub fn new(capacity: usize, readers: usize) -> Self {
        Self::with_slots(HeapSlots::new(capacity), readers)
    }

    /// The same, with readers giving slots back `batch` at a time, as mapped rings do.
    pub fn batched(capacity: usize, readers: usize, batch: u64) -> Self {
        Self::with_slots(HeapSlots::with_release_batch(capacity, batch), readers)
    }

    fn with_slots(slots: HeapSlots, readers: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                words: WriterWords::new(),
                entries: (0..readers)
                    .map(|_| CachePadded::new(ReaderEntry::new()))
                    .collect(),
            }),
            slots: Arc::new(slots),
        }
    }

    /// The ring's only writer.
    pub fn writer(&self, mode: Mode) -> Tx {
        // SAFETY: the table is the ring's, kept alive by `Tx::_shared`.
        let table = unsafe { Table::new(self.shared.entries.as_ptr(), self.shared.entries.len()) };
        let (history, overwrite) = match mode {
            Mode::Block { history } => (history, false),
            Mode::Overwrite => (0, true),
        };
        // SAFETY: `Tx` keeps the shared words alive for the writer's life; the slots are this
        // ring's; the models make one writer per ring; history < capacity (the models' choice).
        let writer = unsafe {
            Writer::new(
                &self.shared.words,
                table,
                self.slots.clone(),
                history,
                overwrite,
            )
        };
        Tx {
            writer,
            _shared: self.shared.clone(),
        }
    }

    /// Attach a reader in entry `index` (taken for owner `index + 1`), starting `history`
    /// messages back.
    ///
    /// # Panics
    /// If the entry is taken.
    pub fn join(&self, index: usize, history: u64) -> Rx {
        let entry = &self.shared.entries[index];
        assert!(entry.try_take(index as u64 + 1), "entry {index} is taken");
        // SAFETY: `Rx` keeps the entry and words alive; the entry is ours (taken above).
        let reader =
            unsafe { Reader::join(&self.shared.words, &**entry, self.slots.clone(), history) }
                .expect("a model's writer moves its floor a few times at most");
        Rx {
            reader,
            owner: index as u64 + 1,
            _shared: self.shared.clone(),
        }
    }
}

impl Ring {
    /// Entry `index` of the reader table, for models that drive it directly.
    pub fn entry(&self, index: usize) -> &ReaderEntry {
        &self.shared.entries[index]
    }

    /// Attach a reader in entry `index` for `owner`, as the bus does when the entry's holder
    /// `dead` is gone: take it over from `dead`, or, if an eviction freed it meanwhile, take it
    /// free, waiting (yielding) while the eviction is under way. `None` if a live reader holds
    /// it.
    pub fn take_over(&self, index: usize, dead: u64, owner: u64) -> Option<Rx> {
        self.take_over_forgetting(index, dead, owner, |_| {})
    }

    /// [`Ring::take_over`], handing the wait marks that `dead` left to `forget` when it takes
    /// the entry over from it (the bus then takes them off the topic's wait cell).
    pub fn take_over_forgetting(
        &self,
        index: usize,
        dead: u64,
        owner: u64,
        forget: impl Fn(u32),
    ) -> Option<Rx> {
        let entry = &self.shared.entries[index];
        loop {
            if let Some(marks) = entry.take_over(dead, owner) {
                forget(marks);
                break;
            }
            if entry.try_take(owner) {
                break;
            }
            if evictor_of(entry.owner()).is_none() {
                return None;
            }
            thread::yield_now();
        }
        // SAFETY: `Rx` keeps the entry and words alive; the entry is ours (taken above).
        let reader = unsafe { Reader::join(&self.shared.words, &**entry, self.slots.clone(), 0) }
            .expect("a model's writer moves its floor a few times at most");
        Some(Rx {
            reader,
            owner,
            _shared: self.shared.clone(),
        })
    }
}

/// A ring of `capacity` slots with one reader attached from the start: the SPSC case.
pub fn ring(capacity: usize) -> (Tx, Rx) {
    let ring = Ring::new(capacity, 1);
    let rx = ring.join(0, 0);
    (ring.writer(Mode::Block { history: 0 }), rx)
}

/// The same, with the reader giving slots back `batch` at a time.
pub fn ring_batched(capacity: usize, batch: u64) -> (Tx, Rx) {
    let ring = Ring::batched(capacity, 1, batch);
    let rx = ring.join(0, 0);
    (ring.writer(Mode::Block { history: 0 }), rx)
}

/// The writing side of a model ring.
#[derive(Debug)]
pub struct Tx {
    // Declared before what it points into, so that it is dropped first.
    writer: Writer<Slots>,
    _shared: Arc<Shared>,
}

/// A reading side of a model ring.
#[derive(Debug)]
pub struct Rx {
    reader: Reader<Slots>,
    owner: u64,
    _shared: Arc<Shared>,
}

impl Tx {
    /// The library's writer, for models that drive it step by step.
    pub fn writer(&mut self) -> &mut Writer<Slots> {
        &mut self.writer
    }

    /// Block: write message `next_seq()` (its value is `value_of(seq)`) if a slot is free:
    /// claim, write in place, commit. Returns whether it was sent.
    pub fn try_send(&mut self) -> bool {
        let seq = self.writer.next_seq();
        let Some(index) = self.writer.try_claim() else {
            return false;
        };
        self.writer.storage().with_payload_mut(index, |payload| {
            // SAFETY: a heap slot's payload is one 8-aligned `u64`, and the claimed slot is the
            // writer's until `commit` (loom's cell checks that no reader is in it).
            unsafe { (payload as *mut u64).write(value_of(seq)) }
        });
        self.writer.commit(MESSAGE_LEN);
        true
    }

    /// Block: send the next message, yielding to the scheduler while the ring is full.
    pub fn send(&mut self) {
        while !self.try_send() {
            thread::yield_now();
        }
    }

    /// Block: write up to `max` messages as one run (`Writer::write_run`), as many as there is
    /// room for; returns how many.
    pub fn try_send_run(&mut self, max: usize) -> usize {
        let mut seq = self.writer.next_seq();
        self.writer.write_run(max, MESSAGE_LEN, |payload| {
            // SAFETY: as in `try_send`: the run's slot is the writer's until its commit.
            unsafe { (payload as *mut u64).write(value_of(seq)) };
            seq += 1;
        })
    }

    /// Overwrite: publish the next message, never waiting.
    pub fn overwrite(&mut self) {
        let seq = self.writer.next_seq();
        self.writer.publish_words(&[value_of(seq)], MESSAGE_LEN);
    }

    /// Whether a slot is free now (scans the readers).
    pub fn has_space(&mut self) -> bool {
        self.writer.has_space()
    }
}

impl Rx {
    /// Block: read the next message in place and release its slot, if one is there; returns
    /// its sequence number and value. Finding none, gives back every slot read (`flush`).
    ///
    /// # Panics
    /// If the ring reports a bad length or a wrong sequence number: an honest writer never
    /// causes either.
    pub fn try_recv(&mut self) -> Option<(u64, u64)> {
        let expected_seq = self.reader.next_seq();
        let ready = match self.reader.peek() {
            Peek::Empty => {
                // As the bus does before it waits: give back every slot read.
                self.reader.flush();
                return None;
            }
            Peek::Ready(ready) => ready,
            bad @ Peek::BadLength { .. } => panic!("an honest writer gave {bad:?}"),
        };
        assert_eq!(ready.seq, expected_seq, "messages out of order");
        assert_eq!(ready.len, MESSAGE_LEN, "length of message {}", ready.seq);
        let value = self.reader.storage().with_payload(ready.index, |payload| {
            // SAFETY: a heap slot's payload is one 8-aligned `u64`; the stamp said the message
            // is in it, so the writer wrote it before (loom's cell checks that it is not still
            // writing).
            unsafe { (payload as *const u64).read() }
        });
        let _published = self.reader.release();
        Some((ready.seq, value))
    }

    /// Block: read up to `max` messages as one run (`Reader::read_run`), pushing each one's
    /// sequence number and value to `out`; returns how many.
    pub fn try_recv_run(&mut self, max: usize, out: &mut Vec<(u64, u64)>) -> usize {
        let mut seq = self.reader.next_seq();
        let (n, _freed) = self.reader.read_run(max, MESSAGE_LEN, |payload| {
            // SAFETY: as in `try_recv`: the stamp said the message is in the slot.
            out.push((seq, unsafe { (payload as *const u64).read() }));
            seq += 1;
        });
        n
    }

    /// Block: receive the next message, yielding to the scheduler while the ring is empty.
    pub fn recv(&mut self) -> (u64, u64) {
        loop {
            if let Some(message) = self.try_recv() {
                return message;
            }
            thread::yield_now();
        }
    }

    /// Overwrite: copy the next message out, if one is there (skipping what was overwritten).
    pub fn try_copy(&mut self) -> Option<(u64, u64)> {
        let mut word = [0u64; 1];
        match self.reader.read_copy(&mut word) {
            Peek::Empty => None,
            Peek::Ready(ready) => {
                assert_eq!(ready.len, MESSAGE_LEN);
                Some((ready.seq, word[0]))
            }
            bad @ Peek::BadLength { .. } => panic!("an honest writer gave {bad:?}"),
        }
    }

    /// The library's reader.
    pub fn reader(&self) -> &Reader<Slots> {
        &self.reader
    }

    /// The ring's slots, for models that bypass the protocol.
    pub fn storage(&self) -> &Slots {
        self.reader.storage()
    }

    /// Whether the next message is there (its stamp is loaded with Acquire).
    pub fn has_message(&self) -> bool {
        !matches!(self.reader.peek(), Peek::Empty)
    }

    /// Leave the table (the writer stops waiting for this reader) and free the entry.
    pub fn leave(self) {
        self.reader.leave_entry(self.owner);
    }
}
