//! Staging one uploaded file and publishing it atomically under its name.
//!
//! Two requirements pull against each other:
//!
//! * **Atomicity.** A failed or aborted upload must never leave a truncated
//!   destination or a stray temporary file. The usual answer (write a temp
//!   file beside the target, rename it over) breaks the next one.
//! * **Watcher contract** (spec §4.4, pitfall 14). Writing a new file through
//!   `POST /files` must show a watcher on its directory exactly CREATE, CHMOD,
//!   WRITE for the destination name (the SDK tests count three events,
//!   recursive watches included). A temp file in that directory, or in any
//!   hidden directory below the watched one, adds events of its own; even an
//!   `O_TMPFILE` there is reported under a `#<inode>` name.
//!
//! Design chosen (checked against inotify on ext4 and tmpfs):
//!
//! ```text
//!  stage:   O_TMPFILE (no name at all) in a private staging dir ON THE SAME MOUNT
//!           but outside the destination's tree: /var/tmp, /tmp or the mount root,
//!           in `.envd-uploads-<euid>` (0700, ours)         ── no events where users watch
//!  commit:  fchown + user.e2b.* xattrs on the staged inode
//!           mkdir missing parents (0755, chowned)
//!           new target:      linkat(staged → target)      ── CREATE (content already complete)
//!           existing target: link to a staging name, rename over the target (atomic replace,
//!                            permission bits of the old file kept)   ── MOVED_TO
//!           open(target); fchown                           ── ATTRIB  (CHMOD)
//!           fallocate(KEEP_SIZE, 0, 1)                     ── MODIFY  (WRITE), bytes unchanged
//! ```
//!
//! For a new file the raw inotify sequence on the target directory is then
//! CREATE, OPEN, ATTRIB, MODIFY, CLOSE_WRITE, the same as E2B's envd's
//! open(O_CREAT|O_TRUNC) + fchown + write + close, yet the name only ever
//! appears with its full content, owner and metadata. An aborted upload
//! leaves nothing at all: an `O_TMPFILE` inode vanishes with its last fd,
//! even if envd itself dies.
//!
//! Trade-offs, accepted:
//! * Overwrites replace the inode (rename), so other hard links keep the old
//!   content, open readers keep reading it, and xattrs outside `user.e2b.*`
//!   are not carried over. The watcher sees MOVED_TO instead of a truncate.
//! * The WRITE event is synthesised after the data landed (the data was
//!   written while nameless); a watcher reading on that event sees it all.
//! * When no private staging dir shares the destination's mount (read-only
//!   `/var/tmp`, unusual mount layouts, kernels without `STATX_MNT_ID`),
//!   staging falls back to the nearest existing directory of the target:
//!   still atomic and still nameless, but a watcher there also sees
//!   `#<inode>` events. Without `O_TMPFILE` support the stage is a hidden
//!   named file (`.envd-upload-*`) that is unlinked on every error path.
//! * No fsync before publishing: a VM crash (not an envd crash) may lose
//!   the latest upload's data; pausing snapshots the page cache anyway.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, FallocateFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use super::Error;
use crate::entry::METADATA_XATTR_PREFIX;
use crate::users::User;

/// Name of the private staging directory inside a candidate base.
fn staging_dir_name() -> String {
    format!(".envd-uploads-{}", nix::unistd::geteuid())
}

/// An upload being received: the nameless (or hidden) file its bytes go to
/// and everything needed to publish it.
#[derive(Debug)]
pub(super) struct Staged {
    /// The staged file, open read-write.
    file: File,
    /// Directory the staged file lives in.
    staging: OwnedFd,
    /// Name of the staged file when `O_TMPFILE` was not available; unlinked
    /// on drop unless it was consumed by the rename.
    temp_name: Option<OsString>,
    /// Where the bytes go: the request path with a final symlink followed.
    target: PathBuf,
    /// The request path as resolved (what errors and the response show).
    shown: PathBuf,
    /// Nearest directory of `target` that already existed at staging time.
    anchor: PathBuf,
}

