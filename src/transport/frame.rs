//! The wire format of every copying transport: a fixed 40-byte header, the payload, and zero
//! padding up to a multiple of 8 bytes (so that, in a buffer of whole frames, every payload
//! starts 8-aligned).
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `SHBF` |
//! | 4 | 1 | kind: 1 hello, 2 data, 3 close, 4 subscribe, 5 refuse, 6 topic |
//! | 5 | 1 | format version (1) |
//! | 6 | 2 | flags (0) |
//! | 8 | 4 | payload length in bytes |
//! | 12 | 4 | reserved (0) |
//! | 16 | 8 | type hash ([`type_hash`] of the topic's fingerprint) |
//! | 24 | 8 | sequence number (data), 0 otherwise |
//! | 32 | 8 | send time, ns since the Unix epoch (data; the journal paces replay by it) |
//!
//! All little-endian. A connection starts with the publisher's hello (its payload is a
//! [`Hello`]: the full fingerprint, the publisher's pid and identity, the policy and the largest
//! payload), then data frames, then a close frame when the publisher leaves cleanly; a
//! connection that ends without a close is a publisher that died.
//!
//! A TCP subscriber speaks first, since one address serves every topic of its process: a
//! subscribe frame (type hash, sequence and stamp 0) whose payload is a [`Subscribe`], the
//! topic's full name and the token. The publisher answers with the topic's hello, or with a
//! refuse frame (payload: a [`Refusal`]) and hangs up.
//!
//! Where no path names the topic (a pipe), a topic frame comes before the hello: its payload is
//! the bus's prefix and the topic's name, which the subscriber compares with its own.
//!
//! Every byte here comes from another process, perhaps a hostile one: [`FrameHeader::decode`]
//! and [`Hello::decode`] check every field, and the length is checked against the largest
//! payload the receiver accepts before anything is allocated or read.

use crate::layout::{PayloadKind, Policy, TypeFingerprint, TYPE_NAME_LEN};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SHBF";
/// The frame format's version.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 40;
/// The largest payload any frame may carry (hello, subscribe, refuse, or data): 16 MiB. A
/// receiver accepts less: its topic's slot size.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// The longest token a [`Subscribe`] carries, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;
/// The longest topic name a [`Subscribe`] carries: `<prefix><topic>`, as a segment's name.
pub const MAX_TOPIC_NAME_LEN: usize = crate::segment::MAX_SEGMENT_NAME_LEN;
/// The largest payload of a subscribe frame: its fixed part, the longest name and token.
pub const MAX_SUBSCRIBE_LEN: usize = 8 + MAX_TOPIC_NAME_LEN + MAX_TOKEN_LEN;
/// Bytes in a refuse frame's payload.
pub const REFUSAL_LEN: usize = 8;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// The publisher's greeting: a [`Hello`].
    Hello = 1,
    /// A message.
    Data = 2,
    /// The publisher leaves cleanly: nothing follows.
    Close = 3,
    /// A TCP subscriber's request: a [`Subscribe`] (the topic it wants, and its token).
    Subscribe = 4,
    /// A TCP publisher's answer to a request it does not serve: a [`Refusal`]; it hangs up.
    Refuse = 5,
    /// The topic's name (`<prefix><topic>`), before the hello where no path names the topic
    /// (a pipe).
    Topic = 6,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => FrameKind::Hello,
            2 => FrameKind::Data,
            3 => FrameKind::Close,
            4 => FrameKind::Subscribe,
            5 => FrameKind::Refuse,
            6 => FrameKind::Topic,
            _ => return None,
        })
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: FrameKind,
    /// Payload length in bytes (the padding is not counted).
    pub len: u32,
    /// The topic's type hash.
    pub type_hash: u64,
    /// The message's sequence number (data frames).
    pub seq: u64,
    /// The send time, ns since the Unix epoch (data frames; 0 if not stamped).
    pub stamp: u64,
}

