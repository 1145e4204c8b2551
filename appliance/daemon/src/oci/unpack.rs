//! Applies image layers to a directory tree the way a container runtime's
//! overlay would show them: later layers replace earlier paths, and OCI
//! whiteouts delete them.
//!
//! - `.wh.<name>` deletes `<name>` of lower layers;
//! - `.wh..wh..opq` hides everything lower layers put in its directory.
//!
//! A whiteout only applies to *lower* layers (image-spec "Whiteouts"), so
//! paths this layer already wrote are remembered and survive both kinds.
//!
//! Every path is resolved inside the tree as if the tree were `/` (an
//! absolute symlink such as Debian's `/var/run -> /run` points into the tree,
//! never at the host), because we run as root and a hostile layer must not
//! be able to write or delete outside it.

use std::collections::{HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufReader, Read, Seek as _, SeekFrom};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::OciError;

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_LINKS: usize = 40;

/// Why a layer could not be applied.
#[derive(Debug)]
pub(super) enum LayerError {
    /// The blob is compressed in a way we cannot read.
    Compression(&'static str),
    /// Reading the archive or writing the tree failed.
    Io(io::Error),
}

impl From<io::Error> for LayerError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl LayerError {
    pub(super) fn into_oci(self, reference: &str, digest: &str) -> OciError {
        match self {
            Self::Compression(what) => OciError::UnsupportedLayer {
                reference: reference.to_owned(),
                digest: digest.to_owned(),
                media_type: format!("{what}-compressed"),
            },
            Self::Io(source) => OciError::Unpack {
                reference: reference.to_owned(),
                digest: digest.to_owned(),
                source,
            },
        }
    }
}

/// Applies the layer blob at `blob` (tar, gzip'd tar) to `root`. The
/// compression is read from the bytes, not the media type: registries and
/// tools disagree on the latter (Docker's `.tar.gzip` names, for one).
///
/// `preserve_owner` keeps the layer's uid/gid (needs root); unit tests
/// running unprivileged turn it off.
pub(super) fn apply_layer_file(
    blob: &Path,
    root: &Path,
    preserve_owner: bool,
) -> Result<(), LayerError> {
    let mut file = fs::File::open(blob)?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    let reader = BufReader::with_capacity(1 << 20, file);
    match magic {
        [0x1f, 0x8b, ..] => apply_layer(MultiGzDecoder::new(reader), root, preserve_owner)?,
        [0x28, 0xb5, 0x2f, 0xfd] => return Err(LayerError::Compression("zstd")),
        _ => apply_layer(reader, root, preserve_owner)?,
    }
    Ok(())
}

/// Applies one uncompressed layer stream to `root`.
pub(super) fn apply_layer(reader: impl Read, root: &Path, preserve_owner: bool) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(preserve_owner);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    // Paths this layer wrote: whiteouts in the same layer must spare them.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let rel = clean(&entry.path()?)?;
        let Some(name) = rel.file_name().map(OsStr::to_owned) else {
            // The layer's own root ("./"): the tree root is ours to set.
            continue;
        };
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_owned();
        let at = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", rel.display()));

        if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT) {
            if name.as_bytes() == OPAQUE {
                let dir = resolve(root, &parent_rel).map_err(at)?;
                clear_lower(&dir, &parent_rel, &written).map_err(at)?;
            } else if !hidden.starts_with(WHITEOUT) {
                let target = parent_rel.join(OsStr::from_bytes(hidden));
                if !written.contains(&target) {
                    remove_any(&resolve_entry(root, &target)?).map_err(at)?;
                }
            }
            // Other `.wh..wh.*` names are aufs bookkeeping, never content.
            continue;
        }

        let parent = resolve(root, &parent_rel).map_err(at)?;
        fs::create_dir_all(&parent).map_err(at)?;
        let dst = parent.join(&name);
        replace_existing(&dst, kind.is_dir()).map_err(at)?;
        match kind {
            EntryType::Link => {
                let target = entry.link_name()?.ok_or_else(|| {
                    at(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "hard link without a target",
                    ))
                })?;
                let target = resolve_entry(root, &clean(&target)?).map_err(at)?;
                fs::hard_link(&target, &dst).map_err(at)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                make_node(entry.header(), kind, &dst, preserve_owner).map_err(at)?;
            }
            _ => {
                entry.unpack(&dst).map_err(at)?;
            }
        }
        written.insert(rel);
    }
    Ok(())
}

/// A layer path as plain components; `..` is refused (no image tool writes
/// it, and it could only be an attempt to leave the tree).
fn clean(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("layer path {} leaves the root", path.display()),
                ));
            }
        }
    }
    Ok(out)
}

