//! Receives market-data ticks from the topic `example.ticks`: the subscribing half of a pair
//! with `examples/publisher.rs`.
//!
//! Run the two in two terminals, in either order (this one waits up to 30 s for the topic):
//!
//! ```text
//! cargo run --example subscriber
//! cargo run --example publisher [COUNT]
//! ```
//!
//! Each tick is read in place in the shared ring; its slot goes back to the publisher when the
//! sample is dropped. The subscriber sleeps on a futex between ticks (spinning briefly first),
//! and ends when the publisher has closed the topic and every tick has been read.

use bytemuck::{Pod, Zeroable};
use shmbus::{Bus, RecvError, WaitStrategy};
use std::time::Duration;

/// The message: defined as in `publisher.rs`, under the same schema name.
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::open_default()?;
    println!("waiting for {TOPIC}");
    let mut subscriber = bus
        .subscriber::<Tick>(TOPIC)
        .type_name(TYPE_NAME)
        // Started after the publisher: begin with the ticks it keeps (up to 100).
        .history(100)
        .wait(WaitStrategy::default())
        .open_timeout(Duration::from_secs(30))?;
    println!("subscribed at tick {}", subscriber.next_seq());
    let mut received = 0u64;
    loop {
        match subscriber.recv_timeout(Duration::from_secs(2)) {
            Ok(Some(tick)) => {
                // `tick` reads the slot in place; `tick.seq()` is the bus's own numbering.
                if tick.seq != tick.seq() {
                    eprintln!("tick {} arrived as message {}", tick.seq, tick.seq());
                }
                println!(
                    "#{:<5} price {:.4} size {:>9} venue {}",
                    tick.seq, tick.price, tick.size, tick.venue
                );
                received += 1;
            } // the slot is released here
            Ok(None) => println!("(no tick for 2 s)"),
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
    }
    println!("the publisher closed the topic; {received} ticks received");
    Ok(())
}
