//! The template builder: turns a base root disk plus build steps into a new
//! root disk, by booting a build VM of the base on the same VM layer as
//! sandboxes and applying the steps through its envd.
//!
//! ```text
//!   cached? ──yes──▶ <root>/<key>/output.json (cached: true, no VM)
//!     │ no
//!   per-key lock ─▶ semaphore slot ─▶ create VM (1 vCPU, 1 GiB, egress)
//!     ─▶ [grow disk] ─▶ boot ─▶ envd /health, /init ─▶ [resize2fs]
//!     ─▶ steps (run, copy, env, workdir, user) ─▶ sync ─▶ pause
//!     ─▶ export disk ─▶ shutdown (always) ─▶ <root>/<key>.tmp ─rename─▶ <root>/<key>
//! ```
//!
//! Builds are content-addressed: `<root>/<key>/` holds the result of the
//! build whose inputs hash to `key`; a finished build is never redone.
//! Concurrency is bounded by the builder's semaphore, and two builds of the
//! same key never run at once (the second waits and then finds the cache).
//! A failed build leaves nothing in `<root>/<key>`; its log is kept as
//! `<root>/<key>.failed.log`. This module must not touch sandboxes: the
//! build VM is its own, released on every path (also when the build future
//! is dropped).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lelantos_core::template::{CopyStep, Step};
use lelantos_core::{LifecycleId, MemoryMib, SandboxId, Vcpus};
use serde::{Deserialize, Serialize};

use crate::sandboxes::actor::NetnsDialer;
use crate::sandboxes::envd::{Envd, EnvdError, InitRequest};
use crate::templates::{GuestConfig, GuestImage};
use crate::vmm::VmBackend as _;
use crate::vmm::qemu::{Qemu, QemuVm};

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
    /// The builder takes no builds (it is shutting down).
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

