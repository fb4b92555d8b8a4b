//! Child processes: this same binary re-executed with a hidden subcommand, and the line
//! protocol the parent drives it with.
//!
//! The parent writes commands on the child's stdin (`run N`, `quit`) and reads one reply line
//! per command on the child's stdout (`ready ...`, `done ...`); the child's stderr is the
//! parent's, so its errors reach the user directly. Commands and replies never travel during
//! a measured loop: the child blocks on its stdin between blocks, so an idle peer costs no CPU.
//!
//! No child outlives the parent or an error in it: a [`Peer`] that is dropped without
//! [`Peer::finish`] is killed and reaped, every child asks the kernel for SIGKILL when the
//! thread that started it dies (`PR_SET_PDEATHSIG`), and the watchdog kills registered
//! children when the run stops moving.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::io::{fcntl_dupfd_cloexec, fcntl_setfd, FdFlags};
use rustix::process::{set_parent_process_death_signal, Pid, Signal};

use crate::error::{bail, Context, Error, Result};
use crate::watchdog;

/// How long a child that closed its stdout gets to exit before it is reported as hung.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// A running child process and the pipes to drive it.
pub struct Peer {
    /// Names the child in messages ("the raw-futex peer").
    label: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    watchdog: Option<watchdog::Handle>,
    /// Set once the child has been reaped.
    reaped: bool,
}

impl Peer {
    /// Starts this binary with `args` (the hidden subcommand first), registering the child
    /// with `watchdog`. Descriptors the child must inherit are passed as [`InheritedFd`]s,
    /// created before this call and dropped after it.
    pub fn spawn(
        label: &str,
        args: &[String],
        watchdog: Option<&watchdog::Handle>,
    ) -> Result<Peer> {
        let exe = std::env::current_exe().context("finding the path of this program")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            // Unreachable with Stdio::piped, but never leave a child behind.
            let _ = child.kill();
            let _ = child.wait();
            bail!("starting {label}: no pipes to it");
        };
        let pid = Pid::from_child(&child);
        if let Some(w) = watchdog {
            w.spawned(pid, label);
        }
        Ok(Peer {
            label: label.to_string(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
            watchdog: watchdog.cloned(),
            reaped: false,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let sent = self
            .stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.write_all(b"\n"))
            .and_then(|()| self.stdin.flush());
        if sent.is_err() {
            // A broken pipe means the child has gone: say how it ended.
            return Err(self.gone());
        }
        Ok(())
    }

    /// Tells the child to run a block of `n` iterations.
    pub fn run(&mut self, n: u64) -> Result<()> {
        self.send(&format!("run {n}"))
    }

    /// Reads one reply line, which must start with `word`; returns the rest of the line.
    pub fn expect(&mut self, word: &str) -> Result<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => return Err(self.gone()),
            Ok(_) => {}
        }
        let line = line.trim_end();
        match line.split_once(' ').unwrap_or((line, "")) {
            (w, rest) if w == word => Ok(rest.to_string()),
            _ => bail!("{}: expected {word:?}, got {line:?}", self.label),
        }
    }

    /// Tells the child to quit and checks that it exits cleanly.
    pub fn finish(mut self) -> Result<()> {
        // The child may already have quit after its last block; then the pipe is closed.
        let _ = self.send("quit");
        let status = self.reap_within(EXIT_GRACE)?;
        if !status.success() {
            bail!("{} failed ({status})", self.label);
        }
        Ok(())
    }

    /// The error for a child that stopped talking: reaps it and reports how it ended.
    fn gone(&mut self) -> Error {
        match self.reap_within(EXIT_GRACE) {
            Ok(status) if status.success() => Error::msg(format!("{} exited early", self.label)),
            Ok(status) => Error::msg(format!("{} failed ({status})", self.label)),
            Err(e) => e,
        }
    }

    /// Waits up to `grace` for the child to exit, then kills it; returns its status.
    fn reap_within(&mut self, grace: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.unregister();
                    self.reaped = true;
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    self.kill_and_reap();
                    bail!("{} did not exit; killed it", self.label);
                }
                Err(e) => bail!("waiting for {}: {e}", self.label),
            }
        }
    }

    /// Tells the watchdog to forget the child; done before reaping it, never after, so the
    /// watchdog cannot kill a pid the kernel has reused.
    fn unregister(&mut self) {
        if let Some(w) = self.watchdog.take() {
            w.unregistered(Pid::from_child(&self.child));
        }
    }

    fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        self.unregister();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// A copy of a descriptor for a child to inherit, numbered 3 or more and without
