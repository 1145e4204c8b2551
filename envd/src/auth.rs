//! Access-token enforcement.
//!
//! Once `/init` sets a token, every request must carry it in
//! `X-Access-Token`, except `GET /health`, `POST /init` and `/files` (which
//! may present a signature instead; `http::files` checks that).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::http::json_error;
use crate::sandbox::Sandbox;

/// Message E2B's envd sends for a missing or wrong token.
pub const UNAUTHORIZED: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";

/// Whether `presented` equals the required token (constant time).
pub fn token_matches(required: &str, presented: &str) -> bool {
    required.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// Axum middleware enforcing the access token.
pub async fn require_token(State(sandbox): State<Sandbox>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let exempt = path == "/health" || path == "/init" || path == "/files";
    if exempt {
        return next.run(req).await;
    }
    if let Some(required) = sandbox.access_token() {
        let presented = req
            .headers()
            .get("x-access-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !token_matches(&required, presented) {
            crate::http::drain(req.into_body()).await;
            return json_error(http::StatusCode::UNAUTHORIZED, UNAUTHORIZED).into_response();
        }
    }
    next.run(req).await
}
