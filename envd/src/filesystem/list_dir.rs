//! `ListDir`: the entries under a directory down to `depth` levels.
//!
//! Order is depth-first, lexical, pre-order (a directory right before its
//! children), root excluded. A symlink is followed only when it is the
//! requested path itself; links inside are listed, never descended into.
//! Every entry's `path` is the requested path plus the relative part, so a
//! listing through a symlinked root keeps the caller's spelling.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use connectrpc::RequestContext;
use envd_protocol::filesystem::{EntryInfo, ListDirRequest, ListDirResponse};

use super::{Error, FilesystemService, accounts, blocking, io};
use crate::users::Accounts;

pub(super) async fn handle(
    svc: &FilesystemService,
    ctx: &RequestContext,
    req: ListDirRequest,
) -> Result<ListDirResponse, Error> {
    let user = svc.caller(ctx)?;
    let path = svc.resolve(&user, &req.path)?;
    // The SDKs never send 0 (they reject depth < 1), but proto3 omits a
    // zero, so an absent depth means "this directory only".
    let depth = req.depth.max(1);
    let entries = blocking(move || list(&path, depth, &accounts())).await?;
    Ok(ListDirResponse {
        entries,
        ..ListDirResponse::default()
    })
}

/// One entry still to be emitted by the walk.
struct Pending {
    path: PathBuf,
    level: u32,
    /// A real directory (not a link to one), so the walk may descend.
    is_dir: bool,
}

/// Lists `root` (see the module docs for order and symlink rules).
pub(super) fn list(root: &Path, depth: u32, accounts: &Accounts) -> Result<Vec<EntryInfo>, Error> {
    // metadata() follows a symlink at the root, which is the one place
    // listing through a link is wanted.
    super::require_dir(root)?;
    let mut out = Vec::new();
    // An explicit stack instead of recursion: depth comes from the client.
    let mut stack = children(root, 1)?.unwrap_or_default();
    while let Some(next) = stack.pop() {
        let info = match crate::entry::entry_info(&next.path, accounts) {
            Ok(info) => info,
            // Deleted while we walked: not an error, just not listed.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io("stat", &next.path)(e)),
        };
        out.push(info);
        if next.is_dir
            && next.level < depth
            && let Some(kids) = children(&next.path, next.level + 1)?
        {
            stack.extend(kids);
        }
    }
    Ok(out)
}

/// The entries of `dir`, sorted so that popping from the end yields them in
/// lexical order. `None` when `dir` vanished before we could read it.
fn children(dir: &Path, level: u32) -> Result<Option<Vec<Pending>>, Error> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read directory", dir)(e)),
    };
    let mut found: Vec<(OsString, bool)> = Vec::new();
    for item in read {
        let item = match item {
            Ok(item) => item,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read directory", dir)(e)),
        };
        // DirEntry::file_type does not follow symlinks: links are leaves.
        let is_dir = item.file_type().is_ok_and(|t| t.is_dir());
        found.push((item.file_name(), is_dir));
    }
    // Byte-wise name order, as Go's filepath.WalkDir (E2B's envd) sorts.
    found.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(Some(
        found
            .into_iter()
            .map(|(name, is_dir)| Pending {
                path: dir.join(name),
                level,
                is_dir,
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(root: &Path, depth: u32) -> Vec<String> {
        list(root, depth, &Accounts::default())
            .unwrap()
            .into_iter()
            .map(|e| {
                e.path
                    .strip_prefix(&format!("{}/", root.display()))
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn pre_order_lexical_with_depth() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["b/y", "a/x/deep"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("c.txt"), "").unwrap();
        std::fs::write(dir.path().join("a/z.txt"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("l")).unwrap();
        assert_eq!(names(dir.path(), 1), ["a", "b", "c.txt", "l"]);
        assert_eq!(
            names(dir.path(), 2),
            ["a", "a/x", "a/z.txt", "b", "b/y", "c.txt", "l"]
        );
        assert_eq!(
            names(dir.path(), 9),
            ["a", "a/x", "a/x/deep", "a/z.txt", "b", "b/y", "c.txt", "l"]
        );
    }
}
