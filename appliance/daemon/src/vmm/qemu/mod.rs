//! QEMU `microvm` driver: one `qemu-system-x86_64` process per VM, driven
//! over QMP. It runs everywhere QEMU does — with KVM when the probe boot
//! works ([`probe`]), with TCG otherwise — which makes it the driver CI
//! boots real guests with.
//!
//! Mapping onto the VM life cycle: create = start QEMU with `-S` (guest
//! held before its first instruction); boot/resume = `cont`; pause =
//! `stop`; snapshot = migrate the paused VM to a file and keep a copy of its
//! disk layer; restore = a new QEMU with `-incoming` from that file over a
//! new disk layer backed by the copy. A restored VM reuses the same tap name
//! and guest address (every VM has its own namespace), so its network state
//! comes back intact.

pub mod probe;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lelantos_core::VmSpec;
use serde::{Deserialize, Serialize};
use serde_json::json;

use self::probe::Accel;
use self::qmp::Qmp;
use super::host::{self, VmDir, VmRecord};
use super::{Error, VmBackend, VmInfo, VmOp, VmState, transition};
use crate::net::{GUEST_MAC, VmNetwork};

/// Driver name in records and logs.
pub const NAME: &str = "qemu";
/// How long QEMU may take to open its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Driver configuration.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// `qemu-system-x86_64`.
    pub binary: PathBuf,
    /// Where VM directories live.
    pub vm_root: PathBuf,
    /// The accelerator (decided once by [`probe::probe`] or by the operator).
    pub accel: Accel,
}

/// The QEMU driver.
#[derive(Debug, Clone)]
pub struct Qemu {
    config: QemuConfig,
}

/// Machine settings a snapshot must be restored with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Driver that wrote it.
    pub driver: String,
    /// Accelerator it ran under.
    pub accel: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Kernel, initramfs and command line of the original boot.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// A VM run by QEMU.
#[derive(Debug)]
pub struct QemuVm {
    /// Lifecycle id.
    pub id: String,
    /// Its directory.
    pub dir: VmDir,
    /// Its network namespace.
    pub net: VmNetwork,
    /// Where it is in its life.
    pub state: VmState,
    /// The QEMU process id.
    pub pid: u32,
    child: Option<tokio::process::Child>,
    qmp: tokio::sync::Mutex<Qmp>,
    accel: Accel,
    meta: SnapshotMeta,
}

impl QemuVm {
    /// The serial console log (kept for failed-test diagnostics).
    pub fn serial_log(&self) -> PathBuf {
        self.dir.serial_log()
    }
}

impl Qemu {
    /// A driver with a fixed accelerator.
    pub fn new(config: QemuConfig) -> Result<Self, Error> {
        if !config.binary.exists() {
            return Err(Error::Unavailable(format!(
                "{} not found",
                config.binary.display()
            )));
        }
        std::fs::create_dir_all(&config.vm_root).map_err(|source| Error::Prepare {
            vm: "-".to_owned(),
            what: "vm root directory",
            source,
        })?;
        Ok(Self { config })
    }

