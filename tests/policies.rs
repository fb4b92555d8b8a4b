//! What each policy promises, through the public API, in one process (the multi-process
//! versions are in `tests/bus.rs`): Fail never waits, Overwrite hands out whole copies and
//! counts what it skipped (typed and byte topics), Block keeps exactly its history for late
//! joiners, and a topic's table and lanes refuse what does not fit.

mod common;

use common::{unique_prefix, Cleanup};
use shmbus::{
    Bus, CreateError, LoanError, OpenError, Policy, SendTimeoutError, TryLoanError, TrySendError,
};
use std::time::Duration;

fn bus(test: &str) -> (Bus, Cleanup) {
    let prefix = unique_prefix(test);
    let cleanup = Cleanup::new(&prefix);
    (Bus::builder().prefix(&prefix).build().unwrap(), cleanup)
}

#[test]
fn a_fail_topic_never_waits_and_hands_every_refused_message_back() {
    let (bus, _cleanup) = bus("fail");
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(4)
        .policy(Policy::Fail)
        .create()
        .unwrap();
    assert_eq!(publisher.policy(), Policy::Fail);
    let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
    for v in 0..4 {
        publisher.send(v).unwrap();
    }
    // Full for the subscriber, which has read nothing: every form refuses at once.
    assert_eq!(publisher.send(10), Err(TrySendError::Full(10)));
    assert_eq!(publisher.try_send(11), Err(TrySendError::Full(11)));
    assert_eq!(
        publisher.send_timeout(12, Duration::from_secs(3600)),
        Err(SendTimeoutError::Full(12))
    );
    assert_eq!(publisher.loan().err(), Some(LoanError::Full));
    assert_eq!(
        publisher.loan_timeout(Duration::from_secs(3600)).err(),
        Some(LoanError::Full)
    );
    assert_eq!(publisher.try_loan().err(), Some(TryLoanError::Full));
    assert_eq!(publisher.next_seq(), 4, "nothing refused took a number");
    // One read, one slot.
    assert_eq!(*subscriber.try_recv().unwrap().unwrap(), 0);
    publisher.send(4).unwrap();
    assert_eq!(publisher.send(5), Err(TrySendError::Full(5)));
}

#[test]
fn an_overwrite_subscriber_gets_whole_copies_and_counts_what_it_missed() {
    let (bus, _cleanup) = bus("overwrite");
    let mut publisher = bus
        .publisher::<[u64; 4]>("t")
        .capacity(8)
        .policy(Policy::Overwrite)
        .create()
        .unwrap();
    let mut subscriber = bus.subscriber::<[u64; 4]>("t").open().unwrap();
    assert_eq!(subscriber.policy(), Policy::Overwrite);
    // Three laps and a bit: the publisher never waits.
    for i in 0..27u64 {
        let mut loan = publisher.loan().unwrap();
        *loan = [i, i * 2, i * 3, !i];
        loan.send();
    }
    let mut got = Vec::new();
    while let Some(sample) = subscriber.try_recv().unwrap() {
        let i = sample.seq();
        assert_eq!(*sample, [i, i * 2, i * 3, !i], "message {i} is whole");
        got.push(i);
    }
    // The ring holds the last 8 (19..=26): a lapped subscriber resumes at the oldest of them.
    assert_eq!(got, (19..27).collect::<Vec<_>>());
    assert_eq!(subscriber.lost(), 19);
    assert_eq!(got.len() as u64 + subscriber.lost(), publisher.next_seq());
    // Caught up: nothing more is lost.
    publisher.send([99; 4]).unwrap();
    assert_eq!(*subscriber.try_recv().unwrap().unwrap(), [99; 4]);
    assert_eq!(subscriber.lost(), 19);
    // The publisher's end reaches it once everything is read.
    drop(publisher);
    assert_eq!(
        subscriber.try_recv().err(),
        Some(shmbus::RecvError::Disconnected)
    );
}

#[test]
fn overwrite_carries_byte_messages_of_every_length() {
    let (bus, _cleanup) = bus("overwrite-bytes");
    let mut publisher = bus
        .publisher::<[u8]>("t")
        .capacity(16)
        .slot_size(100)
        .policy(Policy::Overwrite)
        .create()
        .unwrap();
    let mut subscriber = bus.subscriber::<[u8]>("t").open().unwrap();
    for len in 0..=100usize {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        publisher.try_send_bytes(&bytes).unwrap();
        let sample = subscriber.try_recv().unwrap().unwrap();
        assert_eq!(&*sample, &bytes[..], "length {len}");
    }
    assert_eq!(
        publisher.try_send_bytes(&[0; 101]),
        Err(TryLoanError::TooLarge { len: 101, max: 100 })
    );
    assert_eq!(subscriber.lost(), 0);
}

#[test]
fn a_late_subscriber_gets_the_history_the_publisher_keeps_and_no_more() {
    let (bus, _cleanup) = bus("history");
    let mut publisher = bus
        .publisher::<u64>("t")
        .capacity(16)
        .history(5)
        .create()
        .unwrap();
    // No subscriber: the publisher runs free, keeping the last 5.
    for v in 0..100 {
        publisher.try_send(v).unwrap();
    }
    let mut exact = bus.subscriber::<u64>("t").history(5).open().unwrap();
    let mut fewer = bus.subscriber::<u64>("t").history(2).open().unwrap();
    let mut none = bus.subscriber::<u64>("t").open().unwrap();
    assert_eq!(exact.next_seq(), 95);
    assert_eq!(fewer.next_seq(), 98);
    assert_eq!(none.next_seq(), 100);
    publisher.try_send(100).unwrap();
    let drain = |s: &mut shmbus::Subscriber<u64>| {
        let mut got = Vec::new();
        while let Some(v) = s.try_recv().unwrap() {
            got.push(*v);
        }
        got
    };
    assert_eq!(drain(&mut exact), [95, 96, 97, 98, 99, 100]);
    assert_eq!(drain(&mut fewer), [98, 99, 100]);
    assert_eq!(drain(&mut none), [100]);
    // A history above what the publisher keeps is refused at creation.
    assert!(matches!(
        bus.publisher::<u64>("u").capacity(16).history(16).create(),
        Err(CreateError::InvalidConfig(_))
    ));
}

#[test]
fn attaching_past_the_lanes_and_to_a_closed_topic_is_refused() {
    let (bus, _cleanup) = bus("lanes");
    let first = bus
        .publisher::<u64>("t")
        .max_publishers(2)
        .create()
        .unwrap();
    let second = bus.publisher::<u64>("t").attach().unwrap();
    assert!(matches!(
        bus.publisher::<u64>("t").attach(),
        Err(OpenError::TooManyPublishers { max: 2, .. })
    ));
    assert!(matches!(
        bus.publisher::<u32>("t").attach(),
        Err(OpenError::IncompatibleType { .. })
    ));
    // A lane given back is free again, and its numbering goes on where it stopped.
    drop(second);
    let mut third = bus.publisher::<u64>("t").attach().unwrap();
    let mut subscriber = bus.subscriber::<u64>("t").open().unwrap();
    third.send(7).unwrap();
    let sample = subscriber.try_recv().unwrap().unwrap();
    assert_eq!((sample.lane(), *sample), (1, 7));
    drop(sample);
    // The topic lives while any publisher does.
    drop(first);
    assert!(bus.topic_info("t").is_ok());
    drop(third);
    assert!(matches!(
        bus.publisher::<u64>("t").attach(),
        Err(OpenError::NotFound { .. })
    ));
    assert_eq!(
        subscriber.try_recv().err(),
        Some(shmbus::RecvError::Disconnected)
    );
}
