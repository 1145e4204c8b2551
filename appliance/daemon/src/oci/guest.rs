//! Makes an unpacked image tree bootable by our guest: envd where the
//! initramfs execs it, the mount points it moves its mounts onto, the
//! sandbox user and the few files the builtin rootfs also replaces.
//!
//! Image content is kept: accounts are appended, never rewritten, so the
//! image's own users (`node`, `www-data`, …) keep working.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use lelantos_image::rootfs::{ENVD_PATH, FILES, USER};

use super::unpack::resolve;

/// uid and gid of the sandbox user (E2B's default).
const USER_ID: u32 = 1000;

/// Directories the guest needs, with their modes: the initramfs moves
/// `/dev`, `/proc` and `/sys` onto the new root (it fails if they are
/// missing) and envd mounts tmpfs on `/run` and `/tmp`.
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("home", 0o755),
];

/// The tree root becomes the filesystem root: `0755 root:root`.
pub(super) fn set_root_mode(tree: &Path) -> io::Result<()> {
    fs::set_permissions(tree, fs::Permissions::from_mode(0o755))
}

/// Installs `envd` and the sandbox user into `tree` (needs root for the
/// ownership of what it creates).
pub(super) fn make_bootable(tree: &Path, envd: &[u8]) -> io::Result<()> {
    for (rel, mode) in DIRS {
        let path = resolve(tree, Path::new(rel))?;
        if !path.is_dir() {
            fs::create_dir_all(&path).map_err(|e| at(&path, e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .map_err(|e| at(&path, e))?;
        } else if *rel == "tmp" {
            // Whatever the image says, every user must be able to use /tmp.
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .map_err(|e| at(&path, e))?;
        }
    }

    let envd_path = resolve(tree, Path::new(ENVD_PATH))?;
    write_replacing(&envd_path, envd, 0o755, (0, 0))?;

    for (rel, mode, content) in FILES {
        match *rel {
            // Only when the image has none: its own hosts file may matter.
            "etc/hosts" => write_if_missing(tree, rel, content, *mode)?,
            // A symlink (systemd-resolved's stub, for one) would send envd's
            // write to a directory that does not exist in the guest.
            "etc/resolv.conf" => {
                let path = resolve(tree, Path::new("etc"))?.join("resolv.conf");
                if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                    write_replacing(&path, content.as_bytes(), *mode, (0, 0))?;
                }
            }
            // Passwordless sudo as in the builtin image, if sudo is there.
            rel if rel.starts_with("etc/sudoers.d/")
                && resolve(tree, Path::new("etc/sudoers.d"))?.is_dir() =>
            {
                write_if_missing(tree, rel, content, *mode)?;
            }
            // The hostname is set by envd at boot.
            _ => {}
        }
    }

    ensure_user(tree)
}

/// Adds `user` (uid/gid 1000) to passwd, group and shadow unless it is
/// there, and gives it its home. A uid 1000 that another name already has
/// (the `node` user of node images) is shared: duplicate ids are legal and
/// both names keep working.
fn ensure_user(tree: &Path) -> io::Result<()> {
    let shell = if resolve(tree, Path::new("bin/bash"))?.is_file() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let home = format!("/home/{USER}");
    append_account(
        tree,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n",
        &format!("{USER}:x:{USER_ID}:{USER_ID}::{home}:{shell}\n"),
        0o644,
    )?;
    append_account(
        tree,
        "etc/group",
        "root:x:0:\n",
        &format!("{USER}:x:{USER_ID}:\n"),
        0o644,
    )?;
    // Only images that use shadow passwords get an entry (locked: sudo is
    // passwordless and nobody logs in with a password).
    if resolve(tree, Path::new("etc/shadow"))?.is_file() {
        append_account(
            tree,
            "etc/shadow",
            "",
            &format!("{USER}:!:19000:0:99999:7:::\n"),
            0o640,
        )?;
    }
    let home = resolve(tree, Path::new(home.trim_start_matches('/')))?;
    if !home.is_dir() {
        fs::create_dir_all(&home).map_err(|e| at(&home, e))?;
        fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).map_err(|e| at(&home, e))?;
    }
    std::os::unix::fs::chown(&home, Some(USER_ID), Some(USER_ID)).map_err(|e| at(&home, e))
}

