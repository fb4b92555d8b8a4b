//! The copying transports' receive path under hostile input: a publisher's bytes, as a stream
//! cut into arbitrary reads or as datagrams, through [`Framed`] (greeting check, reassembly,
//! header and sequence checks), compared with a model that decodes the same bytes whole.
//!
//! What must hold, whatever the bytes and however they are cut:
//! - nothing panics, nothing loops, no read goes past a buffer (ASan watches);
//! - the receiver never asks for a read into an empty buffer (a stream's partial frame always
//!   fits, as `StreamBuf` promises);
//! - it delivers exactly the messages the model finds, in order, with the same sequence
//!   numbers, payloads and loss count, then ends as the model does (a close, the end of the
//!   stream, or a typed `BadFrame` after which the connection stays dropped);
//! - every delivered payload is no longer than the greeting's largest payload, and exactly the
//!   type's size on a typed topic.

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use shmbus::layout::{PayloadKind, Policy, TypeFingerprint};
use shmbus::transport::frame::{
    self, encode_frame, Expect, FrameHeader, FrameKind, Hello, HEADER_LEN, HELLO_LEN,
};
use shmbus::transport::{Endpoint, FrameReceiver, Framed, Got, Source};
use shmbus::{OpenError, RecvError};
use std::io;
use std::time::{Duration, Instant};

/// A publisher's output, shaped so that most inputs pass the greeting and reach the data path.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Datagrams (one frame per read, like seqpacket) or a byte stream.
    datagram: bool,
    /// The subscriber wants `u64` (typed) rather than bytes.
    typed: bool,
    /// The subscriber takes any type.
    any_type: bool,
    /// The greeting, if the publisher sends a well-formed one.
    hello: Option<HelloSpec>,
    /// The frames after it.
    frames: Vec<FrameSpec>,
    /// Raw bytes after the frames (a datagram of their own).
    tail: Vec<u8>,
    /// Bytes flipped in the encoded stream: (position, xor).
    flips: Vec<(u16, u8)>,
    /// Stream read sizes, used in turn (0 reads all that is left).
    cuts: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct HelloSpec {
    /// 0: the subscriber's own type; 1: `u32`; 2: bytes; else `u64` under another name.
    fingerprint: u8,
    policy: u8,
    /// Largest payload (bytes topics; a typed one must say its size).
    max_len: u16,
    /// Send the wrong type hash in the hello's header.
    bad_hash: bool,
}

#[derive(Arbitrary, Debug)]
struct FrameSpec {
    /// 0..=3 data (mostly), 4 close, 5 hello, 6 and up a kind that does not belong (topic,
    /// subscribe...) or none at all.
    kind: u8,
    len: u16,
    /// Added to the expected sequence number (0 most of the time).
    seq_delta: i8,
    bad_hash: bool,
    fill: u8,
}

/// The largest byte payload the generator asks for: big enough to cross read boundaries.
const MAX_BYTES_LEN: u32 = 600;

fn subscriber_fp(typed: bool) -> TypeFingerprint {
    if typed {
        TypeFingerprint::typed::<u64>("u64")
    } else {
        TypeFingerprint::bytes()
    }
}

impl Input {
    /// The publisher's output: one entry per datagram (a stream is their concatenation).
    fn encode(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut hash = 0u64;
        let mut max_len = MAX_BYTES_LEN;
        let mut typed_len = None;
        if let Some(h) = &self.hello {
            let fingerprint = match h.fingerprint {
                0 => subscriber_fp(self.typed),
                1 => TypeFingerprint::typed::<u32>("u32"),
                2 => TypeFingerprint::bytes(),
                _ => TypeFingerprint::typed::<u64>("other::U64"),
            };
            let policy = match h.policy % 3 {
                0 => Policy::Block,
                1 => Policy::Overwrite,
                _ => Policy::Fail,
            };
            if fingerprint.kind == PayloadKind::Typed {
                max_len = fingerprint.size as u32;
                typed_len = Some(max_len);
            } else {
                max_len = (h.max_len as u32 % MAX_BYTES_LEN) + 1;
            }
            let hello = Hello {
                fingerprint,
                pid: 1,
                identity: 1,
                policy,
                max_len,
            };
            hash = frame::type_hash(&fingerprint);
            let header = FrameHeader::control(
                FrameKind::Hello,
                HELLO_LEN as u32,
                hash ^ u64::from(h.bad_hash),
            );
            out.push(framed(&header, &hello.encode()));
        }
        let mut seq = 0u64;
        for f in &self.frames {
            let len = typed_len.unwrap_or(u32::from(f.len) % (max_len + 1));
            let payload = vec![f.fill; len as usize];
            let hash = hash ^ u64::from(f.bad_hash);
            let header = match f.kind {
                0..=3 => {
                    let s = seq.wrapping_add_signed(i64::from(f.seq_delta));
                    seq = s.wrapping_add(1);
                    FrameHeader::data(len, hash, s, 0)
                }
                4 => FrameHeader::control(FrameKind::Close, 0, hash),
                5 => FrameHeader::control(FrameKind::Hello, len, hash),
                _ => {
                    let mut bytes = framed(&FrameHeader::data(len, hash, seq, 0), &payload);
                    bytes[4] = f.kind;
                    out.push(bytes);
                    continue;
                }
            };
            out.push(framed(&header, &payload));
        }
        if !self.tail.is_empty() {
            out.push(self.tail.clone());
        }
        // Flips land at a position of the concatenation.
        let total: usize = out.iter().map(Vec::len).sum();
        for &(at, xor) in &self.flips {
            if total == 0 {
                break;
            }
            let mut at = at as usize % total;
            for d in out.iter_mut() {
                if at < d.len() {
                    d[at] ^= xor;
                    break;
                }
                at -= d.len();
            }
        }
        out
    }
}

