//! The request bodies this driver sends, built in one place so the contract
//! tests can check every one of them against Cloud Hypervisor's OpenAPI
//! schema without a VMM (see `tests/cloud_hypervisor_api.rs`).
//!
//! Nothing here does IO: paths in, `cloud-hypervisor-client` models out.
//! Paths become JSON strings, so a path that is not UTF-8 is refused here
//! rather than mangled.

use std::net::Ipv4Addr;
use std::path::Path;

use cloud_hypervisor_client::models;
use lelantos_core::VmSpec;
use serde::Serialize;

use super::super::Error;
use super::super::host::VmDir;
use crate::net::{PREFIX, TAP, TAP_IP, VmNetwork};

/// Kernel arguments every guest gets before the network and template ones:
/// the serial port is the only console, and a panicking guest reboots at
/// once (Cloud Hypervisor then resets it) instead of hanging silently.
pub const BASE_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

pub use crate::net::GUEST_MAC;

/// Device id of the root disk. Set explicitly (instead of Cloud Hypervisor's
/// generated `_disk0`) because `vm.counters` is keyed by it and the restore
/// path finds the disk to remap by it.
pub const DISK_ID: &str = "rootfs";

/// Device id of the NIC (explicit for the same reasons as [`DISK_ID`]).
pub const NET_ID: &str = "net0";

/// Entropy source handed to the guest as virtio-rng: envd mints tokens and
/// TLS material early in boot, before the guest's own pool has filled.
pub const RNG_SOURCE: &str = "/dev/urandom";

/// How `vm.restore` brings guest memory back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MemoryRestoreMode {
    /// Read the whole `memory-ranges` file into guest RAM before the guest
    /// runs. Works everywhere; restore time grows with memory size.
    Copy,
    /// Map nothing up front and fault pages in from `memory-ranges` on first
    /// touch (userfaultfd). Fast restore, but the snapshot's memory file
    /// must stay in place for the life of the restored VM.
    OnDemand,
}

impl MemoryRestoreMode {
    fn to_model(self) -> models::MemoryRestoreMode {
        match self {
            Self::Copy => models::MemoryRestoreMode::Copy,
            Self::OnDemand => models::MemoryRestoreMode::OnDemand,
        }
    }
}

/// The tap's netmask, from the link prefix `net` configures.
pub fn tap_netmask() -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(PREFIX)).unwrap_or(0))
}

/// A path as the JSON string Cloud Hypervisor expects.
pub fn path_str(path: &Path, vm: &str, what: &'static str) -> Result<String, Error> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Prepare {
            vm: vm.to_owned(),
            what,
            source: std::io::Error::other(format!("path is not UTF-8: {}", path.display())),
        })
}

/// `file://` URL of a directory, as `vm.snapshot` / `vm.restore` take it.
/// Cloud Hypervisor strips the scheme and uses the rest verbatim (no
/// percent-decoding), so the path is not escaped; it must be absolute.
pub fn file_url(dir: &Path) -> Result<String, Error> {
    if !dir.is_absolute() {
        return Err(Error::Snapshot {
            dir: dir.to_owned(),
            reason: "directory path must be absolute".to_owned(),
        });
    }
    let s = dir.to_str().ok_or_else(|| Error::Snapshot {
        dir: dir.to_owned(),
        reason: "directory path is not UTF-8".to_owned(),
    })?;
    Ok(format!("file://{s}"))
}

/// The full kernel command line for a fresh boot.
pub fn cmdline(spec: &VmSpec, net: &VmNetwork) -> String {
    let mut parts = vec![BASE_CMDLINE.to_owned()];
    parts.extend(net.guest_cmdline());
    parts.extend(spec.extra_cmdline.iter().cloned());
    parts.join(" ")
}

