//! `Move` (the file is named for what it does: `move` is a keyword): one
//! rename(2), after creating the destination's missing parents.

use std::io::ErrorKind;
use std::path::Path;

use connectrpc::RequestContext;
use envd_protocol::filesystem::{MoveRequest, MoveResponse};

use super::make_dir::ensure_dirs;
use super::{Error, FilesystemService, blocking, created_owner, io};

pub(super) async fn handle(
    svc: &FilesystemService,
    ctx: &RequestContext,
    req: MoveRequest,
) -> Result<MoveResponse, Error> {
    let user = svc.caller(ctx)?;
    let source = svc.resolve(&user, &req.source)?;
    let destination = svc.resolve(&user, &req.destination)?;
    let owner = created_owner(&user);
    let entry = blocking(move || {
        rename(&source, &destination, owner)?;
        super::stat::entry(&destination)
    })
    .await?;
    Ok(MoveResponse {
        entry: entry.into(),
        ..MoveResponse::default()
    })
}

fn rename(source: &Path, destination: &Path, owner: Option<(u32, u32)>) -> Result<(), Error> {
    // Checked first so a missing source does not leave new, empty
    // destination directories behind.
    if let Err(e) = std::fs::symlink_metadata(source) {
        return Err(if e.kind() == ErrorKind::NotFound {
            Error::NotFound(source.to_path_buf())
        } else {
            io("stat", source)(e)
        });
    }
    if let Some(parent) = destination.parent() {
        ensure_dirs(parent, owner)?;
    }
    std::fs::rename(source, destination).map_err(|e| {
        if e.kind() == ErrorKind::NotFound && std::fs::symlink_metadata(source).is_err() {
            // The source vanished after our check.
            Error::NotFound(source.to_path_buf())
        } else {
            io("rename", source)(e)
        }
    })
}