fn framed(header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; frame::frame_len(payload.len())];
    encode_frame(&mut out, header, payload);
    out
}

/// A publisher's bytes handed out as the transport's reads would: whole datagrams (cut to the
/// reader's buffer, like `MSG_TRUNC`), or a stream in the input's read sizes.
struct FakeSource {
    datagrams: Vec<Vec<u8>>,
    next: usize,
    stream: Vec<u8>,
    at: usize,
    cuts: Vec<u8>,
    turn: usize,
    datagram: bool,
}

impl Source for FakeSource {
    fn datagram(&self) -> bool {
        self.datagram
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<Got> {
        assert!(!buf.is_empty(), "the receiver read into an empty buffer");
        if self.datagram {
            let Some(d) = self.datagrams.get(self.next) else {
                return Ok(Got::End);
            };
            self.next += 1;
            if d.is_empty() {
                return Ok(Got::End);
            }
            let n = d.len().min(buf.len());
            buf[..n].copy_from_slice(&d[..n]);
            return Ok(Got::Bytes(n));
        }
        let left = self.stream.len() - self.at;
        if left == 0 {
            return Ok(Got::End);
        }
        let cut = match self.cuts.get(self.turn % self.cuts.len().max(1)) {
            Some(&c) if c > 0 => c as usize,
            _ => left,
        };
        self.turn += 1;
        let n = cut.min(left).min(buf.len());
        buf[..n].copy_from_slice(&self.stream[self.at..self.at + n]);
        self.at += n;
        Ok(Got::Bytes(n))
    }

    fn wait(&mut self, _deadline: Option<Instant>) -> io::Result<()> {
        panic!("the fake source always has bytes or an end: no read said Nothing");
    }
}

/// How a receive sequence ends.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// `open` refused the greeting.
    Refused,
    /// `open` refused the type.
    IncompatibleType,
    /// A close frame.
    Closed,
    /// The stream ended without a close.
    Gone,
    /// A bad frame: the connection is dropped.
    Bad,
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    messages: Vec<(u64, Vec<u8>)>,
    lost: u64,
    end: End,
}

