//! Glue between our handlers and the Connect runtime (the `connectrpc`
//! crate owns framing, codecs, error encoding and deadlines).
//!
//! What lives here is what E2B's envd adds on top of plain Connect:
//! keepalive events on quiet streams, and treating `Connect-Timeout-Ms: 0`
//! as "no deadline".

use std::time::Duration;

use connectrpc::{ConnectError, RequestContext};

/// Largest single Connect message accepted (request side). Uploads go
/// through `/files`, so RPC messages are small; 16 MiB leaves room for big
/// `SendInput` chunks while bounding memory per request.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Keepalive interval when the client sends no `Keepalive-Ping-Interval`
/// (E2B's envd uses 90 s).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// The keepalive interval the client asked for, in seconds.
pub fn keepalive_interval(ctx: &RequestContext) -> Duration {
    ctx.headers()
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(DEFAULT_KEEPALIVE, Duration::from_secs)
}

/// The user named by `Authorization: Basic base64("<name>:")`, if any.
pub fn basic_auth_user(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let name = text.split(':').next().unwrap_or_default();
    (!name.is_empty()).then(|| name.to_owned())
}

/// Maps a user-lookup failure to the Connect error the SDKs expect.
pub fn user_error(err: crate::users::Error) -> ConnectError {
    match err {
        crate::users::Error::UnknownUser(_) => ConnectError::unauthenticated(err.to_string()),
        crate::users::Error::Read { .. } => ConnectError::internal(err.to_string()),
    }
}

/// Maps an io error on `path` to a Connect error, naming the path.
pub fn io_error(err: &std::io::Error, what: &str, path: &std::path::Path) -> ConnectError {
    use std::io::ErrorKind;
    let msg = format!("{what} '{}': {err}", path.display());
    match err.kind() {
        ErrorKind::NotFound => ConnectError::not_found(msg),
        ErrorKind::PermissionDenied => ConnectError::permission_denied(msg),
        ErrorKind::AlreadyExists => ConnectError::already_exists(msg),
        ErrorKind::InvalidInput | ErrorKind::NotADirectory | ErrorKind::IsADirectory => {
            ConnectError::invalid_argument(msg)
        }
        _ => ConnectError::internal(msg),
    }
}

/// Tower layer body: drops a `Connect-Timeout-Ms: 0` header, which the
/// Connect runtime would read as an already-expired deadline but E2B clients
/// mean as "no deadline".
pub fn strip_zero_timeout<B>(mut req: http::Request<B>) -> http::Request<B> {
    let zero = req
        .headers()
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().parse::<u64>() == Ok(0));
    if zero {
        req.headers_mut().remove("connect-timeout-ms");
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(basic_auth_user(&h), None);
        h.insert("authorization", "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(basic_auth_user(&h).as_deref(), Some("root"));
        h.insert("authorization", "Basic !!!".parse().unwrap());
        assert_eq!(basic_auth_user(&h), None);
    }

    #[test]
    fn zero_timeout_is_removed_others_kept() {
        let r = http::Request::builder()
            .header("connect-timeout-ms", "0")
            .body(())
            .unwrap();
        assert!(
            strip_zero_timeout(r)
                .headers()
                .get("connect-timeout-ms")
                .is_none()
        );
        let r = http::Request::builder()
            .header("connect-timeout-ms", "5000")
            .body(())
            .unwrap();
        assert!(
            strip_zero_timeout(r)
                .headers()
                .get("connect-timeout-ms")
                .is_some()
        );
    }
}
