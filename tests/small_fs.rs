//! A memory filesystem too small for a topic refuses it with the sizes, before anything is
//! mapped: a 1 MiB tmpfs that the test mounts (as a container's small `/dev/shm` would be) and
//! gives a bus as its directory ([`shmbus::BusBuilder::dir`]); a topic that fits there is
//! carried to a subscriber process.

mod common;

use common::{arg, child_bus, child_role, exit_child, say, ChildProc};
use shmbus::{Bus, BusError, CreateError};
use std::path::Path;
use std::time::Duration;

#[test]
fn child_entry() {
    let Some(role) = child_role() else { return };
    match role.as_str() {
        // Subscribe on the small filesystem and read `count` messages 0, 1, ...
        "subscriber" => {
            let count: u64 = arg("count").parse().unwrap();
            let mut subscriber = child_bus().subscriber::<u64>("fits").open().unwrap();
            say("READY");
            for want in 0..count {
                let got = *subscriber
                    .recv_timeout(common::CHILD_STALL)
                    .unwrap()
                    .expect("a message before the stall timeout");
                assert_eq!(got, want);
            }
            say(&format!("RESULT received={count}"));
            exit_child(0)
        }
        other => panic!("unknown role {other}"),
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_small_tmpfs_refuses_a_topic_it_cannot_hold_and_carries_one_it_can() {
    let fs = match common::SmallTmpfs::mount("small", 1024) {
        Ok(fs) => fs,
        Err(why) => {
            // The check itself is also tested against /dev/shm in tests/refusals.rs
            // (`a_topic_larger_than_the_shared_memory_filesystem_is_no_space`).
            common::skip(&format!("cannot mount a 1 MiB tmpfs here ({why})"));
            return;
        }
    };
    let bus = Bus::builder()
        .prefix("small.")
        .dir(&fs.dir)
        .build()
        .unwrap();
    assert_eq!(bus.dir(), fs.dir);

    // 512 slots of 4 KiB: 2 MiB and more, in a 1 MiB filesystem.
    match bus
        .publisher::<[u8]>("big")
        .capacity(512)
        .slot_size(4096)
        .create()
    {
        Err(CreateError::NoSpace {
            topic,
            dir,
            needed,
            available,
        }) => {
            assert_eq!(topic, "big");
            assert_eq!(dir, fs.dir);
            assert!(needed > 2 << 20, "needed {needed}");
            assert!(available <= 1 << 20, "available {available}");
            let text = CreateError::NoSpace {
                topic,
                dir,
                needed,
                available,
            }
            .to_string();
            assert!(text.contains(&fs.dir.display().to_string()), "{text}");
        }
        other => panic!("expected NoSpace, got {:?}", other.map(|_| ())),
    }
    assert!(files_in(&fs.dir).is_empty(), "a refused topic left a file");

    // One that fits: created, read by a subscriber process through the same directory.
    let mut publisher = bus
        .publisher::<u64>("fits")
        .capacity(1024)
        .create()
        .unwrap();
    assert_eq!(files_in(&fs.dir), ["small.fits"]);
    let count = 100_000u64;
    let dir = fs.dir.to_string_lossy().into_owned();
    let mut child = ChildProc::spawn(
        "subscriber",
        &[
            ("prefix", "small."),
            ("dir", &dir),
            ("count", &count.to_string()),
        ],
    );
    child.wait_for_line("READY");
    for i in 0..count {
        publisher.send_timeout(i, Duration::from_secs(60)).unwrap();
    }
    let done = child.finish();
    done.assert_success();
    assert_eq!(done.num("received"), count);

    // Now the filesystem is partly used: a second topic that would have fitted alone does not.
    let free = shmbus::segment::free_space(&fs.dir).unwrap();
    let slots = (free / 4096).next_power_of_two().max(2);
    assert!(matches!(
        bus.publisher::<[u8]>("second")
            .capacity(slots)
            .slot_size(4096)
            .create(),
        Err(CreateError::NoSpace { .. })
    ));
    drop(publisher);
    assert!(
        files_in(&fs.dir).is_empty(),
        "the last publisher removes its topic"
    );
}

#[test]
fn a_bus_directory_must_be_a_directory() {
    let missing = Path::new("/nonexistent/shmbus");
    match Bus::builder().dir(missing).build() {
        Err(BusError::Dir { dir, source }) => {
            assert_eq!(dir, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected BusError::Dir, got {other:?}"),
    }
    let file = std::env::current_exe().unwrap();
    assert!(matches!(
        Bus::builder().dir(&file).build(),
        Err(BusError::Dir { .. })
    ));
}
