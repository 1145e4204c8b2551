//! `GET /files` (download) and `POST /files` (upload), E2B envd's plain-HTTP
//! file transfer.
//!
//! ```text
//!  GET  ─▶ authorize ─▶ resolve path ─▶ open + fstat ─▶ stream (Range | gzip | identity)
//!  POST ─▶ authorize ─▶ metadata headers ─▶ body ─▶ [gunzip] ─▶ [multipart, part by part]
//!                                                      └─▶ per file: stage ─▶ commit
//! ```
//!
//! The access-token middleware exempts `/files` because signed URLs carry a
//! signature instead of the token, so both handlers call [`authorize`] first
//! (rules in [`super::signing`]). Files are always streamed: neither handler
//! holds more than a few MiB of a file in memory, whatever its size.
//! Staging and the atomic commit of uploads (and the watcher-event contract
//! they must keep) live in `commit`.
//!
//! This module must not touch the access-token middleware or the watcher; it
//! only produces the filesystem effects the watcher then reports.

mod commit;
mod gzip;
mod receive;
mod serve;

pub use receive::upload;
pub use serve::download;

use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;

use super::json_error;
use super::signing::{self, Operation};
use crate::error_chain;
use crate::sandbox::Sandbox;
use crate::users::User;

/// Query parameters of both routes (E2B names).
#[derive(Debug, Default, Deserialize)]
struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<String>,
}

impl FilesQuery {
    fn parse(uri: &Uri) -> Result<Self, Error> {
        match Query::<FilesQuery>::try_from_uri(uri) {
            Ok(Query(q)) => Ok(q),
            Err(e) => Err(Error::Query(e.body_text())),
        }
    }

    /// The `username` query, with an empty value meaning "not given".
    fn username(&self) -> Option<&str> {
        self.username.as_deref().filter(|u| !u.is_empty())
    }
}

