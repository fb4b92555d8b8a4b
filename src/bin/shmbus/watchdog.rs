//! A thread that ends a run whose processes have stopped making progress.
//!
//! The measured loops carry no timeout checks, since a clock read in the loop would change
//! what is measured, and a peer that dies mid-block leaves the other side spinning on shared
//! memory forever. The watchdog turns both cases into one error line: it kills the children
//! it was told about, removes the run's named segments and exits the process. It fires when
//! no progress is reported for `limit`, or when a registered child has been dead for longer
//! than [`DEAD_GRACE`] without the main thread reaping it (the main thread, if it is blocked
//! on that child's pipe, reports the death itself with a better message first).
//!
//! It never touches a process it did not start: it kills only the pids registered by
//! [`crate::peer::Peer`], and a peer unregisters before it is reaped, so a pid is never
//! killed after the kernel could have reused it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::{
    kill_process, waitid, waitpid, Pid, Signal, WaitId, WaitIdOptions, WaitOptions,
};

use crate::error::{Context, Result};
use crate::sweep;

/// How long a registered child may stay dead and unreaped before the watchdog gives up.
const DEAD_GRACE: Duration = Duration::from_secs(2);

/// How often the watchdog looks at the registered children: rarely, since each look takes a
/// moment of the parent's CPU from the measured loop.
const POLL: Duration = Duration::from_millis(500);

/// What the main thread and the peers tell the watchdog.
enum Event {
    Progress,
    Spawned(Pid, String),
    Unregistered(Pid),
    Stop,
}

/// The running watchdog; dropping it stops the thread.
pub struct Watchdog {
    tx: mpsc::Sender<Event>,
    thread: Option<JoinHandle<()>>,
}

/// A way for a [`crate::peer::Peer`] to register and unregister its child.
#[derive(Clone)]
pub struct Handle(mpsc::Sender<Event>);

impl Watchdog {
    /// Starts the watchdog for the command `what` ("demo", "bench"). On firing it removes the
    /// named segments whose names start with `sweep_prefix`.
    pub fn start(what: &'static str, limit: Duration, sweep_prefix: String) -> Result<Watchdog> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(what, limit, &sweep_prefix, &rx))
            .context("starting the watchdog thread")?;
        Ok(Watchdog {
            tx,
            thread: Some(thread),
        })
    }

    /// Tells the watchdog the run is moving. Call it between blocks, not in a measured loop.
    pub fn progress(&self) {
        // A send fails only when the thread has gone, and it goes only when told to stop.
        let _ = self.tx.send(Event::Progress);
    }

    /// A handle for registering children.
    pub fn handle(&self) -> Handle {
        Handle(self.tx.clone())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Handle {
    /// Registers a child, named `label` in messages, that the watchdog kills if it fires.
    pub fn spawned(&self, pid: Pid, label: &str) {
        let _ = self.0.send(Event::Spawned(pid, label.to_string()));
    }

    /// Unregisters a child: call it before reaping the child, never after.
    pub fn unregistered(&self, pid: Pid) {
        let _ = self.0.send(Event::Unregistered(pid));
    }
}

/// The watchdog thread.
fn watch(what: &str, limit: Duration, sweep_prefix: &str, rx: &mpsc::Receiver<Event>) {
    // Each child: its pid, its label, and since when it has been seen dead.
    let mut children: Vec<(Pid, String, Option<Instant>)> = Vec::new();
    let mut last_progress = Instant::now();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Event::Progress) => last_progress = Instant::now(),
            Ok(Event::Spawned(pid, label)) => {
                last_progress = Instant::now();
                children.push((pid, label, None));
            }
            Ok(Event::Unregistered(pid)) => children.retain(|(p, _, _)| *p != pid),
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        let mut reason = None;
        for (pid, label, dead_since) in &mut children {
            // NOWAIT leaves the child for the main thread to reap.
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            if let Ok(Some(_)) = waitid(WaitId::Pid(*pid), options) {
                let since = *dead_since.get_or_insert(now);
                if now.duration_since(since) > DEAD_GRACE {
                    reason = Some(format!("{label} (pid {}) died", pid.as_raw_nonzero()));
                }
            }
        }
        if reason.is_none() && now.duration_since(last_progress) > limit {
            reason = Some(format!(
                "no progress for {} s: a process is stuck",
                limit.as_secs()
            ));
        }
        if let Some(reason) = reason {
            eprintln!("\nshmbus {what}: error: {reason}; stopping");
            for (pid, _, _) in &children {
                let _ = kill_process(*pid, Signal::KILL);
            }
            // Reap them: the main thread is stuck, and an orphan may not be reaped for us.
            for (pid, _, _) in &children {
                let _ = waitpid(Some(*pid), WaitOptions::empty());
            }
            sweep::remove_segments(sweep_prefix);
            std::process::exit(1);
        }
    }
}
