//! The shmbus cases of the bench, written with the public API only, as a user would. Each
//! runs on the run's bus in `/dev/shm`, or, for a transport row (`transport.rs`: `unix-64B`,
//! `mmap-poll-64B`, `tcp-stream-64B`, ...), on a bus over that row's transport, with the same
//! calls: the ping-pong and the stream below serve both.
//!
//! - `shm-poll-*` and `shm-futex-*`: a ping-pong over two topics (`<case>.ping` published
//!   by the parent, `<case>.pong` by the child), with the same `WaitStrategy` on both sides
//!   (see [`wait_of`]). The 8 B and 64 B cases write the whole message into the loaned slot; the 64 KiB
//!   case writes only its first 8 bytes in place, so its latency must not grow with the size.
//! - `shm-poll-{1,4}KiB-write8`: the 64 KiB case's twins, for latency against payload size.
//! - `shm-fanout-N-64B`: the ping-pong with N subscribers of the ping, all in the child
//!   process; the child reads the ping through each in turn and answers after the last. With
//!   two CPUs, the subscribers of a fan-out share one: this measures what each more
//!   subscriber costs the round trip, not parallel readers.
//! - `<transport>-64B`, `mmap-*-64B`: the same ping-pong over a transport row's transport; a
//!   copying transport's subscribers use the default strategy, which sleeps in the kernel.
//!   Each side creates the topic it publishes on and names its transport to the other (the
//!   child in its `ready` reply), since a TCP publisher picks its own port. The pipe rows'
//!   pipes are made by the parent, which hands the child its ends when it starts it
//!   (`Place::spawn`): each side's bus is over a `Pipe` taken from its end.
//! - `shm-stream-*`: the parent publishes, the child receives and copies each message out,
//!   one direction, polling; `shm-stream-slip-*` the same with a [`STREAM_SLIP`] slip (see
//!   `SubscriberBuilder::slip`); `shm-stream-batch-*` the same a batch a call
//!   (`Publisher::send_many`, `Subscriber::recv_many`); `shm-stream-2pub-64B` with two
//!   publishers (two lanes of one topic, written in turns by the parent) and one subscriber
//!   that takes them in turns; `<transport>-stream-64B` the same over a transport row's transport, whose subscriber
//!   sleeps in the kernel when it is copying.
//! - `shm-overwrite-publish-Nsub-64B`: the publisher's own rate under `Policy::Overwrite`, timed
//!   by the parent, with N subscribers copying in the child: the publisher never reads a
//!   subscriber's position, so its cost must not grow with N. Back to back, the child's N
//!   subscribers (on one CPU) cannot keep up and are lapped all the time;
//!   `shm-overwrite-burst-Nsub-64B` times bursts of 64 with a pause after each, in which they
//!   catch up: the cost of a publish to subscribers that keep pace.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytemuck::{Pod, Zeroable};
use hdrhistogram::Histogram;
use shmbus::{Bus, Policy, Publisher, Subscriber, WaitStrategy};

use super::raw::parse_stream_reply;
use super::transport::{self, Place};
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

/// Its size.
pub const MSG64_LEN: usize = std::mem::size_of::<Msg64>();

impl BenchMessage for Msg64 {
    fn fill(slot: &mut Self, i: u64) {
        *slot = [i; 8];
    }
    /// Reads the whole message, as a receiver of a 64-byte message would: a message whose
    /// words differ (torn) reads as `u64::MAX`, which no message carries.
    fn number(&self) -> u64 {
        let n = self[0];
        if self[1..].iter().any(|&w| w != n) {
            u64::MAX
        } else {
            n
        }
    }
}

/// A message of `N` words, of which the bench writes and reads only the first.
#[repr(transparent)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Wide<const N: usize>([u64; N]);

impl<const N: usize> BenchMessage for Wide<N> {
    fn fill(slot: &mut Self, i: u64) {
        slot.0[0] = i;
    }
    fn number(&self) -> u64 {
        self.0[0]
    }
}

/// 1 KiB, 8 bytes written.
pub type Msg1K = Wide<{ 1024 / 8 }>;
/// 4 KiB, 8 bytes written.
pub type Msg4K = Wide<{ 4096 / 8 }>;
/// 64 KiB, 8 bytes written.
pub type Msg64K = Wide<{ 65536 / 8 }>;