/// Where `rel` is inside `root`, following symlinks (final component
/// included) as if `root` were `/`. Missing components are kept as named,
/// so the result is where a new file of that name would go. No component of
/// the result is a symlink, so writing to it cannot leave `root`.
pub(super) fn resolve(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut todo: VecDeque<OsString> = VecDeque::new();
    push_components(&mut todo, rel);
    let mut done = root.to_owned();
    let mut depth = 0usize;
    let mut links = 0usize;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            // `..` never climbs above the root, as in a chroot.
            if depth > 0 {
                done.pop();
                depth -= 1;
            }
            continue;
        }
        let here = done.join(&part);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("too many symlinks resolving {}", rel.display()),
                    ));
                }
                let target = fs::read_link(&here)?;
                if target.has_root() {
                    done = root.to_owned();
                    depth = 0;
                }
                let mut front = VecDeque::new();
                push_components(&mut front, &target);
                front.extend(todo);
                todo = front;
            }
            _ => {
                done = here;
                depth += 1;
            }
        }
    }
    Ok(done)
}

/// Like [`resolve`] but the final component itself is not followed (it is
/// the entry to replace, delete or link to, not what it points at).
fn resolve_entry(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let name = rel.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("layer path {} names no entry", rel.display()),
        )
    })?;
    Ok(resolve(root, rel.parent().unwrap_or(Path::new("")))?.join(name))
}

fn push_components(out: &mut VecDeque<OsString>, path: &Path) {
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push_back(part.to_owned()),
            Component::ParentDir => out.push_back(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// Removes what lower layers left in `dir` (`rel` in the layer), keeping
/// this layer's entries and recursing into this layer's directories, which
/// may still hold lower content.
fn clear_lower(dir: &Path, rel: &Path, written: &HashSet<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        // Nothing below to hide.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let child_rel = rel.join(entry.file_name());
        if !written.contains(&child_rel) {
            remove_any(&entry.path())?;
        } else if entry.file_type()?.is_dir() {
            clear_lower(&entry.path(), &child_rel, written)?;
        }
    }
    Ok(())
}

/// Deletes a file, symlink or whole directory; absent is fine, also when a
/// parent is no longer a directory (umoci whites out `d/x` after replacing
/// directory `d` by a file in the same layer).
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}

/// An entry replaces what lower layers had at its path, except that a
/// directory over a directory merges (its metadata is updated in place).
fn replace_existing(dst: &Path, new_is_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(dst) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() && new_is_dir => Ok(()),
        Ok(_) => remove_any(dst),
    }
}

