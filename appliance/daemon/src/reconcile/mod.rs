//! The GitOps reconciler (STYLE.md §4): level-triggered and idempotent.
//!
//! Each pass reads the desired state (the definitions at the source's
//! current revision), compares it with what is served (the catalog and the
//! builder's content-addressed results) and converges: new or changed
//! templates are built and then published, templates that need no build are
//! published as is, removed ones are withdrawn (no new sandboxes), shown as
//! `Draining` while sandboxes still use them, and forgotten once none do. A
//! failed build or an invalid file never touches what is serving: the
//! template is `Stalled` with the reason and the previous version stays.
//!
//! Triggers only wake the loop — a file change (directory sources), the
//! poll timer (git), `POST /reconcile`, a periodic resync — so missing or
//! coalescing a trigger is harmless: the next pass sees the same state.

pub mod cli;
pub mod source;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lelantos_core::TemplateSpec;
use lelantos_core::template::{Base, Step};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::builder::{BuildInput, Builder, LogLine};
use crate::sandboxes::Sandboxes;
use crate::store::{self, Store, template_status::StatusRow};
use crate::templates::{self, GuestConfig, GuestImage, Template, needs_build};
pub use source::{Source, Synced};

/// Status phases (Flux-style).
pub mod phase {
    /// Serving its desired build.
    pub const READY: &str = "Ready";
    /// Building (or waiting for its base).
    pub const RECONCILING: &str = "Reconciling";
    /// Cannot converge; the reason says why. The previous build (if any) serves.
    pub const STALLED: &str = "Stalled";
    /// Removed from the source; sandboxes still use it.
    pub const DRAINING: &str = "Draining";
}

/// The name under which the source's own status is kept.
pub const SOURCE_ROW: &str = "";

/// Everything a reconciler needs.
pub struct Reconciler {
    sandboxes: Sandboxes,
    builder: Arc<Builder>,
    source: Source,
    builtin: Arc<GuestImage>,
    envd: PathBuf,
    oci_cache: PathBuf,
    store: std::sync::Mutex<Store>,
    wake: mpsc::Sender<()>,
    wake_rx: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Status of everything, for `GET /status` and `lelantos status`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Source row first, then templates by name.
    pub rows: Vec<StatusRow>,
}

/// What a pass decided about one template (before it is written).
struct Outcome {
    phase: &'static str,
    reason: &'static str,
    message: String,
    build_id: Option<String>,
    desired: Option<String>,
    log: Option<String>,
}

impl Reconciler {
    /// A reconciler over `source`. `store` is its own connection to the
    /// state database.
    pub fn new(
        sandboxes: Sandboxes,
        builder: Arc<Builder>,
        source: Source,
        builtin: Arc<GuestImage>,
        envd: PathBuf,
        oci_cache: PathBuf,
        store: Store,
    ) -> Arc<Self> {
        let (wake, wake_rx) = mpsc::channel(1);
        Arc::new(Self {
            sandboxes,
            builder,
            source,
            builtin,
            envd,
            oci_cache,
            store: std::sync::Mutex::new(store),
            wake,
            wake_rx: tokio::sync::Mutex::new(wake_rx),
        })
    }

    /// Asks for a pass soon (coalesced with any pending request).
    pub fn trigger(&self) {
        let _ = self.wake.try_send(());
    }

