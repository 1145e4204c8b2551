//! One build, start to finish, as a spawned task: resolve the base (pull an
//! OCI image, or take a template's image), translate the steps, unpack the
//! uploads, run the shared builder, publish the result in the catalog. Every
//! phase logs into the build's record; the outcome settles its status.

use std::path::PathBuf;
use std::sync::Arc;

use lelantos_core::template::Base;
use lelantos_core::{MemoryMib, TemplateSpec, Vcpus};

use super::TemplateBuildState;
use super::files::{self, FilesError};
use super::plan::{self, KeyInput, Plan, PlanError};
use super::wire::{BuildLogEntry, TemplateBuildStartV2};
use crate::builder::{BuildError, BuildInput, LogLine};
use crate::templates::{self, GuestConfig, GuestImage};

/// The SDK's name for the base phase (py maps it to the `from_*` call).
const STEP_BASE: &str = "base";
/// The SDK's name for what follows the last instruction.
const STEP_FINALIZE: &str = "finalize";
/// The image py uses when the template names no base (`Template()`): E2B's
/// own base image, which is what our builtin `base` template is.
const E2B_DEFAULT_IMAGE: &str = "e2bdev/base";
/// The catalog template whose kernel and initramfs every build boots.
const BASE_TEMPLATE: &str = "base";

