//! Routing signed `/files` URLs, which carry no routing header.
//!
//! `download_url()` / `upload_url()` hand out `{sandbox_url}/files?path=…&signature=…`
//! for any HTTP client to fetch. The proxy recomputes the signature with
//! each running sandbox's envd token and sends the request to the one that
//! matches; envd then checks it again (including expiry), so a match here
//! only decides where the request goes.

use envd_protocol::signing::{Operation, signature};

use super::Directory;

/// The query fields that take part in the signature, decoded the way envd
/// decodes them (`application/x-www-form-urlencoded`, as axum's `Query`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Presented {
    path: String,
    username: String,
    signature: String,
    expiration: Option<String>,
}

impl Presented {
    /// The signed fields when this is a `/files` request with a
    /// `signature` parameter; `None` for anything else.
    pub(crate) fn of(uri: &http::Uri) -> Option<Self> {
        if uri.path() != "/files" {
            return None;
        }
        let mut out = Presented::default();
        let mut signed = false;
        // envd refuses repeated parameters, so which copy is kept here
        // does not matter.
        for (k, v) in form_urlencoded::parse(uri.query()?.as_bytes()) {
            match &*k {
                "path" => out.path = v.into_owned(),
                "username" => out.username = v.into_owned(),
                "signature" => {
                    out.signature = v.into_owned();
                    signed = true;
                }
                "signature_expiration" => out.expiration = Some(v.into_owned()),
                _ => {}
            }
        }
        signed.then_some(out)
    }
}

/// The running sandbox whose envd token produces the presented signature.
pub(crate) fn find(
    presented: &Presented,
    method: &http::Method,
    directory: &dyn Directory,
) -> Option<String> {
    let op = Operation::of_method(method.as_str())?;
    let expiration = match &presented.expiration {
        Some(raw) => Some(raw.trim().parse::<i64>().ok()?),
        None => None,
    };
    directory
        .signing_keys()
        .into_iter()
        .find(|(_, token)| {
            let expected = signature(&presented.path, op, &presented.username, token, expiration);
            constant_time_eq(expected.as_bytes(), presented.signature.as_bytes())
        })
        .map(|(id, _)| id)
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed signature is right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_form_decoded() {
        let uri: http::Uri = "/files?path=%2Fhome%2Fuser%2Fa+b%20c.txt&username=root&signature=v1_x&signature_expiration=17"
            .parse()
            .unwrap();
        assert_eq!(
            Presented::of(&uri),
            Some(Presented {
                path: "/home/user/a b c.txt".into(),
                username: "root".into(),
                signature: "v1_x".into(),
                expiration: Some("17".into()),
            })
        );
        let unsigned: http::Uri = "/files?path=%2Fx".parse().unwrap();
        assert_eq!(Presented::of(&unsigned), None);
        let other: http::Uri = "/filesx?signature=v1_x".parse().unwrap();
        assert_eq!(Presented::of(&other), None);
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
