//! The appliance's domain vocabulary: identifiers, validated resource
//! values and the VM specification every driver takes.
//!
//! This crate does no IO and knows no runtime (as kube-core next to
//! kube-runtime): everything here can be built in a unit test. Invalid
//! values cannot be constructed — they fail at `TryFrom`.

#![warn(missing_docs)]

pub mod config;
pub mod ids;
pub mod resources;
pub mod sandbox;
pub mod template;
pub mod vm;
pub mod yaml;

pub use ids::{LifecycleId, SandboxId};
pub use resources::{MemoryMib, Vcpus};
pub use sandbox::{SandboxEvent, SandboxState};
pub use template::TemplateSpec;
pub use vm::{NetworkSpec, VmSpec};
