//! `SubscriberBuilder::slip`: when a subscriber that was reading messages already waiting
//! finds the ring empty, it pauses; one message at a time never makes it pause.

mod common;

use common::{unique_prefix, Cleanup};
use shmbus::{Bus, WaitStrategy, SLIP_RUN};
use std::time::Duration;

#[test]
fn a_subscriber_slips_only_after_a_run_of_waiting_messages() {
    let prefix = unique_prefix("slip");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    let mut publisher = bus.publisher::<u64>("t").capacity(64).create().unwrap();
    let mut subscriber = bus
        .subscriber::<u64>("t")
        .wait(WaitStrategy::Spin)
        .slip(Duration::from_micros(50))
        .open()
        .unwrap();

    // One message at a time, as in a round trip: never a slip.
    for i in 0..3 * SLIP_RUN {
        publisher.send(i).unwrap();
        assert_eq!(*subscriber.recv().unwrap(), i);
        assert!(subscriber.recv_timeout(Duration::ZERO).unwrap().is_none());
    }
    assert_eq!(subscriber.slips(), 0);

    // A run of SLIP_RUN messages found waiting, then an empty ring: one slip, bounded by the
    // timeout, and the messages are all there, in order.
    let base = 3 * SLIP_RUN;
    for i in 0..SLIP_RUN {
        publisher.send(base + i).unwrap();
    }
    for i in 0..SLIP_RUN {
        assert_eq!(*subscriber.recv().unwrap(), base + i);
    }
    assert!(subscriber
        .recv_timeout(Duration::from_micros(1))
        .unwrap()
        .is_none());
    assert_eq!(subscriber.slips(), 1);

    // One short of a run: no slip.
    for i in 0..SLIP_RUN - 1 {
        publisher.send(i).unwrap();
    }
    for i in 0..SLIP_RUN - 1 {
        assert_eq!(*subscriber.recv().unwrap(), i);
    }
    assert!(subscriber.recv_timeout(Duration::ZERO).unwrap().is_none());
    assert_eq!(subscriber.slips(), 1);

    // Without a slip configured, never.
    let mut plain = {
        drop(subscriber);
        bus.subscriber::<u64>("t")
            .wait(WaitStrategy::Spin)
            .open()
            .unwrap()
    };
    for i in 0..2 * SLIP_RUN {
        publisher.send(i).unwrap();
    }
    for i in 0..2 * SLIP_RUN {
        assert_eq!(*plain.recv().unwrap(), i);
    }
    assert!(plain.recv_timeout(Duration::ZERO).unwrap().is_none());
    assert_eq!(plain.slips(), 0);
}
