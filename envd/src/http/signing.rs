//! Signed `/files` URLs.
//!
//! The access-token middleware exempts `/files` because the SDKs hand out
//! download and upload URLs (`download_url`, `upload_url`) that carry a
//! signature instead of the `X-Access-Token` header. This module computes and
//! checks that signature; `http::files` calls [`verify`] before touching the
//! filesystem. It owns no state and does no IO.
//!
//! The signature itself is defined in `envd_protocol::signing` (the proxy
//! computes it too).

use subtle::ConstantTimeEq;

/// Why a `/files` request is not authorised. Every variant is a 401 except
/// [`Error::InvalidExpiration`], which is a malformed request (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `X-Access-Token` was sent but is not the sandbox's token.
    #[error("access token present in header but does not match")]
    HeaderTokenMismatch,
    /// Neither a token header nor a `signature` query parameter.
    #[error("missing signature query parameter")]
    MissingSignature,
    /// The signature does not match the request.
    #[error("invalid signature")]
    InvalidSignature,
    /// The signature matched but its `signature_expiration` has passed.
    /// The SDK tests compare this text verbatim.
    #[error("signature is already expired")]
    Expired,
    /// `signature_expiration` is not a unix timestamp.
    #[error("invalid signature_expiration '{0}'")]
    InvalidExpiration(String),
}

pub use envd_protocol::signing::{Operation, signature};

/// The request fields that take part in the check, as they arrived.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// `X-Access-Token` header bytes, if sent.
    pub header_token: Option<&'a [u8]>,
    /// `path` query, exactly as sent (empty when absent).
    pub path: &'a str,
    /// `username` query (empty when absent).
    pub username: &'a str,
    /// `signature` query.
    pub signature: Option<&'a str>,
    /// `signature_expiration` query (unix seconds), unparsed.
    pub expiration: Option<&'a str>,
}

/// Checks a `/files` request against the sandbox token, the way E2B's envd
/// does: a present (non-empty) token header must match and then wins; else a
/// signature is required and must match; then an expiration in the past is
/// rejected. `now` is unix seconds.
pub fn verify(token: &str, req: &Presented<'_>, op: Operation, now: i64) -> Result<(), Error> {
    if let Some(header) = req.header_token.filter(|h| !h.is_empty()) {
        // Compare raw bytes: a non-UTF-8 header simply does not match.
        return if bool::from(token.as_bytes().ct_eq(header)) {
            Ok(())
        } else {
            Err(Error::HeaderTokenMismatch)
        };
    }
    let Some(presented) = req.signature else {
        return Err(Error::MissingSignature);
    };
    let expiration = match req.expiration {
        Some(raw) => Some(
            raw.trim()
                .parse::<i64>()
                .map_err(|_| Error::InvalidExpiration(raw.to_owned()))?,
        ),
        None => None,
    };
    let expected = signature(req.path, op, req.username, token, expiration);
    if !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        return Err(Error::InvalidSignature);
    }
    // Checked only after the match, so a forged expiry cannot probe anything.
    if expiration.is_some_and(|exp| exp < now) {
        return Err(Error::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_order() {
        let sig = signature("p", Operation::Read, "", "tok", Some(100));
        let base = Presented {
            path: "p",
            signature: Some(&sig),
            expiration: Some("100"),
            ..Presented::default()
        };
        assert_eq!(verify("tok", &base, Operation::Read, 100), Ok(()));
        assert_eq!(
            verify("tok", &base, Operation::Read, 101),
            Err(Error::Expired)
        );
        assert_eq!(
            verify("tok", &base, Operation::Write, 0),
            Err(Error::InvalidSignature)
        );
        let other_user = Presented {
            username: "root",
            ..base
        };
        assert_eq!(
            verify("tok", &other_user, Operation::Read, 0),
            Err(Error::InvalidSignature)
        );
        let no_sig = Presented {
            signature: None,
            ..base
        };
        assert_eq!(
            verify("tok", &no_sig, Operation::Read, 0),
            Err(Error::MissingSignature)
        );
        let header = Presented {
            header_token: Some(b"tok"),
            signature: None,
            ..base
        };
        assert_eq!(verify("tok", &header, Operation::Read, 1_000), Ok(()));
        let bad_header = Presented {
            header_token: Some(b"nope"),
            ..base
        };
        assert_eq!(
            verify("tok", &bad_header, Operation::Read, 0),
            Err(Error::HeaderTokenMismatch)
        );
        let empty_header = Presented {
            header_token: Some(b""),
            ..base
        };
        assert_eq!(verify("tok", &empty_header, Operation::Read, 0), Ok(()));
        let bad_exp = Presented {
            expiration: Some("soon"),
            ..base
        };
        assert_eq!(
            verify("tok", &bad_exp, Operation::Read, 0),
            Err(Error::InvalidExpiration("soon".into()))
        );
    }
}
