//! `shmbus bench`: the cross-process benchmark harness. Its rules are in BENCHMARKS.md.
//!
//! Every shmbus case is measured beside its limit, the simplest code that does the same job
//! (`raw.rs`, `kernel.rs`), in the same run and interleaved in short blocks (case, limit,
//! case, limit, ...), so that the ratio holds on a VM whose speed changes from one minute to
//! the next. Two processes, pinned to two CPUs: the parent measures, and each series has a
//! child of its own, this binary run as `__bench-peer <case>`, which sleeps on its command
//! pipe while another series runs. The harness never asserts a time.
//!
//! The transport rows (`transport.rs`) put the same API over each transport beside the raw
//! primitive the transport wraps (`kernel.rs`), or, for the memory-mapped file, beside the
//! same case on shared memory: a group of two per row, built from its table.

mod kernel;
mod plot;
mod raw;
mod report;
mod shm;
mod transport;

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use hdrhistogram::Histogram;
use shmbus::Bus;

use crate::affinity::{self, CpuPair};
use crate::error::{bail, Context, Error, Result};
use crate::peer::{self, Control, InheritedFd, Peer};
use crate::stats::{self, Latency};
use crate::sweep::{self, Sweep};
use crate::watchdog::{self, Watchdog};
use report::{LatencyRow, Machine, Measured, RunInfo, StreamFig, StreamRow};

