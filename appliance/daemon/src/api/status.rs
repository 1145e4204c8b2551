//! The reconciler's face: `GET /status` (every template's Flux-style
//! status) and `POST /reconcile` (fetch and reconcile now).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router, middleware};

use super::auth::{KeyStore, require_api_key};
use super::error::ApiError;
use crate::reconcile::{Reconciler, Report};

/// Routes for the reconciler, behind the API key.
pub fn routes(reconciler: Arc<Reconciler>, keys: KeyStore) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/reconcile", post(reconcile))
        .route_layer(middleware::from_fn_with_state(keys, require_api_key))
        .with_state(reconciler)
}

async fn status(State(r): State<Arc<Reconciler>>) -> Result<Json<Report>, ApiError> {
    r.report().map(Json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("read status: {e}"),
        )
    })
}

async fn reconcile(State(r): State<Arc<Reconciler>>) -> StatusCode {
    r.trigger();
    StatusCode::ACCEPTED
}
