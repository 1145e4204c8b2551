//! ext4 images without mounting: `mkfs.ext4 -d` packs a tree into one,
//! `debugfs` reads a file back out of one.

use std::path::Path;
use std::process::{Command, Stdio};

use lelantos_image::cmd;
use lelantos_image::rootfs::disk_usage;

use super::OciError;

const MIB: u64 = 1 << 20;
/// Free space on top of the image's content, for the sandbox's own files.
const HEADROOM: u64 = 512 * MIB;

/// Image size for a tree occupying `used` bytes: half again as much (ext4
/// metadata, and room to grow) plus [`HEADROOM`], in whole MiB. The file is
/// sparse, so the unused part costs nothing on the host.
pub(super) fn image_size(used: u64) -> u64 {
    used.saturating_add(used / 2)
        .saturating_add(HEADROOM)
        .div_ceil(MIB)
        .saturating_mul(MIB)
}

/// Packs `tree` into a new sparse ext4 image at `image`; returns its size.
pub(super) fn pack(tree: &Path, image: &Path, reference: &str) -> Result<u64, OciError> {
    let used = disk_usage(tree).map_err(|source| OciError::Measure {
        reference: reference.to_owned(),
        source: Box::new(source),
    })?;
    let size = image_size(used);
    let mkfs_err = |source| OciError::Mkfs {
        reference: reference.to_owned(),
        image: image.to_owned(),
        source,
    };
    let create_err = |source| OciError::Cache {
        reference: reference.to_owned(),
        path: image.to_owned(),
        source,
    };
    // set_len is truncate(2): the file is all hole until mkfs writes.
    let file = std::fs::File::create(image).map_err(create_err)?;
    file.set_len(size).map_err(create_err)?;
    drop(file);
    // The same filesystem options as the builtin rootfs (label, no
    // reserved blocks), so both boot the same way.
    cmd::output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "lelantos-root", "-m", "0"])
            .arg("-d")
            .arg(tree)
            .arg(image),
    )
    .map_err(mkfs_err)?;
    Ok(size)
}

/// Copies one file out of an ext4 image without mounting it (`debugfs
/// dump -p`, which keeps its mode), e.g. envd out of the builtin rootfs.
/// `out` is replaced.
pub fn extract_from_ext4(image: &Path, path_in_image: &str, out: &Path) -> Result<(), OciError> {
    let missing = |detail: String| OciError::ExtractMissing {
        image: image.to_owned(),
        path_in_image: path_in_image.to_owned(),
        detail,
    };
    // debugfs parses its request line itself: quotes and newlines would
    // change the command rather than name a file.
    if path_in_image.contains(['"', '\n']) || out.to_string_lossy().contains(['"', '\n']) {
        return Err(missing("path contains a quote or newline".to_owned()));
    }
    if !image.is_file() {
        return Err(missing("no such image file".to_owned()));
    }
    let _ = std::fs::remove_file(out);
    let request = format!("dump -p \"{path_in_image}\" \"{}\"", out.display());
    let output = Command::new("debugfs")
        .arg("-R")
        .arg(&request)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| OciError::Extract {
            image: image.to_owned(),
            path_in_image: path_in_image.to_owned(),
            source: cmd::Error::Spawn {
                program: "debugfs".to_owned(),
                source,
            },
        })?;
    // debugfs exits 0 even when the lookup fails; what it printed and
    // whether the file appeared are the only signals.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaint = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if !output.status.success() || !out.is_file() {
        let detail = if complaint.is_empty() {
            format!("debugfs exited with {}", output.status)
        } else {
            complaint
        };
        let _ = std::fs::remove_file(out);
        return Err(missing(detail));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_tree_and_a_half_plus_headroom_in_mib() {
        assert_eq!(image_size(0), 512 * MIB);
        assert_eq!(image_size(100 * MIB), 662 * MIB);
        assert_eq!(image_size(1), 513 * MIB);
        assert_eq!(image_size((3 << 30) + 7) % MIB, 0);
    }

    #[test]
    fn pack_then_extract_round_trips() {
        if !cmd::on_path("mkfs.ext4") || !cmd::on_path("debugfs") {
            eprintln!("skipped: e2fsprogs not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/local/bin")).unwrap();
        std::fs::write(tree.join("usr/local/bin/envd"), b"binary").unwrap();
        let image = dir.path().join("rootfs.ext4");
        let size = pack(&tree, &image, "test/ref").unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), size);

        let out = dir.path().join("envd");
        extract_from_ext4(&image, "/usr/local/bin/envd", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"binary");

        let err = extract_from_ext4(&image, "/nope", &out).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nope") && msg.contains("rootfs.ext4"),
            "{msg}"
        );
        assert!(!out.exists());
    }
}