/// The cases, for `shmbus bench --help`.
pub const CASES_HELP: &str = "\
Cases (each measured beside its limit, interleaved in short blocks):
  shm-poll-8B, shm-poll-64B      round trip, polling             limit raw-cacheline
  shm-poll-{1,4,64}KiB-write8    1, 4, 64 KiB slots, 8 bytes     limit raw-cacheline
                                 written: latency against payload size (beside shm-poll-64B)
  raw-message-64B                a 64-byte message each way with its tag on a line apart: the
                                 least a 64-byte round trip over two topics moves (beside
                                 shm-poll-64B)
  shm-fanout-{1,2,4,8}-64B       round trip with 1-8 subscribers limit raw-cacheline
                                 of the ping (in one process: the answer after the last)
  raw-two-lines                  a bare ping on one line, the answer on another: the least
                                 any round trip over two topics moves (beside shm-poll-8B)
  raw-ring-lines                 the same, each message on the next of 16 lines, as a ring
                                 places it (the ring's layout alone, without its code)
  shm-futex-64B                  round trip, adaptive futex wait limit raw-futex
  shm-futex-nospin-64B           round trip, futex wait at once  limit raw-futex
  pipe-64B, unix-socket-64B      what a user would use instead, beside shm-futex-64B
  shm-stream-8B, shm-stream-64B  one-way throughput, polling     limit raw-ring-8B, raw-ring-64B
  shm-stream-slip-8B, -64B       the same with a 4 µs slip       limit raw-ring-8B, raw-ring-64B
                                 (SubscriberBuilder::slip: a subscriber that catches up pauses
                                 so that it reads lines the publisher has finished)
  shm-stream-batch-8B, -64B      the same, a batch a call        limit raw-ring-8B, raw-ring-64B
                                 (Publisher::send_many, Subscriber::recv_many: one check for
                                 room, one wake-up, one comparison a message)
  shm-stream-2pub-64B            two publishers (lanes) taking   limit raw-ring-64B
                                 turns, one subscriber
  shm-overwrite-publish-8sub-64B the Overwrite publisher's rate  limit the same with 1 sub
                                 with 8 subscribers copying (back to back: they are lapped)
  shm-overwrite-burst-8sub-64B   the same in bursts of 64 with   limit the same with 1 sub
                                 pauses (subscribers keep pace)

Transport rows (--only transport: all of them; --only unix, tcp, mqueue, mmap, fifo, file,
pipe-transport: one transport's). The library's Publisher and Subscriber over each
transport, 64-byte messages, a subscriber that sleeps in the kernel, beside the primitive
the transport wraps driven with bare blocking calls and no framing:
  unix-64B, unix-stream-64B      round trip, one-way stream      limit raw-seqpacket-64B,
                                                                 raw-seqpacket-stream-64B
  tcp-64B, tcp-stream-64B        loopback, TCP_NODELAY           limit raw-tcp-64B,
                                                                 raw-tcp-stream-64B
  raw-tcp-2conn-64B              beside tcp-64B: the bare ping-pong over two connections, one
                                 each way, as two topics are (no answer carries the ACK)
  mqueue-64B, mqueue-stream-64B  two queues of the system's depth limit raw-mqueue-64B,
                                                                 raw-mqueue-stream-64B
  mmap-poll-64B                  the ring in a file on disk      limit shm-poll-64B
  mmap-futex-nospin-64B          (pages resident), beside the    limit shm-futex-nospin-64B
  mmap-stream-64B                same case on /dev/shm           limit shm-stream-64B
  fifo-64B, fifo-stream-64B      a FIFO per direction            limit raw-pipe-64B,
                                                                 raw-pipe-stream-64B
  file-64B, file-stream-64B      a spool file per direction      limit raw-file-64B (write,
                                 (a tailing reader)              inotify, pread), -stream-64B
  pipe-transport-64B,            pipes made by the parent, each  limit raw-pipe-64B,
  pipe-transport-stream-64B      side's bus on its end           raw-pipe-stream-64B
                                 (Pipe::from_fd); not pipe-64B,
                                 the futex group's bare pipe
A full run measures every row; --quick without --only measures only unix-64B (a smoke
check). The copying transports' streams carry a tenth of --messages.";

/// Slots in the rings of the throughput cases, shmbus and raw alike.
pub const STREAM_CAPACITY: usize = 1024;

/// Unrecorded round trips at the start of every block: the child has just woken from its
/// command pipe and its first answers would measure that wake-up.
const BLOCK_WARM_UP: u64 = 100;

/// The longest latency block, in round trips: blocks stay short so that case and limit see
/// the same machine (a pipe round trip of 10 µs makes this half a second).
const MAX_ROUND_TRIPS_PER_BLOCK: u64 = 50_000;

/// The longest throughput block, in messages.
const MAX_MESSAGES_PER_BLOCK: u64 = 4_000_000;

/// A run that reports no progress for this long is stopped (blocks take well under a second).
const WATCHDOG_LIMIT: Duration = Duration::from_secs(60);

/// `shmbus bench` options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A short run: 10^4 round trips per latency case and 2*10^6 messages per throughput case
    /// (well under a minute on 2 CPUs). Without --only, of the transport rows only unix-64B.
    #[arg(long)]
    quick: bool,
    /// Print JSON lines (one object per case) on stdout instead of the markdown table.
    #[arg(long)]
    json: bool,
    /// Append the JSON lines to FILE as well.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the latency cases to FILE as an SVG of percentile curves (one panel per group:
    /// each case beside its limit), titled with the machine, the command and the date.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Recorded round trips per latency case, after warm-up [default: 100000, or 10000 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    iters: Option<u64>,
    /// Messages per throughput case [default: 20000000, or 2000000 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    messages: Option<u64>,
    /// The least number of blocks each case is split into, interleaved with its limit.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    blocks: u64,
    /// Run only the groups with a case whose name contains TEXT (repeatable). `transport`, or
    /// a transport's name (unix, tcp, mqueue, mmap, fifo, file, pipe-transport), selects those
    /// transport rows.
    #[arg(long, value_name = "TEXT")]
    only: Vec<String>,
    /// The two CPUs to pin the processes to, as PARENT,CHILD [default: the first two allowed].
    #[arg(long, value_name = "A,B")]
    cpus: Option<CpuPair>,
    /// Pin both processes to one CPU and run only the blocking cases: the same-CPU figures,
    /// beside which the default run shows what a wake-up across CPUs costs.
    #[arg(long, conflicts_with = "cpus")]
    same_cpu: bool,
}

/// `__bench-peer` options: what the parent passes to a child.
#[derive(Args, Debug)]
pub struct PeerArgs {
    /// The case this child serves.
    case: String,
    /// The CPU to pin to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Inherited descriptors, in the order the case expects them.
    #[arg(long)]
    fd: Vec<i32>,
    /// The bus's segment-name prefix, for the shmbus cases.
    #[arg(long, default_value = "")]
    prefix: String,
    /// The run's directory, for the transport rows.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The transport of the parent's topic, for a transport row.
    #[arg(long, default_value = "")]
    spec: String,
}

/// A latency series: runs blocks of round trips.
pub trait RoundTrip {
    /// Runs `warm` unrecorded round trips, then `n` recorded into `hist`.
    fn block(&mut self, warm: u64, n: u64, hist: &mut Histogram<u64>) -> Result<()>;
    /// Tells the child to quit and checks that it exited cleanly.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A throughput series: runs blocks of one-way messages.
pub trait Stream {
    /// Sends `n` messages and returns what the receiver measured.
    fn block(&mut self, n: u64) -> Result<StreamBlock>;
    /// Tells the child to quit and checks that it exited cleanly.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// What a receiver measured over one block.
pub struct StreamBlock {
    /// Messages received after the first one (the clock starts at the first).
    pub intervals: u64,
    /// Nanoseconds from the first message to the last.
    pub elapsed_ns: u64,
}

/// What a series needs to start its child.
pub struct Ctx {
    /// The parent's bus, with the run's prefix.
    pub bus: Bus,
    prefix: String,
    cpus: Option<CpuPair>,
    watchdog: watchdog::Handle,
    /// The run's directory, when a transport row runs.
    dir: Option<transport::RunDir>,
}

impl Ctx {
    /// Starts `__bench-peer <case>` with `extra` arguments.
    pub fn spawn(&self, case: &str, extra: &[String]) -> Result<Peer> {
        let mut args = vec![
            "__bench-peer".to_string(),
            case.to_string(),
            "--prefix".to_string(),
            self.prefix.clone(),
        ];
        if let Some(cpus) = self.cpus {
            args.extend(["--cpu".to_string(), cpus.child.to_string()]);
        }
        if let Some(dir) = &self.dir {
            args.extend(["--dir".to_string(), dir.path().display().to_string()]);
        }
        args.extend_from_slice(extra);
        Peer::spawn(&format!("the {case} peer"), &args, Some(&self.watchdog))
    }

    /// Starts `__bench-peer <case>` with `extra` arguments, handing it inheritable copies of
    /// `fds`, each named by a `--fd N` in order (the copies are closed here once it has them).
    pub fn spawn_inheriting(&self, case: &str, fds: &[OwnedFd], extra: &[String]) -> Result<Peer> {
        let inherited = fds
            .iter()
            .map(|fd| InheritedFd::new(fd.as_fd()))
            .collect::<Result<Vec<_>>>()?;
        let mut args = Vec::new();
        for fd in &inherited {
            args.push("--fd".to_string());
            args.push(fd.number().to_string());
        }
        args.extend_from_slice(extra);
        self.spawn(case, &args)
    }
}

/// Every series the harness knows: its name, its message size, and whether it spins (then it
/// needs two CPUs).
const SERIES: &[(&str, usize, bool)] = &[
    ("shm-poll-8B", 8, true),
    ("shm-poll-64B", 64, true),
    ("shm-poll-1KiB-write8", 1024, true),
    ("shm-poll-4KiB-write8", 4096, true),
    ("shm-poll-64KiB-write8", 65536, true),
    ("shm-fanout-1-64B", 64, true),
    ("shm-fanout-2-64B", 64, true),
    ("shm-fanout-4-64B", 64, true),
    ("shm-fanout-8-64B", 64, true),
    ("raw-cacheline", 8, true),
    ("raw-two-lines", 8, true),
    ("raw-ring-lines", 8, true),
    ("raw-message-64B", 64, true),
    ("shm-futex-64B", 64, false),
    ("shm-futex-nospin-64B", 64, false),
    ("raw-futex", 4, false),
    ("pipe-64B", kernel::PAYLOAD, false),
    ("unix-socket-64B", kernel::PAYLOAD, false),
    ("shm-stream-8B", 8, true),
    ("raw-ring-8B", 8, true),
    ("shm-stream-64B", 64, true),
    ("shm-stream-slip-8B", 8, true),
    ("shm-stream-slip-64B", 64, true),
    ("shm-stream-batch-8B", 8, true),
    ("shm-stream-batch-64B", 64, true),
    ("raw-ring-64B", 64, true),
    ("shm-stream-2pub-64B", 64, true),
    ("shm-overwrite-publish-1sub-64B", 64, true),
    ("shm-overwrite-publish-8sub-64B", 64, true),
    ("shm-overwrite-burst-1sub-64B", 64, true),
    ("shm-overwrite-burst-8sub-64B", 64, true),
];

/// Latency groups, each run interleaved, with the title of its panel in the plot. In a
/// group, the `raw-*` series is the limit of every `shm-*` case, and any other series (pipe,
/// socket) is an alternative a user might pick instead, reported against the group's first
/// case.
const LATENCY_GROUPS: &[(&str, &[&str])] = &[
    // raw-two-lines: one line each way, what a round trip over two topics must move at least.
    (
        "Polling, 8 bytes, beside one cache line and two",
        &[
            "shm-poll-8B",
            "raw-cacheline",
            "raw-two-lines",
            "raw-ring-lines",
        ],
    ),
    // Latency against payload size: 8 bytes written in place into ever larger slots.
    // raw-message-64B: a 64-byte message and its tag each way, what shm-poll-64B moves at least.
    (
        "Polling: 8 bytes written into slots of 64 B to 64 KiB",
        &[
            "shm-poll-64B",
            "raw-cacheline",
            "raw-message-64B",
            "shm-poll-1KiB-write8",
            "shm-poll-4KiB-write8",
            "shm-poll-64KiB-write8",
        ],
    ),
    // Fan-out: the same round trip with more subscribers of the ping.
    (
        "Polling, 64 bytes, 1 to 8 subscribers of the ping",
        &[
            "shm-fanout-1-64B",
            "raw-cacheline",
            "shm-fanout-2-64B",
            "shm-fanout-4-64B",
            "shm-fanout-8-64B",
        ],
    ),
    (
        "Blocking, 64 bytes: futex wake-ups, beside a pipe and a Unix socket",
        &[
            "shm-futex-64B",
            "raw-futex",
            "shm-futex-nospin-64B",
            "pipe-64B",
            "unix-socket-64B",
        ],
    ),
];

/// Throughput groups: the case and its limit.
const STREAM_GROUPS: &[[&str; 2]] = &[
    ["shm-stream-8B", "raw-ring-8B"],
    ["shm-stream-64B", "raw-ring-64B"],
    ["shm-stream-slip-8B", "raw-ring-8B"],
    ["shm-stream-slip-64B", "raw-ring-64B"],
    ["shm-stream-batch-8B", "raw-ring-8B"],
    ["shm-stream-batch-64B", "raw-ring-64B"],
    ["shm-stream-2pub-64B", "raw-ring-64B"],
    // Publish cost against subscriber count: the limit is the same publisher with one.
    [
        "shm-overwrite-publish-8sub-64B",
        "shm-overwrite-publish-1sub-64B",
    ],
    [
        "shm-overwrite-burst-8sub-64B",
        "shm-overwrite-burst-1sub-64B",
    ],
];

/// The ping-pong cases of 64-byte messages (one parent and one child kind for all of them).
const PING_PONG_64B: &[&str] = &[
    "shm-poll-64B",
    "shm-futex-64B",
    "shm-futex-nospin-64B",
    "shm-fanout-1-64B",
    "shm-fanout-2-64B",
    "shm-fanout-4-64B",
    "shm-fanout-8-64B",
];

/// The Overwrite publish-cost cases.
const OVERWRITE: &[&str] = &[
    "shm-overwrite-publish-1sub-64B",
    "shm-overwrite-publish-8sub-64B",
    "shm-overwrite-burst-1sub-64B",
    "shm-overwrite-burst-8sub-64B",
];

/// A series' message size, and whether it spins: from [`SERIES`], or for a transport row's
/// case and the kernel limits, 64 bytes, spinning only on the ring when it polls.
fn series(name: &str) -> (usize, bool) {
    if let Some(s) = SERIES.iter().find(|s| s.0 == name) {
        return (s.1, s.2);
    }
    if let Some(row) = transport::row(name) {
        return (shm::MSG64_LEN, !row.copying() && !name.contains("-futex"));
    }
    if kernel::is_kernel_case(name) {
        return (kernel::PAYLOAD, false);
    }
    (0, false)
}

/// A latency group as it runs: its series, which is the limit, and which are cases.
struct LatencyGroup {
    /// The title of its panel in the plot.
    title: &'static str,
    series: Vec<&'static str>,
    /// The limit of every case of the group.
    limit: Option<usize>,
    /// Which series are cases, each a row beside the limit; the others are alternatives a
    /// user might pick instead, reported against series 0.
    cases: Vec<bool>,
}

impl LatencyGroup {
    /// A group of [`LATENCY_GROUPS`]: the `raw-*` series is the limit, `shm-*` the cases.
    fn ring(title: &'static str, series: &[&'static str]) -> LatencyGroup {
        LatencyGroup {
            title,
            series: series.to_vec(),
            limit: series.iter().position(|n| n.starts_with("raw-")),
            cases: series.iter().map(|n| n.starts_with("shm-")).collect(),
        }
    }

    /// A transport row's group: its case, then its limit.
    fn row(row: &transport::Row) -> LatencyGroup {
        let series = row.latency_series();
        LatencyGroup {
            title: row.title,
            limit: Some(1),
            cases: (0..series.len()).map(|k| k == 0).collect(),
            series,
        }
    }
}

fn start_latency(name: &'static str, ctx: &Ctx) -> Result<Box<dyn RoundTrip>> {
    use shm::{Msg1K, Msg4K, Msg64, Msg64K, Msg8, ShmPingPong};
    Ok(match name {
        _ if kernel::is_kernel_case(name) => Box::new(kernel::KernelPingPong::start(ctx, name)?),
        _ if transport::row(name).is_some() => Box::new(ShmPingPong::<Msg64>::start(ctx, name)?),
        "shm-poll-8B" => Box::new(ShmPingPong::<Msg8>::start(ctx, name)?),
        _ if PING_PONG_64B.contains(&name) => Box::new(ShmPingPong::<Msg64>::start(ctx, name)?),
        "shm-poll-1KiB-write8" => Box::new(ShmPingPong::<Msg1K>::start(ctx, name)?),
        "shm-poll-4KiB-write8" => Box::new(ShmPingPong::<Msg4K>::start(ctx, name)?),
        "shm-poll-64KiB-write8" => Box::new(ShmPingPong::<Msg64K>::start(ctx, name)?),
        "raw-cacheline" | "raw-two-lines" | "raw-ring-lines" => {
            Box::new(raw::CacheLine::start(ctx, name)?)
        }
        "raw-message-64B" => Box::new(raw::RawMessage::start(ctx)?),
        "raw-futex" => Box::new(raw::Futex::start(ctx)?),
        _ => bail!("unknown latency case {name}"),
    })
}

fn start_stream(name: &'static str, ctx: &Ctx) -> Result<Box<dyn Stream>> {
    use shm::{Msg64, Msg8, ShmOverwrite, ShmStream};
    Ok(match name {
        _ if kernel::is_kernel_case(name) => Box::new(kernel::KernelStream::start(ctx, name)?),
        _ if transport::row(name).is_some() => Box::new(ShmStream::<Msg64>::start(ctx, name)?),
        "shm-stream-8B" | "shm-stream-slip-8B" | "shm-stream-batch-8B" => {
            Box::new(ShmStream::<Msg8>::start(ctx, name)?)
        }
        "shm-stream-64B"
        | "shm-stream-slip-64B"
        | "shm-stream-batch-64B"
        | "shm-stream-2pub-64B" => Box::new(ShmStream::<Msg64>::start(ctx, name)?),
        _ if OVERWRITE.contains(&name) => Box::new(ShmOverwrite::start(ctx, name)?),
        "raw-ring-8B" => Box::new(raw::RawRing::<1>::start(ctx, name)?),
        "raw-ring-64B" => Box::new(raw::RawRing::<8>::start(ctx, name)?),
        _ => bail!("unknown throughput case {name}"),
    })
}

/// The child side: `__bench-peer <case>`.
pub fn peer_main(args: PeerArgs) -> Result<()> {
    peer::child_setup()?;
    if let Some(cpu) = args.cpu {
        affinity::pin_current_thread(cpu)?;
    }
    let mut ctl = Control::new();
    let fd = |k: usize| {
        args.fd
            .get(k)
            .copied()
            .ok_or_else(|| Error::msg(format!("{}: missing --fd", args.case)))
    };
    let case = args.case.as_str();
    let shm_bus = peer_bus(&args)?;
    let row = transport::row(case);
    let pipes = match row {
        Some(r) if r.inherited() => Some(transport::Pipes::inherited(r, &args.fd)?),
        _ => None,
    };
    let place = transport::Place {
        shm: &shm_bus,
        row,
        dir: args.dir.as_deref(),
        prefix: &args.prefix,
        pipes,
    };
    let spec = args.spec.as_str();
    match case {
        _ if kernel::is_kernel_case(case) => kernel::kernel_peer(&mut ctl, case, &args.fd),
        _ if place
            .row
            .is_some_and(|r| r.kind == transport::Kind::Latency) =>
        {
            shm::ping_pong_peer::<shm::Msg64>(&mut ctl, &place, case, spec)
        }
        _ if place.row.is_some() => shm::stream_peer::<shm::Msg64>(&mut ctl, &place, case, spec),
        "raw-cacheline" | "raw-two-lines" | "raw-ring-lines" => {
            raw::cacheline_peer(&mut ctl, fd(0)?, case)
        }
        "raw-message-64B" => raw::message_peer(&mut ctl, fd(0)?),
        "raw-futex" => raw::futex_peer(&mut ctl, fd(0)?),
        "raw-ring-8B" => raw::raw_ring_peer::<1>(&mut ctl, fd(0)?),
        "raw-ring-64B" => raw::raw_ring_peer::<8>(&mut ctl, fd(0)?),
        "shm-poll-8B" => shm::ping_pong_peer::<shm::Msg8>(&mut ctl, &place, case, spec),
        _ if PING_PONG_64B.contains(&case) => {
            shm::ping_pong_peer::<shm::Msg64>(&mut ctl, &place, case, spec)
        }
        "shm-poll-1KiB-write8" => shm::ping_pong_peer::<shm::Msg1K>(&mut ctl, &place, case, spec),
        "shm-poll-4KiB-write8" => shm::ping_pong_peer::<shm::Msg4K>(&mut ctl, &place, case, spec),
        "shm-poll-64KiB-write8" => shm::ping_pong_peer::<shm::Msg64K>(&mut ctl, &place, case, spec),
        _ if OVERWRITE.contains(&case) => shm::overwrite_peer(&mut ctl, &shm_bus, case),
        "shm-stream-8B" | "shm-stream-slip-8B" | "shm-stream-batch-8B" => {
            shm::stream_peer::<shm::Msg8>(&mut ctl, &place, case, spec)
        }
        "shm-stream-64B"
        | "shm-stream-slip-64B"
        | "shm-stream-batch-64B"
        | "shm-stream-2pub-64B" => shm::stream_peer::<shm::Msg64>(&mut ctl, &place, case, spec),
        _ => bail!("unknown case {case:?}"),
    }
}

/// The child's bus: the parent's prefix.
fn peer_bus(args: &PeerArgs) -> Result<Bus> {
    Bus::builder()
        .prefix(&args.prefix)
        .build()
        .context("opening the bus")
}

/// How many recorded iterations each block gets: `total` split into at least `min_blocks`
/// blocks of at most `max_per_block`, as evenly as possible.
fn split_blocks(total: u64, min_blocks: u64, max_per_block: u64) -> Vec<u64> {
    let blocks = min_blocks
        .max(total.div_ceil(max_per_block))
        .min(total)
        .max(1);
    (0..blocks)
        .map(|b| total / blocks + u64::from(b < total % blocks))
        .collect()
}

/// The progress on stderr: on a terminal, a bar redrawn in place with the elapsed time and
/// the case; otherwise one plain line per group, so that a CI log stays readable.
struct Progress {
    tty: bool,
    start: Instant,
    /// Groups in the run, skipped ones included.
    groups: usize,
}

/// The width of the progress line on a terminal: 80 columns, less one so that a terminal of
/// 80 never wraps it.
const PROGRESS_WIDTH: usize = 79;

/// The width of the bar inside the progress line, in characters.
const BAR_WIDTH: usize = 20;

impl Progress {
    /// Group `group` (from 1) of `self.groups`, `names` its series, starts.
    fn group(&self, group: usize, names: &[&str]) {
        if !self.tty {
            eprintln!("bench: [{group}/{}] {}", self.groups, names.join(" | "));
        }
        self.show(group, names, 0, 1, "warm-up");
    }

    /// Group `group` has run `done` of its `blocks` blocks; `what` says what runs now.
    fn show(&self, group: usize, names: &[&str], done: usize, blocks: usize, what: &str) {
        if !self.tty {
            return;
        }
        let line = progress_line(
            self.start.elapsed(),
            group,
            self.groups,
            done as f64 / blocks.max(1) as f64,
            names,
            what,
        );
        eprint!("\r{line:<PROGRESS_WIDTH$}");
        let _ = std::io::stderr().flush();
    }
}

impl Drop for Progress {
    /// Clears the line, also on an early return, so that an error starts on a clean line.
    fn drop(&mut self) {
        if self.tty {
            eprint!("\r{:PROGRESS_WIDTH$}\r", "");
        }
    }
}

/// `bench [#####...............] 0:42 [2/11] shm-poll-64B +4, block 3/10`: the whole run's
/// share done (groups before this one, and `fraction` of this one), the time since the start,
/// and the group's first case; never wider than [`PROGRESS_WIDTH`].
fn progress_line(
    elapsed: Duration,
    group: usize,
    groups: usize,
    fraction: f64,
    names: &[&str],
    what: &str,
) -> String {
    let done = (group.saturating_sub(1) as f64 + fraction.clamp(0.0, 1.0)) / groups.max(1) as f64;
    // Rounded down: the bar is full only when the run is done.
    let filled = ((done * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    let secs = elapsed.as_secs();
    let more = match names.len() {
        0 | 1 => String::new(),
        n => format!(" +{}", n - 1),
    };
    let line = format!(
        "bench [{}{}] {}:{:02} [{group}/{groups}] {}{more}, {what}",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled),
        secs / 60,
        secs % 60,
        names.first().copied().unwrap_or(""),
    );
    line.chars().take(PROGRESS_WIDTH).collect()
}

/// `shmbus bench`.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let round_trips = args
        .iters
        .unwrap_or(if args.quick { 10_000 } else { 100_000 });
    let messages = args
        .messages
        .unwrap_or(if args.quick { 2_000_000 } else { 20_000_000 });
    let warm_up = (round_trips / 10).max(1_000);
    // `--only unix` names a transport: its rows, not every case whose name holds "unix".
    let (words, texts): (Vec<&str>, Vec<&str>) = args
        .only
        .iter()
        .map(String::as_str)
        .partition(|o| transport::is_transport_word(o));
    let named = |names: &[&str]| names.iter().any(|n| texts.iter().any(|o| n.contains(o)));
    let selected = |names: &[&str]| args.only.is_empty() || named(names);
    // A transport row: by its transport, or by its case's name (not its limit's: `--only
    // shm-poll` means the ring's groups, not the memory-mapped file's beside them).
    let row_selected = |k: usize, row: &transport::Row| {
        if args.only.is_empty() {
            // CI's smoke run: one transport row.
            return !args.quick || k == 0;
        }
        words
            .iter()
            .any(|w| *w == "transport" || *w == row.transport)
            || named(&[row.case])
    };
    let mut notes = Vec::new();
    let mut rows = Vec::new();
    let mut unavailable = Vec::new();
    for (k, row) in transport::ROWS.iter().enumerate() {
        if !row_selected(k, row) {
            continue;
        }
        match row.unavailable() {
            None => rows.push(row),
            Some(_) => unavailable.push(format!(
                "{}: skipped, this build's transport::parse does not know {}",
                row.case,
                row.spec.replace("{dir}", "DIR")
            )),
        }
    }
    let mut latency_groups: Vec<LatencyGroup> = LATENCY_GROUPS
        .iter()
        .filter(|g| selected(g.1))
        .map(|&(title, series)| LatencyGroup::ring(title, series))
        .collect();
    latency_groups.extend(
        rows.iter()
            .filter(|r| r.kind == transport::Kind::Latency)
            .map(|r| LatencyGroup::row(r)),
    );
    // Each throughput group with its message count: a copying transport's share of them.
    let mut stream_groups: Vec<([&str; 2], u64)> = STREAM_GROUPS
        .iter()
        .filter(|g| selected(&g[..]))
        .map(|&g| (g, messages))
        .collect();
    let copying_messages = (messages / transport::COPYING_STREAM_SHARE).max(2);
    stream_groups.extend(
        rows.iter()
            .filter(|r| r.kind == transport::Kind::Stream)
            .map(|r| {
                let n = if r.copying() {
                    copying_messages
                } else {
                    messages
                };
                (r.group(), n)
            }),
    );
    if latency_groups.is_empty() && stream_groups.is_empty() {
        if let Some(why) = unavailable.first() {
            bail!("{why}");
        }
        bail!("no case matches --only {:?}", args.only);
    }
    notes.extend(unavailable);
    if args.quick && args.only.is_empty() {
        notes.push(
            "--quick: of the transport rows only unix-64B ran (--only transport runs them all)"
                .to_string(),
        );
    }
    if stream_groups
        .iter()
        .any(|(g, _)| transport::row(g[0]).is_some_and(|r| r.copying()))
    {
        notes.push(format!(
            "the copying transports' streams and their limits carry {copying_messages} messages each (1/{} of the others')",
            transport::COPYING_STREAM_SHARE
        ));
    }
    if let Some(path) = &args.plot {
        // Said now rather than after the run.
        if latency_groups.is_empty() {
            bail!(
                "--plot draws the latency cases, and --only {:?} selects none",
                args.only
            );
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "--plot {}: {} is not a directory",
                path.display(),
                dir.display()
            );
        }
    }

    let cpus = if args.same_cpu {
        let cpu = affinity::allowed_cpus()?.first().copied().unwrap_or(0);
        Some(CpuPair {
            parent: cpu,
            child: cpu,
        })
    } else {
        affinity::choose(args.cpus)?
    };
    // Before pinning, which narrows what the machine seems to have.
    let machine = Machine::probe(cpus);
    if let Some(pair) = cpus {
        // Before any thread or child is started: they inherit the parent's CPU.
        affinity::pin_current_thread(pair.parent)?;
    }
    let spin_ok = cpus.is_some_and(|pair| pair.parent != pair.child);
    if args.same_cpu {
        notes.push("--same-cpu: the spinning cases were skipped".to_string());
    } else if !spin_ok {
        notes.push(
            "the spinning cases were skipped: they need two CPUs, and this process may use one"
                .to_string(),
        );
    }

    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    sweep::remove_stale("shmbus-bench-");
    transport::remove_stale_runs("shmbus-bench-");
    let prefix = format!(
        "shmbus-bench-{}-{}.",
        std::process::id(),
        unix_time.as_nanos() % 1_000_000_000_000
    );
    // Dropped last: removes what a killed child left behind.
    let _sweep = Sweep::new(prefix.clone());
    let watchdog = Watchdog::start("bench", WATCHDOG_LIMIT, prefix.clone())?;
    let bus = Bus::builder()
        .prefix(&prefix)
        .build()
        .context("opening the bus")?;
    let dir = if rows.is_empty() {
        None
    } else {
        Some(transport::RunDir::create(&prefix)?)
    };
    let ctx = Ctx {
        bus,
        prefix,
        cpus,
        watchdog: watchdog.handle(),
        dir,
    };
    let clock_ns = clock_overhead()?;
    let groups_total = latency_groups.len() + stream_groups.len();
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
        start: Instant::now(),
        groups: groups_total,
    };

    let latency_blocks = split_blocks(round_trips, args.blocks, MAX_ROUND_TRIPS_PER_BLOCK);
    let stream_blocks = split_blocks(messages, args.blocks, MAX_MESSAGES_PER_BLOCK);
    let mut group_no = 0;

    let mut latency_rows = Vec::new();
    let mut panels = Vec::new();
    for g in latency_groups {
        group_no += 1;
        let group = &g.series[..];
        if group.iter().any(|n| series(n).1) && !spin_ok {
            continue;
        }
        progress.group(group_no, group);
        let figs = run_latency_group(&ctx, group, warm_up, &latency_blocks, |b| {
            watchdog.progress();
            let what = format!("block {b}/{}", latency_blocks.len());
            progress.show(group_no, group, b - 1, latency_blocks.len(), &what);
        })?;
        let measured = |k: usize| Measured {
            name: group[k],
            payload: series(group[k]).0,
            fig: figs[k],
        };
        let limit = g.limit;
        panels.push(plot::Panel {
            title: g.title,
            series: group
                .iter()
                .zip(&figs)
                .enumerate()
                .map(|(k, (&name, &fig))| plot::Series {
                    name,
                    role: if Some(k) == limit {
                        plot::Role::Limit
                    } else if g.cases[k] {
                        plot::Role::Case
                    } else {
                        plot::Role::Alternative
                    },
                    fig,
                })
                .collect(),
        });
        for (k, _) in group.iter().enumerate() {
            if g.cases[k] {
                latency_rows.push(LatencyRow {
                    case: measured(k),
                    limit: limit.map(measured),
                    alternative_to: None,
                });
            } else if Some(k) != limit {
                latency_rows.push(LatencyRow {
                    case: measured(k),
                    limit: None,
                    alternative_to: Some(measured(0)),
                });
            }
        }
    }

    let mut stream_rows = Vec::new();
    for (group, n) in stream_groups {
        group_no += 1;
        if group.iter().any(|n| series(n).1) && !spin_ok {
            continue;
        }
        progress.group(group_no, &group);
        let blocks = split_blocks(n, args.blocks, MAX_MESSAGES_PER_BLOCK);
        let [case, limit] = run_stream_group(&ctx, group, &blocks, |b| {
            watchdog.progress();
            let what = format!("block {b}/{}", blocks.len());
            progress.show(group_no, &group, b - 1, blocks.len(), &what);
        })?;
        let measured = |k: usize, fig| Measured {
            name: group[k],
            payload: series(group[k]).0,
            fig,
        };
        stream_rows.push(StreamRow {
            case: measured(0, case),
            limit: measured(1, limit),
        });
    }
    drop(progress);
    drop(watchdog);

    let run = RunInfo {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        unix_time: unix_time.as_secs(),
        round_trips,
        warm_up,
        messages,
        latency_blocks: latency_blocks.len() as u64,
        stream_blocks: stream_blocks.len() as u64,
        clock_ns,
        stream_capacity: STREAM_CAPACITY,
    };
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&machine, &run, &notes, &panels))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let json = report::json_lines(&machine, &run, &latency_rows, &stream_rows);
    if let Some(path) = &args.out {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(json.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let text = if args.json {
        json
    } else {
        report::markdown(&machine, &run, &latency_rows, &stream_rows, &notes)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the report")?;
    Ok(ExitCode::SUCCESS)
}

/// What the two clock reads around a round trip cost: the median of back-to-back pairs.
fn clock_overhead() -> Result<u64> {
    let mut hist = stats::histogram()?;
    stats::timed_round_trips(1_000, 20_000, &mut hist, |_| Ok(()))?;
    Ok(Latency::of(&hist).p50)
}

/// Runs one latency group: a warm-up block per series, then the blocks interleaved.
fn run_latency_group(
    ctx: &Ctx,
    group: &[&'static str],
    warm_up: u64,
    blocks: &[u64],
    mut on_block: impl FnMut(usize),
) -> Result<Vec<Latency>> {
    let mut runners = Vec::new();
    for &name in group {
        runners.push(start_latency(name, ctx)?);
    }
    let mut hists = Vec::new();
    for _ in group {
        hists.push(stats::histogram()?);
    }
    let mut discard = stats::histogram()?;
    for runner in &mut runners {
        runner.block(warm_up, 0, &mut discard)?;
    }
    for (b, &n) in blocks.iter().enumerate() {
        on_block(b + 1);
        for (runner, hist) in runners.iter_mut().zip(&mut hists) {
            runner.block(BLOCK_WARM_UP, n, hist)?;
        }
    }
    for runner in runners {
        runner.finish()?;
    }
    Ok(hists.iter().map(Latency::of).collect())
}

/// Runs one throughput group: a warm-up block each, then the blocks interleaved.
fn run_stream_group(
    ctx: &Ctx,
    group: [&'static str; 2],
    blocks: &[u64],
    mut on_block: impl FnMut(usize),
) -> Result<[StreamFig; 2]> {
    let mut runners = [start_stream(group[0], ctx)?, start_stream(group[1], ctx)?];
    let warm = blocks.first().copied().unwrap_or(2).clamp(2, 100_000);
    for runner in &mut runners {
        runner.block(warm)?;
    }
    let mut figs = [(); 2].map(|()| StreamFig {
        rates: Vec::new(),
        messages: 0,
    });
    for (b, &n) in blocks.iter().enumerate() {
        on_block(b + 1);
        for (runner, fig) in runners.iter_mut().zip(&mut figs) {
            let block = runner.block(n.max(2))?;
            fig.rates
                .push(block.intervals as f64 * 1e9 / block.elapsed_ns as f64);
            fig.messages += n;
        }
    }
    for runner in runners {
        runner.finish()?;
    }
    Ok(figs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_fits_and_counts() {
        let names = ["shm-poll-64B", "raw-cacheline", "shm-poll-1KiB-write8"];
        let line = progress_line(Duration::from_secs(62), 2, 4, 0.5, &names, "block 6/10");
        assert_eq!(
            line,
            "bench [#######.............] 1:02 [2/4] shm-poll-64B +2, block 6/10"
        );
        let long = ["shm-overwrite-publish-8sub-64B".repeat(3)];
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let line = progress_line(Duration::ZERO, 1, 1, 2.0, &long, "warm-up");
        assert_eq!(line.chars().count(), PROGRESS_WIDTH);
        assert!(line.starts_with(&format!("bench [{}] 0:00 [1/1] ", "#".repeat(BAR_WIDTH))));
    }

    #[test]
    fn blocks_split_evenly() {
        assert_eq!(split_blocks(10, 3, 100), [4, 3, 3]);
        assert_eq!(split_blocks(250, 1, 100), [84, 83, 83]);
        assert_eq!(split_blocks(2, 10, 100), [1, 1]);
    }
}
