//! Cloud Hypervisor driver: one `cloud-hypervisor --api-socket` process per
//! VM, driven over its REST API (through the `cloud-hypervisor-client`
//! crate) on the unix socket in the VM's directory.
//!
//! **Unverified.** This driver has never booted a guest: Cloud Hypervisor
//! needs a KVM host that can run guests, and the machines this code was
//! written and tested on have none (nor a Cloud Hypervisor binary). What
//! *is* checked, in `tests/cloud_hypervisor_api.rs`, is
//! - the contract: every request the driver sends (recorded off the wire
//!   while the whole driver runs against a stand-in API server, a recorder
//!   and not a VMM) validates against Cloud Hypervisor's published OpenAPI
//!   schema, and the endpoints and methods exist there;
//! - the host side up to the VMM: overlay, namespace, spawning inside it,
//!   and reporting and cleaning up after a process that dies at startup.
//!
//! Until it has run on a KVM host, treat it as untested against the real
//! VMM; `lelantos doctor` says so too ([`availability::UNVERIFIED_NOTE`]).
//!
//! ```text
//!   create ─ VmDir, qcow2 overlay over the template, netns + tap0,
//!            spawn cloud-hypervisor (in the netns, own process group),
//!            poll vmm.ping, vm.create(VmConfig)              ─▶ Created
//!   boot ──── vm.boot                                         ─▶ Running
//!   pause ─── vm.pause                                        ─▶ Paused
//!   resume ── vm.resume                                       ─▶ Running
//!   snapshot  vm.snapshot(file://dir) + copy disk.qcow2       ─▶ Paused
//!   restore ─ new VmDir, overlay over the snapshot's disk copy,
//!            new netns, new process, vm.restore(staged dir,
//!            resume)                                          ─▶ Running
//!   shutdown  vm.shutdown, vmm.shutdown, SIGKILL the group if it
//!            lingers, delete netns and directory              ─▶ Stopped
//! ```
//!
//! Every method checks [`super::transition`] before touching the VMM.
//!
//! Design choices (details in the files named):
//! - **Network identity.** Every VM has its own namespace with a tap named
//!   `tap0` and the same guest address, and every guest gets the same MAC
//!   ([`config::GUEST_MAC`]). A snapshot restored into a new namespace thus
//!   finds the same NIC, tap name and routes, and the saved config needs no
//!   network rewriting (no `net_fds`: the tap is opened by name).
//! - **Disk on restore** ([`snapshot`]). Cloud Hypervisor restores the
//!   config it saved, whose disk path points into the old VM's directory.
//!   Restore stages a copy of `config.json` with the disk path pointed at
//!   the new VM's overlay (whose backing file is the snapshot's disk copy)
//!   and the serial log at the new directory, symlinks the rest, and
//!   restores from there. The snapshot directory is never modified.
//! - **Memory restore mode** ([`config::MemoryRestoreMode`]). `OnDemand`
//!   (userfaultfd, pages faulted in on first touch) when a userfaultfd can
//!   be made here ([`availability::probe_userfaultfd`]), else `Copy`; an
//!   `OnDemand` restore the VMM refuses is retried once with `Copy`.
//! - **Tap address** ([`config::vm_config`]). The NIC config repeats the
//!   address the tap already has, because Cloud Hypervisor may (re)assign
//!   one and would otherwise pick its own default.
//! - **Lifetimes.** A restored VM's disk chain runs through the snapshot's
//!   `disk.qcow2`, and with `OnDemand` its memory through `memory-ranges`:
//!   the snapshot directory must outlive every VM restored from it.

pub mod api;
pub mod availability;
pub mod config;
mod create;
mod info;
pub mod launcher;
mod restore;
mod shutdown;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lelantos_core::VmSpec;

use self::api::Api;
pub use self::availability::{Availability, availability};
pub use self::config::MemoryRestoreMode;
pub use self::launcher::{Launcher, SystemLauncher, VmmProcess};
use super::host::VmDir;
use super::{Error, VmBackend, VmInfo, VmOp, VmState, transition};
use crate::net::VmNetwork;

/// Driver name in records, snapshot markers and logs.
pub const NAME: &str = "cloud-hypervisor";

