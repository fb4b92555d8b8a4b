//! One topic, many processes: a publisher and several subscriber processes under Block and
//! under Overwrite, a subscriber that joins late and asks for history, and discovery seen from
//! a third process.
//!
//! The other processes are this test binary re-executed (see `common`); each checks every
//! message it receives (sequence, words, checksum) and reports its counts.

mod common;

use common::msg::{check_message, message, Msg};
use common::{arg, arg_u64, child_bus, exit_child, lock, say, ChildProc, Cleanup, CHILD_STALL};
use shmbus::{Bus, Policy, RecvError, WaitStrategy};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tests that run several busy processes take turns: on two cores they only slow each other.
static HEAVY: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The child side.

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let code = match role.as_str() {
        "subscribe" => child_subscribe(),
        "subscribe-then-hang" => child_subscribe_then_hang(),
        "subscribe-lanes" => child_subscribe_lanes(),
        "publish" => child_publish(),
        "describe" => child_describe(),
        other => panic!("unknown child role {other}"),
    };
    exit_child(code)
}

/// Subscribe (with `history`, sleeping `nap_us` every `nap_every` messages to be slow), say
/// `READY start=<seq>`, then receive until the topic closes, checking that each message is the
/// one its sequence number names and that sequence numbers only grow (by one, unless the
/// topic's policy is Overwrite). Reports first, received, lost, gaps and errors.
fn child_subscribe() -> i32 {
    let bus = child_bus();
    let nap_every = arg_u64("nap_every");
    let nap = Duration::from_micros(arg_u64("nap_us"));
    let mut subscriber = bus
        .subscriber::<Msg>(&arg("topic"))
        .history(arg_u64("history"))
        .wait(WaitStrategy::default())
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    let start = subscriber.next_seq();
    say(&format!("READY start={start}"));
    let (mut received, mut errors, mut gaps) = (0u64, 0u64, 0u64);
    let mut first = None;
    let mut next = start;
    loop {
        match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) => {
                let seq = sample.seq();
                first.get_or_insert(seq);
                if seq != next {
                    gaps += 1;
                }
                if seq < next {
                    errors += 1;
                    eprintln!("message {seq} after {next}");
                }
                if let Some(e) = check_message(seq, seq, &sample) {
                    if errors < 10 {
                        eprintln!("{e}");
                    }
                    errors += 1;
                }
                next = seq + 1;
                received += 1;
                drop(sample);
                if nap_every != 0 && received % nap_every == 0 {
                    std::thread::sleep(nap);
                }
            }
            Ok(None) => {
                eprintln!("no message for {CHILD_STALL:?} after {received}");
                errors += 1;
                break;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => {
                eprintln!("recv failed after {received}: {e}");
                errors += 1;
            }
        }
    }
    say(&format!(
        "RESULT first={} received={received} lost={} gaps={gaps} errors={errors} end={next}",
        first.unwrap_or(u64::MAX),
        subscriber.lost()
    ));
    i32::from(errors != 0)
}

/// Subscribe, read `count` messages, say READY, and read nothing more until killed.
fn child_subscribe_then_hang() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus
        .subscriber::<Msg>(&arg("topic"))
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    say("OPEN");
    for _ in 0..arg_u64("count") {
        let sample = subscriber.recv_timeout(CHILD_STALL).expect("recv");
        assert!(sample.is_some(), "no message for {CHILD_STALL:?}");
    }
    say("READY");
    std::thread::sleep(CHILD_STALL);
    1
}

/// Attach to topic `topic` as one more publisher, say READY, wait for `subscribers`
/// subscribers, send `count` messages (numbered in this publisher's lane), close.
fn child_publish() -> i32 {
    let bus = child_bus();
    let mut publisher = bus
        .publisher::<Msg>(&arg("topic"))
        .wait(WaitStrategy::default())
        .attach()
        .expect("attach to the topic");
    say("READY");
    let subscribers = arg_u64("subscribers") as usize;
    if !publisher.wait_for_subscribers(subscribers, CHILD_STALL) {
        eprintln!("fewer than {subscribers} subscribers after {CHILD_STALL:?}");
        return 1;
    }
    let count = arg_u64("count");
    for seq in 0..count {
        if publisher.send_timeout(message(seq), CHILD_STALL).is_err() {
            eprintln!("no free slot for {CHILD_STALL:?} at message {seq}");
            return 1;
        }
    }
    say(&format!("RESULT sent={count}"));
    0
}

