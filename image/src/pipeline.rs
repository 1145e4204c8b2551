//! One build: resolve inputs, reuse or build each artefact, write the
//! manifest.
//!
//! ```text
//!   envd ─ sha256 ─────────────────────────────┐
//!   apt: kernel pkg version, busybox version   │
//!        + initramfs recipe ─▶ kernel key      ├─▶ rootfs key
//!   rootfs recipe ─────────────────────────────┘
//!   each key: cached? → reuse its record : build in staging → publish
//!   manifest key = (kernel key, rootfs key, builder version) → manifest-<key>.json
//! ```
//!
//! Keys are computed from inputs before anything is built, so a run with
//! unchanged inputs only asks apt for two candidate versions and reads two
//! small records: no download, no hashing of the 2 GiB rootfs.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::apt::{self, Apt};
use crate::cache::{self, Cache, Kind};
use crate::manifest::{
    FileRef, Inputs, KernelArtefact, KernelInputs, MANIFEST_VERSION, Manifest, RootfsArtefact,
    RootfsInputs,
};
use crate::{BUILDER_VERSION, elf, hash, initramfs, kernel, rootfs};

const VMLINUZ: &str = "vmlinuz";
const INITRAMFS: &str = "initramfs.cpio.gz";
const ROOTFS: &str = "rootfs.ext4";
const RECORD_VERSION: u32 = 1;

