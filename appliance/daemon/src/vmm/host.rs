//! What both drivers share on the host side: the per-VM directory, the
//! copy-on-write disk, and starting a VMM process inside the VM's network
//! namespace in its own process group.
//!
//! A VM directory holds `vm.json` (who the VM is, which driver, VMM pid),
//! `disk.qcow2` (the VM's writes over the template image), the control
//! socket and `serial.log`. VMM processes are not tied to the daemon's life
//! (no parent-death signal), so a restarted daemon can adopt them; the
//! directory is what makes that possible.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::Error;

/// Everything needed to find a VM again after a daemon restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Driver name.
    pub driver: String,
    /// Sandbox id.
    pub sandbox_id: String,
    /// Lifecycle id (also the directory and namespace name).
    pub lifecycle_id: String,
    /// VMM process id.
    pub vmm_pid: Option<u32>,
    /// Network namespace.
    pub netns: String,
    /// Whether egress is on.
    pub egress: bool,
}

/// A VM's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    /// The directory.
    pub path: PathBuf,
}

impl VmDir {
    /// Creates `<root>/<lifecycle id>`.
    pub fn create(root: &Path, lifecycle_id: &str) -> Result<Self, Error> {
        let path = root.join(lifecycle_id);
        std::fs::create_dir_all(&path).map_err(|source| Error::Prepare {
            vm: lifecycle_id.to_owned(),
            what: "vm directory",
            source,
        })?;
        Ok(Self { path })
    }

    /// The overlay disk.
    pub fn disk(&self) -> PathBuf {
        self.path.join("disk.qcow2")
    }

    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.path.join("serial.log")
    }

    /// The VMM's stdout/stderr.
    pub fn vmm_log(&self) -> PathBuf {
        self.path.join("vmm.log")
    }

    /// The control socket (QMP or Cloud Hypervisor API).
    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }

    /// Writes `vm.json` atomically.
    pub fn write_record(&self, record: &VmRecord) -> Result<(), Error> {
        let prepare = |source| Error::Prepare {
            vm: record.lifecycle_id.clone(),
            what: "vm record",
            source,
        };
        let tmp = self.path.join("vm.json.tmp");
        let json =
            serde_json::to_vec_pretty(record).map_err(|e| prepare(std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(prepare)?;
        std::fs::rename(&tmp, self.path.join("vm.json")).map_err(prepare)
    }

    /// Reads `vm.json`, if present and valid.
    pub fn read_record(&self) -> Option<VmRecord> {
        let bytes = std::fs::read(self.path.join("vm.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Creates a qcow2 overlay at `overlay` whose backing file is `base`
/// (raw or qcow2): the VM's writes land in the overlay, the base is shared.
pub async fn create_overlay(
    base: &Path,
    base_format: &str,
    overlay: &Path,
    vm: &str,
) -> Result<(), Error> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", base_format, "-b"])
        .arg(base)
        .arg(overlay)
        .output()
        .await
        .map_err(|source| Error::Prepare {
            vm: vm.to_owned(),
            what: "disk overlay (qemu-img)",
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Prepare {
            vm: vm.to_owned(),
            what: "disk overlay",
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        });
    }
    Ok(())
}

/// Starts a VMM process inside `netns_path`, in a process group of its own
/// (signals to the daemon do not reach it), with output to `log`.
pub fn spawn_vmm(
    program: &Path,
    args: &[String],
    netns_path: &Path,
    log: &Path,
    vm: &str,
) -> Result<tokio::process::Child, Error> {
    let spawn_err = |source| Error::Spawn {
        vm: vm.to_owned(),
        source,
    };
    let ns = std::fs::File::open(netns_path).map_err(spawn_err)?;
    let log_file = std::fs::File::create(log).map_err(spawn_err)?;
    let log_err = log_file.try_clone().map_err(spawn_err)?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0);
    // SAFETY: runs in the forked child before exec; setns(2) is
    // async-signal-safe and `ns` stays open across the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd.spawn().map_err(spawn_err)
}

/// Kills a VMM's whole process group (SIGKILL); callers that need it gone
/// wait on the child or poll `/proc`.
pub fn kill_group(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Whether `pid` is alive and its command line mentions `needle` (guards
/// against pid reuse when adopting).
pub fn process_matches(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// RSS and CPU time of a process from `/proc` (bytes, microseconds).
pub fn process_usage(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 1_000_000 / clock_ticks())
        })
        .unwrap_or(0);
    (rss, cpu)
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(100)
}
