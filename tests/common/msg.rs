//! The typed message of the stream tests: its sequence number, words derived from it and a
//! checksum of them, so that a torn read (words from two different messages) shows as a bad
//! checksum or a wrong word.

use bytemuck::{Pod, Zeroable};

/// Words besides `seq` and `check`: 64 bytes in all, several words so that a torn read shows.
pub const WORDS: usize = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct Msg {
    pub seq: u64,
    pub words: [u64; WORDS],
    pub check: u64,
}

pub fn word(seq: u64, i: usize) -> u64 {
    (seq ^ ((i as u64 + 1) << 56))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(i as u32 * 7 + 1)
}

pub fn checksum(seq: u64, words: &[u64; WORDS]) -> u64 {
    words.iter().fold(seq ^ 0xA5A5_A5A5_A5A5_A5A5, |h, &w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01B3).rotate_left(17)
    })
}

pub fn message(seq: u64) -> Msg {
    let words = std::array::from_fn(|i| word(seq, i));
    Msg {
        seq,
        words,
        check: checksum(seq, &words),
    }
}

/// What is wrong with message `got` (delivered as number `sample_seq`) where `expected` was due.
pub fn check_message(expected: u64, sample_seq: u64, got: &Msg) -> Option<String> {
    if sample_seq != expected || got.seq != expected {
        return Some(format!(
            "expected message {expected}, sample.seq() = {sample_seq}, msg.seq = {}",
            got.seq
        ));
    }
    if got.check != checksum(got.seq, &got.words) || *got != message(expected) {
        return Some(format!("message {expected} is torn or corrupt: {got:?}"));
    }
    None
}
