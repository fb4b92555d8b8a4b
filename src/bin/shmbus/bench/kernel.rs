//! The bare kernel primitives, each driven with plain blocking calls on the same 64 bytes and
//! no framing. They are their own limits:
//!
//! - what a user would use instead of shmbus, set beside the blocking shmbus case:
//!   `pipe-64B` (a pipe each way) and `unix-socket-64B` (a stream socket pair);
//! - the limits of the transport rows (`transport.rs`), each the primitive its transport
//!   wraps: `raw-seqpacket-64B` (a Unix seqpacket socket pair), `raw-tcp-64B` (a loopback
//!   connection, `TCP_NODELAY` on both ends; `raw-tcp-2conn-64B` the same over two
//!   connections, one each way, as the two topics of a round trip are), `raw-mqueue-64B` (two POSIX message queues of
//!   the system's depth, `mq_send` and `mq_receive`), `raw-pipe-64B` (as `pipe-64B`, the
//!   FIFO's limit), `raw-file-64B` (a file each way in the run's directory, appended with
//!   `write` and read with `pread`; a file has no blocking read, so the reader sleeps on
//!   inotify's `IN_MODIFY` until the file grows);
//! - `raw-*-stream-64B`: the same primitive one way, the parent writing messages back to back
//!   with one call each, the child reading them (a byte stream in reads of up to 64 KiB, as a
//!   framed subscriber reads one; a datagram or a queue message one at a time).
//!
//! Every read and write blocks: no poll before a read, nothing but the call itself. Each
//! object is private (socket pairs, an accepted connection, queues unlinked before the child
//! starts, files in the run's 0700 directory) and reaches the child as an inherited
//! descriptor. This module must never leave a name on the system, nor hand an object to
//! any process but its own child.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use hdrhistogram::Histogram;
use nix::mqueue::{self as mq, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::Mode;
use rustix::fs::inotify;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::pipe::{pipe_with, PipeFlags};

use super::raw::parse_stream_reply;
use super::{Ctx, RoundTrip, Stream, StreamBlock};
use crate::error::{bail, Context, Error, Result};
use crate::peer::{take_inherited_fd, Control, Peer};
use crate::stats::timed_round_trips;

/// The message size of every case.
pub const PAYLOAD: usize = 64;

/// The largest read of a byte-stream reader: a framed subscriber reads 64 KiB at a time too.
const STREAM_CHUNK: usize = 64 * 1024;

/// The primitive a case drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prim {
    Pipe,
    StreamSocket,
    Seqpacket,
    Tcp,
    /// Two connections: the ping on one, the pong on the other.
    TcpPair,
    Mqueue,
    File,
}

impl Prim {
    /// Whether each read returns one message (a datagram, a queue message), rather than
    /// bytes of a stream.
    fn datagram(self) -> bool {
        matches!(self, Prim::Seqpacket | Prim::Mqueue)
    }
}

/// The primitive of case `name`, and whether it is the one-way stream.
fn prim(name: &str) -> Option<(Prim, bool)> {
    Some(match name {
        "pipe-64B" | "raw-pipe-64B" => (Prim::Pipe, false),
        "raw-pipe-stream-64B" => (Prim::Pipe, true),
        "unix-socket-64B" => (Prim::StreamSocket, false),
        "raw-seqpacket-64B" => (Prim::Seqpacket, false),
        "raw-seqpacket-stream-64B" => (Prim::Seqpacket, true),
        "raw-tcp-64B" => (Prim::Tcp, false),
        "raw-tcp-stream-64B" => (Prim::Tcp, true),
        "raw-tcp-2conn-64B" => (Prim::TcpPair, false),
        "raw-mqueue-64B" => (Prim::Mqueue, false),
        "raw-mqueue-stream-64B" => (Prim::Mqueue, true),
        "raw-file-64B" => (Prim::File, false),
        "raw-file-stream-64B" => (Prim::File, true),
        _ => return None,
    })
}

