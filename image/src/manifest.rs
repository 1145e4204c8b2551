//! The manifest: which files make up a guest image, their digests, and the
//! inputs they were built from. The VM layer boots from it; tests pin it.
//!
//! File paths are relative to the manifest's own directory, so a cache
//! directory can be moved or copied whole.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash;

/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

/// Errors of reading, writing and checking manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the manifest failed.
    #[error("read manifest {path}")]
    Read {
        /// Manifest path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The manifest is not valid JSON of our format.
    #[error("parse manifest {path}")]
    Parse {
        /// Manifest path.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest of a version we do not know.
    #[error("manifest {path} has version {version}, expected {MANIFEST_VERSION}")]
    Version {
        /// Manifest path.
        path: PathBuf,
        /// Version found.
        version: u32,
    },
    /// A file named by the manifest could not be read.
    #[error("hash {path}")]
    Hash {
        /// File path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file does not match its recorded digest or size.
    #[error("{path} does not match the manifest (sha256 {actual_sha256}, {actual_size} bytes)")]
    Mismatch {
        /// File path.
        path: PathBuf,
        /// Digest found.
        actual_sha256: String,
        /// Size found.
        actual_size: u64,
    },
}

/// One file of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Path relative to the manifest's directory.
    pub file: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes (apparent size for the sparse rootfs).
    pub size: u64,
}

impl FileRef {
    /// Hashes `path` and records it as `file` (relative to the manifest).
    pub fn of(path: &Path, file: String) -> io::Result<Self> {
        let (sha256, size) = hash::sha256_file(path)?;
        Ok(Self { file, sha256, size })
    }
}

/// What the kernel and initramfs were built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInputs {
    /// Cache key of the kernel artefact directory.
    pub key: String,
    /// Concrete kernel package, e.g. `linux-image-6.1.0-48-cloud-amd64`.
    pub kernel_package: String,
    /// Its version, e.g. `6.1.172-1`.
    pub kernel_package_version: String,
    /// `uname -r` of the guest.
    pub kernel_release: String,
    /// Version of `busybox-static`.
    pub busybox_package_version: String,
    /// Digest of the initramfs recipe (modules, applets, /init template).
    pub initramfs_recipe_sha256: String,
    /// Modules `/init` loads, in order.
    pub modules: Vec<String>,
    /// Recipe modules the kernel has built in (nothing to load).
    pub builtin_modules: Vec<String>,
}

/// What the rootfs was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsInputs {
    /// Cache key of the rootfs artefact directory.
    pub key: String,
    /// Debian suite.
    pub suite: String,
    /// mmdebstrap variant.
    pub variant: String,
    /// Packages added to the variant.
    pub packages: Vec<String>,
    /// Rootfs recipe version.
    pub recipe_version: u32,
    /// SHA-256 of the envd binary installed as `/usr/local/bin/envd`.
    pub envd_sha256: String,
}

/// The kernel artefact's record (`artefact.json` in its directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelArtefact {
    /// Format version.
    pub version: u32,
    /// The bzImage.
    pub kernel: FileRef,
    /// The gzip newc initramfs.
    pub initramfs: FileRef,
    /// Base kernel command line the initramfs expects.
    pub kernel_cmdline: String,
    /// Inputs.
    pub inputs: KernelInputs,
}

/// The rootfs artefact's record (`artefact.json` in its directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsArtefact {
    /// Format version.
    pub version: u32,
    /// The ext4 image.
    pub rootfs: FileRef,
    /// Inputs.
    pub inputs: RootfsInputs,
}

/// A bootable guest image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// Version of lelantos-image that wrote it.
    pub builder_version: String,
    /// The bzImage.
    pub kernel: FileRef,
    /// The gzip newc initramfs.
    pub initramfs: FileRef,
    /// The ext4 root disk (attach read-only or under a per-VM overlay).
    pub rootfs: FileRef,
    /// Base kernel command line; the VM layer appends `envd.*` keys.
    pub kernel_cmdline: String,
    /// What it was built from.
    pub inputs: Inputs,
}

