//! `shmbus hz` and `shmbus top`: rates, lag and losses, sampled from discovery at an interval
//! and shown refreshed in place (on a terminal) or as one block (or JSON line) per sample.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use shmbus::TopicInfo;

use crate::error::{Context, Error, Result};
use crate::topics::BusArgs;

/// How often and how many times to sample.
#[derive(Args, Debug)]
pub struct Sampling {
    /// Seconds between samples.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many samples (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per sample and line, never redrawn in place.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct HzArgs {
    /// The topic's name (without the prefix).
    topic: String,
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    sampling: Sampling,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    sampling: Sampling,
}

/// Per-second rates between two snapshots of one topic.
struct Rates {
    published: f64,
    /// Per subscriber pid: messages read per second, lost per second.
    subscribers: HashMap<u32, (f64, f64)>,
}

fn rates(before: &TopicInfo, after: &TopicInfo, dt: f64) -> Rates {
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
    let earlier: HashMap<u32, _> = before.subscribers.iter().map(|s| (s.pid, s)).collect();
    let subscribers = after
        .subscribers
        .iter()
        .filter_map(|s| {
            let e = earlier.get(&s.pid)?;
            Some((
                s.pid,
                (per_s(e.next_seq, s.next_seq), per_s(e.lost, s.lost)),
            ))
        })
        .collect();
    Rates {
        published: per_s(before.published, after.published),
        subscribers,
    }
}

impl Sampling {
    fn interval(&self) -> Result<Duration> {
        Duration::try_from_secs_f64(self.interval)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| Error::msg(format!("--interval: {} is not a duration", self.interval)))
    }

    /// Call `sample` every interval with the time since the previous call, and show what it
    /// returns: in place on a terminal, else appended.
    fn run(&self, mut sample: impl FnMut(f64) -> Result<String>) -> Result<()> {
        let interval = self.interval()?;
        let in_place = !self.json && std::io::stdout().is_terminal();
        let mut out = std::io::stdout().lock();
        let mut last = Instant::now();
        let mut taken = 0;
        while self.count.is_none_or(|n| taken < n) {
            std::thread::sleep(interval);
            let now = Instant::now();
            let text = sample(now.duration_since(last).as_secs_f64())?;
            last = now;
            taken += 1;
            if in_place {
                // Home, clear the screen, then the sample.
                write!(out, "\x1b[H\x1b[2J{text}")?;
            } else {
                write!(out, "{text}")?;
            }
            out.flush()?;
        }
        Ok(())
    }
}

pub fn hz(args: HzArgs) -> Result<()> {
    let bus = args.bus.bus()?;
    let context = format!("sampling topic {:?}", args.topic);
    let mut before = bus.topic_info(&args.topic).context(&context)?;
    let json = args.sampling.json;
    args.sampling.run(|dt| {
        let after = bus.topic_info(&args.topic).context(&context)?;
        let r = rates(&before, &after, dt);
        let text = if json {
            let subs: Vec<_> = after
                .subscribers
                .iter()
                .map(|s| {
                    let (read, lost) = r.subscribers.get(&s.pid).copied().unwrap_or_default();
                    json!({"pid": s.pid, "read_per_s": read, "lost_per_s": lost,
                           "lag": s.lag, "lost": s.lost})
                })
                .collect();
            format!(
                "{}\n",
                json!({"topic": after.topic, "published": after.published,
                       "published_per_s": r.published, "subscribers": subs})
            )
        } else {
            let mut t = format!(
                "{}: {:.1} msgs/s published ({} in all), {} subscriber(s)\n",
                after.topic,
                r.published,
                after.published,
                after.subscribers.len()
            );
            t += &format!(
                "  {:<10} {:>12} {:>10} {:>12} {:>10}\n",
                "PID", "READ/S", "LAG", "LOST/S", "LOST"
            );
            for s in &after.subscribers {
                let (read, lost) = r.subscribers.get(&s.pid).copied().unwrap_or_default();
                t += &format!(
                    "  {:<10} {:>12.1} {:>10} {:>12.1} {:>10}\n",
                    s.pid, read, s.lag, lost, s.lost
                );
            }
            t
        };
        before = after;
        Ok(text)
    })
}

pub fn top(args: TopArgs) -> Result<()> {
    let bus = args.bus.bus()?;
    let snapshot = || -> Result<HashMap<String, TopicInfo>> {
        Ok(bus
            .topics()
            .map_err(Error::msg)?
            .into_iter()
            .flatten()
            .map(|t| (t.topic.clone(), t))
            .collect())
    };
    let mut before = snapshot()?;
    let json = args.sampling.json;
    args.sampling.run(|dt| {
        let after = snapshot()?;
        let mut names: Vec<&String> = after.keys().collect();
        names.sort();
        let mut text = String::new();
        let mut rows = Vec::new();
        if !json {
            text += &format!(
                "{:<24} {:>12} {:>5} {:>5} {:>10} {:>10}\n",
                "TOPIC", "MSGS/S", "PUBS", "SUBS", "MAX LAG", "LOST"
            );
        }
        for name in names {
            let now = &after[name];
            let published = before
                .get(name)
                .map_or(0.0, |b| rates(b, now, dt).published);
            let max_lag = now.subscribers.iter().map(|s| s.lag).max().unwrap_or(0);
            let lost: u64 = now.subscribers.iter().map(|s| s.lost).sum();
            if json {
                rows.push(json!({"topic": name, "published_per_s": published,
                                 "publishers": now.publishers.len(),
                                 "subscribers": now.subscribers.len(),
                                 "max_lag": max_lag, "lost": lost}));
            } else {
                text += &format!(
                    "{:<24} {:>12.1} {:>5} {:>5} {:>10} {:>10}\n",
                    name,
                    published,
                    now.publishers.len(),
                    now.subscribers.len(),
                    max_lag,
                    lost
                );
            }
        }
        if json {
            text = format!("{}\n", json!({ "topics": rows }));
        }
        before = after;
        Ok(text)
    })
}