/// Decode `out` whole, as the receiver should.
fn model(out: &[Vec<u8>], datagram: bool, expected: &TypeFingerprint, any_type: bool) -> Outcome {
    let mut outcome = Outcome {
        messages: Vec::new(),
        lost: 0,
        end: End::Gone,
    };
    // One frame at a time: a datagram each, or the next frame of the concatenation.
    let stream: Vec<u8> = out.concat();
    let mut at = 0usize;
    let mut next_dg = 0usize;
    // `Ok(None)`: the end; `Err(())`: a bad frame.
    let mut next_frame = |max_len: u32| -> Result<Option<(FrameHeader, Vec<u8>)>, ()> {
        let bytes: &[u8] = if datagram {
            let Some(d) = out.get(next_dg) else {
                return Ok(None);
            };
            next_dg += 1;
            if d.is_empty() {
                return Ok(None);
            }
            // The receiver's buffer holds a largest frame and a header more.
            let room = frame::frame_len(max_len.min(frame::MAX_PAYLOAD) as usize) + HEADER_LEN;
            &d[..d.len().min(room)]
        } else {
            if at == stream.len() {
                return Ok(None);
            }
            &stream[at..]
        };
        if bytes.len() < HEADER_LEN {
            return Err(());
        }
        let header = FrameHeader::decode(bytes[..HEADER_LEN].try_into().unwrap(), max_len)
            .map_err(|_| ())?;
        let total = frame::frame_len(header.len as usize);
        if bytes.len() < total || (datagram && bytes.len() != total) {
            return Err(());
        }
        at += total;
        let payload = bytes[HEADER_LEN..HEADER_LEN + header.len as usize].to_vec();
        Ok(Some((header, payload)))
    };

    // The greeting.
    let (header, payload) = match next_frame(HELLO_LEN as u32) {
        Ok(Some(found)) => found,
        _ => {
            outcome.end = End::Refused;
            return outcome;
        }
    };
    let hello = match Hello::decode(&payload) {
        Ok(hello) if header.kind == FrameKind::Hello => hello,
        _ => {
            outcome.end = End::Refused;
            return outcome;
        }
    };
    if !any_type && hello.fingerprint != *expected {
        outcome.end = End::IncompatibleType;
        return outcome;
    }
    let hash = frame::type_hash(&hello.fingerprint);
    let typed = hello.fingerprint.kind == PayloadKind::Typed;
    if header.type_hash != hash || (typed && hello.fingerprint.size != u64::from(hello.max_len)) {
        outcome.end = End::Refused;
        return outcome;
    }
    let mut expect = Expect {
        type_hash: hash,
        exact_len: typed.then_some(hello.max_len),
        max_len: hello.max_len,
        gaps: hello.policy == Policy::Overwrite,
        next_seq: None,
    };
    loop {
        match next_frame(hello.max_len) {
            Ok(None) => {
                outcome.end = End::Gone;
                return outcome;
            }
            Err(()) => {
                outcome.end = End::Bad;
                return outcome;
            }
            Ok(Some((h, payload))) => match h.kind {
                FrameKind::Data => match expect.accept(&h) {
                    Ok(lost) => {
                        outcome.lost += lost;
                        outcome.messages.push((h.seq, payload));
                    }
                    Err(_) => {
                        outcome.end = End::Bad;
                        return outcome;
                    }
                },
                FrameKind::Close => {
                    outcome.end = End::Closed;
                    return outcome;
                }
                _ => {
                    outcome.end = End::Bad;
                    return outcome;
                }
            },
        }
    }
}

/// Run `input` through a [`Framed`] receiver and through the model; panic where they differ.
pub fn check(input: &Input) {
    let out = input.encode();
    let expected = subscriber_fp(input.typed);
    let endpoint = Endpoint {
        prefix: "fuzz.",
        topic: "t",
        hello: Hello {
            fingerprint: expected,
            pid: 2,
            identity: 2,
            policy: Policy::Block,
            max_len: 8,
        },
        group: false,
        any_type: input.any_type,
        history: 0,
    };
    let source = FakeSource {
        stream: out.concat(),
        datagrams: out.clone(),
        next: 0,
        at: 0,
        cuts: input.cuts.clone(),
        turn: 0,
        datagram: input.datagram,
    };
    let want = model(&out, input.datagram, &expected, input.any_type);
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut rx = match Framed::open(source, &endpoint, deadline) {
        Ok(rx) => rx,
        Err(OpenError::IncompatibleType { .. }) => {
            assert_eq!(want.end, End::IncompatibleType, "open: {want:?}");
            return;
        }
        Err(OpenError::Refused { .. }) => {
            assert_eq!(want.end, End::Refused, "open: {want:?}");
            return;
        }
        Err(e) => panic!("open failed with {e:?}; the model: {want:?}"),
    };
    let max_len = rx.hello().max_len;
    let exact = (rx.hello().fingerprint.kind == PayloadKind::Typed)
        .then(|| rx.hello().fingerprint.size as usize);
    let mut got = Outcome {
        messages: Vec::new(),
        lost: 0,
        end: End::Gone,
    };
    // Every message, then the end; a bounded number of calls (each delivers or ends).
    for _ in 0..=want.messages.len() + 1 {
        match rx.recv(None) {
            Ok(Some(r)) => {
                let payload = rx.payload(&r);
                assert_eq!(payload.len(), r.len as usize);
                assert!(r.len <= max_len, "a payload past the largest");
                if let Some(size) = exact {
                    assert_eq!(payload.len(), size, "a typed payload of another size");
                }
                got.messages.push((r.seq, payload.to_vec()));
            }
            Ok(None) => panic!("recv(None) returned nothing"),
            Err(e) => {
                got.end = match e {
                    RecvError::Disconnected => End::Closed,
                    RecvError::PublisherGone { .. } => End::Gone,
                    RecvError::BadFrame(_) => End::Bad,
                    other => panic!("recv failed with {other:?}"),
                };
                // Ended for good: the next call says the same kind of end (a dropped
                // connection reads as closed).
                let again = rx.recv(None).err();
                match got.end {
                    End::Gone => assert!(matches!(again, Some(RecvError::PublisherGone { .. }))),
                    _ => assert_eq!(again, Some(RecvError::Disconnected)),
                }
                break;
            }
        }
    }
    got.lost = rx.lost();
    assert_eq!(got, want);
}
