//! A copying transport's receive path: a publisher's bytes (mostly well-formed frames, with
//! flipped bytes, wrong kinds, types, lengths and sequence numbers, and raw garbage), as a
//! stream cut into arbitrary reads or as datagrams, through `Framed`, compared with a model
//! that decodes the same bytes whole. See `shmbus_fuzz::frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: shmbus_fuzz::frames::Input| {
    shmbus_fuzz::frames::check(&input);
});