    /// Finds `qemu-system-x86_64` on PATH.
    pub fn find_binary() -> Option<PathBuf> {
        which("qemu-system-x86_64")
    }

    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.config.accel
    }

    fn args(&self, dir: &VmDir, meta: &SnapshotMeta, disk_format: &str) -> Vec<String> {
        let accel = self.config.accel;
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("lelantos,debug-threads=on"),
            "-M".into(),
            format!("microvm,accel={},x-option-roms=off,rtc=on", accel.as_str()),
            "-cpu".into(),
            accel.cpu().into(),
            "-smp".into(),
            meta.vcpus.to_string(),
            "-m".into(),
            meta.memory_mib.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-S".into(),
            "-kernel".into(),
            meta.kernel.display().to_string(),
            "-append".into(),
            meta.cmdline.clone(),
            "-drive".into(),
            format!(
                "id=d0,file={},format={disk_format},if=none,cache=unsafe",
                dir.disk().display()
            ),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
            "-netdev".into(),
            format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                crate::net::TAP
            ),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
            "-serial".into(),
            format!("file:{}", dir.serial_log().display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", dir.control_socket().display()),
        ];
        if let Some(initrd) = &meta.initramfs {
            a.push("-initrd".into());
            a.push(initrd.display().to_string());
        }
        a
    }

    async fn launch(
        &self,
        id: &str,
        sandbox_id: &str,
        dir: VmDir,
        net: VmNetwork,
        meta: SnapshotMeta,
        incoming: Option<&Path>,
    ) -> Result<QemuVm, Error> {
        let mut args = self.args(&dir, &meta, "qcow2");
        if let Some(state) = incoming {
            args.push("-incoming".into());
            args.push(format!("exec:cat {}", shell_quote(state)));
        }
        let child = host::spawn_vmm(&self.config.binary, &args, &net.path(), &dir.vmm_log(), id)?;
        let pid = child.id().unwrap_or_default();
        dir.write_record(&VmRecord {
            driver: NAME.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
            lifecycle_id: id.to_owned(),
            vmm_pid: Some(pid),
            netns: net.netns.clone(),
            egress: net.egress,
        })?;
        std::fs::write(
            dir.path.join("machine.json"),
            serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )
        .map_err(|source| Error::Prepare {
            vm: id.to_owned(),
            what: "machine record",
            source,
        })?;
        let qmp = match Qmp::connect(&dir.control_socket(), Instant::now() + START_TIMEOUT).await {
            Ok(q) => q,
            Err(e) => {
                let log = std::fs::read_to_string(dir.vmm_log()).unwrap_or_default();
                host::kill_group(pid);
                return Err(Error::Control {
                    vm: id.to_owned(),
                    request: "connect qmp".to_owned(),
                    message: format!("{e}; qemu said: {}", log.trim()),
                });
            }
        };
        Ok(QemuVm {
            id: id.to_owned(),
            dir,
            net,
            state: VmState::Created,
            pid,
            child: Some(child),
            qmp: tokio::sync::Mutex::new(qmp),
            accel: self.config.accel,
            meta,
        })
    }

    async fn control(
        vm: &QemuVm,
        command: &str,
        args: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, Error> {
        vm.qmp
            .lock()
            .await
            .execute(command, args)
            .await
            .map_err(|e| Error::Control {
                vm: vm.id.clone(),
                request: command.to_owned(),
                message: e.to_string(),
            })
    }

    fn cmdline(&self, spec: &VmSpec, net: &VmNetwork) -> String {
        let mut parts: Vec<String> = vec![
            "console=ttyS0".into(),
            "quiet".into(),
            "panic=-1".into(),
            "nokaslr".into(),
        ];
        if self.config.accel == Accel::Tcg {
            parts.extend(tcg_clock_args());
        }
        parts.extend(net.guest_cmdline());
        parts.push(format!("envd.hostname={}", spec.sandbox_id));
        parts.extend(spec.extra_cmdline.iter().cloned());
        parts.join(" ")
    }

    async fn prepare(&self, spec: &VmSpec) -> Result<(VmDir, VmNetwork), Error> {
        let id = spec.lifecycle_id.as_str();
        let dir = VmDir::create(&self.config.vm_root, id)?;
        match VmNetwork::create(id, spec.network.egress).await {
            Ok(net) => Ok((dir, net)),
            Err(source) => {
                let _ = dir.remove();
                Err(Error::Network {
                    vm: id.to_owned(),
                    source,
                })
            }
        }
    }

    /// Grows the virtual size of a created (not yet booted) VM's disk to
    /// `bytes`, so the guest sees the larger disk from its first probe (the
    /// filesystem on it is grown by the guest, e.g. `resize2fs`).
    pub async fn resize_disk(&self, vm: &QemuVm, bytes: u64) -> Result<(), Error> {
        if vm.state != VmState::Created {
            return Err(Error::WrongState {
                op: VmOp::Boot,
                state: vm.state,
            });
        }
        Self::control(
            vm,
            "block_resize",
            Some(json!({ "device": "d0", "size": bytes })),
        )
        .await
        .map(drop)
    }

    /// Writes the VM's whole disk (base plus its writes) to `dest` as a
    /// sparse raw image. The VM must be paused: `stop` flushes QEMU's qcow2
    /// metadata to the file (even with `cache=unsafe`), so the overlay read
    /// here is consistent while QEMU still holds it open.
    pub async fn export_disk(&self, vm: &QemuVm, dest: &Path) -> Result<(), Error> {
        if vm.state != VmState::Paused {
            return Err(Error::WrongState {
                op: VmOp::Snapshot,
                state: vm.state,
            });
        }
        let failed = |source| Error::Prepare {
            vm: vm.id.clone(),
            what: "disk export (qemu-img convert)",
            source,
        };
        // -U: QEMU holds the image lock; reading a paused VM's disk is safe.
        let out = tokio::process::Command::new("qemu-img")
            .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
            .arg(vm.dir.disk())
            .arg(dest)
            .output()
            .await
            .map_err(failed)?;
        if !out.status.success() {
            return Err(failed(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            )));
        }
        Ok(())
    }

    /// Cleans or adopts what a previous daemon left behind: VMs whose QEMU
    /// still runs are adopted (returned), anything else — dead VMs' dirs,
    /// empty namespaces — is removed. Returns (adopted, cleaned).
    pub async fn recover(&self) -> Result<(Vec<QemuVm>, usize), Error> {
        let mut adopted = Vec::new();
        let mut cleaned = 0;
        let mut live_netns = Vec::new();
        let entries = std::fs::read_dir(&self.config.vm_root).map_err(|source| Error::Prepare {
            vm: "-".to_owned(),
            what: "vm root listing",
            source,
        })?;
        for entry in entries.flatten() {
            let dir = VmDir { path: entry.path() };
            let record = dir.read_record();
            let alive = record
                .as_ref()
                .and_then(|r| r.vmm_pid)
                .is_some_and(|pid| host::process_matches(pid, &dir.path.display().to_string()));
            match (record, alive) {
                (Some(r), true) => match self.adopt(&dir, &r).await {
                    Ok(vm) => {
                        live_netns.push(r.netns.clone());
                        adopted.push(vm);
                    }
                    Err(e) => {
                        tracing::warn!(vm = %r.lifecycle_id, error = %e, "could not adopt; cleaning up");
                        if let Some(pid) = r.vmm_pid {
                            host::kill_group(pid);
                        }
                        Self::clean(&dir, Some(&r)).await;
                        cleaned += 1;
                    }
                },
                (record, _) => {
                    Self::clean(&dir, record.as_ref()).await;
                    cleaned += 1;
                }
            }
        }
        for netns in crate::net::list_owned().await.unwrap_or_default() {
            // A namespace with processes inside belongs to a live VM of
            // another daemon on this host (a second data dir, a test run):
            // only empty ones are ours to sweep.
            if !live_netns.contains(&netns) && !crate::net::has_processes(&netns).await {
                let _ = VmNetwork {
                    netns,
                    egress: false,
                }
                .destroy()
                .await;
                cleaned += 1;
            }
        }
        Ok((adopted, cleaned))
    }

    async fn clean(dir: &VmDir, record: Option<&VmRecord>) {
        if let Some(r) = record {
            let _ = VmNetwork {
                netns: r.netns.clone(),
                egress: r.egress,
            }
            .destroy()
            .await;
        }
        let _ = dir.remove();
    }

    async fn adopt(&self, dir: &VmDir, r: &VmRecord) -> Result<QemuVm, Error> {
        let meta: SnapshotMeta = std::fs::read(dir.path.join("machine.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Error::Snapshot {
                dir: dir.path.clone(),
                reason: "machine.json missing".to_owned(),
            })?;
        let mut qmp = Qmp::connect(
            &dir.control_socket(),
            Instant::now() + Duration::from_secs(2),
        )
        .await
        .map_err(|e| Error::Control {
            vm: r.lifecycle_id.clone(),
            request: "connect qmp".into(),
            message: e.to_string(),
        })?;
        let status = qmp.status().await.map_err(|e| Error::Control {
            vm: r.lifecycle_id.clone(),
            request: "query-status".into(),
            message: e.to_string(),
        })?;
        let state = match status.as_str() {
            "running" => VmState::Running,
            "prelaunch" => VmState::Created,
            _ => VmState::Paused,
        };
        let accel = if meta.accel == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        Ok(QemuVm {
            id: r.lifecycle_id.clone(),
            dir: dir.clone(),
            net: VmNetwork {
                netns: r.netns.clone(),
                egress: r.egress,
            },
            state,
            pid: r.vmm_pid.unwrap_or_default(),
            child: None,
            qmp: tokio::sync::Mutex::new(qmp),
            accel,
            meta,
        })
    }
}

