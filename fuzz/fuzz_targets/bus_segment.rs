//! A real topic's segment (created by a real publisher, in a directory of the fuzzer's own),
//! scribbled on at arbitrary places with arbitrary words: the header, the control block (lane
//! owners, the count of publishers, eviction counts, the subscriber tables) and the slots. Then
//! the bus-level readers of shared memory run over it: `Bus::topic_info` and `Bus::topics`
//! (discovery), `Subscriber::open` and its receives, `attach` of a second publisher and its
//! sends, `Bus::clean` (dry run). Whatever the bytes say, nothing may panic, hang or reach
//! outside the mapping (ASan); errors are fine.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use shmbus::{Bus, Policy, WaitStrategy};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Capacity `2 << (cap_shift % 5)`: 2 to 32 slots.
    cap_shift: u8,
    /// Policy: Block, Overwrite or Fail.
    policy: u8,
    /// Lanes `1 + publishers % 3`.
    publishers: u8,
    /// Subscriber entries `1 + subscribers % 4`.
    subscribers: u8,
    /// Messages sent before the scribbling.
    sent: u8,
    /// Whether a subscriber opens before the scribbling (its entry is then in the table).
    early_subscriber: bool,
    /// (where, what): a word written at `where % len`, 8-aligned, or a byte where odd.
    scribbles: Vec<(u32, u64)>,
    /// Receives tried after.
    receives: u8,
}

/// The fuzzer's own directory of segments (a tmpfs: /dev/shm), made once.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/shmbus-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make the fuzzer's directory");
        dir
    })
}

fuzz_target!(|input: Input| {
    let bus = Bus::builder().prefix("f.").dir(dir()).build().unwrap();
    let policy = match input.policy % 3 {
        0 => Policy::Block,
        1 => Policy::Overwrite,
        _ => Policy::Fail,
    };
    // Leftovers of an earlier input (a topic whose count was scribbled to stay open).
    let _ = std::fs::remove_file(dir().join("f.t"));
    let Ok(mut publisher) = bus
        .publisher::<u64>("t")
        .capacity(2 << (input.cap_shift % 5))
        .policy(policy)
        .max_publishers(1 + u32::from(input.publishers % 3))
        .max_subscribers(1 + u32::from(input.subscribers % 4))
        .wait(WaitStrategy::Spin)
        .create()
    else {
        return;
    };
    let mut early = input
        .early_subscriber
        .then(|| bus.subscriber::<u64>("t").wait(WaitStrategy::Spin).open().ok())
        .flatten();
    for i in 0..u64::from(input.sent % 64) {
        let _ = publisher.try_send(i);
    }

    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir().join("f.t"))
        .unwrap();
    let len = file.metadata().unwrap().len();
    for &(at, word) in input.scribbles.iter().take(64) {
        let at = u64::from(at) % len;
        if at % 2 == 1 {
            let _ = file.write_at(&[word as u8], at);
        } else {
            let at = (at & !7).min(len.saturating_sub(8));
            let _ = file.write_at(&word.to_ne_bytes(), at);
        }
    }

    // Everything that reads the segment, over whatever it now holds.
    let _ = bus.topic_info("t");
    let _ = bus.topics();
    let _ = bus.clean(true);
    let receives = usize::from(input.receives % 32);
    for sub in [early.as_mut(), None].into_iter().flatten() {
        for _ in 0..receives {
            match sub.try_recv() {
                Ok(Some(sample)) => {
                    std::hint::black_box(*sample);
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        let _ = sub.recv_timeout(Duration::ZERO);
        std::hint::black_box((sub.lost(), sub.next_seq()));
    }
    if let Ok(mut late) = bus.subscriber::<u64>("t").wait(WaitStrategy::Spin).open() {
        for _ in 0..receives {
            if !matches!(late.try_recv(), Ok(Some(_)) | Err(_)) {
                break;
            }
        }
    }
    if let Ok(mut second) = bus
        .publisher::<u64>("t")
        .wait(WaitStrategy::Spin)
        .attach()
    {
        for i in 0..receives as u64 {
            let _ = second.try_send(i);
        }
    }
    for i in 0..receives as u64 {
        let _ = publisher.try_send(i);
    }
    let _ = publisher.send_timeout(1, Duration::ZERO);
    drop(early);
    drop(publisher);
    let _ = std::fs::remove_file(dir().join("f.t"));
});
