//! Payload types with invalid bit patterns (`Checked<T>`): a subscriber process receives only
//! valid values, and a message whose bytes are not a `T` (written by a hostile publisher
//! process through a `Pod` twin of the type) is skipped with `RecvError::InvalidBitPattern`,
//! under Block and under Overwrite.

mod common;

use bytemuck::{CheckedBitPattern, NoUninit, Pod, Zeroable};
use common::{arg, child_bus, exit_child, say, ChildProc, Cleanup, CHILD_STALL};
use shmbus::{Bus, Checked, Policy, RecvError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, CheckedBitPattern, NoUninit)]
#[repr(u8)]
enum Side {
    Buy = 1,
    Sell = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, CheckedBitPattern, NoUninit)]
#[repr(C)]
struct Order {
    seq: u64,
    price: u32,
    side: Side,
    urgent: bool,
    _pad: [u8; 2],
}

/// The same bytes as `Order`, any of them: what a hostile publisher writes.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct RawOrder {
    seq: u64,
    price: u32,
    side: u8,
    urgent: u8,
    _pad: [u8; 2],
}

fn order(seq: u64) -> Order {
    Order {
        seq,
        price: 100 + seq as u32,
        side: if seq % 2 == 0 { Side::Buy } else { Side::Sell },
        urgent: seq % 3 == 0,
        _pad: [0; 2],
    }
}

/// What the hostile publisher sends, in this order: valid, a bad enum, a bad bool, valid.
const SCRIPT: [(u8, u8); 4] = [(1, 0), (7, 0), (2, 5), (2, 1)];

#[test]
fn child_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    match role.as_str() {
        // Publish `SCRIPT` as `RawOrder`s under `Order`'s type name: the fingerprint matches.
        "hostile-publisher" => {
            let policy = if arg("policy") == "overwrite" {
                Policy::Overwrite
            } else {
                Policy::Block
            };
            let mut publisher = child_bus()
                .publisher::<RawOrder>(&arg("topic"))
                .policy(policy)
                .type_name(std::any::type_name::<Order>())
                .create()
                .unwrap();
            say("READY");
            assert!(publisher.wait_for_subscribers(1, CHILD_STALL));
            for (seq, (side, urgent)) in SCRIPT.into_iter().enumerate() {
                let raw = RawOrder {
                    seq: seq as u64,
                    price: 7,
                    side,
                    urgent,
                    _pad: [0; 2],
                };
                publisher.send(raw).unwrap();
            }
            // Stay (the topic stays open) until the parent has read it all and kills this.
            std::thread::sleep(CHILD_STALL);
            exit_child(0)
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn valid_values_arrive_and_invalid_bit_patterns_from_a_hostile_publisher_are_refused() {
    let prefix = common::unique_prefix("checked");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    for policy in ["block", "overwrite"] {
        let topic = format!("orders-{policy}");
        let mut hostile = ChildProc::spawn(
            "hostile-publisher",
            &[("prefix", &prefix), ("topic", &topic), ("policy", policy)],
        );
        hostile.wait_for_line("READY");
        let mut subscriber = bus.subscriber::<Checked<Order>>(&topic).open().unwrap();
        let mut got = Vec::new();
        while got.len() < SCRIPT.len() {
            match subscriber.recv_timeout(CHILD_STALL) {
                Ok(Some(sample)) => got.push(Ok((sample.seq(), sample.side, sample.urgent))),
                Ok(None) => panic!("{policy}: nothing within {CHILD_STALL:?}"),
                Err(RecvError::InvalidBitPattern { seq }) => got.push(Err(seq)),
                Err(e) => panic!("{policy}: {e:?}"),
            }
        }
        assert_eq!(
            got,
            [
                Ok((0, Side::Buy, false)),
                Err(1),
                Err(2),
                Ok((3, Side::Sell, true))
            ],
            "{policy}"
        );
        drop(subscriber);
        hostile.kill();
        let _ = hostile.finish();
    }
}

#[test]
fn a_checked_topic_carries_values_between_processes_in_both_directions_of_the_api() {
    let prefix = common::unique_prefix("checked-ok");
    let _cleanup = Cleanup::new(&prefix);
    let bus = Bus::builder().prefix(&prefix).build().unwrap();
    for policy in [Policy::Block, Policy::Fail, Policy::Overwrite] {
        let topic = format!("t-{policy}");
        let mut publisher = bus
            .publisher::<Checked<Order>>(&topic)
            .capacity(8)
            .policy(policy)
            .create()
            .unwrap();
        let mut subscriber = bus.subscriber::<Checked<Order>>(&topic).open().unwrap();
        for seq in 0..100u64 {
            publisher.send(order(seq)).unwrap();
            let sample = subscriber.try_recv().unwrap().expect("sent just before");
            assert_eq!(*sample, order(seq), "{policy}");
            assert_eq!(sample.seq(), seq);
        }
        // A plain `Pod` twin is another type unless it takes the name: refused.
        assert!(bus.subscriber::<RawOrder>(&topic).open().is_err());
    }
}
