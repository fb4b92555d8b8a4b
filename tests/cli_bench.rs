//! `shmbus bench` run as a user runs it, kept short for CI's two cores: one latency group
//! (`--only shm-poll-8B`: the case, its limit and the two-line primitive) in the quick form,
//! with `--plot`, whose file must be an SVG that parses and draws each series of the group.
//! And the `--plot` mistakes said before anything runs. No test here looks at a figure: the
//! harness measures, tests check behaviour.

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
    let out = TempFile::new("stdout");
    let err = TempFile::new("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out.0).unwrap())
        .stderr(File::create(&err.0).unwrap())
        .spawn()
        .expect("start shmbus");
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
    Output {
        status,
        stdout: std::fs::read(&out.0).unwrap(),
        stderr: std::fs::read(&err.0).unwrap(),
    }
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
        stderr.contains("bench: [1/1] shm-poll-8B | raw-cacheline | raw-two-lines"),
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
    assert_eq!(cases, ["shm-poll-8B", "raw-cacheline", "raw-two-lines"]);
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
    assert_eq!(maxes, 3);
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