/// Why a build failed; the text becomes the SDK's BuildException.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The base could not be resolved (pull failed, no such template, …).
    #[error("base: {0}")]
    Base(String),
    /// An instruction does not fit the base (e.g. a relative path with no
    /// workdir).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The uploaded files could not be used.
    #[error("files")]
    Files(#[source] FilesError),
    /// The builder failed.
    #[error("build")]
    Build(#[source] BuildError),
    /// The result could not be published.
    #[error("publish")]
    Publish(#[source] PublishError),
}

/// Why publishing a finished build failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The name now belongs to a template from `templates.d`.
    #[error("template `{0}` is defined in the templates directory; the API cannot replace it")]
    Owned(String),
    /// The catalog refused it (name clash).
    #[error("catalog")]
    Catalog(#[source] templates::Error),
    /// The new root disk is unreadable.
    #[error("stat {path}")]
    Stat {
        /// The disk.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

pub use crate::report::chain;

/// What a job needs besides the shared state.
#[derive(Debug, Clone)]
pub struct Job {
    /// The build.
    pub build_id: String,
    /// The template id.
    pub template_id: String,
    /// vCPUs of the template's sandboxes.
    pub vcpus: Option<Vcpus>,
    /// Memory of the template's sandboxes.
    pub memory: Option<MemoryMib>,
    /// The SDK's build description.
    pub start: TemplateBuildStartV2,
}

/// The resolved base of a build.
struct BaseImage {
    image: GuestImage,
    config: GuestConfig,
    /// Names the base's content for the cache key.
    identity: String,
    spec: Base,
}

fn ts(ms: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

impl TemplateBuildState {
    fn note(&self, build_id: &str, level: &str, step: Option<String>, message: String) {
        self.builds.log(
            build_id,
            BuildLogEntry {
                timestamp: ts(crate::store::now_ms()),
                message,
                level: level.to_owned(),
                step,
            },
        );
    }
}

/// Starts `job` in the background. A panic in it still settles the build
/// (as `error`), so a poller never waits forever.
pub fn spawn(state: TemplateBuildState, job: Job) {
    let build_id = job.build_id.clone();
    let builds = state.builds.clone();
    let task = tokio::spawn(run(state, job));
    tokio::spawn(async move {
        if let Err(e) = task.await {
            tracing::error!(build = %build_id, error = %e, "template build task died");
            builds.finish(&build_id, Some((format!("build task failed: {e}"), None)));
        }
    });
}

async fn run(state: TemplateBuildState, job: Job) {
    let id = job.build_id.clone();
    let work = state.data_dir.join("template-builds").join(&id);
    tracing::info!(build = %id, template = %job.template_id, "template build started");
    state.note(
        &id,
        "info",
        Some(STEP_BASE.into()),
        format!("building template {} (build {id})", job.template_id),
    );
    let mut plan_seen = None;
    let outcome = build(&state, &job, &work, &mut plan_seen).await;
    // The context is only an input; the builder keeps what it made.
    if let Err(e) = tokio::fs::remove_dir_all(&work).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(build = %id, dir = %work.display(), error = %e, "could not remove build context");
    }
    match outcome {
        Ok(()) => {
            tracing::info!(build = %id, template = %job.template_id, "template build ready");
            state.note(
                &id,
                "info",
                Some(STEP_FINALIZE.into()),
                format!("template {} is ready", job.template_id),
            );
            state.builds.finish(&id, None);
        }
        Err(e) => {
            let (message, step) = describe(&e, plan_seen.as_ref());
            tracing::warn!(build = %id, template = %job.template_id, error = %message, "template build failed");
            state.note(&id, "error", step.clone(), message.clone());
            state.builds.finish(&id, Some((message, step)));
        }
    }
}

/// The SDK-facing text and step of a failure. Builder step indexes count
/// our steps; the SDK counts its instructions, so they are translated.
fn describe(e: &JobError, plan: Option<&Plan>) -> (String, Option<String>) {
    match e {
        JobError::Base(_) => (e.to_string(), Some(STEP_BASE.into())),
        JobError::Plan(PlanError::Args { number, .. } | PlanError::UnknownType { number, .. }) => {
            (e.to_string(), Some(number.to_string()))
        }
        JobError::Build(BuildError::Step {
            index,
            step,
            message,
        }) => match plan.and_then(|p| p.sdk_step(*index)) {
            Some(n) => (
                format!("step {n} ({step}) failed: {message}"),
                Some(n.to_string()),
            ),
            None => (chain(e), None),
        },
        JobError::Publish(_) => (chain(e), Some(STEP_FINALIZE.into())),
        _ => (chain(e), None),
    }
}

async fn build(
    state: &TemplateBuildState,
    job: &Job,
    work: &std::path::Path,
    plan_seen: &mut Option<Plan>,
) -> Result<(), JobError> {
    let id = job.build_id.as_str();
    let base = resolve_base(state, job).await?;
    let plan = plan::plan(
        &job.start.steps,
        base.config.user.as_deref(),
        base.config.workdir.as_deref(),
    )?;
    *plan_seen = Some(plan.clone());

    let context = if plan.files.is_empty() {
        None
    } else {
        let dir = work.join("context");
        let (data_dir, hashes, dest) = (state.data_dir.clone(), plan.files.clone(), dir.clone());
        tokio::task::spawn_blocking(move || files::unpack_all(&data_dir, &hashes, &dest))
            .await
            .map_err(|e| {
                JobError::Files(FilesError::Unpack {
                    path: dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(JobError::Files)?;
        Some(dir)
    };

    let start_cmd = job.start.start_cmd.clone().filter(|c| !c.trim().is_empty());
    let ready_cmd = job.start.ready_cmd.clone().filter(|c| !c.trim().is_empty());
    let forced =
        job.start.force == Some(true) || job.start.steps.iter().any(|s| s.force == Some(true));
    let key = KeyInput {
        base: &base.identity,
        steps: &plan.steps,
        files: &plan.files,
        start_cmd: start_cmd.as_deref(),
        ready_cmd: ready_cmd.as_deref(),
        nonce: forced.then_some(id),
    }
    .key();

    let log = {
        let builds = state.builds.clone();
        let id = id.to_owned();
        let origin = Arc::new(plan.origin.clone());
        move |line: LogLine| {
            builds.log(
                &id,
                BuildLogEntry {
                    timestamp: ts(line.ts_ms),
                    message: line.message,
                    level: line.level.to_owned(),
                    step: line
                        .step
                        .and_then(|i| origin.get(i).copied())
                        .map(|n| n.to_string()),
                },
            );
        }
    };
    let output = state
        .builder
        .build(
            BuildInput {
                template: job.template_id.clone(),
                key,
                base: base.image.clone(),
                base_config: base.config.clone(),
                steps: plan.steps.clone(),
                context,
                start_cmd: start_cmd.clone(),
                ready_cmd: ready_cmd.clone(),
                disk_mib: None,
            },
            &log,
        )
        .await
        .map_err(JobError::Build)?;
    if output.cached {
        state.note(
            id,
            "info",
            Some(STEP_FINALIZE.into()),
            "reused an identical earlier build".into(),
        );
    }

    let rootfs_bytes = tokio::fs::metadata(&output.rootfs)
        .await
        .map_err(|source| {
            JobError::Publish(PublishError::Stat {
                path: output.rootfs.clone(),
                source,
            })
        })?
        .len();
    if let Some(t) = state.sandboxes.catalog().resolve(&job.template_id)
        && (t.file != std::path::Path::new(super::API_TEMPLATE_FILE)
            || t.spec.name != job.template_id)
    {
        return Err(JobError::Publish(PublishError::Owned(
            job.template_id.clone(),
        )));
    }
    let template = templates::Template {
        spec: TemplateSpec {
            version: lelantos_core::template::TEMPLATE_VERSION,
            name: job.template_id.clone(),
            aliases: vec![],
            base: base.spec,
            // The steps are baked into the disk; the spec only records where
            // the template came from.
            steps: vec![],
            start_cmd,
            ready_cmd,
            resources: lelantos_core::template::TemplateResources {
                vcpus: job.vcpus,
                memory_mib: job.memory,
                disk_mib: None,
            },
        },
        file: PathBuf::from(super::API_TEMPLATE_FILE),
        loaded_at_ms: crate::store::now_ms(),
        build_id: id.to_owned(),
        image: Arc::new(GuestImage {
            rootfs: output.rootfs.clone(),
            rootfs_bytes,
            ..base.image
        }),
        config: GuestConfig {
            user: plan.final_user.clone(),
            ..output.config
        },
    };
    state
        .sandboxes
        .publish_template(template)
        .map_err(|e| JobError::Publish(PublishError::Catalog(e)))?;
    Ok(())
}

/// Whether `reference` names a registry on this machine (plain HTTP).
pub fn is_local_registry(reference: &str) -> bool {
    let Some((host, _)) = reference.split_once('/') else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // `[::1]:5000`
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.split(':').next().unwrap_or(host),
    };
    matches!(name, "127.0.0.1" | "localhost" | "::1")
}

async fn resolve_base(state: &TemplateBuildState, job: &Job) -> Result<BaseImage, JobError> {
    let id = job.build_id.as_str();
    let catalog = state.sandboxes.catalog();
    let from_catalog = |name: &str, spec: Base| {
        catalog
            .resolve(name)
            .map(|t| BaseImage {
                image: (*t.image).clone(),
                config: t.config.clone(),
                identity: format!("template:{}:{}", t.spec.name, t.build_id),
                spec,
            })
            .ok_or_else(|| JobError::Base(format!("template `{name}` not found")))
    };
    let image = job
        .start
        .from_image
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty());
    let template = job
        .start
        .from_template
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    match (image, template) {
        (Some(reference), _)
            if reference != E2B_DEFAULT_IMAGE
                && !reference.starts_with(&format!("{E2B_DEFAULT_IMAGE}:")) =>
        {
            let builtin = from_catalog(BASE_TEMPLATE, Base::Builtin)?;
            let auth = match &job.start.from_image_registry {
                None => None,
                Some(r) if r.kind.as_deref().is_none_or(|k| k == "registry") => {
                    match (&r.username, &r.password) {
                        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                        _ => None,
                    }
                }
                Some(r) => {
                    return Err(JobError::Base(format!(
                        "registry type `{}` is not supported; use username and password",
                        r.kind.as_deref().unwrap_or_default()
                    )));
                }
            };
            state.note(
                id,
                "info",
                Some(STEP_BASE.into()),
                format!("pulling {reference}"),
            );
            let log = {
                let builds = state.builds.clone();
                let id = id.to_owned();
                move |line: &str| {
                    builds.log(
                        &id,
                        BuildLogEntry {
                            timestamp: ts(crate::store::now_ms()),
                            message: line.to_owned(),
                            level: "info".into(),
                            step: Some(STEP_BASE.into()),
                        },
                    );
                }
            };
            let pulled = crate::oci::pull_rootfs(
                &crate::oci::PullRequest {
                    reference: reference.to_owned(),
                    auth,
                    insecure: is_local_registry(reference),
                    envd: state.envd_path.clone(),
                    cache_dir: state.cache_dir.clone(),
                },
                &log,
            )
            .await
            .map_err(|e| JobError::Base(chain(&e)))?;
            let rootfs_bytes = tokio::fs::metadata(&pulled.rootfs)
                .await
                .map_err(|e| JobError::Base(format!("stat {}: {e}", pulled.rootfs.display())))?
                .len();
            Ok(BaseImage {
                image: GuestImage {
                    rootfs: pulled.rootfs,
                    rootfs_bytes,
                    ..builtin.image
                },
                config: pulled.config,
                identity: format!("image:{reference}@{}", pulled.digest),
                spec: Base::Image(reference.to_owned()),
            })
        }
        (Some(_), _) => from_catalog(BASE_TEMPLATE, Base::Builtin),
        (None, Some(name)) => {
            let name = name.split(':').next().unwrap_or(name).to_ascii_lowercase();
            from_catalog(&name, Base::Template(name.clone()))
        }
        (None, None) => from_catalog(BASE_TEMPLATE, Base::Builtin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_registries_are_plain_http() {
        assert!(is_local_registry("127.0.0.1:5000/test/img:1"));
        assert!(is_local_registry("localhost/x"));
        assert!(is_local_registry("[::1]:5000/x:1"));
        assert!(!is_local_registry("docker.io/library/debian:12"));
        assert!(!is_local_registry("debian"));
        assert!(!is_local_registry("127.0.0.1.example.com/x"));
    }

    #[test]
    fn step_failures_use_the_sdk_numbering() {
        let p = plan::plan(
            &[
                super::super::wire::TemplateStep {
                    kind: "RUN".into(),
                    args: vec!["true".into(), "user".into()],
                    ..Default::default()
                },
                super::super::wire::TemplateStep {
                    kind: "RUN".into(),
                    args: vec!["false".into()],
                    ..Default::default()
                },
            ],
            None,
            None,
        )
        .ok();
        let e = JobError::Build(BuildError::Step {
            index: 3,
            step: "run: false".into(),
            message: "exit status 1".into(),
        });
        let (message, step) = describe(&e, p.as_ref());
        assert_eq!(message, "step 2 (run: false) failed: exit status 1");
        assert_eq!(step.as_deref(), Some("2"));
        let (message, step) = describe(&JobError::Base("pull failed".into()), None);
        assert_eq!(
            (message.as_str(), step.as_deref()),
            ("base: pull failed", Some("base"))
        );
    }
}
