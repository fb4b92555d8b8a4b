//! `shmbus bench` run as a user runs it, kept short for CI's two cores: one latency group
//! (`--only shm-poll-8B`: the case, its limit and the two-line primitive) in the quick form,
//! with `--plot`, whose file must be an SVG that parses and draws each series of the group.
//! And the `--plot` mistakes said before anything runs. One transport's rows (`--only unix`:
//! the library over Unix seqpacket sockets beside a bare seqpacket socket pair, a round trip
//! and a stream; `--only pipe-transport`: over pipes the parent hands its child, beside a bare
//! pipe) print their ratios in the table and the JSON lines, and leave nothing behind.
//! No test here looks at a figure: the harness measures, tests check behaviour.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A file under the temporary directory, named for this process, a counter (the tests run in
/// parallel) and `what`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> Self {
        static NEXT: Mutex<u32> = Mutex::new(0);
        let n = {
            let mut next = common::lock(&NEXT);
            *next += 1;
            *next
        };
        let path = std::env::temp_dir().join(format!(
            "shmbus-cli-bench-{}-{}-{what}",
            std::process::id(),
            n
        ));
        let _ = std::fs::remove_file(&path);
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `shmbus args...` to its end, its output in files (no pipe to fill), killed and failed
/// if it outlives the watchdog.
fn shmbus(args: &[&str]) -> Output {
    shmbus_with_pid(args).0
}

/// As [`shmbus`], with the process id it ran as.
fn shmbus_with_pid(args: &[&str]) -> (Output, u32) {
    let out = TempFile::new("stdout");
    let err = TempFile::new("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out.0).unwrap())
        .stderr(File::create(&err.0).unwrap())
        .spawn()
        .expect("start shmbus");
    let pid = child.id();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > common::WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmbus {args:?} still running after {:?}", common::WATCHDOG);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        status,
        stdout: std::fs::read(&out.0).unwrap(),
        stderr: std::fs::read(&err.0).unwrap(),
    };
    (output, pid)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary directory")
}

