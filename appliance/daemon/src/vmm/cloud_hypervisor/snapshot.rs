//! Snapshot directories: what `snapshot` leaves in one, and how `restore`
//! turns one into a source Cloud Hypervisor can restore from.
//!
//! ```text
//!   <snapshot dir>/                      written by
//!     config.json     VM config          Cloud Hypervisor (vm.snapshot)
//!     state.json      device/vCPU state  Cloud Hypervisor
//!     memory-ranges   guest RAM          Cloud Hypervisor
//!     disk.qcow2      the VM's disk layer  this driver (copy, VM paused)
//!     lelantos-snapshot.json  marker     this driver, last: present = complete
//! ```
//!
//! Cloud Hypervisor does not snapshot disks: the guest's page cache in
//! `memory-ranges` refers to blocks on the disk as it was at the pause, so
//! the restored VM must see exactly that disk. The copy is taken while the
//! VM is paused (the state machine only allows snapshots then), after
//! `vm.snapshot`. That the file is complete at that point rests on Cloud
//! Hypervisor flushing its qcow2 metadata cache when the block device
//! pauses (upstream PR #8607, merged mid-2026); releases without it flush
//! only on a guest FLUSH, so their copy can miss writes the guest completed
//! since its last flush. Unverified here, like the rest of this driver.
//!
//! `config.json` names the *old* VM's disk and serial log paths, which live
//! in a directory that is gone by restore time. Restore therefore builds a
//! staging directory in the new VM's own directory: a rewritten
//! `config.json` (disk → the new overlay, serial → the new log; nothing else
//! touched, edited as JSON so fields this driver does not know survive;
//! Cloud Hypervisor's snapshot docs keep this file human-readable precisely
//! so it can be edited between snapshot and restore) and symlinks to every
//! other file Cloud Hypervisor wrote. The snapshot
//! directory itself is never modified, so it can be restored many times and
//! may be read-only.

use std::path::{Path, PathBuf};

use lelantos_core::VmSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::{Error, VmOp, transition};
use super::config::{self, DISK_ID};
use super::{ChVm, CloudHypervisor, Launcher};

/// Cloud Hypervisor's VM config file in a snapshot.
pub const CONFIG_FILE: &str = "config.json";
/// Cloud Hypervisor's device and vCPU state file.
pub const STATE_FILE: &str = "state.json";
/// Cloud Hypervisor's guest memory file.
pub const MEMORY_FILE: &str = "memory-ranges";
/// The disk layer this driver copies in.
pub const DISK_FILE: &str = "disk.qcow2";
/// This driver's marker, written last.
pub const MARKER_FILE: &str = "lelantos-snapshot.json";
/// The staging directory inside a restored VM's directory.
pub const STAGING_DIR: &str = "restore-source";

/// What the marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMarker {
    /// Driver that wrote the snapshot (`cloud-hypervisor`).
    pub driver: String,
    /// Sandbox the VM served.
    pub sandbox_id: String,
    /// The VM's lifecycle id.
    pub lifecycle_id: String,
}

fn snap_err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Snapshot {
        dir: dir.to_owned(),
        reason: reason.into(),
    }
}

/// Copies the VM's disk layer into `dir` (through a temporary name, then
/// fsync'd) and writes the marker that makes the snapshot complete.
pub async fn finish(vm_disk: &Path, dir: &Path, marker: &SnapshotMarker) -> Result<(), Error> {
    let partial = dir.join(format!("{DISK_FILE}.partial"));
    let target = dir.join(DISK_FILE);
    tokio::fs::copy(vm_disk, &partial)
        .await
        .map_err(|e| snap_err(dir, format!("copy disk layer: {e}")))?;
    let sync = |p: PathBuf| async move {
        let f = tokio::fs::File::open(&p).await?;
        f.sync_all().await
    };
    sync(partial.clone())
        .await
        .map_err(|e| snap_err(dir, format!("sync disk copy: {e}")))?;
    tokio::fs::rename(&partial, &target)
        .await
        .map_err(|e| snap_err(dir, format!("rename disk copy: {e}")))?;
    let json = serde_json::to_vec_pretty(marker)
        .map_err(|e| snap_err(dir, format!("encode marker: {e}")))?;
    tokio::fs::write(dir.join(MARKER_FILE), json)
        .await
        .map_err(|e| snap_err(dir, format!("write marker: {e}")))?;
    Ok(())
}

/// Checks that `dir` holds a complete snapshot from this driver.
pub fn check(dir: &Path) -> Result<SnapshotMarker, Error> {
    let bytes = std::fs::read(dir.join(MARKER_FILE)).map_err(|e| {
        snap_err(
            dir,
            format!(
                "no {MARKER_FILE} ({e}): not a complete Cloud Hypervisor snapshot of this driver"
            ),
        )
    })?;
    let marker: SnapshotMarker = serde_json::from_slice(&bytes)
        .map_err(|e| snap_err(dir, format!("bad {MARKER_FILE}: {e}")))?;
    if marker.driver != super::NAME {
        return Err(snap_err(
            dir,
            format!(
                "written by the {} driver, not {}",
                marker.driver,
                super::NAME
            ),
        ));
    }
    for f in [CONFIG_FILE, STATE_FILE, MEMORY_FILE, DISK_FILE] {
        if !dir.join(f).is_file() {
            return Err(snap_err(dir, format!("{f} missing")));
        }
    }
    Ok(marker)
}

