//! Which two CPUs the two processes of a measurement run on, and pinning a thread to one.
//!
//! The parent pins its main thread before it starts any other thread or child, and each child
//! pins itself first thing, so every measured loop runs on the CPU it was given. This module
//! only reads the affinity mask and the topology in sysfs; it never changes another process.

use std::fmt;
use std::str::FromStr;

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

use crate::error::{bail, Context, Error, Result};

/// Two CPUs: one for the parent (publisher, or the side that measures), one for the child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuPair {
    /// The CPU of the parent process.
    pub parent: usize,
    /// The CPU of the child process.
    pub child: usize,
}

impl FromStr for CpuPair {
    type Err = String;

    /// Parses `"A,B"`.
    fn from_str(s: &str) -> Result<CpuPair, String> {
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| format!("expected two CPU numbers as A,B, got {s:?}"))?;
        let cpu = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("{t:?} is not a CPU number"))
        };
        let pair = CpuPair {
            parent: cpu(a)?,
            child: cpu(b)?,
        };
        if pair.parent == pair.child {
            return Err(format!("the two CPUs must differ, got {s:?}"));
        }
        Ok(pair)
    }
}

impl fmt::Display for CpuPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.parent, self.child)
    }
}

/// The CPUs this process may run on, in increasing order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = sched_getaffinity(None).context("reading the CPU affinity mask")?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// The pair to pin to: `requested` if given (each must be allowed), else the first two allowed
/// CPUs. `None` when this process may use only one CPU: then nothing is pinned.
pub fn choose(requested: Option<CpuPair>) -> Result<Option<CpuPair>> {
    let allowed = allowed_cpus()?;
    match requested {
        Some(pair) => {
            for cpu in [pair.parent, pair.child] {
                if !allowed.contains(&cpu) {
                    bail!("CPU {cpu} is not one this process may run on (allowed: {allowed:?})");
                }
            }
            Ok(Some(pair))
        }
        None => Ok(match allowed[..] {
            [parent, child, ..] => Some(CpuPair { parent, child }),
            _ => None,
        }),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        bail!("CPU {cpu} is out of range");
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// Whether the two CPUs are hyper-threads of one core (they share L1 and L2, so a cache line
/// moves between them much faster than between cores). `None` when sysfs does not say, or
/// when the pair is one CPU twice.
pub fn smt_siblings(pair: CpuPair) -> Option<bool> {
    if pair.parent == pair.child {
        return None;
    }
    let path = format!(
        "/sys/devices/system/cpu/cpu{}/topology/thread_siblings_list",
        pair.parent
    );
    let list = std::fs::read_to_string(path).ok()?;
    parse_cpu_list(list.trim())
        .ok()
        .map(|cpus| cpus.contains(&pair.child))
}

/// Parses a kernel CPU list such as `"0-3,8,10-11"`.
pub(crate) fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let bad = || Error::msg(format!("bad CPU list {s:?}"));
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let lo: usize = lo.parse().map_err(|_| bad())?;
                let hi: usize = hi.parse().map_err(|_| bad())?;
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(cpus)
}

/// How the processes are placed, for the output: "pinned to CPUs 0 (parent) and 1 (child)".
pub fn describe(pair: Option<CpuPair>) -> String {
    match pair {
        Some(p) if p.parent == p.child => format!("both pinned to CPU {}", p.parent),
        Some(p) => {
            let smt = match smt_siblings(p) {
                Some(true) => ", hyper-threads of one core",
                Some(false) => ", different cores",
                None => "",
            };
            format!("pinned to CPUs {} and {}{smt}", p.parent, p.child)
        }
        None => "not pinned: this process may use only one CPU".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_and_lists() {
        assert_eq!(
            "0,3".parse::<CpuPair>(),
            Ok(CpuPair {
                parent: 0,
                child: 3
            })
        );
        assert!("1,1".parse::<CpuPair>().is_err());
        assert!("1".parse::<CpuPair>().is_err());
        assert_eq!(parse_cpu_list("0-2,5").ok(), Some(vec![0, 1, 2, 5]));
        assert!(parse_cpu_list("x").is_err());
    }
}
