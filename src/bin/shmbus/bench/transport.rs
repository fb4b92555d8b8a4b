//! The transport rows: each transport the library carries a topic over, measured with the
//! library's own `Publisher`/`Subscriber` calls (`shm.rs`, on a bus over that transport)
//! beside the raw primitive it wraps (`kernel.rs`), in the same run, interleaved.
//!
//! [`ROWS`] is the table of them: each row names its transport's spec (what
//! `shmbus::transport::parse` takes), its case and its limit. A transport gets its rows by
//! adding entries; a row whose spec this build's `parse` does not know is skipped, with a note
//! in the report, so that the rows of a transport still being built appear once it is merged.
//! The pipe transport has no spec (a pipe is a descriptor a parent hands its child): its rows'
//! spec is `pipe`, and the parent makes the pipes and hands the child its ends ([`Pipes`]).
//!
//! Every name a row makes is private to the run: files and sockets under the run's directory
//! (`$TMPDIR/shmbus-bench-<pid>-<stamp>`, mode 0700, removed at the end), message queues named
//! with the run's prefix (removed at the end), TCP ports on loopback only; pipes have no name.
//! A run that was killed leaves its directory and queues: the next run removes those of every
//! run whose process is gone (the directory's name gives the queues' prefix).
//!
//! This module must never remove a directory or a queue that a live run may use, nor one
//! that is not named as a run's own, nor hand a pipe's end to any process but the child of
//! the case it was made for.

use std::cell::{Cell, RefCell};
use std::fs::DirBuilder;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::Pid;
use shmbus::transport::Pipe;
use shmbus::{Bus, CreateError};

use super::Ctx;
use crate::error::{bail, Context, Error, Result};
use crate::peer::{take_inherited_fd, Peer};
use crate::sweep;

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The round trip of a 64-byte message: a ping topic and a pong topic.
    Latency,
    /// One-way throughput of 64-byte messages.
    Stream,
}

/// One transport case beside its limit.
#[derive(Debug)]
pub struct Row {
    /// The transport's name: `--only NAME` selects its rows (`--only transport`, every row).
    pub transport: &'static str,
    /// The spec, as `shmbus::transport::parse` takes it: `{dir}` stands for the run's
    /// directory, `{port}` for a free loopback port, picked by each topic's publisher; or
    /// [`PIPE_SPEC`], pipes the parent hands its child ([`Pipes`]).
    pub spec: &'static str,
    /// What the row measures.
    pub kind: Kind,
    /// The case: the library over this transport.
    pub case: &'static str,
    /// Its limit, measured in the same group: a raw primitive (`kernel.rs`), or for the
    /// memory-mapped file, the same case on shared memory.
    pub limit: &'static str,
    /// What the group shows (the title of its panel in the plot).
    pub title: &'static str,
    /// More series measured in the same group, each reported against the case (as the pipe
    /// and the socket are against the blocking shm case): what explains the gap to the limit.
    pub also: &'static [&'static str],
}

/// The spec of the rows over the pipe transport, which `parse` does not know: no name reaches
/// a pipe, the parent makes it and hands the child its end ([`Pipes`]).
pub const PIPE_SPEC: &str = "pipe";