/// Rewrites a snapshot's `config.json` for a VM whose disk is `disk` and
/// serial log `serial`, after checking it matches `spec`'s size (a restore
/// cannot change vCPUs or memory, and silently handing back a different VM
/// than asked for would be worse than refusing).
pub fn remap_config(
    mut config: Value,
    disk: &str,
    serial: &str,
    spec: &VmSpec,
) -> Result<Value, String> {
    let vcpus = config["cpus"]["boot_vcpus"].as_u64();
    if vcpus != Some(u64::from(spec.vcpus.get())) {
        return Err(format!(
            "snapshot has {vcpus:?} vCPUs, spec asks for {}",
            spec.vcpus.get()
        ));
    }
    let bytes = config["memory"]["size"].as_u64();
    let want = u64::from(spec.memory.get()) * 1024 * 1024;
    if bytes != Some(want) {
        return Err(format!(
            "snapshot has {bytes:?} bytes of memory, spec asks for {want}"
        ));
    }
    let root = config
        .get_mut("disks")
        .and_then(Value::as_array_mut)
        .and_then(|disks| disks.iter_mut().find(|d| d["id"].as_str() == Some(DISK_ID)))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{CONFIG_FILE} has no disk with id {DISK_ID}"))?;
    root.insert("path".to_owned(), Value::String(disk.to_owned()));
    if let Some(serial_cfg) = config.get_mut("serial").and_then(Value::as_object_mut)
        && serial_cfg.get("mode").and_then(Value::as_str) == Some("File")
    {
        serial_cfg.insert("file".to_owned(), Value::String(serial.to_owned()));
    }
    Ok(config)
}

/// Builds `<vm dir>/restore-source` from the snapshot in `snapshot`: the
/// remapped `config.json` plus symlinks to everything else Cloud Hypervisor
/// wrote (whatever future versions add comes along). Returns its path.
pub fn stage(
    snapshot: &Path,
    vm_dir: &Path,
    disk: &str,
    serial: &str,
    spec: &VmSpec,
) -> Result<PathBuf, Error> {
    let staging = vm_dir.join(STAGING_DIR);
    std::fs::create_dir_all(&staging)
        .map_err(|e| snap_err(snapshot, format!("create staging dir: {e}")))?;
    let raw = std::fs::read(snapshot.join(CONFIG_FILE))
        .map_err(|e| snap_err(snapshot, format!("read config: {e}")))?;
    let config: Value = serde_json::from_slice(&raw)
        .map_err(|e| snap_err(snapshot, format!("parse config: {e}")))?;
    let config =
        remap_config(config, disk, serial, spec).map_err(|reason| snap_err(snapshot, reason))?;
    let json = serde_json::to_vec_pretty(&config)
        .map_err(|e| snap_err(snapshot, format!("encode config: {e}")))?;
    std::fs::write(staging.join(CONFIG_FILE), json)
        .map_err(|e| snap_err(snapshot, format!("write config: {e}")))?;
    let entries =
        std::fs::read_dir(snapshot).map_err(|e| snap_err(snapshot, format!("list: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| snap_err(snapshot, format!("list: {e}")))?;
        let name = entry.file_name();
        if [CONFIG_FILE, DISK_FILE, MARKER_FILE]
            .iter()
            .any(|n| name == *n)
        {
            continue;
        }
        let link = staging.join(&name);
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(snap_err(snapshot, format!("clear {}: {e}", link.display())));
            }
            _ => {}
        }
        std::os::unix::fs::symlink(entry.path(), &link)
            .map_err(|e| snap_err(snapshot, format!("link {}: {e}", link.display())))?;
    }
    Ok(staging)
}

