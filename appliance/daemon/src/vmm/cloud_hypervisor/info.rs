//! `info`: state from `vm.info`, disk bytes from `vm.counters`, and the
//! VMM process's memory and CPU from `/proc`.

use std::collections::HashMap;

use cloud_hypervisor_client::models;

use super::super::host;
use super::super::{Error, VmInfo, VmState};
use super::{ChVm, CloudHypervisor, Launcher, availability, config};

/// Cloud Hypervisor's view of the VM in ours. `Shutdown` means the guest
/// is off, which for the caller is as good as stopped.
pub(super) fn map_state(s: models::VmState) -> VmState {
    match s {
        models::VmState::Created => VmState::Created,
        models::VmState::Running => VmState::Running,
        models::VmState::Paused => VmState::Paused,
        models::VmState::Shutdown => VmState::Stopped,
    }
}

/// `(read, write)` bytes of the root disk; counters absent count as zero.
pub(super) fn disk_bytes(counters: &HashMap<String, HashMap<String, i64>>) -> (u64, u64) {
    let get = |name: &str| {
        counters
            .get(config::DISK_ID)
            .and_then(|c| c.get(name))
            .and_then(|v| u64::try_from(*v).ok())
            .unwrap_or(0)
    };
    (get("read_bytes"), get("write_bytes"))
}

impl<L: Launcher> CloudHypervisor<L> {
    pub(super) async fn info_vm(&self, vm: &ChVm) -> Result<VmInfo, Error> {
        let pid = vm.process.pid;
        if vm.state == VmState::Stopped {
            return Ok(VmInfo {
                state: VmState::Stopped,
                vmm_pid: None,
                vmm_rss_bytes: 0,
                vmm_cpu_micros: 0,
                disk_write_bytes: 0,
                disk_read_bytes: 0,
                accelerator: "kvm".to_owned(),
            });
        }
        let dead = |e: Error| match pid {
            Some(p) if !host::process_matches(p, availability::BINARY_NAME) => Error::Exited {
                vm: vm.id.clone(),
                status: "process gone".to_owned(),
            },
            _ => e,
        };
        let info = vm.api.info().await.map_err(dead)?;
        let counters = vm.api.counters().await.map_err(dead)?;
        let state = map_state(info.state);
        if state != vm.state {
            tracing::warn!(vm = %vm.id, ours = ?vm.state, theirs = ?state, "cloud hypervisor reports another state");
        }
        let (disk_read_bytes, disk_write_bytes) = disk_bytes(&counters);
        let (vmm_rss_bytes, vmm_cpu_micros) = pid.map(host::process_usage).unwrap_or((0, 0));
        Ok(VmInfo {
            state,
            vmm_pid: pid,
            vmm_rss_bytes,
            vmm_cpu_micros,
            disk_write_bytes,
            disk_read_bytes,
            accelerator: "kvm".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_counters_come_from_the_root_disk_only() {
        let mut c: HashMap<String, HashMap<String, i64>> = HashMap::new();
        c.insert(
            "rootfs".into(),
            HashMap::from([("read_bytes".into(), 4096), ("write_bytes".into(), 512)]),
        );
        c.insert("net0".into(), HashMap::from([("rx_bytes".into(), 9)]));
        assert_eq!(disk_bytes(&c), (4096, 512));
        c.insert("rootfs".into(), HashMap::from([("read_bytes".into(), -1)]));
        assert_eq!(disk_bytes(&c), (0, 0));
        assert_eq!(disk_bytes(&HashMap::new()), (0, 0));
    }

    #[test]
    fn every_cloud_hypervisor_state_maps() {
        assert_eq!(map_state(models::VmState::Created), VmState::Created);
        assert_eq!(map_state(models::VmState::Running), VmState::Running);
        assert_eq!(map_state(models::VmState::Paused), VmState::Paused);
        assert_eq!(map_state(models::VmState::Shutdown), VmState::Stopped);
    }
}