/// The `vm.create` body for `spec`, with its disk, serial log and tap in
/// `dir` and `net`.
///
/// Memory is private anonymous RAM (`shared` unset): nothing else maps the
/// guest's memory, and snapshots write it out through `vm.snapshot`.
pub fn vm_config(spec: &VmSpec, dir: &VmDir, net: &VmNetwork) -> Result<models::VmConfig, Error> {
    let vm = spec.lifecycle_id.as_str();
    let payload = models::PayloadConfig {
        kernel: Some(path_str(&spec.kernel, vm, "kernel path")?),
        initramfs: spec
            .initramfs
            .as_deref()
            .map(|p| path_str(p, vm, "initramfs path"))
            .transpose()?,
        cmdline: Some(cmdline(spec, net)),
        ..models::PayloadConfig::new()
    };
    // Vcpus is 1..=8 and MemoryMib 128..=8192 (validated in core), so these
    // conversions cannot saturate; saturating keeps the function total.
    let vcpus = i32::try_from(spec.vcpus.get()).unwrap_or(i32::MAX);
    let memory_bytes =
        i64::try_from(u64::from(spec.memory.get()) * 1024 * 1024).unwrap_or(i64::MAX);
    let disk = models::DiskConfig {
        path: Some(path_str(&dir.disk(), vm, "disk path")?),
        id: Some(DISK_ID.to_owned()),
        image_type: Some(models::ImageType::Qcow2),
        // The overlay's whole point is its backing file (the template image,
        // or a snapshot's disk layer); Cloud Hypervisor refuses backing files
        // unless told to open them.
        backing_files: Some(true),
        ..models::DiskConfig::new()
    };
    let nic = models::NetConfig {
        // The tap already exists (made by `VmNetwork::create`, address and
        // all). Cloud Hypervisor means to leave an existing tap's address
        // alone, but decides "existing" by looking in /sys/class/net, and
        // sysfs shows the interfaces of the namespace it was mounted in:
        // the host's, not the VM's netns the VMM runs in. So it may well
        // assign `ip`/`mask`, which default to 192.168.249.1/24 when unsent
        // and would replace the tap's address. Sending the address the tap
        // already has makes that assignment a no-op either way.
        tap: Some(TAP.to_owned()),
        ip: Some(TAP_IP.to_string()),
        mask: Some(tap_netmask().to_string()),
        // num_queues stays at its default, one queue pair: the tap was made
        // without multi_queue, and Cloud Hypervisor refuses a mismatch.
        mac: Some(GUEST_MAC.to_owned()),
        id: Some(NET_ID.to_owned()),
        ..models::NetConfig::new()
    };
    let serial = models::SerialConfig {
        file: Some(path_str(&dir.serial_log(), vm, "serial log path")?),
        ..models::SerialConfig::new(models::ConsoleMode::File)
    };
    Ok(models::VmConfig {
        cpus: Some(models::CpusConfig::new(vcpus, vcpus)),
        memory: Some(models::MemoryConfig::new(memory_bytes)),
        disks: Some(vec![disk]),
        net: Some(vec![nic]),
        rng: Some(models::RngConfig::new(RNG_SOURCE.to_owned())),
        serial: Some(serial),
        console: Some(models::ConsoleConfig::new(models::ConsoleMode::Off)),
        ..models::VmConfig::new(payload)
    })
}

/// The `vm.snapshot` body: write into `dir` (absolute, existing).
pub fn snapshot_config(dir: &Path) -> Result<models::VmSnapshotConfig, Error> {
    Ok(models::VmSnapshotConfig {
        destination_url: Some(file_url(dir)?),
    })
}