/// The transport rows (a row whose spec `parse` does not know is skipped with a note: a build
/// without the transport). The pipe transport's rows
/// are named `pipe-transport-*`: `pipe-64B` is the futex group's bare pipe, what a user would
/// use instead of shmbus, and `--only pipe` still selects every case named so.
pub const ROWS: &[Row] = &[
    Row {
        transport: "unix",
        spec: "unix:{dir}",
        kind: Kind::Latency,
        case: "unix-64B",
        limit: "raw-seqpacket-64B",
        title: "unix: 64-byte round trip, blocking receive, beside a bare seqpacket socket pair",
        also: &[],
    },
    Row {
        transport: "unix",
        spec: "unix:{dir}",
        kind: Kind::Stream,
        case: "unix-stream-64B",
        limit: "raw-seqpacket-stream-64B",
        title: "unix: one-way stream beside a bare seqpacket socket pair",
        also: &[],
    },
    Row {
        transport: "tcp",
        spec: "tcp:127.0.0.1:{port}",
        kind: Kind::Latency,
        case: "tcp-64B",
        limit: "raw-tcp-64B",
        title: "tcp: 64-byte round trip on loopback, beside a bare TCP_NODELAY connection",
        // Two topics are two connections, each carrying data one way: every message is
        // acknowledged by a segment of its own, where one connection used both ways carries
        // the acknowledgement on the answer.
        also: &["raw-tcp-2conn-64B"],
    },
    Row {
        transport: "tcp",
        spec: "tcp:127.0.0.1:{port}",
        kind: Kind::Stream,
        case: "tcp-stream-64B",
        limit: "raw-tcp-stream-64B",
        title: "tcp: one-way stream on loopback beside a bare TCP_NODELAY connection",
        also: &[],
    },
    Row {
        transport: "mqueue",
        spec: "mqueue",
        kind: Kind::Latency,
        case: "mqueue-64B",
        limit: "raw-mqueue-64B",
        title: "mqueue: 64-byte round trip beside bare mq_send/mq_receive on two queues",
        also: &[],
    },
    Row {
        transport: "mqueue",
        spec: "mqueue",
        kind: Kind::Stream,
        case: "mqueue-stream-64B",
        limit: "raw-mqueue-stream-64B",
        title: "mqueue: one-way stream beside bare mq_send/mq_receive",
        also: &[],
    },
    Row {
        transport: "mmap",
        spec: "mmap:{dir}",
        kind: Kind::Latency,
        case: "mmap-poll-64B",
        limit: "shm-poll-64B",
        title: "mmap: the ring in a file on disk, polling, beside the same ring in /dev/shm",
        also: &[],
    },
    Row {
        transport: "mmap",
        spec: "mmap:{dir}",
        kind: Kind::Latency,
        case: "mmap-futex-nospin-64B",
        limit: "shm-futex-nospin-64B",
        title: "mmap: the ring in a file on disk, futex wait, beside the same ring in /dev/shm",
        also: &[],
    },
    Row {
        transport: "mmap",
        spec: "mmap:{dir}",
        kind: Kind::Stream,
        case: "mmap-stream-64B",
        limit: "shm-stream-64B",
        title: "mmap: one-way stream beside the same ring in /dev/shm",
        also: &[],
    },
    Row {
        transport: "fifo",
        spec: "fifo:{dir}",
        kind: Kind::Latency,
        case: "fifo-64B",
        limit: "raw-pipe-64B",
        title: "fifo: 64-byte round trip, blocking receive, beside a bare pipe",
        also: &[],
    },
    Row {
        transport: "fifo",
        spec: "fifo:{dir}",
        kind: Kind::Stream,
        case: "fifo-stream-64B",
        limit: "raw-pipe-stream-64B",
        title: "fifo: one-way stream beside a bare pipe",
        also: &[],
    },
    Row {
        transport: "pipe-transport",
        spec: PIPE_SPEC,
        kind: Kind::Latency,
        case: "pipe-transport-64B",
        limit: "raw-pipe-64B",
        title: "pipe: 64-byte round trip over two inherited pipes, beside a bare pipe each way",
        also: &[],
    },
    Row {
        transport: "pipe-transport",
        spec: PIPE_SPEC,
        kind: Kind::Stream,
        case: "pipe-transport-stream-64B",
        limit: "raw-pipe-stream-64B",
        title: "pipe: one-way stream over an inherited pipe, beside a bare pipe",
        also: &[],
    },
    Row {
        transport: "file",
        spec: "file:{dir}",
        kind: Kind::Latency,
        case: "file-64B",
        limit: "raw-file-64B",
        title: "file: 64-byte round trip through a spool, beside a bare write and read of a file",
        also: &[],
    },
    Row {
        transport: "file",
        spec: "file:{dir}",
        kind: Kind::Stream,
        case: "file-stream-64B",
        limit: "raw-file-stream-64B",
        title: "file: one-way stream through a spool, beside a bare write and read of a file",
        also: &[],
    },
];

/// The copying transports' streams carry this fraction of `--messages` (1/10): a message
/// costs them a system call or two on each side, against a few nanoseconds on the ring.
pub const COPYING_STREAM_SHARE: u64 = 10;

/// The row whose case is `case`.
pub fn row(case: &str) -> Option<&'static Row> {
    ROWS.iter().find(|r| r.case == case)
}

impl Row {
    /// Whether the transport copies each message through the kernel (every row but the
    /// memory-mapped file's, which is the zero-copy ring).
    pub fn copying(&self) -> bool {
        !self.spec.starts_with("mmap:")
    }

    /// Whether the row's topics go over pipes the parent makes and hands to its child
    /// ([`Pipes`]) rather than over a transport a spec names.
    pub fn inherited(&self) -> bool {
        self.spec == PIPE_SPEC
    }

    /// Why this build cannot run the row (its spec is not one `parse` knows), if it cannot.
    pub fn unavailable(&self) -> Option<String> {
        if self.inherited() {
            // The pipe transport is in every build.
            return None;
        }
        let probe = expand(self.spec, Path::new("/nonexistent"), Some(1));
        shmbus::transport::parse(&probe).err()
    }

