//! `shmbus list`, `inspect`, `clean`, `echo` and `pub`: what is on a bus, what its messages
//! look like, what is left over after a crash, and test traffic. Each is a thin layer over the
//! library's own calls (`Bus::topics`, `Bus::topic_info`, `Bus::clean`, a byte subscriber that
//! reads any type, a byte publisher).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use shmbus::{Bus, OpenError, TopicInfo, WaitStrategy};

use crate::error::{Context, Error, Result};

/// Which bus: the segments' directory and name prefix.
#[derive(Args, Debug, Clone)]
pub struct BusArgs {
    /// The prefix of the bus's segment names.
    #[arg(long, default_value = shmbus::DEFAULT_PREFIX)]
    prefix: String,
    /// The directory of the bus's segments.
    #[arg(long, default_value = shmbus::segment::SHM_DIR)]
    dir: PathBuf,
}

impl BusArgs {
    pub fn bus(&self) -> Result<Bus> {
        Bus::builder()
            .prefix(&self.prefix)
            .dir(&self.dir)
            .build()
            .map_err(Error::msg)
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// One JSON object per topic, one per line.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The topic's name (without the prefix).
    topic: String,
    #[command(flatten)]
    bus: BusArgs,
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CleanArgs {
    #[command(flatten)]
    bus: BusArgs,
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// One JSON array of the topics removed (or to remove).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    /// The topic's name (without the prefix).
    topic: String,
    #[command(flatten)]
    bus: BusArgs,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long without a message, in seconds (default: wait for ever).
    #[arg(long)]
    idle: Option<f64>,
    /// Start with up to this many messages already published (as the topic keeps them).
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// One JSON object per message: seq, lane, len, hex.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct PubArgs {
    /// The topic's name (without the prefix): created as a byte topic, or attached to if it
    /// exists (it must then be a byte topic with a free publisher lane).
    topic: String,
    #[command(flatten)]
    bus: BusArgs,
    /// Messages to send.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Messages per second (0: as fast as the subscribers take them).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Bytes per message (at least 8: each starts with its number, little-endian).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Slots in the ring, if this creates the topic.
    #[arg(long, default_value_t = 1024)]
    capacity: u64,
    /// Wait up to this many seconds for a first subscriber before sending.
    #[arg(long, default_value_t = 0.0)]
    wait_subscriber: f64,
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| Error::msg(format!("{what}: {s} is not a duration")))
}

/// A topic as JSON (the fields of `TopicInfo`, and whether each process is alive).
fn topic_json(info: &TopicInfo) -> Value {
    json!({
        "topic": info.topic,
        "type": info.fingerprint.to_string(),
        "policy": info.policy.to_string(),
        "capacity": info.capacity,
        "slot_size": info.slot_size,
        "history": info.history,
        "max_publishers": info.max_publishers,
        "max_subscribers": info.max_subscribers,
        "publishers": info.publishers.iter().map(|&pid| json!({
            "pid": pid,
            "alive": alive(pid),
        })).collect::<Vec<_>>(),
        "published": info.published,
        "evictions": info.evictions,
        "sleepers": info.sleepers,
        "publisher_sleepers": info.publisher_sleepers,
        "subscribers": info.subscribers.iter().map(|s| json!({
            "pid": s.pid,
            "alive": alive(s.pid),
            "next_seq": s.next_seq,
            "lag": s.lag,
            "lost": s.lost,
            "asleep": s.asleep,
        })).collect::<Vec<_>>(),
    })
}

/// Whether a process with this pid exists (the tables hold pids of processes that may have
/// died since).
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "alive"
    } else {
        "dead"
    }
}

pub fn list(args: ListArgs) -> Result<()> {
    let bus = args.bus.bus()?;
    // Each name with what a subscriber would find there; one that vanished meanwhile is left
    // out.
    let topics: Vec<(String, std::result::Result<TopicInfo, OpenError>)> = bus
        .topic_names()
        .map_err(Error::msg)?
        .into_iter()
        .map(|name| {
            let info = bus.topic_info(&name);
            (name, info)
        })
        .filter(|(_, info)| !matches!(info, Err(OpenError::NotFound { .. })))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        for (name, topic) in &topics {
            let line = match topic {
                Ok(info) => topic_json(info),
                Err(e) => json!({ "topic": name, "error": e.to_string() }),
            };
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    if topics.is_empty() {
        writeln!(
            out,
            "no topics under {}{}",
            args.bus.dir.display(),
            if args.bus.prefix.is_empty() {
                String::new()
            } else {
                format!("/{}*", args.bus.prefix)
            }
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<28} {:<9} {:>8} {:>10} {:>4} {:>4}",
        "TOPIC", "TYPE", "POLICY", "CAPACITY", "PUBLISHED", "PUBS", "SUBS"
    )?;
    for (name, topic) in &topics {
        match topic {
            Ok(info) => writeln!(
                out,
                "{:<24} {:<28} {:<9} {:>8} {:>10} {:>4} {:>4}",
                info.topic,
                info.fingerprint.to_string(),
                info.policy.to_string(),
                info.capacity,
                info.published,
                info.publishers.len(),
                info.subscribers.len()
            )?,
            Err(e) => writeln!(out, "{name:<24} refused: {e}")?,
        }
    }
    Ok(())
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let bus = args.bus.bus()?;
    let info = bus
        .topic_info(&args.topic)
        .map_err(Error::msg)
        .context(format!("inspecting topic {:?}", args.topic))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", topic_json(&info))?;
        return Ok(());
    }
    writeln!(out, "topic      {}", info.topic)?;
    writeln!(
        out,
        "segment    {}",
        bus.dir()
            .join(format!("{}{}", bus.prefix(), info.topic))
            .display()
    )?;
    writeln!(out, "type       {}", info.fingerprint)?;
    writeln!(out, "policy     {}", info.policy)?;
    writeln!(
        out,
        "ring       {} slots of {} bytes, history {}",
        info.capacity, info.slot_size, info.history
    )?;
    writeln!(out, "published  {}", info.published)?;
    writeln!(out, "evictions  {}", info.evictions)?;
    // Above the subscribers marked asleep: some were killed asleep and are still counted, so
    // every message costs the publisher a wake syscall until they are evicted.
    writeln!(out, "sleepers   {}", info.sleepers)?;
    writeln!(
        out,
        "publishers {} of {}",
        info.publishers.len(),
        info.max_publishers
    )?;
    for &pid in &info.publishers {
        writeln!(out, "  pid {pid:<8} {}", yes_no(alive(pid)))?;
    }
    writeln!(
        out,
        "subscribers {} of {}",
        info.subscribers.len(),
        info.max_subscribers
    )?;
    if !info.subscribers.is_empty() {
        writeln!(
            out,
            "  {:<12} {:<6} {:>12} {:>10} {:>10}  WAIT",
            "PID", "STATE", "NEXT SEQ", "LAG", "LOST"
        )?;
    }
    for s in &info.subscribers {
        writeln!(
            out,
            "  {:<12} {:<6} {:>12} {:>10} {:>10}  {}",
            s.pid,
            yes_no(alive(s.pid)),
            s.next_seq,
            s.lag,
            s.lost,
            if s.asleep { "asleep" } else { "awake" }
        )?;
    }
    Ok(())
}

