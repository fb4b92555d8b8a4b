//! The `shmbus` tool run as a user runs it: `list`, `inspect`, `echo`, `pub` and `clean`
//! against live topics fed by other processes (a `shmbus pub` process, a publisher killed with
//! SIGKILL), `--json` output parsed, and the one-line errors for a missing topic and a bad name.

mod common;

use common::{unique_prefix, Cleanup};
use serde_json::Value;
use shmbus::Bus;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn shmbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmbus"))
}

/// Run `shmbus args...` to the end.
fn run(args: &[&str]) -> Output {
    shmbus().args(args).output().expect("run shmbus")
}

/// Its stdout, after checking it succeeded.
fn stdout_of(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "shmbus {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&stdout_of(args)).unwrap()
}

/// A `shmbus pub` process feeding `topic` slowly for as long as the test needs; killed on drop.
struct Feeder(Child);

impl Feeder {
    fn start(prefix: &str, topic: &str) -> Self {
        let child = shmbus()
            .args([
                "pub",
                topic,
                "--prefix",
                prefix,
                "--count",
                "100000000",
                "--rate",
                "200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start shmbus pub");
        Feeder(child)
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `bus` lists `topic` (its creator is another process).
fn wait_for_topic(bus: &Bus, topic: &str) {
    let start = Instant::now();
    while bus.topic_info(topic).is_err() {
        assert!(
            start.elapsed() < common::CHILD_STALL,
            "{topic} never appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn list_and_inspect_describe_a_live_topic_and_its_processes() {
    let prefix = unique_prefix("cli-list");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let feeder = Feeder::start(&prefix, "feed");
    wait_for_topic(&bus, "feed");
    let _subscriber = bus.subscriber::<[u8]>("feed").open().unwrap();

    // And a segment under the prefix that is not a topic: listed, with the reason it is refused.
    let junk = format!("/dev/shm/{prefix}junk");
    std::fs::write(&junk, vec![0x5a; 4096]).unwrap();
    std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let listed = stdout_of(&["list", "--prefix", &prefix, "--json"]);
    let topics: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(topics.len(), 2, "{listed}");
    assert_eq!(topics[1]["topic"], "junk");
    assert!(
        topics[1]["error"].as_str().unwrap().contains("corrupt"),
        "{listed}"
    );
    let t = &topics[0];
    assert_eq!(t["topic"], "feed");
    assert_eq!(t["type"], "bytes");
    assert_eq!(t["policy"], "block");
    assert_eq!(t["capacity"], 1024);
    assert_eq!(t["publishers"][0]["pid"], feeder.0.id());
    assert_eq!(t["publishers"][0]["alive"], true);
    assert_eq!(t["subscribers"][0]["pid"], std::process::id());

    let inspected = json_of(&["inspect", "feed", "--prefix", &prefix, "--json"]);
    assert_eq!(inspected["topic"], "feed");
    assert_eq!(inspected["subscribers"].as_array().unwrap().len(), 1);
    assert!(inspected["subscribers"][0]["lag"].is_u64());
    // This subscriber has never waited: not asleep, and nobody counted as a sleeper.
    assert_eq!(inspected["subscribers"][0]["asleep"], false);
    assert_eq!(inspected["sleepers"], 0);

    // The tables people read: a header line and the topic.
    let table = stdout_of(&["list", "--prefix", &prefix]);
    assert!(table.starts_with("TOPIC"), "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("feed "),
        "{table}"
    );
    let text = stdout_of(&["inspect", "feed", "--prefix", &prefix]);
    assert!(
        text.contains(&format!("pid {:<8} alive", feeder.0.id())),
        "{text}"
    );
    assert!(text.contains("sleepers   0\n"), "{text}");
    assert!(text.trim_end().ends_with("awake"), "{text}");
}

#[test]
fn echo_prints_what_another_process_publishes() {
    let prefix = unique_prefix("cli-echo");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let _feeder = Feeder::start(&prefix, "feed");
    wait_for_topic(&bus, "feed");
    let out = stdout_of(&[
        "echo", "feed", "--prefix", &prefix, "--count", "5", "--json",
    ]);
    let messages: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 5, "{out}");
    let first = messages[0]["seq"].as_u64().unwrap();
    for (i, m) in messages.iter().enumerate() {
        let seq = first + i as u64;
        assert_eq!(m["seq"], seq);
        assert_eq!(m["len"], 64);
        // Each message starts with its number, little-endian.
        let hex = m["hex"].as_str().unwrap();
        assert_eq!(&hex[..16], format!("{:016x}", seq.swap_bytes()), "{m}");
    }
}

#[test]
fn echo_reads_a_typed_topic_as_bytes() {
    let prefix = unique_prefix("cli-echo-typed");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus.publisher::<u64>("ticks").history(2).create().unwrap();
    publisher.send(0x0102_0304_0506_0708).unwrap();
    publisher.send(7).unwrap();
    let out = stdout_of(&[
        "echo",
        "ticks",
        "--prefix",
        &prefix,
        "--history",
        "2",
        "--count",
        "2",
    ]);
    assert_eq!(
        out,
        "seq 0 lane 0 len 8: 0807060504030201\nseq 1 lane 0 len 8: 0700000000000000\n"
    );
}

#[test]
fn clean_lists_and_removes_a_stale_topic_and_never_a_live_one() {
    let prefix = unique_prefix("cli-clean");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let _live = bus.publisher::<u64>("live").create().unwrap();
    // A publisher killed with SIGKILL leaves its topic behind.
    let mut killed = Feeder::start(&prefix, "stale");
    wait_for_topic(&bus, "stale");
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();

    let dry = json_of(&["clean", "--prefix", &prefix, "--dry-run", "--json"]);
    assert_eq!(dry, serde_json::json!(["stale"]));
    assert!(bus.topic_info("stale").is_ok(), "a dry run removes nothing");
    let removed = json_of(&["clean", "--prefix", &prefix, "--json"]);
    assert_eq!(removed, serde_json::json!(["stale"]));
    assert!(bus.topic_info("stale").is_err());
    assert!(bus.topic_info("live").is_ok());
    assert_eq!(
        stdout_of(&["clean", "--prefix", &prefix, "--dry-run"]),
        "nothing stale to remove\n"
    );
}

#[test]
fn user_errors_are_one_line_and_a_failing_exit() {
    let prefix = unique_prefix("cli-errors");
    for (args, expected) in [
        (
            vec!["inspect", "missing", "--prefix", prefix.as_str()],
            "shmbus inspect: error: inspecting topic \"missing\": no topic \"missing\"\n",
        ),
        (
            vec!["echo", "a/b", "--prefix", prefix.as_str()],
            "shmbus echo: error: subscribing to \"a/b\": invalid topic name \"a/b\": name contains '/'\n",
        ),
        (
            vec!["list", "--prefix", "bad/"],
            "shmbus list: error: invalid bus prefix \"bad/\": name contains '/'\n",
        ),
        (
            vec!["list", "--dir", "/nonexistent/shmbus"],
            "shmbus list: error: cannot use /nonexistent/shmbus as the directory of segments: No such file or directory (os error 2)\n",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn hz_and_top_sample_the_rates_of_a_live_topic() {
    let prefix = unique_prefix("cli-hz");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let _feeder = Feeder::start(&prefix, "feed");
    wait_for_topic(&bus, "feed");
    // A subscriber process reading along, so that there is a read rate to show.
    let mut reader = shmbus()
        .args(["echo", "feed", "--prefix", &prefix, "--idle", "60"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while bus.topic_info("feed").unwrap().subscribers.is_empty() {
        assert!(start.elapsed() < common::CHILD_STALL);
        std::thread::sleep(Duration::from_millis(5));
    }
    let sample = json_of(&[
        "hz",
        "feed",
        "--prefix",
        &prefix,
        "--interval",
        "0.3",
        "--count",
        "1",
        "--json",
    ]);
    let top = json_of(&[
        "top",
        "--prefix",
        &prefix,
        "--interval",
        "0.3",
        "--count",
        "1",
        "--json",
    ]);
    let _ = reader.kill();
    let _ = reader.wait();
    // The feeder publishes 200 messages a second; the sample says so (never a time bound: any
    // rate above zero shows the rate is measured).
    assert_eq!(sample["topic"], "feed");
    assert!(
        sample["published_per_s"].as_f64().unwrap() > 0.0,
        "{sample}"
    );
    assert_eq!(sample["subscribers"][0]["pid"], reader.id());
    assert!(sample["subscribers"][0]["read_per_s"].is_f64());
    let topics = top["topics"].as_array().unwrap();
    assert_eq!(topics.len(), 1, "{top}");
    assert_eq!(topics[0]["topic"], "feed");
    assert_eq!(topics[0]["subscribers"], 1);
    assert!(
        topics[0]["published_per_s"].as_f64().unwrap() > 0.0,
        "{top}"
    );
}
