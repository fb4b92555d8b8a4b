//! Any bytes, as a segment another process wrote, through the checks `Subscriber::open` runs:
//! `HeaderValues::read`, then `Geometry::validate` against the segment's real length.
//!
//! Validation must never panic; a short segment is `TooSmall`; an accepted geometry keeps every
//! promise documented on `Geometry` and addresses only bytes of the segment (its extreme bytes
//! are read, so ASan reports a geometry that reaches past the end). See `check_segment`.
//!
//! Raw bytes seldom make a header that validates (its recorded size must equal the input's
//! length); `geometry_roundtrip` builds valid segments and edits them, to cover that path.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|segment: &[u8]| {
    shmbus_fuzz::check_segment(segment);
});