/// Longest unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The Cloud Hypervisor driver.
#[derive(Debug, Clone)]
pub struct CloudHypervisor<L = SystemLauncher> {
    binary: PathBuf,
    vm_root: PathBuf,
    restore_mode: MemoryRestoreMode,
    launcher: L,
}

impl CloudHypervisor<SystemLauncher> {
    /// Finds the binary (`binary`, else `cloud-hypervisor` on PATH), picks
    /// the memory restore mode this host supports, and makes `vm_root`.
    /// [`Error::Unavailable`] when the binary is missing.
    pub fn new(binary: Option<&Path>, vm_root: impl Into<PathBuf>) -> Result<Self, Error> {
        let binary = availability::find_binary(binary).map_err(Error::Unavailable)?;
        let vm_root = vm_root.into();
        std::fs::create_dir_all(&vm_root).map_err(|source| Error::Prepare {
            vm: "-".to_owned(),
            what: "vm root directory",
            source,
        })?;
        let uffd = availability::probe_userfaultfd();
        let restore_mode = availability::restore_mode_for(&uffd);
        tracing::info!(binary = %binary.display(), ?restore_mode, uffd = %uffd.detail, "cloud hypervisor driver ready (unverified on this host)");
        Ok(Self::with_launcher(
            binary,
            vm_root,
            restore_mode,
            SystemLauncher,
        ))
    }
}

impl<L: Launcher> CloudHypervisor<L> {
    /// A driver with every choice made by the caller (tests use this with a
    /// recording launcher; the daemon uses [`CloudHypervisor::new`]).
    pub fn with_launcher(
        binary: PathBuf,
        vm_root: PathBuf,
        restore_mode: MemoryRestoreMode,
        launcher: L,
    ) -> Self {
        Self {
            binary,
            vm_root,
            restore_mode,
            launcher,
        }
    }

    /// The binary in use.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// How restores bring memory back.
    pub fn restore_mode(&self) -> MemoryRestoreMode {
        self.restore_mode
    }

    /// Overrides the restore mode (an operator who knows better than the probe).
    pub fn set_restore_mode(&mut self, mode: MemoryRestoreMode) {
        self.restore_mode = mode;
    }
}

/// A VM run by Cloud Hypervisor.
#[derive(Debug)]
pub struct ChVm {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Lifecycle id (directory and namespace name).
    pub id: String,
    /// Its directory.
    pub dir: VmDir,
    /// Its network namespace.
    pub net: VmNetwork,
    /// Where it is in its life.
    pub state: VmState,
    /// The snapshot it was restored from, which must outlive it.
    pub restored_from: Option<PathBuf>,
    api: Api,
    process: VmmProcess,
}

impl ChVm {
    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.serial_log()
    }

    /// The VMM's pid, when known.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.process.pid
    }

    /// A failed request to a VMM that has died is reported as the death.
    fn explain(&mut self, e: Error) -> Error {
        match api::exit_status(&mut self.process) {
            Some(status) => Error::Exited {
                vm: self.id.clone(),
                status: format!("{status}; {}", api::log_tail(&self.dir.vmm_log())),
            },
            None => e,
        }
    }

    /// Records the outcome of a one-call state change (`next` was already
    /// checked by [`transition`] before the call was made).
    fn settle(&mut self, op: VmOp, next: VmState, result: Result<(), Error>) -> Result<(), Error> {
        result.map_err(|e| self.explain(e))?;
        tracing::info!(vm = %self.id, from = ?self.state, to = ?next, "cloud hypervisor {op:?}");
        self.state = next;
        Ok(())
    }
}

/// Everything a half-built VM holds, released if building fails.
struct Partial {
    id: String,
    dir: VmDir,
    net: Option<VmNetwork>,
    process: VmmProcess,
}

impl Partial {
    fn new(id: &str, dir: VmDir) -> Self {
        Self {
            id: id.to_owned(),
            dir,
            net: None,
            process: VmmProcess::default(),
        }
    }

    /// The finished VM, once `launch` succeeded (it hands back the network).
    fn into_vm(
        self,
        spec: &VmSpec,
        api: Api,
        net: VmNetwork,
        state: VmState,
        restored_from: Option<PathBuf>,
    ) -> ChVm {
        ChVm {
            sandbox_id: spec.sandbox_id.to_string(),
            id: self.id,
            dir: self.dir,
            net,
            state,
            restored_from,
            api,
            process: self.process,
        }
    }
}