impl VmBackend for Qemu {
    type Vm = QemuVm;

    fn name(&self) -> &'static str {
        NAME
    }

    async fn create(&self, spec: &VmSpec) -> Result<QemuVm, Error> {
        let id = spec.lifecycle_id.as_str();
        let (dir, net) = self.prepare(spec).await?;
        // Whatever fails from here on releases the namespace and directory.
        let release = async |e: Error| {
            let _ = net.destroy().await;
            let _ = dir.remove();
            e
        };
        if let Err(e) = host::create_overlay(&spec.rootfs, "raw", &dir.disk(), id).await {
            return Err(release(e).await);
        }
        let meta = SnapshotMeta {
            driver: NAME.to_owned(),
            accel: self.config.accel.as_str().to_owned(),
            vcpus: spec.vcpus.get(),
            memory_mib: spec.memory.get(),
            kernel: spec.kernel.clone(),
            initramfs: spec.initramfs.clone(),
            cmdline: self.cmdline(spec, &net),
        };
        match self
            .launch(
                id,
                spec.sandbox_id.as_str(),
                dir.clone(),
                net.clone(),
                meta,
                None,
            )
            .await
        {
            Ok(vm) => Ok(vm),
            Err(e) => Err(release(e).await),
        }
    }

    async fn boot(&self, vm: &mut QemuVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Boot)?;
        Self::control(vm, "cont", None).await?;
        vm.state = next;
        Ok(())
    }

    async fn pause(&self, vm: &mut QemuVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Pause)?;
        Self::control(vm, "stop", None).await?;
        vm.state = next;
        Ok(())
    }

    async fn resume(&self, vm: &mut QemuVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Resume)?;
        Self::control(vm, "cont", None).await?;
        vm.state = next;
        Ok(())
    }

    async fn snapshot(&self, vm: &mut QemuVm, dir: &Path) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Snapshot)?;
        let snap_err = |reason: String| Error::Snapshot {
            dir: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| snap_err(format!("create: {e}")))?;
        let state_file = dir.join("memory.state");
        Self::control(
            vm,
            "migrate",
            Some(json!({ "uri": format!("exec:cat > {}", shell_quote(&state_file)) })),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let info = Self::control(vm, "query-migrate", None).await?;
            match info["status"].as_str().unwrap_or_default() {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(snap_err(format!(
                        "migration {}",
                        info["error-desc"].as_str().unwrap_or("failed")
                    )));
                }
                _ if Instant::now() > deadline => {
                    return Err(snap_err("migration timed out".into()));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        // The disk layer belongs with the memory image: copy it while the
        // guest is still paused, so both describe the same instant.
        tokio::fs::copy(vm.dir.disk(), dir.join("disk.qcow2"))
            .await
            .map_err(|e| snap_err(format!("copy disk: {e}")))?;
        let meta = serde_json::to_vec_pretty(&vm.meta).map_err(|e| snap_err(e.to_string()))?;
        std::fs::write(dir.join("machine.json"), meta)
            .map_err(|e| snap_err(format!("write machine.json: {e}")))?;
        vm.state = next;
        Ok(())
    }

    async fn restore(&self, spec: &VmSpec, dir: &Path) -> Result<QemuVm, Error> {
        let snap_err = |reason: String| Error::Snapshot {
            dir: dir.to_path_buf(),
            reason,
        };
        let meta: SnapshotMeta = std::fs::read(dir.join("machine.json"))
            .map_err(|e| snap_err(format!("machine.json: {e}")))
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| snap_err(format!("machine.json: {e}")))
            })?;
        if meta.driver != NAME {
            return Err(snap_err(format!("written by driver {}", meta.driver)));
        }
        for piece in ["memory.state", "disk.qcow2"] {
            if !dir.join(piece).exists() {
                return Err(snap_err(format!("{piece} missing")));
            }
        }
        let id = spec.lifecycle_id.as_str();
        let (vm_dir, net) = self.prepare(spec).await?;
        host::create_overlay(&dir.join("disk.qcow2"), "qcow2", &vm_dir.disk(), id).await?;
        let mut vm = match self
            .launch(
                id,
                spec.sandbox_id.as_str(),
                vm_dir.clone(),
                net.clone(),
                meta,
                Some(&dir.join("memory.state")),
            )
            .await
        {
            Ok(vm) => vm,
            Err(e) => {
                let _ = net.destroy().await;
                let _ = vm_dir.remove();
                return Err(e);
            }
        };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let status = vm
                .qmp
                .lock()
                .await
                .status()
                .await
                .map_err(|e| Error::Control {
                    vm: id.to_owned(),
                    request: "query-status".into(),
                    message: e.to_string(),
                })?;
            match status.as_str() {
                "inmigrate" if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                "paused" | "prelaunch" | "postmigrate" | "restore-vm" => break,
                other => {
                    let _ = self.shutdown(&mut vm).await;
                    return Err(snap_err(format!(
                        "incoming migration ended in state {other}"
                    )));
                }
            }
        }
        vm.state = VmState::Paused;
        self.resume(&mut vm).await?;
        Ok(vm)
    }

    async fn shutdown(&self, vm: &mut QemuVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Shutdown)?;
        if vm.state != VmState::Stopped {
            let _ = vm.qmp.lock().await.execute("quit", None).await;
            let exited = match vm.child.as_mut() {
                Some(child) => tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_ok(),
                None => false,
            };
            if !exited {
                host::kill_group(vm.pid);
                if let Some(child) = vm.child.as_mut() {
                    let _ = child.wait().await;
                }
            }
            vm.net.destroy().await.map_err(|source| Error::Network {
                vm: vm.id.clone(),
                source,
            })?;
            vm.dir.remove().map_err(|source| Error::Prepare {
                vm: vm.id.clone(),
                what: "remove vm directory",
                source,
            })?;
        }
        vm.state = next;
        Ok(())
    }

    async fn info(&self, vm: &QemuVm) -> Result<VmInfo, Error> {
        let (rss, cpu) = host::process_usage(vm.pid);
        let (disk_read_bytes, disk_write_bytes) = if vm.state == VmState::Stopped {
            (0, 0)
        } else {
            let stats = Self::control(vm, "query-blockstats", None).await?;
            let s = &stats[0]["stats"];
            (
                s["rd_bytes"].as_u64().unwrap_or(0),
                s["wr_bytes"].as_u64().unwrap_or(0),
            )
        };
        Ok(VmInfo {
            state: vm.state,
            vmm_pid: Some(vm.pid),
            vmm_rss_bytes: rss,
            vmm_cpu_micros: cpu,
            disk_read_bytes,
            disk_write_bytes,
            accelerator: vm.accel.as_str().to_owned(),
        })
    }
}

/// Under TCG on a loaded host the guest's PIT-based TSC calibration can
/// fail ("Unable to calibrate against PIT"; microvm has no HPET or PM timer
/// to fall back on) and boot then stalls. The emulated TSC runs at the
/// host's rate, so hand the guest that rate and skip the calibrations.
fn tcg_clock_args() -> Vec<String> {
    let khz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find_map(|l| l.strip_prefix("cpu MHz"))
            .and_then(|v| {
                v.trim_start_matches([' ', '\t', ':'])
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
    });
    match khz {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(mhz) if mhz > 0.0 => {
            let khz = (mhz * 1000.0) as u64;
            // loops per jiffy at Debian's HZ=250, from the same clock.
            vec![
                format!("tsc_early_khz={khz}"),
                format!("lpj={}", khz * 1000 / 250),
            ]
        }
        _ => vec!["lpj=10000000".to_owned()],
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Looks `name` up on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