/// Errors of a build, one per step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The envd binary could not be read.
    #[error("read envd {path}")]
    ReadEnvd {
        /// Path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The envd binary cannot serve as the guest's init.
    #[error("envd {path} cannot be the guest's init")]
    EnvdNotStatic {
        /// Path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: elf::Error,
    },
    /// Cache access failed.
    #[error("cache")]
    Cache(#[from] cache::Error),
    /// Resolving or fetching busybox failed.
    #[error("busybox package")]
    Busybox(#[source] apt::Error),
    /// The unpacked busybox package has no binary.
    #[error("read busybox from its package")]
    BusyboxBinary(#[source] std::io::Error),
    /// The kernel step failed.
    #[error("kernel")]
    Kernel(#[from] kernel::Error),
    /// The initramfs step failed.
    #[error("initramfs")]
    Initramfs(#[from] initramfs::Error),
    /// The rootfs step failed.
    #[error("rootfs")]
    Rootfs(#[from] rootfs::Error),
    /// A recipe could not be serialised for its key (a bug).
    #[error("compute cache key")]
    Key(#[source] serde_json::Error),
    /// Copying or hashing a finished artefact failed.
    #[error("stage {path}")]
    Stage {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The static envd to install as the guest's init.
    pub envd: PathBuf,
    /// Cache root (see [`cache::default_dir`]).
    pub cache_dir: PathBuf,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    /// Path of the manifest.
    pub manifest_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Whether kernel + initramfs were built (false: cache hit).
    pub kernel_built: bool,
    /// Whether the rootfs was built (false: cache hit).
    pub rootfs_built: bool,
}

/// Inputs that name the kernel artefact. The record format version is one:
/// a cache entry is only ever read by a builder that writes the same format.
#[derive(Debug, Serialize)]
struct KernelKey<'a> {
    record_version: u32,
    kernel_package: &'a str,
    kernel_package_version: &'a str,
    busybox_package_version: &'a str,
    initramfs_recipe_sha256: &'a str,
}

/// Inputs that name the rootfs artefact (record format version included, as
/// for [`KernelKey`]).
#[derive(Debug, Serialize)]
struct RootfsKey<'a> {
    record_version: u32,
    recipe: &'a rootfs::Recipe,
    envd_sha256: &'a str,
}

/// Inputs that name the manifest.
#[derive(Debug, Serialize)]
struct ManifestKey<'a> {
    kernel: &'a str,
    rootfs: &'a str,
    builder_version: &'a str,
}

/// Builds (or finds in the cache) kernel, initramfs and rootfs for `opts`
/// and writes their manifest. `progress` receives one line per step.
pub fn build(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<BuildOutcome, Error> {
    let envd = fs::read(&opts.envd).map_err(|source| Error::ReadEnvd {
        path: opts.envd.clone(),
        source,
    })?;
    elf::check_static_x86_64(&envd).map_err(|source| Error::EnvdNotStatic {
        path: opts.envd.clone(),
        source,
    })?;
    let envd_sha256 = hash::sha256_hex(&envd);
    progress(&format!("envd: sha256 {envd_sha256}, {} bytes", envd.len()));

    let cache = Cache::open(&opts.cache_dir)?;
    let apt = Apt::new();

    progress("resolving package versions with apt");
    let found = apt
        .candidates(&[kernel::META_PACKAGE, initramfs::BUSYBOX_PACKAGE])
        .map_err(kernel::Error::Apt)?;
    let kpkg = kernel::resolve(
        &apt,
        found
            .get(kernel::META_PACKAGE)
            .map_err(kernel::Error::Apt)?,
    )?;
    let busybox = found
        .get(initramfs::BUSYBOX_PACKAGE)
        .map_err(Error::Busybox)?;
    let recipe_sha256 = initramfs::recipe_sha256().map_err(Error::Key)?;
    let kernel_key = hash::key_of(&KernelKey {
        record_version: RECORD_VERSION,
        kernel_package: &kpkg.package,
        kernel_package_version: &kpkg.version,
        busybox_package_version: &busybox.version,
        initramfs_recipe_sha256: &recipe_sha256,
    })
    .map_err(Error::Key)?;
    let rootfs_key = hash::key_of(&RootfsKey {
        record_version: RECORD_VERSION,
        recipe: &rootfs::RECIPE,
        envd_sha256: &envd_sha256,
    })
    .map_err(Error::Key)?;

    let kernel_found = cache.lookup::<KernelArtefact>(Kind::Kernel, &kernel_key)?;
    let kernel_built = kernel_found.is_none();
    let kernel = match kernel_found {
        Some(k) => {
            progress(&format!(
                "kernel: cached {} ({}={})",
                Cache::dir_name(Kind::Kernel, &kernel_key),
                kpkg.package,
                kpkg.version
            ));
            k
        }
        None => {
            let inputs = KernelInputs {
                key: kernel_key.clone(),
                kernel_package: kpkg.package.clone(),
                kernel_package_version: kpkg.version.clone(),
                kernel_release: kpkg.release.clone(),
                busybox_package_version: busybox.version.clone(),
                initramfs_recipe_sha256: recipe_sha256.clone(),
                modules: Vec::new(),
                builtin_modules: Vec::new(),
            };
            build_kernel(&cache, &apt, &kpkg, inputs, progress)?
        }
    };

    let rootfs_found = cache.lookup::<RootfsArtefact>(Kind::Rootfs, &rootfs_key)?;
    let rootfs_built = rootfs_found.is_none();
    let rootfs = match rootfs_found {
        Some(r) => {
            progress(&format!(
                "rootfs: cached {}",
                Cache::dir_name(Kind::Rootfs, &rootfs_key)
            ));
            r
        }
        None => {
            let inputs = RootfsInputs {
                key: rootfs_key.clone(),
                suite: rootfs::SUITE.to_owned(),
                variant: rootfs::VARIANT.to_owned(),
                packages: rootfs::PACKAGES.iter().map(|p| (*p).to_owned()).collect(),
                recipe_version: rootfs::RECIPE_VERSION,
                envd_sha256: envd_sha256.clone(),
            };
            build_rootfs(&cache, &apt, &envd, inputs, progress)?
        }
    };

    let manifest_key = hash::key_of(&ManifestKey {
        kernel: &kernel_key,
        rootfs: &rootfs_key,
        builder_version: BUILDER_VERSION,
    })
    .map_err(Error::Key)?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        builder_version: BUILDER_VERSION.to_owned(),
        kernel: kernel.kernel,
        initramfs: kernel.initramfs,
        rootfs: rootfs.rootfs,
        kernel_cmdline: kernel.kernel_cmdline,
        inputs: Inputs {
            kernel: kernel.inputs,
            rootfs: rootfs.inputs,
        },
    };
    let manifest_path = cache.write_manifest(&manifest_key, &manifest)?;
    Ok(BuildOutcome {
        manifest_path,
        manifest,
        kernel_built,
        rootfs_built,
    })
}

fn stage_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Stage {
        path: path.to_owned(),
        source,
    }
}

/// Hashes a staged file and names it as it will be after publishing.
fn file_ref(staged: &Path, kind: Kind, key: &str, name: &str) -> Result<FileRef, Error> {
    let file = format!("{}/{name}", Cache::dir_name(kind, key));
    FileRef::of(staged, file).map_err(stage_err(staged))
}

fn build_kernel(
    cache: &Cache,
    apt: &Apt,
    kpkg: &kernel::KernelPackage,
    mut inputs: KernelInputs,
    progress: &dyn Fn(&str),
) -> Result<KernelArtefact, Error> {
    let key = inputs.key.clone();
    let staging = cache.staging(Kind::Kernel)?;
    let scratch = staging.path().join("scratch");
    fs::create_dir(&scratch).map_err(stage_err(&scratch))?;

    progress(&format!(
        "kernel: downloading {}={}",
        kpkg.package, kpkg.version
    ));
    let unpacked = kernel::UnpackedKernel::fetch(apt, kpkg, &scratch)?;
    progress(&format!(
        "kernel: downloading {}={}",
        initramfs::BUSYBOX_PACKAGE,
        inputs.busybox_package_version
    ));
    let bb_root = scratch.join("busybox");
    apt.fetch_and_extract(
        &scratch,
        initramfs::BUSYBOX_PACKAGE,
        &inputs.busybox_package_version,
        &bb_root,
    )
    .map_err(Error::Busybox)?;
    let busybox = fs::read(bb_root.join("bin/busybox")).map_err(Error::BusyboxBinary)?;

    let plan = initramfs::plan(&unpacked)?;
    progress(&format!(
        "initramfs: loads {}; built in: {}{}",
        plan.load_names().join(" "),
        plan.builtin.join(" "),
        if plan.absent.is_empty() {
            String::new()
        } else {
            format!("; absent (optional): {}", plan.absent.join(" "))
        }
    ));
    let vmlinuz = staging.path().join(VMLINUZ);
    fs::copy(&unpacked.vmlinuz, &vmlinuz).map_err(stage_err(&vmlinuz))?;
    let initrd = staging.path().join(INITRAMFS);
    initramfs::write(&initrd, &busybox, &plan)?;
    fs::remove_dir_all(&scratch).map_err(stage_err(&scratch))?;

    inputs.modules = plan.load_names();
    inputs.builtin_modules = plan.builtin.clone();
    let record = KernelArtefact {
        version: RECORD_VERSION,
        kernel: file_ref(&vmlinuz, Kind::Kernel, &key, VMLINUZ)?,
        initramfs: file_ref(&initrd, Kind::Kernel, &key, INITRAMFS)?,
        kernel_cmdline: initramfs::KERNEL_CMDLINE.to_owned(),
        inputs,
    };
    let record = cache.publish(staging, Kind::Kernel, &key, record)?;
    progress(&format!(
        "kernel: built {} (initramfs {} bytes)",
        Cache::dir_name(Kind::Kernel, &key),
        record.initramfs.size
    ));
    Ok(record)
}

fn build_rootfs(
    cache: &Cache,
    apt: &Apt,
    envd: &[u8],
    inputs: RootfsInputs,
    progress: &dyn Fn(&str),
) -> Result<RootfsArtefact, Error> {
    let key = inputs.key.clone();
    let staging = cache.staging(Kind::Rootfs)?;
    progress(&format!(
        "rootfs: mmdebstrap {} --variant={} + {} packages (its log follows)",
        rootfs::SUITE,
        rootfs::VARIANT,
        rootfs::PACKAGES.len()
    ));
    let image = staging.path().join(ROOTFS);
    let built = rootfs::build(apt, staging.path(), envd, &image)?;
    progress(&format!(
        "rootfs: tree {} MiB → ext4 image {} MiB (sparse); hashing",
        built.used >> 20,
        built.size >> 20
    ));
    let record = RootfsArtefact {
        version: RECORD_VERSION,
        rootfs: file_ref(&image, Kind::Rootfs, &key, ROOTFS)?,
        inputs,
    };
    let record = cache.publish(staging, Kind::Rootfs, &key, record)?;
    progress(&format!(
        "rootfs: built {}",
        Cache::dir_name(Kind::Rootfs, &key)
    ));
    Ok(record)
}