    /// The case and its limit, in the order the group runs them.
    pub fn group(&self) -> [&'static str; 2] {
        [self.case, self.limit]
    }

    /// The case, its limit and the other series of its latency group.
    pub fn latency_series(&self) -> Vec<&'static str> {
        let mut series = self.group().to_vec();
        series.extend_from_slice(self.also);
        series
    }
}

/// Whether `--only TEXT` names transport rows by transport rather than by case: `transport`
/// (every row) or a row's transport name (`unix`, `tcp`, ...).
pub fn is_transport_word(text: &str) -> bool {
    text == "transport" || ROWS.iter().any(|r| r.transport == text)
}

/// `template` with `{dir}` replaced by `dir` and `{port}` by `port`.
fn expand(template: &str, dir: &Path, port: Option<u16>) -> String {
    let mut spec = template.replace("{dir}", &dir.display().to_string());
    if let Some(port) = port {
        spec = spec.replace("{port}", &port.to_string());
    }
    spec
}

/// A bus over the transport `spec` names, with the run's prefix.
pub fn bus(spec: &str, prefix: &str) -> Result<Bus> {
    let transport = shmbus::transport::parse(spec).map_err(Error::msg)?;
    Bus::builder()
        .prefix(prefix)
        .transport_boxed(transport)
        .build()
        .with_context(|| format!("opening a bus over {spec}"))
}

/// How many ports a publisher tries when the one it picked is taken before it binds it.
const PORT_TRIES: u32 = 20;

/// Where a case's topics are, as either side sees them: the run's shared-memory bus, the
/// transport of the case's row, in the run's directory, or the pipes of a pipe row.
pub struct Place<'a> {
    /// The run's bus in /dev/shm, for the cases that are not a row's (and the shm limits).
    pub shm: &'a Bus,
    /// The row whose transport carries the case's topics, if any.
    pub row: Option<&'static Row>,
    /// The run's directory (a row's files and sockets).
    pub dir: Option<&'a Path>,
    /// The run's prefix.
    pub prefix: &'a str,
    /// This side's pipe ends, for a row over pipes ([`Row::inherited`]).
    pub pipes: Option<Pipes>,
}

/// The pipes of a pipe row, as one side holds them. A round trip has two: the parent's ping
/// goes down one, the child's pong comes up the other; a stream has one, down. Each end is
/// taken once, by the side's publisher (its write end) or its subscriber (its read end), as a
/// [`Pipe`] that checks it. Not `Sync` (its ends are in cells): a side's place is used by the
/// one thread that starts the case.
pub struct Pipes {
    /// This side's write end, for its publisher, until taken.
    write: Cell<Option<OwnedFd>>,
    /// This side's read end, for its subscriber, until taken.
    read: Cell<Option<OwnedFd>>,
    /// In the parent until the child is started ([`Place::spawn`]): the child's ends, in the
    /// order its `--fd`s name them, its read end first.
    theirs: RefCell<Vec<OwnedFd>>,
}

impl Pipes {
    /// The parent's: makes the pipes of `row`, close-on-exec (the child gets inheritable
    /// copies of its ends from [`Place::spawn`], and no other child gets any).
    fn make(row: &Row) -> Result<Pipes> {
        let (down_read, down_write) = pipe_with(PipeFlags::CLOEXEC).context("creating a pipe")?;
        let mut theirs = vec![down_read];
        let mut read = None;
        if row.kind == Kind::Latency {
            let (up_read, up_write) = pipe_with(PipeFlags::CLOEXEC).context("creating a pipe")?;
            theirs.push(up_write);
            read = Some(up_read);
        }
        Ok(Pipes {
            write: Cell::new(Some(down_write)),
            read: Cell::new(read),
            theirs: RefCell::new(theirs),
        })
    }

    /// The child's: the ends its parent handed it for `row`, by the numbers of its `--fd`s
    /// (its read end, then for a round trip its write end).
    pub fn inherited(row: &Row, fds: &[RawFd]) -> Result<Pipes> {
        let want = if row.kind == Kind::Latency { 2 } else { 1 };
        if fds.len() != want {
            bail!("{}: wrong descriptors {fds:?}", row.case);
        }
        let read = take_inherited_fd(fds[0])?;
        let write = fds.get(1).map(|&fd| take_inherited_fd(fd)).transpose()?;
        Ok(Pipes {
            write: Cell::new(write),
            read: Cell::new(Some(read)),
            theirs: RefCell::default(),
        })
    }