/// The `vm.restore` body: restore from `dir` (absolute) and start running.
///
/// `prefault` stays off: with [`MemoryRestoreMode::OnDemand`] Cloud
/// Hypervisor refuses it, and with `Copy` every page is written anyway.
pub fn restore_config(dir: &Path, mode: MemoryRestoreMode) -> Result<models::RestoreConfig, Error> {
    Ok(models::RestoreConfig {
        prefault: Some(false),
        memory_restore_mode: Some(mode.to_model()),
        resume: Some(true),
        ..models::RestoreConfig::new(file_url(dir)?)
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use lelantos_core::{LifecycleId, MemoryMib, NetworkSpec, SandboxId, Vcpus};

    use super::*;

    fn spec(initramfs: bool) -> VmSpec {
        VmSpec {
            sandbox_id: SandboxId::try_from("sbx-1".to_owned()).unwrap(),
            lifecycle_id: LifecycleId::try_from("life-1".to_owned()).unwrap(),
            vcpus: Vcpus::try_from(2u32).unwrap(),
            memory: MemoryMib::try_from(512u32).unwrap(),
            kernel: PathBuf::from("/images/t/vmlinuz"),
            initramfs: initramfs.then(|| PathBuf::from("/images/t/initrd.img")),
            rootfs: PathBuf::from("/images/t/rootfs.ext4"),
            extra_cmdline: vec!["root=/dev/vda".to_owned()],
            network: NetworkSpec { egress: true },
        }
    }

    fn net() -> VmNetwork {
        VmNetwork {
            netns: VmNetwork::netns_name("life-1"),
            egress: true,
        }
    }

    #[test]
    fn create_body_maps_the_spec() {
        let dir = VmDir {
            path: PathBuf::from("/var/lib/lelantos/vms/life-1"),
        };
        let c = vm_config(&spec(true), &dir, &net()).unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["cpus"],
            serde_json::json!({"boot_vcpus": 2, "max_vcpus": 2})
        );
        assert_eq!(
            v["memory"],
            serde_json::json!({"size": 512u64 * 1024 * 1024})
        );
        assert_eq!(v["payload"]["kernel"], "/images/t/vmlinuz");
        assert_eq!(v["payload"]["initramfs"], "/images/t/initrd.img");
        let cmdline = v["payload"]["cmdline"].as_str().unwrap();
        assert!(cmdline.starts_with(
            "console=ttyS0 panic=-1 quiet envd.ip=169.254.0.21/30 envd.gw=169.254.0.22"
        ));
        assert!(
            cmdline.ends_with(" envd.dns=1.1.1.1 root=/dev/vda"),
            "{cmdline}"
        );
        let disk = &v["disks"][0];
        assert_eq!(disk["path"], "/var/lib/lelantos/vms/life-1/disk.qcow2");
        assert_eq!(disk["image_type"], "Qcow2");
        assert_eq!(disk["backing_files"], true);
        assert_eq!(disk["id"], DISK_ID);
        assert_eq!(
            v["net"][0],
            serde_json::json!({"tap": "tap0", "ip": "169.254.0.22", "mask": "255.255.255.252",
                               "mac": GUEST_MAC, "id": NET_ID})
        );
        assert_eq!(
            v["serial"],
            serde_json::json!({"mode": "File", "file": "/var/lib/lelantos/vms/life-1/serial.log"})
        );
        assert_eq!(v["console"], serde_json::json!({"mode": "Off"}));
        assert!(
            v["memory"].get("shared").is_none(),
            "private memory: nothing else maps it"
        );
    }

    #[test]
    fn create_body_omits_a_missing_initramfs() {
        let dir = VmDir {
            path: PathBuf::from("/v/life-1"),
        };
        let v = serde_json::to_value(vm_config(&spec(false), &dir, &net()).unwrap()).unwrap();
        assert!(v["payload"].get("initramfs").is_none());
    }

    #[test]
    fn non_utf8_paths_are_refused_not_mangled() {
        use std::os::unix::ffi::OsStrExt as _;
        let mut s = spec(false);
        s.kernel = PathBuf::from(std::ffi::OsStr::from_bytes(b"/k/\xff"));
        let dir = VmDir {
            path: PathBuf::from("/v/life-1"),
        };
        assert!(matches!(
            vm_config(&s, &dir, &net()),
            Err(Error::Prepare {
                what: "kernel path",
                ..
            })
        ));
    }

    #[test]
    fn snapshot_and_restore_urls_are_plain_file_urls() {
        let s = snapshot_config(Path::new("/snaps/a b")).unwrap();
        assert_eq!(s.destination_url.as_deref(), Some("file:///snaps/a b"));
        let r = restore_config(Path::new("/snaps/x"), MemoryRestoreMode::OnDemand).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"source_url": "file:///snaps/x", "prefault": false,
                               "memory_restore_mode": "OnDemand", "resume": true})
        );
        assert!(matches!(
            snapshot_config(Path::new("rel/dir")),
            Err(Error::Snapshot { .. })
        ));
    }
}
