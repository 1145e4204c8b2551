//! Wire types of the template build API (`e2b-protocol.md` §2.5), as py
//! 2.45.1 and 2.63.0 send and parse them. Requests tolerate unknown fields
//! (newer SDKs add some); responses carry every field py requires.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// `POST /v3/templates` (`TemplateBuildRequestV3`). py sends `name` (maybe
/// `name:tag`), `tags` when given, and `cpuCount`/`memoryMB`: always in
/// 2.45.1 (defaults 2 and 1024), only when set in 2.63.0, which may also add
/// `minFreeDiskMb`. `alias` is the spec's deprecated spelling of `name`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TemplateBuildRequestV3 {
    /// `name` or `name:tag`.
    #[serde(default)]
    pub name: Option<String>,
    /// Deprecated alternative to `name`.
    #[serde(default)]
    pub alias: Option<String>,
    /// Extra tags for the build.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// vCPUs of the template's sandboxes.
    #[serde(default, rename = "cpuCount")]
    pub cpu_count: Option<u32>,
    /// Memory (MiB) of the template's sandboxes.
    #[serde(default, rename = "memoryMB")]
    pub memory_mb: Option<u32>,
    /// Minimum free disk after the build (py 2.63); not honoured yet.
    #[serde(default, rename = "minFreeDiskMb")]
    pub min_free_disk_mb: Option<u32>,
}

/// `202` answer to `POST /v3/templates` (`TemplateRequestResponseV3`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRequestResponseV3 {
    /// The template id (the name without tag).
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The new build's id.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// Always false: one tenant, nothing is public.
    pub public: bool,
    /// Names the template answers to.
    pub names: Vec<String>,
    /// Tags of this build.
    pub tags: Vec<String>,
    /// Aliases (the name).
    pub aliases: Vec<String>,
}

/// `GET /templates/aliases/{alias}` answer (`TemplateAliasResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateAliasResponse {
    /// The template the alias names.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Always false.
    pub public: bool,
}

/// `201` answer to `GET /templates/{id}/files/{hash}` (`TemplateBuildFileUpload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateBuildFileUpload {
    /// Whether this server already holds the files for `hash`.
    pub present: bool,
    /// Where to `PUT` the archive (this server, one-time token in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Credentials for `fromImage` (`GeneralRegistry`; the AWS and GCP shapes
/// carry other fields and are refused).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FromImageRegistry {
    /// `registry`, `aws` or `gcp`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Registry user.
    #[serde(default)]
    pub username: Option<String>,
    /// Registry password or token.
    #[serde(default)]
    pub password: Option<String>,
}

/// One instruction (`TemplateStep`): `type` is COPY, RUN, ENV, WORKDIR or USER.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct TemplateStep {
    /// Instruction kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Positional arguments (see [`super::plan`]).
    #[serde(default)]
    pub args: Vec<String>,
    /// COPY only: the client's hash of the files (the upload's cache key).
    #[serde(default, rename = "filesHash", skip_serializing_if = "Option::is_none")]
    pub files_hash: Option<String>,
    /// Rebuild from this step on, ignoring caches.
    #[serde(default)]
    pub force: Option<bool>,
}

/// `POST /v2/templates/{id}/builds/{buildID}` (`TemplateBuildStartV2`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TemplateBuildStartV2 {
    /// OCI image to start from.
    #[serde(default, rename = "fromImage")]
    pub from_image: Option<String>,
    /// Template to start from.
    #[serde(default, rename = "fromTemplate")]
    pub from_template: Option<String>,
    /// Credentials for `fromImage`.
    #[serde(default, rename = "fromImageRegistry")]
    pub from_image_registry: Option<FromImageRegistry>,
    /// Ignore every cache.
    #[serde(default)]
    pub force: Option<bool>,
    /// Instructions, in order.
    #[serde(default)]
    pub steps: Vec<TemplateStep>,
    /// Started in every new sandbox.
    #[serde(default, rename = "startCmd")]
    pub start_cmd: Option<String>,
    /// Awaited before a new sandbox is handed out.
    #[serde(default, rename = "readyCmd")]
    pub ready_cmd: Option<String>,
}

/// `status` of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildStatus {
    /// Requested, not started.
    Waiting,
    /// Running.
    Building,
    /// Published; sandboxes can start from it.
    Ready,
    /// Failed; `reason` says why.
    Error,
}

/// One build log line (`BuildLogEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildLogEntry {
    /// When.
    pub timestamp: Timestamp,
    /// The text.
    pub message: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// `base`, the 1-based instruction number, or `finalize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// Why a build failed (`BuildStatusReason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildStatusReason {
    /// What the SDK's BuildException says.
    pub message: String,
    /// The failed step (`base`, a 1-based instruction number, `finalize`):
    /// py maps it to the stack trace of the call that added the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The last lines before the failure.
    #[serde(default, rename = "logEntries", skip_serializing_if = "Vec::is_empty")]
    pub log_entries: Vec<BuildLogEntry>,
}

/// `GET /templates/{id}/builds/{buildID}/status` answer (`TemplateBuildInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateBuildInfo {
    /// The template.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// The build.
    #[serde(rename = "buildID")]
    pub build_id: String,
    /// Where it is.
    pub status: BuildStatus,
    /// The messages of `log_entries` (required by py; 2.63 ignores it).
    pub logs: Vec<String>,
    /// Entries from `logsOffset` on, at most `limit`.
    #[serde(rename = "logEntries")]
    pub log_entries: Vec<BuildLogEntry>,
    /// Set when `status` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<BuildStatusReason>,
}
