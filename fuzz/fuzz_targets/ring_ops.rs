//! The broadcast ring over shared memory another process wrote: the writer's words, the reader
//! table and every slot start as arbitrary bytes, and arbitrary bytes are written over them
//! between operations (as a hostile peer would, at any time). A writer and up to four readers
//! then run arbitrary operations. Whatever the bytes say, nothing may panic, loop forever or
//! touch memory outside the segment (ASan watches the buffer's ends), and what the ring hands
//! out stays within the slot: an index below the capacity, a length within the slot size.
#![no_main]

use crossbeam_utils::CachePadded;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shmbus::layout::Geometry;
use shmbus::ring::broadcast::{Peek, Reader, ReaderEntry, Table, Writer, WriterWords};
use shmbus::ring::{MappedSlots, SlotStorage};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Capacity `2 << (cap_shift % 6)`: 2 to 64 slots.
    cap_shift: u8,
    /// Slot size `1 + slot_size`.
    slot_size: u8,
    /// Readers `1 + readers % 4`.
    readers: u8,
    history: u8,
    overwrite: bool,
    /// The segment's first bytes (repeated over the whole of it).
    fill: Vec<u8>,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Claim,
    Commit(u8),
    Publish(u8),
    Peek(u8),
    Release(u8),
    Flush(u8),
    Copy(u8),
    News(u8),
    Scan,
    Join(u8, u8),
    Scribble(u16, u8),
    ScribbleWord(u16, u64),
}

/// The segment: the writer's words, the table, the slots, in one 128-aligned allocation.
struct Segment {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `fuzz_target!` below.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

fuzz_target!(|input: Input| {
    let capacity = 2u64 << (input.cap_shift % 6);
    let slot_size = 1 + input.slot_size as u64;
    let readers = 1 + (input.readers % 4) as usize;
    let history = input.history as u64 % capacity;
    let g = Geometry::for_config(capacity, slot_size, 8, 0, 1).expect("a small shape");
    let words_at = 0usize;
    let table_at = size_of::<CachePadded<WriterWords>>();
    let slots_at = table_at + readers * size_of::<CachePadded<ReaderEntry>>();
    let len = slots_at + g.lane_size() as usize;
    let layout = Layout::from_size_align(len, 128).expect("small");
    // SAFETY: `len` is not zero.
    let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation failed");
    let segment = Segment { ptr, layout };
    let base = segment.ptr.as_ptr();
    if !input.fill.is_empty() {
        for i in 0..len {
            // SAFETY: `i < len`, inside the allocation.
            unsafe { base.add(i).write(input.fill[i % input.fill.len()]) };
        }
    }
    // The casts below: the allocation is 128-aligned and large enough for each part at its
    // offset; every part is made of atomics, valid for any bytes; nothing else runs, so the
    // plain writes of `Scribble` never race the atomic accesses.
    // SAFETY: `words_at` is inside the allocation.
    let words = unsafe { base.add(words_at) } as *const WriterWords;
    // SAFETY: `table_at` is inside the allocation.
    let entries = unsafe { base.add(table_at) } as *const CachePadded<ReaderEntry>;
    // SAFETY: `readers` entries at `entries`, alive as long as `segment`.
    let table = unsafe { Table::new(entries, readers) };
    let slots = || {
        // SAFETY: the slot array of geometry `g` lies at `slots_at`, 128-aligned, inside the
        // allocation, which outlives every user of it (dropped last, below).
        unsafe { MappedSlots::new(NonNull::new(base.add(slots_at)).unwrap(), &g) }
    };
    // SAFETY: words, table and slots as above; the only writer.
    let mut writer = unsafe { Writer::new(words, table, slots(), history, input.overwrite) };
    let mut rs: Vec<Option<Reader<MappedSlots>>> = (0..readers).map(|_| None).collect();
    let mut claimed = false;
    let mut copy = vec![0u64; (slot_size as usize).div_ceil(8)];
    let word_src = vec![0x5a5a_5a5a_5a5a_5a5au64; copy.len()];
    let check = |peek: Peek| {
        if let Peek::Ready(r) = peek {
            assert!(
                (r.index as u64) < capacity,
                "index {} of {capacity}",
                r.index
            );
            assert!(
                r.len as u64 <= slot_size,
                "length {} in a {slot_size}-byte slot",
                r.len
            );
        }
    };
    for op in input.ops.iter().take(512) {
        match *op {
            Op::Claim if !input.overwrite => claimed |= writer.try_claim().is_some(),
            Op::Commit(len) if claimed => {
                writer.commit(len as u32 % (slot_size as u32 + 1));
                claimed = false;
            }
            Op::Publish(len) if input.overwrite => {
                writer.publish_words(&word_src, len as u32 % (slot_size as u32 + 1));
            }
            Op::Scan => {
                writer.has_space();
            }
            Op::Join(k, h) => {
                let k = k as usize % readers;
                if rs[k].is_none() {
                    // SAFETY: entry `k` is this reader's alone (one reader per entry here).
                    rs[k] = unsafe { Reader::join(words, &**entries.add(k), slots(), h as u64) };
                }
            }
            Op::Peek(k) => {
                if let Some(r) = &mut rs[k as usize % readers] {
                    let peek = r.peek();
                    check(peek);
                    if let Peek::Ready(ready) = peek {
                        // Read the message in place, as a sample does: every byte it claims.
                        let p = r.storage().payload_ptr(ready.index);
                        for i in 0..ready.len as usize {
                            // SAFETY: within the slot (checked above); ASan checks it too.
                            unsafe { p.add(i).read_volatile() };
                        }
                    }
                }
            }
            Op::Release(k) => {
                if let Some(r) = &mut rs[k as usize % readers] {
                    if !matches!(r.peek(), Peek::Empty) {
                        r.release();
                    }
                }
            }
            Op::Flush(k) => {
                if let Some(r) = &mut rs[k as usize % readers] {
                    r.flush();
                }
            }
            Op::Copy(k) => {
                if let Some(r) = &mut rs[k as usize % readers] {
                    check(r.read_copy(&mut copy));
                }
            }
            Op::News(k) => {
                if let Some(r) = &rs[k as usize % readers] {
                    r.has_news();
                }
            }
            Op::Scribble(at, byte) => {
                // SAFETY: inside the allocation; no other access runs meanwhile.
                unsafe { base.add(at as usize % len).write(byte) };
            }
            Op::ScribbleWord(at, word) => {
                let at = (at as usize % len) & !7;
                if at + 8 <= len {
                    // SAFETY: 8-aligned, inside the allocation; nothing else runs.
                    unsafe { (base.add(at) as *mut u64).write(word) };
                }
            }
            _ => {}
        }
    }
    assert_eq!(writer.storage().capacity(), capacity);
    // `segment` was declared before the ring's users, so it is dropped after them.
});
