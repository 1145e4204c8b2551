//! The E2B-compatible REST surface (`shared/spec/e2b-protocol.md` §2).
//!
//! `server` is the axum router, `auth` the `X-API-Key` check, `error` the
//! one error→status table; the rest are wire DTOs and pure helpers. Rules
//! the DTOs encode:
//!
//! - Field names are camelCase, except `allow_internet_access` (requests)
//!   and `error_code` (error body), as the SDKs send and expect them.
//! - Request bodies tolerate unknown fields: newer SDKs add fields.
//! - Response bodies always carry every field the py SDK requires (including
//!   the deprecated `clientID`) and omit unset optional ones.
//! - Wire types stay here; they convert into core types at the edge and never
//!   leak into `sandboxes` or core.
//!
//! Nothing else in the daemon imports this module.

pub mod auth;
pub mod error;
pub mod error_body;
pub mod list_query;
pub mod log_level;
pub mod next_token;
pub mod sandboxes;
pub mod server;
pub mod status;
pub mod template_build;
pub mod templates;

pub use error_body::ErrorBody;
pub use list_query::{ListOrder, ListQuery, ListQueryError};
pub use next_token::{NextToken, NextTokenError};
pub use sandboxes::{
    AutoResume, ConnectRequest, ConnectRequestV2, ListedSandbox, ListedSandboxState, NewSandbox,
    NewSandboxV2, PauseRequest, RefreshRequest, ResumeRequest, Sandbox, SandboxDetail,
    SandboxLifecycle, SandboxMetric, SandboxNetworkConfig, SandboxesWithMetrics, TimeoutAction,
    TimeoutRequest, VolumeMount,
};
pub use templates::{
    Template, TemplateBuild, TemplateBuildStatus, TemplateCreator, TemplateWithBuilds,
};
