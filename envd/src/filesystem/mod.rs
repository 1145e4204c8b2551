//! `filesystem.Filesystem`: Stat, MakeDir, Move, ListDir, Remove and the two
//! flavours of directory watching (a server stream, and polling watchers for
//! clients without streaming).
//!
//! Every RPC runs as the Basic-auth user or the sandbox default and resolves
//! its paths with [`crate::paths::resolve`]. envd does not drop privileges
//! for filesystem work (neither does E2B's): when it runs as root, the
//! directories it creates are chowned to the caller so they end up owned as
//! if the caller had made them.
//!
//! This module owns the polling watchers (`CreateWatcher` ids live here until
//! `RemoveWatcher`); a streaming watch lives exactly as long as its response
//! stream. Both hold one inotify instance each, freed when dropped.
//!
//! ```text
//!   CreateWatcher ──▶ registry[id] ─┬─ notify thread ─▶ buffer (capped)
//!   GetWatcherEvents ◀── take ──────┘
//!   RemoveWatcher ──▶ drop (inotify closed)
//!
//!   WatchDir ──▶ notify thread ─▶ bounded channel ─▶ stream: start, events,
//!                                                     keepalives, deadline
//! ```

mod events;
mod list_dir;
mod make_dir;
mod remove;
mod rename;
mod stat;
mod watch_dir;
mod watchers;

use std::path::{Path, PathBuf};

use connectrpc::{
    ConnectError, ErrorCode, RequestContext, ServiceRequest, ServiceResult, ServiceStream,
};
use envd_protocol::filesystem::*;

use crate::error_chain;
use crate::sandbox::Sandbox;
use crate::users::{Accounts, User};

/// What can go wrong in a filesystem RPC. Domain outcomes (missing paths,
/// wrong types, unknown watchers) are kept apart from io failures so each
/// maps to the Connect code the SDKs key off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Basic-auth user (or the default) could not be resolved.
    #[error(transparent)]
    User(#[from] crate::users::Error),
    /// The request path cannot be resolved (e.g. `~other`).
    #[error(transparent)]
    Path(#[from] crate::paths::Error),
    /// The path does not exist. The SDKs show this text to users.
    #[error("file not found: {}", .0.display())]
    NotFound(PathBuf),
    /// MakeDir on an existing directory (the SDK turns it into `false`).
    #[error("directory already exists: {}", .0.display())]
    DirExists(PathBuf),
    /// MakeDir on an existing file, socket, …
    #[error("path already exists but it is not a directory: {}", .0.display())]
    ExistsNotDir(PathBuf),
    /// A directory was required (ListDir, watches, a parent on the way).
    #[error("path is not a directory: {}", .0.display())]
    NotADirectory(PathBuf),
    /// inotify does not see changes made by other clients of a network
    /// filesystem, so such watches are refused unless asked for.
    #[error("cannot watch path on network filesystem: {}", .0.display())]
    NetworkMount(PathBuf),
    /// No polling watcher has this id.
    #[error("watcher with id {0} not found")]
    UnknownWatcher(String),
    /// A polling watcher failed earlier; every later read reports it.
    #[error("watcher {id} failed: {reason}")]
    WatcherFailed {
        /// The watcher id.
        id: String,
        /// What went wrong, as first reported.
        reason: String,
    },
    /// A filesystem call failed.
    #[error("{step} '{}'", path.display())]
    Io {
        /// What was being done ("stat", "rename", …).
        step: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Setting up or running an inotify watch failed.
    #[error("watch '{}'", path.display())]
    Watch {
        /// The watched directory.
        path: PathBuf,
        /// What notify reported.
        #[source]
        source: notify::Error,
    },
    /// The kernel (or our buffer) dropped events; the watch cannot be
    /// trusted any more.
    #[error("watch '{}': events overflowed", .0.display())]
    WatchOverflow(PathBuf),
    /// The worker thread running a blocking filesystem call died.
    #[error("filesystem worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

impl Error {
    /// The Connect code for this error (one exhaustive match, table-tested).
    pub fn code(&self) -> ErrorCode {
        use std::io::ErrorKind;
        match self {
            Self::User(crate::users::Error::UnknownUser(_)) => ErrorCode::Unauthenticated,
            Self::User(crate::users::Error::Read { .. }) => ErrorCode::Internal,
            Self::Path(_)
            | Self::ExistsNotDir(_)
            | Self::NotADirectory(_)
            | Self::NetworkMount(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) | Self::UnknownWatcher(_) => ErrorCode::NotFound,
            Self::DirExists(_) => ErrorCode::AlreadyExists,
            Self::Io { source, .. } => match source.kind() {
                ErrorKind::NotFound => ErrorCode::NotFound,
                ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
                ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
                ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::InvalidInput => {
                    ErrorCode::InvalidArgument
                }
                _ => ErrorCode::Internal,
            },
            Self::WatcherFailed { .. }
            | Self::Watch { .. }
            | Self::WatchOverflow(_)
            | Self::Worker(_) => ErrorCode::Internal,
        }
    }
}

impl From<Error> for ConnectError {
    fn from(err: Error) -> Self {
        ConnectError::new(err.code(), error_chain(&err))
    }
}

/// The filesystem service.
#[derive(Debug, Clone)]
pub struct FilesystemService {
    sandbox: Sandbox,
    watchers: watchers::Registry,
}

impl FilesystemService {
    /// Creates the service.
    pub fn new(sandbox: Sandbox) -> Self {
        Self {
            sandbox,
            watchers: watchers::Registry::default(),
        }
    }

    /// The user the request runs as: Basic auth, else the sandbox default.
    fn caller(&self, ctx: &RequestContext) -> Result<User, Error> {
        let name = crate::rpc::basic_auth_user(ctx.headers());
        Ok(self.sandbox.resolve_user(name.as_deref())?)
    }

    /// Resolves a request path for `user` against the current default workdir.
    fn resolve(&self, user: &User, raw: &str) -> Result<PathBuf, Error> {
        let workdir = self.sandbox.settings().default_workdir;
        Ok(crate::paths::resolve(raw, user, workdir.as_deref())?)
    }
}

/// Account names for `EntryInfo` owner/group. If the account files cannot be
/// read, ids print numerically, which is what E2B's envd does too.
fn accounts() -> Accounts {
    Accounts::load().unwrap_or_default()
}

/// Owner for directories envd creates on a caller's behalf: only when envd
/// runs as root can (and must) it hand them over.
fn created_owner(user: &User) -> Option<(u32, u32)> {
    nix::unistd::geteuid()
        .is_root()
        .then_some((user.uid, user.gid))
}

/// Runs blocking filesystem work off the async threads (a deep ListDir or
/// Remove can take a while).
async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(Error::Worker)?
}

/// Builds an `Error::Io` for `step` on `path`.
fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        step,
        path: path.to_path_buf(),
        source,
    }
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        Ok(stat::handle(self, &ctx, r.to_owned_message()).await?.into())
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        Ok(make_dir::handle(self, &ctx, r.to_owned_message())
            .await?
            .into())
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        Ok(rename::handle(self, &ctx, r.to_owned_message())
            .await?
            .into())
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        Ok(list_dir::handle(self, &ctx, r.to_owned_message())
            .await?
            .into())
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        Ok(remove::handle(self, &ctx, r.to_owned_message())
            .await?
            .into())
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        Ok(watch_dir::handle(self, &ctx, r.to_owned_message())
            .await?
            .into())
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        r: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        Ok(watchers::create(self, &ctx, r.to_owned_message())
            .await?
            .into())
    }

    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        Ok(self
            .watchers
            .take_events(&r.to_owned_message().watcher_id)?
            .into())
    }

    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        r: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        self.watchers.remove(&r.to_owned_message().watcher_id)?;
        Ok(RemoveWatcherResponse::default().into())
    }
}

