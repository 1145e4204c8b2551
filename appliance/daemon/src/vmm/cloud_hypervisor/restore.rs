//! `restore`: a new VM (new directory, namespace and process) from a
//! snapshot directory, running when this returns. See [`super::snapshot`]
//! for how the saved config is pointed at the new disk.
//!
//! On-demand memory restore is strict in Cloud Hypervisor: when it cannot
//! set up userfaultfd it fails the restore rather than falling back. The
//! probe that picked `OnDemand` can be wrong (a seccomp policy, a kernel
//! that creates the fd but refuses a registration), so a restore refused in
//! that mode is retried once from scratch, on a fresh VMM, in `Copy` mode.

use std::path::Path;

use lelantos_core::VmSpec;

use super::super::Error;
use super::super::host::VmDir;
use super::api::Api;
use super::{ChVm, CloudHypervisor, Launcher, MemoryRestoreMode, Partial, config, snapshot};
use crate::net::VmNetwork;
use crate::vmm::VmState;

impl<L: Launcher> CloudHypervisor<L> {
    pub(super) async fn restore_vm(&self, spec: &VmSpec, dir: &Path) -> Result<ChVm, Error> {
        // Absolute: it goes into a file:// URL and a qcow2 backing-file field,
        // both read by processes with other working directories.
        let dir = std::path::absolute(dir).map_err(|e| Error::Snapshot {
            dir: dir.to_owned(),
            reason: format!("resolve path: {e}"),
        })?;
        let marker = snapshot::check(&dir)?;
        let id = spec.lifecycle_id.as_str();
        let mut mode = self.restore_mode;
        loop {
            let mut partial = Partial::new(id, VmDir::create(&self.vm_root, id)?);
            match self.restore_steps(spec, &dir, mode, &mut partial).await {
                Ok((api, net)) => {
                    tracing::info!(vm = %id, from = %marker.lifecycle_id, ?mode, "restored from snapshot");
                    return Ok(partial.into_vm(spec, api, net, VmState::Running, Some(dir)));
                }
                Err(e) => {
                    self.abandon(partial).await;
                    let refused =
                        matches!(&e, Error::Control { request, .. } if request == "vm.restore");
                    if mode == MemoryRestoreMode::OnDemand && refused {
                        tracing::warn!(vm = %id, error = %e, "on-demand restore refused; retrying with a full copy");
                        mode = MemoryRestoreMode::Copy;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn restore_steps(
        &self,
        spec: &VmSpec,
        dir: &Path,
        mode: MemoryRestoreMode,
        partial: &mut Partial,
    ) -> Result<(Api, VmNetwork), Error> {
        // A fresh writable layer over the snapshot's disk copy: the copy is
        // shared by every VM restored from this snapshot and never written.
        let base = dir.join(snapshot::DISK_FILE);
        self.launcher
            .create_overlay(&base, "qcow2", &partial.dir.disk(), &partial.id)
            .await?;
        let disk = config::path_str(&partial.dir.disk(), &partial.id, "disk path")?;
        let serial = config::path_str(&partial.dir.serial_log(), &partial.id, "serial log path")?;
        let staging = snapshot::stage(dir, &partial.dir.path, &disk, &serial, spec)?;
        let (api, net) = self.launch(spec, partial).await?;
        api.restore(config::restore_config(&staging, mode)?).await?;
        Ok((api, net))
    }
}
