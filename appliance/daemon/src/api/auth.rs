//! `X-API-Key` on every REST call.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::keys::{self, auth::AuthError};
use crate::store::Store;

/// The key store the middleware checks against (its own connection).
pub type KeyStore = Arc<Mutex<Store>>;

/// Puts every route of `router` (added so far) behind the API key.
pub fn protect<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    keys: KeyStore,
) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(keys, require_api_key))
}

/// Lets the request through only with a valid, unrevoked key.
pub async fn require_api_key(State(keys): State<KeyStore>, req: Request, next: Next) -> Response {
    let Some(presented) = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing X-API-Key header").into_response();
    };
    let checked = {
        let store = keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys::auth::authenticate(&store, presented)
    };
    match checked {
        Ok(_) => next.run(req).await,
        Err(e @ (AuthError::Lookup(_) | AuthError::RecordUse(_))) => {
            tracing::error!(error = %e, "api key check failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not check the API key",
            )
            .into_response()
        }
        Err(AuthError::Malformed(_) | AuthError::Unknown | AuthError::Revoked { .. }) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "Invalid API key").into_response()
        }
    }
}
