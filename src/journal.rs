//! Record and replay: a [`Recorder`] subscribes to a topic on any bus (any transport, any
//! type, read as bytes) and appends each message to a journal file; a [`Replayer`] reads a
//! journal and publishes its messages into a topic on any bus, as fast as its subscribers take
//! them or at the pace they were recorded at.
//!
//! A journal is a spool of the file transport ([`crate::transport::File`]), written and read
//! by the same code: a hello that carries the recorded topic's type fingerprint, its policy
//! and its largest message, then one data frame per message with the message's sequence
//! number (as its publisher numbered it) and its send time (ns since the Unix epoch: the
//! publisher's stamp where the transport carries one, the copying transports; else the time
//! the recorder received it, the ring transports), then a close when the recorder finishes.
//! So `shmbus echo` and a file-transport subscriber read a journal too, and a recorder that
//! is killed leaves a journal whose whole frames replay (a torn last frame is left out).
//!
//! The replayed topic has the recorded type's fingerprint
//! ([`PublisherBuilder::as_type`]): a subscriber of that type opens it, one of another type is
//! refused as usual. Its messages are numbered from 0 again (by the replaying publisher).
//!
//! This module must never write a journal anywhere but through the spool writer (append
//! only, one publisher at a time), nor trust a byte of a journal it reads (the spool reader
//! checks every frame).

