//! Publishes market-data ticks on the topic `example.ticks`: the publishing half of a pair with
//! `examples/subscriber.rs`.
//!
//! Run the two in two terminals, in either order (the subscriber waits for the topic):
//!
//! ```text
//! cargo run --example publisher [COUNT]     # COUNT ticks, one every 50 ms (default 200)
//! cargo run --example subscriber
//! ```
//!
//! Each tick is written in place in the shared ring (`loan`, write the fields, `send`): nothing
//! is copied on the way to the subscriber. The publisher waits for a first subscriber, and keeps
//! its last 100 ticks for subscribers that join later and ask for them (as `subscriber.rs` does).
//! When the publisher ends it removes the topic, and the subscriber, having read every tick,
//! sees the topic closed.

use bytemuck::{Pod, Zeroable};
use shmbus::{Bus, CreateError, LoanError};
use std::time::Duration;

/// The message. Both programs define it identically and give it the same schema name (see
/// `TYPE_NAME`), since each crate's own type name would differ.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
struct Tick {
    seq: u64,
    price: f64,
    size: u32,
    venue: u32,
}

const TOPIC: &str = "example.ticks";
const TYPE_NAME: &str = "shmbus-examples::Tick";
/// Ticks kept for subscribers that join late.
const HISTORY: u64 = 100;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 200,
    };
    let bus = Bus::open_default()?;
    let mut publisher = match bus
        .publisher::<Tick>(TOPIC)
        .capacity(1024)
        .history(HISTORY)
        .type_name(TYPE_NAME)
        .create()
    {
        Ok(publisher) => publisher,
        Err(CreateError::AlreadyExists { .. }) => {
            eprintln!(
                "topic {TOPIC} exists: another publisher runs, or one was killed before it could \
                 remove it (then: rm /dev/shm/{}{TOPIC})",
                bus.prefix()
            );
            std::process::exit(1);
        }
        Err(e) => return Err(e.into()),
    };
    println!("waiting up to 30 s for a subscriber on {TOPIC}");
    if !publisher.wait_for_subscribers(1, Duration::from_secs(30)) {
        println!("no subscriber yet; publishing anyway (a late one gets the last {HISTORY})");
    }
    println!("publishing {count} ticks on {TOPIC}");
    let mut price = 1.0842;
    for seq in 0..count {
        price += if seq % 3 == 0 { -0.0001 } else { 0.0001 };
        // A slot in shared memory, written in place field by field. Waits while the ring is
        // full, that is while the slowest subscriber is 1024 - HISTORY ticks behind.
        let mut tick = loop {
            match publisher.loan_timeout(Duration::from_secs(1)) {
                Ok(tick) => break tick,
                Err(LoanError::Timeout) => {
                    eprintln!("the ring stayed full for a second: is the subscriber reading?")
                }
                Err(e) => return Err(e.into()),
            }
        };
        tick.seq = seq;
        tick.price = price;
        tick.size = 1_000_000 + (seq as u32 % 7) * 100_000;
        tick.venue = 7;
        tick.send(); // one Release store: the subscriber sees the whole tick, or nothing
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("sent {} ticks; closing the topic", publisher.next_seq());
    Ok(())
}
