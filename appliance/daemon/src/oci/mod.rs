//! OCI base images → guest root disks.
//!
//! A template may start from any linux/amd64 OCI image. This module pulls it
//! from its registry, applies its layers (whiteouts included) to a staging
//! tree, makes that tree bootable by our guest (envd as PID 1, user `user`,
//! the mount points the initramfs moves its mounts onto) and packs it into a
//! sparse ext4 image, cached by the image's manifest digest:
//!
//! ```text
//!   reference ─▶ manifest (index → linux/amd64) ─▶ digest ──▶ <cache>/oci/sha256-<hex>/ exists? ─▶ done
//!                   │                                                      ▲
//!                   ├─▶ config blob ─▶ Env, WorkingDir, User ─▶ GuestConfig │
//!                   └─▶ layer blobs (digest-checked) ─▶ tree/ ─▶ envd, user ─▶ mkfs.ext4 -d ─▶ rename
//! ```
//!
//! The finished directory appears by `rename` of a staging directory, so a
//! half-built disk is never visible. It holds `rootfs.ext4` and `image.json`
//! (the guest config and the digest of the envd baked in: a cached disk with
//! an older envd is rebuilt, because the guest's PID 1 must match the daemon).
//!
//! This module owns registry access and disk assembly. It does not boot
//! anything and keeps no state besides the cache directory.

mod ext4;
mod guest;
mod registry;
mod unpack;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::templates::GuestConfig;

pub use ext4::extract_from_ext4;

/// What to pull and where to put it.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// Image reference: `registry/repo:tag` or `registry/repo@sha256:…`.
    pub reference: String,
    /// Basic-auth credentials (user, password); anonymous when `None`.
    pub auth: Option<(String, String)>,
    /// Talk plain HTTP to this registry (a local or lab registry).
    pub insecure: bool,
    /// The static envd binary installed as the guest's init.
    pub envd: PathBuf,
    /// The daemon's cache root: disks go to
    /// `<cache_dir>/oci/sha256-<hex of manifest digest>/rootfs.ext4`.
    pub cache_dir: PathBuf,
}

/// A root disk made from an OCI image.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The ext4 image.
    pub rootfs: PathBuf,
    /// Digest of the (platform) image manifest it was made from.
    pub digest: String,
    /// `Env`, `WorkingDir` and `User` of the image config.
    pub config: GuestConfig,
    /// Whether the disk came from the cache (nothing was downloaded).
    pub cached: bool,
}