/// vCPUs of a build VM.
const BUILD_VCPUS: u32 = 1;
/// Memory of a build VM, MiB (package managers and compilers need room).
const BUILD_MEMORY_MIB: u32 = 1024;
/// How long a build VM may take to answer envd's `/health` (TCG on a
/// loaded host is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest a single `run` step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Longest the builder's own guest commands (mkdir, tar, chown, sync,
/// resize2fs) may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Output lines quoted in a failed step's message.
const TAIL_LINES: usize = 5;
/// Longest command text in a step's short form.
const SHORT_CMD: usize = 60;
/// The user builds start as when the base sets none (like Dockerfile `RUN`).
const ROOT: &str = "root";
/// `PATH` of build commands unless an `env` step sets one (Docker's
/// default): envd's own default lacks the `sbin` directories root needs.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds templates, each in its own VM; see the module docs.
pub struct Builder {
    qemu: Qemu,
    root: PathBuf,
    slots: tokio::sync::Semaphore,
    /// One lock per key being built, so the same key is never built twice
    /// at once (both would write `<key>.tmp`).
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("root", &self.root)
            .field("free_slots", &self.slots.available_permits())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder keeping its results under `root`, booting build VMs with
    /// `qemu`, at most `max_parallel` (at least 1) at a time.
    pub fn new(qemu: Qemu, root: PathBuf, max_parallel: usize) -> Self {
        Self {
            qemu,
            root,
            slots: tokio::sync::Semaphore::new(max_parallel.max(1)),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The finished build for `key`, if any (cache lookup without building).
    pub fn cached(&self, key: &str) -> Option<BuildOutput> {
        if check_key(key).is_err() {
            return None;
        }
        let dir = self.root.join(key);
        let bytes = std::fs::read(dir.join(OUTPUT_FILE)).ok()?;
        let recorded: BuildOutput = serde_json::from_slice(&bytes).ok()?;
        // Paths are re-derived from where the cache is now, so a moved data
        // directory still resolves.
        let out = BuildOutput {
            rootfs: dir.join(ROOTFS_FILE),
            log: dir.join(LOG_FILE),
            dir,
            config: recorded.config,
            cached: true,
        };
        out.rootfs.is_file().then_some(out)
    }

    /// Builds (or returns the cached result of) `input`. `log` gets every
    /// line as it happens (also written to `<dir>/build.log`).
    pub async fn build(
        &self,
        input: BuildInput,
        log: &(dyn Fn(LogLine) + Send + Sync),
    ) -> Result<BuildOutput, BuildError> {
        check_key(&input.key)?;
        if let Some(out) = self.cached(&input.key) {
            return Ok(out);
        }
        let key_lock = self.key_lock(&input.key);
        let result = {
            let _same_key = key_lock.lock().await;
            match self.cached(&input.key) {
                // Built by whoever held the lock before us.
                Some(out) => Ok(out),
                None => {
                    let _slot = self.slots.acquire().await.map_err(|_| {
                        BuildError::Unavailable("the builder is shutting down".to_owned())
                    })?;
                    self.build_uncached(&input, log).await
                }
            }
        };
        self.forget_key_lock(&input.key, key_lock);
        result
    }

    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.entry(key.to_owned()).or_default().clone()
    }

    fn forget_key_lock(&self, key: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Two references: the map's and ours. More means someone waits.
        if Arc::strong_count(&lock) <= 2 {
            keys.remove(key);
        }
    }

    async fn build_uncached(
        &self,
        input: &BuildInput,
        log: &(dyn Fn(LogLine) + Send + Sync),
    ) -> Result<BuildOutput, BuildError> {
        let dir = self.root.join(&input.key);
        let tmp = self.root.join(format!("{}.tmp", input.key));
        let failed_log = self.root.join(format!("{}.failed.log", input.key));
        let io = |what: String| move |source| BuildError::Io { what, source };
        remove_dir(&tmp).map_err(io(format!("clear {}", tmp.display())))?;
        std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        let file = std::fs::File::create(tmp.join(LOG_FILE))
            .map_err(io(format!("create {}", tmp.join(LOG_FILE).display())))?;
        let sink = LogSink {
            file: Mutex::new(Some(file)),
            forward: log,
        };
        sink.info(
            None,
            format!(
                "building template {} (key {}) from {}",
                input.template,
                input.key,
                input.base.rootfs.display()
            ),
        );
        let built = self.build_in_vm(input, &tmp, &sink).await;
        let finished = match built {
            Ok(config) => self.publish(config, &tmp, &dir).await,
            Err(e) => Err(e),
        };
        match finished {
            Ok(out) => {
                sink.info(None, format!("build finished: {}", out.rootfs.display()));
                let _ = std::fs::remove_file(&failed_log);
                Ok(out)
            }
            Err(e) => {
                sink.error(None, format!("build failed: {e}"));
                sink.close();
                // Keep the log for the operator; the rest goes.
                let _ = std::fs::rename(tmp.join(LOG_FILE), &failed_log);
                let _ = remove_dir(&tmp);
                Err(e)
            }
        }
    }

    /// Boots the build VM, applies the steps, exports the disk into `tmp`
    /// and releases the VM (on every path). Returns the guest config.
    async fn build_in_vm(
        &self,
        input: &BuildInput,
        tmp: &Path,
        sink: &LogSink<'_>,
    ) -> Result<GuestConfig, BuildError> {
        let vm_err = |what: &str| {
            let what = what.to_owned();
            move |e: crate::vmm::Error| {
                BuildError::Vm(format!("{what}: {}", crate::report::chain(&e)))
            }
        };
        // Missing or escaping copy sources fail before a VM is booted.
        for (index, step) in input.steps.iter().enumerate() {
            if let Step::Copy(copy) = step {
                resolve_source(input, copy).map_err(|message| BuildError::Step {
                    index,
                    step: short_form(step),
                    message,
                })?;
            }
        }
        let vcpus = Vcpus::try_from(BUILD_VCPUS)
            .map_err(|e| BuildError::Vm(format!("build VM vCPUs: {e}")))?;
        let memory = MemoryMib::try_from(BUILD_MEMORY_MIB)
            .map_err(|e| BuildError::Vm(format!("build VM memory: {e}")))?;
        // Builds run operator code that fetches packages: egress on, like
        // `docker build`.
        let spec = input.base.vm_spec(
            &build_vm_name(&input.template),
            &LifecycleId::generate(),
            vcpus,
            memory,
            true,
        );
        let vm = self
            .qemu
            .create(&spec)
            .await
            .map_err(vm_err("create the build VM"))?;
        let mut guard = VmGuard {
            qemu: self.qemu.clone(),
            vm: Some(vm),
        };
        let result = match guard.vm.as_mut() {
            Some(vm) => self.drive(vm, input, tmp, sink).await,
            None => Err(BuildError::Vm("build VM handle lost".to_owned())),
        };
        if result.is_err()
            && let Some(vm) = guard.vm.as_ref()
        {
            sink.console_tail(vm);
        }
        if let Err(e) = guard.release().await {
            sink.error(None, format!("release the build VM: {e}"));
        }
        result
    }

    async fn drive(
        &self,
        vm: &mut QemuVm,
        input: &BuildInput,
        tmp: &Path,
        sink: &LogSink<'_>,
    ) -> Result<GuestConfig, BuildError> {
        let vm_err = |what: &'static str| {
            move |e: crate::vmm::Error| {
                BuildError::Vm(format!("{what}: {}", crate::report::chain(&e)))
            }
        };
        let want = input.disk_mib.map(|mib| u64::from(mib) * 1024 * 1024);
        let grow = want.filter(|bytes| *bytes > input.base.rootfs_bytes);
        if let Some(bytes) = grow {
            self.qemu
                .resize_disk(vm, bytes)
                .await
                .map_err(vm_err("grow the build disk"))?;
        }
        self.qemu
            .boot(vm)
            .await
            .map_err(vm_err("boot the build VM"))?;
        let dialer = NetnsDialer::new(vm.net.clone());
        // Before /init envd has no token, and the builder sets none.
        let envd = Envd::new(&dialer, None);
        envd.wait_healthy(BOOT_TIMEOUT)
            .await
            .map_err(|e| BuildError::Vm(format!("envd did not become healthy: {e}")))?;
        envd.init(&InitRequest {
            env_vars: &BTreeMap::new(),
            access_token: None,
            timestamp: jiff::Timestamp::now().to_string(),
            default_user: None,
            default_workdir: None,
        })
        .await
        .map_err(|e| BuildError::Vm(format!("envd /init: {e}")))?;
        sink.info(None, "build VM is up".to_owned());
        let guest = Guest { envd: &envd, sink };
        if let Some(bytes) = grow {
            let mib = bytes / (1024 * 1024);
            sink.info(None, format!("growing the root filesystem to {mib} MiB"));
            guest
                .helper(None, "resize2fs /dev/vda")
                .await
                .map_err(|m| {
                    BuildError::Vm(format!("grow the root filesystem to {mib} MiB: {m}"))
                })?;
        }
        let mut state = StepState {
            env: input.base_config.env.clone(),
            workdir: input.base_config.workdir.clone(),
            user: input.base_config.user.clone(),
        };
        let total = input.steps.len();
        for (index, step) in input.steps.iter().enumerate() {
            sink.info(
                Some(index),
                format!("step {}/{total}: {}", index + 1, short_form(step)),
            );
            self.step(&guest, input, index, step, &mut state).await?;
        }
        // Written data must reach the disk before the VM is frozen.
        guest
            .helper(None, "sync")
            .await
            .map_err(|m| BuildError::Vm(format!("sync the build disk: {m}")))?;
        self.qemu
            .pause(vm)
            .await
            .map_err(vm_err("pause the build VM"))?;
        sink.info(None, "exporting the root disk".to_owned());
        self.qemu
            .export_disk(vm, &tmp.join(ROOTFS_FILE))
            .await
            .map_err(vm_err("export the build disk"))?;
        Ok(GuestConfig {
            env: state.env,
            workdir: state.workdir,
            user: state.user,
            start_cmd: input.start_cmd.clone(),
            ready_cmd: input.ready_cmd.clone(),
        })
    }