impl<L: Launcher> CloudHypervisor<L> {
    /// Network, process, API: the part create and restore share. The disk
    /// must already be in place. What it acquires is also noted in
    /// `partial`, for release on failure.
    async fn launch(
        &self,
        spec: &VmSpec,
        partial: &mut Partial,
    ) -> Result<(Api, VmNetwork), Error> {
        let vm = partial.id.clone();
        let socket = partial.dir.control_socket();
        let socket_str = config::path_str(&socket, &vm, "control socket path")?;
        if socket_str.len() > MAX_SOCKET_PATH {
            return Err(Error::Prepare {
                vm,
                what: "control socket path",
                source: std::io::Error::other(format!(
                    "{socket_str} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes): use a shorter vm root"
                )),
            });
        }
        // A socket file left by an earlier attempt would make the bind fail.
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Prepare {
                    vm,
                    what: "stale control socket",
                    source: e,
                });
            }
            _ => {}
        }
        let net = self
            .launcher
            .create_network(&vm, spec.network.egress)
            .await?;
        partial.net = Some(net.clone());
        let args = vec!["--api-socket".to_owned(), format!("path={socket_str}")];
        partial.process =
            self.launcher
                .spawn(&self.binary, &args, &net, &partial.dir.vmm_log(), &vm)?;
        partial.dir.write_record(&super::host::VmRecord {
            driver: NAME.to_owned(),
            sandbox_id: spec.sandbox_id.to_string(),
            lifecycle_id: vm.clone(),
            vmm_pid: partial.process.pid,
            netns: net.netns.clone(),
            egress: net.egress,
        })?;
        let api = Api::new(&socket, &vm);
        let pong = api
            .wait_ready(
                &mut partial.process,
                &partial.dir.vmm_log(),
                api::timeouts::START,
            )
            .await?;
        tracing::info!(vm = %vm, version = %pong.version, pid = ?partial.process.pid, "cloud hypervisor API up");
        Ok((api, net))
    }

    /// Releases whatever `partial` got to hold. Best effort: the first error
    /// is already on its way to the caller, so later ones are only logged.
    async fn abandon(&self, mut partial: Partial) {
        // Nobody asked it to exit: kill at once rather than wait for nothing.
        shutdown::stop_process(
            &self.launcher,
            &partial.id,
            &mut partial.process,
            Duration::ZERO,
        )
        .await;
        if let Some(net) = &partial.net
            && let Err(e) = self.launcher.destroy_network(&partial.id, net).await
        {
            tracing::warn!(vm = %partial.id, error = %e, "releasing network of a failed VM");
        }
        if let Err(e) = partial.dir.remove() {
            tracing::warn!(vm = %partial.id, error = %e, "removing directory of a failed VM");
        }
    }
}

impl<L: Launcher> VmBackend for CloudHypervisor<L> {
    type Vm = ChVm;

    fn name(&self) -> &'static str {
        NAME
    }

    async fn create(&self, spec: &VmSpec) -> Result<ChVm, Error> {
        self.create_vm(spec).await
    }

    async fn boot(&self, vm: &mut ChVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Boot)?;
        let result = vm.api.boot().await;
        vm.settle(VmOp::Boot, next, result)
    }

    async fn pause(&self, vm: &mut ChVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Pause)?;
        let result = vm.api.pause().await;
        vm.settle(VmOp::Pause, next, result)
    }

    async fn resume(&self, vm: &mut ChVm) -> Result<(), Error> {
        let next = transition(vm.state, VmOp::Resume)?;
        let result = vm.api.resume().await;
        vm.settle(VmOp::Resume, next, result)
    }

    async fn snapshot(&self, vm: &mut ChVm, dir: &Path) -> Result<(), Error> {
        self.snapshot_vm(vm, dir).await
    }

    async fn restore(&self, spec: &VmSpec, dir: &Path) -> Result<ChVm, Error> {
        self.restore_vm(spec, dir).await
    }

    async fn shutdown(&self, vm: &mut ChVm) -> Result<(), Error> {
        self.shutdown_vm(vm).await
    }

    async fn info(&self, vm: &ChVm) -> Result<VmInfo, Error> {
        self.info_vm(vm).await
    }
}
