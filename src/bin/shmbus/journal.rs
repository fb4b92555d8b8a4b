//! `shmbus record` and `shmbus replay`: a topic of any bus into a journal file, and a journal
//! into a topic, over `shmbus::journal`'s `Recorder` and `Replayer`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use shmbus::journal::{Pace, RecordError, Recorder, ReplayError, Replayer};
use shmbus::{Bus, RecvError};

use crate::error::{Context, Error, Result};

/// Which bus: a transport and a name prefix.
#[derive(Args, Debug, Clone)]
pub struct TransportArgs {
    /// The bus's transport: shm, shm:DIR, mmap:DIR, unix:DIR, file:DIR.
    #[arg(long, default_value = "shm")]
    transport: String,
    /// The prefix of the bus's topic names.
    #[arg(long, default_value = shmbus::DEFAULT_PREFIX)]
    prefix: String,
}

impl TransportArgs {
    fn bus(&self) -> Result<Bus> {
        let transport = shmbus::transport::parse(&self.transport)
            .map_err(Error::msg)
            .context("--transport")?;
        Bus::builder()
            .prefix(&self.prefix)
            .transport_boxed(transport)
            .build()
            .map_err(Error::msg)
    }
}

#[derive(Args, Debug)]
pub struct RecordArgs {
    /// The topic to record (without the prefix); any type.
    topic: String,
    /// The journal file to write (created; a journal that a dead recorder of the same type
    /// left is continued).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    bus: TransportArgs,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long)]
    seconds: Option<f64>,
    /// Wait up to this many seconds for the topic to exist.
    #[arg(long, default_value_t = 10.0)]
    wait: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PaceArg {
    /// The gaps between the recorded send times.
    Recorded,
    /// As fast as the subscribers take them.
    Fast,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The journal file to replay.
    file: PathBuf,
    /// The topic to publish into (without the prefix); by default the journal's file name
    /// without its extension.
    #[arg(long)]
    topic: Option<String>,
    #[command(flatten)]
    bus: TransportArgs,
    /// How fast to publish.
    #[arg(long, value_enum, default_value_t = PaceArg::Recorded)]
    pace: PaceArg,
    /// Wait for this many subscribers before publishing the first message.
    #[arg(long, default_value_t = 0)]
    wait_subscribers: usize,
    /// How long to wait for them, in seconds.
    #[arg(long, default_value_t = 30.0)]
    wait: f64,
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| Error::msg(format!("{what}: {s} is not a duration")))
}

pub fn record(args: RecordArgs) -> Result<()> {
    let stop_after = args.seconds.map(|s| seconds("--seconds", s)).transpose()?;
    let wait = seconds("--wait", args.wait)?;
    let bus = args.bus.bus()?;
    let mut recorder = Recorder::start(&bus, &args.topic, &args.out, wait).map_err(Error::msg)?;
    let start = Instant::now();
    let deadline = stop_after.map(|s| start + s);
    let ended = loop {
        if args.count.is_some_and(|n| recorder.recorded() >= n) {
            break "the count was reached".to_string();
        }
        let slice = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) => left.min(Duration::from_millis(100)),
                None => break "the time was up".to_string(),
            },
            None => Duration::from_millis(100),
        };
        match recorder.record(slice) {
            Ok(_) => {}
            Err(RecordError::Recv {
                source: RecvError::Disconnected,
                ..
            }) => break "the publisher closed the topic".to_string(),
            Err(RecordError::Recv {
                source: RecvError::PublisherGone { pid },
                ..
            }) => break format!("the publisher (pid {pid}) died"),
            Err(e) => return Err(Error::msg(e)),
        }
    };
    let fingerprint = recorder.fingerprint();
    let n = recorder.finish().map_err(Error::msg)?;
    eprintln!(
        "recorded {n} messages of {:?} ({fingerprint}) into {} in {:.3} s: {ended}",
        args.topic,
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn replay(args: ReplayArgs) -> Result<()> {
    let wait = seconds("--wait", args.wait)?;
    let topic = match &args.topic {
        Some(topic) => topic.clone(),
        None => args
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                Error::msg(format!(
                    "{}: no topic name in the file's name; give --topic",
                    args.file.display()
                ))
            })?,
    };
    let bus = args.bus.bus()?;
    let mut replayer = Replayer::open(&args.file, Duration::from_secs(1)).map_err(Error::msg)?;
    let mut publisher = replayer
        .publisher(&bus, &topic)
        .create()
        .map_err(ReplayError::Create)
        .map_err(Error::msg)
        .with_context(|| format!("replaying into {topic:?}"))?;
    if args.wait_subscribers > 0 && !publisher.wait_for_subscribers(args.wait_subscribers, wait) {
        return Err(Error::msg(format!(
            "replaying into {topic:?}: fewer than {} subscribers within {wait:?}",
            args.wait_subscribers
        )));
    }
    let pace = match args.pace {
        PaceArg::Recorded => Pace::Recorded,
        PaceArg::Fast => Pace::Fast,
    };
    let start = Instant::now();
    let done = replayer
        .replay(&mut publisher, pace)
        .map_err(Error::msg)
        .with_context(|| format!("replaying into {topic:?}"))?;
    eprintln!(
        "replayed {} messages of {} into {topic:?} in {:.3} s (recorded over {:.3} s){}",
        done.messages,
        replayer.fingerprint(),
        start.elapsed().as_secs_f64(),
        done.span_ns as f64 / 1e9,
        if done.complete {
            ""
        } else {
            "; the journal has no close (its recorder died)"
        }
    );
    Ok(())
}
