//! `shmbus doctor`: checks the environment a bus will run in and says what to fix.
//!
//! Each check reads the system (statfs and statvfs of the bus directory, a probe file created
//! and removed there, resource limits, `/proc` and `/sys`) and gives one finding: `ok`, `warn`
//! or `fail`, what it found, and what to do. A read that fails makes its finding say
//! "unknown"; no check panics and none changes the system beyond its own probe file.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use rustix::process::{getrlimit, Resource};
use serde_json::json;

use crate::affinity::parse_cpu_list;
use crate::error::Result;

/// `statfs`'s `f_type` of tmpfs (`TMPFS_MAGIC` in `linux/magic.h`).
const TMPFS_MAGIC: u32 = 0x0102_1994;
/// `f_type` of ramfs: memory too, but with no size limit.
const RAMFS_MAGIC: u32 = 0x8584_58f6;
/// `f_type` of hugetlbfs: memory, but only in whole huge pages.
const HUGETLBFS_MAGIC: u32 = 0x9584_58f6;

/// A shared-memory filesystem smaller than this is worth a warning: docker's default of 64 MiB
/// is the usual way a bus runs out of room.
const SMALL_FS: u64 = 256 << 20;
/// A soft limit on open files below this is worth a warning: each publisher and subscriber
/// keeps one descriptor open for its segment, besides what the application opens.
const FEW_FILES: u64 = 4096;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The directory of the bus's segments.
    #[arg(long, default_value = shmbus::segment::SHM_DIR)]
    dir: PathBuf,
    /// The segment size you plan to create, judged against the free space: bytes, or with a
    /// suffix K, M or G (KiB, MiB, GiB).
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_size)]
    need: u64,
    /// One JSON array of {check, status, found, fix}.
    #[arg(long)]
    json: bool,
}