pub fn clean(args: CleanArgs) -> Result<()> {
    let bus = args.bus.bus()?;
    let removed = bus.clean(args.dry_run).map_err(Error::msg)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", json!(removed))?;
        return Ok(());
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    if removed.is_empty() {
        writeln!(
            out,
            "nothing stale{}",
            if args.dry_run {
                " to remove"
            } else {
                " removed"
            }
        )?;
    }
    for topic in &removed {
        writeln!(out, "{verb} {topic}")?;
    }
    Ok(())
}

/// Hex of `bytes`, two digits a byte.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn echo(args: EchoArgs) -> Result<()> {
    let bus = args.bus.bus()?;
    let idle = args.idle.map(|s| seconds("--idle", s)).transpose()?;
    let mut subscriber = bus
        .subscriber::<[u8]>(&args.topic)
        .any_type()
        .history(args.history)
        .wait(WaitStrategy::default())
        .open()
        .map_err(Error::msg)
        .context(format!("subscribing to {:?}", args.topic))?;
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    while args.count.is_none_or(|n| seen < n) {
        let next = match idle {
            Some(idle) => subscriber.recv_timeout(idle),
            None => subscriber.recv().map(Some),
        };
        let sample = match next {
            Ok(Some(sample)) => sample,
            Ok(None) => break,
            Err(shmbus::RecvError::Disconnected) => break,
            Err(e) => {
                // Reported and skipped (a corrupt message) or final (a dead publisher).
                writeln!(out, "# {e}")?;
                if matches!(e, shmbus::RecvError::Corrupt { .. }) {
                    continue;
                }
                break;
            }
        };
        seen += 1;
        if args.json {
            writeln!(
                out,
                "{}",
                json!({
                    "seq": sample.seq(),
                    "lane": sample.lane(),
                    "len": sample.len(),
                    "hex": hex(&sample),
                })
            )?;
        } else {
            writeln!(
                out,
                "seq {} lane {} len {}: {}",
                sample.seq(),
                sample.lane(),
                sample.len(),
                hex(&sample)
            )?;
        }
        out.flush()?;
    }
    Ok(())
}

pub fn publish(args: PubArgs) -> Result<()> {
    if args.size < 8 {
        return Err(Error::msg(
            "--size: at least 8 bytes (each message starts with its number)",
        ));
    }
    let bus = args.bus.bus()?;
    let context = format!("publishing to {:?}", args.topic);
    let mut publisher = match bus.publisher::<[u8]>(&args.topic).attach() {
        Ok(p) => p,
        Err(OpenError::NotFound { .. }) => bus
            .publisher::<[u8]>(&args.topic)
            .slot_size(args.size as u64)
            .capacity(args.capacity)
            .create()
            .map_err(Error::msg)
            .context(&context)?,
        Err(e) => return Err(Error::msg(e)).context(&context),
    };
    if args.wait_subscriber > 0.0 {
        let wait = seconds("--wait-subscriber", args.wait_subscriber)?;
        if !publisher.wait_for_subscribers(1, wait) {
            return Err(Error::msg(format!(
                "{context}: no subscriber within {wait:?}"
            )));
        }
    }
    let period = (args.rate > 0.0)
        .then(|| seconds("--rate", 1.0 / args.rate))
        .transpose()?;
    let start = Instant::now();
    let mut message = vec![0u8; args.size];
    for i in 0..args.count {
        if let Some(period) = period {
            let due = start + period.mul_f64(i as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let seq = publisher.next_seq();
        message[..8].copy_from_slice(&seq.to_le_bytes());
        for (k, b) in message[8..].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_add(k as u8);
        }
        let mut loan = publisher
            .loan_bytes(message.len(), None)
            .map_err(Error::msg)
            .context(&context)?;
        loan.copy_from_slice(&message);
        loan.send();
    }
    let took = start.elapsed();
    eprintln!(
        "sent {} messages of {} bytes in {:.3} s",
        args.count,
        args.size,
        took.as_secs_f64()
    );
    Ok(())
}
