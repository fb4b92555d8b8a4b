//! `shmbus demo`: two processes, one bus, every message checked.
//!
//! The parent is the publisher; the subscriber is this binary re-executed as
//! `__demo-subscriber`. First the publisher streams `--count` messages on one topic and the
//! subscriber checks each (sequence strictly consecutive, checksum, and with
//! `--payload-check` every payload word); then the two play ping-pong over two more topics to
//! measure the round trip. The command fails if any message was lost, repeated, reordered or
//! corrupt. It must never report success on a check it did not make.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytemuck::{Pod, Zeroable};
use clap::{Args, ValueEnum};
use shmbus::{Bus, Subscriber, WaitStrategy, DEFAULT_PREFIX};

use crate::affinity::{self, CpuPair};
use crate::error::{bail, Context, Result};
use crate::peer::{self, Control, Peer};
use crate::stats::{self, fmt_ns, fmt_rate, Latency};
use crate::sweep::{self, Sweep};
use crate::watchdog::Watchdog;

/// Slots in the stream topic's ring.
const STREAM_CAPACITY: u64 = 4096;
/// Slots in each ping-pong topic: one message is in flight at a time.
const PING_CAPACITY: u64 = 16;
/// How long the subscriber waits for the next message before it reports the rest missing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long either side waits for the other to create its topics.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A run that reports no progress for this long is stopped.
const WATCHDOG_LIMIT: Duration = Duration::from_secs(60);
/// How many problems the subscriber describes one by one before only counting them.
const PROBLEMS_SHOWN: u64 = 5;

/// `shmbus demo` options.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Messages to stream from the publisher to the subscriber.
    #[arg(long, default_value_t = 2_000_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    /// How both sides wait for messages and free slots [default: spin with two CPUs or more, futex with one].
    #[arg(long, value_enum)]
    wait: Option<WaitArg>,
    /// Also check every payload word against the value the publisher derives from the sequence number.
    #[arg(long)]
    payload_check: bool,
    /// Round trips in the latency phase, after warm-up.
    #[arg(long, default_value_t = 200_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    round_trips: u64,
    /// The two CPUs to pin publisher and subscriber to, as A,B [default: the first two allowed].
    #[arg(long, value_name = "A,B")]
    cpus: Option<CpuPair>,
}

/// The wait strategies the demo offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitArg {
    /// Poll: lowest latency, one busy CPU per waiting side.
    Spin,
    /// Spin briefly, then sleep on a futex until woken.
    Futex,
}

impl WaitArg {
    fn strategy(self) -> WaitStrategy {
        match self {
            WaitArg::Spin => WaitStrategy::Spin,
            WaitArg::Futex => WaitStrategy::Futex {
                spin: WaitStrategy::DEFAULT_SPIN,
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            WaitArg::Spin => "spin",
            WaitArg::Futex => "futex",
        }
    }
}

/// `__demo-subscriber` options: what the parent passes to the subscriber.
#[derive(Args, Debug)]
pub struct SubscriberArgs {
    /// The topics' common name: `<base>.stream`, `<base>.ping`, `<base>.pong`.
    base: String,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    round_trips: u64,
    #[arg(long, value_enum)]
    wait: WaitArg,
    #[arg(long)]
    cpu: Option<usize>,
    #[arg(long)]
    payload_check: bool,
}

/// The demo's message: 64 bytes, one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Tick {
    /// 0, 1, 2, ... in the order published.
    seq: u64,
    /// CLOCK_MONOTONIC when published, in nanoseconds (one clock for all processes).
    sent_ns: u64,
    /// Derived from `seq` by [`payload_for`], so the subscriber can check every word.
    payload: [u64; 5],
    /// [`checksum`] of the words above.
    checksum: u64,
}

impl Tick {
    fn new(seq: u64) -> Tick {
        let mut tick = Tick {
            seq,
            sent_ns: monotonic_ns(),
            payload: payload_for(seq),
            checksum: 0,
        };
        tick.checksum = checksum(&tick);
        tick
    }
}