    async fn step(
        &self,
        guest: &Guest<'_>,
        input: &BuildInput,
        index: usize,
        step: &Step,
        state: &mut StepState,
    ) -> Result<(), BuildError> {
        let fail = |message: String| BuildError::Step {
            index,
            step: short_form(step),
            message,
        };
        match step {
            Step::Run(cmd) => {
                let (code, tail) = guest
                    .exec(
                        Some(index),
                        cmd,
                        state.user(),
                        state.cwd(),
                        &state.env,
                        STEP_TIMEOUT,
                    )
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if code != 0 {
                    return Err(fail(exit_message(code, &tail)));
                }
            }
            Step::Copy(copy) => copy_step(guest, input, index, copy, state)
                .await
                .map_err(fail)?,
            Step::Env(vars) => {
                state
                    .env
                    .extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Step::Workdir(dir) => {
                let user = state.user();
                // Created owned by the current user (as BuildKit does), but
                // an existing directory keeps its owner.
                let mut script = format!("if [ ! -d {d} ]; then mkdir -p {d}", d = quote(dir));
                if user != ROOT {
                    script.push_str(&format!(
                        " && chown {} {}",
                        quote(&format!("{user}:")),
                        quote(dir)
                    ));
                }
                script.push_str("; fi");
                guest.helper(Some(index), &script).await.map_err(fail)?;
                state.workdir = Some(dir.clone());
            }
            Step::User(user) => {
                // Fail here, naming the user, rather than at the next step.
                guest
                    .helper(Some(index), &format!("id -u -- {} >/dev/null", quote(user)))
                    .await
                    .map_err(|m| fail(format!("no user `{user}` in the image ({m})")))?;
                state.user = Some(user.clone());
            }
        }
        Ok(())
    }

    /// Writes the result files into `tmp` and renames it to `dir`.
    async fn publish(
        &self,
        config: GuestConfig,
        tmp: &Path,
        dir: &Path,
    ) -> Result<BuildOutput, BuildError> {
        let io = |what: String| move |source| BuildError::Io { what, source };
        let out = BuildOutput {
            dir: dir.to_owned(),
            rootfs: dir.join(ROOTFS_FILE),
            config,
            log: dir.join(LOG_FILE),
            cached: false,
        };
        let config_json = serde_json::to_vec_pretty(&out.config)
            .map_err(|e| io("encode config.json".to_owned())(std::io::Error::other(e)))?;
        let output_json = serde_json::to_vec_pretty(&out)
            .map_err(|e| io("encode output.json".to_owned())(std::io::Error::other(e)))?;
        std::fs::write(tmp.join(CONFIG_FILE), config_json)
            .map_err(io(format!("write {}", tmp.join(CONFIG_FILE).display())))?;
        std::fs::write(tmp.join(OUTPUT_FILE), output_json)
            .map_err(io(format!("write {}", tmp.join(OUTPUT_FILE).display())))?;
        // The rename publishes the build: everything in it must be on disk
        // first, or a crash could leave a cached entry with a torn rootfs.
        let files: Vec<PathBuf> = [ROOTFS_FILE, CONFIG_FILE, OUTPUT_FILE]
            .iter()
            .map(|f| tmp.join(f))
            .collect();
        tokio::task::spawn_blocking(move || {
            files
                .iter()
                .try_for_each(|f| std::fs::File::open(f).and_then(|f| f.sync_all()))
        })
        .await
        .map_err(|e| io("sync the build output".to_owned())(std::io::Error::other(e)))?
        .map_err(io("sync the build output".to_owned()))?;
        // A leftover without output.json is not a build: replace it.
        remove_dir(dir).map_err(io(format!("clear {}", dir.display())))?;
        std::fs::rename(tmp, dir).map_err(io(format!("publish {}", dir.display())))?;
        Ok(out)
    }
}

/// Files of a build directory.
const ROOTFS_FILE: &str = "rootfs.ext4";
const CONFIG_FILE: &str = "config.json";
const LOG_FILE: &str = "build.log";
const OUTPUT_FILE: &str = "output.json";

/// A key names a directory under the root: one plain path component.
fn check_key(key: &str) -> Result<(), BuildError> {
    let ok = !key.is_empty()
        && !key.starts_with('.')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(BuildError::Io {
            what: format!("build key `{key}`"),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a plain name ([A-Za-z0-9._-], not starting with '.')",
            ),
        })
    }
}