#[test]
fn bench_writes_a_latency_plot() {
    let plot = TempFile::new("plot.svg");
    let args = [
        "bench",
        "--quick",
        "--only",
        "shm-poll-8B",
        "--plot",
        path_str(&plot.0),
    ];
    let out = shmbus(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shmbus {args:?} failed: {stderr}");
    // Not a terminal: the plain progress lines a CI log shows, one per group.
    assert!(
        stderr
            .contains("bench: [1/1] shm-poll-8B | raw-cacheline | raw-two-lines | raw-ring-lines"),
        "{stderr}"
    );
    assert!(!stderr.contains('\r'), "{stderr:?}");

    let text = std::fs::read_to_string(&plot.0).expect("the plot file");
    let doc = roxmltree::Document::parse(&text).expect("the plot parses as XML");
    let svg = doc.root_element();
    assert_eq!(svg.tag_name().name(), "svg");
    assert_eq!(
        svg.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let view_box: Vec<f64> = svg
        .attribute("viewBox")
        .expect("a view box")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let [x0, y0, width, height] = view_box[..] else {
        panic!("view box {view_box:?}");
    };
    assert_eq!((x0, y0), (0.0, 0.0));

    let lines: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .collect();
    if lines.is_empty() && stdout.contains("the spinning cases were skipped") {
        // One CPU: the polling group cannot run, and the plot says that it has nothing.
        assert!(text.contains("No latency case was measured in this run."));
        common::skip("the polling cases need two CPUs, and this process may use one");
        return;
    }
    let cases: Vec<&str> = lines
        .iter()
        .map(|n| n.attribute("data-case").expect("a named polyline"))
        .collect();
    assert_eq!(
        cases,
        [
            "shm-poll-8B",
            "raw-cacheline",
            "raw-two-lines",
            "raw-ring-lines"
        ]
    );
    for line in &lines {
        let points: Vec<(f64, f64)> = line
            .attribute("points")
            .unwrap()
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        // p50, p75, p90, p99 and p99.9 of 10^4 round trips (the max is a dot of its own).
        assert_eq!(points.len(), 5, "{points:?}");
        for (x, y) in points {
            assert!(x.is_finite() && (0.0..=width).contains(&x), "x {x}");
            assert!(y.is_finite() && (0.0..=height).contains(&y), "y {y}");
        }
    }
    let maxes = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("max"))
        .count();
    assert_eq!(maxes, 4);
    // The table on stdout is the same as without --plot.
    assert!(
        stdout.contains("| shm-poll-8B | raw-cacheline |"),
        "{stdout}"
    );
}

#[test]
fn plot_mistakes_are_said_before_the_run() {
    let out = shmbus(&["bench", "--only", "shm-stream-8B", "--plot", "x.svg"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("shmbus bench: error: --plot draws the latency cases"),
        "{stderr}"
    );
    assert!(!stderr.contains("bench: ["), "it ran: {stderr}");
    assert!(!Path::new("x.svg").exists());

    let missing = std::env::temp_dir().join(format!("shmbus-no-such-dir-{}", std::process::id()));
    let plot = missing.join("plot.svg");
    let out = shmbus(&["bench", "--quick", "--plot", path_str(&plot)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "shmbus bench: error: --plot {}: {} is not a directory",
            plot.display(),
            missing.display()
        )
    );
}

#[test]
fn bench_runs_one_transports_rows() {
    // A transport's name selects its rows, not every case whose name holds it (the futex
    // group's unix-socket-64B).
    transport_rows(
        "unix",
        ["unix-64B", "raw-seqpacket-64B"],
        ["unix-stream-64B", "raw-seqpacket-stream-64B"],
        "unix-socket-64B",
    );
}

#[test]
fn bench_runs_the_pipe_transports_rows() {
    // The pipe has no spec: the parent makes the pipes and the child takes its ends from its
    // --fd arguments. Its rows are not the futex group's bare pipe-64B.
    transport_rows(
        "pipe-transport",
        ["pipe-transport-64B", "raw-pipe-64B"],
        ["pipe-transport-stream-64B", "raw-pipe-stream-64B"],
        "| pipe-64B",
    );
}

/// Runs `shmbus bench --quick --only WORD`: its round trip `latency` and its stream `stream`
/// (each a case and its limit) run, and nothing else (`not` is not in the table); both print
/// a ratio in the table and in the JSON lines, which parse; the run's directory is gone.
fn transport_rows(word: &str, latency: [&str; 2], stream: [&str; 2], not: &str) {
    let json = TempFile::new("out.jsonl");
    let args = [
        "bench",
        "--quick",
        "--only",
        word,
        "--out",
        path_str(&json.0),
    ];
    let (out, pid) = shmbus_with_pid(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shmbus {args:?} failed: {stderr}");
    assert!(
        stderr.contains(&format!("bench: [1/2] {} | {}", latency[0], latency[1])),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("bench: [2/2] {} | {}", stream[0], stream[1])),
        "{stderr}"
    );
    assert!(!stdout.contains(not), "{stdout}");

    // The table: each row beside its limit, its ratio in the last column.
    let ratio_of = |prefix: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix:?} in {stdout}"));
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        cells.last().unwrap().parse().expect("a ratio")
    };
    assert!(ratio_of(&format!("| {} | {} |", latency[0], latency[1])) > 0.0);
    assert!(ratio_of(&format!("| {} | {} |", stream[0], stream[1])) > 0.0);

    // The JSON lines: one object per case, with its limit and ratio.
    let text = std::fs::read_to_string(&json.0).expect("the --out file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let row = &lines[0];
    assert_eq!(row["kind"], "latency");
    assert_eq!(row["case"], latency[0]);
    assert_eq!(row["limit"], latency[1]);
    assert_eq!(row["payload_bytes"], 64);
    assert_eq!(row["round_trips"], 10_000);
    assert!(row["ratio_p50"].as_f64().unwrap() > 0.0);
    assert!(row["limit_p50_ns"].as_u64().unwrap() > 0);
    let row = &lines[1];
    assert_eq!(row["kind"], "throughput");
    assert_eq!(row["case"], stream[0]);
    assert_eq!(row["limit"], stream[1]);
    // A tenth of --quick's 2*10^6: a copying transport's share.
    assert_eq!(row["messages"], 200_000);
    assert!(row["ratio"].as_f64().unwrap() > 0.0);
    assert!(row["msgs_per_s"].as_f64().unwrap() > 0.0);

    // Its directory (the sockets) is gone with it.
    let run = format!("shmbus-bench-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&run))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
