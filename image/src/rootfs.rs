//! The `base` rootfs: a Debian bookworm minbase tree with the sandbox's
//! tools, user `user` (uid/gid 1000, passwordless sudo) and our envd at
//! `/usr/local/bin/envd`, packed into a sparse ext4 image.
//!
//! ```text
//!   mmdebstrap (host apt sources) ─▶ tree/ ─▶ FILES + envd ─▶ truncate + mkfs.ext4 -d ─▶ rootfs.ext4
//! ```
//!
//! mmdebstrap runs in root mode into a plain directory and `mkfs.ext4 -d`
//! copies that directory into the image: no loop mounts, no containers.
//! Root is required so the tree's ownership (root-owned system, uid 1000
//! home, setuid sudo) is real and `-d` copies it as is.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::apt::{self, Apt};
use crate::cmd;

/// Bump when the build steps change in a way [`RECIPE`] does not capture.
pub const RECIPE_VERSION: u32 = 1;

/// Debian suite of the rootfs.
pub const SUITE: &str = "bookworm";
/// mmdebstrap variant: Essential + apt, nothing else.
pub const VARIANT: &str = "minbase";

/// Packages added on top of minbase (kept sorted: it is part of the key).
pub const PACKAGES: &[&str] = &[
    "attr",
    "bash",
    "ca-certificates",
    "coreutils",
    "curl",
    "git",
    "iproute2",
    "ncurses-bin",
    "procps",
    "python-is-python3",
    "python3",
    "sudo",
];

/// The sandbox user, matching E2B's default (`user`, uid/gid 1000).
pub const USER: &str = "user";
const USER_ID: u32 = 1000;

/// Runs inside the new system (mmdebstrap customize hook) so the guest's own
/// `useradd` and login.defs decide the details.
const USER_HOOK: &str = "chroot \"$1\" groupadd --gid 1000 user && \
     chroot \"$1\" useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash user";

/// Sudoers drop-in (the file name must have no dot or sudo ignores it).
const SUDOERS_FILE: &str = "etc/sudoers.d/lelantos-user";

/// Files written into the tree after mmdebstrap: (path, mode, content).
///
/// mmdebstrap copies the build host's `/etc/resolv.conf` and `/etc/hostname`
/// into the tree (debootstrap compatibility); both are replaced so no host
/// detail leaks into the image. Without a hosts entry for the hostname,
/// `sudo` resolves it through DNS, which hangs a sandbox that has none; and
/// with the host's nameserver, every lookup would wait for a server the
/// guest cannot reach. envd's default hostname is `sandbox`, and envd writes
/// `resolv.conf` itself when booted with `envd.dns=`.
pub const FILES: &[(&str, u32, &str)] = &[
    (SUDOERS_FILE, 0o440, "user ALL=(ALL:ALL) NOPASSWD: ALL\n"),
    ("etc/hostname", 0o644, "sandbox\n"),
    (
        "etc/hosts",
        0o644,
        "127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    (
        "etc/resolv.conf",
        0o644,
        "# No nameserver until envd writes one (kernel argument envd.dns=).\n",
    ),
];

/// Where envd lives in the guest; the initramfs `switch_root`s into it.
pub const ENVD_PATH: &str = "usr/local/bin/envd";

/// The image is at least this big (sparse, so unused space costs nothing on
/// the host) and always has at least [`MIN_FREE`] free for the sandbox.
pub const MIN_SIZE: u64 = 2 << 30;
/// Free space guaranteed on top of the tree.
pub const MIN_FREE: u64 = 1 << 30;
const SIZE_STEP: u64 = 256 << 20;

/// Everything besides envd that decides the rootfs; its digest (with envd's)
/// is the rootfs artefact's cache key.
#[derive(Debug, Serialize)]
pub struct Recipe {
    /// [`RECIPE_VERSION`].
    pub recipe_version: u32,
    /// [`SUITE`].
    pub suite: &'static str,
    /// [`VARIANT`].
    pub variant: &'static str,
    /// [`PACKAGES`].
    pub packages: &'static [&'static str],
    /// The user-creation hook.
    pub user_hook: &'static str,
    /// [`FILES`].
    pub files: &'static [(&'static str, u32, &'static str)],
    /// [`ENVD_PATH`].
    pub envd_path: &'static str,
    /// [`MIN_SIZE`].
    pub min_size: u64,
    /// [`MIN_FREE`].
    pub min_free: u64,
}

/// The recipe this build of the builder uses.
pub const RECIPE: Recipe = Recipe {
    recipe_version: RECIPE_VERSION,
    suite: SUITE,
    variant: VARIANT,
    packages: PACKAGES,
    user_hook: USER_HOOK,
    files: FILES,
    envd_path: ENVD_PATH,
    min_size: MIN_SIZE,
    min_free: MIN_FREE,
};

