//! E2B's template build API (`Template.build` in the stock SDKs,
//! `e2b-protocol.md` §2.5), mapped onto the shared [`crate::builder`].
//!
//! ```text
//!  SDK                                   this module
//!  GET  /templates/aliases/{alias}  ───▶ catalog or a known build → 200 / 404
//!  POST /v3/templates               ───▶ BuildRegistry: new build, `waiting`      → 202
//!  GET  /templates/{id}/files/{h}   ───▶ present? + one-time upload URL            → 201
//!  PUT  /uploads/{h}?token=…        ───▶ <data_dir>/template-files/<h>.tar.gz      → 200 (no API key)
//!  POST /v2/templates/{id}/builds/{b} ─▶ spawn job: base → steps → builder → publish → 202
//!  GET  /templates/{id}/builds/{b}/status?logsOffset=&limit= ─▶ status + log slice → 200
//! ```
//!
//! What the two pinned py SDKs send (read from their sources; both pass
//! the SDK suite in `tests/appliance/test_template_build.py`):
//! - Both: `/v3/templates` with `name` (`alias` is the spec's deprecated
//!   spelling, accepted too), `/v2/templates/{id}/builds/{b}`, status polls
//!   with `logsOffset` and no `limit` (2.63 relies on a page of at most 100
//!   and drains the rest after a terminal status). Neither calls the tag
//!   endpoints or the older `/v2/templates` during a build.
//! - 2.45.1 always sends `cpuCount: 2, memoryMB: 1024`; 2.63.0 sends them
//!   only when set and may add `minFreeDiskMb` (ignored here).
//! - 2.63.0 applies optional `headers` from the files answer to its `PUT`
//!   (none are needed here).
//! - `reason.step` must be `base`, `finalize` or a number: 2.45.1 calls
//!   `int()` on anything else. Numbers are 1-based instruction positions
//!   (py maps them to the stack trace of the call that added the step).
//! - `Template()` without a base means E2B's `e2bdev/base` image, which is
//!   served by the builtin `base` template.
//!
//! Build status and logs live in memory ([`registry`]); templates a build
//! publishes go into the running catalog only. Both are gone after a daemon
//! restart. Uploads stay on disk (the SDK's cache).

pub mod files;
pub mod job;
pub mod plan;
pub mod registry;
#[cfg(test)]
mod tests;
pub mod wire;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use lelantos_core::{MemoryMib, Vcpus};

use super::auth::{KeyStore, protect};
use super::error::ApiError;
use super::log_level;
use files::FilesError;
use plan::{PlanError, TemplateName};
use registry::BuildRecord;
pub use registry::BuildRegistry;
use wire::{
    BuildLogEntry, BuildStatus, TemplateAliasResponse, TemplateBuildFileUpload, TemplateBuildInfo,
    TemplateBuildRequestV3, TemplateBuildStartV2, TemplateRequestResponseV3,
};

pub use crate::templates::API_TEMPLATE_FILE;
/// The tag a build gets when the request names none (E2B's default).
const DEFAULT_TAG: &str = "default";
/// Status polls return at most this many log entries (py 2.63 asks for 100).
const MAX_LOG_PAGE: usize = 100;

/// What the template build handlers share.
#[derive(Clone)]
pub struct TemplateBuildState {
    /// The sandbox owner (its catalog is where builds are published).
    pub sandboxes: crate::sandboxes::Sandboxes,
    /// The shared template builder.
    pub builder: Arc<crate::builder::Builder>,
    /// The static envd that OCI bases get as PID 1.
    pub envd_path: PathBuf,
    /// Cache root for pulled OCI disks.
    pub cache_dir: PathBuf,
    /// Daemon data dir: uploads and per-build contexts go under it.
    pub data_dir: PathBuf,
    /// Base URL for upload URLs when a request carries no usable `Host`.
    pub public_url: String,
    /// API keys (the upload route is the only one without).
    pub keys: KeyStore,
    /// Builds of this process.
    pub builds: BuildRegistry,
}