/// The number of subscribers a `*-N-*` or `*-Nsub-*` case names (1 if it names none).
pub fn readers_of(case: &str) -> usize {
    case.split('-')
        .find_map(|part| part.trim_end_matches("sub").parse().ok())
        .unwrap_or(1)
}

/// The wait strategy of a case, from its name: `*-futex-*` is the default adaptive strategy
/// (spin a little, then sleep), `*-futex-nospin-*` sleeps at once, so that its round trip
/// takes the futex path every time, as `raw-futex` does; the other ring cases poll. A case over
/// a copying transport (a row of `transport.rs`) receives with the default strategy: it sleeps
/// in the kernel until its descriptor is readable, as the raw primitive beside it does.
fn wait_of(case: &str) -> WaitStrategy {
    if transport::row(case).is_some_and(|r| r.copying()) {
        WaitStrategy::default()
    } else if case.contains("-futex-nospin") {
        WaitStrategy::Futex { spin: 0 }
    } else if case.contains("-futex") {
        WaitStrategy::default()
    } else {
        WaitStrategy::Spin
    }
}

/// The wait strategy of a stream case: polling on a ring, sleeping in the kernel on a copying
/// transport (as its raw limit's reader does).
fn stream_wait(case: &str) -> WaitStrategy {
    if transport::row(case).is_some_and(|r| r.copying()) {
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
    /// Creates `<case>.ping` (on the case's transport: see [`Ctx::place`]), starts the child,
    /// opens the child's `<case>.pong`, and waits until the child's subscribers have joined.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<ShmPingPong<T>> {
        let wait = wait_of(name);
        let place = ctx.place(name)?;
        let (ping, spec) = place
            .publish(|bus| {
                bus.publisher::<T>(&format!("{name}.ping"))
                    .capacity(PING_CAPACITY)
                    .wait(wait)
                    .create()
            })
            .with_context(|| format!("{name}: creating topic {name}.ping"))?;
        let mut peer = place.spawn(ctx, name, &spec)?;
        let pong_spec = peer.expect("ready")?;
        let pong = place
            .subscriber_bus(&pong_spec)?
            .subscriber::<T>(&format!("{name}.pong"))
            .wait(wait)
            .open_timeout(OPEN_TIMEOUT)
            .with_context(|| format!("{name}: opening topic {name}.pong"))?;
        // A copying transport hands a subscriber to its publisher after the greeting: a
        // message sent before that would reach nobody.
        if !ping.wait_for_subscribers(readers_of(name), OPEN_TIMEOUT) {
            bail!("{name}: the child's subscribers of {name}.ping did not join");
        }
        Ok(ShmPingPong {
            name,
            ping,
            pong,
            peer,
        })
    }
}

