//! The reconciler's face: `GET /status` (every template's Flux-style
//! status) and `POST /reconcile` (fetch and reconcile now).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::{KeyStore, protect};
use super::error::ApiError;
use crate::reconcile::{Reconciler, Report};

/// Routes for the reconciler, behind the API key.
pub fn routes(reconciler: Arc<Reconciler>, keys: KeyStore) -> Router {
    protect(
        Router::new()
            .route("/status", get(status))
            .route("/reconcile", post(reconcile)),
        keys,
    )
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
