//! Record and replay, across processes: a topic fed by a publisher process (on shared memory
//! and on Unix sockets) recorded into a journal and replayed into a new topic that a typed
//! subscriber process reads (the same bytes, in the same order; a subscriber of another type
//! refused); replay at the recorded pace takes at least the recorded span; a recorder killed
//! leaves a journal whose whole messages replay; `shmbus record` and `shmbus replay` end to end.

mod common;

use common::msg::{message, Msg};
use common::{arg, arg_or, arg_u64, bus_over as bus, exit_child, say, ChildProc, CHILD_STALL};
use shmbus::journal::{Pace, RecordError, Recorder, ReplayError, Replayer};
use shmbus::layout::TypeFingerprint;
use shmbus::{OpenError, RecvError};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a subscriber waits for a publisher process to come up.
const OPEN: Duration = Duration::from_secs(20);

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("shmbus-journal-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
    fn sub(&self, name: &str) -> String {
        let d = self.0.join(name);
        std::fs::create_dir_all(&d).expect("create a directory");
        d.display().to_string()
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn msg_fingerprint() -> TypeFingerprint {
    TypeFingerprint::typed::<Msg>(std::any::type_name::<Msg>())
}

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "pub-msg" => child_publish(),
        "sub-msg" => child_subscribe(),
        "record" => child_record(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Publish `count` messages (`message(i)`) on topic `topic` once a subscriber is there,
/// `gap_ms` apart; then close, or (`then=hang`) say SENT and wait to be killed.
fn child_publish() -> i32 {
    let bus = bus(&arg("spec"), &arg("prefix"));
    let mut publisher = bus
        .publisher::<Msg>(&arg_or("topic", "src"))
        .capacity(64)
        .create()
        .expect("create the topic");
    say("READY");
    if !publisher.wait_for_subscribers(1, CHILD_STALL) {
        return 3;
    }
    let gap = Duration::from_millis(arg_or("gap_ms", "0").parse().unwrap());
    for i in 0..arg_u64("count") {
        if i > 0 && !gap.is_zero() {
            std::thread::sleep(gap);
        }
        publisher
            .send_timeout(message(i), CHILD_STALL)
            .expect("send");
    }
    if arg_or("then", "close") == "hang" {
        say("SENT");
        std::thread::sleep(CHILD_STALL);
    }
    0
}

/// Read `count` messages of topic `replayed` as `Msg`s, check each, then the end.
fn child_subscribe() -> i32 {
    let bus = bus(&arg("spec"), &arg("prefix"));
    let mut subscriber = bus
        .subscriber::<Msg>("replayed")
        .open_timeout(OPEN)
        .expect("open the replayed topic");
    say("READY");
    let count = arg_u64("count");
    for i in 0..count {
        match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) if *sample == message(i) => {}
            Ok(Some(sample)) => {
                eprintln!("message {i} is {:?}", *sample);
                return 4;
            }
            other => {
                eprintln!("message {i}: {:?}", other.map(|s| s.map(|s| *s)));
                return 5;
            }
        }
    }
    match subscriber.recv_timeout(CHILD_STALL) {
        Err(RecvError::Disconnected) => {}
        other => {
            eprintln!("after the last: {:?}", other.map(|s| s.map(|s| *s)));
            return 6;
        }
    }
    say(&format!("RESULT count={count}"));
    0
}

/// Record topic `src` into `journal` for ever (until killed), saying RECORDED=n after each.
fn child_record() -> i32 {
    let bus = bus(&arg("spec"), &arg("prefix"));
    let mut recorder = Recorder::start(&bus, "src", arg("journal"), OPEN).expect("start");
    say("READY");
    loop {
        match recorder.record(CHILD_STALL) {
            Ok(Some(_)) => say(&format!("RECORDED={}", recorder.recorded())),
            Ok(None) => return 3,
            Err(_) => {
                say("ENDED");
                std::thread::sleep(CHILD_STALL);
                return 0;
            }
        }
    }
}

/// Record everything a publisher process sends on `spec` into `journal`.
fn record(spec: &str, prefix: &str, journal: &PathBuf, count: u64, gap_ms: u64) -> u64 {
    let n = count.to_string();
    let gap = gap_ms.to_string();
    let args = [
        ("spec", spec),
        ("prefix", prefix),
        ("count", &n),
        ("gap_ms", &gap),
    ];
    let mut publisher = ChildProc::spawn("pub-msg", &args);
    publisher.wait_for_line("READY");
    let bus = bus(spec, prefix);
    let mut recorder = Recorder::start(&bus, "src", journal, OPEN).expect("start recording");
    assert_eq!(recorder.fingerprint(), msg_fingerprint());
    let mut seqs = vec![];
    loop {
        match recorder.record(CHILD_STALL) {
            Ok(Some(recorded)) => {
                assert_eq!(recorded.len, size_of::<Msg>());
                seqs.push(recorded.seq);
            }
            Ok(None) => panic!("nothing within {CHILD_STALL:?}"),
            Err(RecordError::Recv {
                source: RecvError::Disconnected,
                ..
            }) => break,
            Err(e) => panic!("recording: {e}"),
        }
    }
    assert_eq!(
        seqs,
        (0..count).collect::<Vec<_>>(),
        "the publisher's numbers"
    );
    publisher.finish().assert_success();
    recorder.finish().expect("finish the journal")
}

/// Replay `journal` into topic `replayed` on `spec`, read by a subscriber process.
fn replay(spec: &str, prefix: &str, journal: &PathBuf, count: u64, pace: Pace) -> Duration {
    let bus = bus(spec, prefix);
    let mut replayer = Replayer::open(journal, OPEN).expect("open the journal");
    assert_eq!(replayer.fingerprint(), msg_fingerprint());
    let mut publisher = replayer
        .publisher(&bus, "replayed")
        .create()
        .expect("create the replayed topic");
    let n = count.to_string();
    let mut subscriber = ChildProc::spawn(
        "sub-msg",
        &[("spec", spec), ("prefix", prefix), ("count", &n)],
    );
    subscriber.wait_for_line("READY");
    assert!(publisher.wait_for_subscribers(1, OPEN));
    // The type check holds: a subscriber of another type is refused.
    match bus.subscriber::<u32>("replayed").open() {
        Err(OpenError::IncompatibleType { .. }) => {}
        other => panic!("a u32 subscriber: {:?}", other.map(|_| ())),
    }
    let start = Instant::now();
    let done = replayer.replay(&mut publisher, pace).expect("replay");
    let took = start.elapsed();
    assert_eq!((done.messages, done.complete), (count, true));
    drop(publisher);
    let finished = subscriber.finish();
    finished.assert_success();
    assert_eq!(finished.num("count"), count);
    if pace == Pace::Recorded {
        // Each message waited for its recorded time: never sooner.
        assert!(
            took >= Duration::from_nanos(done.span_ns),
            "replayed in {took:?}, recorded over {} ns",
            done.span_ns
        );
    }
    took
}

#[test]
fn a_topic_recorded_from_shm_and_unix_replays_the_same_bytes_in_order() {
    let tmp = TempDir::new("same");
    for (i, spec) in ["shm".to_string(), format!("unix:{}", tmp.sub("unix"))]
        .iter()
        .enumerate()
    {
        let prefix = common::unique_prefix(&format!("journal-same-{i}"));
        let _cleanup = common::Cleanup::new(&prefix);
        let journal = tmp.file(&format!("{i}.journal"));
        assert_eq!(record(spec, &prefix, &journal, 2000, 0), 2000, "{spec}");
        // Into the same transport, and into the file transport.
        replay(spec, &prefix, &journal, 2000, Pace::Fast);
        let file = format!("file:{}", tmp.sub(&format!("file-{i}")));
        replay(&file, &prefix, &journal, 2000, Pace::Fast);
    }
}

#[test]
fn replay_at_the_recorded_pace_takes_at_least_the_recorded_span() {
    let tmp = TempDir::new("pace");
    let unix = format!("unix:{}", tmp.sub("unix"));
    let prefix = common::unique_prefix("journal-pace");
    let _cleanup = common::Cleanup::new(&prefix);
    let journal = tmp.file("pace.journal");
    // 20 messages 10 ms apart: the unix transport stamps each when it is sent.
    record(&unix, &prefix, &journal, 20, 10);
    let mut replayer = Replayer::open(&journal, OPEN).expect("open");
    let bus = bus("shm", &prefix);
    let mut publisher = replayer.publisher(&bus, "quiet").create().expect("create");
    let start = Instant::now();
    let done = replayer
        .replay(&mut publisher, Pace::Recorded)
        .expect("replay");
    let took = start.elapsed();
    // The sender slept 10 ms between sends: the recorded span is at least 190 ms.
    assert!(done.span_ns >= 190_000_000, "span {} ns", done.span_ns);
    assert!(took >= Duration::from_nanos(done.span_ns), "{took:?}");
    // With a subscriber process reading, too.
    replay("shm", &prefix, &journal, 20, Pace::Recorded);
}

#[test]
fn a_killed_recorder_leaves_a_journal_that_replays() {
    let tmp = TempDir::new("killed");
    let prefix = common::unique_prefix("journal-killed");
    let _cleanup = common::Cleanup::new(&prefix);
    let journal = tmp.file("killed.journal");
    let journal_arg = journal.display().to_string();
    let args = [
        ("spec", "shm"),
        ("prefix", prefix.as_str()),
        ("count", "50"),
        ("journal", journal_arg.as_str()),
        ("then", "hang"),
    ];
    let mut publisher = ChildProc::spawn("pub-msg", &args);
    publisher.wait_for_line("READY");
    let mut recorder = ChildProc::spawn("record", &args);
    recorder.wait_for_line("READY");
    recorder.wait_for_line("RECORDED=50");
    // A live recorder's journal is its: another recorder is refused.
    let bus = bus("shm", &prefix);
    match Recorder::start(&bus, "src", &journal, OPEN) {
        Err(RecordError::Journal { .. }) => {}
        other => panic!("a second recorder: {:?}", other.map(|_| ())),
    }
    recorder.kill();
    let _ = recorder.finish();
    publisher.wait_for_line("SENT");
    publisher.kill();
    let _ = publisher.finish();
    let mut replayer = Replayer::open(&journal, OPEN).expect("open");
    let mut out = replayer
        .publisher(&bus, "replayed")
        .create()
        .expect("create");
    let mut subscriber = bus.subscriber::<Msg>("replayed").open().expect("open");
    let done = replayer.replay(&mut out, Pace::Fast).expect("replay");
    assert_eq!((done.messages, done.complete), (50, false));
    for i in 0..50 {
        assert_eq!(
            *subscriber.try_recv().unwrap().expect("replayed"),
            message(i)
        );
    }
    assert!(matches!(
        Replayer::open(tmp.file("none"), OPEN),
        Err(ReplayError::NotFound { .. })
    ));
}

fn shmbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmbus"))
}

