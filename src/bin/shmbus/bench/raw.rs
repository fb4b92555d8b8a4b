//! The raw limits over shared memory that the bench measures shmbus against: the simplest
//! code that moves a message between two processes through a shared mapping. It is written
//! here, not in the library, so that it shares none of the library's code or mistakes.
//!
//! - `raw-cacheline`: one counter on one cache line, bounced between the processes by
//!   spinning (the parent stores an odd value, the child answers with the next even one). No
//!   polling round trip can beat one cache line crossing twice.
//! - `raw-message-64B`: a 64-byte message each way, each with a tag on a line apart, as a
//!   ring must place a whole line's message: what a 64-byte round trip over two topics moves.
//! - `raw-futex`: a bare futex ping-pong on one shared word. Both sides always wake and
//!   sleep, without the private flag, so each round trip is two wake-ups through the kernel:
//!   the floor for a blocking round trip.
//! - `raw-ring-*`: the simplest single-producer single-consumer copy loop: a head and a tail
//!   index each on its own cache line, each side caching the other's index and reloading it
//!   only when the ring looks full or empty, and a power-of-two array of fixed-size elements.
//!   The ceiling for ring throughput with the same slot size.
//!
//! Each baseline runs on a memfd mapping that the parent creates and the child inherits by
//! descriptor number. It must never share a line or a page with anything else, and it must
//! stay the simplest correct code: it is a yardstick, not a product.

// The baselines are deliberately minimal code outside the library, so they name std's atomics
// directly instead of going through the library's loom shim.
#![allow(clippy::disallowed_types)]

use std::fs::File;
use std::hint::{black_box, spin_loop};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use memmap2::{MmapOptions, MmapRaw};
use rustix::fs::{fstat, ftruncate, memfd_create, MemfdFlags};
use rustix::io::Errno;
use rustix::thread::futex;

use super::{Ctx, RoundTrip, Stream, StreamBlock, STREAM_CAPACITY};
use crate::error::{bail, Context, Result};
use crate::peer::{take_inherited_fd, Control, InheritedFd, Peer};
use crate::stats::timed_round_trips;

/// The size of the cacheline and futex regions: one page.
const PAGE: usize = 4096;

/// A shared mapping of a memfd: created by the parent, inherited by the child.
struct Region {
    fd: OwnedFd,
    map: MmapRaw,
}

impl Region {
    /// Creates a zero-filled memfd of `len` bytes and maps it.
    fn create(name: &str, len: usize) -> Result<Region> {
        let fd = memfd_create(name, MemfdFlags::CLOEXEC).context("creating a memfd")?;
        ftruncate(&fd, len as u64).context("sizing a memfd")?;
        Region::map(fd, len)
    }