use crate::error::{CreateError, LoanError, OpenError, RecvError};
use crate::layout::{Policy, TypeFingerprint};
use crate::transport::file::{ReadOptions, SpoolReader, SpoolWriter, StartAt};
use crate::transport::frame::{self, FrameHeader, Hello, MAX_PAYLOAD};
use crate::transport::FrameReceiver;
use crate::{Bus, Publisher, PublisherBuilder, Subscriber};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why recording failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The topic could not be subscribed to ([`Recorder::start`]).
    #[error("subscribing to {topic:?}: {source}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// The topic's messages cannot be journaled: a payload kind this build does not know, or
    /// messages larger than a frame carries (16 MiB).
    #[error("topic {topic:?} cannot be recorded: {reason}")]
    Unsupported {
        /// The topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The journal could not be created ([`Recorder::start`]): it exists and its recorder is
    /// alive ([`CreateError::AlreadyExists`]), it holds another type
    /// ([`CreateError::Existing`]), or a system error.
    #[error("creating the journal {}: {source}", path.display())]
    Journal {
        /// The journal's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: CreateError,
    },
    /// Receiving from the topic failed ([`Recorder::record`]): `Disconnected` and
    /// `PublisherGone` end a recording; the others are the topic's errors.
    #[error("receiving from {topic:?}: {source}")]
    Recv {
        /// The topic.
        topic: String,
        /// Why.
        #[source]
        source: RecvError,
    },
    /// Appending to the journal failed (no space left, a file too large): the message is
    /// kept and written before the next one.
    #[error("writing the journal {}: {source}", path.display())]
    Write {
        /// The journal's path.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Why replaying failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// No journal at that path.
    #[error("no journal {}", path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The journal could not be opened ([`Replayer::open`]): not found, not a spool, not
    /// this user's, ...
    #[error("opening the journal {}: {source}", path.display())]
    Open {
        /// The journal's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// The replayed topic could not be created ([`Replayer::publisher`]'s builder).
    #[error("creating the replayed topic: {0}")]
    Create(#[source] CreateError),
    /// A frame of the journal is not valid ([`RecvError::BadFrame`]), or reading it failed.
    #[error("reading the journal {}: {source}", path.display())]
    Read {
        /// The journal's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: RecvError,
    },
    /// Publishing a message failed ([`Replayer::replay`]).
    #[error("publishing: {0}")]
    Send(#[source] LoanError),
}

/// How fast a [`Replayer`] publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Pace {
    /// As fast as the replayed topic's subscribers take the messages (under its policy).
    Fast,
    /// At the recorded pace: each message when as long has passed since the first one as
    /// passed between their send times.
    #[default]
    Recorded,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A message a [`Recorder`] appended to its journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Its sequence number, as its publisher numbered it.
    pub seq: u64,
    /// Its length in bytes.
    pub len: usize,
    /// Its send time, ns since the Unix epoch (the receive time on a ring transport).
    pub stamp: u64,
}

/// Records a topic into a journal: a subscriber of any type on any bus, and the journal's
/// writer. A subscriber like any other: under [`Policy::Block`] the topic's publisher waits
/// for it, so record in a loop. `Send`, not `Sync` (one thread records).
///
/// ```no_run
/// use shmbus::journal::Recorder;
/// use std::time::Duration;
/// let bus = shmbus::Bus::open_default()?;
/// let mut recorder = Recorder::start(&bus, "md.eurusd", "eurusd.journal", Duration::from_secs(5))?;
/// while let Some(_) = recorder.record(Duration::from_secs(1))? {}
/// recorder.finish()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Recorder {
    subscriber: Subscriber<[u8]>,
    topic: String,
    writer: SpoolWriter,
    path: PathBuf,
    /// Where each frame is encoded: header, payload, padding.
    frame: Vec<u8>,
    type_hash: u64,
    recorded: u64,
    finished: bool,
}

impl Recorder {
    /// Subscribe to `topic` on `bus` (waiting up to `timeout` for it to exist), reading any
    /// type as bytes, and create the journal at `path` (or go on with one that a dead
    /// recorder of the same type left). What is published from now on is recorded, as
    /// [`Recorder::record`] is called.
    ///
    /// # Errors
    /// [`RecordError::Subscribe`], [`RecordError::Unsupported`], [`RecordError::Journal`].
    pub fn start(
        bus: &Bus,
        topic: &str,
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, RecordError> {
        let path = path.as_ref().to_path_buf();
        let subscriber = bus
            .subscriber::<[u8]>(topic)
            .any_type()
            .open_timeout(timeout)
            .map_err(|source| RecordError::Subscribe {
                topic: topic.into(),
                source,
            })?;
        let unsupported = |reason: &str| RecordError::Unsupported {
            topic: topic.into(),
            reason: reason.into(),
        };
        let fingerprint = subscriber
            .fingerprint()
            .ok_or_else(|| unsupported("its payload kind is unknown to this build"))?;
        let max_len = u32::try_from(subscriber.slot_size())
            .ok()
            .filter(|&n| n > 0 && n <= MAX_PAYLOAD)
            .ok_or_else(|| unsupported("its messages may be larger than a journal's 16 MiB"))?;
        let hello = Hello {
            fingerprint,
            pid: std::process::id(),
            identity: crate::segment::my_identity(),
            policy: subscriber.policy(),
            max_len,
        };
        let writer = SpoolWriter::create(&path, &path.display().to_string(), &hello, false)
            .map_err(|source| RecordError::Journal {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            subscriber,
            topic: topic.into(),
            writer,
            frame: vec![0u8; frame::frame_len(max_len as usize)],
            type_hash: frame::type_hash(&fingerprint),
            path,
            recorded: 0,
            finished: false,
        })
    }

    /// The recorded topic's type.
    pub fn fingerprint(&self) -> TypeFingerprint {
        self.subscriber
            .fingerprint()
            .expect("checked when the recorder started")
    }

    /// Messages recorded so far.
    pub fn recorded(&self) -> u64 {
        self.recorded
    }

    /// Receive the next message, waiting up to `timeout`, and append it to the journal.
    /// `Ok(None)`: nothing arrived in time.
    ///
    /// # Errors
    /// [`RecordError::Recv`] (`Disconnected` or `PublisherGone`: the topic's publisher has
    /// left; what it sent is recorded), [`RecordError::Write`].
    pub fn record(&mut self, timeout: Duration) -> Result<Option<Recorded>, RecordError> {
        let sample = match self.subscriber.recv_timeout(timeout) {
            Ok(Some(sample)) => sample,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(RecordError::Recv {
                    topic: self.topic.clone(),
                    source,
                })
            }
        };
        let recorded = Recorded {
            seq: sample.seq(),
            len: sample.len(),
            stamp: sample.sent_at_ns().unwrap_or_else(now_ns),
        };
        let header = FrameHeader::data(
            recorded.len as u32,
            self.type_hash,
            recorded.seq,
            recorded.stamp,
        );
        // The subscriber checked the length against the topic's slot size, which the frame
        // buffer holds.
        let n = frame::encode_frame(&mut self.frame, &header, &sample[..]);
        drop(sample);
        self.writer
            .append(&self.frame[..n])
            .map_err(|source| RecordError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.recorded += 1;
        Ok(Some(recorded))
    }

    /// End the journal with a close frame: its readers (a replayer) know it is complete.
    /// Returns the messages recorded. Dropping a recorder does the same, ignoring errors.
    ///
    /// # Errors
    /// [`RecordError::Write`].
    pub fn finish(mut self) -> Result<u64, RecordError> {
        self.finished = true;
        self.writer.finish().map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.recorded)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.writer.finish();
        }
    }
}

/// What [`Replayer::replay`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Messages published.
    pub messages: u64,
    /// Whether the journal ended with its recorder's close (`false`: the recorder died,
    /// and what it wrote whole was replayed).
    pub complete: bool,
    /// The recorded span: the last message's send time less the first's, in ns.
    pub span_ns: u64,
}