/// The payload words of message `seq`: splitmix64 of `seq` and the word's index.
fn payload_for(seq: u64) -> [u64; 5] {
    std::array::from_fn(|k| {
        let mut z = seq
            .wrapping_mul(5)
            .wrapping_add(k as u64)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// FNV-1a over the words before the checksum, with a final mix so that every bit counts.
fn checksum(t: &Tick) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in [t.seq, t.sent_ns].into_iter().chain(t.payload) {
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 32)
}

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// What the subscriber found in the stream.
#[derive(Debug, Default, PartialEq, Eq)]
struct StreamCheck {
    received: u64,
    /// Messages skipped: the sum of the gaps in the sequence.
    lost: u64,
    /// Messages whose sequence number was not above the previous one (reordered or repeated).
    out_of_order: u64,
    bad_checksum: u64,
    bad_payload: u64,
    /// Messages whose `Sample::seq()` (the library's count) differs from their own `seq`.
    seq_mismatch: u64,
    /// Subscriber's clock from the first message to the last.
    elapsed_ns: u64,
    /// Whether the subscriber gave up waiting before the last message.
    timed_out: bool,
}

impl StreamCheck {
    fn ok(&self, count: u64) -> bool {
        self.received == count
            && self.lost == 0
            && self.out_of_order == 0
            && self.bad_checksum == 0
            && self.bad_payload == 0
            && self.seq_mismatch == 0
            && !self.timed_out
    }

    fn encode(&self) -> String {
        format!(
            "received={} lost={} out_of_order={} bad_checksum={} bad_payload={} seq_mismatch={} elapsed_ns={} timed_out={}",
            self.received,
            self.lost,
            self.out_of_order,
            self.bad_checksum,
            self.bad_payload,
            self.seq_mismatch,
            self.elapsed_ns,
            u8::from(self.timed_out)
        )
    }

    fn decode(s: &str) -> Result<StreamCheck> {
        let mut c = StreamCheck::default();
        for field in s.split_whitespace() {
            let Some((key, value)) = field.split_once('=') else {
                bail!("bad report from the subscriber: {s:?}");
            };
            let value: u64 = value
                .parse()
                .with_context(|| format!("bad report from the subscriber: {s:?}"))?;
            match key {
                "received" => c.received = value,
                "lost" => c.lost = value,
                "out_of_order" => c.out_of_order = value,
                "bad_checksum" => c.bad_checksum = value,
                "bad_payload" => c.bad_payload = value,
                "seq_mismatch" => c.seq_mismatch = value,
                "elapsed_ns" => c.elapsed_ns = value,
                "timed_out" => c.timed_out = value != 0,
                _ => bail!("bad report from the subscriber: {s:?}"),
            }
        }
        Ok(c)
    }
}

/// `shmbus demo`.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let cpus = affinity::choose(args.cpus)?;
    if let Some(pair) = cpus {
        // Before any thread or child starts: they inherit the CPU.
        affinity::pin_current_thread(pair.parent)?;
    }
    let wait = args.wait.unwrap_or(if cpus.is_some() {
        WaitArg::Spin
    } else {
        WaitArg::Futex
    });
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        % 1_000_000_000_000;
    sweep::remove_stale(&format!("{DEFAULT_PREFIX}demo-"));
    let base = format!("demo-{}-{stamp}", std::process::id());
    let segment_prefix = format!("{DEFAULT_PREFIX}{base}.");
    // Dropped last: removes what a killed subscriber left behind.
    let _sweep = Sweep::new(segment_prefix.clone());
    let watchdog = Watchdog::start("demo", WATCHDOG_LIMIT, segment_prefix)?;
    let warm_up = (args.round_trips / 10).max(1_000);

    let bus = Bus::open_default().context("opening the bus")?;
    let topic = |t: &str| format!("{base}.{t}");
    let mut stream = bus
        .publisher::<Tick>(&topic("stream"))
        .capacity(STREAM_CAPACITY)
        .wait(wait.strategy())
        .create()
        .with_context(|| format!("creating topic {}", topic("stream")))?;
    let mut ping = bus
        .publisher::<Tick>(&topic("ping"))
        .capacity(PING_CAPACITY)
        .wait(wait.strategy())
        .create()
        .with_context(|| format!("creating topic {}", topic("ping")))?;

    let mut child_args = vec![
        "__demo-subscriber".to_string(),
        base.clone(),
        format!("--count={}", args.count),
        format!("--round-trips={}", warm_up + args.round_trips),
        format!("--wait={}", wait.name()),
    ];
    if let Some(pair) = cpus {
        child_args.push(format!("--cpu={}", pair.child));
    }
    if args.payload_check {
        child_args.push("--payload-check".to_string());
    }
    let mut child = Peer::spawn("the subscriber", &child_args, Some(&watchdog.handle()))?;
    child.expect("ready")?;
    let mut pong = bus
        .subscriber::<Tick>(&topic("pong"))
        .wait(wait.strategy())
        .open()
        .with_context(|| format!("opening topic {}", topic("pong")))?;

    let mut out = std::io::stdout().lock();
    let mut say = |line: String| -> Result<()> {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("writing to stdout")
    };
    say(format!(
        "shmbus demo: {} messages of {} bytes on topic {}, then {} round trips",
        args.count,
        std::mem::size_of::<Tick>(),
        topic("stream"),
        args.round_trips
    ))?;
    say(format!(
        "  processes  publisher {} and subscriber {}, {}",
        std::process::id(),
        child.pid(),
        affinity::describe(cpus)
    ))?;
    say(format!(
        "  waiting    {} ({}), ring of {STREAM_CAPACITY} slots",
        wait.name(),
        match wait {
            WaitArg::Spin => "both sides poll; no syscall per message",
            WaitArg::Futex => "spin briefly, then sleep on a futex",
        }
    ))?;

    // Stream phase.
    let start = Instant::now();
    for seq in 0..args.count {
        let mut loan = stream
            .loan()
            .context("loaning a slot on the stream topic")?;
        loan.write(Tick::new(seq));
        loan.send();
        if seq % 65_536 == 0 {
            watchdog.progress();
        }
    }
    let publish_elapsed = start.elapsed();
    let check = StreamCheck::decode(&child.expect("stream")?)?;
    watchdog.progress();
    let stream_ok = check.ok(args.count);
    let mut line = format!(
        "stream     {} sent, {} received: {} lost, {} out of order, {} bad checksums, {} seq mismatches",
        args.count,
        check.received,
        check.lost,
        check.out_of_order,
        check.bad_checksum,
        check.seq_mismatch
    );
    if args.payload_check {
        line += &format!(", {} bad payloads", check.bad_payload);
    }
    if check.timed_out {
        line += &format!(
            ", gave up after {} s without a message",
            IDLE_TIMEOUT.as_secs()
        );
    }
    say(line)?;
    say(format!(
        "           checked: consecutive sequence numbers, Sample::seq() equal to the message's, checksum{}",
        if args.payload_check {
            ", every payload word"
        } else {
            " (add --payload-check for every payload word)"
        }
    ))?;
    if check.received > 1 && check.elapsed_ns > 0 {
        let rate = (check.received - 1) as f64 * 1e9 / check.elapsed_ns as f64;
        say(format!(
            "           {} msgs/s, {:.0} MB/s at the subscriber (first to last message in {}); publisher done in {}",
            fmt_rate(rate),
            rate * std::mem::size_of::<Tick>() as f64 / 1e6,
            fmt_ns(check.elapsed_ns),
            fmt_ns(u64::try_from(publish_elapsed.as_nanos()).unwrap_or(u64::MAX)),
        ))?;
    }

    // Latency phase.
    let mut hist = stats::histogram()?;
    let mut bad_echoes = 0u64;
    stats::timed_round_trips(warm_up, args.round_trips, &mut hist, |i| {
        let mut loan = ping.loan().context("loaning a slot on the ping topic")?;
        loan.write(Tick::new(i));
        loan.send();
        let echo = pong.recv().context("receiving a pong")?;
        if echo.seq != i || checksum(&echo) != echo.checksum {
            bad_echoes += 1;
        }
        if i % 65_536 == 0 {
            watchdog.progress();
        }
        Ok(())
    })?;
    child.expect("done")?;
    child.finish()?;
    drop(watchdog);
    let l = Latency::of(&hist);
    say(format!(
        "latency    {} round trips after {warm_up} warm-up, ping and pong on two topics (full round trip, not halved)",
        l.count
    ))?;
    say(format!(
        "           p50 {}   p99 {}   p99.9 {}   max {}{}",
        fmt_ns(l.p50),
        fmt_ns(l.p99),
        fmt_ns(l.p999),
        fmt_ns(l.max),
        if bad_echoes > 0 {
            format!("   {bad_echoes} wrong echoes")
        } else {
            String::new()
        }
    ))?;
    if stream_ok && bad_echoes == 0 {
        say("result     OK: every message arrived once, in order and intact".to_string())?;
        Ok(ExitCode::SUCCESS)
    } else {
        say("result     FAILED: see the counts above".to_string())?;
        Ok(ExitCode::FAILURE)
    }
}

/// The subscriber process: `__demo-subscriber`.
pub fn subscriber_main(args: SubscriberArgs) -> Result<()> {
    peer::child_setup()?;
    if let Some(cpu) = args.cpu {
        affinity::pin_current_thread(cpu)?;
    }
    let wait = args.wait.strategy();
    let bus = Bus::open_default().context("opening the bus")?;
    let topic = |t: &str| format!("{}.{t}", args.base);
    let mut stream = bus
        .subscriber::<Tick>(&topic("stream"))
        .wait(wait)
        .open_timeout(OPEN_TIMEOUT)
        .with_context(|| format!("opening topic {}", topic("stream")))?;
    let mut ping = bus
        .subscriber::<Tick>(&topic("ping"))
        .wait(wait)
        .open_timeout(OPEN_TIMEOUT)
        .with_context(|| format!("opening topic {}", topic("ping")))?;
    let mut pong = bus
        .publisher::<Tick>(&topic("pong"))
        .capacity(PING_CAPACITY)
        .wait(wait)
        .create()
        .with_context(|| format!("creating topic {}", topic("pong")))?;
    let mut ctl = Control::new();
    ctl.reply("ready")?;

    let check = check_stream(&mut stream, args.count, args.payload_check)?;
    ctl.reply(&format!("stream {}", check.encode()))?;

    for i in 0..args.round_trips {
        let Some(sample) = ping
            .recv_timeout(IDLE_TIMEOUT)
            .context("receiving a ping")?
        else {
            bail!("no ping {i} within {} s", IDLE_TIMEOUT.as_secs());
        };
        let tick = *sample;
        drop(sample);
        let mut loan = pong.loan().context("loaning a slot on the pong topic")?;
        loan.write(tick);
        loan.send();
    }
    ctl.reply("done")?;
    // Wait for the parent's `quit`, so that the pong topic outlives the last pong's reading.
    while ctl.next_run()?.is_some() {}
    Ok(())
}

/// Receives the stream and checks every message.
fn check_stream(
    stream: &mut Subscriber<Tick>,
    count: u64,
    payload_check: bool,
) -> Result<StreamCheck> {
    let mut checker = Checker::new(payload_check);
    let mut shown = 0u64;
    let mut first_at = None;
    let mut last_at = Instant::now();
    while checker.next < count {
        let Some(sample) = stream
            .recv_timeout(IDLE_TIMEOUT)
            .context("receiving from the stream")?
        else {
            checker.found.timed_out = true;
            eprintln!(
                "shmbus demo: subscriber: no message for {} s after message {}",
                IDLE_TIMEOUT.as_secs(),
                checker.next.saturating_sub(1)
            );
            break;
        };
        let tick = *sample;
        let library_seq = sample.seq();
        drop(sample);
        last_at = Instant::now();
        first_at.get_or_insert(last_at);
        for problem in checker.check(&tick, library_seq).into_iter().flatten() {
            shown += 1;
            if shown <= PROBLEMS_SHOWN {
                eprintln!("shmbus demo: subscriber: {problem}");
            }
        }
    }
    let mut found = checker.found;
    if let Some(first) = first_at {
        found.elapsed_ns =
            u64::try_from(last_at.duration_since(first).as_nanos()).unwrap_or(u64::MAX);
    }
    Ok(found)
}

/// The checks on each received message, apart from the receiving.
struct Checker {
    found: StreamCheck,
    /// The sequence number expected next.
    next: u64,
    payload_check: bool,
}

impl Checker {
    fn new(payload_check: bool) -> Checker {
        Checker {
            found: StreamCheck::default(),
            next: 0,
            payload_check,
        }
    }

    /// Checks one message; returns what was wrong with it, if anything (at most four things).
    fn check(&mut self, tick: &Tick, library_seq: u64) -> [Option<String>; 4] {
        let c = &mut self.found;
        let mut problems = [None, None, None, None];
        c.received += 1;
        if checksum(tick) != tick.checksum {
            c.bad_checksum += 1;
            problems[0] = Some(format!("message {} has a bad checksum", tick.seq));
        }
        if self.payload_check && tick.payload != payload_for(tick.seq) {
            c.bad_payload += 1;
            problems[1] = Some(format!("message {} has a wrong payload", tick.seq));
        }
        if library_seq != tick.seq {
            c.seq_mismatch += 1;
            problems[2] = Some(format!(
                "message {} came with Sample::seq() {library_seq}",
                tick.seq
            ));
        }
        if tick.seq == self.next {
            self.next += 1;
        } else if tick.seq > self.next {
            c.lost += tick.seq - self.next;
            problems[3] = Some(format!(
                "messages {} to {} are missing",
                self.next,
                tick.seq - 1
            ));
            self.next = tick.seq + 1;
        } else {
            c.out_of_order += 1;
            problems[3] = Some(format!(
                "message {} arrived after {}",
                tick.seq,
                self.next - 1
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_covers_every_word() {
        let tick = Tick::new(42);
        assert_eq!(checksum(&tick), tick.checksum);
        for k in 0..7 {
            let mut bad = tick;
            let words: &mut [u64; 8] = bytemuck::cast_mut(&mut bad);
            words[k] ^= 1 << (k * 9);
            assert_ne!(checksum(&bad), bad.checksum, "word {k}");
        }
    }

    #[test]
    fn checker_counts_each_kind_of_problem() {
        let mut checker = Checker::new(true);
        for (seq, library_seq) in [(0, 0), (1, 1), (3, 2), (2, 3), (4, 4)] {
            checker.check(&Tick::new(seq), library_seq);
        }
        let mut corrupt = Tick::new(5);
        corrupt.payload[2] ^= 4;
        let problems = checker.check(&corrupt, 5);
        assert!(problems[0].is_some() && problems[1].is_some());
        let mut repaired = Tick::new(6);
        repaired.payload[0] = 0;
        repaired.checksum = checksum(&repaired);
        checker.check(&repaired, 6);
        let c = &checker.found;
        assert_eq!((c.received, c.lost, c.out_of_order), (7, 1, 1));
        assert_eq!((c.bad_checksum, c.bad_payload, c.seq_mismatch), (1, 2, 2));
        assert!(!c.ok(7));

        let mut clean = Checker::new(false);
        for seq in 0..3 {
            assert!(clean
                .check(&Tick::new(seq), seq)
                .iter()
                .all(Option::is_none));
        }
        assert!(clean.found.ok(3));
    }

    #[test]
    fn report_round_trips() -> Result<()> {
        let c = StreamCheck {
            received: 5,
            lost: 1,
            out_of_order: 2,
            bad_checksum: 3,
            bad_payload: 4,
            seq_mismatch: 7,
            elapsed_ns: 6,
            timed_out: true,
        };
        assert_eq!(StreamCheck::decode(&c.encode())?, c);
        Ok(())
    }
}