/// `root` must exist and be a directory (following a symlink at `root`).
pub(super) fn require_dir(root: &std::path::Path) -> Result<(), Error> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::NotADirectory(root.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::NotFound(root.to_path_buf()))
        }
        Err(e) => Err(io("stat", root)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_err(kind: std::io::ErrorKind) -> Error {
        Error::Io {
            step: "stat",
            path: PathBuf::from("/x"),
            source: std::io::Error::from(kind),
        }
    }

    #[test]
    fn error_codes() {
        use std::io::ErrorKind as K;
        let p = || PathBuf::from("/x");
        let table = [
            (
                Error::User(crate::users::Error::UnknownUser("u".into())),
                ErrorCode::Unauthenticated,
            ),
            (
                Error::Path(crate::paths::Error::OtherUsersHome("~a".into())),
                ErrorCode::InvalidArgument,
            ),
            (Error::NotFound(p()), ErrorCode::NotFound),
            (Error::DirExists(p()), ErrorCode::AlreadyExists),
            (Error::ExistsNotDir(p()), ErrorCode::InvalidArgument),
            (Error::NotADirectory(p()), ErrorCode::InvalidArgument),
            (Error::NetworkMount(p()), ErrorCode::InvalidArgument),
            (Error::UnknownWatcher("w1".into()), ErrorCode::NotFound),
            (
                Error::WatcherFailed {
                    id: "w1".into(),
                    reason: "x".into(),
                },
                ErrorCode::Internal,
            ),
            (Error::WatchOverflow(p()), ErrorCode::Internal),
            (io_err(K::NotFound), ErrorCode::NotFound),
            (io_err(K::PermissionDenied), ErrorCode::PermissionDenied),
            (io_err(K::AlreadyExists), ErrorCode::AlreadyExists),
            (io_err(K::NotADirectory), ErrorCode::InvalidArgument),
            (io_err(K::Other), ErrorCode::Internal),
        ];
        for (err, code) in table {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn message_carries_the_os_error() {
        let err = ConnectError::from(io_err(std::io::ErrorKind::PermissionDenied));
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        let msg = err.message.unwrap_or_default();
        assert!(msg.starts_with("stat '/x': "), "{msg}");
        assert!(msg.contains("permission denied"), "{msg}");
    }
}
