//! `Stat`: the `EntryInfo` of one path, lstat-based (a symlink describes
//! itself, with its target's type; see [`crate::entry`]).

use std::path::Path;

use connectrpc::RequestContext;
use envd_protocol::filesystem::{EntryInfo, StatRequest, StatResponse};

use super::{Error, FilesystemService, accounts, blocking, io};

pub(super) async fn handle(
    svc: &FilesystemService,
    ctx: &RequestContext,
    req: StatRequest,
) -> Result<StatResponse, Error> {
    let user = svc.caller(ctx)?;
    let path = svc.resolve(&user, &req.path)?;
    let entry = blocking(move || entry(&path)).await?;
    Ok(StatResponse {
        entry: entry.into(),
        ..StatResponse::default()
    })
}

/// `EntryInfo` of `path`; a missing path is [`Error::NotFound`] (the SDK's
/// `exists()` relies on that code).
pub(super) fn entry(path: &Path) -> Result<EntryInfo, Error> {
    crate::entry::entry_info(path, &accounts()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(path.to_path_buf())
        } else {
            io("stat", path)(e)
        }
    })
}