/// Appends `line` to the account file `rel` unless an entry with the same
/// name exists; a missing file is created holding `seed` first.
fn append_account(tree: &Path, rel: &str, seed: &str, line: &str, mode: u32) -> io::Result<()> {
    let path = resolve(tree, Path::new(rel))?;
    let current = match fs::read_to_string(&path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(at(&path, e)),
    };
    let name = line.split(':').next().unwrap_or_default();
    let Some(current) = current else {
        return write_replacing(&path, format!("{seed}{line}").as_bytes(), mode, (0, 0));
    };
    if current.lines().any(|l| l.split(':').next() == Some(name)) {
        return Ok(());
    }
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| at(&path, e))?;
    // A file without a final newline would glue our entry onto its last.
    let sep = if current.is_empty() || current.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    f.write_all(format!("{sep}{line}").as_bytes())
        .map_err(|e| at(&path, e))
}

fn write_if_missing(tree: &Path, rel: &str, content: &str, mode: u32) -> io::Result<()> {
    let path = resolve(tree, Path::new(rel))?;
    if fs::symlink_metadata(&path).is_ok() {
        return Ok(());
    }
    write_replacing(&path, content.as_bytes(), mode, (0, 0))
}

/// Writes a fresh regular file at `path` (resolved, so inside the tree),
/// replacing whatever was there, with the given mode and owner.
fn write_replacing(path: &Path, bytes: &[u8], mode: u32, owner: (u32, u32)) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| at(path, e))?,
        Ok(_) => fs::remove_file(path).map_err(|e| at(path, e))?,
        Err(_) => {}
    }
    fs::write(path, bytes).map_err(|e| at(path, e))?;
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).map_err(|e| at(path, e))?;
    // After chown, which clears setuid bits; ours have none, but the order
    // is the safe one.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| at(path, e))
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn user_is_appended_next_to_the_images_own() {
        if !root() {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::create_dir_all(t.join("etc")).unwrap();
        fs::create_dir_all(t.join("usr/bin")).unwrap();
        fs::write(t.join("usr/bin/bash"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", t.join("bin")).unwrap();
        // No final newline, and uid 1000 taken by another name.
        fs::write(
            t.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nnode:x:1000:1000::/home/node:/bin/bash",
        )
        .unwrap();
        fs::write(t.join("etc/group"), "root:x:0:\nnode:x:1000:\n").unwrap();
        std::os::unix::fs::symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            t.join("etc/resolv.conf"),
        )
        .unwrap();
        fs::create_dir_all(t.join("tmp")).unwrap();
        fs::set_permissions(t.join("tmp"), fs::Permissions::from_mode(0o700)).unwrap();

        make_bootable(t, b"envd").unwrap();
        make_bootable(t, b"envd2").unwrap(); // idempotent

        let passwd = fs::read_to_string(t.join("etc/passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\nnode:x:1000:1000::/home/node:/bin/bash\n\
             user:x:1000:1000::/home/user:/bin/bash\n"
        );
        let group = fs::read_to_string(t.join("etc/group")).unwrap();
        assert!(group.ends_with("node:x:1000:\nuser:x:1000:\n"), "{group}");
        let envd = fs::metadata(t.join(ENVD_PATH)).unwrap();
        assert_eq!(envd.mode() & 0o7777, 0o755);
        assert_eq!(fs::read(t.join(ENVD_PATH)).unwrap(), b"envd2");
        let home = fs::metadata(t.join("home/user")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        assert_eq!(fs::metadata(t.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
        for d in ["dev", "proc", "sys", "run"] {
            assert!(t.join(d).is_dir(), "{d}");
        }
        assert!(
            fs::symlink_metadata(t.join("etc/resolv.conf"))
                .unwrap()
                .is_file()
        );
        assert!(t.join("etc/hosts").is_file());
        assert!(!t.join("etc/shadow").exists(), "no shadow file invented");
    }

    #[test]
    fn scratch_image_gets_minimal_accounts_and_sh() {
        if !root() {
            eprintln!("skipped: needs root (chown)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        make_bootable(dir.path(), b"e").unwrap();
        let passwd = fs::read_to_string(dir.path().join("etc/passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"
        );
    }
}