/// Whether `name` is a case of this module.
pub fn is_kernel_case(name: &str) -> bool {
    prim(name).is_some()
}

/// A writer and a reader of the parent's, and what the child inherits.
struct Ends {
    to_child: Box<dyn Write + Send>,
    /// `None` for a stream: nothing comes back.
    from_child: Option<Box<dyn Read + Send>>,
    /// The child's descriptors, in the order [`kernel_peer`] takes them.
    theirs: Vec<OwnedFd>,
}

/// Makes the objects of case `name` (`stream`: one way only).
fn make_ends(ctx: &Ctx, name: &str, p: Prim, stream: bool) -> Result<Ends> {
    Ok(match p {
        Prim::Pipe => {
            let (down_read, down_write) =
                pipe_with(PipeFlags::CLOEXEC).context("creating a pipe")?;
            let mut theirs = vec![down_read];
            let from_child: Option<Box<dyn Read + Send>> = if stream {
                None
            } else {
                let (up_read, up_write) =
                    pipe_with(PipeFlags::CLOEXEC).context("creating a pipe")?;
                theirs.push(up_write);
                Some(Box::new(File::from(up_read)))
            };
            Ends {
                to_child: Box::new(File::from(down_write)),
                from_child,
                theirs,
            }
        }
        Prim::StreamSocket | Prim::Seqpacket => {
            let kind = if p == Prim::Seqpacket {
                SocketType::SEQPACKET
            } else {
                SocketType::STREAM
            };
            let (ours, theirs) = socketpair(AddressFamily::UNIX, kind, SocketFlags::CLOEXEC, None)
                .context("creating a socket pair")?;
            let ours = UnixStream::from(ours);
            let reader = ours.try_clone().context("duplicating a socket")?;
            Ends {
                to_child: Box::new(ours),
                from_child: (!stream).then(|| Box::new(reader) as Box<dyn Read + Send>),
                theirs: vec![theirs],
            }
        }
        Prim::Tcp => {
            let (ours, theirs) = tcp_pair()?;
            let reader = ours.try_clone().context("duplicating a socket")?;
            Ends {
                to_child: Box::new(ours),
                from_child: (!stream).then(|| Box::new(reader) as Box<dyn Read + Send>),
                theirs: vec![theirs.into()],
            }
        }
        Prim::TcpPair => {
            let (down, down_theirs) = tcp_pair()?;
            let (up, up_theirs) = tcp_pair()?;
            Ends {
                to_child: Box::new(down),
                from_child: Some(Box::new(up)),
                theirs: vec![down_theirs.into(), up_theirs.into()],
            }
        }
        Prim::Mqueue => {
            let ping = Queue::create(&format!("/{}{name}.ping", ctx.prefix))?;
            let mut theirs = vec![ping.dup()?];
            let from_child: Option<Box<dyn Read + Send>> = if stream {
                None
            } else {
                let pong = Queue::create(&format!("/{}{name}.pong", ctx.prefix))?;
                theirs.push(pong.dup()?);
                Some(Box::new(pong))
            };
            Ends {
                to_child: Box::new(ping),
                from_child,
                theirs,
            }
        }
        Prim::File => {
            let Some(dir) = &ctx.dir else {
                bail!("{name}: no run directory");
            };
            let create = |topic: &str| -> Result<File> {
                let path = dir.path().join(format!("{name}.{topic}"));
                std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))
            };
            let ping = create("ping")?;
            let mut theirs = vec![ping.try_clone().context("duplicating a file")?.into()];
            let from_child: Option<Box<dyn Read + Send>> = if stream {
                None
            } else {
                let pong = create("pong")?;
                theirs.push(pong.try_clone().context("duplicating a file")?.into());
                Some(Box::new(FileReader::new(pong)?))
            };
            Ends {
                to_child: Box::new(ping),
                from_child,
                theirs,
            }
        }
    })
}

