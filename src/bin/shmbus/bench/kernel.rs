//! What a user would use instead of shmbus: a pipe pair and a Unix socket pair between two
//! processes, each driven with plain `write` and `read` of the same 64 bytes and no framing.
//! They are the bare primitives, so they are their own limits; the bench sets them beside the
//! blocking shmbus case, in the same interleaved run.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use hdrhistogram::Histogram;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
use rustix::pipe::{pipe_with, PipeFlags};

use super::{Ctx, RoundTrip};
use crate::error::{bail, Context, Result};
use crate::peer::{take_inherited_fd, Control, InheritedFd, Peer};
use crate::stats::timed_round_trips;

/// The message size of both cases.
pub const PAYLOAD: usize = 64;

/// The parent side: writes a message, reads the echo.
pub struct KernelPingPong {
    name: &'static str,
    to_child: Box<dyn Write + Send>,
    from_child: Box<dyn Read + Send>,
    peer: Peer,
}

impl KernelPingPong {
    /// `pipe-64B`: one pipe each way.
    pub fn start_pipe(ctx: &Ctx) -> Result<KernelPingPong> {
        let name = "pipe-64B";
        let (down_read, down_write) = pipe_with(PipeFlags::CLOEXEC).context("creating a pipe")?;
        let (up_read, up_write) = pipe_with(PipeFlags::CLOEXEC).context("creating a pipe")?;
        let peer = spawn_with(ctx, name, &[&down_read, &up_write])?;
        // The child's ends are closed here, so that the parent sees EOF if the child dies.
        drop((down_read, up_write));
        KernelPingPong::ready(name, File::from(down_write), File::from(up_read), peer)
    }

    /// `unix-socket-64B`: one stream socket pair, used both ways.
    pub fn start_unix(ctx: &Ctx) -> Result<KernelPingPong> {
        let name = "unix-socket-64B";
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .context("creating a socket pair")?;
        let peer = spawn_with(ctx, name, &[&theirs])?;
        drop(theirs);
        let ours = UnixStream::from(ours);
        let reader = ours.try_clone().context("duplicating a socket")?;
        KernelPingPong::ready(name, ours, reader, peer)
    }

    fn ready(
        name: &'static str,
        to_child: impl Write + Send + 'static,
        from_child: impl Read + Send + 'static,
        mut peer: Peer,
    ) -> Result<KernelPingPong> {
        peer.expect("ready")?;
        Ok(KernelPingPong {
            name,
            to_child: Box::new(to_child),
            from_child: Box::new(from_child),
            peer,
        })
    }
}

/// Starts the peer for `case`, passing it `fds` (in order) by number.
fn spawn_with(ctx: &Ctx, case: &str, fds: &[&OwnedFd]) -> Result<Peer> {
    let inherited = fds
        .iter()
        .map(|fd| InheritedFd::new(fd.as_fd()))
        .collect::<Result<Vec<_>>>()?;
    let mut args = Vec::new();
    for fd in &inherited {
        args.push("--fd".to_string());
        args.push(fd.number().to_string());
    }
    ctx.spawn(case, &args)
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

/// The child side of both: echoes each message. `fds` holds the pipe ends (read, write) or
/// the one socket.
pub fn kernel_peer(ctl: &mut Control, case: &str, fds: &[RawFd]) -> Result<()> {
    let (mut input, mut output): (Box<dyn Read>, Box<dyn Write>) = match (case, fds) {
        ("pipe-64B", &[read, write]) => (
            Box::new(File::from(take_inherited_fd(read)?)),
            Box::new(File::from(take_inherited_fd(write)?)),
        ),
        ("unix-socket-64B", &[socket]) => {
            let socket = UnixStream::from(take_inherited_fd(socket)?);
            let writer = socket.try_clone().context("duplicating a socket")?;
            (Box::new(socket), Box::new(writer))
        }
        _ => bail!("{case}: wrong descriptors {fds:?}"),
    };
    ctl.reply("ready")?;
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
