//! What a VM driver is asked to build. Drivers translate this into their
//! own configuration (QEMU arguments, Cloud Hypervisor's `VmConfig`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{LifecycleId, MemoryMib, SandboxId, Vcpus};

/// A VM to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The sandbox this VM serves.
    pub sandbox_id: SandboxId,
    /// This boot (or restore) of it.
    pub lifecycle_id: LifecycleId,
    /// Virtual CPUs.
    pub vcpus: Vcpus,
    /// Guest memory.
    pub memory: MemoryMib,
    /// Kernel image (bzImage or PVH vmlinux).
    pub kernel: PathBuf,
    /// Initramfs, when the kernel needs one.
    pub initramfs: Option<PathBuf>,
    /// The template's root filesystem image; each VM writes to its own
    /// copy-on-write layer over it, never to this file.
    pub rootfs: PathBuf,
    /// Extra kernel arguments (the driver adds console and network ones).
    pub extra_cmdline: Vec<String>,
    /// Network attachment.
    pub network: NetworkSpec,
}

/// How the VM is attached to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Whether the guest may reach the outside world (NAT).
    pub egress: bool,
}
