//! The template catalog: definitions from `templates.d/` bound to the guest
//! image they boot.
//!
//! Loaded once at start for now; the GitOps reconciler will own reloading
//! (and building) it. Resolution accepts a template's id or any alias.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lelantos_core::template::{Base, PoolsSpec, TemplateError};
use lelantos_core::{LifecycleId, MemoryMib, NetworkSpec, SandboxId, TemplateSpec, Vcpus, VmSpec};
use serde::{Deserialize, Serialize};

/// Why the catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The definitions directory or a file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// What.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A definition is invalid.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Two templates claim the same name.
    #[error("template name `{name}` is used by both {first} and {second}")]
    Duplicate {
        /// The name.
        name: String,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// The directory holds no template at all.
    #[error("no template definitions (*.yaml) in {0}")]
    Empty(PathBuf),
    /// The guest image manifest is unusable.
    #[error("guest image manifest {path}: {source}")]
    Image {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: lelantos_image::manifest::Error,
    },
}

/// A bootable guest image (kernel, initramfs, root disk) on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    /// The manifest it was read from.
    pub manifest: PathBuf,
    /// bzImage.
    pub kernel: PathBuf,
    /// initramfs.
    pub initramfs: PathBuf,
    /// ext4 root disk.
    pub rootfs: PathBuf,
    /// Size of the root disk, bytes.
    pub rootfs_bytes: u64,
    /// Kernel arguments the image needs.
    pub cmdline: Vec<String>,
}

impl GuestImage {
    /// Reads a `lelantos-image` manifest (paths relative to its directory).
    pub fn from_manifest(path: &Path) -> Result<Self, Error> {
        let m = lelantos_image::manifest::Manifest::read(path).map_err(|source| Error::Image {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Self {
            manifest: path.to_owned(),
            kernel: dir.join(&m.kernel.file),
            initramfs: dir.join(&m.initramfs.file),
            rootfs: dir.join(&m.rootfs.file),
            rootfs_bytes: m.rootfs.size,
            cmdline: m
                .kernel_cmdline
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Root disk size in MiB, as the API reports it.
    pub fn disk_size_mb(&self) -> u32 {
        u32::try_from(self.rootfs_bytes.div_ceil(1024 * 1024)).unwrap_or(u32::MAX)
    }

    /// The VM spec of one sandbox booting this image.
    pub fn vm_spec(
        &self,
        sandbox: &SandboxId,
        lifecycle: &LifecycleId,
        vcpus: Vcpus,
        memory: MemoryMib,
        egress: bool,
    ) -> VmSpec {
        VmSpec {
            sandbox_id: sandbox.clone(),
            lifecycle_id: lifecycle.clone(),
            vcpus,
            memory,
            kernel: self.kernel.clone(),
            initramfs: Some(self.initramfs.clone()),
            rootfs: self.rootfs.clone(),
            extra_cmdline: self.cmdline.clone(),
            network: NetworkSpec { egress },
        }
    }
}

/// What a template's build leaves for every sandbox started from it:
/// `env`/`workdir`/`user` steps become envd's defaults, `start_cmd` is
/// started and `ready_cmd` awaited before the sandbox is handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Environment of every process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Default working directory.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Default user.
    #[serde(default)]
    pub user: Option<String>,
    /// Started in the background in every new sandbox.
    #[serde(default)]
    pub start_cmd: Option<String>,
    /// Polled until it exits 0 before a new sandbox is handed out.
    #[serde(default)]
    pub ready_cmd: Option<String>,
}

/// A template ready to start sandboxes from.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its definition.
    pub spec: TemplateSpec,
    /// The file it came from.
    pub file: PathBuf,
    /// When its current build was made ready (unix ms).
    pub loaded_at_ms: i64,
    /// Id of the build serving it (content hash, or the image manifest's for
    /// templates that need no build).
    pub build_id: String,
    /// The image it boots.
    pub image: Arc<GuestImage>,
    /// Defaults and commands from its build.
    pub config: GuestConfig,
}

/// `Template::file` of templates built through the E2B API (they have no
/// definition file; they are persisted as [`PublishedRecord`]s instead).
pub const API_TEMPLATE_FILE: &str = "api";

/// What is kept of an API-built template so a restarted daemon serves it
/// again (its definition exists nowhere else).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishedRecord {
    /// Its definition as the API made it.
    pub spec: TemplateSpec,
    /// Its build.
    pub build_id: String,
    /// Kernel, initramfs and its built root disk.
    pub image: GuestImage,
    /// Guest defaults and commands.
    pub config: GuestConfig,
    /// When it was published (unix ms).
    pub loaded_at_ms: i64,
}

impl PublishedRecord {
    /// The record of `t`.
    pub fn of(t: &Template) -> Self {
        Self {
            spec: t.spec.clone(),
            build_id: t.build_id.clone(),
            image: (*t.image).clone(),
            config: t.config.clone(),
            loaded_at_ms: t.loaded_at_ms,
        }
    }

