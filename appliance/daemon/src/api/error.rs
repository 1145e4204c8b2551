//! Every REST failure as one type with one status, rendered as E2B's
//! `{"code","message"}` body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::ErrorBody;
use crate::sandboxes;

/// A REST error: status + message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Text for the SDK's exception.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<sandboxes::Error> for ApiError {
    fn from(e: sandboxes::Error) -> Self {
        use sandboxes::Error as E;
        let status = match &e {
            E::NotFound(_) | E::TemplateNotFound(_) => StatusCode::NOT_FOUND,
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::AtCapacity(_) => StatusCode::TOO_MANY_REQUESTS,
            E::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            E::Store(_) | E::Vm(_) | E::Boot { .. } | E::ActorGone(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        // Chain the sources: "VM: start the VMM for VM x: No such file" is
        // what an operator needs; the top line alone is not.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ErrorBody::new(self.status.as_u16(), self.message)),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // py 2.63 / js 2.51 retry a 429 that says when.
            res.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        res
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statuses_the_sdk_checks() {
        let cases = [
            (sandboxes::Error::NotFound("x".into()), 404),
            (sandboxes::Error::TemplateNotFound("t".into()), 404),
            (sandboxes::Error::Invalid("bad".into()), 400),
            (sandboxes::Error::Conflict("paused".into()), 409),
            (sandboxes::Error::AtCapacity(2), 429),
            (sandboxes::Error::ShuttingDown, 503),
            (sandboxes::Error::ActorGone("x".into()), 500),
        ];
        for (e, want) in cases {
            assert_eq!(ApiError::from(e).status.as_u16(), want);
        }
    }
}