/// Removes a directory tree; a missing one is fine.
fn remove_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The build VM's sandbox id, which becomes its hostname: `build-<template>`.
fn build_vm_name(template: &str) -> SandboxId {
    let clean: String = template
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(50)
        .collect();
    SandboxId::try_from(format!("build-{clean}")).unwrap_or_else(|_| SandboxId::generate())
}

/// The short form of a step used in logs and errors (`run: make`).
pub fn short_form(step: &Step) -> String {
    match step {
        Step::Run(cmd) => {
            let one_line = cmd.split_whitespace().collect::<Vec<_>>().join(" ");
            if one_line.chars().count() > SHORT_CMD {
                let cut: String = one_line.chars().take(SHORT_CMD).collect();
                format!("run: {cut}…")
            } else {
                format!("run: {one_line}")
            }
        }
        Step::Copy(c) => format!("copy: {} -> {}", c.src, c.dest),
        Step::Env(vars) => format!(
            "env: {}",
            vars.keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Step::Workdir(dir) => format!("workdir: {dir}"),
        Step::User(user) => format!("user: {user}"),
    }
}

fn exit_message(code: i32, tail: &[String]) -> String {
    if tail.is_empty() {
        format!("exit code {code}")
    } else {
        format!("exit code {code}: {}", tail.join(" | "))
    }
}

/// Single-quotes `s` for `/bin/sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Where later steps run and what the output config records.
struct StepState {
    env: Env,
    workdir: Option<String>,
    user: Option<String>,
}

impl StepState {
    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(ROOT)
    }

    fn cwd(&self) -> &str {
        self.workdir.as_deref().unwrap_or("/")
    }
}