/// `4096`, `64M`, `1G` as bytes.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or a number with K, M or G)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn json(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// As printed: a failure stands out.
    fn text(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// The outcome of one check.
struct Finding {
    check: &'static str,
    status: Status,
    found: String,
    /// What to do: required for a warning or a failure, an optional hint for an `ok`.
    fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, found: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Ok,
            found: found.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Finding {
        self.fix = Some(hint.into());
        self
    }
}

pub fn run(args: DoctorArgs) -> Result<ExitCode> {
    let mut findings = bus_dir(&args.dir, args.need);
    findings.extend([
        open_files(),
        locked_memory(args.need),
        message_queues(),
        ipc_namespace(),
        cpus(),
        isolation(),
        cpufreq(),
    ]);
    let mut out = std::io::stdout().lock();
    if args.json {
        let array: Vec<_> = findings
            .iter()
            .map(|f| {
                json!({
                    "check": f.check,
                    "status": f.status.json(),
                    "found": f.found,
                    "fix": f.fix,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(array))?;
    } else {
        for f in &findings {
            let fix = match (&f.fix, f.status) {
                (None, _) => String::new(),
                (Some(hint), Status::Ok) => format!("; hint: {hint}"),
                (Some(fix), _) => format!("; fix: {fix}"),
            };
            writeln!(
                out,
                "{:<4} {:<15} {}{fix}",
                f.status.text(),
                f.check,
                f.found
            )?;
        }
        let count = |s| findings.iter().filter(|f| f.status == s).count();
        writeln!(
            out,
            "{} checks: {} ok, {} warn, {} FAIL",
            findings.len(),
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        )?;
    }
    if findings.iter().any(|f| f.status == Status::Fail) {
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

/// The checks of the bus directory: that it is one, its filesystem, its mode, that this user
/// can create a file there, and its room. Only the first if it is not a directory.
fn bus_dir(dir: &Path, need: u64) -> Vec<Finding> {
    const CHECK: &str = "directory";
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => {
            return vec![Finding::fail(
                CHECK,
                format!("{shown} is not a directory"),
                "pass --dir a directory (the default is /dev/shm)",
            )]
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return vec![Finding::fail(
                CHECK,
                format!("{shown} does not exist"),
                format!("mkdir -p {shown}, or pass --dir an existing directory"),
            )]
        }
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                format!("{shown}: {e}"),
                "pass --dir a directory this user can reach",
            )]
        }
    };
    vec![
        Finding::ok(CHECK, format!("{shown} exists and is a directory")),
        filesystem(dir),
        permissions(dir, &meta),
        create_probe(dir),
        free_space(dir, need),
    ]
}

/// The filesystem: memory-backed, or a disk whose writeback a publisher would pay for.
fn filesystem(dir: &Path) -> Finding {
    const CHECK: &str = "filesystem";
    let shown = dir.display();
    let st = match rustix::fs::statfs(dir) {
        Ok(st) => st,
        Err(e) => return Finding::ok(CHECK, format!("{shown}: unknown (statfs: {e})")),
    };
    // The magic numbers are 32-bit; `f_type`'s width and sign differ between targets.
    let magic = st.f_type as u32;
    match magic {
        TMPFS_MAGIC => Finding::ok(CHECK, format!("{shown} is on tmpfs (memory)")),
        RAMFS_MAGIC => Finding::ok(
            CHECK,
            format!(
                "{shown} is on ramfs (memory, with no size limit: a full bus can use all of it)"
            ),
        ),
        HUGETLBFS_MAGIC => Finding::warn(
            CHECK,
            format!(
                "{shown} is on hugetlbfs: memory, but in huge pages, and shmbus sizes and \
                 reserves its segments in ordinary ones"
            ),
            "use a tmpfs: the default --dir /dev/shm",
        ),
        _ => Finding::warn(
            CHECK,
            format!(
                "{shown} is on {}, not tmpfs: segments are files on disk, and the kernel writes \
                 their pages back",
                fs_name(magic)
            ),
            "use a directory on a tmpfs: the default --dir /dev/shm, or one mounted for the bus \
             (mount -t tmpfs -o size=1G,mode=0700 shmbus /path/of/bus, then --dir /path/of/bus)",
        ),
    }
}

/// A name for a filesystem's magic number, for the common ones.
fn fs_name(magic: u32) -> String {
    match magic {
        0xef53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x0102_1997 => "9p".into(),
        0x6573_5546 => "fuse".into(),
        0x2fc1_2fc1 => "zfs".into(),
        _ => format!("a filesystem of type {magic:#x}"),
    }
}

/// The directory's mode: others must not be able to remove or replace this user's segments.
fn permissions(dir: &Path, meta: &std::fs::Metadata) -> Finding {
    const CHECK: &str = "permissions";
    let mode = meta.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let others_write = mode & 0o002 != 0;
    let owner = if meta.uid() == rustix::process::geteuid().as_raw() {
        "this user".to_string()
    } else {
        format!("uid {}", meta.uid())
    };
    let found = format!("{}: mode {mode:04o}, owned by {owner}", dir.display());
    match (others_write, sticky) {
        (true, true) => Finding::ok(
            CHECK,
            format!(
                "{found} (world-writable with the sticky bit, as /dev/shm normally is: only a \
                 file's owner may remove or rename it)"
            ),
        ),
        (true, false) => Finding::warn(
            CHECK,
            format!("{found}: any user may remove or replace this user's segments"),
            format!("chmod +t {0} (or chmod o-w {0})", dir.display()),
        ),
        (false, _) => Finding::ok(CHECK, found),
    }
}

/// Whether this user can create a file in the directory: a probe file, created and removed.
fn create_probe(dir: &Path) -> Finding {
    const CHECK: &str = "create";
    let shown = dir.display();
    let probe = dir.join(format!(".shmbus-doctor-{}", std::process::id()));
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe);
    match created {
        Ok(file) => {
            drop(file);
            match std::fs::remove_file(&probe) {
                Ok(()) => Finding::ok(CHECK, format!("this user can create files in {shown}")),
                Err(e) => Finding::warn(
                    CHECK,
                    format!("created {} but could not remove it: {e}", probe.display()),
                    format!("rm {}", probe.display()),
                ),
            }
        }
        Err(e) => {
            let fix = match e.raw_os_error() {
                Some(libc::EROFS) => {
                    format!("remount {shown} read-write, or pass --dir a writable directory")
                }
                _ if e.kind() == ErrorKind::PermissionDenied => format!(
                    "let this user write there (chown or chmod {shown}), run as its owner, or \
                     pass --dir a directory of this user's"
                ),
                _ => "pass --dir a directory where this user can create files".to_string(),
            };
            Finding::fail(
                CHECK,
                format!("this user cannot create a file in {shown}: {e}"),
                fix,
            )
        }
    }
}

/// The filesystem's size and room, against the segment the user plans.
fn free_space(dir: &Path, need: u64) -> Finding {
    const CHECK: &str = "free-space";
    let shown = dir.display();
    let st = match rustix::fs::statvfs(dir) {
        Ok(st) => st,
        Err(e) => return Finding::ok(CHECK, format!("{shown}: unknown (statvfs: {e})")),
    };
    let total = st.f_blocks.saturating_mul(st.f_frsize);
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let used = st
        .f_blocks
        .saturating_sub(st.f_bfree)
        .saturating_mul(st.f_frsize);
    if total == 0 {
        // ramfs and a few others report no size at all: nothing to judge.
        return Finding::ok(CHECK, format!("{shown}: the filesystem reports no size"));
    }
    let found = format!(
        "{shown}: {} free of {}, {} needed (--need)",
        human(free),
        human(total),
        human(need)
    );
    let mount = mount_point(dir).map_or_else(|| shown.to_string(), |m| m.display().to_string());
    let size = suggested_size(used.saturating_add(need));
    let on_tmpfs = rustix::fs::statfs(dir).is_ok_and(|st| st.f_type as u32 == TMPFS_MAGIC);
    let enlarge = if !on_tmpfs {
        format!("free space on the filesystem mounted at {mount}, or pass --dir a tmpfs with room")
    } else if mount == shmbus::segment::SHM_DIR {
        format!(
            "enlarge it: mount -o remount,size={size} {mount} (in a docker container: docker run \
             --shm-size={size}; in Kubernetes: an emptyDir with medium: Memory at /dev/shm)"
        )
    } else {
        format!("enlarge it: mount -o remount,size={size} {mount}")
    };
    if free < need {
        Finding::fail(
            CHECK,
            found,
            format!("remove stale topics (shmbus clean --dir {shown}), or {enlarge}"),
        )
    } else if st.f_files > 0 && st.f_favail == 0 {
        Finding::fail(
            CHECK,
            format!("{found}, but no free inodes"),
            format!(
                "remove stale topics (shmbus clean --dir {shown}), or lift the limit on files: \
                 mount -o remount,nr_inodes=0 {mount}"
            ),
        )
    } else if total < SMALL_FS {
        Finding::warn(
            CHECK,
            format!(
                "{found}; the filesystem is smaller than {}",
                human(SMALL_FS)
            ),
            enlarge,
        )
    } else {
        Finding::ok(CHECK, found)
    }
}

/// The mount point that holds `dir`: the last directory up from it on the same device.
fn mount_point(dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    let dev = std::fs::metadata(&dir).ok()?.dev();
    let mut at = dir.as_path();
    while let Some(parent) = at.parent() {
        if std::fs::metadata(parent).ok()?.dev() != dev {
            break;
        }
        at = parent;
    }
    Some(at.to_path_buf())
}

/// A size for `mount -o size=` that holds `bytes`: a power of two, at least [`SMALL_FS`].
fn suggested_size(bytes: u64) -> String {
    let size = bytes
        .max(SMALL_FS)
        .checked_next_power_of_two()
        .unwrap_or(bytes);
    if size >= 1 << 30 && size % (1 << 30) == 0 {
        format!("{}G", size >> 30)
    } else {
        format!("{}M", size.div_ceil(1 << 20))
    }
}

/// `1048576` as `1.0 MiB`.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A limit as text: `unlimited` for none.
fn limit(value: Option<u64>, show: fn(u64) -> String) -> String {
    value.map_or_else(|| "unlimited".to_string(), show)
}

fn open_files() -> Finding {
    const CHECK: &str = "open-files";
    let lim = getrlimit(Resource::Nofile);
    let found = format!(
        "RLIMIT_NOFILE soft {}, hard {} (each publisher and subscriber holds one descriptor)",
        limit(lim.current, |n| n.to_string()),
        limit(lim.maximum, |n| n.to_string())
    );
    match lim.current {
        Some(soft) if soft < FEW_FILES => {
            let fix = match lim.maximum {
                Some(hard) if hard < FEW_FILES => "raise the hard limit: nofile in \
                    /etc/security/limits.conf, LimitNOFILE= in a systemd unit, or docker run \
                    --ulimit nofile=65536:65536"
                    .to_string(),
                hard => format!(
                    "ulimit -n {} in the shell that starts the processes (systemd: LimitNOFILE=)",
                    hard.unwrap_or(65536).min(65536)
                ),
            };
            Finding::warn(CHECK, found, fix)
        }
        _ => Finding::ok(CHECK, found),
    }
}

fn locked_memory(need: u64) -> Finding {
    const CHECK: &str = "locked-memory";
    let lim = getrlimit(Resource::Memlock);
    let found = format!(
        "RLIMIT_MEMLOCK soft {}, hard {}",
        limit(lim.current, human),
        limit(lim.maximum, human)
    );
    match lim.current {
        // shmbus does not lock memory itself (its pages are reserved and populated when a
        // segment is created); an application that calls mlockall for low latency does.
        Some(soft) if soft < need => Finding::ok(
            CHECK,
            format!(
                "{found}: an application that locks its memory (mlockall) could not lock a {} \
                 segment",
                human(need)
            ),
        )
        .hint(
            "if it does: ulimit -l unlimited (limits.conf memlock, LimitMEMLOCK=, docker run \
             --ulimit memlock=-1)",
        ),
        _ => Finding::ok(CHECK, found),
    }
}

fn message_queues() -> Finding {
    let read = |name: &str| {
        let path = format!("/proc/sys/fs/mqueue/{name}");
        match std::fs::read_to_string(&path) {
            Ok(s) => format!("{name} {}", s.trim()),
            Err(_) => format!("{name} unknown"),
        }
    };
    let lim = getrlimit(Resource::Msgqueue);
    Finding::ok(
        "message-queues",
        format!(
            "POSIX message queues: {}, {}, {}; RLIMIT_MSGQUEUE soft {} (for a transport over \
             message queues; shmbus's rings do not use them)",
            read("msg_max"),
            read("msgsize_max"),
            read("queues_max"),
            limit(lim.current, human)
        ),
    )
}

/// Whether this process shares pid 1's IPC namespace.
fn ipc_namespace() -> Finding {
    const CHECK: &str = "ipc-namespace";
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/ipc"));
    let own = match ns("self") {
        Ok(link) => link.display().to_string(),
        Err(e) => return Finding::ok(CHECK, format!("unknown (/proc/self/ns/ipc: {e})")),
    };
    match ns("1") {
        Ok(init) if init.display().to_string() == own => {
            Finding::ok(CHECK, format!("{own}, the same as pid 1's"))
        }
        Ok(init) => Finding::warn(
            CHECK,
            format!(
                "{own}, not pid 1's {}: this process runs in an IPC namespace of its own (a \
                 container?)",
                init.display()
            ),
            "processes in other IPC namespaces (other containers, the host) share neither its \
             message queues nor, usually, its /dev/shm: run both sides in one (docker run \
             --ipc=host or --ipc=container:NAME), or mount one directory into both and pass it \
             as --dir",
        ),
        Err(e) => Finding::ok(
            CHECK,
            format!(
                "{own}; pid 1's is unknown (/proc/1/ns/ipc: {e}), so whether this is a \
                 container's cannot be told"
            ),
        ),
    }
}

fn cpus() -> Finding {
    const CHECK: &str = "cpus";
    let affinity = rustix::thread::sched_getaffinity(None).map(|set| set.count() as usize);
    let available = std::thread::available_parallelism().map(|n| n.get());
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_cpu_list(s.trim()).ok())
        .map(|cpus| cpus.len());
    let show = |n: Option<usize>| n.map_or_else(|| "unknown".to_string(), |n| n.to_string());
    let found = format!(
        "{} this process may run on (affinity), {} available (with cgroup quotas), {} online",
        show(affinity.as_ref().ok().copied()),
        show(available.as_ref().ok().copied()),
        show(online)
    );
    let fewest = [affinity.ok(), available.ok()].into_iter().flatten().min();
    match fewest {
        Some(1) => Finding::warn(
            CHECK,
            format!("{found}: a spinning subscriber and its publisher would share one CPU"),
            "give the processes at least two CPUs (taskset, docker run --cpus/--cpuset-cpus), \
             or use a wait strategy that sleeps (Futex) or yields (SpinYield), never Spin",
        ),
        _ => Finding::ok(CHECK, found),
    }
}