    /// Current status rows.
    pub fn report(&self) -> Result<Report, store::Error> {
        let rows = store::template_status::list(self.store().conn())?;
        Ok(Report { rows })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs passes until `stop`: one at start, then on every trigger, on
    /// the git poll interval, and every `resync`.
    pub async fn run(self: Arc<Self>, resync: Duration, stop: CancellationToken) {
        let _watcher = self.watch();
        let poll = match &self.source {
            Source::Git { config, .. } => Duration::from_secs(config.poll_interval_s.max(1)),
            Source::Dir(_) => resync,
        };
        let mut rx = self.wake_rx.lock().await;
        loop {
            self.pass().await;
            tokio::select! {
                () = stop.cancelled() => return,
                _ = rx.recv() => {
                    // Let a burst of file events settle into one pass.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    while rx.try_recv().is_ok() {}
                }
                () = tokio::time::sleep(poll.min(resync)) => {}
            }
        }
    }

    /// Watches a directory source; events only trigger a pass.
    fn watch(self: &Arc<Self>) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher as _;
        let dir = self.source.watch_dir()?.to_owned();
        let wake = self.wake.clone();
        let mut watcher = notify::recommended_watcher(move |_event| {
            let _ = wake.try_send(());
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the templates directory; relying on resync"))
        .ok()?;
        if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::Recursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the templates directory; relying on resync");
            return None;
        }
        Some(watcher)
    }

    fn write(&self, name: &str, revision: Option<&str>, pool: u32, o: &Outcome) {
        let row = StatusRow {
            name: name.to_owned(),
            phase: o.phase.to_owned(),
            reason: o.reason.to_owned(),
            message: o.message.clone(),
            revision: revision.map(str::to_owned),
            build_id: o.build_id.clone(),
            desired_build: o.desired.clone(),
            build_log: o.log.clone(),
            pool_desired: pool,
            updated_at_ms: store::now_ms(),
        };
        if let Err(e) = store::template_status::upsert(self.store().conn(), &row) {
            tracing::warn!(template = name, error = %e, "record template status");
        }
        if !name.is_empty() {
            metrics::gauge!("lelantos_template_ready", "template" => name.to_owned())
                .set(if o.phase == phase::READY { 1.0 } else { 0.0 });
        }
    }

    /// Ends a pass early: the source is `Stalled`, nothing served changes.
    fn source_stalled(
        &self,
        outcome: &'static str,
        rev: Option<&str>,
        reason: &'static str,
        message: String,
    ) {
        metrics::counter!("lelantos_reconcile_passes_total", "outcome" => outcome).increment(1);
        self.write(SOURCE_ROW, rev, 0, &stalled(reason, message, None, None));
    }

    /// One pass. Never fails: every problem lands in a status row.
    pub async fn pass(&self) {
        let synced = match self.source.sync().await {
            Ok(s) => s,
            Err(e) => {
                return self.source_stalled("source_error", None, "SourceFailed", e.to_string());
            }
        };
        let rev = Some(synced.revision.as_str());
        let defs = match templates::read_definitions(&synced.dir) {
            Ok(d) => d,
            // An invalid file stops the whole pass: applying the valid half
            // of a commit would serve a state nobody wrote.
            Err(e) => {
                return self.source_stalled("invalid", rev, "InvalidDefinition", e.to_string());
            }
        };
        self.write(
            SOURCE_ROW,
            rev,
            0,
            &Outcome {
                phase: phase::READY,
                reason: "Synced",
                message: format!("{} template definition(s)", defs.templates.len()),
                build_id: None,
                desired: None,
                log: None,
            },
        );

        // Templates on another template come after their base; a round that
        // makes no progress leaves the rest waiting (missing or cyclic base).
        let mut pending = defs.templates.clone();
        let mut done: Vec<String> = Vec::new();
        let mut progressed = true;
        while !pending.is_empty() && progressed {
            progressed = false;
            let mut later = Vec::new();
            for (file, spec) in pending {
                let base_defined_here = match &spec.base {
                    Base::Template(base) => defs
                        .templates
                        .iter()
                        .find(|(_, s)| s.names().any(|n| n == base))
                        .map(|(_, s)| s.name.clone()),
                    _ => None,
                };
                if base_defined_here.is_some_and(|b| !done.contains(&b)) {
                    later.push((file, spec));
                    continue;
                }
                progressed = true;
                let pool = defs.pools.pools.get(&spec.name).copied().unwrap_or(0);
                let outcome = self.converge(&synced.dir, &file, &spec, rev, pool).await;
                self.write(&spec.name, rev, pool, &outcome);
                done.push(spec.name.clone());
            }
            pending = later;
        }
        for (_, spec) in pending {
            let previous = self.serving_build(&spec.name);
            self.write(
                &spec.name,
                rev,
                0,
                &stalled(
                    "BaseNotReady",
                    format!("base {:?} is not ready (missing or cyclic)", spec.base),
                    previous,
                    None,
                ),
            );
        }
        self.drain(
            &defs
                .templates
                .iter()
                .map(|(_, s)| s.name.clone())
                .collect::<Vec<_>>(),
            rev,
        );
        metrics::counter!("lelantos_reconcile_passes_total", "outcome" => "ok").increment(1);
    }

    fn serving_build(&self, name: &str) -> Option<String> {
        self.sandboxes
            .catalog()
            .iter()
            .find(|t| t.spec.name == name)
            .map(|t| t.build_id.clone())
    }

    /// Brings one template to its desired build.
    async fn converge(
        &self,
        dir: &Path,
        file: &Path,
        spec: &TemplateSpec,
        rev: Option<&str>,
        pool: u32,
    ) -> Outcome {
        let serving = self.serving_build(&spec.name);
        let publish = |build_id: String, image: Arc<GuestImage>, config: GuestConfig| {
            self.sandboxes.publish_template(Template {
                spec: spec.clone(),
                file: file.to_owned(),
                loaded_at_ms: store::now_ms(),
                build_id,
                image,
                config,
            })
        };
        if !needs_build(spec) {
            let id = templates::builtin_build_id(&self.builtin);
            let published = publish(id.clone(), self.builtin.clone(), GuestConfig::default());
            return after_publish(
                published,
                "Published",
                "served from the builtin image".into(),
                id,
                None,
                serving,
            );
        }
        let (base, base_config, base_id) = match self.resolve_base(spec).await {
            Ok(b) => b,
            Err(message) => return stalled("BaseFailed", message, serving, None),
        };
        let key = match build_key(dir, spec, &base_id) {
            Ok(k) => k,
            Err(message) => return stalled("InvalidInput", message, serving, None),
        };
        let serve_output = |out: crate::builder::BuildOutput, reason, message| {
            let image = Arc::new(GuestImage {
                manifest: out.dir.join("output.json"),
                rootfs_bytes: std::fs::metadata(&out.rootfs).map_or(base.rootfs_bytes, |m| m.len()),
                rootfs: out.rootfs.clone(),
                ..(*base).clone()
            });
            let log = Some(out.log.display().to_string());
            let published = publish(key.clone(), image, out.config.clone());
            after_publish(
                published,
                reason,
                message,
                key.clone(),
                log,
                serving.clone(),
            )
        };
        if serving.as_deref() == Some(key.as_str()) {
            return ready(
                "UpToDate",
                format!("build {} serving", short(&key)),
                key.clone(),
                None,
            );
        }
        if let Some(out) = self.builder.cached(&key) {
            metrics::counter!("lelantos_build_cache_total", "result" => "hit").increment(1);
            return serve_output(
                out,
                "BuildCached",
                format!("build {} (cached)", short(&key)),
            );
        }
        metrics::counter!("lelantos_build_cache_total", "result" => "miss").increment(1);
        self.write(
            &spec.name,
            rev,
            pool,
            &Outcome {
                phase: phase::RECONCILING,
                reason: "Building",
                message: format!("building {}", short(&key)),
                build_id: serving.clone(),
                desired: Some(key.clone()),
                log: None,
            },
        );
        let started = std::time::Instant::now();
        let name = spec.name.clone();
        let log = move |line: LogLine| {
            tracing::info!(template = %name, step = ?line.step, "build: {}", line.message);
        };
        let input = BuildInput {
            template: spec.name.clone(),
            key: key.clone(),
            base: (*base).clone(),
            base_config,
            steps: spec.steps.clone(),
            context: Some(dir.to_owned()),
            start_cmd: spec.start_cmd.clone(),
            ready_cmd: spec.ready_cmd.clone(),
            disk_mib: spec.resources.disk_mib,
        };
        let result = self.builder.build(input, &log).await;
        metrics::histogram!("lelantos_template_build_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(out) => {
                metrics::counter!("lelantos_template_builds_total", "outcome" => "ok").increment(1);
                serve_output(
                    out,
                    "BuildSucceeded",
                    format!("build {} serving", short(&key)),
                )
            }
            Err(e) => {
                metrics::counter!("lelantos_template_builds_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(template = %spec.name, error = %e, "build failed; the previous version keeps serving");
                stalled("BuildFailed", e.to_string(), serving, Some(key.clone()))
            }
        }
    }

    /// The base image, its guest defaults and its identity (part of the key).
    async fn resolve_base(
        &self,
        spec: &TemplateSpec,
    ) -> Result<(Arc<GuestImage>, GuestConfig, String), String> {
        match &spec.base {
            Base::Builtin => Ok((
                self.builtin.clone(),
                GuestConfig::default(),
                templates::builtin_build_id(&self.builtin),
            )),
            Base::Debian(suite) if suite == "bookworm" => Ok((
                self.builtin.clone(),
                GuestConfig::default(),
                templates::builtin_build_id(&self.builtin),
            )),
            Base::Debian(suite) => Err(format!(
                "Debian suite `{suite}`: only bookworm is built in so far (use base: builtin or an OCI image)"
            )),
            Base::Template(name) => {
                let catalog = self.sandboxes.catalog();
                let t = catalog
                    .resolve(name)
                    .ok_or_else(|| format!("base template `{name}` is not ready"))?;
                Ok((
                    t.image.clone(),
                    t.config.clone(),
                    format!("template:{}", t.build_id),
                ))
            }
            Base::Image(reference) => {
                let req = crate::oci::PullRequest {
                    reference: reference.clone(),
                    auth: None,
                    insecure: is_local_registry(reference),
                    envd: self.envd.clone(),
                    cache_dir: self.oci_cache.clone(),
                };
                let log = |line: &str| tracing::info!(image = %reference, "pull: {line}");
                let pulled = crate::oci::pull_rootfs(&req, &log)
                    .await
                    .map_err(|e| e.to_string())?;
                let image = Arc::new(GuestImage {
                    manifest: pulled.rootfs.with_extension("json"),
                    rootfs_bytes: std::fs::metadata(&pulled.rootfs).map_or(0, |m| m.len()),
                    rootfs: pulled.rootfs,
                    ..(*self.builtin).clone()
                });
                Ok((image, pulled.config, format!("oci:{}", pulled.digest)))
            }
        }
    }

    /// Withdraws templates no longer defined; forgets them once unused.
    fn drain(&self, defined: &[String], rev: Option<&str>) {
        let known: Vec<String> = self
            .report()
            .map(|r| r.rows.into_iter().map(|r| r.name).collect())
            .unwrap_or_default();
        // Templates built through the E2B API are not the source's to remove.
        let served: Vec<String> = self
            .sandboxes
            .catalog()
            .iter()
            .filter(|t| t.file != Path::new(crate::api::template_build::API_TEMPLATE_FILE))
            .map(|t| t.spec.name.clone())
            .collect();
        let mut gone: Vec<String> = known
            .into_iter()
            .chain(served)
            .filter(|n| !n.is_empty() && !defined.contains(n))
            .collect();
        gone.sort();
        gone.dedup();
        for name in gone {
            self.sandboxes.withdraw_template(&name);
            let users = self.sandboxes.count_using_template(&name).unwrap_or(0);
            if users == 0 {
                let _ = store::template_status::delete(self.store().conn(), &name);
                metrics::gauge!("lelantos_template_ready", "template" => name.clone()).set(0.0);
                tracing::info!(template = %name, "removed");
            } else {
                self.write(
                    &name,
                    rev,
                    0,
                    &Outcome {
                        phase: phase::DRAINING,
                        reason: "Removed",
                        message: format!(
                            "removed from the source; {users} sandbox(es) still running"
                        ),
                        build_id: None,
                        desired: None,
                        log: None,
                    },
                );
            }
        }
    }
}

fn ready(reason: &'static str, message: String, build: String, log: Option<String>) -> Outcome {
    Outcome {
        phase: phase::READY,
        reason,
        message,
        desired: Some(build.clone()),
        build_id: Some(build),
        log,
    }
}

/// Ready as `reason` once `published` went through; otherwise Stalled,
/// with `serving` (the previous build) still serving.
fn after_publish(
    published: Result<(), crate::templates::Error>,
    reason: &'static str,
    message: String,
    build: String,
    log: Option<String>,
    serving: Option<String>,
) -> Outcome {
    match published {
        Ok(()) => ready(reason, message, build, log),
        Err(e) => stalled("PublishFailed", e.to_string(), serving, Some(build)),
    }
}

fn stalled(
    reason: &'static str,
    message: String,
    serving: Option<String>,
    desired: Option<String>,
) -> Outcome {
    Outcome {
        phase: phase::STALLED,
        reason,
        message,
        build_id: serving,
        desired,
        log: None,
    }
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Plain http for registries on this host (the usual local-registry setup).
fn is_local_registry(reference: &str) -> bool {
    let host = reference.split('/').next().unwrap_or("");
    host.starts_with("127.0.0.1") || host.starts_with("localhost") || host.starts_with("[::1]")
}

/// The content hash naming a template's build: the base's identity, the
/// steps, start/ready commands, disk size, and every byte `copy` reads.
pub fn build_key(dir: &Path, spec: &TemplateSpec, base_id: &str) -> Result<String, String> {
    let mut copies = BTreeMap::new();
    for step in &spec.steps {
        if let Step::Copy(c) = step {
            let src = dir.join(&c.src);
            let hash = tree_hash(&src).map_err(|e| format!("copy source `{}`: {e}", c.src))?;
            copies.insert(c.src.clone(), hash);
        }
    }
    let material = serde_json::json!({
        "v": 1,
        "base": base_id,
        "steps": spec.steps,
        "start_cmd": spec.start_cmd,
        "ready_cmd": spec.ready_cmd,
        "disk_mib": spec.resources.disk_mib,
        "copies": copies,
    });
    let digest = Sha256::digest(material.to_string().as_bytes());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..32]
        .to_owned())
}

/// Hash of a file or directory tree: relative paths, modes and contents.
fn tree_hash(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut h = Sha256::new();
    let mut stack = vec![path.to_owned()];
    let mut files = Vec::new();
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        files.push((p, meta));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, meta) in files {
        h.update(
            p.strip_prefix(path)
                .unwrap_or(&p)
                .as_os_str()
                .as_encoded_bytes(),
        );
        h.update(meta.permissions().mode().to_le_bytes());
        if meta.is_file() {
            h.update(std::fs::read(&p)?);
        } else if meta.is_symlink() {
            h.update(std::fs::read_link(&p)?.as_os_str().as_encoded_bytes());
        }
        h.update([0]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Map of template name → desired pool size, for callers that only need it.
pub type Pools = HashMap<String, u32>;