/// Everything that can go wrong serving `/files`, mapped to E2B's statuses
/// and `{code, message}` bodies in one exhaustive match (`status_and_message`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Token header or URL signature rejected.
    #[error(transparent)]
    Signature(#[from] signing::Error),
    /// The requested user does not exist, or the account files are unreadable.
    #[error(transparent)]
    User(#[from] crate::users::Error),
    /// The query string could not be decoded.
    #[error("invalid query: {0}")]
    Query(String),
    /// The path could not be resolved for the user.
    #[error(transparent)]
    Path(#[from] crate::paths::Error),
    /// Download of a path that does not exist.
    #[error("path '{0}' does not exist")]
    NotFound(String),
    /// Download or upload target is a directory.
    #[error("path '{0}' is a directory")]
    IsDirectory(String),
    /// Target is a device, FIFO or socket.
    #[error("path '{0}' is not a regular file")]
    NotRegularFile(String),
    /// Some ancestor of the upload target exists but is not a directory.
    #[error("a parent of path '{0}' is not a directory")]
    ParentNotDirectory(String),
    /// Neither identity nor gzip is acceptable to the client.
    #[error("none of the requested content encodings is supported (gzip, identity)")]
    NotAcceptable,
    /// `Range` lies entirely beyond the end of the file.
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable {
        /// File size, for `Content-Range: bytes */<size>`.
        size: u64,
    },
    /// Upload body is neither multipart/form-data nor octet-stream.
    #[error(
        "unsupported content type '{0}', expected multipart/form-data or application/octet-stream"
    )]
    UnsupportedContentType(String),
    /// Upload `Content-Encoding` other than gzip/identity.
    #[error("unsupported content encoding '{0}'")]
    UnsupportedContentEncoding(String),
    /// Octet-stream upload without `path`.
    #[error("missing path query parameter")]
    MissingPath,
    /// Multipart file part with no filename while `path` was not given.
    #[error("file part has no filename and no path query parameter was given")]
    MissingDestination,
    /// Multipart body without any `file` part.
    #[error("multipart body has no part named 'file'")]
    NoFileParts,
    /// Two parts of one upload name the same destination.
    #[error("path '{0}' is given more than once")]
    DuplicatePath(String),
    /// An `X-Metadata-*` header breaks the limits.
    #[error("invalid metadata: {0}")]
    Metadata(String),
    /// The request body failed while being read (client went away, bad chunking).
    #[error("read request body")]
    Body(#[source] axum::Error),
    /// The multipart framing is broken.
    #[error("invalid multipart body")]
    Multipart(#[from] multer::Error),
    /// The gzip body is corrupt or truncated.
    #[error("invalid gzip body")]
    Gzip(#[source] std::io::Error),
    /// The filesystem is full (or the quota is used up).
    #[error("not enough disk space available")]
    NoSpace,
    /// The kernel refused an operation on the path.
    #[error("permission denied: {step} '{path}'")]
    PermissionDenied {
        /// What was being done.
        step: &'static str,
        /// On which path.
        path: String,
    },
    /// Any other filesystem failure.
    #[error("{step} '{path}'")]
    Io {
        /// What was being done.
        step: &'static str,
        /// On which path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking filesystem task panicked or was cancelled.
    #[error("filesystem worker failed")]
    Worker(#[source] tokio::task::JoinError),
}

impl Error {
    /// Wraps an io error, recognising the outcomes with their own status.
    fn io(step: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        let path = path.display().to_string();
        match source.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Error::NoSpace,
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                Error::PermissionDenied { step, path }
            }
            Some(libc::ENOTDIR) => Error::ParentNotDirectory(path),
            Some(libc::EISDIR) => Error::IsDirectory(path),
            _ => Error::Io { step, path, source },
        }
    }

    fn status_and_message(&self) -> (StatusCode, String) {
        let msg = self.to_string();
        match self {
            Error::Signature(signing::Error::InvalidExpiration(_)) => {
                (StatusCode::BAD_REQUEST, msg)
            }
            Error::Signature(
                signing::Error::HeaderTokenMismatch
                | signing::Error::MissingSignature
                | signing::Error::InvalidSignature
                | signing::Error::Expired,
            ) => (StatusCode::UNAUTHORIZED, msg),
            Error::User(crate::users::Error::UnknownUser(_)) => (StatusCode::UNAUTHORIZED, msg),
            Error::User(crate::users::Error::Read { .. }) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the account database".into(),
            ),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, msg),
            Error::Query(_)
            | Error::Path(_)
            | Error::IsDirectory(_)
            | Error::NotRegularFile(_)
            | Error::ParentNotDirectory(_)
            | Error::UnsupportedContentType(_)
            | Error::UnsupportedContentEncoding(_)
            | Error::MissingPath
            | Error::MissingDestination
            | Error::NoFileParts
            | Error::DuplicatePath(_)
            | Error::Metadata(_)
            | Error::Body(_)
            | Error::Multipart(_)
            | Error::Gzip(_) => (StatusCode::BAD_REQUEST, msg),
            Error::PermissionDenied { .. } => (StatusCode::FORBIDDEN, msg),
            Error::NotAcceptable => (StatusCode::NOT_ACCEPTABLE, msg),
            Error::RangeNotSatisfiable { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, msg),
            Error::NoSpace => (StatusCode::INSUFFICIENT_STORAGE, msg),
            // The client gets the step and path, not the OS detail; the log has the chain.
            Error::Io { step, path, .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to {step} '{path}'"),
            ),
            Error::Worker(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        if status.is_server_error() {
            tracing::error!(error = %error_chain(&self), "/files failed");
        } else {
            tracing::debug!(error = %error_chain(&self), %status, "/files rejected");
        }
        let mut res = json_error(status, message);
        if let Error::RangeNotSatisfiable { size } = self
            && let Ok(v) = http::HeaderValue::from_str(&format!("bytes */{size}"))
        {
            res.headers_mut().insert(http::header::CONTENT_RANGE, v);
        }
        res
    }
}

/// Checks the token header or URL signature (when the sandbox has a token),
/// then resolves the user the request acts as. Same order as E2B's envd:
/// authorisation before user lookup.
fn authorize(
    sandbox: &Sandbox,
    headers: &HeaderMap,
    q: &FilesQuery,
    op: Operation,
) -> Result<User, Error> {
    if let Some(token) = sandbox.access_token() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let presented = signing::Presented {
            header_token: headers
                .get("x-access-token")
                .map(http::HeaderValue::as_bytes),
            path: q.path.as_deref().unwrap_or(""),
            username: q.username.as_deref().unwrap_or(""),
            signature: q.signature.as_deref(),
            expiration: q.signature_expiration.as_deref(),
        };
        signing::verify(&token, &presented, op, now)?;
    }
    Ok(sandbox.resolve_user(q.username())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_statuses() {
        let p = std::path::Path::new("/x");
        let status = |errno| {
            Error::io("write", p, std::io::Error::from_raw_os_error(errno))
                .status_and_message()
                .0
        };
        assert_eq!(status(libc::ENOSPC), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(status(libc::EDQUOT), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(status(libc::EACCES), StatusCode::FORBIDDEN);
        assert_eq!(status(libc::ENOTDIR), StatusCode::BAD_REQUEST);
        assert_eq!(status(libc::EIO), StatusCode::INTERNAL_SERVER_ERROR);
        let (_, msg) = Error::io("write", p, std::io::Error::from_raw_os_error(libc::ENOSPC))
            .status_and_message();
        assert_eq!(msg, "not enough disk space available");
    }

    #[test]
    fn signature_errors_are_401_with_exact_text() {
        let (status, msg) = Error::from(signing::Error::Expired).status_and_message();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(msg, "signature is already expired");
    }
}
