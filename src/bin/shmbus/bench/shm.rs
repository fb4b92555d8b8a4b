//! The shmbus cases of the bench, written with the public API only, as a user would.
//!
//! - `shm-poll-*` and `shm-futex-*`: a ping-pong over two topics (`<case>.ping` published
//!   by the parent, `<case>.pong` by the child), with the same `WaitStrategy` on both sides
//!   (see [`wait_of`]). The 8 B and 64 B cases write the whole message into the loaned slot; the 64 KiB
//!   case writes only its first 8 bytes in place, so its latency must not grow with the size.
//! - `shm-stream-*`: the parent publishes, the child receives and copies each message out,
//!   one direction, polling; `shm-stream-slip-*` the same with a [`STREAM_SLIP`] slip (see
//!   `SubscriberBuilder::slip`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use hdrhistogram::Histogram;
use shmbus::{Bus, Publisher, Subscriber, WaitStrategy};

use super::raw::parse_stream_reply;
use super::{Ctx, RoundTrip, Stream, StreamBlock, STREAM_CAPACITY};
use crate::error::{bail, Context, Result};
use crate::peer::{Control, Peer};
use crate::stats::timed_round_trips;

/// Slots in each ping-pong topic: a round trip has one message in flight, so this only has to
/// be small enough that the 64 KiB case stays a few MiB.
const PING_CAPACITY: u64 = 16;

/// The slip of the `shm-stream-slip-*` cases' subscriber.
pub const STREAM_SLIP: Duration = Duration::from_micros(4);

/// How long either side waits for the other to create its topic.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A message type of the bench: what it is called on the wire and how one is written.
pub trait BenchMessage: Pod {
    /// Writes message `i` into a loaned slot: the whole message, or only its first word for
    /// the in-place case.
    fn fill(slot: &mut Self, i: u64);
    /// The number written by `fill`.
    fn number(&self) -> u64;
}

/// An 8-byte message.
pub type Msg8 = u64;

impl BenchMessage for Msg8 {
    fn fill(slot: &mut Self, i: u64) {
        *slot = i;
    }
    fn number(&self) -> u64 {
        *self
    }
}

/// A 64-byte message.
pub type Msg64 = [u64; 8];

impl BenchMessage for Msg64 {
    fn fill(slot: &mut Self, i: u64) {
        *slot = [i; 8];
    }
    fn number(&self) -> u64 {
        self[0]
    }
}

/// A 64 KiB message, of which the bench writes and reads only the first 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Msg64K {
    number: u64,
    rest: [u8; 65536 - 8],
}

impl BenchMessage for Msg64K {
    fn fill(slot: &mut Self, i: u64) {
        slot.number = i;
    }
    fn number(&self) -> u64 {
        self.number
    }
}

/// The wait strategy of a case, from its name: `shm-futex-*` is the default adaptive strategy
/// (spin a little, then sleep), `shm-futex-nospin-*` sleeps at once, so that its round trip
/// takes the futex path every time, as `raw-futex` does.
fn wait_of(case: &str) -> WaitStrategy {
    if case.starts_with("shm-futex-nospin") {
        WaitStrategy::Futex { spin: 0 }
    } else if case.starts_with("shm-futex") {
        WaitStrategy::default()
    } else {
        WaitStrategy::Spin
    }
}

/// Sends message `i` through a loaned slot.
#[inline(always)]
fn publish<T: BenchMessage>(publisher: &mut Publisher<T>, i: u64) -> Result<()> {
    let mut loan = publisher.loan().context("loan")?;
    T::fill(&mut loan, i);
    loan.send();
    Ok(())
}

/// The parent side of a ping-pong case.
pub struct ShmPingPong<T: BenchMessage> {
    name: &'static str,
    ping: Publisher<T>,
    pong: Subscriber<T>,
    peer: Peer,
}

impl<T: BenchMessage> ShmPingPong<T> {
    /// Creates `<case>.ping`, starts the child, and opens the child's `<case>.pong`.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<ShmPingPong<T>> {
        let wait = wait_of(name);
        let ping = ctx
            .bus
            .publisher::<T>(&format!("{name}.ping"))
            .capacity(PING_CAPACITY)
            .wait(wait)
            .create()
            .with_context(|| format!("{name}: creating topic {name}.ping"))?;
        let mut peer = ctx.spawn(name, &[])?;
        peer.expect("ready")?;
        let pong = ctx
            .bus
            .subscriber::<T>(&format!("{name}.pong"))
            .wait(wait)
            .open()
            .with_context(|| format!("{name}: opening topic {name}.pong"))?;
        Ok(ShmPingPong {
            name,
            ping,
            pong,
            peer,
        })
    }
}