/// Why a frame was refused. The connection it came on is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not `SHBF`: not a shmbus peer, or out of step.
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// Another version of the frame format.
    #[error("frame format version {found}, this build speaks {VERSION}")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// A kind this build does not know, or one that does not belong where it came.
    #[error("unexpected frame kind {found}")]
    UnexpectedKind {
        /// The kind byte.
        found: u8,
    },
    /// Flags or reserved bytes that are not zero.
    #[error("frame header has non-zero reserved bits")]
    Reserved,
    /// A payload longer than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length the header claims.
        len: u32,
        /// The most this receiver accepts.
        max: u32,
    },
    /// A typed topic's message whose length is not the type's size.
    #[error("frame of {len} bytes where the type has {expected}")]
    WrongLength {
        /// The length the header claims.
        len: u32,
        /// The type's size.
        expected: u32,
    },
    /// A frame of another topic type.
    #[error("frame of type hash {found:#x}, the topic's is {expected:#x}")]
    WrongType {
        /// The topic's type hash.
        expected: u64,
        /// The frame's.
        found: u64,
    },
    /// A data frame whose sequence number is not the one expected (a message lost or
    /// repeated where the policy loses none, or a number going backwards).
    #[error("frame out of sequence: {found} where {expected} was expected")]
    OutOfSequence {
        /// The number expected (the least acceptable under Overwrite).
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// The connection ended, or a datagram was cut, in the middle of a frame.
    #[error("frame truncated: {have} of {need} bytes")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// A hello whose payload is not a valid greeting.
    #[error("invalid hello: {0}")]
    BadHello(&'static str),
    /// A subscribe frame whose payload is not a valid request.
    #[error("invalid subscribe request: {0}")]
    BadSubscribe(&'static str),
    /// A refuse frame whose payload is not a refusal this build knows.
    #[error("invalid refusal: {0}")]
    BadRefusal(&'static str),
}

/// Bytes a frame of `len` payload bytes takes on the wire, padding included.
#[inline]
pub const fn frame_len(len: usize) -> usize {
    HEADER_LEN + padded(len)
}

/// `len` rounded up to a multiple of 8.
#[inline]
pub const fn padded(len: usize) -> usize {
    (len + 7) & !7
}

/// The 64-bit summary of a fingerprint that every data frame carries.
pub fn type_hash(fp: &TypeFingerprint) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let kind = fp.kind as u64;
    for word in [kind, fp.size, fp.align as u64, fp.name_hash] {
        for b in word.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl FrameHeader {
    /// A data frame's header.
    pub fn data(len: u32, type_hash: u64, seq: u64, stamp: u64) -> Self {
        Self {
            kind: FrameKind::Data,
            len,
            type_hash,
            seq,
            stamp,
        }
    }

    /// A header of another kind (sequence and stamp 0).
    pub fn control(kind: FrameKind, len: u32, type_hash: u64) -> Self {
        Self {
            kind,
            len,
            type_hash,
            seq: 0,
            stamp: 0,
        }
    }

    /// The header's bytes.
    #[inline]
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = self.kind as u8;
        out[5] = VERSION;
        out[6..8].fill(0);
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[12..16].fill(0);
        out[16..24].copy_from_slice(&self.type_hash.to_le_bytes());
        out[24..32].copy_from_slice(&self.seq.to_le_bytes());
        out[32..40].copy_from_slice(&self.stamp.to_le_bytes());
    }

    /// Decode and check a header: magic, version, kind, reserved bits, and the length
    /// against `max_len` (checked before anything of that length is read or allocated).
    #[inline]
    pub fn decode(bytes: &[u8; HEADER_LEN], max_len: u32) -> Result<Self, FrameError> {
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let magic: [u8; 4] = bytes[0..4].try_into().unwrap();
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        if bytes[5] != VERSION {
            return Err(FrameError::UnsupportedVersion { found: bytes[5] });
        }
        let kind =
            FrameKind::from_u8(bytes[4]).ok_or(FrameError::UnexpectedKind { found: bytes[4] })?;
        if bytes[6] != 0 || bytes[7] != 0 || u32_at(12) != 0 {
            return Err(FrameError::Reserved);
        }
        let len = u32_at(8);
        let max = max_len.min(MAX_PAYLOAD);
        if len > max {
            return Err(FrameError::TooLong { len, max });
        }
        Ok(Self {
            kind,
            len,
            type_hash: u64_at(16),
            seq: u64_at(24),
            stamp: u64_at(32),
        })
    }
}

/// A publisher's greeting, the payload of the first frame of every connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// What the topic carries.
    pub fingerprint: TypeFingerprint,
    /// The publisher's pid.
    pub pid: u32,
    /// The publisher's identity (pid and start time: `crate::segment::my_identity`).
    pub identity: u64,
    /// The topic's policy.
    pub policy: Policy,
    /// The largest payload the topic carries.
    pub max_len: u32,
}

/// Bytes in an encoded [`Hello`].
pub const HELLO_LEN: usize = 40 + TYPE_NAME_LEN;

impl Hello {
    /// The greeting's bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[0] = self.fingerprint.kind as u8;
        out[1] = self.policy as u8;
        out[4..8].copy_from_slice(&self.fingerprint.align.to_le_bytes());
        out[8..16].copy_from_slice(&self.fingerprint.size.to_le_bytes());
        out[16..24].copy_from_slice(&self.fingerprint.name_hash.to_le_bytes());
        out[24..28].copy_from_slice(&self.pid.to_le_bytes());
        out[28..32].copy_from_slice(&self.max_len.to_le_bytes());
        out[32..40].copy_from_slice(&self.identity.to_le_bytes());
        out[40..].copy_from_slice(&self.fingerprint.name);
        out
    }

    /// Decode and check a greeting.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() != HELLO_LEN {
            return Err(FrameError::BadHello("wrong length"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        let kind = match bytes[0] {
            1 => PayloadKind::Typed,
            2 => PayloadKind::Bytes,
            _ => return Err(FrameError::BadHello("unknown payload kind")),
        };
        let policy =
            Policy::from_raw(bytes[1] as u32).ok_or(FrameError::BadHello("unknown policy"))?;
        if bytes[2] != 0 || bytes[3] != 0 {
            return Err(FrameError::BadHello("reserved bytes not zero"));
        }
        let max_len = u32_at(28);
        if max_len == 0 || max_len > MAX_PAYLOAD {
            return Err(FrameError::BadHello("largest payload out of range"));
        }
        let mut name = [0u8; TYPE_NAME_LEN];
        name.copy_from_slice(&bytes[40..]);
        Ok(Self {
            fingerprint: TypeFingerprint {
                kind,
                size: u64_at(8),
                align: u32_at(4),
                name_hash: u64_at(16),
                name,
            },
            pid: u32_at(24),
            identity: u64_at(32),
            policy,
            max_len,
        })
    }
}

/// A TCP subscriber's request, the payload of a subscribe frame:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 2 | name length `n`, 1 to [`MAX_TOPIC_NAME_LEN`] |
/// | 2 | 2 | token length `m`, 0 to [`MAX_TOKEN_LEN`] |
/// | 4 | 4 | reserved (0) |
/// | 8 | `n` | the topic's full name, `<prefix><topic>`, UTF-8 |
/// | 8 + `n` | `m` | the token (none: `m` = 0) |
///
/// The payload is exactly `8 + n + m` bytes long.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// The topic's full name (`<prefix><topic>`).
    pub name: &'a str,
    /// The token, empty if none.
    pub token: &'a [u8],
}

impl std::fmt::Debug for Subscribe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: it is a secret, and debug output ends up in logs.
        f.debug_struct("Subscribe")
            .field("name", &self.name)
            .field("token_len", &self.token.len())
            .finish()
    }
}

