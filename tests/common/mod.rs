//! Shared by the integration tests: unique bus prefixes, cleanup of segments, and child processes
//! run by re-executing the test binary, each under a watchdog.
//!
//! A test binary re-executes itself as `<exe> child_entry --exact --nocapture`, with
//! [`CHILD_VAR`] naming the child's role and `SHMBUS_TEST_ARG_<KEY>` variables carrying its
//! arguments. Each test file has a `#[test] fn child_entry()` that returns at once unless
//! [`CHILD_VAR`] is set. A child reports on stdout with lines the parent waits for (`READY`,
//! `RESULT ...`, found anywhere in a line) and with its exit code.
//!
//! Every helper here fails the test (never hangs it): a child that has not finished by its
//! watchdog is killed, and a child still running when its handle is dropped (a failed
//! assertion in the parent) is killed too.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

pub mod msg;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The variable that selects a child's role.
pub const CHILD_VAR: &str = "SHMBUS_TEST_CHILD";
/// Prefix of the variables that carry a child's arguments.
const ARG_VAR: &str = "SHMBUS_TEST_ARG_";
/// Name of the `#[test]` function every test file provides for its children.
pub const CHILD_ENTRY: &str = "child_entry";

/// How long a child may run before it is killed and the test fails. Generous: a noisy two-core
/// VM running several test binaries must never trip it; it is there so that a hang fails.
pub const WATCHDOG: Duration = Duration::from_secs(300);
/// How long a child waits for a message (or a free slot) before it gives up: a child must not
/// outlive a parent that died without killing it.
pub const CHILD_STALL: Duration = Duration::from_secs(120);

/// A bus prefix no other test (in this process or another) uses: pid, test name and a counter.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: Mutex<u32> = Mutex::new(0);
    let n = {
        let mut c = lock(&COUNTER);
        *c += 1;
        *c
    };
    let short: String = test.chars().take(40).collect();
    format!("shmbus-test-{}-{short}-{n}.", std::process::id())
}

/// Lock a mutex, ignoring poison (a test that failed while holding it has already failed).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Removes every segment of a prefix from `/dev/shm` when dropped, whatever the test left.
pub struct Cleanup {
    prefix: String,
}

impl Cleanup {
    pub fn new(prefix: &str) -> Self {
        remove_segments(prefix);
        Self {
            prefix: prefix.to_owned(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_segments(&self.prefix);
    }
}

/// The names (as `shm_open` takes them) of the segments whose name starts with `prefix`.
pub fn segments_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/dev/shm") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

fn remove_segments(prefix: &str) {
    for name in segments_with_prefix(prefix) {
        let _ = rustix::shm::unlink(name.as_str());
    }
}

/// Whether this process runs as a child, and which role: `Some(role)` if [`CHILD_VAR`] is set.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_VAR).ok()
}

/// A child's argument `key` (as given to [`ChildProc::spawn`]).
///
/// # Panics
/// If the parent did not pass it.
pub fn arg(key: &str) -> String {
    std::env::var(format!("{ARG_VAR}{}", key.to_uppercase()))
        .unwrap_or_else(|_| panic!("child argument {key} missing"))
}

/// A receiving child's report (`RESULT received=.. errors=.. disconnected=..`, read by
/// [`Finished::num`]) and its exit code: 0 when nothing was wrong and the topic closed.
pub fn report_received(received: u64, errors: u64, disconnected: bool) -> i32 {
    say(&format!(
        "RESULT received={received} errors={errors} disconnected={}",
        disconnected as u8
    ));
    i32::from(errors != 0 || !disconnected)
}

/// A bus over the transport `spec` (as `shmbus::transport::parse` reads it), its segment or
/// socket names under `prefix`.
pub fn bus_over(spec: &str, prefix: &str) -> shmbus::Bus {
    shmbus::Bus::builder()
        .prefix(prefix)
        .transport_boxed(shmbus::transport::parse(spec).expect("a valid spec"))
        .build()
        .expect("a bus")
}

/// The bus a child works on: the parent's, from the `prefix` argument (and `dir`, if given).
pub fn child_bus() -> shmbus::Bus {
    shmbus::Bus::builder()
        .prefix(&arg("prefix"))
        .dir(arg_or("dir", shmbus::segment::SHM_DIR))
        .build()
        .expect("valid prefix and directory")
}

/// A child's argument `key`, or `default` if the parent did not pass it.
pub fn arg_or(key: &str, default: &str) -> String {
    std::env::var(format!("{ARG_VAR}{}", key.to_uppercase())).unwrap_or_else(|_| default.into())
}

/// A child's argument `key` parsed as a number, or `default` if the parent did not pass it.
pub fn arg_u64_or(key: &str, default: u64) -> u64 {
    std::env::var(format!("{ARG_VAR}{}", key.to_uppercase()))
        .map_or(default, |v| v.parse().expect("a numeric argument"))
}

/// A child's argument `key` parsed as a number.
pub fn arg_u64(key: &str) -> u64 {
    arg(key)
        .parse()
        .unwrap_or_else(|e| panic!("child argument {key}: {e}"))
}

/// Say that the calling test skips its check, and why, where CI's log shows it: straight to
/// the process's stderr (the harness captures `eprintln!`, and shows it only for a failure).
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {reason}");
}