    /// Maps the memfd the parent passed as descriptor number `fd`, which must be `len` bytes.
    fn inherit(fd: RawFd, len: usize) -> Result<Region> {
        let fd = take_inherited_fd(fd)?;
        let size = fstat(&fd)
            .context("reading the size of the shared memfd")?
            .st_size;
        if u64::try_from(size).ok() != Some(len as u64) {
            bail!("the shared memfd has {size} bytes, expected {len}");
        }
        Region::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Region> {
        let file = File::from(fd);
        // MAP_POPULATE: no page faults in the measured loops.
        let map = MmapOptions::new()
            .len(len)
            .populate()
            .map_raw(&file)
            .context("mapping a memfd")?;
        Ok(Region {
            fd: file.into(),
            map,
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The atomic `u64` at `offset`.
    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.map.len());
        // SAFETY: the mapping is page-aligned and `offset` is a multiple of 8, so the pointer
        // is aligned for AtomicU64 and in bounds (asserted). The bytes start as zeros (memfd)
        // and any bit pattern is a valid u64. The reference lives no longer than `self`, which
        // keeps the mapping. Both processes touch these 8 bytes only through atomics.
        unsafe { &*self.map.as_mut_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The atomic `u32` at `offset`.
    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.map.len());
        // SAFETY: as in `u64_at`, with 4-byte alignment.
        unsafe { &*self.map.as_mut_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The first byte at `offset` (bounds-checked).
    fn ptr_at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.map.len());
        // SAFETY: `offset` is at most the mapping's length, so the result is in bounds or one
        // past the end, as `add` requires.
        unsafe { self.map.as_mut_ptr().add(offset) }
    }
}

/// Creates a region, starts the peer for `case` on it, and waits until the peer is ready.
fn start_with_region(ctx: &Ctx, case: &str, len: usize) -> Result<(Region, Peer)> {
    let region = Region::create(&format!("shmbus-bench-{case}"), len)?;
    let inherited = InheritedFd::new(region.fd())?;
    let mut peer = ctx.spawn(case, &["--fd".into(), inherited.number().to_string()])?;
    drop(inherited);
    peer.expect("ready")?;
    Ok((region, peer))
}

// ---------------------------------------------------------------------------------------
// raw-cacheline

/// Where the answer goes: on the ping's own line (`raw-cacheline`, the hardware's limit), or
/// on a line of its own (`raw-two-lines`: what any request/response over two topics must
/// move, one line each way; `raw-ring-lines`: the same, each message on the next of
/// [`RING_LINES`] lines, as a ring places it). 256 bytes apart (2 KiB for the ring), so that
/// no adjacent-line prefetch pairs them.
pub fn answer_offset(case: &str) -> usize {
    match case {
        "raw-two-lines" => 256,
        "raw-ring-lines" => 2048,
        _ => 0,
    }
}

/// Lines each way in `raw-ring-lines`: the ping-pong topics' capacity.
const RING_LINES: usize = 16;

/// Lines the ping and the answer rotate through: 1, or [`RING_LINES`] for `raw-ring-lines`.
fn lines_of(case: &str) -> usize {
    if case == "raw-ring-lines" {
        RING_LINES
    } else {
        1
    }
}

/// The parent side of `raw-cacheline`, `raw-two-lines` and `raw-ring-lines`.
pub struct CacheLine {
    region: Region,
    peer: Peer,
    /// Offset of the answer word: see [`answer_offset`].
    answer: usize,
    /// Lines each way: see [`lines_of`].
    lines: usize,
    /// The counter's value between round trips: always even.
    value: u64,
}

impl CacheLine {
    /// Starts the child and waits for it.
    pub fn start(ctx: &Ctx, case: &'static str) -> Result<CacheLine> {
        let (region, peer) = start_with_region(ctx, case, PAGE)?;
        Ok(CacheLine {
            region,
            peer,
            answer: answer_offset(case),
            lines: lines_of(case),
            value: 0,
        })
    }
}

/// The words round trip `value / 2` uses: the ping's and the answer's.
fn words_at(region: &Region, answer: usize, lines: usize, value: u64) -> (&AtomicU64, &AtomicU64) {
    let line = (value / 2) as usize % lines * 64;
    (region.u64_at(line), region.u64_at(answer + line))
}

impl RoundTrip for CacheLine {
    fn block(&mut self, warm: u64, n: u64, hist: &mut Histogram<u64>) -> Result<()> {
        self.peer.run(warm + n)?;
        let (region, answer_at, lines) = (&self.region, self.answer, self.lines);
        let mut value = self.value;
        timed_round_trips(warm, n, hist, |_| {
            let (line, answer) = words_at(region, answer_at, lines, value);
            // Release pairs with the child's Acquire load: nothing is carried, but it keeps
            // the round trip as strong as a real message's.
            line.store(value + 1, Ordering::Release);
            // Acquire pairs with the child's Release store of the answer.
            while answer.load(Ordering::Acquire) != value + 2 {
                spin_loop();
            }
            value += 2;
            Ok(())
        })?;
        self.value = value;
        self.peer.expect("done")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of `raw-cacheline`, `raw-two-lines` and `raw-ring-lines`: answers each odd
/// value with the next even one.
pub fn cacheline_peer(ctl: &mut Control, fd: RawFd, case: &str) -> Result<()> {
    let region = Region::inherit(fd, PAGE)?;
    let (answer_at, lines) = (answer_offset(case), lines_of(case));
    ctl.reply("ready")?;
    let mut value = 0u64;
    while let Some(n) = ctl.next_run()? {
        for _ in 0..n {
            let (line, answer) = words_at(&region, answer_at, lines, value);
            // Acquire pairs with the parent's Release store of the ping.
            while line.load(Ordering::Acquire) != value + 1 {
                spin_loop();
            }
            // Release pairs with the parent's Acquire load of the answer.
            answer.store(value + 2, Ordering::Release);
            value += 2;
        }
        ctl.reply("done")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// raw-message-64B

/// Slots each way in `raw-message-64B`, as in the ping-pong topics.
const MESSAGE_SLOTS: usize = 16;
/// Words in a message of `raw-message-64B`.
const MESSAGE_WORDS: usize = 8;
/// Where each direction's slots start: 2 KiB apart, the parent's first.
const MESSAGE_DIRECTION: usize = 2048;
/// Where a direction's tags start, after its slots (one 8-byte tag a slot, two lines of them).
const MESSAGE_TAGS: usize = MESSAGE_SLOTS * MESSAGE_WORDS * 8;

/// The least code that carries a 64-byte message each way over shared memory and knows when
/// it has come (`raw-message-64B`): in each direction 16 slots of a line each and, apart, a
/// tag a slot (as a ring of 64-byte messages places them: a whole message cannot share its
/// line with its tag). The sender writes the eight words, then the tag (Release); the receiver
/// spins on the tag, fetching the slot's line meanwhile (`prefetcht0`: the best of the
/// layouts tried, see `ring::storage`'s `prepare_read`), then reads the eight words. Any
/// 64-byte round trip over two topics moves at least this.
pub struct RawMessage {
    region: Region,
    peer: Peer,
    /// Round trips done: message `i` goes out with the number `2 i + 1` and comes back as
    /// `2 i + 2`.
    done: u64,
}

impl RawMessage {
    /// Starts the child and waits for it.
    pub fn start(ctx: &Ctx) -> Result<RawMessage> {
        let (region, peer) = start_with_region(ctx, "raw-message-64B", PAGE)?;
        Ok(RawMessage {
            region,
            peer,
            done: 0,
        })
    }
}

/// Sends `number` as message `i` in `direction` (0: the parent's, 1: the child's).
fn send_message(region: &Region, direction: usize, i: u64, number: u64) {
    let base = direction * MESSAGE_DIRECTION;
    let slot = i as usize % MESSAGE_SLOTS;
    for w in 0..MESSAGE_WORDS {
        region
            .u64_at(base + (slot * MESSAGE_WORDS + w) * 8)
            .store(number, Ordering::Relaxed);
    }
    // Release pairs with the receiver's Acquire load of the tag: the words before it.
    region
        .u64_at(base + MESSAGE_TAGS + slot * 8)
        .store(number, Ordering::Release);
}

/// Waits for message `i` in `direction`, which must carry `number` in all its words.
fn receive_message(region: &Region, direction: usize, i: u64, number: u64) -> Result<()> {
    let base = direction * MESSAGE_DIRECTION;
    let slot = i as usize % MESSAGE_SLOTS;
    let words = base + slot * MESSAGE_WORDS * 8;
    let tag = region.u64_at(base + MESSAGE_TAGS + slot * 8);
    // Acquire pairs with the sender's Release store of the tag.
    while tag.load(Ordering::Acquire) != number {
        prefetch(region.ptr_at(words));
        spin_loop();
    }
    let mut torn = false;
    for w in 0..MESSAGE_WORDS {
        torn |= region.u64_at(words + w * 8).load(Ordering::Relaxed) != number;
    }
    if torn {
        bail!("raw-message-64B: message {i} was torn");
    }
    Ok(())
}

/// Fetches the line at `p` for reading, without waiting for it.
#[inline(always)]
fn prefetch(p: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads or writes nothing.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl RoundTrip for RawMessage {
    fn block(&mut self, warm: u64, n: u64, hist: &mut Histogram<u64>) -> Result<()> {
        self.peer.run(warm + n)?;
        let region = &self.region;
        let mut i = self.done;
        timed_round_trips(warm, n, hist, |_| {
            send_message(region, 0, i, 2 * i + 1);
            receive_message(region, 1, i, 2 * i + 2)?;
            i += 1;
            Ok(())
        })?;
        self.done = i;
        self.peer.expect("done")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of `raw-message-64B`: answers message `2 i + 1` with `2 i + 2`.
pub fn message_peer(ctl: &mut Control, fd: RawFd) -> Result<()> {
    let region = Region::inherit(fd, PAGE)?;
    ctl.reply("ready")?;
    let mut i = 0u64;
    while let Some(n) = ctl.next_run()? {
        for _ in 0..n {
            receive_message(&region, 0, i, 2 * i + 1)?;
            send_message(&region, 1, i, 2 * i + 2);
            i += 1;
        }
        ctl.reply("done")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// raw-futex

/// The futex word's states. It starts at 0; the parent moves it to `PING`, the child to
/// `PONG`, and each sleeps while the word is not the state it waits for.
const PING: u32 = 1;
const PONG: u32 = 2;

/// Sleeps on `word` while it holds `seen`. A spurious return, a changed value (`EAGAIN`) and
/// a signal (`EINTR`) all just send the caller back to re-read the word.
fn futex_wait(word: &AtomicU32, seen: u32) -> Result<()> {
    // No FUTEX_PRIVATE_FLAG: the word is shared with another process.
    match futex::wait(word, futex::Flags::empty(), seen, None) {
        Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(()),
        Err(e) => Err(e).context("futex wait"),
    }
}

/// Wakes the other process, whether or not it sleeps: the bare ping-pong always pays the
/// wake-up syscall.
fn futex_wake(word: &AtomicU32) -> Result<()> {
    futex::wake(word, futex::Flags::empty(), 1).context("futex wake")?;
    Ok(())
}

/// Waits until `word` holds `want`.
fn futex_wait_for(word: &AtomicU32, want: u32) -> Result<()> {
    loop {
        // Acquire pairs with the other side's Release store of `want`.
        let seen = word.load(Ordering::Acquire);
        if seen == want {
            return Ok(());
        }
        // The kernel sleeps only if the word still holds `seen`, so a store and wake between
        // the load above and the sleep cannot be lost.
        futex_wait(word, seen)?;
    }
}

/// The parent side of `raw-futex`.
pub struct Futex {
    region: Region,
    peer: Peer,
}

impl Futex {
    /// Starts the child and waits for it.
    pub fn start(ctx: &Ctx) -> Result<Futex> {
        let (region, peer) = start_with_region(ctx, "raw-futex", PAGE)?;
        Ok(Futex { region, peer })
    }
}

impl RoundTrip for Futex {
    fn block(&mut self, warm: u64, n: u64, hist: &mut Histogram<u64>) -> Result<()> {
        self.peer.run(warm + n)?;
        let word = self.region.u32_at(0);
        timed_round_trips(warm, n, hist, |_| {
            // Release pairs with the Acquire load in the child's `futex_wait_for`.
            word.store(PING, Ordering::Release);
            futex_wake(word)?;
            futex_wait_for(word, PONG)
        })?;
        self.peer.expect("done")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of `raw-futex`: answers each `PING` with `PONG`.
pub fn futex_peer(ctl: &mut Control, fd: RawFd) -> Result<()> {
    let region = Region::inherit(fd, PAGE)?;
    let word = region.u32_at(0);
    ctl.reply("ready")?;
    while let Some(n) = ctl.next_run()? {
        for _ in 0..n {
            futex_wait_for(word, PING)?;
            // Release pairs with the Acquire load in the parent's `futex_wait_for`.
            word.store(PONG, Ordering::Release);
            futex_wake(word)?;
        }
        ctl.reply("done")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// raw-ring

/// Where the producer's index lives; written by the producer only.
const HEAD: usize = 0;
/// Where the consumer's index lives; written by the consumer only. 128 bytes from `HEAD`,
/// not 64, because x86 prefetches lines in pairs (as crossbeam's `CachePadded` assumes).
const TAIL: usize = 128;
/// Where the slots start.
const SLOTS: usize = 256;
/// Slots in the ring: the same as the shmbus ring it is compared with.
const CAP: u64 = STREAM_CAPACITY as u64;

/// The region's size for elements of `W` words.
const fn ring_len(words: usize) -> usize {
    SLOTS + STREAM_CAPACITY * words * 8
}

/// The parent side of `raw-ring-*`: the producer. An element is `W` words (8 bytes each).
pub struct RawRing<const W: usize> {
    region: Region,
    peer: Peer,
    name: &'static str,
    /// The producer's index: the number of elements ever pushed.
    head: u64,
    /// The last tail the producer read: `head - cached_tail <= CAP` always.
    cached_tail: u64,
}

impl<const W: usize> RawRing<W> {
    /// Starts the consumer and waits for it.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<RawRing<W>> {
        let (region, peer) = start_with_region(ctx, name, ring_len(W))?;
        Ok(RawRing {
            region,
            peer,
            name,
            head: 0,
            cached_tail: 0,
        })
    }
}

impl<const W: usize> Stream for RawRing<W> {
    fn block(&mut self, n: u64) -> Result<StreamBlock> {
        self.peer.run(n)?;
        let head_index = self.region.u64_at(HEAD);
        let tail_index = self.region.u64_at(TAIL);
        let slots = self.region.ptr_at(SLOTS).cast::<[u64; W]>();
        let (mut head, mut cached_tail) = (self.head, self.cached_tail);
        for i in 0..n {
            debug_assert!(head - cached_tail <= CAP);
            if head - cached_tail == CAP {
                // Acquire pairs with the consumer's Release store of the tail, made after it
                // copied the slot out: the slot may be overwritten now.
                cached_tail = tail_index.load(Ordering::Acquire);
                while head - cached_tail == CAP {
                    spin_loop();
                    cached_tail = tail_index.load(Ordering::Acquire);
                }
            }
            let slot = (head % CAP) as usize;
            // SAFETY: `slot < CAP`, and the region holds CAP elements of W words from SLOTS, a
            // multiple of 8 in a page-aligned mapping, so the write is in bounds and aligned.
            // The consumer has released this slot (head - tail < CAP) and reads it only after
            // the Release store of the new head below.
            unsafe { slots.add(slot).write([i; W]) };
            head += 1;
            // Release pairs with the consumer's Acquire load: the element is written first.
            head_index.store(head, Ordering::Release);
        }
        (self.head, self.cached_tail) = (head, cached_tail);
        let reply = self.peer.expect("done")?;
        parse_stream_reply(self.name, &reply, n)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// Reads a consumer's `done <elapsed_ns> <sum>` reply to a block of `n` messages `0..n`, and
/// checks that it saw each message once.
pub fn parse_stream_reply(name: &str, reply: &str, n: u64) -> Result<StreamBlock> {
    let mut fields = reply.split(' ').map(str::parse::<u64>);
    let (Some(Ok(elapsed_ns)), Some(Ok(sum))) = (fields.next(), fields.next()) else {
        bail!("{name}: bad reply {reply:?}");
    };
    let expected = if n % 2 == 0 {
        (n / 2).wrapping_mul(n.wrapping_sub(1))
    } else {
        n.wrapping_mul(n.wrapping_sub(1) / 2)
    };
    if sum != expected {
        bail!("{name}: the consumer's checksum is {sum}, expected {expected}: messages were lost or repeated");
    }
    Ok(StreamBlock {
        intervals: n.saturating_sub(1),
        elapsed_ns: elapsed_ns.max(1),
    })
}

/// The child side of `raw-ring-*`: the consumer. It copies each element out, sums the first
/// words, and times from the first element to the last.
pub fn raw_ring_peer<const W: usize>(ctl: &mut Control, fd: RawFd) -> Result<()> {
    let region = Region::inherit(fd, ring_len(W))?;
    let head_index = region.u64_at(HEAD);
    let tail_index = region.u64_at(TAIL);
    let slots = region.ptr_at(SLOTS).cast::<[u64; W]>();
    // The consumer's index, and the last head it read: `cached_head >= tail` always.
    let (mut tail, mut cached_head) = (0u64, 0u64);
    ctl.reply("ready")?;
    while let Some(n) = ctl.next_run()? {
        let mut sum = 0u64;
        let mut pop = || {
            if tail == cached_head {
                // Acquire pairs with the producer's Release store of the head, made after it
                // wrote the element.
                cached_head = head_index.load(Ordering::Acquire);
                while cached_head == tail {
                    spin_loop();
                    cached_head = head_index.load(Ordering::Acquire);
                }
            }
            let slot = (tail % CAP) as usize;
            // SAFETY: in bounds and aligned as in the producer; the producer published this
            // element (tail < head) and will not overwrite it before the tail moves past it.
            let element = unsafe { slots.add(slot).read() };
            let element = black_box(element);
            sum = sum.wrapping_add(element[0]);
            tail += 1;
            // Release pairs with the producer's Acquire load: the copy is done first.
            tail_index.store(tail, Ordering::Release);
        };
        if n == 0 {
            ctl.reply("done 1 0")?;
            continue;
        }
        pop();
        let start = Instant::now();
        for _ in 1..n {
            pop();
        }
        let elapsed = start.elapsed().as_nanos();
        ctl.reply(&format!("done {elapsed} {sum}"))?;
    }
    Ok(())
}