/// Errors of building the rootfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not running as root.
    #[error(
        "building the rootfs needs root (mmdebstrap root mode, ownership kept by mkfs.ext4 -d)"
    )]
    NotRoot,
    /// Installing or locating a host tool failed.
    #[error("host tools")]
    Apt(#[from] apt::Error),
    /// mmdebstrap failed.
    #[error("mmdebstrap {SUITE}")]
    Debootstrap(#[source] cmd::Error),
    /// The tree lacks something the recipe installs.
    #[error("rootfs tree has no {0}")]
    Incomplete(&'static str),
    /// Adding our files to the tree failed.
    #[error("customise rootfs at {path}")]
    Customise {
        /// File written.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Measuring the tree failed.
    #[error("measure rootfs tree at {path}")]
    Measure {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Creating the sparse image file failed.
    #[error("create image {path}")]
    CreateImage {
        /// Image path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4")]
    Mkfs(#[source] cmd::Error),
    /// Removing the tree after packing failed.
    #[error("remove rootfs tree {path}")]
    Cleanup {
        /// Tree.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What a rootfs build produced.
#[derive(Debug, Clone, Copy)]
pub struct Built {
    /// Bytes the tree occupied.
    pub used: u64,
    /// Apparent size of the image.
    pub size: u64,
}

/// Image size for a tree occupying `used` bytes: room for the tree plus
/// [`MIN_FREE`] (and a quarter more for filesystem metadata), at least
/// [`MIN_SIZE`], rounded up to 256 MiB.
pub fn image_size(used: u64) -> u64 {
    let want = used.saturating_add(used / 4).saturating_add(MIN_FREE);
    want.max(MIN_SIZE)
        .div_ceil(SIZE_STEP)
        .saturating_mul(SIZE_STEP)
}

/// Builds the rootfs image at `image` from a tree under `work` (removed
/// afterwards), with `envd` (the bytes whose digest is in the cache key, not
/// a path that could change meanwhile) installed as `/usr/local/bin/envd`.
pub fn build(apt: &Apt, work: &Path, envd: &[u8], image: &Path) -> Result<Built, Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    if !cmd::on_path("mmdebstrap") {
        apt.install(&["mmdebstrap"])?;
    }
    if !cmd::on_path("mkfs.ext4") {
        apt.install(&["e2fsprogs"])?;
    }
    let tree = work.join("tree");
    debootstrap(&tree)?;
    customise(&tree, envd)?;
    let used = disk_usage(&tree)?;
    let size = image_size(used);
    mkfs(&tree, image, size)?;
    fs::remove_dir_all(&tree).map_err(|source| Error::Cleanup { path: tree, source })?;
    Ok(Built { used, size })
}

fn debootstrap(tree: &Path) -> Result<(), Error> {
    let sources = apt::host_source_files()?;
    let mut c = Command::new("mmdebstrap");
    c.arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(format!("--customize-hook={USER_HOOK}"))
        .arg(SUITE)
        .arg(tree)
        // Each host sources file becomes a MIRROR argument: mmdebstrap
        // pastes its content into the new system's apt sources.
        .args(&sources);
    cmd::passthrough(&mut c).map_err(Error::Debootstrap)?;
    for (rel, what) in [
        ("usr/bin/python3", "python3"),
        ("usr/bin/sudo", "sudo"),
        ("home/user", "home/user"),
    ] {
        if !tree.join(rel).exists() {
            return Err(Error::Incomplete(what));
        }
    }
    Ok(())
}

fn customise(tree: &Path, envd: &[u8]) -> Result<(), Error> {
    for (rel, mode, content) in FILES {
        let path = tree.join(rel);
        // resolv.conf may be a dangling symlink in some setups; replace
        // whatever is there rather than writing through it.
        let _ = fs::remove_file(&path);
        write_file(&path, content.as_bytes(), *mode)?;
    }
    write_file(&tree.join(ENVD_PATH), envd, 0o755)?;
    // mmdebstrap made the home as root inside the chroot; make sure the user
    // owns it even if a future useradd default changes.
    let home = tree.join("home").join(USER);
    std::os::unix::fs::chown(&home, Some(USER_ID), Some(USER_ID)).map_err(|source| {
        Error::Customise {
            path: home.clone(),
            source,
        }
    })?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let err = |source| Error::Customise {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    fs::write(path, bytes).map_err(err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(())
}

/// Bytes the tree occupies on disk (allocated blocks, hard links once).
pub fn disk_usage(root: &Path) -> Result<u64, Error> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let err = |source| Error::Measure {
            path: dir.clone(),
            source,
        };
        for entry in fs::read_dir(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let meta = entry.metadata().map_err(err)?;
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

fn mkfs(tree: &Path, image: &Path, size: u64) -> Result<(), Error> {
    let file = fs::File::create(image).map_err(|source| Error::CreateImage {
        path: image.to_owned(),
        source,
    })?;
    // set_len is truncate(2): the file is all hole until mkfs writes.
    file.set_len(size).map_err(|source| Error::CreateImage {
        path: image.to_owned(),
        source,
    })?;
    drop(file);
    cmd::output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "lelantos-root"])
            // A sandbox has one user; root's reserved 5 % would just be lost.
            .args(["-m", "0"])
            .arg("-d")
            .arg(tree)
            .arg(image),
    )
    .map_err(Error::Mkfs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_sorted_and_unique() {
        let mut sorted = PACKAGES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, PACKAGES);
    }

    #[test]
    fn size_policy() {
        assert_eq!(image_size(0), MIN_SIZE);
        assert_eq!(image_size(300 << 20), MIN_SIZE);
        let big = image_size(3 << 30);
        assert!(big >= (3 << 30) + MIN_FREE);
        assert_eq!(big % SIZE_STEP, 0);
    }

    #[test]
    fn usage_counts_hard_links_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a");
        fs::write(&a, vec![1u8; 64 << 10]).expect("write");
        let one = disk_usage(dir.path()).expect("du");
        fs::hard_link(&a, dir.path().join("b")).expect("link");
        assert_eq!(disk_usage(dir.path()).expect("du"), one);
        assert!(one >= 64 << 10);
    }

    #[test]
    fn sudoers_name_is_not_ignored_by_sudo() {
        let name = Path::new(SUDOERS_FILE)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        assert!(!name.contains('.') && !name.ends_with('~'));
    }
}