/// A loopback TCP connection, `TCP_NODELAY` on both ends: this process's end, the other.
fn tcp_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("listening on a loopback port")?;
    let ours = TcpStream::connect(listener.local_addr()?).context("connecting on loopback")?;
    let (theirs, _) = listener.accept().context("accepting on loopback")?;
    ours.set_nodelay(true).context("setting TCP_NODELAY")?;
    theirs.set_nodelay(true).context("setting TCP_NODELAY")?;
    Ok((ours, theirs))
}

/// Starts the peer for `case`, passing it `fds` (in order) by number.
fn spawn_with(ctx: &Ctx, case: &str, fds: &[OwnedFd]) -> Result<Peer> {
    ctx.spawn_inheriting(case, fds, &[])
}

/// The parent side of a round trip: writes a message, reads the echo.
pub struct KernelPingPong {
    name: &'static str,
    to_child: Box<dyn Write + Send>,
    from_child: Box<dyn Read + Send>,
    peer: Peer,
}

impl KernelPingPong {
    /// Makes the objects of `name`, starts the child with its ends, and waits for it.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<KernelPingPong> {
        let Some((p, false)) = prim(name) else {
            bail!("{name} is not a kernel round trip");
        };
        let ends = make_ends(ctx, name, p, false)?;
        let mut peer = spawn_with(ctx, name, &ends.theirs)?;
        // The child's ends are closed here, so that the parent sees the end if the child dies.
        drop(ends.theirs);
        peer.expect("ready")?;
        let Some(from_child) = ends.from_child else {
            bail!("{name}: no way back");
        };
        Ok(KernelPingPong {
            name,
            to_child: ends.to_child,
            from_child,
            peer,
        })
    }
}