impl<'a> Subscribe<'a> {
    /// The request's bytes, or `None` if the name or the token is out of range.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.name.is_empty()
            || self.name.len() > MAX_TOPIC_NAME_LEN
            || self.token.len() > MAX_TOKEN_LEN
        {
            return None;
        }
        let mut out = Vec::with_capacity(8 + self.name.len() + self.token.len());
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(self.token.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(self.name.as_bytes());
        out.extend_from_slice(self.token);
        Some(out)
    }

    /// Decode and check a request: both lengths in range and adding up to the payload's, the
    /// reserved bytes zero, the name UTF-8.
    ///
    /// # Errors
    /// [`FrameError::BadSubscribe`], saying which check failed.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, FrameError> {
        if bytes.len() < 8 || bytes.len() > MAX_SUBSCRIBE_LEN {
            return Err(FrameError::BadSubscribe("wrong length"));
        }
        let name_len = u16::from_le_bytes([bytes[0], bytes[1]]) as usize;
        let token_len = u16::from_le_bytes([bytes[2], bytes[3]]) as usize;
        if bytes[4..8] != [0; 4] {
            return Err(FrameError::BadSubscribe("reserved bytes not zero"));
        }
        if name_len == 0 || name_len > MAX_TOPIC_NAME_LEN {
            return Err(FrameError::BadSubscribe("name length out of range"));
        }
        if token_len > MAX_TOKEN_LEN {
            return Err(FrameError::BadSubscribe("token length out of range"));
        }
        if 8 + name_len + token_len != bytes.len() {
            return Err(FrameError::BadSubscribe(
                "lengths do not add up to the payload's",
            ));
        }
        let name = std::str::from_utf8(&bytes[8..8 + name_len])
            .map_err(|_| FrameError::BadSubscribe("name is not UTF-8"))?;
        Ok(Self {
            name,
            token: &bytes[8 + name_len..],
        })
    }
}