impl Staged {
    /// Validates the destination and opens a staging file for it. Blocking.
    pub(super) fn prepare(dest: &Path) -> Result<Self, Error> {
        let shown = dest.to_path_buf();
        let target = final_target(dest)?;
        check_target(&target, &shown)?;
        let Some(parent) = target.parent() else {
            return Err(Error::IsDirectory(shown.display().to_string()));
        };
        let anchor = existing_ancestor(parent, &shown)?;
        let staging = choose_staging(&anchor)?;
        let (file, temp_name) =
            open_staged(&staging).map_err(|e| Error::io("create staging file for", &shown, e))?;
        Ok(Self {
            file,
            staging,
            temp_name,
            target,
            shown,
            anchor,
        })
    }

    /// A second handle on the staged file for the async writer.
    pub(super) fn writer(&self) -> Result<File, Error> {
        self.file
            .try_clone()
            .map_err(|e| Error::io("open staging file for", &self.shown, e))
    }

    /// Publishes the complete staged file under its name (see the module
    /// docs for the order of operations). Blocking.
    pub(super) fn commit(
        mut self,
        user: &User,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
        nix::unistd::fchown(&self.file, Some(uid), Some(gid))
            .map_err(|e| Error::io("chown", &self.shown, e.into()))?;
        set_metadata(&self.file, metadata)
            .map_err(|e| Error::io("set metadata on", &self.shown, e))?;
        let staged_meta = self
            .file
            .metadata()
            .map_err(|e| Error::io("stat", &self.shown, e))?;
        if let Some(parent) = self.target.parent() {
            create_parents(&self.anchor, parent, user, &self.shown)?;
        }
        self.publish()?;
        announce(&self.target, &staged_meta, uid, gid);
        Ok(())
    }

    /// Makes the staged inode appear under `target`, atomically.
    fn publish(&mut self) -> Result<(), Error> {
        let linked = match &self.temp_name {
            None => link_tmpfile(&self.file, &self.target),
            Some(name) => nix::unistd::linkat(
                &self.staging,
                name.as_os_str(),
                AT_FDCWD,
                &self.target,
                AtFlags::empty(),
            ),
        };
        match linked {
            Ok(()) => {
                self.remove_temp_name();
                return Ok(());
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::io("create", &self.shown, e.into())),
        }
        // The target exists: replace it with one rename, keeping its
        // permission bits as an in-place rewrite would.
        let existing =
            std::fs::metadata(&self.target).map_err(|e| Error::io("stat", &self.shown, e))?;
        check_existing(&existing, &self.shown)?;
        self.file
            .set_permissions(std::fs::Permissions::from_mode(
                existing.permissions().mode() & 0o777,
            ))
            .map_err(|e| Error::io("chmod", &self.shown, e))?;
        let name = match self.temp_name.take() {
            Some(name) => name,
            None => self.name_tmpfile()?,
        };
        let renamed = nix::fcntl::renameat(&self.staging, name.as_os_str(), AT_FDCWD, &self.target);
        if let Err(e) = renamed {
            // Best effort: the name is ours and useless now.
            let _ =
                nix::unistd::unlinkat(&self.staging, name.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(Error::io("replace", &self.shown, e.into()));
        }
        Ok(())
    }

    /// Gives the nameless staged file a random hidden name in the staging
    /// directory (needed to rename it over an existing target).
    fn name_tmpfile(&self) -> Result<OsString, Error> {
        for _ in 0..8 {
            let name = random_name();
            let proc = proc_fd_path(&self.file);
            let linked = match nix::unistd::linkat(
                &self.file,
                "",
                &self.staging,
                name.as_os_str(),
                AtFlags::AT_EMPTY_PATH,
            ) {
                Err(Errno::ENOENT) => nix::unistd::linkat(
                    AT_FDCWD,
                    proc.as_str(),
                    &self.staging,
                    name.as_os_str(),
                    AtFlags::AT_SYMLINK_FOLLOW,
                ),
                r => r,
            };
            match linked {
                Ok(()) => return Ok(name),
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::io("name staging file for", &self.shown, e.into())),
            }
        }
        Err(Error::io(
            "name staging file for",
            &self.shown,
            io::ErrorKind::AlreadyExists.into(),
        ))
    }

