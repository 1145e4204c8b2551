//! `create`: directory, disk overlay, network, VMM process, `vm.create`.
//! The guest does not run until `boot`.

use std::io::Read as _;
use std::path::Path;

use lelantos_core::VmSpec;

use super::super::Error;
use super::super::host::VmDir;
use super::api::Api;
use super::{ChVm, CloudHypervisor, Launcher, Partial, config};
use crate::net::VmNetwork;
use crate::vmm::VmState;

/// qcow2 images start with `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// The format of a template image, for the overlay's backing-format field:
/// `qcow2` by its magic, `raw` otherwise. Naming the format explicitly
/// (rather than letting anything probe it) keeps a raw image whose first
/// bytes happen to look like a header from being misread.
pub(super) fn image_format(path: &Path, vm: &str) -> Result<&'static str, Error> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|source| Error::Prepare {
        vm: vm.to_owned(),
        what: "template image",
        source,
    })?;
    match f.read_exact(&mut magic) {
        Ok(()) if magic == QCOW2_MAGIC => Ok("qcow2"),
        Ok(()) => Ok("raw"),
        Err(source) => Err(Error::Prepare {
            vm: vm.to_owned(),
            what: "template image header",
            source,
        }),
    }
}

/// Fails early, with the path, when a boot artefact is missing (Cloud
/// Hypervisor would only say so later, less clearly).
pub(super) fn check_artefacts(spec: &VmSpec) -> Result<(), Error> {
    let vm = spec.lifecycle_id.as_str();
    let mut wanted = vec![(spec.kernel.as_path(), "kernel")];
    if let Some(i) = &spec.initramfs {
        wanted.push((i.as_path(), "initramfs"));
    }
    wanted.push((spec.rootfs.as_path(), "template image"));
    for (path, what) in wanted {
        if !path.is_file() {
            return Err(Error::Prepare {
                vm: vm.to_owned(),
                what,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    path.display().to_string(),
                ),
            });
        }
    }
    Ok(())
}

impl<L: Launcher> CloudHypervisor<L> {
    pub(super) async fn create_vm(&self, spec: &VmSpec) -> Result<ChVm, Error> {
        check_artefacts(spec)?;
        let id = spec.lifecycle_id.as_str();
        let mut partial = Partial::new(id, VmDir::create(&self.vm_root, id)?);
        match self.create_steps(spec, &mut partial).await {
            Ok((api, net)) => Ok(partial.into_vm(spec, api, net, VmState::Created, None)),
            Err(e) => {
                self.abandon(partial).await;
                Err(e)
            }
        }
    }

    async fn create_steps(
        &self,
        spec: &VmSpec,
        partial: &mut Partial,
    ) -> Result<(Api, VmNetwork), Error> {
        let format = image_format(&spec.rootfs, &partial.id)?;
        self.launcher
            .create_overlay(&spec.rootfs, format, &partial.dir.disk(), &partial.id)
            .await?;
        let (api, net) = self.launch(spec, partial).await?;
        api.create(config::vm_config(spec, &partial.dir, &net)?)
            .await?;
        Ok((api, net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_format_reads_the_magic() {
        let tmp = tempfile::tempdir().unwrap();
        let q = tmp.path().join("a.qcow2");
        let r = tmp.path().join("a.raw");
        let short = tmp.path().join("short");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        std::fs::write(&r, [0u8; 4096]).unwrap();
        std::fs::write(&short, b"QF").unwrap();
        assert_eq!(image_format(&q, "v").unwrap(), "qcow2");
        assert_eq!(image_format(&r, "v").unwrap(), "raw");
        assert!(matches!(
            image_format(&short, "v"),
            Err(Error::Prepare {
                what: "template image header",
                ..
            })
        ));
        assert!(matches!(
            image_format(&tmp.path().join("none"), "v"),
            Err(Error::Prepare {
                what: "template image",
                ..
            })
        ));
    }
}
