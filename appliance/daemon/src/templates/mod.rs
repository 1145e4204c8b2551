//! The template catalog: definitions from `templates.d/` bound to the guest
//! image they boot.
//!
//! Loaded once at start for now; the GitOps reconciler will own reloading
//! (and building) it. Resolution accepts a template's id or any alias.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lelantos_core::template::{ImageRef, TemplateError};
use lelantos_core::{LifecycleId, MemoryMib, NetworkSpec, SandboxId, TemplateSpec, Vcpus, VmSpec};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A template ready to start sandboxes from.
#[derive(Debug, Clone)]
pub struct Template {
    /// Its definition.
    pub spec: TemplateSpec,
    /// The file it came from.
    pub file: PathBuf,
    /// When it was loaded (unix ms): its "created/updated" time for the API.
    pub loaded_at_ms: i64,
    /// The image it boots.
    pub image: Arc<GuestImage>,
}

/// Every template this appliance serves.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    templates: Vec<Template>,
}

impl Catalog {
    /// Loads every `*.yaml` in `dir`, binding `builtin` to `image`.
    pub fn load(dir: &Path, image: Arc<GuestImage>) -> Result<Self, Error> {
        let read = |path: &Path, source| Error::Read {
            path: path.to_owned(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| read(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let now = crate::store::now_ms();
        let mut templates: Vec<Template> = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| read(&file, e))?;
            let spec = TemplateSpec::from_yaml(&file, &text)?;
            for name in spec.names() {
                if let Some(other) = templates.iter().find(|t| t.spec.names().any(|n| n == name)) {
                    return Err(Error::Duplicate {
                        name: name.to_owned(),
                        first: other.file.clone(),
                        second: file,
                    });
                }
            }
            let image = match spec.image {
                ImageRef::Builtin => image.clone(),
            };
            templates.push(Template {
                spec,
                file,
                loaded_at_ms: now,
                image,
            });
        }
        if templates.is_empty() {
            return Err(Error::Empty(dir.to_owned()));
        }
        Ok(Self { templates })
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