/// Print a line for the parent, flushed at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// End the child now with `code`, after flushing what it printed. Runs no destructors.
pub fn exit_child(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// The command that runs the test binary as a child in `role` with `args`, its output piped:
/// for a test that must spawn it through another API, which then hands the child to
/// [`ChildProc::adopt`].
pub fn child_command(role: &str, args: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    configure(&mut cmd, role, args);
    cmd
}

/// Make `cmd` (the test binary, or a wrapper of it) run the child entry in `role`.
fn configure(cmd: &mut Command, role: &str, args: &[(&str, &str)]) {
    cmd.args([
        CHILD_ENTRY,
        "--exact",
        "--nocapture",
        "--quiet",
        "--test-threads=1",
    ])
    .env(CHILD_VAR, role)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in args {
        cmd.env(format!("{ARG_VAR}{}", k.to_uppercase()), v);
    }
}

/// A child process: the test binary re-executed in a role, under a watchdog.
pub struct ChildProc {
    child: Child,
    what: String,
    deadline: Instant,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

/// What a finished child left behind.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub lines: Vec<String>,
    pub stderr: String,
}

impl Finished {
    /// The fields of the child's `RESULT k=v ...` line.
    ///
    /// # Panics
    /// If there is none.
    pub fn result(&self) -> HashMap<String, String> {
        let line = self
            .lines
            .iter()
            .rev()
            .find_map(|l| after_marker(l, "RESULT "))
            .unwrap_or_else(|| panic!("the child printed no RESULT line: {self:#?}"));
        parse_fields(line)
    }

    /// The text after `RESULT ` on the child's result line.
    pub fn result_line(&self) -> &str {
        self.lines
            .iter()
            .rev()
            .find_map(|l| after_marker(l, "RESULT "))
            .unwrap_or_else(|| panic!("the child printed no RESULT line: {self:#?}"))
    }

    /// A numeric field of the result line.
    pub fn num(&self, key: &str) -> u64 {
        let fields = self.result();
        let v = fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the child's result: {self:#?}"));
        v.parse()
            .unwrap_or_else(|e| panic!("{key}={v} is not a number ({e}): {self:#?}"))
    }

    /// Panic with everything the child said unless it exited with status 0.
    pub fn assert_success(&self) {
        assert!(self.status.success(), "the child failed: {self:#?}");
    }
}

/// The text after `marker` in `line`, if it is there. Not only at the start: the test harness
/// may have printed `test child_entry ... ` on the same line before the child's first words.
pub fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// `k=v k=v` into a map (a word without `=` maps to an empty value).
pub fn parse_fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (w.to_owned(), String::new()),
        })
        .collect()
}

impl ChildProc {
    /// Start the test binary as a child in `role`, with `args` as its arguments, killed if it
    /// runs longer than [`WATCHDOG`].
    pub fn spawn(role: &str, args: &[(&str, &str)]) -> Self {
        Self::spawn_wrapped(None, role, args)
    }