/// Why a template build request failed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateBuildError {
    /// The body is not the expected JSON.
    #[error("invalid request body: {0}")]
    Body(String),
    /// The request names no template.
    #[error("name is required")]
    NoName,
    /// A name, tag, resource or instruction is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A resource is out of range.
    #[error("{0}")]
    Resources(#[from] lelantos_core::resources::RangeError),
    /// Both `fromImage` and `fromTemplate`.
    #[error("give fromImage or fromTemplate, not both")]
    TwoBases,
    /// The upload hash is not hex.
    #[error("invalid files hash `{0}`")]
    Hash(String),
    /// No such template.
    #[error("template `{0}` not found")]
    TemplateNotFound(String),
    /// No such build of that template.
    #[error("build `{build}` of template `{template}` not found")]
    BuildNotFound {
        /// Template id.
        template: String,
        /// Build id.
        build: String,
    },
    /// The build was already started.
    #[error("build `{0}` was already started")]
    AlreadyStarted(String),
    /// The name belongs to a template this API does not own.
    #[error("template name `{0}` is taken by a template from the templates directory")]
    NameTaken(String),
    /// The upload token is unknown, used or expired.
    #[error("invalid or expired upload token")]
    Token,
    /// Storing an upload failed.
    #[error("upload")]
    Upload(#[source] FilesError),
    /// A query parameter is malformed.
    #[error("invalid query: {0}")]
    Query(String),
}

impl From<TemplateBuildError> for ApiError {
    fn from(e: TemplateBuildError) -> Self {
        use TemplateBuildError as E;
        let status = match &e {
            E::Body(_)
            | E::NoName
            | E::Plan(_)
            | E::Resources(_)
            | E::TwoBases
            | E::Hash(_)
            | E::Query(_) => StatusCode::BAD_REQUEST,
            E::TemplateNotFound(_) | E::BuildNotFound { .. } => StatusCode::NOT_FOUND,
            E::AlreadyStarted(_) | E::NameTaken(_) => StatusCode::CONFLICT,
            E::Token => StatusCode::FORBIDDEN,
            E::Upload(FilesError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            E::Upload(FilesError::Body(_)) => StatusCode::BAD_REQUEST,
            E::Upload(
                FilesError::Store { .. } | FilesError::Missing(_) | FilesError::Unpack { .. },
            ) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %job::chain(&e), "template build request failed");
            return ApiError::new(status, "could not store the upload");
        }
        ApiError::new(status, job::chain(&e))
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// The template build routes, for merging into the main router: all behind
/// `X-API-Key` except the upload `PUT`, which the SDK sends without any E2B
/// header (its one-time token is in the URL). No fallback is set, so the
/// main router's applies.
pub fn routes(state: TemplateBuildState) -> Router {
    let authed = protect(
        Router::new()
            .route("/templates/aliases/{alias}", get(alias_exists))
            .route("/v3/templates", post(request_build))
            // The older create endpoints take the same fields (`alias` for `name`).
            .route("/templates", post(request_build))
            .route("/v2/templates", post(request_build))
            .route("/templates/{id}/files/{hash}", get(file_upload_link))
            .route("/v2/templates/{id}/builds/{build_id}", post(start_build))
            .route(
                "/templates/{id}/builds/{build_id}/status",
                get(build_status),
            ),
        state.keys.clone(),
    );
    let open = Router::new()
        .route("/uploads/{hash}", put(upload))
        // The body is streamed to disk with its own bound (files::store).
        .layer(DefaultBodyLimit::disable());
    authed.merge(open).with_state(state)
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text).map_err(|e| TemplateBuildError::Body(e.to_string()).into())
}

impl TemplateBuildState {
    /// Whether `id` names a template: in the catalog, or being built here.
    fn template_known(&self, id: &str) -> bool {
        self.sandboxes.catalog().resolve(id).is_some() || self.builds.knows_template(id)
    }

    fn build_of(&self, template: &str, build: &str) -> Result<BuildRecord> {
        let template = template.split(':').next().unwrap_or(template);
        self.builds
            .get(build)
            .filter(|b| b.template_id.eq_ignore_ascii_case(template))
            .ok_or_else(|| {
                TemplateBuildError::BuildNotFound {
                    template: template.to_owned(),
                    build: build.to_owned(),
                }
                .into()
            })
    }
}

/// `GET /templates/aliases/{alias}`: 200 when a template answers to it.
async fn alias_exists(
    State(s): State<TemplateBuildState>,
    Path(alias): Path<String>,
) -> Result<Json<TemplateAliasResponse>> {
    let not_found = || TemplateBuildError::TemplateNotFound(alias.clone());
    // A name that cannot be valid cannot exist: 404, not 400, as `exists()`
    // then simply says false.
    let name = TemplateName::parse(&alias).map_err(|_| not_found())?;
    if let Some(t) = s.sandboxes.catalog().resolve(&name.id) {
        return Ok(Json(TemplateAliasResponse {
            template_id: t.spec.name.clone(),
            public: false,
        }));
    }
    if s.builds.knows_template(&name.id) {
        return Ok(Json(TemplateAliasResponse {
            template_id: name.id,
            public: false,
        }));
    }
    Err(not_found().into())
}

fn new_build_id() -> String {
    use rand::Rng as _;
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    // UUID layout, as E2B's build ids look.
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `POST /v3/templates`: registers a build (`waiting`) → 202.
async fn request_build(State(s): State<TemplateBuildState>, bytes: Bytes) -> Result<Response> {
    let req: TemplateBuildRequestV3 = body(&bytes)?;
    let raw = req
        .name
        .as_deref()
        .or(req.alias.as_deref())
        .filter(|n| !n.trim().is_empty())
        .ok_or(TemplateBuildError::NoName)?;
    let name = TemplateName::parse(raw).map_err(TemplateBuildError::from)?;
    let mut tags: Vec<String> = name.tag.iter().cloned().collect();
    for t in req.tags.iter().flatten() {
        if !plan::is_valid_tag(t) {
            return Err(TemplateBuildError::Plan(PlanError::Tag(t.clone())).into());
        }
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    if tags.is_empty() {
        tags.push(DEFAULT_TAG.to_owned());
    }
    if let Some(t) = s.sandboxes.catalog().resolve(&name.id)
        && (t.file != FsPath::new(API_TEMPLATE_FILE) || t.spec.name != name.id)
    {
        return Err(TemplateBuildError::NameTaken(name.id).into());
    }
    let vcpus = req
        .cpu_count
        .map(Vcpus::try_from)
        .transpose()
        .map_err(TemplateBuildError::from)?;
    let memory = req
        .memory_mb
        .map(MemoryMib::try_from)
        .transpose()
        .map_err(TemplateBuildError::from)?;
    let build_id = new_build_id();
    s.builds.insert(
        &build_id,
        BuildRecord {
            template_id: name.id.clone(),
            tags: tags.clone(),
            cpu_count: vcpus.map(Vcpus::get),
            memory_mb: memory.map(MemoryMib::get),
            status: BuildStatus::Waiting,
            log: Vec::new(),
            reason: None,
        },
    );
    tracing::info!(template = %name.id, build = %build_id, "template build requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(TemplateRequestResponseV3 {
            template_id: name.id.clone(),
            build_id,
            public: false,
            names: vec![name.id.clone()],
            tags,
            aliases: vec![name.id],
        }),
    )
        .into_response())
}

/// `GET /templates/{id}/files/{hash}` → 201: whether the files are here,
/// and a one-time URL to `PUT` them to (always given: the SDK uploads
/// anyway when the step forces it).
async fn file_upload_link(
    State(s): State<TemplateBuildState>,
    Path((id, hash)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    if !plan::is_valid_files_hash(&hash) {
        return Err(TemplateBuildError::Hash(hash).into());
    }
    let hash = hash.to_ascii_lowercase();
    let template = id.split(':').next().unwrap_or(&id).to_ascii_lowercase();
    if !s.template_known(&template) {
        return Err(TemplateBuildError::TemplateNotFound(id).into());
    }
    let present = files::archive(&s.data_dir, &hash).is_file();
    let token = s.builds.issue_token(&hash, crate::store::now_ms());
    // The client reached us at its Host: hand the upload URL out there (a
    // daemon bound to 0.0.0.0 has no single right address of its own).
    let base = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .map_or_else(
            || s.public_url.trim_end_matches('/').to_owned(),
            |h| format!("http://{h}"),
        );
    let url = format!("{base}/uploads/{hash}?token={token}");
    Ok((
        StatusCode::CREATED,
        Json(TemplateBuildFileUpload {
            present,
            url: Some(url),
        }),
    )
        .into_response())
}

fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// `PUT /uploads/{hash}?token=…`: stores the archive (no API key; the
/// token is the authorization and is used up by this request).
async fn upload(
    State(s): State<TemplateBuildState>,
    Path(hash): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    if !plan::is_valid_files_hash(&hash) {
        return Err(TemplateBuildError::Hash(hash).into());
    }
    let hash = hash.to_ascii_lowercase();
    let token = query_param(q.as_deref(), "token").ok_or(TemplateBuildError::Token)?;
    if !s.builds.take_token(&token, &hash, crate::store::now_ms()) {
        return Err(TemplateBuildError::Token.into());
    }
    let length = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let n = files::store(&s.data_dir, &hash, body, length)
        .await
        .map_err(TemplateBuildError::Upload)?;
    tracing::info!(hash = %hash, bytes = n, "template files uploaded");
    Ok(StatusCode::OK)
}

/// `POST /v2/templates/{id}/builds/{build_id}`: checks the request, starts
/// the job → 202.
async fn start_build(
    State(s): State<TemplateBuildState>,
    Path((id, build_id)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<StatusCode> {
    let req: TemplateBuildStartV2 = body(&bytes)?;
    let record = s.build_of(&id, &build_id)?;
    let nonempty = |v: &Option<String>| v.as_deref().is_some_and(|x| !x.trim().is_empty());
    if nonempty(&req.from_image) && nonempty(&req.from_template) {
        return Err(TemplateBuildError::TwoBases.into());
    }
    // Refuse malformed instructions now (400), before anything runs. The
    // real plan is made once the base's user and workdir are known; a
    // stand-in workdir keeps relative paths from failing here.
    plan::plan(&req.steps, None, Some("/")).map_err(TemplateBuildError::from)?;
    s.builds.start(&build_id).map_err(|status| match status {
        Some(_) => TemplateBuildError::AlreadyStarted(build_id.clone()),
        None => TemplateBuildError::BuildNotFound {
            template: id.clone(),
            build: build_id.clone(),
        },
    })?;
    job::spawn(
        s.clone(),
        job::Job {
            build_id,
            template_id: record.template_id,
            vcpus: record.cpu_count.and_then(|c| Vcpus::try_from(c).ok()),
            memory: record.memory_mb.and_then(|m| MemoryMib::try_from(m).ok()),
            start: req,
        },
    );
    Ok(StatusCode::ACCEPTED)
}

/// `GET /templates/{id}/builds/{build_id}/status?logsOffset=&limit=&level=`:
/// the status, and log entries from `logsOffset` (the SDK adds what it got
/// to its offset), at most `limit` (≤ 100).
async fn build_status(
    State(s): State<TemplateBuildState>,
    Path((id, build_id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Json<TemplateBuildInfo>> {
    let number = |key: &str| -> Result<Option<usize>> {
        query_param(q.as_deref(), key)
            .map(|v| {
                v.parse::<usize>().map_err(|_| {
                    TemplateBuildError::Query(format!("{key} must be a non-negative integer"))
                        .into()
                })
            })
            .transpose()
    };
    let offset = number("logsOffset")?.unwrap_or(0);
    let limit = number("limit")?
        .unwrap_or(MAX_LOG_PAGE)
        .clamp(1, MAX_LOG_PAGE);
    let min_level = match query_param(q.as_deref(), "level") {
        None => 0,
        Some(l) => log_level::rank(&l).ok_or_else(|| {
            TemplateBuildError::Query(format!(
                "invalid level `{l}`: expected debug, info, warn or error"
            ))
        })?,
    };
    let record = s.build_of(&id, &build_id)?;
    let entries: Vec<BuildLogEntry> = record
        .log
        .into_iter()
        .filter(|e| log_level::rank(&e.level).unwrap_or(1) >= min_level)
        .skip(offset)
        .take(limit)
        .collect();
    Ok(Json(TemplateBuildInfo {
        template_id: record.template_id,
        build_id,
        status: record.status,
        logs: entries.iter().map(|e| e.message.clone()).collect(),
        log_entries: entries,
        reason: record.reason,
    }))
}