/// Device nodes and FIFOs, which the tar crate would write as empty files.
fn make_node(
    header: &tar::Header,
    kind: EntryType,
    dst: &Path,
    preserve_owner: bool,
) -> io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    let mode = header.mode()? & 0o7777;
    let (flag, dev) = match kind {
        EntryType::Fifo => (SFlag::S_IFIFO, 0),
        other => {
            let major = header.device_major()?.unwrap_or(0);
            let minor = header.device_minor()?.unwrap_or(0);
            let flag = if other == EntryType::Block {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFCHR
            };
            (flag, makedev(major.into(), minor.into()))
        }
    };
    mknod(dst, flag, Mode::from_bits_truncate(mode), dev).map_err(io::Error::from)?;
    if preserve_owner {
        let id = |v: u64| {
            u32::try_from(v)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid/gid out of range"))
        };
        std::os::unix::fs::lchown(dst, Some(id(header.uid()?)?), Some(id(header.gid()?)?))?;
    }
    // mknod applied our umask; the layer's mode is the truth.
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    /// A tar layer built in memory.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }
        fn header(kind: EntryType, mode: u32, size: u64) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h
        }
        fn dir(mut self, path: &str, mode: u32) -> Self {
            let mut h = Self::header(EntryType::Directory, mode, 0);
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }
        fn file(mut self, path: &str, mode: u32, body: &str) -> Self {
            let mut h = Self::header(EntryType::Regular, mode, body.len() as u64);
            self.0.append_data(&mut h, path, body.as_bytes()).unwrap();
            self
        }
        fn symlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(EntryType::Symlink, 0o777, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        fn hardlink(mut self, path: &str, target: &str) -> Self {
            let mut h = Self::header(EntryType::Link, 0o644, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }
        fn fifo(mut self, path: &str) -> Self {
            let mut h = Self::header(EntryType::Fifo, 0o620, 0);
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }
        fn apply(self, root: &Path) -> io::Result<()> {
            let bytes = self.0.into_inner().unwrap();
            apply_layer(&bytes[..], root, false)
        }
    }

    fn read(root: &Path, rel: &str) -> Option<String> {
        fs::read_to_string(root.join(rel)).ok()
    }

    #[test]
    fn whiteouts_delete_lower_paths_and_opaque_dirs_hide_lower_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        Layer::new()
            .dir("etc/", 0o755)
            .file("etc/keep", 0o644, "keep")
            .file("etc/gone", 0o600, "gone")
            .dir("opt/app/", 0o755)
            .file("opt/app/old", 0o644, "old")
            .dir("opt/app/sub/", 0o755)
            .file("opt/app/sub/deep", 0o644, "deep")
            .file("bin/tool", 0o755, "#!/bin/sh\n")
            .hardlink("bin/tool2", "bin/tool")
            .symlink("bin/alias", "tool")
            .dir("was-dir/", 0o755)
            .file("was-dir/x", 0o644, "x")
            .file("was-file", 0o644, "f")
            .apply(root)
            .unwrap();
        assert_eq!(
            fs::metadata(root.join("bin/tool")).unwrap().ino(),
            fs::metadata(root.join("bin/tool2")).unwrap().ino(),
            "hard link"
        );
        assert_eq!(
            fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::metadata(root.join("etc/gone")).unwrap().mode() & 0o7777,
            0o600
        );

        Layer::new()
            // Same-layer content written before the opaque marker survives it.
            .file("opt/app/new", 0o644, "new")
            .file("opt/app/.wh..wh..opq", 0o644, "")
            .file("etc/.wh.gone", 0o644, "")
            .file("was-dir", 0o644, "now a file")
            // umoci also whites out the old directory's content, below
            // what is now a file.
            .file("was-dir/.wh.x", 0o644, "")
            .dir("was-file/", 0o700)
            .file("was-file/inside", 0o644, "in")
            // A whiteout of something this same layer wrote does not apply.
            .file("etc/fresh", 0o644, "fresh")
            .file("etc/.wh.fresh", 0o644, "")
            .apply(root)
            .unwrap();
        assert_eq!(read(root, "etc/keep").as_deref(), Some("keep"));
        assert!(!root.join("etc/gone").exists());
        assert!(
            !root.join("etc/.wh.gone").exists(),
            "markers are not content"
        );
        assert_eq!(read(root, "etc/fresh").as_deref(), Some("fresh"));
        assert_eq!(read(root, "opt/app/new").as_deref(), Some("new"));
        assert!(!root.join("opt/app/old").exists());
        assert!(!root.join("opt/app/sub").exists());
        assert!(!root.join("opt/app/.wh..wh..opq").exists());
        assert_eq!(read(root, "was-dir").as_deref(), Some("now a file"));
        assert_eq!(read(root, "was-file/inside").as_deref(), Some("in"));
        assert_eq!(
            fs::metadata(root.join("was-file")).unwrap().mode() & 0o7777,
            0o700
        );
    }

    #[test]
    fn whited_out_directory_goes_with_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        Layer::new()
            .file("srv/data/a", 0o644, "a")
            .file("srv/data/b/c", 0o644, "c")
            .apply(root)
            .unwrap();
        Layer::new()
            .file("srv/.wh.data", 0o644, "")
            .apply(root)
            .unwrap();
        assert!(root.join("srv").is_dir());
        assert!(!root.join("srv/data").exists());
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        let escape = outside.path().to_str().unwrap();
        Layer::new()
            .dir("run/", 0o755)
            .dir("var/", 0o755)
            .symlink("var/run", "/run")
            .symlink("evil", escape)
            .symlink("up", "../../../../..")
            .apply(root)
            .unwrap();
        fs::write(outside.path().join("victim"), "safe").unwrap();
        Layer::new()
            .file("var/run/pid", 0o644, "1")
            .file("evil/planted", 0o644, "x")
            .file("up/.wh.victim", 0o644, "")
            .file("evil/.wh.victim", 0o644, "")
            .apply(root)
            .unwrap();
        assert_eq!(read(root, "run/pid").as_deref(), Some("1"));
        assert!(!outside.path().join("planted").exists());
        assert_eq!(
            fs::read_to_string(outside.path().join("victim")).unwrap(),
            "safe"
        );
        // The absolute target was re-rooted into the tree.
        assert!(
            root.join(escape.trim_start_matches('/'))
                .join("planted")
                .exists()
        );
    }

    #[test]
    fn parent_dir_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = Layer::header(EntryType::Regular, 0o644, 1);
        // set_path refuses `..`; write the raw name as a hostile tool would.
        h.as_old_mut().name[..8].copy_from_slice(b"../oops\0");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let err = apply_layer(&bytes[..], dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("leaves the root"), "{err}");
    }

    #[test]
    fn fifos_are_nodes_not_files() {
        let dir = tempfile::tempdir().unwrap();
        Layer::new().fifo("run/ctl").apply(dir.path()).unwrap();
        let m = fs::symlink_metadata(dir.path().join("run/ctl")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
        assert_eq!(m.mode() & 0o7777, 0o620);
    }

    #[test]
    fn zstd_layers_are_named_not_garbled() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, [0x28, 0xb5, 0x2f, 0xfd, 0, 0]).unwrap();
        let err = apply_layer_file(&blob, dir.path(), false).unwrap_err();
        assert!(matches!(err, LayerError::Compression("zstd")));
    }

    #[test]
    fn gzip_layers_are_detected_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let tar = Layer::new().file("a", 0o644, "gz").0.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        apply_layer_file(&blob, &root, false).unwrap();
        assert_eq!(read(&root, "a").as_deref(), Some("gz"));
    }
}