/// Receive from every publisher of topic `topic` until the last closes, checking that each
/// publisher's messages come in its order, none missing, none torn. Reports the count per
/// lane.
fn child_subscribe_lanes() -> i32 {
    let bus = child_bus();
    let mut subscriber = bus
        .subscriber::<Msg>(&arg("topic"))
        .wait(WaitStrategy::default())
        .open_timeout(CHILD_STALL)
        .expect("open the topic");
    say("READY");
    let mut next = [0u64; 8];
    let mut errors = 0u64;
    loop {
        match subscriber.recv_timeout(CHILD_STALL) {
            Ok(Some(sample)) => {
                let lane = sample.lane();
                if let Some(e) = check_message(next[lane], sample.seq(), &sample) {
                    if errors < 10 {
                        eprintln!("lane {lane}: {e}");
                    }
                    errors += 1;
                }
                next[lane] = sample.seq() + 1;
            }
            Ok(None) => {
                eprintln!("no message for {CHILD_STALL:?}");
                errors += 1;
                break;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => {
                eprintln!("recv failed: {e}");
                errors += 1;
            }
        }
    }
    let lanes: Vec<String> = next.iter().map(u64::to_string).collect();
    say(&format!("RESULT lanes={} errors={errors}", lanes.join(",")));
    i32::from(errors != 0)
}

/// Describe topic `topic` once its publisher has published `until` messages: its policy, its
/// publisher and its subscribers.
fn child_describe() -> i32 {
    let bus = child_bus();
    let until = arg_u64("until");
    let deadline = Instant::now() + CHILD_STALL;
    let info = loop {
        let info = bus.topic_info(&arg("topic")).expect("describe the topic");
        if info.published >= until || Instant::now() > deadline {
            break info;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut pids: Vec<u32> = info.subscribers.iter().map(|s| s.pid).collect();
    pids.sort();
    let listed = bus
        .topics()
        .expect("list the topics")
        .into_iter()
        .filter_map(Result::ok)
        .filter(|t| t.topic == info.topic)
        .count();
    say(&format!(
        "RESULT policy={} publisher={} published={} subscribers={} pids={} lagging={} listed={listed}",
        info.policy,
        info.publishers.first().copied().unwrap_or(0),
        info.published,
        info.subscribers.len(),
        pids.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
        info.subscribers.iter().filter(|s| s.lag > 0).count(),
    ));
    0
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/// Start a subscriber child on `topic`.
fn subscriber_child(prefix: &str, topic: &str, history: u64, nap: Option<(u64, u64)>) -> ChildProc {
    let (every, us) = nap.unwrap_or((0, 0));
    ChildProc::spawn(
        "subscribe",
        &[
            ("prefix", prefix),
            ("topic", topic),
            ("history", &history.to_string()),
            ("nap_every", &every.to_string()),
            ("nap_us", &us.to_string()),
        ],
    )
}

#[test]
fn four_subscriber_processes_each_receive_every_message_under_block() {
    const MESSAGES: u64 = 1_000_000;
    let _one_at_a_time = lock(&HEAVY);
    let prefix = common::unique_prefix("fan-out");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus
        .publisher::<Msg>("feed")
        .capacity(4096)
        .create()
        .unwrap();
    let mut children: Vec<_> = (0..4)
        .map(|_| subscriber_child(&prefix, "feed", 0, None))
        .collect();
    for child in &mut children {
        assert_eq!(child.wait_for_line("READY"), "READY start=0");
    }
    assert_eq!(publisher.subscribers(), 4);
    for seq in 0..MESSAGES {
        publisher
            .send_timeout(message(seq), CHILD_STALL)
            .unwrap_or_else(|_| panic!("no slot for {CHILD_STALL:?} at message {seq}"));
    }
    drop(publisher);
    for child in children {
        let out = child.finish();
        out.assert_success();
        let r = out.result();
        assert_eq!(
            (
                r["first"].as_str(),
                out.num("received"),
                out.num("lost"),
                out.num("gaps")
            ),
            ("0", MESSAGES, 0, 0),
            "{out:#?}"
        );
    }
}

#[test]
fn under_overwrite_a_slow_subscriber_counts_its_losses_and_fast_ones_lose_nothing() {
    const MESSAGES: u64 = 200_000;
    const CAPACITY: u64 = 1024;
    let _one_at_a_time = lock(&HEAVY);
    let prefix = common::unique_prefix("overwrite");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus
        .publisher::<Msg>("md")
        .capacity(CAPACITY)
        .policy(Policy::Overwrite)
        .create()
        .unwrap();
    // The slow one naps 2 ms every 100 messages: the publisher laps it many times over.
    let mut slow = subscriber_child(&prefix, "md", 0, Some((100, 2000)));
    slow.wait_for_line("READY");
    let slow_pid = slow.pid();
    let mut fast: Vec<_> = (0..3)
        .map(|_| subscriber_child(&prefix, "md", 0, None))
        .collect();
    for child in &mut fast {
        child.wait_for_line("READY");
    }
    // The publisher never waits, whatever the policy: to keep the fast subscribers whole on a
    // machine whose cores they share with four other processes, this test paces it by what
    // discovery says of them (never of the slow one) before each quarter ring.
    for seq in 0..MESSAGES {
        if seq % (CAPACITY / 4) == 0 {
            let deadline = Instant::now() + CHILD_STALL;
            loop {
                let info = bus.topic_info("md").unwrap();
                let fast_lag = info
                    .subscribers
                    .iter()
                    .filter(|s| s.pid != slow_pid)
                    .map(|s| s.lag)
                    .max()
                    .unwrap();
                if fast_lag <= CAPACITY / 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "fast subscribers stuck: {info:?}"
                );
                std::thread::yield_now();
            }
        }
        publisher
            .try_send(message(seq))
            .expect("overwrite never refuses");
    }
    drop(publisher);
    for child in fast {
        let out = child.finish();
        out.assert_success();
        assert_eq!(
            (out.num("received"), out.num("lost"), out.num("gaps")),
            (MESSAGES, 0, 0),
            "a fast subscriber: {out:#?}"
        );
    }
    let out = slow.finish();
    out.assert_success();
    let (received, lost) = (out.num("received"), out.num("lost"));
    assert!(lost > 0, "the slow subscriber was never lapped: {out:#?}");
    assert_eq!(received + lost, MESSAGES, "losses are exact: {out:#?}");
    assert_eq!(
        out.num("end"),
        MESSAGES,
        "the last message arrives: {out:#?}"
    );
}

#[test]
fn a_late_subscriber_gets_exactly_the_history_it_asked_for_then_the_rest() {
    const BEFORE: u64 = 500;
    const AFTER: u64 = 300;
    const HISTORY: u64 = 100;
    let prefix = common::unique_prefix("late-joiner");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus
        .publisher::<Msg>("t")
        .capacity(256)
        .history(HISTORY)
        .create()
        .unwrap();
    // Nobody reads these: the ring keeps the last HISTORY of them.
    for seq in 0..BEFORE {
        publisher.try_send(message(seq)).unwrap();
    }
    let mut child = subscriber_child(&prefix, "t", HISTORY, None);
    assert_eq!(
        child.wait_for_line("READY"),
        format!("READY start={}", BEFORE - HISTORY)
    );
    for seq in BEFORE..BEFORE + AFTER {
        publisher.send_timeout(message(seq), CHILD_STALL).unwrap();
    }
    drop(publisher);
    let out = child.finish();
    out.assert_success();
    assert_eq!(out.num("first"), BEFORE - HISTORY, "{out:#?}");
    assert_eq!(out.num("received"), HISTORY + AFTER, "{out:#?}");
    assert_eq!(out.num("gaps"), 0, "{out:#?}");
}

#[test]
fn discovery_from_a_third_process_shows_the_publisher_and_each_subscriber() {
    let prefix = common::unique_prefix("discovery");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus
        .publisher::<Msg>("t")
        .capacity(64)
        .policy(Policy::Overwrite)
        .create()
        .unwrap();
    let mut subs: Vec<_> = (0..2)
        .map(|_| subscriber_child(&prefix, "t", 0, None))
        .collect();
    for child in &mut subs {
        child.wait_for_line("READY");
    }
    // And one in this process, which reads nothing: it lags by all that is published.
    let _idle = bus.subscriber::<Msg>("t").open().unwrap();
    for seq in 0..10 {
        publisher.try_send(message(seq)).unwrap();
    }
    let describer = ChildProc::spawn(
        "describe",
        &[("prefix", &prefix), ("topic", "t"), ("until", "10")],
    );
    let out = describer.finish();
    out.assert_success();
    let mut pids = [subs[0].pid(), subs[1].pid(), std::process::id()];
    pids.sort();
    let pids = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let r = out.result();
    assert_eq!(r["policy"], "overwrite", "{out:#?}");
    assert_eq!(out.num("publisher"), u64::from(std::process::id()));
    assert_eq!(out.num("published"), 10);
    assert_eq!(out.num("subscribers"), 3);
    assert_eq!(r["pids"], pids);
    assert!(
        out.num("lagging") >= 1,
        "the idle subscriber lags: {out:#?}"
    );
    assert_eq!(out.num("listed"), 1);
    drop(publisher);
    for child in subs {
        child.finish().assert_success();
    }
}

#[test]
fn three_publisher_processes_reach_two_subscriber_processes_each_in_its_order() {
    const EACH: u64 = 200_000;
    let _one_at_a_time = lock(&HEAVY);
    let prefix = common::unique_prefix("many-to-many");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    // This process creates the topic and leaves its own lane unused: it closes it once the
    // three publishers have attached, and the topic lives on with them.
    let creator = bus
        .publisher::<Msg>("t")
        .capacity(1024)
        .max_publishers(4)
        .create()
        .unwrap();
    let mut subs: Vec<_> = (0..2)
        .map(|_| ChildProc::spawn("subscribe-lanes", &[("prefix", &prefix), ("topic", "t")]))
        .collect();
    for child in &mut subs {
        child.wait_for_line("READY");
    }
    let each = EACH.to_string();
    let mut pubs: Vec<_> = (0..3)
        .map(|_| {
            ChildProc::spawn(
                "publish",
                &[
                    ("prefix", &prefix),
                    ("topic", "t"),
                    ("subscribers", "2"),
                    ("count", &each),
                ],
            )
        })
        .collect();
    for child in &mut pubs {
        child.wait_for_line("READY");
    }
    assert_eq!(bus.topic_info("t").unwrap().publishers.len(), 4);
    drop(creator);
    for child in pubs {
        let out = child.finish();
        out.assert_success();
        assert_eq!(out.num("sent"), EACH);
    }
    for child in subs {
        let out = child.finish();
        out.assert_success();
        // Lane 0 (the creator's) carried nothing; each attached publisher took one of the
        // others and every one of its messages arrived, in its order.
        let r = out.result();
        assert_eq!(
            r["lanes"],
            format!("0,{EACH},{EACH},{EACH},0,0,0,0"),
            "{out:#?}"
        );
    }
    // The last publisher out removed the topic's name.
    assert!(matches!(
        bus.topic_info("t"),
        Err(shmbus::OpenError::NotFound { .. })
    ));
}

#[test]
fn a_killed_subscriber_of_a_fail_topic_is_evicted_and_its_publisher_sends_again() {
    const CAPACITY: u64 = 16;
    let prefix = common::unique_prefix("dead-fail-subscriber");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus
        .publisher::<Msg>("t")
        .capacity(CAPACITY)
        .policy(Policy::Fail)
        .create()
        .unwrap();
    let mut doomed = ChildProc::spawn(
        "subscribe-then-hang",
        &[("prefix", &prefix), ("topic", "t"), ("count", "1")],
    );
    doomed.wait_for_line("OPEN");
    publisher.send(message(0)).unwrap();
    doomed.wait_for_line("READY");
    let mut seq = 1;
    while publisher.send(message(seq)).is_ok() {
        seq += 1;
    }
    doomed.kill();
    assert!(!doomed.finish().status.success());
    // Full for a dead subscriber: `try_send` only says so; `send` says so too, at once, until
    // the ring has been full for a while, then finds the subscriber dead and evicts it.
    assert!(matches!(
        publisher.try_send(message(seq)),
        Err(shmbus::TrySendError::Full(_))
    ));
    let deadline = Instant::now() + CHILD_STALL;
    while let Err(refused) = publisher.send(message(seq)) {
        assert!(
            matches!(refused, shmbus::TrySendError::Full(_)),
            "{refused:?}"
        );
        assert!(
            Instant::now() < deadline,
            "still full after {CHILD_STALL:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    seq += 1;
    let info = bus.topic_info("t").unwrap();
    assert_eq!((info.evictions, info.subscribers.len()), (1, 0), "{info:?}");
    // And nothing holds it back any more.
    for _ in 0..4 * CAPACITY {
        publisher.send(message(seq)).unwrap();
        seq += 1;
    }
}

#[test]
fn a_killed_subscriber_is_evicted_and_its_publisher_goes_on() {
    const CAPACITY: u64 = 64;
    let prefix = common::unique_prefix("dead-subscriber");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus
        .publisher::<Msg>("t")
        .capacity(CAPACITY)
        .wait(WaitStrategy::default())
        .create()
        .unwrap();
    // One subscriber here, which keeps reading, and one in a child, which stops after 10
    // messages and is then killed while it holds the ring.
    let mut alive = bus.subscriber::<Msg>("t").open().unwrap();
    let mut doomed = ChildProc::spawn(
        "subscribe-then-hang",
        &[("prefix", &prefix), ("topic", "t"), ("count", "10")],
    );
    doomed.wait_for_line("OPEN");
    let mut seq = 0;
    let read = |alive: &mut shmbus::Subscriber<Msg>, upto: u64| {
        while let Some(sample) = alive.try_recv().unwrap() {
            assert!(check_message(sample.seq(), sample.seq(), &sample).is_none());
            assert!(sample.seq() < upto);
        }
    };
    for _ in 0..10 {
        publisher.send(message(seq)).unwrap();
        seq += 1;
    }
    doomed.wait_for_line("READY");
    read(&mut alive, seq);
    // The child holds the ring at 10: the publisher fills it up to there, and no further.
    while publisher.try_send(message(seq)).is_ok() {
        seq += 1;
        read(&mut alive, seq);
    }
    // (Its position as last given back: slots go back in batches, so up to 10.)
    assert!(
        (CAPACITY..=10 + CAPACITY).contains(&seq),
        "full a lap past the child's position: {seq}"
    );
    doomed.kill();
    assert!(!doomed.finish().status.success());
    // The blocked publisher finds the dead subscriber and evicts it (within a slice of
    // LIVENESS_CHECK), then goes on; the live subscriber misses nothing.
    for _ in 0..10 * CAPACITY {
        publisher
            .send_timeout(message(seq), CHILD_STALL)
            .unwrap_or_else(|_| panic!("still blocked at {seq} after {CHILD_STALL:?}"));
        seq += 1;
        read(&mut alive, seq);
    }
    let info = bus.topic_info("t").unwrap();
    assert_eq!(info.evictions, 1, "{info:?}");
    assert_eq!(info.subscribers.len(), 1, "{info:?}");
    assert_eq!(info.subscribers[0].pid, std::process::id());
    assert_eq!(alive.next_seq(), seq, "the live subscriber read everything");
}
