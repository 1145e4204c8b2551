//! lelantos-image: builds the guest pieces every sandbox VM boots from.
//!
//! ```text
//!   apt (host sources) ──▶ linux-image-*-cloud-amd64 ──▶ vmlinuz ─────────────┐
//!                      └─▶ busybox-static + virtio/vsock .ko ─▶ initramfs ──────┤
//!   mmdebstrap bookworm minbase + packages + user + envd ─▶ rootfs.ext4 ────────┤
//!                                                                              ▼
//!                         <cache>/images/{kernel,rootfs}-<key>/ + manifest-<key>.json
//! ```
//!
//! Every artefact lives in a directory named after the hash of its *inputs*
//! (package versions, recipe, envd's digest), so a run whose inputs did not
//! change is a lookup, and a change rebuilds only what it touches (a new envd
//! rebuilds the rootfs, never the kernel). Directories appear by `rename` of a
//! finished staging directory, so a half-built artefact is never visible.
//!
//! This crate owns building and describing images. It must not boot them (the
//! VM layer does) and it never writes a mirror host or a machine path into an
//! artefact recipe: packages come from the host's own apt configuration.

#![warn(missing_docs)]

pub mod apt;
pub mod cache;
pub mod cmd;
pub mod elf;
pub mod hash;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod pipeline;
pub mod rootfs;

pub use pipeline::{BuildOptions, BuildOutcome, build};

/// Version of this builder, recorded in every manifest.
pub const BUILDER_VERSION: &str = env!("CARGO_PKG_VERSION");