/// The host path of a copy step's source: it must exist inside the context.
fn resolve_source(input: &BuildInput, copy: &CopyStep) -> Result<PathBuf, String> {
    let context = input
        .context
        .as_ref()
        .ok_or_else(|| "the build has no context directory to copy from".to_owned())?;
    let context = std::fs::canonicalize(context)
        .map_err(|e| format!("build context {}: {e}", context.display()))?;
    // Canonical paths: `..` and symlinks are resolved before the check.
    let src = std::fs::canonicalize(context.join(&copy.src))
        .map_err(|e| format!("source `{}`: {e}", copy.src))?;
    if src.starts_with(&context) {
        Ok(src)
    } else {
        Err(format!(
            "source `{}` is outside the build context",
            copy.src
        ))
    }
}

/// `copy`: pack the source on the host, upload the archive, unpack it in
/// the guest, then set owner and mode on what was copied (only that: an
/// existing destination directory keeps its owner and mode).
async fn copy_step(
    guest: &Guest<'_>,
    input: &BuildInput,
    index: usize,
    copy: &CopyStep,
    state: &StepState,
) -> Result<(), String> {
    let src = resolve_source(input, copy)?;
    let is_dir = src.is_dir();
    let dest = copy.dest.trim_end_matches('/');
    let dest = if dest.is_empty() { "/" } else { dest };
    // Where the archive is unpacked, and the names it holds there.
    let (into, names): (String, Vec<String>) = if is_dir {
        let mut names: Vec<String> = std::fs::read_dir(&src)
            .map_err(|e| format!("read `{}`: {e}", copy.src))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("read `{}`: {e}", copy.src))?;
        names.sort();
        (dest.to_owned(), names)
    } else {
        let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        // `dest/` means "into this directory"; otherwise dest is the file.
        let (into, name) = if copy.dest.ends_with('/') {
            (dest.to_owned(), file_name(&src))
        } else {
            let d = Path::new(dest);
            (
                d.parent()
                    .map_or_else(|| "/".to_owned(), |p| p.display().to_string()),
                file_name(d),
            )
        };
        let name = name.ok_or_else(|| format!("destination `{}` names no file", copy.dest))?;
        (into, vec![name])
    };
    let archive = {
        let (src, names, is_dir) = (src.clone(), names.clone(), is_dir);
        tokio::task::spawn_blocking(move || pack(&src, is_dir, &names))
            .await
            .map_err(|e| format!("pack `{}`: {e}", copy.src))?
            .map_err(|e| format!("pack `{}`: {e}", copy.src))?
    };
    guest.sink.info(
        Some(index),
        format!(
            "copying {} ({} entries, {} KiB archive) to {into}",
            copy.src,
            names.len(),
            archive.len() / 1024
        ),
    );
    let staged = format!("/tmp/.lelantos-copy-{index}.tar");
    guest
        .envd
        .upload(&staged, Some(ROOT), Bytes::from(archive))
        .await
        .map_err(|e| format!("upload: {e}"))?;
    let owner = copy.user.as_deref().unwrap_or(state.user());
    let targets: String = names
        .iter()
        .map(|n| quote(&format!("{into}/{n}")))
        .collect::<Vec<_>>()
        .join(" ");
    let owner_arg = quote(&format!("{owner}:"));
    let mut script = format!(
        "set -e; created=; [ -d {i} ] || created=1; mkdir -p {i}; \
         tar -xf {t} --no-same-owner -C {i}; rm -f {t}",
        i = quote(&into),
        t = quote(&staged)
    );
    if is_dir {
        // A destination directory the copy created belongs to the owner
        // too; an existing one keeps its owner.
        script.push_str(&format!(
            "; [ -z \"$created\" ] || chown {owner_arg} {}",
            quote(&into)
        ));
    }
    if !names.is_empty() {
        script.push_str(&format!("; chown -R -h {owner_arg} -- {targets}"));
        if let Some(mode) = &copy.mode {
            script.push_str(&format!("; chmod -R {} -- {targets}", quote(mode)));
        }
    }
    guest.helper(Some(index), &script).await
}

