//! `shmbus doctor` run as a user runs it: its JSON on this machine's `/dev/shm`, a 1 MiB tmpfs
//! that the test mounts (as a container's small `/dev/shm` would be) too small for the segment
//! planned, and a directory on a disk filesystem.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `statfs`'s `f_type` of tmpfs and ramfs: memory-backed directories, which the disk test must
/// not use.
const MEMORY_FS: [u32; 2] = [0x0102_1994, 0x8584_58f6];

fn doctor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmbus"))
        .arg("doctor")
        .args(args)
        .output()
        .expect("run shmbus doctor")
}

/// The findings of `shmbus doctor --json args...`, and its exit code.
fn findings(args: &[&str]) -> (Vec<Value>, Option<i32>) {
    let mut args = args.to_vec();
    args.push("--json");
    let out = doctor(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "doctor {args:?} printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let array = parsed.as_array().expect("a JSON array").clone();
    (array, out.status.code())
}

/// The finding of `check`.
fn finding<'a>(findings: &'a [Value], check: &str) -> &'a Value {
    findings
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} finding in {findings:#?}"))
}

#[test]
fn json_on_the_default_dir() {
    let (findings, code) = findings(&[]);
    assert!(!findings.is_empty());
    for f in &findings {
        let object = f.as_object().expect("each finding is an object");
        assert_eq!(object.len(), 4, "{f}");
        for key in ["check", "status", "found"] {
            assert!(object.get(key).is_some_and(Value::is_string), "{key}: {f}");
        }
        assert!(
            object
                .get("fix")
                .is_some_and(|v| v.is_string() || v.is_null()),
            "fix: {f}"
        );
        let status = f["status"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&status), "{f}");
        if status != "ok" {
            assert!(f["fix"].is_string(), "a {status} says what to do: {f}");
        }
    }
    for check in [
        "directory",
        "filesystem",
        "free-space",
        "open-files",
        "cpus",
    ] {
        finding(&findings, check);
    }
    let failed = findings.iter().any(|f| f["status"] == "fail");
    assert_eq!(code, Some(i32::from(failed)), "{findings:#?}");
}

#[test]
fn a_tmpfs_too_small_fails_with_the_sizes() {
    let fs = match common::SmallTmpfs::mount("doctor", 1024) {
        Ok(fs) => fs,
        Err(why) => {
            common::skip(&format!("cannot mount a 1 MiB tmpfs here ({why})"));
            return;
        }
    };
    let dir = fs.dir.to_str().expect("a UTF-8 path");
    let args = ["--dir", dir, "--need", "4194304"];

    let out = doctor(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("free-space"))
        .unwrap_or_else(|| panic!("no failed free-space line: {stdout}"));
    for part in [dir, "1.0 MiB free", "4.0 MiB needed"] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert!(line.contains("fix: "), "{line}");
    assert!(
        stdout.lines().last().is_some_and(|l| l.contains("1 FAIL")),
        "{stdout}"
    );

    let (findings, code) = findings(&args);
    assert_eq!(code, Some(1));
    assert_eq!(finding(&findings, "free-space")["status"], "fail");
    assert_eq!(finding(&findings, "filesystem")["status"], "ok");
    // Nothing left behind by the probe file.
    assert_eq!(std::fs::read_dir(&fs.dir).unwrap().count(), 0);
}

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `dir` is on a memory filesystem (`None`: statfs failed).
fn on_memory(dir: &Path) -> Option<bool> {
    let st = rustix::fs::statfs(dir).ok()?;
    Some(MEMORY_FS.contains(&(st.f_type as u32)))
}

#[test]
fn a_disk_directory_warns_it_is_not_tmpfs() {
    // The build's own directory or the temporary one are on disk on most machines; a machine
    // where none is (or none is writable) cannot run this check.
    let name = format!("shmbus-doctor-disk-{}", std::process::id());
    let dir = [
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        std::env::temp_dir(),
    ]
    .into_iter()
    .filter(|parent| on_memory(parent) == Some(false))
    .map(|parent| parent.join(&name))
    .find(|dir| std::fs::create_dir_all(dir).is_ok());
    let Some(dir) = dir.map(TempDir) else {
        common::skip("no writable directory on a disk filesystem to try");
        return;
    };

    let (findings, _) = findings(&["--dir", dir.0.to_str().unwrap(), "--need", "4096"]);
    let fs = finding(&findings, "filesystem");
    assert_eq!(fs["status"], "warn", "{fs}");
    assert!(fs["found"].as_str().unwrap().contains("not tmpfs"), "{fs}");
    assert!(fs["fix"].as_str().unwrap().contains("tmpfs"), "{fs}");
}