    /// As [`ChildProc::spawn`], run under `wrapper` (e.g. `strace` and its options).
    pub fn spawn_wrapped(wrapper: Option<&[&str]>, role: &str, args: &[(&str, &str)]) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = match wrapper {
            Some([program, options @ ..]) => {
                let mut c = Command::new(program);
                c.args(options).arg(&exe);
                c
            }
            _ => Command::new(&exe),
        };
        configure(&mut cmd, role, args);
        Self::adopt(cmd.spawn().expect("spawn the child"), role)
    }

    /// Watch a child started from [`child_command`] by another API (tests/transport_pipe.rs:
    /// `Pipe::spawn`), as [`ChildProc::spawn`] watches its own.
    pub fn adopt(mut child: Child, role: &str) -> Self {
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self {
            what: format!("child {role} (pid {})", child.id()),
            child,
            deadline: Instant::now() + WATCHDOG,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill the child with SIGKILL, as a crash would (it runs no destructor); reap it with
    /// `finish`.
    pub fn kill(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid() as i32).expect("a child's pid"),
            rustix::process::Signal::KILL,
        )
        .expect("kill the child");
    }

    /// Wait for a stdout line holding `prefix` and return it, from `prefix` on.
    ///
    /// # Panics
    /// If the child exits first or the watchdog expires (the child is then killed).
    pub fn wait_for_line(&mut self, prefix: &str) -> String {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(at) = line.find(prefix) {
                        return line[at..].to_owned();
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("watchdog: no {prefix:?} line in {WATCHDOG:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited before printing {prefix:?}"))
                }
            }
        }
    }

    /// Panic if the child has exited or the watchdog has expired: for a parent that waits on
    /// the bus and must not wait for a dead child.
    pub fn check(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            self.fail(&format!("exited early with {status}"));
        }
        if Instant::now() >= self.deadline {
            self.fail(&format!("watchdog: still running after {WATCHDOG:?}"));
        }
    }

    /// Wait for the child to exit (killing it when the watchdog expires) and collect its output.
    pub fn finish(mut self) -> Finished {
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => self.fail(&format!("watchdog: still running after {WATCHDOG:?}")),
                Err(e) => self.fail(&format!("wait failed: {e}")),
            }
        };
        // The child has exited: its pipes close, and the reader threads end.
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.lines.iter());
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Finished {
            status,
            lines,
            stderr,
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.lines.try_iter());
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        panic!(
            "{}: {why}\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
            self.what,
            lines.join("\n")
        );
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // Still running only if the parent failed: do not leave it behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tmpfs of its own, mounted for one test at a fresh directory (`dir`); unmounted and removed
/// when dropped. Needs root.
pub struct SmallTmpfs {
    pub dir: std::path::PathBuf,
}

impl SmallTmpfs {
    /// Mount a tmpfs of `kib` KiB at a directory named after `what` and this process, or say
    /// why it cannot be done here (not root, no `mount`).
    pub fn mount(what: &str, kib: u64) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("shmbus-{what}-tmpfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700")])
            .arg("shmbus-test")
            .arg(&dir)
            .output();
        let why = match out {
            Ok(out) if out.status.success() => return Ok(Self { dir }),
            Ok(out) => String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("mount failed")
                .to_string(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        let _ = std::fs::remove_dir(&dir);
        Err(why)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Wait up to `seconds` for `fd` to be readable (an armed subscriber's descriptor); whether
/// it became so.
pub fn readable_within(fd: std::os::fd::BorrowedFd<'_>, seconds: i64) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let timeout = rustix::time::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&timeout)).expect("poll") == 1
}

/// A TCP port on 127.0.0.1 that nothing listens on now, for a test's publisher to bind. Taken
/// below the kernel's ephemeral range (where no connecting socket is given it behind the test's
/// back), a different one for each call in this process, and checked by binding it once.
/// Another process could still take it before the test binds it: a tiny race, tolerated.
pub fn free_tcp_port() -> u16 {
    static NEXT: Mutex<u32> = Mutex::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_535);
    let (low, span) = (ephemeral_low - 10_000, 10_000);
    loop {
        let n = {
            let mut next = lock(&NEXT);
            *next += 1;
            *next
        };
        assert!(n < span, "no free TCP port below {ephemeral_low}");
        let port = low + (std::process::id().wrapping_mul(97).wrapping_add(n) % span);
        if loopback_port_free(port as u16) {
            return port as u16;
        }
    }
}

/// Whether `127.0.0.1:port` can be bound, asked with a socket that binds but never listens:
/// a probe that listened, even for a moment, could take a connection meant for nobody (and a
/// process spawned by another test in that moment keeps a copy of it until its `exec`).
pub fn loopback_port_free(port: u16) -> bool {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let socket = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("a TCP socket");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    rustix::net::bind(&socket, &addr).is_ok()
}

/// Whether `127.0.0.1:port` comes free before `within` passes. A listener closed here may live
/// on for a moment in a process another test is spawning (the copy of the descriptor table a
/// child holds until its `exec` closes what is close-on-exec).
pub fn loopback_port_frees(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if loopback_port_free(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