/// A tar of `names` (entries of `src` when it is a directory, else the
/// one name `src` is stored under). Symlinks are stored as links, never
/// followed, so nothing outside the context gets in.
fn pack(src: &Path, is_dir: bool, names: &[String]) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    if is_dir {
        for name in names {
            let path = src.join(name);
            if std::fs::symlink_metadata(&path)?.is_dir() {
                tar.append_dir_all(name, &path)?;
            } else {
                tar.append_path_with_name(&path, name)?;
            }
        }
    } else if let Some(name) = names.first() {
        tar.append_path_with_name(src, name)?;
    }
    tar.into_inner()
}

/// The build VM's envd plus the build log.
struct Guest<'a> {
    envd: &'a Envd<'a>,
    sink: &'a LogSink<'a>,
}

impl Guest<'_> {
    /// Runs `cmd`, streaming its output lines to the log; returns the exit
    /// code and the last lines of stderr (or of stdout, when stderr is empty).
    async fn exec(
        &self,
        step: Option<usize>,
        cmd: &str,
        user: &str,
        cwd: &str,
        env: &Env,
        timeout: Duration,
    ) -> Result<(i32, Vec<String>), EnvdError> {
        let lines = Lines::default();
        let on_output = |stream: &str, bytes: &[u8]| {
            for line in lines.push(stream, bytes) {
                self.sink.info(step, line);
            }
        };
        let mut env = env.clone();
        env.entry("PATH".to_owned())
            .or_insert_with(|| DEFAULT_PATH.to_owned());
        let code = self
            .envd
            .run(cmd, Some(user), Some(cwd), &env, timeout, &on_output)
            .await;
        for line in lines.flush() {
            self.sink.info(step, line);
        }
        Ok((code?, lines.tail()))
    }

    /// Runs one of the builder's own commands as root in `/`; Err carries
    /// the reason.
    async fn helper(&self, step: Option<usize>, cmd: &str) -> Result<(), String> {
        match self
            .exec(step, cmd, ROOT, "/", &Env::new(), HELPER_TIMEOUT)
            .await
        {
            Ok((0, _)) => Ok(()),
            Ok((code, tail)) => Err(exit_message(code, &tail)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Splits output chunks into lines per stream and keeps the last few.
#[derive(Default)]
struct Lines {
    inner: Mutex<LinesInner>,
}

#[derive(Default)]
struct LinesInner {
    partial: BTreeMap<String, Vec<u8>>,
    stderr_tail: VecDeque<String>,
    stdout_tail: VecDeque<String>,
}

impl LinesInner {
    fn complete(&mut self, stream: &str, line: &[u8]) -> String {
        let text = String::from_utf8_lossy(line)
            .trim_end_matches('\r')
            .to_owned();
        let tail = if stream == "stderr" {
            &mut self.stderr_tail
        } else {
            &mut self.stdout_tail
        };
        if !text.trim().is_empty() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.chars().take(200).collect());
        }
        text
    }
}

impl Lines {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinesInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Complete lines of `stream` after appending `bytes`.
    fn push(&self, stream: &str, bytes: &[u8]) -> Vec<String> {
        let mut inner = self.lock();
        let mut buf = inner.partial.remove(stream).unwrap_or_default();
        buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let rest = buf.split_off(nl + 1);
            out.push(inner.complete(stream, &buf[..nl]));
            buf = rest;
        }
        inner.partial.insert(stream.to_owned(), buf);
        out
    }

    /// The unterminated last lines.
    fn flush(&self) -> Vec<String> {
        let mut inner = self.lock();
        let partial = std::mem::take(&mut inner.partial);
        partial
            .into_iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(stream, b)| inner.complete(&stream, &b))
            .collect()
    }

    fn tail(&self) -> Vec<String> {
        let inner = self.lock();
        let tail = if inner.stderr_tail.is_empty() {
            &inner.stdout_tail
        } else {
            &inner.stderr_tail
        };
        tail.iter().cloned().collect()
    }
}