    fn remove_temp_name(&mut self) {
        if let Some(name) = self.temp_name.take()
            && let Err(e) =
                nix::unistd::unlinkat(&self.staging, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
        {
            tracing::warn!(error = %e, name = ?name, "could not remove upload staging file");
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Only the named fallback leaves something behind; O_TMPFILE inodes
        // disappear with their last descriptor.
        self.remove_temp_name();
    }
}

/// Follows a final symlink the way open(2) with O_CREAT would: an upload to
/// a link writes the file it points to (E2B's envd behaves the same).
fn final_target(dest: &Path) -> Result<PathBuf, Error> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(dest) {
            Ok(real) => Ok(real),
            Err(_) => {
                // Dangling: create what it points at (one level, like open).
                let link = std::fs::read_link(dest).map_err(|e| Error::io("read link", dest, e))?;
                let base = dest.parent().unwrap_or(Path::new("/"));
                Ok(crate::paths::clean(&base.join(link)))
            }
        },
        Ok(_) => Ok(dest.to_path_buf()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(dest.to_path_buf()),
        Err(e) => Err(Error::io("stat", dest, e)),
    }
}

/// Rejects a target that exists but is not a regular file.
fn check_target(target: &Path, shown: &Path) -> Result<(), Error> {
    match std::fs::metadata(target) {
        Ok(m) => check_existing(&m, shown),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", shown, e)),
    }
}

fn check_existing(m: &std::fs::Metadata, shown: &Path) -> Result<(), Error> {
    if m.is_dir() {
        Err(Error::IsDirectory(shown.display().to_string()))
    } else if !m.is_file() {
        Err(Error::NotRegularFile(shown.display().to_string()))
    } else {
        Ok(())
    }
}

/// The nearest ancestor of `dir` (itself included) that exists.
fn existing_ancestor(dir: &Path, shown: &Path) -> Result<PathBuf, Error> {
    let mut cur = dir;
    loop {
        match std::fs::metadata(cur) {
            Ok(m) if m.is_dir() => return Ok(cur.to_path_buf()),
            Ok(_) => return Err(Error::ParentNotDirectory(shown.display().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match cur.parent() {
                Some(p) => cur = p,
                None => return Err(Error::io("stat", cur, e)),
            },
            Err(e) => return Err(Error::io("stat", shown, e)),
        }
    }
}

/// Creates the missing directories between `anchor` and `parent` (0755,
/// owned by the user when envd runs as root).
fn create_parents(anchor: &Path, parent: &Path, user: &User, shown: &Path) -> Result<(), Error> {
    let Ok(rel) = parent.strip_prefix(anchor) else {
        return Ok(());
    };
    let as_root = nix::unistd::geteuid().is_root();
    let mut cur = anchor.to_path_buf();
    for part in rel.components() {
        cur.push(part);
        match std::fs::DirBuilder::new().mode(0o755).create(&cur) {
            Ok(()) => {
                if as_root {
                    std::os::unix::fs::lchown(&cur, Some(user.uid), Some(user.gid))
                        .map_err(|e| Error::io("chown directory", &cur, e))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !cur.is_dir() {
                    return Err(Error::ParentNotDirectory(shown.display().to_string()));
                }
            }
            Err(e) => return Err(Error::io("create directory", &cur, e)),
        }
    }
    Ok(())
}

/// Identity of the mount a path lives on. `STATX_MNT_ID` tells bind mounts
/// apart (link/rename across them fail with EXDEV even on one device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MountId(u64);

/// The mount id of `fd` (or of `path` relative to it); `None` when the
/// kernel cannot say (before Linux 5.8), which disables remote staging.
fn mount_id(fd: impl AsFd, path: &Path) -> Option<MountId> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let flags = if path.as_os_str().is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    let mut buf = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `buf` is a
    // writable buffer of exactly `struct statx`'s size; the fd is open.
    // The raw syscall avoids depending on the libc wrapper's presence.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_statx,
            fd.as_fd().as_raw_fd(),
            c_path.as_ptr(),
            flags,
            libc::STATX_MNT_ID,
            buf.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: zero-initialised, then filled by the kernel; every field is plain data.
    let stx = unsafe { buf.assume_init() };
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(MountId(stx.stx_mnt_id))
}

/// Picks the directory to stage in for a target below `anchor`: a private
/// directory on the same mount outside the usual watched trees, else the
/// anchor itself (see the module docs).
fn choose_staging(anchor: &Path) -> Result<OwnedFd, Error> {
    let open_dir = |p: &Path| {
        nix::fcntl::open(
            p,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    let anchor_fd = open_dir(anchor).map_err(|e| Error::io("open directory", anchor, e.into()))?;
    let Some(want) = mount_id(&anchor_fd, Path::new("")) else {
        return Ok(anchor_fd);
    };
    let candidates = [
        PathBuf::from("/var/tmp"),
        PathBuf::from("/tmp"),
        mount_root(anchor, want),
    ];
    for base in &candidates {
        let Ok(base_fd) = open_dir(base) else {
            continue;
        };
        if mount_id(&base_fd, Path::new("")) != Some(want) {
            continue;
        }
        if let Some(fd) = private_dir(&base_fd, base, want) {
            return Ok(fd);
        }
    }
    tracing::debug!(anchor = %anchor.display(), "no private staging dir on this mount; staging beside the target");
    Ok(anchor_fd)
}

/// The topmost ancestor of `dir` still on mount `want`.
fn mount_root(dir: &Path, want: MountId) -> PathBuf {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut root = dir.clone();
    let mut cur = dir.as_path();
    while let Some(parent) = cur.parent() {
        if mount_id(AT_FDCWD, parent) != Some(want) {
            break;
        }
        root = parent.to_path_buf();
        cur = parent;
    }
    root
}

/// Opens (creating if needed) `<base>/.envd-uploads-<euid>`, accepting it
/// only if it is a real directory owned by us, private, and on `want`:
/// `/var/tmp` and `/tmp` are world-writable, so anyone could plant a name.
fn private_dir(base_fd: &OwnedFd, base: &Path, want: MountId) -> Option<OwnedFd> {
    let name = staging_dir_name();
    match nix::sys::stat::mkdirat(base_fd, name.as_str(), Mode::from_bits_truncate(0o700)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(_) => return None,
    }
    let fd = nix::fcntl::openat(
        base_fd,
        name.as_str(),
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
        tracing::warn!(dir = %base.join(&name).display(), "ignoring staging dir not private to envd");
        return None;
    }
    (mount_id(&fd, Path::new("")) == Some(want)).then_some(fd)
}

/// Opens the staging file: `O_TMPFILE` when it can later be linked, else a
/// hidden uniquely named file.
fn open_staged(staging: &OwnedFd) -> io::Result<(File, Option<OsString>)> {
    // Linking an O_TMPFILE needs CAP_DAC_READ_SEARCH (AT_EMPTY_PATH) or /proc.
    let linkable = nix::unistd::geteuid().is_root() || Path::new("/proc/self/fd").is_dir();
    if linkable {
        match nix::fcntl::openat(
            staging,
            ".",
            OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o666),
        ) {
            Ok(fd) => return Ok((File::from(fd), None)),
            // Filesystems without O_TMPFILE answer one of these.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for _ in 0..8 {
        let name = random_name();
        match nix::fcntl::openat(
            staging,
            name.as_os_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::from_bits_truncate(0o666),
        ) {
            Ok(fd) => return Ok((File::from(fd), Some(name))),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::ErrorKind::AlreadyExists.into())
}

fn random_name() -> OsString {
    OsString::from(format!(".envd-upload-{:016x}", rand::random::<u64>()))
}

fn proc_fd_path(file: &File) -> String {
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

/// Links an `O_TMPFILE` at `target`: AT_EMPTY_PATH when we hold
/// CAP_DAC_READ_SEARCH (root in the VM), else through /proc (ENOENT means
/// the capability is missing).
fn link_tmpfile(file: &File, target: &Path) -> nix::Result<()> {
    match nix::unistd::linkat(file, "", AT_FDCWD, target, AtFlags::AT_EMPTY_PATH) {
        Err(Errno::ENOENT) => nix::unistd::linkat(
            AT_FDCWD,
            proc_fd_path(file).as_str(),
            AT_FDCWD,
            target,
            AtFlags::AT_SYMLINK_FOLLOW,
        ),
        r => r,
    }
}

/// Sets `user.e2b.<key>` for each entry on the (fresh, so attribute-free)
/// staged inode. By fd, since an O_TMPFILE has no path the `entry` helpers
/// could use, and so the metadata is there the moment the name appears.
fn set_metadata(file: &File, metadata: &BTreeMap<String, String>) -> io::Result<()> {
    for (key, value) in metadata {
        let name = CString::new(format!("{METADATA_XATTR_PREFIX}{key}"))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the fd is open for the call's duration; `name` is
        // NUL-terminated; the pointer/length pair describes `value`'s bytes.
        let rc = unsafe {
            libc::fsetxattr(
                file.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Emits the ATTRIB and MODIFY the watcher contract needs, through the
/// destination's name (events on the staged fd would be reported against
/// the staging directory). Failures are logged, not returned: the upload
/// itself has already succeeded.
fn announce(target: &Path, staged: &std::fs::Metadata, uid: Uid, gid: Gid) {
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(target);
    let f = match opened {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, target = %target.display(), "upload: cannot reopen to notify watchers");
            return;
        }
    };
    // Only touch the inode we published; someone may have replaced it since.
    match f.metadata() {
        Ok(m) if m.dev() == staged.dev() && m.ino() == staged.ino() => {}
        _ => return,
    }
    if let Err(e) = nix::unistd::fchown(&f, Some(uid), Some(gid)) {
        tracing::debug!(error = %e, target = %target.display(), "upload: notify chown failed");
    }
    if staged.len() == 0 {
        // Nothing was written, so (as with E2B's envd) no WRITE event.
        return;
    }
    // fallocate within the file changes no byte but is reported as
    // IN_MODIFY; ftruncate to the current size is the fallback where the
    // filesystem lacks fallocate.
    if let Err(e) = nix::fcntl::fallocate(&f, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 1) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(staged.len());
        let truncated = libc::off_t::try_from(len)
            .map_err(|_| Errno::EFBIG)
            .and_then(|l| nix::unistd::ftruncate(&f, l));
        if let Err(e2) = truncated {
            tracing::debug!(error = %e, fallback = %e2, target = %target.display(), "upload: notify write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> User {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        User {
            name: "me".into(),
            uid,
            gid,
            home: "/".into(),
            shell: "/bin/sh".into(),
            groups: vec![],
        }
    }

    fn entries(dir: &Path) -> Vec<OsString> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn new_file_appears_complete_with_parents() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/file.txt");
        let staged = Staged::prepare(&dest).unwrap();
        std::io::Write::write_all(&mut staged.writer().unwrap(), b"hello").unwrap();
        assert!(!dest.exists(), "nothing is visible before commit");
        assert_eq!(entries(dir.path()), Vec::<OsString>::new());
        let meta = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        staged.commit(&me(), &meta).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert_eq!(
            crate::entry::read_metadata(&dest)
                .get("k")
                .map(String::as_str),
            Some("v")
        );
        assert_eq!(
            entries(dest.parent().unwrap()),
            vec![OsString::from("file.txt")]
        );
    }

    #[test]
    fn dropped_stage_leaves_nothing_and_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f");
        std::fs::write(&dest, "old").unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o750)).unwrap();
        let staged = Staged::prepare(&dest).unwrap();
        std::io::Write::write_all(&mut staged.writer().unwrap(), b"partial").unwrap();
        drop(staged);
        assert_eq!(std::fs::read(&dest).unwrap(), b"old");
        assert_eq!(entries(dir.path()), vec![OsString::from("f")]);
        let staged = Staged::prepare(&dest).unwrap();
        std::io::Write::write_all(&mut staged.writer().unwrap(), b"new").unwrap();
        staged.commit(&me(), &BTreeMap::new()).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert_eq!(entries(dir.path()), vec![OsString::from("f")]);
    }

    #[test]
    fn directory_and_file_parent_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Staged::prepare(dir.path()),
            Err(Error::IsDirectory(_))
        ));
        std::fs::write(dir.path().join("file"), "x").unwrap();
        assert!(matches!(
            Staged::prepare(&dir.path().join("file/child")),
            Err(Error::ParentNotDirectory(_))
        ));
    }

    #[test]
    fn symlink_target_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let staged = Staged::prepare(&link).unwrap();
        std::io::Write::write_all(&mut staged.writer().unwrap(), b"new").unwrap();
        staged.commit(&me(), &BTreeMap::new()).unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
    }
}