/// Isolated CPUs and tickless CPUs: hints for the lowest latency.
fn isolation() -> Finding {
    let isolated = match std::fs::read_to_string("/sys/devices/system/cpu/isolated") {
        Ok(s) if s.trim().is_empty() => Some("none".to_string()),
        Ok(s) => Some(s.trim().to_string()),
        Err(_) => None,
    };
    let nohz_full = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .map(|cmdline| {
            cmdline
                .split_whitespace()
                .find_map(|arg| arg.strip_prefix("nohz_full="))
                .unwrap_or("none")
                .to_string()
        });
    let show = |s: &Option<String>| s.clone().unwrap_or_else(|| "unknown".to_string());
    let found = format!(
        "isolated CPUs: {}; nohz_full: {}",
        show(&isolated),
        show(&nohz_full)
    );
    let finding = Finding::ok("isolation", found);
    if isolated.as_deref() == Some("none") {
        finding.hint(
            "for the lowest latency, keep the kernel off two CPUs (isolcpus=, nohz_full= on \
             the kernel command line) and pin the publisher and subscriber there (taskset -c)",
        )
    } else {
        finding
    }
}

/// cpu0's frequency governor: anything but `performance` adds ramp-up time to a wake-up.
fn cpufreq() -> Finding {
    const CHECK: &str = "cpufreq";
    let path = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor";
    match std::fs::read_to_string(path) {
        Ok(governor) if governor.trim() == "performance" => {
            Finding::ok(CHECK, "cpu0's governor is performance")
        }
        Ok(governor) => Finding::warn(
            CHECK,
            format!(
                "cpu0's governor is {}: a CPU that idles slows down, and the first messages \
                 after a pause wait for it to speed up",
                governor.trim()
            ),
            "cpupower frequency-set -g performance (or write performance to \
             /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)",
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => Finding::ok(
            CHECK,
            "no cpufreq on cpu0 (a virtual machine, or the firmware sets the frequency)",
        ),
        Err(e) => Finding::ok(CHECK, format!("unknown ({path}: {e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("8K"), Ok(8 << 10));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert_eq!(human(1 << 20), "1.0 MiB");
        assert_eq!(human(100), "100 bytes");
        assert_eq!(suggested_size(5 << 20), "256M");
        assert_eq!(suggested_size(600 << 20), "1G");
    }
}