/// Why pulling an image or reading a disk failed. Every message names the
/// image reference (or disk) and the step.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference does not parse.
    #[error("invalid image reference {reference:?}")]
    InvalidReference {
        /// As given.
        reference: String,
        /// Why.
        #[source]
        source: oci_client::ParseError,
    },
    /// The registry does not know the repository or tag.
    #[error("image {reference} not found in its registry")]
    NotFound {
        /// As given.
        reference: String,
        /// The registry's answer.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// The registry refused our credentials (or wants some).
    #[error("registry refused access to {reference}")]
    Unauthorized {
        /// As given.
        reference: String,
        /// The registry's answer.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// Fetching or resolving the manifest failed otherwise.
    #[error("resolve manifest of {reference}")]
    Manifest {
        /// As given.
        reference: String,
        /// Why.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// Fetching the image config blob failed.
    #[error("fetch image config of {reference}")]
    Config {
        /// As given.
        reference: String,
        /// Why.
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// The image config is not valid JSON of the expected shape.
    #[error("parse image config of {reference}")]
    ConfigParse {
        /// As given.
        reference: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The image is for another OS or architecture.
    #[error("{reference} is built for {platform}; guests run linux/amd64")]
    Platform {
        /// As given.
        reference: String,
        /// `os/architecture` of the image config.
        platform: String,
    },
    /// A layer is not a (gzip-compressed or plain) tar.
    #[error("layer {digest} of {reference} is {media_type}, which cannot be unpacked")]
    UnsupportedLayer {
        /// As given.
        reference: String,
        /// Layer digest.
        digest: String,
        /// Its media type (or what its bytes look like).
        media_type: String,
    },
    /// Downloading (or verifying) a layer failed.
    #[error("download layer {digest} of {reference}")]
    Download {
        /// As given.
        reference: String,
        /// Layer digest.
        digest: String,
        /// Why (a digest mismatch included).
        #[source]
        source: Box<oci_client::errors::OciDistributionError>,
    },
    /// Applying a layer to the staging tree failed.
    #[error("unpack layer {digest} of {reference}")]
    Unpack {
        /// As given.
        reference: String,
        /// Layer digest.
        digest: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the envd binary failed.
    #[error("read envd binary {path}")]
    Envd {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Installing envd, the user or the mount points failed.
    #[error("make the rootfs of {reference} bootable")]
    Customise {
        /// As given.
        reference: String,
        /// Why (the io error names the file).
        #[source]
        source: io::Error,
    },
    /// Measuring the staging tree failed.
    #[error("measure the rootfs tree of {reference}")]
    Measure {
        /// As given.
        reference: String,
        /// Why.
        #[source]
        source: Box<lelantos_image::rootfs::Error>,
    },
    /// Creating the image file or running mkfs.ext4 failed.
    #[error("pack the rootfs of {reference} into {image}")]
    Mkfs {
        /// As given.
        reference: String,
        /// The image being written.
        image: PathBuf,
        /// Why.
        #[source]
        source: lelantos_image::cmd::Error,
    },
    /// Reading or writing the cache directory failed.
    #[error("image cache {path} for {reference}")]
    Cache {
        /// As given.
        reference: String,
        /// The cache path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Layers carry ownership that only root can recreate.
    #[error("pulling {reference} needs root (layer ownership must be kept)")]
    NotRoot {
        /// As given.
        reference: String,
    },
    /// A background (blocking) step panicked or was cancelled.
    #[error("background step for {reference}")]
    Task {
        /// As given.
        reference: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// debugfs could not be run or failed.
    #[error("extract {path_in_image} from {image}")]
    Extract {
        /// The ext4 image.
        image: PathBuf,
        /// The path inside it.
        path_in_image: String,
        /// Why.
        #[source]
        source: lelantos_image::cmd::Error,
    },
    /// debugfs ran but did not produce the file.
    #[error("extract {path_in_image} from {image}: {detail}")]
    ExtractMissing {
        /// The ext4 image.
        image: PathBuf,
        /// The path inside it.
        path_in_image: String,
        /// What debugfs said.
        detail: String,
    },
}

/// What `image.json` next to a cached disk records.
#[derive(Debug, Serialize, Deserialize)]
struct CacheMeta {
    /// The reference first pulled (informational).
    reference: String,
    /// Manifest digest.
    digest: String,
    /// sha256 (hex) of the envd baked into the disk.
    envd_sha256: String,
    /// Guest defaults from the image config.
    config: GuestConfig,
}

const ROOTFS_FILE: &str = "rootfs.ext4";
const META_FILE: &str = "image.json";

/// Pulls `req.reference` and returns a bootable root disk made from it,
/// from the cache when this manifest digest was made before with this envd.
///
/// `log` receives one line per step (resolve, each layer, pack), for build
/// logs. Needs root unless the disk is cached.
pub async fn pull_rootfs(
    req: &PullRequest,
    log: &(dyn Fn(&str) + Send + Sync),
) -> Result<PulledImage, OciError> {
    let reference = req.reference.clone();
    let envd = tokio::fs::read(&req.envd)
        .await
        .map_err(|source| OciError::Envd {
            path: req.envd.clone(),
            source,
        })?;
    let envd_sha256 = hex(&Sha256::digest(&envd));

    let registry = registry::Registry::connect(req)?;
    let resolved = registry.resolve().await?;
    log(&format!(
        "resolved {reference} to {} ({} layers)",
        resolved.digest,
        resolved.manifest.layers.len()
    ));

    let oci_root = req.cache_dir.join("oci");
    let final_dir = oci_root.join(resolved.digest.replace(':', "-"));
    if let Some(meta) = read_meta(&final_dir, &envd_sha256) {
        log(&format!("using cached disk {}", final_dir.display()));
        return Ok(PulledImage {
            rootfs: final_dir.join(ROOTFS_FILE),
            digest: resolved.digest,
            config: meta.config,
            cached: true,
        });
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(OciError::NotRoot { reference });
    }

    let config = registry.config(&resolved).await?;
    let staging =
        Staging::create(&oci_root, &resolved.digest).map_err(|source| OciError::Cache {
            reference: reference.clone(),
            path: oci_root.clone(),
            source,
        })?;
    let tree = staging.path.join("tree");
    let blobs = staging.path.join("blobs");
    for dir in [&tree, &blobs] {
        std::fs::create_dir_all(dir).map_err(|source| OciError::Cache {
            reference: reference.clone(),
            path: dir.clone(),
            source,
        })?;
    }
    // mkfs.ext4 -d copies the tree root's mode to the filesystem root.
    guest::set_root_mode(&tree).map_err(|source| OciError::Customise {
        reference: reference.clone(),
        source,
    })?;

    let total = resolved.manifest.layers.len();
    for (index, layer) in resolved.manifest.layers.iter().enumerate() {
        log(&format!(
            "layer {}/{total}: {} ({} bytes)",
            index + 1,
            layer.digest,
            layer.size
        ));
        let blob = blobs.join(format!("{index}"));
        registry.download(layer, &blob).await?;
        let (tree, digest, reference_) = (tree.clone(), layer.digest.clone(), reference.clone());
        // Unpacking is blocking file IO; it runs off the async workers.
        tokio::task::spawn_blocking(move || {
            unpack::apply_layer_file(&blob, &tree, true)
                .map_err(|e| e.into_oci(&reference_, &digest))?;
            // The blob is not needed once applied; free its space at once.
            let _ = std::fs::remove_file(&blob);
            Ok::<(), OciError>(())
        })
        .await
        .map_err(|source| OciError::Task {
            reference: reference.clone(),
            source,
        })??;
    }

    log("installing envd and user `user`");
    let image = staging.path.join(ROOTFS_FILE);
    let (tree_, image_, reference_) = (tree.clone(), image.clone(), reference.clone());
    let size = tokio::task::spawn_blocking(move || {
        guest::make_bootable(&tree_, &envd).map_err(|source| OciError::Customise {
            reference: reference_.clone(),
            source,
        })?;
        ext4::pack(&tree_, &image_, &reference_)
    })
    .await
    .map_err(|source| OciError::Task {
        reference: reference.clone(),
        source,
    })??;
    log(&format!("packed {} MiB ext4 image", size >> 20));

    let meta = CacheMeta {
        reference: reference.clone(),
        digest: resolved.digest.clone(),
        envd_sha256: envd_sha256.clone(),
        config: config.clone(),
    };
    let cache_err = |path: &Path| {
        let (reference, path) = (reference.clone(), path.to_owned());
        move |source| OciError::Cache {
            reference,
            path,
            source,
        }
    };
    // Free the tree before publishing: only the disk and its record stay.
    std::fs::remove_dir_all(&tree).map_err(cache_err(&tree))?;
    std::fs::remove_dir_all(&blobs).map_err(cache_err(&blobs))?;
    let meta_path = staging.path.join(META_FILE);
    let json = serde_json::to_vec_pretty(&meta).map_err(io::Error::other);
    json.and_then(|j| std::fs::write(&meta_path, j))
        .map_err(cache_err(&meta_path))?;
    staging
        .publish(&final_dir, &envd_sha256)
        .map_err(cache_err(&final_dir))?;
    Ok(PulledImage {
        rootfs: final_dir.join(ROOTFS_FILE),
        digest: resolved.digest,
        config,
        cached: false,
    })
}

/// The cache record of `dir`, if its disk is complete and carries this envd.
fn read_meta(dir: &Path, envd_sha256: &str) -> Option<CacheMeta> {
    if !dir.join(ROOTFS_FILE).is_file() {
        return None;
    }
    let bytes = std::fs::read(dir.join(META_FILE)).ok()?;
    let meta: CacheMeta = serde_json::from_slice(&bytes).ok()?;
    (meta.envd_sha256 == envd_sha256).then_some(meta)
}

/// A private directory next to the cache entries (same filesystem, so
/// publishing is one `rename`); removed on drop unless published.
struct Staging {
    path: PathBuf,
    published: bool,
}

impl Staging {
    fn create(oci_root: &Path, digest: &str) -> io::Result<Self> {
        std::fs::create_dir_all(oci_root)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = oci_root.join(format!(
            ".staging-{}-{}-{nanos}",
            digest.replace(':', "-"),
            std::process::id()
        ));
        std::fs::create_dir(&path)?;
        Ok(Self {
            path,
            published: false,
        })
    }

    /// Moves the staging directory to `dest`. A complete entry that appeared
    /// meanwhile (a concurrent pull) wins; a stale one (older envd) is
    /// replaced.
    fn publish(mut self, dest: &Path, envd_sha256: &str) -> io::Result<()> {
        match std::fs::rename(&self.path, dest) {
            Ok(()) => {
                self.published = true;
                Ok(())
            }
            Err(_) if read_meta(dest, envd_sha256).is_some() => Ok(()),
            Err(_) if dest.exists() => {
                std::fs::remove_dir_all(dest)?;
                std::fs::rename(&self.path, dest)?;
                self.published = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Maps an image config's `Env` ("K=V"), `WorkingDir` and `User` to guest
/// defaults. Entries without `=` carry no value and are dropped; empty
/// strings mean "not set".
fn guest_config(env: &[String], workdir: Option<&str>, user: Option<&str>) -> GuestConfig {
    let env = env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
    GuestConfig {
        env,
        workdir: non_empty(workdir),
        user: non_empty(user),
        ..GuestConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_env_workdir_user() {
        let c = guest_config(
            &[
                "PATH=/usr/bin:/bin".to_owned(),
                "EMPTY=".to_owned(),
                "A=b=c".to_owned(),
                "NOVALUE".to_owned(),
            ],
            Some("/app"),
            Some(""),
        );
        assert_eq!(c.env.get("PATH").map(String::as_str), Some("/usr/bin:/bin"));
        assert_eq!(c.env.get("EMPTY").map(String::as_str), Some(""));
        assert_eq!(c.env.get("A").map(String::as_str), Some("b=c"));
        assert!(!c.env.contains_key("NOVALUE"));
        assert_eq!(c.workdir.as_deref(), Some("/app"));
        assert_eq!(c.user, None);
    }

    #[test]
    fn cache_needs_disk_and_matching_envd() {
        let dir = tempfile::tempdir().unwrap();
        let meta = CacheMeta {
            reference: "r".into(),
            digest: "sha256:00".into(),
            envd_sha256: "aa".into(),
            config: GuestConfig::default(),
        };
        let json = serde_json::to_vec(&meta).unwrap();
        std::fs::write(dir.path().join(META_FILE), json).unwrap();
        assert!(read_meta(dir.path(), "aa").is_none(), "no disk yet");
        std::fs::write(dir.path().join(ROOTFS_FILE), b"").unwrap();
        assert!(read_meta(dir.path(), "aa").is_some());
        assert!(read_meta(dir.path(), "bb").is_none(), "older envd");
    }
}