impl<L: Launcher> CloudHypervisor<L> {
    pub(super) async fn snapshot_vm(&self, vm: &mut ChVm, dir: &Path) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Snapshot)?;
        let dir =
            std::path::absolute(dir).map_err(|e| snap_err(dir, format!("resolve path: {e}")))?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| snap_err(&dir, format!("create: {e}")))?;
        // An older snapshot's marker would vouch for a directory this
        // attempt may leave half-rewritten; it goes first, back last.
        match tokio::fs::remove_file(dir.join(MARKER_FILE)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(snap_err(&dir, format!("remove old marker: {e}")));
            }
            _ => {}
        }
        let body = config::snapshot_config(&dir)?;
        let result = vm.api.snapshot(body).await;
        result.map_err(|e| vm.explain(e))?;
        let marker = SnapshotMarker {
            driver: super::NAME.to_owned(),
            sandbox_id: vm.sandbox_id.clone(),
            lifecycle_id: vm.id.clone(),
        };
        finish(&vm.dir.disk(), &dir, &marker).await?;
        tracing::info!(vm = %vm.id, dir = %dir.display(), "snapshot written");
        vm.state = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lelantos_core::{LifecycleId, MemoryMib, NetworkSpec, SandboxId, Vcpus};
    use serde_json::json;

    use super::*;

    fn spec(vcpus: u32, mib: u32) -> VmSpec {
        VmSpec {
            sandbox_id: SandboxId::try_from("s".to_owned()).unwrap(),
            lifecycle_id: LifecycleId::try_from("new".to_owned()).unwrap(),
            vcpus: Vcpus::try_from(vcpus).unwrap(),
            memory: MemoryMib::try_from(mib).unwrap(),
            kernel: "/k".into(),
            initramfs: None,
            rootfs: "/r".into(),
            extra_cmdline: vec![],
            network: NetworkSpec::default(),
        }
    }

    /// Shaped like Cloud Hypervisor's `config.json`: the API's VmConfig plus
    /// internal fields this driver must carry through untouched.
    fn saved() -> Value {
        json!({
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2, "kvm_hyperv": false},
            "memory": {"size": 536870912u64, "shared": false},
            "payload": {"kernel": "/k", "cmdline": "console=ttyS0"},
            "disks": [{"path": "/old/vm/disk.qcow2", "id": "rootfs", "image_type": "Qcow2", "backing_files": true}],
            "net": [{"tap": "tap0", "mac": "06:00:ac:10:00:02", "id": "net0", "fds": null}],
            "serial": {"file": "/old/vm/serial.log", "mode": "File", "iommu": false},
            "console": {"mode": "Off"},
            "preserved_fds": null
        })
    }

    #[test]
    fn remap_changes_disk_and_serial_paths_only() {
        let out = remap_config(
            saved(),
            "/new/vm/disk.qcow2",
            "/new/vm/serial.log",
            &spec(2, 512),
        )
        .unwrap();
        let mut expected = saved();
        expected["disks"][0]["path"] = json!("/new/vm/disk.qcow2");
        expected["serial"]["file"] = json!("/new/vm/serial.log");
        assert_eq!(out, expected);
    }

    #[test]
    fn remap_refuses_a_snapshot_of_another_size_or_without_our_disk() {
        assert!(
            remap_config(saved(), "d", "s", &spec(4, 512))
                .unwrap_err()
                .contains("vCPUs")
        );
        assert!(
            remap_config(saved(), "d", "s", &spec(2, 1024))
                .unwrap_err()
                .contains("memory")
        );
        let mut other = saved();
        other["disks"][0]["id"] = json!("_disk0");
        assert!(
            remap_config(other, "d", "s", &spec(2, 512))
                .unwrap_err()
                .contains("no disk with id rootfs")
        );
    }

    #[test]
    fn staging_links_everything_but_config_disk_and_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("snap");
        let vm = tmp.path().join("vm");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(&vm).unwrap();
        std::fs::write(snap.join(CONFIG_FILE), saved().to_string()).unwrap();
        for f in [
            STATE_FILE,
            MEMORY_FILE,
            DISK_FILE,
            MARKER_FILE,
            "future-file",
        ] {
            std::fs::write(snap.join(f), f).unwrap();
        }
        let staging = stage(
            &snap,
            &vm,
            "/new/disk.qcow2",
            "/new/serial.log",
            &spec(2, 512),
        )
        .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["config.json", "future-file", "memory-ranges", "state.json"]
        );
        assert_eq!(
            std::fs::read_link(staging.join(MEMORY_FILE)).unwrap(),
            snap.join(MEMORY_FILE)
        );
        // Staging twice (a retried restore) replaces the links.
        stage(
            &snap,
            &vm,
            "/new/disk.qcow2",
            "/new/serial.log",
            &spec(2, 512),
        )
        .unwrap();
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(staging.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(cfg["disks"][0]["path"], "/new/disk.qcow2");
        // The snapshot's own config is untouched.
        let orig: Value =
            serde_json::from_slice(&std::fs::read(snap.join(CONFIG_FILE)).unwrap()).unwrap();
        assert_eq!(orig, saved());
    }

    #[test]
    fn check_wants_the_marker_and_every_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(
            matches!(check(dir), Err(Error::Snapshot { reason, .. }) if reason.contains("not a complete"))
        );
        let marker = SnapshotMarker {
            driver: "qemu".into(),
            sandbox_id: "s".into(),
            lifecycle_id: "l".into(),
        };
        std::fs::write(dir.join(MARKER_FILE), serde_json::to_vec(&marker).unwrap()).unwrap();
        assert!(
            matches!(check(dir), Err(Error::Snapshot { reason, .. }) if reason.contains("qemu driver"))
        );
        let marker = SnapshotMarker {
            driver: super::super::NAME.into(),
            ..marker
        };
        std::fs::write(dir.join(MARKER_FILE), serde_json::to_vec(&marker).unwrap()).unwrap();
        assert!(
            matches!(check(dir), Err(Error::Snapshot { reason, .. }) if reason == "config.json missing")
        );
        for f in [CONFIG_FILE, STATE_FILE, MEMORY_FILE, DISK_FILE] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        assert_eq!(check(dir).unwrap(), marker);
    }
}
