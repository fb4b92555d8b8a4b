//! The bench's output: a markdown table for people and JSON lines for scripts, both naming
//! the machine and the command that produced them.
//!
//! JSON is written by hand: the objects are flat apart from `machine`, every key is fixed
//! here, and the only free text (the CPU model, the command line) goes through [`json_str`].

use std::fmt::Write as _;

use crate::affinity::{self, CpuPair};
use crate::stats::Latency;

/// Where the run happened.
pub struct Machine {
    /// CPUs this process may use.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// The kernel release.
    pub kernel: String,
    /// The CPUs the two processes were pinned to, if they were.
    pub cpus: Option<CpuPair>,
    /// Whether those two CPUs are hyper-threads of one core.
    pub smt_siblings: Option<bool>,
    /// The one-minute load average when the run started: other work makes figures noisy.
    pub load: Option<f64>,
}

impl Machine {
    /// Reads the machine's description.
    pub fn probe(cpus: Option<CpuPair>) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: rustix::system::uname()
                .release()
                .to_string_lossy()
                .into_owned(),
            cpus,
            smt_siblings: cpus.and_then(affinity::smt_siblings),
            load: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next()?.parse().ok()),
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let load = match self.load {
            Some(load) => format!("; load average {load:.2} at the start"),
            None => String::new(),
        };
        format!(
            "{} CPU{} ({}), Linux {}; two processes {}{load}",
            self.nproc,
            if self.nproc == 1 { "" } else { "s" },
            self.cpu_model,
            self.kernel,
            affinity::describe(self.cpus)
        )
    }

    /// The `machine` JSON object, and the pinning.
    fn json(&self) -> String {
        let pinned = match self.cpus {
            Some(p) => format!("[{},{}]", p.parent, p.child),
            None => "null".to_string(),
        };
        let smt = match self.smt_siblings {
            Some(b) => b.to_string(),
            None => "null".to_string(),
        };
        format!(
            r#""machine":{{"nproc":{},"cpu":{},"kernel":{},"load_1min":{}}},"pinned_cpus":{pinned},"smt_siblings":{smt}"#,
            self.nproc,
            json_str(&self.cpu_model),
            json_str(&self.kernel),
            self.load.map_or("null".to_string(), json_f64),
        )
    }
}

/// What was run, for the header and for every JSON object.
pub struct RunInfo {
    /// The command line, as typed.
    pub command: String,
    /// Seconds since the epoch at the start.
    pub unix_time: u64,
    /// Recorded round trips per latency case.
    pub round_trips: u64,
    /// Unrecorded warm-up round trips per latency case.
    pub warm_up: u64,
    /// Messages per throughput case.
    pub messages: u64,
    /// Blocks per latency case.
    pub latency_blocks: u64,
    /// Blocks per throughput case.
    pub stream_blocks: u64,
    /// The cost of the two clock reads around each round trip (included in every figure).
    pub clock_ns: u64,
    /// The ring capacity of the throughput cases.
    pub stream_capacity: usize,
}

/// One measured series: a case or a limit.
pub struct Measured<F> {
    pub name: &'static str,
    pub payload: usize,
    pub fig: F,
}

/// A latency row: a case, its limit if it has one, and the case it is an alternative to.
pub struct LatencyRow {
    pub case: Measured<Latency>,
    pub limit: Option<Measured<Latency>>,
    /// For pipe and socket rows: the shmbus case they were interleaved with.
    pub alternative_to: Option<Measured<Latency>>,
}

/// Throughput figures of one series, from its blocks.
pub struct StreamFig {
    /// Messages per second of each block.
    pub rates: Vec<f64>,
    /// Messages received over all blocks.
    pub messages: u64,
}

impl StreamFig {
    /// The median block's rate: what the table quotes.
    pub fn median(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => 0.0,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.rates.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.rates.iter().copied().fold(0.0, f64::max)
    }
}

/// A throughput row: a case and its limit.
pub struct StreamRow {
    pub case: Measured<StreamFig>,
    pub limit: Measured<StreamFig>,
}

