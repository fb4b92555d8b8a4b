//! A file transport's spool (or a journal) as another process may have written it: a valid
//! hello of a `u64` or a byte topic (or none), then arbitrary bytes. Then what reads a spool
//! runs over it, one per input: a subscriber from the start (any type, as bytes), one from the
//! last messages (typed, which reads every header to find where to start), receiving until
//! nothing is left; or a publisher that takes the spool over (which reads it through, and
//! copies it when its last frame is torn) and a reader after it. Whatever the bytes say, nothing may panic or hang,
//! and no reader may hand out more messages than the file holds frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmbus::layout::{Policy, TypeFingerprint};
use shmbus::transport::frame::{self, FrameHeader, FrameKind, Hello, HEADER_LEN};
use shmbus::transport::File;
use shmbus::Bus;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The fuzzer's own directory of spools (a tmpfs: /dev/shm), made once.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(format!("/dev/shm/shmbus-fuzz-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make the fuzzer's directory");
        dir
    })
}

/// A hello frame of topic type `fingerprint` (its largest message `max_len`), from this process.
fn hello_frame(fingerprint: TypeFingerprint, max_len: u32) -> Vec<u8> {
    let hello = Hello {
        fingerprint,
        pid: std::process::id(),
        identity: shmbus::segment::my_identity(),
        policy: Policy::Block,
        max_len,
    }
    .encode();
    let mut out = vec![0u8; frame::frame_len(hello.len())];
    let header = FrameHeader::control(
        FrameKind::Hello,
        hello.len() as u32,
        frame::type_hash(&fingerprint),
    );
    frame::encode_frame(&mut out, &header, &hello);
    out
}

/// Receive until nothing is left; at most one message per frame the file can hold.
fn drain<T: ?Sized + shmbus::InPlace>(subscriber: &mut shmbus::Subscriber<T>, len: usize) {
    let most = len / HEADER_LEN + 1;
    for _ in 0..=most {
        match subscriber.try_recv() {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("more messages than a file of {len} bytes holds frames");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let u64_type = TypeFingerprint::typed::<u64>(std::any::type_name::<u64>());
    let mut spool = match mode % 3 {
        0 => Vec::new(),
        1 => hello_frame(u64_type, 8),
        _ => hello_frame(TypeFingerprint::bytes(), 64),
    };
    spool.extend_from_slice(rest);
    let path = dir().join("f.t.spool");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, &spool).unwrap();
    // As its publisher creates it: the user's alone (a wider mode is refused on open).
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let bus = Bus::builder()
        .prefix("f.")
        .transport(File::new(dir()))
        .build()
        .unwrap();

    // One check per input: each opens an inotify instance, whose close costs the kernel a
    // few milliseconds. Without a whole hello first, a reader waits (two seconds) for its
    // publisher to write it: the raw inputs go to the publisher's takeover, which never waits.
    match (mode / 3) % 3 {
        0 if mode % 3 != 0 => {
            if let Ok(mut all) = bus.subscriber::<[u8]>("t").any_type().from_start().open() {
                drain(&mut all, spool.len());
            }
        }
        1 if mode % 3 != 0 => {
            if let Ok(mut last) = bus.subscriber::<u64>("t").history(3).open() {
                drain(&mut last, spool.len());
            }
        }
        _ => {
            if let Ok(mut publisher) = bus.publisher::<u64>("t").create() {
                let _ = publisher.try_send(7);
                drop(publisher);
                let len = std::fs::metadata(&path).map_or(0, |m| m.len() as usize);
                if let Ok(mut after) = bus.subscriber::<u64>("t").from_start().open() {
                    drain(&mut after, len);
                }
            }
        }
    }
});
