//! The template builder: turns a base root disk plus build steps into a new
//! root disk, by booting a build VM of the base on the same VM layer as
//! sandboxes and applying the steps through its envd.
//!
//! Builds are content-addressed: `<root>/<key>/` holds the result of the
//! build whose inputs hash to `key`; a finished build is never redone.
//! Concurrency is bounded by the builder's semaphore.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lelantos_core::template::Step;
use serde::{Deserialize, Serialize};

use crate::templates::{GuestConfig, GuestImage};

/// Why a build failed. The message is what a template's `Stalled` status
/// shows, so each variant says which step and why.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A step failed (non-zero exit, missing copy source, …).
    #[error("step {index} ({step}) failed: {message}")]
    Step {
        /// 0-based step index.
        index: usize,
        /// Short form of the step (`run: make`).
        step: String,
        /// What happened (exit code, stderr tail).
        message: String,
    },
    /// The build VM could not be created, booted or reached.
    #[error("build VM: {0}")]
    Vm(String),
    /// Reading inputs or writing outputs failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not implemented yet (placeholder until the builder lands).
    #[error("the template builder is not available: {0}")]
    Unavailable(String),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildInput {
    /// Template name (for logs and the build VM's hostname).
    pub template: String,
    /// Content hash of everything below (the caller computes it); names
    /// the output directory.
    pub key: String,
    /// Kernel, initramfs and the base root disk to start from.
    pub base: GuestImage,
    /// Guest defaults the base already carries (a template based on another
    /// template inherits its env, workdir and user).
    pub base_config: GuestConfig,
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// Where `copy` sources are read from (the definitions directory, or an
    /// unpacked upload).
    pub context: Option<PathBuf>,
    /// Recorded in the output's config.
    pub start_cmd: Option<String>,
    /// Recorded in the output's config.
    pub ready_cmd: Option<String>,
    /// Root disk size in MiB (grown to at least this); `None` keeps the base's.
    pub disk_mib: Option<u32>,
}

/// A finished build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOutput {
    /// The build's directory (`<root>/<key>`).
    pub dir: PathBuf,
    /// Kernel and initramfs of the base, the new root disk.
    pub rootfs: PathBuf,
    /// Guest defaults after the steps, plus start/ready commands.
    pub config: GuestConfig,
    /// The full build log.
    pub log: PathBuf,
    /// Whether it came from the cache (no VM was booted).
    pub cached: bool,
}

/// One line of build output, for streaming to a status page or the SDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Unix ms.
    pub ts_ms: i64,
    /// `info` or `error`.
    pub level: &'static str,
    /// Step index, when the line belongs to one.
    pub step: Option<usize>,
    /// The text.
    pub message: String,
}

/// Environment accumulated by `env` steps (kept sorted for stable hashes).
pub type Env = BTreeMap<String, String>;