/// Build inputs of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// Kernel and initramfs inputs.
    pub kernel: KernelInputs,
    /// Rootfs inputs.
    pub rootfs: RootfsInputs,
}

impl Manifest {
    /// Reads and parses a manifest, checking its version.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let m: Self = serde_json::from_slice(&text).map_err(|source| Error::Parse {
            path: path.to_owned(),
            source,
        })?;
        if m.version != MANIFEST_VERSION {
            return Err(Error::Version {
                path: path.to_owned(),
                version: m.version,
            });
        }
        Ok(m)
    }

    /// The image's files by role, for iteration.
    pub fn files(&self) -> BTreeMap<&'static str, &FileRef> {
        BTreeMap::from([
            ("initramfs", &self.initramfs),
            ("kernel", &self.kernel),
            ("rootfs", &self.rootfs),
        ])
    }

    /// Re-hashes every file (relative to `dir`, the manifest's directory)
    /// and fails on the first that differs from the record.
    pub fn verify(&self, dir: &Path) -> Result<(), Error> {
        for file in self.files().values() {
            let path = dir.join(&file.file);
            let (sha256, size) = hash::sha256_file(&path).map_err(|source| Error::Hash {
                path: path.clone(),
                source,
            })?;
            if sha256 != file.sha256 || size != file.size {
                return Err(Error::Mismatch {
                    path,
                    actual_sha256: sha256,
                    actual_size: size,
                });
            }
        }
        Ok(())
    }
}

/// Reads the manifest at `path` and verifies its files.
pub fn verify_file(path: &Path) -> Result<Manifest, Error> {
    let m = Manifest::read(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    m.verify(dir)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> Manifest {
        let mut refs = Vec::new();
        for (name, body) in [("k", "kernel"), ("i", "initrd"), ("r", "root")] {
            std::fs::write(dir.join(name), body).expect("write");
            refs.push(FileRef::of(&dir.join(name), name.to_owned()).expect("hash"));
        }
        let kernel = KernelInputs {
            key: "k1".into(),
            kernel_package: "linux-image-x-cloud-amd64".into(),
            kernel_package_version: "1".into(),
            kernel_release: "x-cloud-amd64".into(),
            busybox_package_version: "1".into(),
            initramfs_recipe_sha256: "00".into(),
            modules: vec!["virtio".into()],
            builtin_modules: vec!["ext4".into()],
        };
        let rootfs = RootfsInputs {
            key: "r1".into(),
            suite: "bookworm".into(),
            variant: "minbase".into(),
            packages: vec!["bash".into()],
            recipe_version: 1,
            envd_sha256: "ee".into(),
        };
        Manifest {
            version: MANIFEST_VERSION,
            builder_version: "0".into(),
            kernel: refs[0].clone(),
            initramfs: refs[1].clone(),
            rootfs: refs[2].clone(),
            kernel_cmdline: "console=ttyS0".into(),
            inputs: Inputs { kernel, rootfs },
        }
    }

    #[test]
    fn verify_detects_tampering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = sample(dir.path());
        m.verify(dir.path()).expect("fresh files match");
        std::fs::write(dir.path().join("r"), "rooT").expect("tamper");
        let err = m.verify(dir.path()).expect_err("tampered");
        assert!(matches!(err, Error::Mismatch { .. }));
    }

    #[test]
    fn round_trips_and_rejects_unknown_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = sample(dir.path());
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&m).expect("json")).expect("write");
        assert_eq!(verify_file(&path).expect("verify"), m);
        let mut v = serde_json::to_value(&m).expect("value");
        v["surprise"] = serde_json::json!(1);
        std::fs::write(&path, v.to_string()).expect("write");
        assert!(matches!(Manifest::read(&path), Err(Error::Parse { .. })));
    }
}