/// The markdown report.
pub fn markdown(
    machine: &Machine,
    run: &RunInfo,
    latency: &[LatencyRow],
    streams: &[StreamRow],
    notes: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# shmbus bench\n");
    let _ = writeln!(s, "- machine: {}", machine.describe());
    let _ = writeln!(s, "- command: `{}`", run.command);
    let _ = writeln!(
        s,
        "- each case and its limit measured in the same run, interleaved in short blocks (case, limit, case, limit, ...): {} per latency case, {} per throughput case",
        run.latency_blocks, run.stream_blocks
    );
    for note in notes {
        let _ = writeln!(s, "- {note}");
    }
    if !latency.is_empty() {
        let _ = writeln!(
            s,
            "\n## Round trip, ns ({} per case after {} warm-up; full round trips, not halved; each includes ~{} ns of clock reads)\n",
            run.round_trips, run.warm_up, run.clock_ns
        );
        let _ = writeln!(
            s,
            "| case | limit | p50 | p99 | p99.9 | max | limit p50 | limit p99 | p50 / limit |"
        );
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
        for row in latency {
            let c = &row.case.fig;
            let (limit_name, lp50, lp99, ratio) = match &row.limit {
                Some(l) => (
                    l.name.to_string(),
                    l.fig.p50.to_string(),
                    l.fig.p99.to_string(),
                    format!("{:.2}", ratio(c.p50 as f64, l.fig.p50 as f64)),
                ),
                None => ("—".into(), "—".into(), "—".into(), "—".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {limit_name} | {} | {} | {} | {} | {lp50} | {lp99} | {ratio} |",
                row.case.name, c.p50, c.p99, c.p999, c.max
            );
        }
        for row in latency {
            if let Some(base) = &row.alternative_to {
                let _ = writeln!(
                    s,
                    "\n{} against {}, in the same interleaved run: p50 {}x, p99 {}x the shmbus figure.",
                    row.case.name,
                    base.name,
                    fmt_ratio(ratio(row.case.fig.p50 as f64, base.fig.p50 as f64)),
                    fmt_ratio(ratio(row.case.fig.p99 as f64, base.fig.p99 as f64)),
                );
            }
        }
    }
    if !streams.is_empty() {
        let _ = writeln!(
            s,
            "\n## Throughput, one direction, publisher to subscriber ({} messages per case, ring of {} slots; median block; MB = 10^6 bytes of payload)\n",
            run.messages, run.stream_capacity
        );
        let _ = writeln!(
            s,
            "| case | limit | message | msgs/s | MB/s | limit msgs/s | limit MB/s | ratio to limit |"
        );
        let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|");
        for row in streams {
            let (c, l) = (row.case.fig.median(), row.limit.fig.median());
            let _ = writeln!(
                s,
                "| {} | {} | {} B | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} |",
                row.case.name,
                row.limit.name,
                row.case.payload,
                c,
                c * row.case.payload as f64 / 1e6,
                l,
                l * row.limit.payload as f64 / 1e6,
                ratio(c, l)
            );
        }
    }
    s
}

/// The JSON lines: one object per case.
pub fn json_lines(
    machine: &Machine,
    run: &RunInfo,
    latency: &[LatencyRow],
    streams: &[StreamRow],
) -> String {
    let common = format!(
        r#"{},"command":{},"unix_time":{}"#,
        machine.json(),
        json_str(&run.command),
        run.unix_time,
    );
    let mut s = String::new();
    for row in latency {
        let c = &row.case.fig;
        let mut line = format!(
            r#"{{"kind":"latency","case":{},"payload_bytes":{},"round_trips":{},"warm_up":{},"blocks":{},"clock_ns":{},{}"#,
            json_str(row.case.name),
            row.case.payload,
            c.count,
            run.warm_up,
            run.latency_blocks,
            run.clock_ns,
            latency_json("", c)
        );
        match &row.limit {
            Some(l) => {
                let _ = write!(
                    line,
                    r#","limit":{},{},"ratio_p50":{},"ratio_p99":{},"ratio_p999":{}"#,
                    json_str(l.name),
                    latency_json("limit_", &l.fig),
                    json_f64(ratio(c.p50 as f64, l.fig.p50 as f64)),
                    json_f64(ratio(c.p99 as f64, l.fig.p99 as f64)),
                    json_f64(ratio(c.p999 as f64, l.fig.p999 as f64)),
                );
            }
            None => line.push_str(r#","limit":null"#),
        }
        if let Some(base) = &row.alternative_to {
            let _ = write!(
                line,
                r#","alternative_to":{},"alternative_to_p50_ns":{},"ratio_p50_to_alternative_to":{}"#,
                json_str(base.name),
                base.fig.p50,
                json_f64(ratio(c.p50 as f64, base.fig.p50 as f64)),
            );
        }
        let _ = writeln!(s, "{line},{common}}}");
    }
    for row in streams {
        let (c, l) = (&row.case.fig, &row.limit.fig);
        let _ = writeln!(
            s,
            r#"{{"kind":"throughput","case":{},"payload_bytes":{},"messages":{},"blocks":{},"ring_capacity":{},{},"limit":{},{},"ratio":{},{common}}}"#,
            json_str(row.case.name),
            row.case.payload,
            c.messages,
            run.stream_blocks,
            run.stream_capacity,
            stream_json("", c, row.case.payload),
            json_str(row.limit.name),
            stream_json("limit_", l, row.limit.payload),
            json_f64(ratio(c.median(), l.median())),
        );
    }
    s
}

fn latency_json(prefix: &str, f: &Latency) -> String {
    format!(
        r#""{prefix}p50_ns":{},"{prefix}p99_ns":{},"{prefix}p999_ns":{},"{prefix}max_ns":{},"{prefix}min_ns":{},"{prefix}mean_ns":{}"#,
        f.p50,
        f.p99,
        f.p999,
        f.max,
        f.min,
        json_f64(f.mean)
    )
}

fn stream_json(prefix: &str, f: &StreamFig, payload: usize) -> String {
    let rates: Vec<String> = f.rates.iter().map(|&r| json_f64(r.round())).collect();
    format!(
        r#""{prefix}msgs_per_s":{},"{prefix}bytes_per_s":{},"{prefix}msgs_per_s_min":{},"{prefix}msgs_per_s_max":{},"{prefix}block_msgs_per_s":[{}]"#,
        json_f64(f.median().round()),
        json_f64((f.median() * payload as f64).round()),
        json_f64(f.min().round()),
        json_f64(f.max().round()),
        rates.join(",")
    )
}

/// `a / b`, or 0 when `b` is 0.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// A ratio for people: `1.35`, `12.4`, `310`.
fn fmt_ratio(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// A JSON number: finite, with up to four decimals; `null` otherwise.
fn json_f64(x: f64) -> String {
    if !x.is_finite() {
        return "null".to_string();
    }
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_and_strings() {
        assert_eq!(json_f64(1.5), "1.5");
        assert_eq!(json_f64(2.0), "2");
        assert_eq!(json_f64(0.0), "0");
        assert_eq!(json_f64(f64::NAN), "null");
        assert_eq!(json_str("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }

    #[test]
    fn median_of_blocks() {
        let f = StreamFig {
            rates: vec![3.0, 1.0, 2.0, 10.0],
            messages: 4,
        };
        assert_eq!(f.median(), 2.5);
    }
}
