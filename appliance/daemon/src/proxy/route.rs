//! Which sandbox and port a request is for.
//!
//! Two ways in, as E2B's own proxy: the SDK's headers
//! (`E2b-Sandbox-Id` + `E2b-Sandbox-Port`), used whenever present, or the
//! host name `{port}-{sandboxID}.{domain}`. Signed `/files` URLs carry
//! neither; those are matched by signature elsewhere.

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Guest port.
    pub port: u16,
}

/// Why a request could not be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `E2b-Sandbox-Port` is not a port number.
    #[error("invalid sandbox port '{0}'")]
    BadPort(String),
    /// Neither headers nor host name name a sandbox.
    #[error("request names no sandbox")]
    NoSandbox,
}

/// E2B's envd port, the SDK's default target.
pub const ENVD_PORT: u16 = 49983;

/// Routes by headers first, then by `Host` under `domain`.
pub fn route(headers: &http::HeaderMap, domain: &str) -> Result<Target, RouteError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(id) = header("e2b-sandbox-id").filter(|v| !v.is_empty()) {
        let port = match header("e2b-sandbox-port") {
            None | Some("") => ENVD_PORT,
            Some(p) => p.parse().map_err(|_| RouteError::BadPort(p.to_owned()))?,
        };
        return Ok(Target {
            sandbox_id: id.to_owned(),
            port,
        });
    }
    let host = header("host").ok_or(RouteError::NoSandbox)?;
    from_host(host, domain).ok_or(RouteError::NoSandbox)
}

/// Parses `{port}-{sandboxID}.{domain}[:listenport]`.
pub fn from_host(host: &str, domain: &str) -> Option<Target> {
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    if label.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse().ok()?;
    (!id.is_empty()).then(|| Target {
        sandbox_id: id.to_owned(),
        port,
    })
}

/// The body E2B's proxy sends for an unknown, paused or killed sandbox
/// (the SDKs key off "was not found").
pub fn sandbox_not_found_body(sandbox_id: &str) -> serde_json::Value {
    serde_json::json!({ "sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn headers_win_over_host() {
        let h = headers(&[
            ("e2b-sandbox-id", "abc123"),
            ("e2b-sandbox-port", "49983"),
            ("host", "8080-other.localhost"),
        ]);
        assert_eq!(
            route(&h, "localhost"),
            Ok(Target {
                sandbox_id: "abc123".into(),
                port: 49983
            })
        );
        let h = headers(&[("e2b-sandbox-id", "abc123")]);
        assert_eq!(route(&h, "localhost").map(|t| t.port), Ok(ENVD_PORT));
        let h = headers(&[("e2b-sandbox-id", "abc123"), ("e2b-sandbox-port", "http")]);
        assert_eq!(
            route(&h, "localhost"),
            Err(RouteError::BadPort("http".into()))
        );
    }

    #[test]
    fn host_names() {
        assert_eq!(
            from_host("8080-abc123.sbx.example.com", "sbx.example.com"),
            Some(Target {
                sandbox_id: "abc123".into(),
                port: 8080
            })
        );
        assert_eq!(
            from_host("49983-abc123.localhost:3000", "localhost").map(|t| t.port),
            Some(49983)
        );
        assert_eq!(from_host("abc123.localhost", "localhost"), None);
        assert_eq!(from_host("x-abc.localhost", "localhost"), None);
        assert_eq!(from_host("8080-abc.evil.localhost", "localhost"), None);
        assert_eq!(from_host("8080-abc.localhostx", "localhost"), None);
        assert_eq!(from_host("127.0.0.1:3000", "localhost"), None);
        let h = headers(&[("host", "127.0.0.1:3000")]);
        assert_eq!(route(&h, "localhost"), Err(RouteError::NoSandbox));
    }

    #[test]
    fn not_found_body_has_e2b_shape() {
        let b = sandbox_not_found_body("abc");
        assert_eq!(b["code"], 502);
        assert!(b["message"].as_str().unwrap().contains("was not found"));
        assert_eq!(b["sandboxId"], "abc");
    }
}
