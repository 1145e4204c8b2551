//! `MakeDir`, and [`ensure_dirs`], which `Move` shares: create every missing
//! directory on a path, mode 0755, owned by the caller when envd is root.

use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use connectrpc::RequestContext;
use envd_protocol::filesystem::{MakeDirRequest, MakeDirResponse};

use super::{Error, FilesystemService, blocking, created_owner, io};

pub(super) async fn handle(
    svc: &FilesystemService,
    ctx: &RequestContext,
    req: MakeDirRequest,
) -> Result<MakeDirResponse, Error> {
    let user = svc.caller(ctx)?;
    let path = svc.resolve(&user, &req.path)?;
    let owner = created_owner(&user);
    let entry = blocking(move || {
        make_dir(&path, owner)?;
        super::stat::entry(&path)
    })
    .await?;
    Ok(MakeDirResponse {
        entry: entry.into(),
        ..MakeDirResponse::default()
    })
}

/// Creates `path` and its missing parents. An existing directory (or link to
/// one) is [`Error::DirExists`], which the SDK reports as `false`.
fn make_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(Error::DirExists(path.to_path_buf())),
        Ok(_) => return Err(Error::ExistsNotDir(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", path)(e)),
    }
    ensure_dirs(path, owner)
}

/// Makes sure every component of `path` is a directory, creating missing
/// ones with mode 0755 (before umask, like `mkdir -p`) and chowning each
/// new one to `owner`. Existing directories are left as they are.
pub(super) fn ensure_dirs(path: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    let mut current = PathBuf::new();
    for component in path.components() {
        current.push(component);
        match std::fs::metadata(&current) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => return Err(Error::NotADirectory(current)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io("stat", &current)(e)),
        }
        match std::fs::DirBuilder::new().mode(0o755).create(&current) {
            Ok(()) => {}
            // Someone else created it between our stat and mkdir; fine if it
            // is a directory, and then it is theirs, so no chown.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && current.is_dir() => continue,
            Err(e) => return Err(io("create directory", &current)(e)),
        }
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(
                &current,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|errno| io("change owner of", &current)(errno.into()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_parents_and_rejects_files_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        ensure_dirs(&deep, None).unwrap();
        assert!(deep.is_dir());
        // Idempotent on existing trees.
        ensure_dirs(&deep, None).unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let err = ensure_dirs(&dir.path().join("f/g"), None).unwrap_err();
        assert!(matches!(err, Error::NotADirectory(p) if p == dir.path().join("f")));
    }

    #[test]
    fn existing_paths_are_reported_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            make_dir(dir.path(), None),
            Err(Error::DirExists(_))
        ));
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(make_dir(&f, None), Err(Error::ExistsNotDir(_))));
    }
}
