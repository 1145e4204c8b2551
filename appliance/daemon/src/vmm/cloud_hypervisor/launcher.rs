//! The host side effects the driver needs, behind one small trait: making
//! the disk overlay, the network namespace, starting and killing the VMM.
//!
//! [`SystemLauncher`] is the real one (the shared helpers in `vmm::host` and
//! `net`). The trait exists so the contract tests can run the *whole* driver
//! — state machine, request building, the real HTTP client, snapshot
//! staging — against a recording API server without root, namespaces or a
//! VMM binary (the fakeable OS boundary of STYLE.md §8.6). A test launcher
//! is not a VMM and nothing in the daemon uses one.

use std::future::Future;
use std::path::Path;

use super::super::Error;
use super::super::host;
use crate::net::VmNetwork;

/// A started VMM process.
#[derive(Debug, Default)]
pub struct VmmProcess {
    /// Its pid (also its process group id: it leads its own group).
    pub pid: Option<u32>,
    /// The child handle, for reaping and exit status.
    pub child: Option<tokio::process::Child>,
}

/// Host operations of the driver.
pub trait Launcher: Send + Sync {
    /// Creates `overlay` (qcow2) backed by `base` of format `base_format`.
    fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        overlay: &Path,
        vm: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Creates the VM's network namespace with its tap.
    fn create_network(
        &self,
        vm: &str,
        egress: bool,
    ) -> impl Future<Output = Result<VmNetwork, Error>> + Send;

    /// Removes the VM's network namespace.
    fn destroy_network(
        &self,
        vm: &str,
        net: &VmNetwork,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Starts `program args` inside `net`, output to `log`.
    fn spawn(
        &self,
        program: &Path,
        args: &[String],
        net: &VmNetwork,
        log: &Path,
        vm: &str,
    ) -> Result<VmmProcess, Error>;

    /// Kills the process group led by `pid`.
    fn kill(&self, pid: u32);
}

/// The real host: `qemu-img`, `ip netns`, `setns` + fork/exec, `killpg`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLauncher;

impl Launcher for SystemLauncher {
    async fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        overlay: &Path,
        vm: &str,
    ) -> Result<(), Error> {
        host::create_overlay(base, base_format, overlay, vm).await
    }

    async fn create_network(&self, vm: &str, egress: bool) -> Result<VmNetwork, Error> {
        VmNetwork::create(vm, egress)
            .await
            .map_err(|source| Error::Network {
                vm: vm.to_owned(),
                source,
            })
    }

    async fn destroy_network(&self, vm: &str, net: &VmNetwork) -> Result<(), Error> {
        net.destroy().await.map_err(|source| Error::Network {
            vm: vm.to_owned(),
            source,
        })
    }

    fn spawn(
        &self,
        program: &Path,
        args: &[String],
        net: &VmNetwork,
        log: &Path,
        vm: &str,
    ) -> Result<VmmProcess, Error> {
        // Checked here rather than left to the VMM: without KVM Cloud
        // Hypervisor exits at startup, and this message says why up front.
        match super::availability::kvm_status() {
            super::availability::KvmStatus::Opens => {}
            super::availability::KvmStatus::Missing => {
                return Err(Error::Unavailable(
                    "/dev/kvm is missing: Cloud Hypervisor needs KVM".to_owned(),
                ));
            }
            super::availability::KvmStatus::NoAccess(e) => {
                return Err(Error::Unavailable(format!("/dev/kvm does not open: {e}")));
            }
        }
        let child = host::spawn_vmm(program, args, &net.path(), log, vm)?;
        Ok(VmmProcess {
            pid: child.id(),
            child: Some(child),
        })
    }

    fn kill(&self, pid: u32) {
        host::kill_group(pid);
    }
}
