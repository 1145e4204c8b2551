//! `GET /files` and `POST /files` (to be written).

use axum::response::{IntoResponse, Response};

/// `GET /files`.
pub async fn download() -> Response {
    http::StatusCode::NOT_IMPLEMENTED.into_response()
}

/// `POST /files`.
pub async fn upload() -> Response {
    http::StatusCode::NOT_IMPLEMENTED.into_response()
}
