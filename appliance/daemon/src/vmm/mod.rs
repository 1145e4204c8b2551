//! The VM layer: one trait, two real drivers.
//!
//! ```text
//!            create            boot
//!   (none) ─────────▶ Created ──────▶ Running ◀──────┐
//!                        │              │ pause       │ resume
//!                        │              ▼             │
//!                        │            Paused ─────────┘
//!                        │              │ snapshot(dir) (stays Paused)
//!                        ▼              ▼
//!                     shutdown ──▶ Stopped (process, tap, netns, disk gone)
//!
//!   restore(dir) ─▶ Running   (a new VM, new lifecycle id, from a snapshot)
//! ```
//!
//! Drivers: [`qemu`] (one `qemu-system-x86_64 -M microvm` per VM over QMP;
//! KVM when a probe boot works, else TCG — the driver CI boots for real) and
//! [`cloud_hypervisor`] (one `cloud-hypervisor --api-socket` per VM over its
//! REST API; needs KVM, so it is unverified on hosts without it). The state
//! machine above is enforced here, once, for both.

pub mod cloud_hypervisor;
pub mod host;
pub mod qemu;

use std::path::{Path, PathBuf};

use lelantos_core::VmSpec;
use serde::Serialize;

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// VMM process up, guest not started.
    Created,
    /// Guest running.
    Running,
    /// Guest frozen in RAM.
    Paused,
    /// Everything released.
    Stopped,
}

/// Operations, for the transition check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOp {
    /// Start the guest.
    Boot,
    /// Freeze it.
    Pause,
    /// Unfreeze it.
    Resume,
    /// Save memory and disk to a directory.
    Snapshot,
    /// Stop and release everything.
    Shutdown,
}

impl VmState {
    /// The state after `op`, or `None` when `op` is not allowed now.
    /// Exhaustive on purpose: a new state or op must be decided here.
    pub fn after(self, op: VmOp) -> Option<VmState> {
        use VmOp as O;
        use VmState as S;
        match (self, op) {
            (S::Created, O::Boot) => Some(S::Running),
            (S::Running, O::Pause) => Some(S::Paused),
            (S::Paused, O::Resume) => Some(S::Running),
            (S::Paused, O::Snapshot) => Some(S::Paused),
            (S::Created | S::Running | S::Paused, O::Shutdown) => Some(S::Stopped),
            (S::Stopped, O::Shutdown) => Some(S::Stopped),
            (S::Created, O::Pause | O::Resume | O::Snapshot)
            | (S::Running, O::Boot | O::Resume | O::Snapshot)
            | (S::Paused, O::Boot | O::Pause)
            | (S::Stopped, O::Boot | O::Pause | O::Resume | O::Snapshot) => None,
        }
    }
}

/// What a running VM reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmInfo {
    /// Current state.
    pub state: VmState,
    /// Host pid of the VMM process.
    pub vmm_pid: Option<u32>,
    /// Resident memory of the VMM process, bytes.
    pub vmm_rss_bytes: u64,
    /// CPU time the VMM process used, microseconds.
    pub vmm_cpu_micros: u64,
    /// Bytes the guest's disk wrote.
    pub disk_write_bytes: u64,
    /// Bytes the guest's disk read.
    pub disk_read_bytes: u64,
    /// Which accelerator runs the guest (`kvm` or `tcg`).
    pub accelerator: String,
}