/// Why a TCP publisher refused a subscriber: the payload of a refuse frame (a little-endian
/// `u32` code, then 4 reserved bytes, 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Refusal {
    /// The address serves no topic of that name.
    NoSuchTopic = 1,
    /// The token is wrong, or missing where one is required.
    Token = 2,
    /// The request is not a valid [`Subscribe`].
    BadRequest = 3,
}

impl Refusal {
    /// The refusal's bytes.
    pub fn encode(self) -> [u8; REFUSAL_LEN] {
        let mut out = [0u8; REFUSAL_LEN];
        out[..4].copy_from_slice(&(self as u32).to_le_bytes());
        out
    }

    /// Decode and check a refusal: a known code, the reserved bytes zero.
    ///
    /// # Errors
    /// [`FrameError::BadRefusal`], saying which check failed.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() != REFUSAL_LEN {
            return Err(FrameError::BadRefusal("wrong length"));
        }
        if bytes[4..] != [0; 4] {
            return Err(FrameError::BadRefusal("reserved bytes not zero"));
        }
        match u32::from_le_bytes(bytes[..4].try_into().unwrap()) {
            1 => Ok(Refusal::NoSuchTopic),
            2 => Ok(Refusal::Token),
            3 => Ok(Refusal::BadRequest),
            _ => Err(FrameError::BadRefusal("unknown reason")),
        }
    }
}

/// Where a receiver is in its stream of frames: what it accepts next.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// The topic's type hash.
    pub type_hash: u64,
    /// Typed topics: the exact payload length.
    pub exact_len: Option<u32>,
    /// The largest payload accepted.
    pub max_len: u32,
    /// Whether gaps in the sequence are allowed (Overwrite: a slow subscriber loses
    /// messages, and learns how many from the gap).
    pub gaps: bool,
    /// The next sequence number, once the first data frame has set it.
    pub next_seq: Option<u64>,
}

impl Expect {
    /// Check a data frame's header against what is expected, and move on past it. Returns
    /// the messages lost before it (Overwrite).
    pub fn accept(&mut self, h: &FrameHeader) -> Result<u64, FrameError> {
        debug_assert_eq!(h.kind, FrameKind::Data);
        if h.type_hash != self.type_hash {
            return Err(FrameError::WrongType {
                expected: self.type_hash,
                found: h.type_hash,
            });
        }
        if let Some(expected) = self.exact_len {
            if h.len != expected {
                return Err(FrameError::WrongLength {
                    len: h.len,
                    expected,
                });
            }
        }
        let lost = match self.next_seq {
            None => 0,
            Some(next) if h.seq == next => 0,
            Some(next) if self.gaps && h.seq > next => h.seq - next,
            Some(next) => {
                return Err(FrameError::OutOfSequence {
                    expected: next,
                    found: h.seq,
                })
            }
        };
        // A hostile u64::MAX: the next frame (any) is then out of sequence, never a wrap.
        self.next_seq = Some(h.seq.saturating_add(1));
        Ok(lost)
    }
}