    /// The template it describes.
    pub fn into_template(self, file: PathBuf) -> Template {
        Template {
            spec: self.spec,
            file,
            loaded_at_ms: self.loaded_at_ms,
            build_id: self.build_id,
            image: Arc::new(self.image),
            config: self.config,
        }
    }
}

/// Whether a definition can be served straight from the builtin image,
/// without a build.
pub fn needs_build(spec: &TemplateSpec) -> bool {
    !(spec.base == Base::Builtin
        && spec.steps.is_empty()
        && spec.start_cmd.is_none()
        && spec.ready_cmd.is_none()
        && spec.resources.disk_mib.is_none())
}

/// Every template this appliance serves.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    templates: Vec<Template>,
}

impl Catalog {
    /// A catalog of these templates; names must be unique.
    pub fn new(templates: Vec<Template>) -> Result<Self, Error> {
        let mut seen: Vec<&Template> = Vec::new();
        for t in &templates {
            for name in t.spec.names() {
                if let Some(other) = seen.iter().find(|o| o.spec.names().any(|n| n == name)) {
                    return Err(Error::Duplicate {
                        name: name.to_owned(),
                        first: other.file.clone(),
                        second: t.file.clone(),
                    });
                }
            }
            seen.push(t);
        }
        Ok(Self { templates })
    }

    /// Loads every template definition in `dir` that needs no build (base
    /// `builtin`, no steps), binding it to `image`; the others are skipped
    /// with a warning (the reconciler builds those).
    pub fn load(dir: &Path, image: Arc<GuestImage>) -> Result<Self, Error> {
        let now = crate::store::now_ms();
        let defs = read_definitions(dir)?;
        let mut templates = Vec::new();
        for (file, spec) in defs.templates {
            if needs_build(&spec) {
                tracing::warn!(template = %spec.name, file = %file.display(), "needs a build; not served until the reconciler builds it");
                continue;
            }
            templates.push(Template {
                spec,
                file,
                loaded_at_ms: now,
                build_id: builtin_build_id(&image),
                image: image.clone(),
                config: GuestConfig::default(),
            });
        }
        if templates.is_empty() {
            return Err(Error::Empty(dir.to_owned()));
        }
        Self::new(templates)
    }

    /// The template named `name` (id or alias).
    pub fn resolve(&self, name: &str) -> Option<&Template> {
        self.templates
            .iter()
            .find(|t| t.spec.names().any(|n| n == name))
    }

    /// All templates, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Template> {
        self.templates.iter()
    }
}

/// Everything a definitions directory declares.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    /// `*.yaml` template files (all but `pools.yaml`), sorted by file name.
    pub templates: Vec<(PathBuf, TemplateSpec)>,
    /// `pools.yaml`, or empty.
    pub pools: PoolsSpec,
}

/// The file holding pool sizes, next to the template files.
pub const POOLS_FILE: &str = "pools.yaml";

/// Reads and validates every definition in `dir`. Names must be unique
/// across templates; any invalid file fails the whole read (naming it), so
/// a broken commit never half-applies.
pub fn read_definitions(dir: &Path) -> Result<Definitions, Error> {
    let read = |path: &Path, source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| read(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut defs = Definitions::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| read(&file, e))?;
        if file.file_name().is_some_and(|n| n == POOLS_FILE) {
            defs.pools = PoolsSpec::from_yaml(&file, &text)?;
            continue;
        }
        let spec = TemplateSpec::from_yaml(&file, &text)?;
        for name in spec.names() {
            if let Some((other, _)) = defs
                .templates
                .iter()
                .find(|(_, t)| t.names().any(|n| n == name))
            {
                return Err(Error::Duplicate {
                    name: name.to_owned(),
                    first: other.clone(),
                    second: file,
                });
            }
        }
        defs.templates.push((file, spec));
    }
    Ok(defs)
}

/// The build id of templates served straight from the builtin image: its
/// manifest's name (content-addressed by the image builder).
pub fn builtin_build_id(image: &GuestImage) -> String {
    image.manifest.file_stem().map_or_else(
        || "builtin".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn image() -> Arc<GuestImage> {
        Arc::new(GuestImage {
            manifest: "m.json".into(),
            kernel: "k".into(),
            initramfs: "i".into(),
            rootfs: "r".into(),
            rootfs_bytes: 3 * 1024 * 1024 + 1,
            cmdline: vec!["root=/dev/vda".into()],
        })
    }

    #[test]
    fn loads_resolves_and_refuses_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.yaml"), "version: 1\nname: base\n").unwrap();
        std::fs::write(
            dir.path().join("py.yaml"),
            "version: 1\nname: py\naliases: [python]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "not a template").unwrap();
        let c = Catalog::load(dir.path(), image()).unwrap();
        assert_eq!(c.resolve("python").unwrap().spec.name, "py");
        assert!(c.resolve("nope").is_none());
        assert_eq!(c.resolve("base").unwrap().image.disk_size_mb(), 4);

        std::fs::write(
            dir.path().join("z.yaml"),
            "version: 1\nname: z\naliases: [base]\n",
        )
        .unwrap();
        let err = Catalog::load(dir.path(), image()).unwrap_err();
        assert!(
            matches!(err, Error::Duplicate { ref name, .. } if name == "base"),
            "{err}"
        );
    }

    #[test]
    fn repository_templates_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates.d");
        let c = Catalog::load(&dir, image()).unwrap();
        let base = c.resolve("base").unwrap();
        assert_eq!(
            base.spec.resources.memory_mib.map(MemoryMib::get),
            Some(512)
        );
    }
}
