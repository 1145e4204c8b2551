//! E2B's error body: `{"code": <HTTP status>, "message": "...", "error_code"?: "..."}`.
//!
//! py 2.45 parses it with `code` and `message` required for every status and
//! js decides "not found" by `code == 404`, so every non-2xx REST answer
//! carries exactly this shape.

use serde::{Deserialize, Serialize};

/// The JSON body of every REST error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status code, repeated.
    pub code: u16,
    /// Human-readable text; the SDK shows it as `"<status>: <message>"`.
    pub message: String,
    /// Machine-readable reason (snake_case on the wire, unlike other fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

impl ErrorBody {
    /// A body for `status` with `message` and no `error_code`.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            code: status,
            message: message.into(),
            error_code: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_shape() {
        let v = serde_json::to_value(ErrorBody::new(404, "sandbox not found")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code": 404, "message": "sandbox not found"})
        );
        let mut b = ErrorBody::new(409, "paused");
        b.error_code = Some("sandbox_snapshot_guest_agent_unresponsive".into());
        let v = serde_json::to_value(b).unwrap();
        assert_eq!(v["error_code"], "sandbox_snapshot_guest_agent_unresponsive");
    }
}