/// Reassembles frames from a byte stream read in chunks: a buffer of whole and partial
/// frames, parsed in place. Allocation is bounded: the buffer holds at most one largest frame
/// plus one read's worth, fixed when it is made.
#[derive(Debug)]
pub struct StreamBuf {
    buf: Box<[u64]>,
    /// Parsed up to here (bytes).
    start: usize,
    /// Filled up to here (bytes).
    end: usize,
}

/// A frame found in a [`StreamBuf`]: its header and where its payload lies.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    /// The header.
    pub header: FrameHeader,
    /// Byte offset of the payload in the buffer (8-aligned).
    pub offset: usize,
}

impl StreamBuf {
    /// A buffer for frames of up to `max_len` payload bytes, read `chunk` bytes at a time.
    pub fn new(max_len: u32, chunk: usize) -> Self {
        let bytes = frame_len(max_len.min(MAX_PAYLOAD) as usize) + chunk.max(HEADER_LEN);
        Self {
            buf: vec![0u64; bytes.div_ceil(8)].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.buf)
    }

    /// The payload of a frame found by [`StreamBuf::next`].
    #[inline]
    pub fn payload(&self, found: &Found) -> &[u8] {
        &self.bytes()[found.offset..found.offset + found.header.len as usize]
    }

    /// A pointer to the payload (8-aligned), for a sample that derefs to a type.
    #[inline]
    pub fn payload_ptr(&self, found: &Found) -> *const u8 {
        self.payload(found).as_ptr()
    }

    /// The next whole frame, if the buffer holds one; its payload stays valid until the next
    /// call to `next` or `spare`. `max_len` caps the payload (checked on the header alone).
    #[inline]
    pub fn next(&mut self, max_len: u32) -> Result<Option<Found>, FrameError> {
        let avail = self.end - self.start;
        if avail < HEADER_LEN {
            return Ok(None);
        }
        let header: &[u8; HEADER_LEN] = self.bytes()[self.start..self.start + HEADER_LEN]
            .try_into()
            .unwrap();
        let header = FrameHeader::decode(header, max_len)?;
        let total = frame_len(header.len as usize);
        if avail < total {
            return Ok(None);
        }
        let found = Found {
            header,
            offset: self.start + HEADER_LEN,
        };
        self.start += total;
        Ok(Some(found))
    }

    /// Room to read into: moves the unparsed bytes to the front first when they are few or
    /// the room is short. Never empty while a partial frame's remainder fits (it always does:
    /// the buffer holds a largest frame plus a chunk).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() * 8 - self.end < HEADER_LEN.max(self.buf.len() * 8 / 4) {
            let (start, end) = (self.start, self.end);
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.buf);
            bytes.copy_within(start..end, 0);
            self.start = 0;
            self.end = end - start;
        }
        let end = self.end;
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.buf)[end..]
    }

    /// `n` bytes were read into [`StreamBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len() * 8);
    }

    /// The bytes held that are not a whole frame yet.
    pub fn unparsed(&self) -> &[u8] {
        &self.bytes()[self.start..self.end]
    }

    /// Bytes held that are not a whole frame yet (for an end of stream mid-frame).
    pub fn partial(&self) -> usize {
        self.end - self.start
    }

    /// The whole buffer, for a transport that reads one datagram (one frame) at a time.
    pub fn datagram_room(&mut self) -> &mut [u8] {
        self.start = 0;
        self.end = 0;
        bytemuck::cast_slice_mut(&mut self.buf)
    }

    /// A datagram of `n` bytes was read into [`StreamBuf::datagram_room`]: it must be exactly
    /// one frame.
    pub fn datagram(&mut self, n: usize, max_len: u32) -> Result<Found, FrameError> {
        self.start = 0;
        self.end = n.min(self.buf.len() * 8);
        if n < HEADER_LEN {
            return Err(FrameError::Truncated {
                have: n,
                need: HEADER_LEN,
            });
        }
        let found = self.next(max_len)?;
        match found {
            Some(found) if self.start == self.end => Ok(found),
            Some(found) => Err(FrameError::Truncated {
                have: n,
                need: frame_len(found.header.len as usize),
            }),
            None => {
                let header: &[u8; HEADER_LEN] = self.bytes()[..HEADER_LEN].try_into().unwrap();
                let len = FrameHeader::decode(header, max_len)?.len as usize;
                Err(FrameError::Truncated {
                    have: n,
                    need: frame_len(len),
                })
            }
        }
    }
}