impl<T: BenchMessage> RoundTrip for ShmPingPong<T> {
    fn block(&mut self, warm: u64, n: u64, hist: &mut Histogram<u64>) -> Result<()> {
        self.peer.run(warm + n)?;
        let (ping, pong, name) = (&mut self.ping, &mut self.pong, self.name);
        timed_round_trips(warm, n, hist, |i| {
            publish(ping, i)?;
            let echo = pong.recv().context("recv")?;
            if echo.number() != i {
                bail!("{name}: the echo of message {i} is {}", echo.number());
            }
            Ok(())
        })?;
        self.peer.expect("done")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of a ping-pong case: answers each ping with a pong of the same number.
pub fn ping_pong_peer<T: BenchMessage>(ctl: &mut Control, bus: &Bus, case: &str) -> Result<()> {
    let wait = wait_of(case);
    let mut ping = bus
        .subscriber::<T>(&format!("{case}.ping"))
        .wait(wait)
        .open_timeout(OPEN_TIMEOUT)
        .with_context(|| format!("opening topic {case}.ping"))?;
    let mut pong = bus
        .publisher::<T>(&format!("{case}.pong"))
        .capacity(PING_CAPACITY)
        .wait(wait)
        .create()
        .with_context(|| format!("creating topic {case}.pong"))?;
    ctl.reply("ready")?;
    while let Some(n) = ctl.next_run()? {
        for _ in 0..n {
            let i = ping.recv().context("recv")?.number();
            publish(&mut pong, i)?;
        }
        ctl.reply("done")?;
    }
    Ok(())
}

/// The parent side of a stream case: the publisher.
pub struct ShmStream<T: BenchMessage> {
    name: &'static str,
    publisher: Publisher<T>,
    peer: Peer,
}

impl<T: BenchMessage> ShmStream<T> {
    /// Creates `<case>.stream` and starts the subscriber.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<ShmStream<T>> {
        let publisher = ctx
            .bus
            .publisher::<T>(&format!("{name}.stream"))
            .capacity(STREAM_CAPACITY as u64)
            .wait(WaitStrategy::Spin)
            .create()
            .with_context(|| format!("{name}: creating topic {name}.stream"))?;
        let mut peer = ctx.spawn(name, &[])?;
        peer.expect("ready")?;
        Ok(ShmStream {
            name,
            publisher,
            peer,
        })
    }
}

impl<T: BenchMessage> Stream for ShmStream<T> {
    fn block(&mut self, n: u64) -> Result<StreamBlock> {
        self.peer.run(n)?;
        for i in 0..n {
            publish(&mut self.publisher, i)?;
        }
        let reply = self.peer.expect("done")?;
        parse_stream_reply(self.name, &reply, n)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of a stream case: receives, copies each message out, sums the numbers and
/// times from the first message to the last.
pub fn stream_peer<T: BenchMessage>(ctl: &mut Control, bus: &Bus, case: &str) -> Result<()> {
    let mut subscriber = bus
        .subscriber::<T>(&format!("{case}.stream"))
        .wait(WaitStrategy::Spin)
        .slip(if case.contains("-slip-") {
            STREAM_SLIP
        } else {
            Duration::ZERO
        })
        .open_timeout(OPEN_TIMEOUT)
        .with_context(|| format!("opening topic {case}.stream"))?;
    ctl.reply("ready")?;
    while let Some(n) = ctl.next_run()? {
        let mut sum = 0u64;
        let mut receive = || -> Result<()> {
            let sample = subscriber.recv().context("recv")?;
            let message: T = black_box(*sample);
            sum = sum.wrapping_add(message.number());
            Ok(())
        };
        if n == 0 {
            ctl.reply("done 1 0")?;
            continue;
        }
        receive()?;
        let start = Instant::now();
        for _ in 1..n {
            receive()?;
        }
        let elapsed = start.elapsed().as_nanos();
        ctl.reply(&format!("done {elapsed} {sum}"))?;
    }
    Ok(())
}