/// Replays a journal into a topic. `Send`, not `Sync`.
///
/// ```no_run
/// use shmbus::journal::{Pace, Replayer};
/// use std::time::Duration;
/// let bus = shmbus::Bus::open_default()?;
/// let mut replayer = Replayer::open("eurusd.journal", Duration::from_secs(1))?;
/// let mut publisher = replayer
///     .publisher(&bus, "md.eurusd.replay")
///     .create()
///     .map_err(shmbus::journal::ReplayError::Create)?;
/// publisher.wait_for_subscribers(1, Duration::from_secs(10));
/// let done = replayer.replay(&mut publisher, Pace::Recorded)?;
/// println!("{} messages", done.messages);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Replayer {
    reader: SpoolReader,
    path: PathBuf,
}

impl Replayer {
    /// Open the journal at `path` and read its hello, waiting up to `timeout` for a journal
    /// that its recorder is still creating.
    ///
    /// # Errors
    /// [`ReplayError::NotFound`], [`ReplayError::Open`].
    pub fn open(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ReplayError> {
        let path = path.as_ref().to_path_buf();
        let name = path.display().to_string();
        let reader = SpoolReader::open(
            &path,
            &ReadOptions {
                topic: &name,
                expected: None,
                group: true,
                start: StartAt::Start,
                check_sequence: false,
            },
            Instant::now() + timeout,
        )
        .map_err(|source| match source {
            OpenError::NotFound { .. } => ReplayError::NotFound { path: path.clone() },
            source => ReplayError::Open {
                path: path.clone(),
                source,
            },
        })?;
        Ok(Self { reader, path })
    }

    /// The recorded topic's type.
    pub fn fingerprint(&self) -> TypeFingerprint {
        self.reader.hello().fingerprint
    }

    /// The recorded topic's largest message.
    pub fn slot_size(&self) -> usize {
        self.reader.hello().max_len as usize
    }

    /// The recorded topic's policy.
    pub fn policy(&self) -> Policy {
        self.reader.hello().policy
    }

    /// A builder for the replayed topic `topic` on `bus`: the recorded type (subscribers of
    /// that type open it) and largest message, policy Block (nothing is lost; change it on
    /// the builder), and the builder's other defaults.
    pub fn publisher<'b>(&self, bus: &'b Bus, topic: &str) -> PublisherBuilder<'b, [u8]> {
        bus.publisher::<[u8]>(topic)
            .as_type(self.fingerprint())
            .slot_size(self.slot_size() as u64)
            .policy(Policy::Block)
    }

    /// Publish every message of the journal on `publisher` (made from
    /// [`Replayer::publisher`]'s builder), in order, at `pace`, until the journal ends (its
    /// close, or the last whole frame of a recorder that died). A journal still being
    /// recorded is followed as it grows.
    ///
    /// # Errors
    /// [`ReplayError::Read`] for a journal that is not valid (what came before was
    /// published), [`ReplayError::Send`].
    pub fn replay(
        &mut self,
        publisher: &mut Publisher<[u8]>,
        pace: Pace,
    ) -> Result<Replayed, ReplayError> {
        let mut first: Option<(u64, Instant)> = None;
        let mut last_stamp = 0;
        let mut messages = 0;
        let complete = loop {
            let received = match self.reader.recv(None) {
                Ok(Some(received)) => received,
                Ok(None) => continue,
                Err(end @ (RecvError::Disconnected | RecvError::PublisherGone { .. })) => {
                    // The end, unless a new session of the recorder follows at once.
                    match self.reader.recv(Some(Instant::now())) {
                        Ok(Some(received)) => received,
                        _ => break end == RecvError::Disconnected,
                    }
                }
                Err(source) => {
                    return Err(ReplayError::Read {
                        path: self.path.clone(),
                        source,
                    })
                }
            };
            let stamp = received.stamp;
            let (t0, start) = *first.get_or_insert((stamp, Instant::now()));
            if pace == Pace::Recorded {
                let due = start + Duration::from_nanos(stamp.saturating_sub(t0));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            last_stamp = last_stamp.max(stamp);
            let payload = self.reader.payload(&received);
            let mut loan = publisher
                .loan_bytes(payload.len(), None)
                .map_err(ReplayError::Send)?;
            loan.copy_from_slice(payload);
            loan.send();
            messages += 1;
        };
        Ok(Replayed {
            messages,
            complete,
            span_ns: first.map_or(0, |(t0, _)| last_stamp.saturating_sub(t0)),
        })
    }
}