/// Encode a whole frame (header, payload, padding) at the front of `out`; returns its length.
/// `out` must hold [`frame_len`]`(payload.len())` bytes.
pub fn encode_frame(out: &mut [u8], header: &FrameHeader, payload: &[u8]) -> usize {
    let total = frame_len(payload.len());
    let mut h = [0u8; HEADER_LEN];
    header.encode(&mut h);
    out[..HEADER_LEN].copy_from_slice(&h);
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    out[HEADER_LEN + payload.len()..total].fill(0);
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> TypeFingerprint {
        TypeFingerprint::typed::<u64>("u64")
    }

    #[test]
    fn a_header_round_trips_and_every_field_is_checked() {
        let h = FrameHeader::data(8, type_hash(&fp()), 7, 99);
        let mut b = [0u8; HEADER_LEN];
        h.encode(&mut b);
        assert_eq!(FrameHeader::decode(&b, 64), Ok(h));
        let mut bad = b;
        bad[0] = b'X';
        assert!(matches!(
            FrameHeader::decode(&bad, 64),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bad = b;
        bad[5] = 9;
        assert_eq!(
            FrameHeader::decode(&bad, 64),
            Err(FrameError::UnsupportedVersion { found: 9 })
        );
        let mut bad = b;
        bad[4] = 0;
        assert_eq!(
            FrameHeader::decode(&bad, 64),
            Err(FrameError::UnexpectedKind { found: 0 })
        );
        let mut bad = b;
        bad[13] = 1;
        assert_eq!(FrameHeader::decode(&bad, 64), Err(FrameError::Reserved));
        assert_eq!(
            FrameHeader::decode(&b, 4),
            Err(FrameError::TooLong { len: 8, max: 4 })
        );
    }

    #[test]
    fn a_hello_round_trips_and_a_bad_one_is_refused() {
        let hello = Hello {
            fingerprint: fp(),
            pid: 42,
            identity: 4242,
            policy: Policy::Overwrite,
            max_len: 8,
        };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello.clone()));
        let mut b = hello.encode();
        b[0] = 7;
        assert!(Hello::decode(&b).is_err());
        let mut b = hello.encode();
        b[28..32].copy_from_slice(&0u32.to_le_bytes());
        assert!(Hello::decode(&b).is_err());
        assert!(Hello::decode(&b[..10]).is_err());
    }

    #[test]
    fn a_subscribe_round_trips_and_every_field_is_checked() {
        let req = Subscribe {
            name: "shmbus.md.eurusd",
            token: b"s3cret",
        };
        let bytes = req.encode().unwrap();
        assert_eq!(bytes.len(), 8 + 16 + 6);
        assert_eq!(Subscribe::decode(&bytes), Ok(req));
        let no_token = Subscribe {
            name: "t",
            token: b"",
        };
        assert_eq!(Subscribe::decode(&no_token.encode().unwrap()), Ok(no_token));

        let bad = |bytes: &[u8]| match Subscribe::decode(bytes) {
            Err(FrameError::BadSubscribe(_)) => {}
            other => panic!("{bytes:?} decoded as {other:?}"),
        };
        // Too short for the fixed part, and longer than any request.
        bad(&[]);
        bad(&bytes[..7]);
        bad(&vec![0u8; MAX_SUBSCRIBE_LEN + 1]);
        // Reserved bytes.
        for at in 4..8 {
            let mut b = bytes.clone();
            b[at] = 1;
            bad(&b);
        }
        // A name of 0 bytes, or longer than a name may be (the payload long enough for it).
        let mut b = bytes.clone();
        b[0..2].copy_from_slice(&0u16.to_le_bytes());
        b[2..4].copy_from_slice(&22u16.to_le_bytes());
        bad(&b);
        let mut b = vec![0u8; 8 + MAX_TOPIC_NAME_LEN + 1];
        b[0..2].copy_from_slice(&((MAX_TOPIC_NAME_LEN + 1) as u16).to_le_bytes());
        b[8..].fill(b'a');
        bad(&b);
        // A token longer than a token may be.
        let mut b = vec![b'a'; 8 + 1 + MAX_TOKEN_LEN + 1];
        b[0..2].copy_from_slice(&1u16.to_le_bytes());
        b[2..4].copy_from_slice(&((MAX_TOKEN_LEN + 1) as u16).to_le_bytes());
        b[4..8].fill(0);
        bad(&b);
        // Lengths that claim more or less than the payload holds, or u16::MAX.
        for (n, m) in [
            (17u16, 6u16),
            (16, 5),
            (16, 7),
            (15, 6),
            (u16::MAX, u16::MAX),
        ] {
            let mut b = bytes.clone();
            b[0..2].copy_from_slice(&n.to_le_bytes());
            b[2..4].copy_from_slice(&m.to_le_bytes());
            bad(&b);
        }
        bad(&bytes[..bytes.len() - 1]);
        let mut longer = bytes.clone();
        longer.push(0);
        bad(&longer);
        // A name that is not UTF-8.
        let mut b = bytes.clone();
        b[8] = 0xff;
        bad(&b);
        // What cannot be encoded is not.
        assert!(Subscribe {
            name: "",
            token: b""
        }
        .encode()
        .is_none());
        let long = "a".repeat(MAX_TOPIC_NAME_LEN + 1);
        assert!(Subscribe {
            name: &long,
            token: b""
        }
        .encode()
        .is_none());
        assert!(Subscribe {
            name: "t",
            token: &[0; MAX_TOKEN_LEN + 1]
        }
        .encode()
        .is_none());
    }

    #[test]
    fn hostile_subscribe_bytes_never_panic_and_what_decodes_is_consistent() {
        // Every single-byte change of a valid request, and pseudo-random payloads of every
        // length up to past the limit: an error, or a request whose parts fill the payload.
        let valid = Subscribe {
            name: "shmbus.t",
            token: b"tok",
        }
        .encode()
        .unwrap();
        let check = |bytes: &[u8]| {
            if let Ok(req) = Subscribe::decode(bytes) {
                assert!(!req.name.is_empty() && req.name.len() <= MAX_TOPIC_NAME_LEN);
                assert!(req.token.len() <= MAX_TOKEN_LEN);
                assert_eq!(8 + req.name.len() + req.token.len(), bytes.len());
            }
        };
        for at in 0..valid.len() {
            for v in 0..=255u8 {
                let mut b = valid.clone();
                b[at] = v;
                check(&b);
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for len in 0..MAX_SUBSCRIBE_LEN + 16 {
            let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            check(&b);
            // The same bytes with lengths that add up, so that the later checks are reached.
            if len >= 9 {
                let n = (next() as usize % (len - 8)).clamp(1, MAX_TOPIC_NAME_LEN);
                let m = len - 8 - n;
                b[0..2].copy_from_slice(&(n as u16).to_le_bytes());
                b[2..4].copy_from_slice(&(m as u16).to_le_bytes());
                b[4..8].fill(0);
                check(&b);
            }
        }
    }

    #[test]
    fn a_refusal_round_trips_and_a_bad_one_is_refused() {
        for r in [Refusal::NoSuchTopic, Refusal::Token, Refusal::BadRequest] {
            assert_eq!(Refusal::decode(&r.encode()), Ok(r));
        }
        let bad = |b: &[u8]| assert!(matches!(Refusal::decode(b), Err(FrameError::BadRefusal(_))));
        bad(&[]);
        bad(&[1, 0, 0, 0]);
        bad(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
        bad(&[0; 8]);
        bad(&[4, 0, 0, 0, 0, 0, 0, 0]);
        bad(&[1, 0, 0, 0, 0, 0, 0, 1]);
        bad(&[1, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn the_subscribe_refuse_and_topic_kinds_decode_and_the_next_does_not() {
        for (kind, byte) in [
            (FrameKind::Subscribe, 4u8),
            (FrameKind::Refuse, 5),
            (FrameKind::Topic, 6),
        ] {
            let h = FrameHeader::control(kind, 8, 0);
            let mut b = [0u8; HEADER_LEN];
            h.encode(&mut b);
            assert_eq!(b[4], byte);
            assert_eq!(FrameHeader::decode(&b, 8), Ok(h));
        }
        let mut b = [0u8; HEADER_LEN];
        FrameHeader::control(FrameKind::Refuse, 8, 0).encode(&mut b);
        b[4] = 7;
        assert_eq!(
            FrameHeader::decode(&b, 8),
            Err(FrameError::UnexpectedKind { found: 7 })
        );
    }

    #[test]
    fn the_sequence_is_checked_by_policy() {
        let th = type_hash(&fp());
        let mut block = Expect {
            type_hash: th,
            exact_len: Some(8),
            max_len: 8,
            gaps: false,
            next_seq: None,
        };
        assert_eq!(block.accept(&FrameHeader::data(8, th, 5, 0)), Ok(0));
        assert_eq!(block.accept(&FrameHeader::data(8, th, 6, 0)), Ok(0));
        assert_eq!(
            block.accept(&FrameHeader::data(8, th, 8, 0)),
            Err(FrameError::OutOfSequence {
                expected: 7,
                found: 8
            })
        );
        let mut overwrite = Expect {
            gaps: true,
            ..block
        };
        overwrite.next_seq = Some(7);
        assert_eq!(overwrite.accept(&FrameHeader::data(8, th, 10, 0)), Ok(3));
        assert!(overwrite.accept(&FrameHeader::data(8, th, 10, 0)).is_err());
        assert!(matches!(
            overwrite.accept(&FrameHeader::data(8, th ^ 1, 11, 0)),
            Err(FrameError::WrongType { .. })
        ));
        assert!(matches!(
            overwrite.accept(&FrameHeader::data(4, th, 11, 0)),
            Err(FrameError::WrongLength { .. })
        ));
    }

    #[test]
    fn a_stream_is_reassembled_from_any_chunking() {
        let th = type_hash(&TypeFingerprint::bytes());
        let mut wire = vec![0u8; 0];
        for (i, len) in [0usize, 1, 7, 8, 9, 100].iter().enumerate() {
            let payload: Vec<u8> = (0..*len).map(|b| b as u8 ^ i as u8).collect();
            let mut f = vec![0u8; frame_len(*len)];
            encode_frame(
                &mut f,
                &FrameHeader::data(*len as u32, th, i as u64, 0),
                &payload,
            );
            wire.extend_from_slice(&f);
        }
        for chunk in [1usize, 3, 40, 41, 1000] {
            let mut sb = StreamBuf::new(100, chunk);
            let mut got = vec![];
            let mut fed = 0;
            loop {
                while let Some(found) = sb.next(100).unwrap() {
                    assert_eq!(found.offset % 8, 0);
                    got.push((found.header.seq, sb.payload(&found).to_vec()));
                }
                if fed == wire.len() {
                    break;
                }
                let room = sb.spare();
                let n = room.len().min(chunk).min(wire.len() - fed);
                room[..n].copy_from_slice(&wire[fed..fed + n]);
                sb.filled(n);
                fed += n;
            }
            assert_eq!(got.len(), 6, "chunk {chunk}");
            assert_eq!(got[5].1.len(), 100);
            assert_eq!(sb.partial(), 0);
        }
    }

    #[test]
    fn a_datagram_must_be_exactly_one_frame() {
        let th = type_hash(&TypeFingerprint::bytes());
        let mut f = vec![0u8; frame_len(5)];
        encode_frame(&mut f, &FrameHeader::data(5, th, 0, 0), b"hello");
        let mut sb = StreamBuf::new(64, 0);
        sb.datagram_room()[..f.len()].copy_from_slice(&f);
        let found = sb.datagram(f.len(), 64).unwrap();
        assert_eq!(sb.payload(&found), b"hello");
        sb.datagram_room()[..f.len()].copy_from_slice(&f);
        assert!(matches!(
            sb.datagram(f.len() - 8, 64),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            sb.datagram(10, 64),
            Err(FrameError::Truncated { .. })
        ));
    }
}