    /// A bus over this side's write end (`write`) or read end, which it takes.
    fn bus(&self, write: bool, prefix: &str) -> Result<Bus> {
        let (end, which) = if write {
            (&self.write, "write")
        } else {
            (&self.read, "read")
        };
        let Some(fd) = end.take() else {
            bail!("this side has no {which} end of a pipe (or it was taken)");
        };
        let pipe =
            Pipe::from_fd(fd).with_context(|| format!("taking the {which} end of a pipe"))?;
        Bus::builder()
            .prefix(prefix)
            .transport(pipe)
            .build()
            .context("opening a bus over a pipe")
    }
}

impl Place<'_> {
    /// Creates a publisher with `make`, on the row's transport (or the shm bus). Returns it
    /// and the spec of the transport it is on, which the other side needs to subscribe ("" for
    /// the shm bus). For a `{port}` spec, picks a free loopback port, and another while the
    /// one picked is taken by someone else before it is bound.
    /// For a pipe row, the publisher is on this side's write end, and the spec is
    /// [`PIPE_SPEC`].
    pub fn publish<P>(&self, make: impl Fn(&Bus) -> Result<P, CreateError>) -> Result<(P, String)> {
        let Some(row) = self.row else {
            return Ok((make(self.shm).map_err(Error::msg)?, String::new()));
        };
        if let Some(pipes) = &self.pipes {
            let bus = pipes.bus(true, self.prefix)?;
            return Ok((make(&bus).map_err(Error::msg)?, PIPE_SPEC.to_string()));
        }
        let dir = self.dir.ok_or_else(|| Error::msg("no run directory"))?;
        if !row.spec.contains("{port}") {
            let spec = expand(row.spec, dir, None);
            return Ok((make(&bus(&spec, self.prefix)?).map_err(Error::msg)?, spec));
        }
        let mut last = None;
        for attempt in 0..PORT_TRIES {
            let spec = expand(row.spec, dir, Some(free_port(attempt)?));
            match make(&bus(&spec, self.prefix)?) {
                Ok(p) => return Ok((p, spec)),
                Err(e @ CreateError::Listen { .. }) => last = Some(e),
                Err(e) => return Err(Error::msg(e)),
            }
        }
        Err(last.map_or_else(|| Error::msg("no free port"), Error::msg))
    }

    /// The bus to subscribe on, given the spec the publisher's side said ("" for shm): for a
    /// pipe row, over this side's read end.
    pub fn subscriber_bus(&self, spec: &str) -> Result<Bus> {
        match (self.row, &self.pipes) {
            (None, _) => Bus::builder()
                .prefix(self.prefix)
                .build()
                .context("opening the bus"),
            (Some(_), Some(pipes)) if spec == PIPE_SPEC => pipes.bus(false, self.prefix),
            (Some(_), Some(_)) => bail!("the publisher named {spec:?}, not the pipe"),
            (Some(_), None) if spec.is_empty() => bail!("the publisher named no transport"),
            (Some(_), None) => bus(spec, self.prefix),
        }
    }

    /// Starts the case's child, `__bench-peer <case>`, telling it the transport of this
    /// side's topic (`spec`, as [`Place::publish`] returned it), and for a pipe row handing
    /// it its ends, which this side closes once the child has them: it then sees the end of
    /// each pipe when the child goes.
    pub fn spawn(&self, ctx: &Ctx, case: &str, spec: &str) -> Result<Peer> {
        let args = if spec.is_empty() {
            Vec::new()
        } else {
            vec!["--spec".to_string(), spec.to_string()]
        };
        let theirs = self
            .pipes
            .as_ref()
            .map(|p| p.theirs.take())
            .unwrap_or_default();
        ctx.spawn_inheriting(case, &theirs, &args)
    }
}