/// Writes log lines to `build.log` and hands them to the caller.
struct LogSink<'a> {
    file: Mutex<Option<std::fs::File>>,
    forward: &'a (dyn Fn(LogLine) + Send + Sync),
}

impl LogSink<'_> {
    fn emit(&self, level: &'static str, step: Option<usize>, message: String) {
        let line = LogLine {
            ts_ms: crate::store::now_ms(),
            level,
            step,
            message,
        };
        if let Some(file) = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            let ts = jiff::Timestamp::from_millisecond(line.ts_ms)
                .map(|t| t.to_string())
                .unwrap_or_default();
            let step = step.map(|s| format!(" [step {s}]")).unwrap_or_default();
            // A full disk must not fail the build over its log.
            let _ = writeln!(file, "{ts} {level}{step} {}", line.message);
        }
        (self.forward)(line);
    }

    fn info(&self, step: Option<usize>, message: String) {
        self.emit("info", step, message);
    }

    fn error(&self, step: Option<usize>, message: String) {
        self.emit("error", step, message);
    }

    /// The last lines of the build VM's serial console, for failed boots.
    fn console_tail(&self, vm: &QemuVm) {
        let text = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        for line in lines.into_iter().rev() {
            self.error(None, format!("console: {}", line.trim_end()));
        }
    }

    fn close(&self) {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}

