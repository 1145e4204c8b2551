//! envd's plain-HTTP surface: `/health`, `/init`, `/envs`, `/metrics` here,
//! `/files` in [`files`], URL signatures in [`signing`].

pub mod files;
pub mod metrics;
pub mod signing;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use crate::config::EnvdConfig;
use crate::sandbox::Sandbox;

/// State shared by the HTTP handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// What `/init` configures.
    pub sandbox: Sandbox,
    /// Startup configuration.
    pub config: Arc<EnvdConfig>,
    /// True when envd is the VM's init: only then may `/init` set the clock.
    pub is_init: bool,
    /// CPU sampler for `/metrics`.
    pub cpu: Arc<metrics::CpuSampler>,
}

impl axum::extract::FromRef<AppState> for Sandbox {
    fn from_ref(state: &AppState) -> Sandbox {
        state.sandbox.clone()
    }
}

/// Most of a refused request's body that is read before the refusal goes out.
const DRAIN_LIMIT: usize = 1 << 20;

/// Longest wait for it (a bidirectional stream never ends on its own).
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops what is left of a refused request's body, within bounds,
/// before the refusal is sent. hyper closes a connection whose request body
/// was left unread, and a client still writing that body then gets a broken
/// pipe instead of the 401/400 we meant (the SDKs raise a network error).
pub async fn drain(body: axum::body::Body) {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let read = async {
        let mut left = DRAIN_LIMIT;
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, bytes::Bytes::len);
            match left.checked_sub(len) {
                Some(l) => left = l,
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_DEADLINE, read).await;
}

/// E2B's error body: `{"code": <status>, "message": "..."}`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message.into() });
    (status, Json(body)).into_response()
}

/// `GET /health`: 204 while envd serves.
pub async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Body of `POST /init` (unknown fields are ignored: orchestrators add some).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Sandbox-wide environment variables.
    #[serde(default)]
    pub env_vars: Option<HashMap<String, String>>,
    /// Access token to require from now on; absent clears it.
    #[serde(default)]
    pub access_token: Option<String>,
    /// Host's wall clock, RFC 3339.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Default user for requests that name none.
    #[serde(default)]
    pub default_user: Option<String>,
    /// Default working directory.
    #[serde(default)]
    pub default_workdir: Option<String>,
}

/// `POST /init`: configure token, environment, defaults and clock.
pub async fn init(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let req: InitRequest = if body.is_empty() {
        InitRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return json_error(StatusCode::BAD_REQUEST, format!("invalid init body: {e}"));
            }
        }
    };
    if let Some(user) = &req.default_user
        && let Err(e) = crate::users::Accounts::load().and_then(|a| a.user(user))
    {
        return json_error(StatusCode::BAD_REQUEST, e.to_string());
    }
    if state.is_init
        && let Some(ts) = &req.timestamp
    {
        set_clock(ts);
    }
    state.sandbox.update(|s| {
        if let Some(env) = req.env_vars {
            s.env_vars = env;
        }
        s.access_token = req.access_token.filter(|t| !t.is_empty());
        if let Some(u) = req.default_user.filter(|u| !u.is_empty()) {
            s.default_user = u;
        }
        if let Some(w) = req.default_workdir.filter(|w| !w.is_empty()) {
            s.default_workdir = Some(w.into());
        }
    });
    StatusCode::NO_CONTENT.into_response()
}

/// Sets the guest clock from the host's, when it is off by more than 50 ms.
fn set_clock(rfc3339: &str) {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        tracing::warn!(timestamp = rfc3339, "init: unparseable timestamp");
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    if (now - t).abs() < time::Duration::milliseconds(50) {
        return;
    }
    let ts = nix::sys::time::TimeSpec::new(t.unix_timestamp(), i64::from(t.nanosecond()));
    if let Err(e) = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts) {
        tracing::warn!(error = %e, "init: could not set the clock");
    }
}

/// `GET /envs`: the sandbox environment.
pub async fn envs(State(state): State<AppState>) -> Json<HashMap<String, String>> {
    Json(state.sandbox.settings().env_vars)
}
