//! The signature on envd's signed `/files` URLs.
//!
//! ```text
//! signature = "v1_" + base64_std_nopad(sha256("<path>:<op>:<user>:<token>" [":<expiration>"]))
//! ```
//!
//! `path` is the `path` query exactly as sent (not resolved), `op` is
//! `read` or `write`, `user` the `username` query or empty. envd checks it;
//! the appliance's proxy recomputes it to find which sandbox a header-less
//! signed URL belongs to.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Which way the file moves; part of the signed string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /files`.
    Read,
    /// `POST /files`.
    Write,
}

impl Operation {
    /// The word that goes into the signed string.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }

    /// The operation an HTTP method performs on `/files`, if any.
    pub fn of_method(method: &str) -> Option<Self> {
        match method {
            "GET" | "HEAD" => Some(Operation::Read),
            "POST" | "PUT" => Some(Operation::Write),
            _ => None,
        }
    }
}

/// Computes the signature the SDK attaches for this request.
pub fn signature(
    path: &str,
    op: Operation,
    username: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut material = format!("{path}:{}:{username}:{token}", op.as_str());
    if let Some(exp) = expiration {
        material.push(':');
        material.push_str(&exp.to_string());
    }
    let digest = Sha256::digest(material.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently (Python hashlib + base64, padding stripped).
    #[test]
    fn known_vectors() {
        assert_eq!(
            signature("/home/user/x.txt", Operation::Read, "user", "tok", None),
            "v1_e2BBOgM4haB3ys0snmIMfZAzh2ht0OZJ2fFzqcFxyFI"
        );
        assert_eq!(
            signature(
                "/home/user/x.txt",
                Operation::Write,
                "",
                "tok",
                Some(1_700_000_000)
            ),
            "v1_d6Ut1hCx1XYrw9DHraMCG64f4OnL3zxT9gDRktQ1mvY"
        );
    }
}