/// Owns the build VM; releases it on drop if [`VmGuard::release`] was not
/// reached (the build future was cancelled).
struct VmGuard {
    qemu: Qemu,
    vm: Option<QemuVm>,
}

impl VmGuard {
    async fn release(&mut self) -> Result<(), crate::vmm::Error> {
        match self.vm.take() {
            Some(mut vm) => self.qemu.shutdown(&mut vm).await,
            None => Ok(()),
        }
    }
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        let Some(mut vm) = self.vm.take() else { return };
        let qemu = self.qemu.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = qemu.shutdown(&mut vm).await {
                        tracing::warn!(vm = %vm.id, error = %e, "release abandoned build VM");
                    }
                });
            }
            // No runtime left (process exit): at least stop QEMU; the next
            // daemon's recovery sweeps the namespace and directory.
            Err(_) => crate::vmm::host::kill_group(vm.pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_and_keep_a_tail() {
        let lines = Lines::default();
        assert!(lines.push("stdout", b"par").is_empty());
        assert_eq!(lines.push("stdout", b"tial\r\nnext\n"), ["partial", "next"]);
        assert_eq!(
            lines.push("stderr", b"e1\ne2\ne3\ne4\ne5\ne6\nlast"),
            ["e1", "e2", "e3", "e4", "e5", "e6"]
        );
        assert_eq!(lines.flush(), ["last"]);
        assert_eq!(lines.tail(), ["e3", "e4", "e5", "e6", "last"]);
        let quiet = Lines::default();
        quiet.push("stdout", b"only stdout\n");
        assert_eq!(quiet.tail(), ["only stdout"]);
    }

    #[test]
    fn short_forms_and_keys() {
        assert_eq!(
            short_form(&Step::Run("make\n  all".into())),
            "run: make all"
        );
        let long = short_form(&Step::Run("x".repeat(100)));
        assert_eq!(long.chars().count(), "run: ".len() + SHORT_CMD + 1);
        assert_eq!(
            short_form(&Step::Env(BTreeMap::from([
                ("B".into(), "2".into()),
                ("A".into(), "1".into())
            ]))),
            "env: A, B"
        );
        assert!(check_key("0123abcd").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "a b"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(build_vm_name("My_App").as_str(), "build-my-app");
        assert_eq!(exit_message(2, &[]), "exit code 2");
        assert_eq!(
            exit_message(2, &["a".into(), "b".into()]),
            "exit code 2: a | b"
        );
    }

    #[test]
    fn copy_sources_must_stay_inside_the_context() {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", ctx.path().join("out")).unwrap();
        let input = |context: Option<&Path>| BuildInput {
            template: "t".into(),
            key: "k".into(),
            base: GuestImage {
                manifest: "m".into(),
                kernel: "k".into(),
                initramfs: "i".into(),
                rootfs: "r".into(),
                rootfs_bytes: 0,
                cmdline: vec![],
            },
            base_config: GuestConfig::default(),
            steps: vec![],
            context: context.map(Path::to_path_buf),
            start_cmd: None,
            ready_cmd: None,
            disk_mib: None,
        };
        let copy = |src: &str| CopyStep {
            src: src.into(),
            dest: "/x".into(),
            user: None,
            mode: None,
        };
        let inside = input(Some(ctx.path()));
        assert!(resolve_source(&inside, &copy("f")).is_ok());
        for bad in ["missing", "out/passwd", "../"] {
            assert!(resolve_source(&inside, &copy(bad)).is_err(), "{bad}");
        }
        assert!(resolve_source(&input(None), &copy("f")).is_err());
    }

    #[test]
    fn pack_stores_symlinks_as_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), "a").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let names = vec!["link".to_owned(), "sub".to_owned()];
        let bytes = pack(dir.path(), true, &names).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen: Vec<(String, bool)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type().is_symlink(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("link".to_owned(), true),
                ("sub/".to_owned(), false),
                ("sub/a".to_owned(), false)
            ]
        );
    }
}