/// A loopback port nobody listens on now, below the ephemeral range (where the kernel picks
/// the ports of outgoing connections, which could take it meanwhile); `attempt` moves the pick.
fn free_port(attempt: u32) -> Result<u16> {
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .clamp(12_000, 65_535);
    let (low, span) = (ephemeral_low - 10_000, 10_000u32);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id()
        .wrapping_mul(97)
        .wrapping_add(nanos)
        .wrapping_add(attempt.wrapping_mul(7_919));
    for k in 0..span {
        let port = (low + seed.wrapping_add(k) % span) as u16;
        // A socket that binds and never listens: a probe that listened could take a
        // connection, and a child spawned meanwhile would keep it until its exec.
        let probe = rustix::net::socket_with(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(std::io::Error::from)
        .context("a TCP socket to probe a port with")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        if rustix::net::bind(&probe, &addr).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{}", low + span)
}

/// The run's directory: private, removed with what the rows left in it (and the message
/// queues named with the run's prefix) when dropped.
pub struct RunDir {
    path: PathBuf,
    prefix: String,
}

/// Where run directories live: the temporary directory.
fn runs_dir() -> PathBuf {
    std::env::temp_dir()
}

impl RunDir {
    /// Creates `$TMPDIR/<prefix less its final dot>`, mode 0700 whatever the umask.
    pub fn create(prefix: &str) -> Result<RunDir> {
        let path = runs_dir().join(prefix.trim_end_matches('.'));
        DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let dir = RunDir {
            path,
            prefix: prefix.to_string(),
        };
        // The umask may have taken bits off: set them as meant.
        rustix::fs::chmod(&dir.path, rustix::fs::Mode::from_raw_mode(0o700))
            .with_context(|| format!("setting the mode of {}", dir.path.display()))?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        remove_run(&self.path, &self.prefix);
    }
}

/// The topics of every case over a message queue, whose queues a run may leave.
fn queue_topics() -> impl Iterator<Item = String> {
    ROWS.iter()
        .filter(|r| r.spec == "mqueue")
        .flat_map(|r| ["ping", "pong", "stream"].map(|t| format!("{}.{t}", r.case)))
}

/// Removes a run's queues (those whose publisher is gone: `MessageQueue::remove_stale`
/// keeps a live one) and its directory.
fn remove_run(path: &Path, prefix: &str) {
    for topic in queue_topics() {
        let _ = shmbus::transport::MessageQueue::remove_stale(prefix, &topic);
    }
    let _ = std::fs::remove_dir_all(path);
}

/// Removes the directories (and queues) of earlier runs that were killed: names
/// `<head><pid>-<stamp>` in the temporary directory, this user's, whose process is gone.
pub fn remove_stale_runs(head: &str) {
    let Ok(entries) = std::fs::read_dir(runs_dir()) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((pid, stamp)) = name.strip_prefix(head).and_then(|r| r.split_once('-')) else {
            continue;
        };
        let Some(pid) = pid.parse::<i32>().ok().and_then(Pid::from_raw) else {
            continue;
        };
        if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Only a directory of this user's (never followed if it is a link).
        let Ok(meta) = rustix::fs::lstat(entry.path()) else {
            continue;
        };
        let is_dir =
            rustix::fs::FileType::from_raw_mode(meta.st_mode) == rustix::fs::FileType::Directory;
        if !is_dir || meta.st_uid != me || !sweep::is_gone(pid) {
            continue;
        }
        remove_run(&entry.path(), &format!("{name}."));
    }
}

impl Ctx {
    /// Where the topics of `case` are, on the parent's side (for a pipe row, its pipes are
    /// made here).
    pub fn place(&self, case: &str) -> Result<Place<'_>> {
        let row = row(case);
        let pipes = match row {
            Some(r) if r.inherited() => Some(Pipes::make(r)?),
            _ => None,
        };
        Ok(Place {
            shm: &self.bus,
            row,
            dir: self.dir.as_ref().map(RunDir::path),
            prefix: &self.prefix,
            pipes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_whole_and_unique() {
        for (k, r) in ROWS.iter().enumerate() {
            assert!(is_transport_word(r.transport));
            assert!(r.case.starts_with(r.transport), "{}", r.case);
            assert!(
                ROWS[..k].iter().all(|o| o.case != r.case),
                "{} twice",
                r.case
            );
            assert_eq!(row(r.case).map(|o| o.limit), Some(r.limit));
        }
        assert!(!is_transport_word("shm-poll"));
        // The pipe transport's rows, not the futex group's bare pipe-64B.
        assert!(is_transport_word("pipe-transport"));
        assert!(!is_transport_word("pipe"));
        assert!(row("pipe-64B").is_none());
    }

    #[test]
    fn specs_expand() {
        let dir = Path::new("/run/x");
        assert_eq!(expand("unix:{dir}", dir, None), "unix:/run/x");
        assert_eq!(
            expand("tcp:127.0.0.1:{port}", dir, Some(9000)),
            "tcp:127.0.0.1:9000"
        );
        assert!(row("unix-64B").unwrap().unavailable().is_none());
        assert!(row("mmap-poll-64B").is_some_and(|r| !r.copying()));
        let pipe = row("pipe-transport-64B").unwrap();
        assert!(pipe.inherited() && pipe.copying() && pipe.unavailable().is_none());
        assert!(!row("unix-64B").unwrap().inherited());
    }
}
