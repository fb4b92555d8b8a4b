//! Removal of the named segments one run created, found by the run's unique name prefix.
//!
//! A publisher unlinks its segment when dropped, but a child killed with SIGKILL drops
//! nothing, so the demo and the bench also sweep `/dev/shm` for their own prefix (which holds
//! the pid of the run and a timestamp) when they end, and for the names of earlier runs whose
//! process is gone when they start. The sweep never removes a name of another format, nor one
//! whose process is alive.

use std::path::Path;

use rustix::process::Pid;

/// Where `shm_open` names live on Linux.
const SHM_DIR: &str = "/dev/shm";

/// A prefix shorter than this is refused: it could match another program's segments.
const MIN_PREFIX: usize = 12;

/// Unlinks every segment whose name starts with `prefix`; returns how many it removed.
pub fn remove_segments(prefix: &str) -> usize {
    if prefix.len() < MIN_PREFIX || prefix.contains('/') {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(Path::new(SHM_DIR)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(prefix) && rustix::shm::unlink(name).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Unlinks the segments that an earlier run left behind when it was killed (by Ctrl-C, say,
/// which this tool does not catch): names `<head><pid>-...` whose process `<pid>` is gone.
/// A name whose pid is alive is kept, whoever has that pid now. Returns how many it removed.
pub fn remove_stale(head: &str) -> usize {
    if head.len() < 8 || head.contains('/') {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(Path::new(SHM_DIR)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix(head)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        if is_gone(pid) && rustix::shm::unlink(name).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether process `pid` has ended: it does not exist, or it is a zombie nobody reaped yet.
pub fn is_gone(pid: Pid) -> bool {
    // Signal 0 checks that the process exists without touching it.
    if let Err(rustix::io::Errno::SRCH) = rustix::process::test_kill_process(pid) {
        return true;
    }
    // `<pid> (<comm>) <state> ...`: the state follows the last parenthesis.
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sweeps its prefix when dropped, so that an early return or a panic still cleans up.
pub struct Sweep {
    prefix: String,
}

impl Sweep {
    /// Sweeps `prefix` on drop.
    pub fn new(prefix: String) -> Sweep {
        Sweep { prefix }
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        remove_segments(&self.prefix);
    }
}
