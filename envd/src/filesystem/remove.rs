//! `Remove`: deletes a file, symlink or whole directory tree. A path that is
//! already gone is success (the SDKs call remove for cleanup and expect no
//! error).

use std::io::ErrorKind;
use std::path::Path;

use connectrpc::RequestContext;
use envd_protocol::filesystem::{RemoveRequest, RemoveResponse};

use super::{Error, FilesystemService, blocking, io};

pub(super) async fn handle(
    svc: &FilesystemService,
    ctx: &RequestContext,
    req: RemoveRequest,
) -> Result<RemoveResponse, Error> {
    let user = svc.caller(ctx)?;
    let path = svc.resolve(&user, &req.path)?;
    blocking(move || remove(&path)).await?;
    Ok(RemoveResponse::default())
}

/// Removes `path` without following a final symlink (removing a link to a
/// directory removes the link, never the target's contents).
pub(super) fn remove(path: &Path) -> Result<(), Error> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        // Missing from the start, or removed concurrently: either way gone.
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
}