/// `FD_CLOEXEC`. Create it just before [`Peer::spawn`], pass [`InheritedFd::number`] in the
/// arguments, and drop it right after the spawn: until then every child this process starts
/// inherits it too, which is why the tool starts children from one thread only.
pub struct InheritedFd(OwnedFd);

impl InheritedFd {
    /// Makes an inheritable copy of `fd`.
    pub fn new(fd: BorrowedFd<'_>) -> Result<InheritedFd> {
        // Numbered from 3, so that setting up the child's stdio cannot overwrite it.
        let copy = fcntl_dupfd_cloexec(fd, 3).context("duplicating a descriptor for a child")?;
        fcntl_setfd(&copy, FdFlags::empty()).context("making a descriptor inheritable")?;
        Ok(InheritedFd(copy))
    }

    /// The number the child will find it under.
    pub fn number(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// In a child: takes ownership of the descriptor `fd` that the parent passed by number.
pub fn take_inherited_fd(fd: RawFd) -> Result<OwnedFd> {
    if fd < 3 {
        bail!("descriptor {fd} cannot be an inherited one");
    }
    // Check it is open without touching it: its entry in /proc exists.
    if std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err() {
        bail!("descriptor {fd} is not open in this process");
    }
    // SAFETY: `fd` is open (checked above), and it is the parent's InheritedFd copy made for
    // this process alone: nothing else in this process owns or closes it, and this function
    // is called once per descriptor number passed, so the OwnedFd is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // This process starts no children, but keep the descriptor from leaking into any.
    fcntl_setfd(owned.as_fd(), FdFlags::CLOEXEC).context("setting FD_CLOEXEC")?;
    Ok(owned)
}

/// In a child: what every child does first. Asks for SIGKILL when the parent thread dies, so
/// a child spinning on shared memory never outlives its parent.
pub fn child_setup() -> Result<()> {
    set_parent_process_death_signal(Some(Signal::KILL)).context("setting the parent-death signal")
}

/// In a child: the command pipe from the parent and the reply pipe to it.
pub struct Control {
    input: std::io::StdinLock<'static>,
    output: std::io::StdoutLock<'static>,
}

impl Control {
    /// Takes stdin and stdout.
    pub fn new() -> Control {
        Control {
            input: std::io::stdin().lock(),
            output: std::io::stdout().lock(),
        }
    }

    /// Sends one reply line.
    pub fn reply(&mut self, line: &str) -> Result<()> {
        self.output
            .write_all(line.as_bytes())
            .and_then(|()| self.output.write_all(b"\n"))
            .and_then(|()| self.output.flush())
            .context("replying to the parent")
    }

    /// Waits for the next command: `Some(n)` for `run n`, `None` for `quit` or when the parent
    /// has closed the pipe.
    pub fn next_run(&mut self) -> Result<Option<u64>> {
        let mut line = String::new();
        if self
            .input
            .read_line(&mut line)
            .context("reading a command")?
            == 0
        {
            return Ok(None);
        }
        let line = line.trim_end();
        if line == "quit" {
            return Ok(None);
        }
        match line.strip_prefix("run ").map(str::parse::<u64>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => bail!("unknown command {line:?}"),
        }
    }
}
