//! The guest kernel: Debian's cloud flavour, taken as packaged.
//!
//! `linux-image-cloud-amd64` is a metapackage; it depends on exactly one
//! concrete `linux-image-<release>` package, whose version is what we pin.
//! From that package we keep `boot/vmlinuz-<release>` (a bzImage, which both
//! QEMU and Cloud Hypervisor boot directly) and read the modules the
//! initramfs needs. The package ships no `modules.dep`, so dependencies are
//! read from each module's own `.modinfo` section instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::apt::{self, Apt, Candidate};

/// The metapackage that names the current cloud kernel.
pub const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Flavour suffix of the concrete package name.
const FLAVOUR_SUFFIX: &str = "-cloud-amd64";
const IMAGE_PREFIX: &str = "linux-image-";

/// Errors of resolving and unpacking the kernel package.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// apt could not resolve or fetch a package.
    #[error("kernel package")]
    Apt(#[from] apt::Error),
    /// The metapackage does not depend on a concrete cloud kernel.
    #[error(
        "{META_PACKAGE} depends on no {IMAGE_PREFIX}*{FLAVOUR_SUFFIX} package (Depends: {depends})"
    )]
    NoConcretePackage {
        /// The Depends field seen.
        depends: String,
    },
    /// The unpacked package lacks a file we need.
    #[error("kernel package has no {path}")]
    MissingFile {
        /// Path inside the package.
        path: PathBuf,
    },
    /// Reading the unpacked package failed.
    #[error("read {path}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The concrete kernel package a build uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPackage {
    /// e.g. `linux-image-6.1.0-48-cloud-amd64`.
    pub package: String,
    /// e.g. `6.1.172-1`.
    pub version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-48-cloud-amd64`.
    pub release: String,
}

/// Picks the concrete kernel out of the metapackage's `Depends:` field.
pub fn concrete_from_depends(depends: &str) -> Option<(String, Option<String>)> {
    depends
        .split(',')
        .flat_map(|alt| alt.split('|'))
        .map(str::trim)
        .find_map(|dep| {
            let (name, rest) = match dep.split_once(' ') {
                Some((n, r)) => (n, Some(r)),
                None => (dep, None),
            };
            if !(name.starts_with(IMAGE_PREFIX) && name.ends_with(FLAVOUR_SUFFIX)) {
                return None;
            }
            // "(= 6.1.172-1)" pins the exact version; other relations don't.
            let version = rest
                .and_then(|r| r.trim().strip_prefix("(="))
                .and_then(|r| r.strip_suffix(')'))
                .map(|v| v.trim().to_owned());
            Some((name.to_owned(), version))
        })
}

/// Resolves the metapackage (as apt's candidate `meta`) to the concrete
/// kernel package apt would install.
pub fn resolve(apt: &Apt, meta: &Candidate) -> Result<KernelPackage, Error> {
    let (package, pinned) =
        concrete_from_depends(&meta.depends).ok_or_else(|| Error::NoConcretePackage {
            depends: meta.depends.clone(),
        })?;
    let version = match pinned {
        Some(v) => v,
        None => apt.candidates(&[&package])?.get(&package)?.version.clone(),
    };
    let release = package
        .strip_prefix(IMAGE_PREFIX)
        .unwrap_or(&package)
        .to_owned();
    Ok(KernelPackage {
        package,
        version,
        release,
    })
}

/// An unpacked kernel package.
#[derive(Debug)]
pub struct UnpackedKernel {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// Module name (underscores) → `.ko` path.
    modules: BTreeMap<String, PathBuf>,
    /// Module names compiled into the image.
    builtin: BTreeSet<String>,
}

/// Module names use `_` even where file names use `-`; the kernel treats them
/// as the same, and so do we.
pub fn module_name(file_stem: &str) -> String {
    file_stem.replace('-', "_")
}

impl UnpackedKernel {
    /// Downloads the package and unpacks it under `dir`.
    pub fn fetch(apt: &Apt, pkg: &KernelPackage, dir: &Path) -> Result<Self, Error> {
        let root = dir.join("kernel-package");
        apt.fetch_and_extract(dir, &pkg.package, &pkg.version, &root)?;
        Self::open(&root, &pkg.release)
    }

    /// Indexes an unpacked package tree.
    pub fn open(root: &Path, release: &str) -> Result<Self, Error> {
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        if !vmlinuz.is_file() {
            return Err(Error::MissingFile {
                path: PathBuf::from(format!("boot/vmlinuz-{release}")),
            });
        }
        // Debian moves modules to /usr/lib with merged /usr; accept both.
        let moddir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|p| root.join(p).join(release))
            .find(|p| p.is_dir())
            .ok_or_else(|| Error::MissingFile {
                path: PathBuf::from(format!("lib/modules/{release}")),
            })?;
        let mut modules = BTreeMap::new();
        index_modules(&moddir.join("kernel"), &mut modules)?;
        let builtin_path = moddir.join("modules.builtin");
        let builtin_text = fs::read_to_string(&builtin_path).map_err(|source| Error::Read {
            path: builtin_path,
            source,
        })?;
        let builtin = parse_builtin(&builtin_text);
        Ok(Self {
            vmlinuz,
            modules,
            builtin,
        })
    }

    /// Path of module `name`'s `.ko`, if the package ships it as a module.
    pub fn module(&self, name: &str) -> Option<&Path> {
        self.modules.get(&module_name(name)).map(PathBuf::as_path)
    }

    /// Whether `name` is compiled into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }
}

fn index_modules(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<(), Error> {
    let read_err = |source| Error::Read {
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_dir() {
            index_modules(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "ko")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            out.insert(module_name(stem), path);
        }
    }
    Ok(())
}

/// Parses `modules.builtin` (`kernel/fs/ext4/ext4.ko` per line) into names.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| Path::new(l.trim()).file_stem()?.to_str().map(module_name))
        .collect()
}

/// The modules a `.ko` needs loaded first: its `.modinfo` `depends=` entry
/// (what `modinfo -F depends` prints). `.modinfo` is a run of NUL-terminated
/// `key=value` strings, so the entry is the one `depends=` preceded by NUL.
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(module_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_package_with_pinned_version() {
        let got = concrete_from_depends("linux-image-6.1.0-48-cloud-amd64 (= 6.1.172-1)");
        assert_eq!(
            got,
            Some((
                "linux-image-6.1.0-48-cloud-amd64".to_owned(),
                Some("6.1.172-1".to_owned())
            ))
        );
    }

    #[test]
    fn concrete_package_among_others() {
        let got = concrete_from_depends("foo (>= 1), linux-image-6.1.0-9-cloud-amd64");
        assert_eq!(
            got,
            Some(("linux-image-6.1.0-9-cloud-amd64".to_owned(), None))
        );
        assert_eq!(concrete_from_depends("linux-image-6.1.0-9-amd64"), None);
        assert_eq!(concrete_from_depends(""), None);
    }

    #[test]
    fn builtin_names() {
        let set = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/crypto/crc32c_generic.ko\n\n");
        assert!(set.contains("ext4"));
        assert!(set.contains("crc32c_generic"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn modinfo_depends() {
        let ko =
            b"\x7fELF....\0license=GPL\0depends=virtio,virtio_ring,net-failover\0retpoline=Y\0";
        assert_eq!(
            module_depends(ko),
            vec!["virtio", "virtio_ring", "net_failover"]
        );
        assert!(module_depends(b"\0depends=\0intree=Y\0").is_empty());
        assert!(module_depends(b"no modinfo here").is_empty());
    }

    #[test]
    fn open_indexes_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let rel = "6.1.0-1-cloud-amd64";
        fs::create_dir_all(root.join("boot")).expect("mkdir");
        fs::write(root.join(format!("boot/vmlinuz-{rel}")), b"bz").expect("write");
        let kdir = root.join(format!("lib/modules/{rel}/kernel/drivers/net"));
        fs::create_dir_all(&kdir).expect("mkdir");
        fs::write(kdir.join("net_failover.ko"), b"ko").expect("write");
        fs::write(
            root.join(format!("lib/modules/{rel}/modules.builtin")),
            "kernel/fs/ext4/ext4.ko\n",
        )
        .expect("write");
        let k = UnpackedKernel::open(root, rel).expect("open");
        assert!(k.module("net-failover").is_some());
        assert!(k.module("virtio").is_none());
        assert!(k.is_builtin("ext4"));
        assert!(!k.is_builtin("virtio"));
    }
}