impl RoundTrip for KernelPingPong {
    fn block(&mut self, warm: u64, n: u64, hist: &mut Histogram<u64>) -> Result<()> {
        self.peer.run(warm + n)?;
        let mut message = [0u8; PAYLOAD];
        let (to_child, from_child, name) = (&mut self.to_child, &mut self.from_child, self.name);
        timed_round_trips(warm, n, hist, |i| {
            message[..8].copy_from_slice(&i.to_le_bytes());
            to_child
                .write_all(&message)
                .with_context(|| format!("{name}: write"))?;
            from_child
                .read_exact(&mut message)
                .with_context(|| format!("{name}: read"))?;
            if message[..8] != i.to_le_bytes() {
                bail!("{name}: the echo of message {i} is wrong");
            }
            Ok(())
        })?;
        self.peer.expect("done")?;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The parent side of a one-way stream: writes messages `0..n` back to back.
pub struct KernelStream {
    name: &'static str,
    to_child: Box<dyn Write + Send>,
    peer: Peer,
}

impl KernelStream {
    /// Makes the objects of `name`, starts the reader with its end, and waits for it.
    pub fn start(ctx: &Ctx, name: &'static str) -> Result<KernelStream> {
        let Some((p, true)) = prim(name) else {
            bail!("{name} is not a kernel stream");
        };
        let ends = make_ends(ctx, name, p, true)?;
        let mut peer = spawn_with(ctx, name, &ends.theirs)?;
        drop(ends.theirs);
        peer.expect("ready")?;
        Ok(KernelStream {
            name,
            to_child: ends.to_child,
            peer,
        })
    }
}

impl Stream for KernelStream {
    fn block(&mut self, n: u64) -> Result<StreamBlock> {
        self.peer.run(n)?;
        let mut message = [0u8; PAYLOAD];
        for i in 0..n {
            message[..8].copy_from_slice(&i.to_le_bytes());
            self.to_child
                .write_all(&message)
                .with_context(|| format!("{}: write", self.name))?;
        }
        let reply = self.peer.expect("done")?;
        parse_stream_reply(self.name, &reply, n)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.peer.finish()
    }
}

/// The child side of every case: echoes each message (a round trip), or reads them, sums
/// their numbers and times the block from the first to the last (a stream). `fds` holds the
/// child's ends in the order [`make_ends`] made them.
pub fn kernel_peer(ctl: &mut Control, case: &str, fds: &[RawFd]) -> Result<()> {
    let Some((p, stream)) = prim(case) else {
        bail!("unknown case {case:?}");
    };
    let take = |k: usize| -> Result<OwnedFd> {
        let fd = fds
            .get(k)
            .copied()
            .ok_or_else(|| Error::msg(format!("{case}: missing --fd")))?;
        take_inherited_fd(fd)
    };
    let want = if stream || matches!(p, Prim::StreamSocket | Prim::Seqpacket | Prim::Tcp) {
        1
    } else {
        2
    };
    if fds.len() != want {
        bail!("{case}: wrong descriptors {fds:?}");
    }
    let (mut input, output): (Box<dyn Read>, Option<Box<dyn Write>>) = match p {
        Prim::Pipe => (
            Box::new(File::from(take(0)?)),
            if stream {
                None
            } else {
                Some(Box::new(File::from(take(1)?)))
            },
        ),
        Prim::StreamSocket | Prim::Seqpacket => {
            let socket = UnixStream::from(take(0)?);
            let writer = socket.try_clone().context("duplicating a socket")?;
            (Box::new(socket), Some(Box::new(writer)))
        }
        Prim::Tcp => {
            let socket = TcpStream::from(take(0)?);
            let writer = socket.try_clone().context("duplicating a socket")?;
            (Box::new(socket), Some(Box::new(writer)))
        }
        Prim::TcpPair => (
            Box::new(TcpStream::from(take(0)?)),
            Some(Box::new(TcpStream::from(take(1)?))),
        ),
        Prim::Mqueue => (
            Box::new(Queue::inherit(take(0)?)),
            if stream {
                None
            } else {
                Some(Box::new(Queue::inherit(take(1)?)))
            },
        ),
        Prim::File => (
            Box::new(FileReader::new(File::from(take(0)?))?),
            if stream {
                None
            } else {
                Some(Box::new(File::from(take(1)?)))
            },
        ),
    };
    ctl.reply("ready")?;
    match output {
        Some(output) if !stream => echo_loop(ctl, &mut input, output),
        _ => {
            let chunk = if p.datagram() { PAYLOAD } else { STREAM_CHUNK };
            read_loop(ctl, &mut input, chunk)
        }
    }
}

/// A round trip's child: reads each message and writes it back.
fn echo_loop(ctl: &mut Control, input: &mut dyn Read, mut output: Box<dyn Write>) -> Result<()> {
    let mut message = [0u8; PAYLOAD];
    while let Some(n) = ctl.next_run()? {
        for _ in 0..n {
            input.read_exact(&mut message).context("read")?;
            output.write_all(&message).context("write")?;
        }
        ctl.reply("done")?;
    }
    Ok(())
}

/// A stream's child: reads up to `chunk` bytes at a time (one message for a datagram),
/// takes each whole message's number, and keeps a partial one for the next read.
fn read_loop(ctl: &mut Control, input: &mut dyn Read, chunk: usize) -> Result<()> {
    let mut buf = vec![0u8; chunk.max(PAYLOAD)];
    while let Some(n) = ctl.next_run()? {
        if n == 0 {
            ctl.reply("done 1 0")?;
            continue;
        }
        let (mut sum, mut got, mut have) = (0u64, 0u64, 0usize);
        let mut start = None;
        while got < n {
            let k = match input.read(&mut buf[have..]) {
                Ok(0) => bail!("the writer hung up after {got} of {n} messages"),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("read"),
            };
            // The clock starts at the first read, as the ring's reader's starts at its first
            // message.
            start.get_or_insert_with(Instant::now);
            have += k;
            let whole = have / PAYLOAD;
            for m in buf[..whole * PAYLOAD].chunks_exact(PAYLOAD) {
                let mut number = [0u8; 8];
                number.copy_from_slice(&m[..8]);
                sum = sum.wrapping_add(u64::from_le_bytes(number));
            }
            got += whole as u64;
            buf.copy_within(whole * PAYLOAD..have, 0);
            have -= whole * PAYLOAD;
        }
        let elapsed = start.map_or(1, |s| s.elapsed().as_nanos());
        ctl.reply(&format!("done {elapsed} {sum}"))?;
    }
    Ok(())
}

/// A POSIX message queue, read and written one message per call; closed when dropped.
struct Queue(Option<MqdT>);

impl Queue {
    /// Creates queue `name` (this process's alone: `O_EXCL`, mode 0600, of the system's
    /// depth and 64-byte messages) and unlinks its name at once: the descriptors keep it, and
    /// a killed run leaves nothing.
    fn create(name: &str) -> Result<Queue> {
        let depth = std::fs::read_to_string("/proc/sys/fs/mqueue/msg_max")
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|&d| d > 0)
            .unwrap_or(10);
        let attr = MqAttr::new(0, depth as _, PAYLOAD as _, 0);
        let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR | MQ_OFlag::O_CLOEXEC;
        let mqd = mq::mq_open(name, flags, Mode::S_IRUSR | Mode::S_IWUSR, Some(&attr))
            .with_context(|| format!("creating message queue {name}"))?;
        let queue = Queue(Some(mqd));
        mq::mq_unlink(name).with_context(|| format!("unlinking message queue {name}"))?;
        Ok(queue)
    }

    /// Takes a queue descriptor the parent passed.
    fn inherit(fd: OwnedFd) -> Queue {
        // SAFETY: `from_raw_fd` asks for an open descriptor of a message queue. It is open
        // (`take_inherited_fd` checked it) and owned by nothing else (`into_raw_fd` gave up
        // the OwnedFd), so closing it in `drop` closes nothing of anyone else's. Were it not a
        // queue, the mq_* calls would fail with EBADF: on Linux an mqd_t is a plain
        // descriptor, and nothing in memory depends on what it names.
        Queue(Some(unsafe { MqdT::from_raw_fd(fd.into_raw_fd()) }))
    }

    fn mqd(&self) -> io::Result<&MqdT> {
        self.0
            .as_ref()
            .ok_or_else(|| io::Error::other("the queue is closed"))
    }

    /// A copy of the descriptor, for the child.
    fn dup(&self) -> Result<OwnedFd> {
        let fd = self.mqd()?.as_fd();
        rustix::io::fcntl_dupfd_cloexec(fd, 3).context("duplicating a queue descriptor")
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if let Some(mqd) = self.0.take() {
            let _ = mq::mq_close(mqd);
        }
    }
}

impl Write for Queue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        mq::mq_send(self.mqd()?, buf, 0)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Queue {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut priority = 0;
        Ok(mq::mq_receive(self.mqd()?, buf, &mut priority)?)
    }
}

/// The reading end of a file another process appends to: `pread` from where it got to, and
/// while there is nothing more, sleep on inotify until the file is written to.
struct FileReader {
    file: File,
    offset: u64,
    inotify: OwnedFd,
    /// Where inotify's events are read to (and dropped: any event means "look again").
    events: Vec<u8>,
}

impl FileReader {
    fn new(file: File) -> Result<FileReader> {
        let inotify = inotify::init(inotify::CreateFlags::CLOEXEC).context("inotify_init")?;
        // The descriptor's path in /proc names the file itself (the watch follows the link).
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        inotify::add_watch(&inotify, &path, inotify::WatchFlags::MODIFY)
            .context("watching a file with inotify")?;
        Ok(FileReader {
            file,
            offset: 0,
            inotify,
            events: vec![0; 4096],
        })
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // The watch was set before the first read, so a write after this read returned
            // nothing has queued an event: the sleep below cannot miss it.
            let n = rustix::io::pread(&self.file, &mut *buf, self.offset)?;
            if n > 0 {
                self.offset += n as u64;
                return Ok(n);
            }
            match rustix::io::read(&self.inotify, &mut self.events) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}