#[test]
fn the_cli_records_and_replays() {
    let tmp = TempDir::new("cli");
    let prefix = common::unique_prefix("journal-cli");
    let _cleanup = common::Cleanup::new(&prefix);
    let journal = tmp.file("ticks.journal");
    let args = [
        ("spec", "shm"),
        ("prefix", prefix.as_str()),
        ("count", "300"),
    ];
    let mut publisher = ChildProc::spawn("pub-msg", &args);
    publisher.wait_for_line("READY");
    let out = shmbus()
        .args([
            "record", "src", "--prefix", &prefix, "--count", "300", "--out",
        ])
        .arg(&journal)
        .output()
        .expect("run shmbus record");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shmbus record: {stderr}");
    assert!(stderr.contains("recorded 300 messages"), "{stderr}");
    publisher.finish().assert_success();

    // Replayed into the topic named after the file, as fast as its subscriber takes them.
    let mut replay = shmbus()
        .args(["replay", "--prefix", &prefix, "--pace", "fast"])
        .args(["--wait-subscribers", "1"])
        .arg(&journal)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run shmbus replay");
    let bus = bus("shm", &prefix);
    let mut subscriber = bus
        .subscriber::<Msg>("ticks")
        .open_timeout(OPEN)
        .expect("open the replayed topic");
    for i in 0..300 {
        let sample = subscriber
            .recv_timeout(CHILD_STALL)
            .unwrap_or_else(|e| panic!("message {i}: {e}"))
            .unwrap_or_else(|| panic!("message {i} never came"));
        assert_eq!(*sample, message(i));
    }
    let status = replay.wait().expect("wait for shmbus replay");
    assert!(status.success());
    assert_eq!(subscriber.recv().err(), Some(RecvError::Disconnected));

    // Mistakes: one line on stderr, exit 1.
    for args in [
        vec!["replay".to_string(), tmp.file("none").display().to_string()],
        vec![
            "record".into(),
            "src".into(),
            "--out".into(),
            tmp.file("x").display().to_string(),
            "--transport".into(),
            "carrier-pigeon".into(),
        ],
        vec![
            "record".into(),
            "nothing-here".into(),
            "--wait".into(),
            "0".into(),
            "--prefix".into(),
            prefix.clone(),
            "--out".into(),
            tmp.file("y").display().to_string(),
        ],
    ] {
        let out = shmbus().args(&args).output().expect("run shmbus");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("shmbus "), "{args:?}: {stderr}");
    }
    for sub in ["record", "replay"] {
        let out = shmbus().args([sub, "--help"]).output().expect("run shmbus");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}