/// The child's `ready` reply: with the spec of the transport of its own topic, if not shm.
fn ready_line(spec: &str) -> String {
    if spec.is_empty() {
        "ready".to_string()
    } else {
        format!("ready {spec}")
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
/// `spec` names the transport of the parent's ping ("" for shm).
pub fn ping_pong_peer<T: BenchMessage>(
    ctl: &mut Control,
    place: &Place<'_>,
    case: &str,
    spec: &str,
) -> Result<()> {
    let wait = wait_of(case);
    let readers = readers_of(case);
    let ping_bus = place.subscriber_bus(spec)?;
    let mut pings = Vec::new();
    for _ in 0..readers {
        pings.push(
            ping_bus
                .subscriber::<T>(&format!("{case}.ping"))
                .wait(wait)
                .open_timeout(OPEN_TIMEOUT)
                .with_context(|| format!("opening topic {case}.ping"))?,
        );
    }
    let (mut pong, pong_spec) = place
        .publish(|bus| {
            bus.publisher::<T>(&format!("{case}.pong"))
                .capacity(PING_CAPACITY)
                .wait(wait)
                .create()
        })
        .with_context(|| format!("creating topic {case}.pong"))?;
    ctl.reply(&ready_line(&pong_spec))?;
    let mut joined = false;
    while let Some(n) = ctl.next_run()? {
        // The parent opened the pong before its first run command; on a copying transport
        // its connection reaches this publisher a moment after the greeting.
        if !joined {
            if !pong.wait_for_subscribers(1, OPEN_TIMEOUT) {
                bail!("the parent's subscriber of {case}.pong did not join");
            }
            joined = true;
        }
        for _ in 0..n {
            let mut i = 0;
            for ping in &mut pings {
                i = ping.recv().context("recv")?.number();
            }
            publish(&mut pong, i)?;
        }
        ctl.reply("done")?;
    }
    Ok(())
}

/// The parent side of a stream case: the publisher (two, taking turns, for `-2pub-`).
pub struct ShmStream<T: BenchMessage> {
    name: &'static str,
    publishers: Vec<Publisher<T>>,
    peer: Peer,
    /// Whether the transport copies: see [`ShmStream::block`].
    copying: bool,
}

impl<T: BenchMessage> ShmStream<T> {
    /// Creates `<case>.stream` (on the case's transport: see [`Ctx::place`]) and starts the
    /// subscriber.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<ShmStream<T>> {
        let topic = format!("{name}.stream");
        let lanes = if name.contains("-2pub-") { 2 } else { 1 };
        let wait = stream_wait(name);
        let place = ctx.place(name)?;
        let (first, spec) = place
            .publish(|bus| {
                bus.publisher::<T>(&topic)
                    .capacity(STREAM_CAPACITY as u64)
                    .max_publishers(lanes)
                    .wait(wait)
                    .create()
            })
            .with_context(|| format!("{name}: creating topic {topic}"))?;
        let mut publishers = vec![first];
        for _ in 1..lanes {
            publishers.push(
                ctx.bus
                    .publisher::<T>(&topic)
                    .wait(wait)
                    .attach()
                    .with_context(|| format!("{name}: attaching to topic {topic}"))?,
            );
        }
        let mut peer = place.spawn(ctx, name, &spec)?;
        peer.expect("ready")?;
        if !publishers[0].wait_for_subscribers(1, OPEN_TIMEOUT) {
            bail!("{name}: the child's subscriber of {topic} did not join");
        }
        Ok(ShmStream {
            name,
            publishers,
            peer,
            copying: transport::row(name).is_some_and(|r| r.copying()),
        })
    }
}

impl<T: BenchMessage> Stream for ShmStream<T> {
    fn block(&mut self, n: u64) -> Result<StreamBlock> {
        self.peer.run(n)?;
        match &mut self.publishers[..] {
            [one] if self.name.contains("-batch-") => {
                let mut i = 0;
                while i < n {
                    one.send_many((n - i) as usize, |slot| {
                        T::fill(slot, i);
                        i += 1;
                    })
                    .context("send_many")?;
                }
            }
            [one] => {
                for i in 0..n {
                    publish(one, i)?;
                }
                if self.copying {
                    // A copying publisher whose last frame found the kernel's buffer full
                    // keeps it until its next call (`FanOut::send` leaves it pending, and
                    // only a loan or a close pushes it on): a loan, dropped unsent, waits
                    // until the subscriber has room and hands the frame over. Without it the
                    // subscriber waits for that message forever.
                    drop(one.loan().context("loan")?);
                }
            }
            [a, b] => {
                for i in (0..n).step_by(2) {
                    publish(a, i)?;
                    if i + 1 < n {
                        publish(b, i + 1)?;
                    }
                }
            }
            _ => bail!("{}: one or two publishers", self.name),
        }
        let reply = self.peer.expect("done")?;
        parse_stream_reply(self.name, &reply, n)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of a stream case: receives, copies each message out, sums the numbers and
/// times from the first message to the last. `spec` names the transport ("" for shm).
pub fn stream_peer<T: BenchMessage>(
    ctl: &mut Control,
    place: &Place<'_>,
    case: &str,
    spec: &str,
) -> Result<()> {
    let mut subscriber = place
        .subscriber_bus(spec)?
        .subscriber::<T>(&format!("{case}.stream"))
        .wait(stream_wait(case))
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
        if n == 0 {
            ctl.reply("done 1 0")?;
            continue;
        }
        let first = subscriber.recv().context("recv")?;
        sum = sum.wrapping_add(black_box(*first).number());
        drop(first);
        let start = Instant::now();
        let mut got = 1;
        if case.contains("-batch-") {
            while got < n {
                got += subscriber
                    .recv_many((n - got) as usize, |m| {
                        sum = sum.wrapping_add(black_box(*m).number())
                    })
                    .context("recv_many")? as u64;
            }
        } else {
            while got < n {
                let sample = subscriber.recv().context("recv")?;
                let message: T = black_box(*sample);
                sum = sum.wrapping_add(message.number());
                got += 1;
            }
        }
        let elapsed = start.elapsed().as_nanos();
        ctl.reply(&format!("done {elapsed} {sum}"))?;
    }
    Ok(())
}

/// The parent side of `shm-overwrite-publish-*`: an Overwrite publisher, timed by itself.
pub struct ShmOverwrite {
    name: &'static str,
    publisher: Publisher<Msg64>,
    peer: Peer,
    /// Messages published before this block (the child's subscribers count from 0).
    sent: u64,
}

impl ShmOverwrite {
    /// Creates `<case>.md` under Overwrite and starts the child with its subscribers.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<ShmOverwrite> {
        let publisher = ctx
            .bus
            .publisher::<Msg64>(&format!("{name}.md"))
            .capacity(STREAM_CAPACITY as u64)
            .policy(Policy::Overwrite)
            .max_subscribers(readers_of(name) as u32)
            .create()
            .with_context(|| format!("{name}: creating topic {name}.md"))?;
        let mut peer = ctx.spawn(name, &[])?;
        peer.expect("ready")?;
        Ok(ShmOverwrite {
            name,
            publisher,
            peer,
            sent: 0,
        })
    }
}

/// `shm-overwrite-burst-*`: messages per burst, and the pause after each (long enough for
/// 8 subscribers on one CPU to read a burst, so that the publisher writes to subscribers that
/// have caught up rather than to subscribers it keeps lapping).
const BURST: u64 = 64;
const BURST_PAUSE: Duration = Duration::from_micros(50);

impl ShmOverwrite {
    fn publish(&mut self, i: u64) -> Result<()> {
        let mut loan = self.publisher.try_loan().context("loan")?;
        Msg64::fill(&mut loan, i);
        loan.send();
        Ok(())
    }
}

impl Stream for ShmOverwrite {
    fn block(&mut self, n: u64) -> Result<StreamBlock> {
        self.peer.run(self.sent + n)?;
        let elapsed_ns = if self.name.contains("-burst-") {
            // Only the bursts are timed; the pauses between them are not.
            let mut timed = 0u64;
            let mut i = 0;
            while i < n {
                let start = Instant::now();
                let end = (i + BURST).min(n);
                for k in i..end {
                    self.publish(k)?;
                }
                timed += start.elapsed().as_nanos() as u64;
                i = end;
                let idle = Instant::now() + BURST_PAUSE;
                while Instant::now() < idle {
                    std::hint::spin_loop();
                }
            }
            timed
        } else {
            let start = Instant::now();
            for i in 0..n {
                self.publish(i)?;
            }
            start.elapsed().as_nanos() as u64
        };
        self.sent += n;
        let reply = self.peer.expect("done")?;
        if reply != "caught up" {
            bail!("{}: the subscribers say {reply:?}", self.name);
        }
        Ok(StreamBlock {
            intervals: n,
            elapsed_ns: elapsed_ns.max(1),
        })
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of `shm-overwrite-publish-*`: N subscribers, each copying messages out in
/// turn, until every one has reached (received or lost) the message the parent names.
pub fn overwrite_peer(ctl: &mut Control, bus: &Bus, case: &str) -> Result<()> {
    let mut subscribers = Vec::new();
    for _ in 0..readers_of(case) {
        subscribers.push(
            bus.subscriber::<Msg64>(&format!("{case}.md"))
                .wait(WaitStrategy::Spin)
                .open_timeout(OPEN_TIMEOUT)
                .with_context(|| format!("opening topic {case}.md"))?,
        );
    }
    ctl.reply("ready")?;
    let mut sum = 0u64;
    while let Some(until) = ctl.next_run()? {
        while subscribers.iter().any(|s| s.next_seq() < until) {
            for s in &mut subscribers {
                if let Some(sample) = s.try_recv().context("recv")? {
                    sum = sum.wrapping_add(black_box(*sample).number());
                }
            }
        }
        black_box(sum);
        ctl.reply("done caught up")?;
    }
    Ok(())
}