/// Errors of the VM layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operation is not allowed in the VM's current state.
    #[error("cannot {op:?} a VM that is {state:?}")]
    WrongState {
        /// The refused operation.
        op: VmOp,
        /// The state it was refused in.
        state: VmState,
    },
    /// The VMM binary or a host facility is missing.
    #[error("driver unavailable: {0}")]
    Unavailable(String),
    /// Preparing the VM's directory, disk or files failed.
    #[error("prepare {what} for VM {vm}")]
    Prepare {
        /// Which VM (lifecycle id).
        vm: String,
        /// What was being prepared.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Networking setup or teardown failed.
    #[error("network for VM {vm}")]
    Network {
        /// Which VM.
        vm: String,
        /// Why.
        #[source]
        source: crate::net::Error,
    },
    /// Starting the VMM process failed.
    #[error("start the VMM for VM {vm}")]
    Spawn {
        /// Which VM.
        vm: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VMM refused or failed a control request.
    #[error("VMM control request {request} for VM {vm}: {message}")]
    Control {
        /// Which VM.
        vm: String,
        /// The request (e.g. `stop`, `vm.pause`).
        request: String,
        /// What the VMM said.
        message: String,
    },
    /// The VMM process died.
    #[error("VMM process of VM {vm} exited: {status}")]
    Exited {
        /// Which VM.
        vm: String,
        /// Its exit status.
        status: String,
    },
    /// A snapshot directory is missing pieces or unreadable.
    #[error("snapshot at {dir}: {reason}")]
    Snapshot {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A VM driver. Each method enforces [`VmState::after`] before acting.
#[allow(async_fn_in_trait)]
pub trait VmBackend: Send + Sync {
    /// The per-VM handle this driver hands out.
    type Vm: Send + Sync;

    /// Driver name (`qemu`, `cloud-hypervisor`).
    fn name(&self) -> &'static str;

    /// Prepares disk and network and starts the VMM; the guest is not running yet.
    async fn create(&self, spec: &VmSpec) -> Result<Self::Vm, Error>;
    /// Starts the guest.
    async fn boot(&self, vm: &mut Self::Vm) -> Result<(), Error>;
    /// Freezes the guest in RAM.
    async fn pause(&self, vm: &mut Self::Vm) -> Result<(), Error>;
    /// Unfreezes it.
    async fn resume(&self, vm: &mut Self::Vm) -> Result<(), Error>;
    /// Writes memory, device state and disk of a paused VM into `dir`.
    async fn snapshot(&self, vm: &mut Self::Vm, dir: &Path) -> Result<(), Error>;
    /// Starts a new VM (running) from a snapshot directory.
    async fn restore(&self, spec: &VmSpec, dir: &Path) -> Result<Self::Vm, Error>;
    /// Stops the VM and releases its process, tap, namespace and disk.
    async fn shutdown(&self, vm: &mut Self::Vm) -> Result<(), Error>;
    /// State and counters.
    async fn info(&self, vm: &Self::Vm) -> Result<VmInfo, Error>;
}

/// Checks `op` against `state`, returning the next state.
pub fn transition(state: VmState, op: VmOp) -> Result<VmState, Error> {
    state.after(op).ok_or(Error::WrongState { op, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [VmState; 4] = [
        VmState::Created,
        VmState::Running,
        VmState::Paused,
        VmState::Stopped,
    ];
    const OPS: [VmOp; 5] = [
        VmOp::Boot,
        VmOp::Pause,
        VmOp::Resume,
        VmOp::Snapshot,
        VmOp::Shutdown,
    ];

    #[test]
    fn every_pair_is_decided_and_matches_the_diagram() {
        let allowed: Vec<(VmState, VmOp, VmState)> = STATES
            .iter()
            .flat_map(|s| {
                OPS.iter()
                    .filter_map(move |o| s.after(*o).map(|n| (*s, *o, n)))
            })
            .collect();
        assert_eq!(
            allowed,
            vec![
                (VmState::Created, VmOp::Boot, VmState::Running),
                (VmState::Created, VmOp::Shutdown, VmState::Stopped),
                (VmState::Running, VmOp::Pause, VmState::Paused),
                (VmState::Running, VmOp::Shutdown, VmState::Stopped),
                (VmState::Paused, VmOp::Resume, VmState::Running),
                (VmState::Paused, VmOp::Snapshot, VmState::Paused),
                (VmState::Paused, VmOp::Shutdown, VmState::Stopped),
                (VmState::Stopped, VmOp::Shutdown, VmState::Stopped),
            ]
        );
        assert!(matches!(
            transition(VmState::Running, VmOp::Snapshot),
            Err(Error::WrongState {
                op: VmOp::Snapshot,
                state: VmState::Running
            })
        ));
    }
}
