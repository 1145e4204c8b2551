//! The Lelantos appliance daemon.
//!
//! Owners (see STYLE.md §1): `vmm` runs VMs behind one [`vmm::VmBackend`]
//! trait (QEMU microvm, Cloud Hypervisor); `net` gives each VM an isolated
//! network namespace with a tap device; `doctor` reports what this host can
//! run. The E2B control plane (api, proxy, sandboxes, store) builds on these.

#![warn(missing_docs)]

pub mod api;
pub mod builder;
pub mod doctor;
pub mod exporter;
pub mod keys;
pub mod net;
pub mod oci;
pub mod proxy;
pub mod reconcile;
pub mod report;
pub mod sandboxes;
pub mod serve;
pub mod store;
pub mod templates;
pub mod vmm;
