//! The REST router: E2B's control-plane endpoints (`e2b-protocol.md` §2.2)
//! over [`Sandboxes`]. Handlers only translate: wire types in, owner call,
//! wire types out, [`ApiError`] for everything that fails.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{KeyStore, protect};
use super::error::ApiError;
use super::log_level;
use super::{
    ConnectRequestV2, ListOrder, ListQuery, ListedSandbox, ListedSandboxState, NewSandbox,
    NextToken, PauseRequest, RefreshRequest, ResumeRequest, Sandbox, SandboxDetail,
    SandboxLifecycle, SandboxMetric, SandboxesWithMetrics, Template, TemplateBuild,
    TemplateBuildStatus, TemplateWithBuilds, TimeoutAction, TimeoutRequest,
};
use crate::sandboxes::{self, CreateRequest, Sample, Sandboxes, actor::CONSOLE_KIND};
use crate::store::events::EventRow;
use crate::store::sandboxes::{Cursor, Order, SandboxFilter, SandboxRow};
use crate::templates;

/// `clientID` is deprecated and meaningless here, but py requires it.
const CLIENT_ID: &str = "lelantos";
/// Timeout of a `/resume` that names none (the spec's default).
const RESUME_DEFAULT_TIMEOUT_S: u64 = 15;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The sandbox owner.
    pub sandboxes: Sandboxes,
    /// Domain reported to the SDK.
    pub domain: String,
    /// Timeout of a create that names none.
    pub default_timeout_s: u64,
}

/// The whole REST surface. `/health` is open; everything else needs a key.
pub fn router(state: ApiState, keys: KeyStore) -> Router {
    let api = protect(
        Router::new()
            .route("/sandboxes", post(create_v1).get(list_v1))
            .route("/v2/sandboxes", post(create_v2).get(list_v2))
            .route("/sandboxes/metrics", get(metrics_many))
            .route("/sandboxes/{id}", get(get_one).delete(kill))
            .route("/sandboxes/{id}/timeout", post(set_timeout))
            .route("/sandboxes/{id}/refreshes", post(refresh))
            .route("/sandboxes/{id}/connect", post(connect))
            .route("/v2/sandboxes/{id}/connect", post(connect))
            .route("/sandboxes/{id}/pause", post(pause))
            .route("/sandboxes/{id}/resume", post(resume))
            .route("/sandboxes/{id}/logs", get(logs_v1))
            .route("/v2/sandboxes/{id}/logs", get(logs_v2))
            .route("/sandboxes/{id}/metrics", get(metrics_one))
            .route("/templates", get(list_templates))
            .route("/v2/templates", get(list_templates))
            .route("/templates/{id}", get(get_template).delete(delete_template)),
        keys,
    )
    .with_state(state);
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Parses a JSON body into `T`; an empty body is `{}`. Errors keep E2B's
/// shape (axum's own `Json` rejection is plain text).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn api_state(row: &SandboxRow) -> ListedSandboxState {
    match sandboxes::parse_state(&row.state).and_then(lelantos_core::SandboxState::api_state) {
        Some("paused") => ListedSandboxState::Paused,
        _ => ListedSandboxState::Running,
    }
}

impl ApiState {
    fn sandbox(&self, row: &SandboxRow) -> Sandbox {
        Sandbox {
            template_id: row.template_id.clone(),
            sandbox_id: row.sandbox_id.clone(),
            client_id: CLIENT_ID.to_owned(),
            envd_version: self.sandboxes.envd_version().to_owned(),
            alias: row.alias.clone(),
            envd_access_token: row.envd_access_token.clone(),
            traffic_access_token: None,
            domain: Some(self.domain.clone()),
        }
    }

    fn listed(&self, row: &SandboxRow) -> ListedSandbox {
        ListedSandbox {
            template_id: row.template_id.clone(),
            alias: row.alias.clone(),
            sandbox_id: row.sandbox_id.clone(),
            client_id: CLIENT_ID.to_owned(),
            started_at: ts(row.started_at_ms),
            end_at: ts(row.end_at_ms),
            cpu_count: row.cpu_count,
            memory_mb: row.memory_mb,
            disk_size_mb: row.disk_size_mb,
            metadata: Some(row.metadata.clone()),
            state: api_state(row),
            envd_version: self.sandboxes.envd_version().to_owned(),
            volume_mounts: None,
        }
    }

    fn detail(&self, row: &SandboxRow) -> SandboxDetail {
        SandboxDetail {
            listed: self.listed(row),
            envd_access_token: row.envd_access_token.clone(),
            allow_internet_access: Some(row.allow_internet_access),
            domain: Some(self.domain.clone()),
            network: None,
            lifecycle: Some(SandboxLifecycle {
                auto_resume: false,
                on_timeout: if row.auto_pause {
                    TimeoutAction::Pause
                } else {
                    TimeoutAction::Kill
                },
            }),
        }
    }

    async fn create(&self, req: NewSandbox, secure: bool) -> Result<Response, ApiError> {
        if req.template_id.trim().is_empty() {
            return Err(ApiError::bad_request("templateID is required"));
        }
        let row = self
            .sandboxes
            .create(CreateRequest {
                template: req.template_id,
                timeout_s: req.timeout.unwrap_or(self.default_timeout_s),
                secure,
                allow_internet_access: req.allow_internet_access.unwrap_or(true),
                metadata: req.metadata,
                env_vars: req.env_vars,
                auto_pause: req.auto_pause.unwrap_or(false),
                vcpus: req.cpu_count,
                memory_mib: req.memory_mb,
            })
            .await?;
        Ok((StatusCode::CREATED, Json(self.sandbox(&row))).into_response())
    }
}

async fn create_v1(State(s): State<ApiState>, bytes: Bytes) -> Result<Response, ApiError> {
    let req: NewSandbox = body(&bytes)?;
    let secure = req.secure.unwrap_or(false);
    s.create(req, secure).await
}

async fn create_v2(State(s): State<ApiState>, bytes: Bytes) -> Result<Response, ApiError> {
    // Every v2 sandbox is secured (its SDKs never send `secure`).
    s.create(body(&bytes)?, true).await
}

/// The deprecated listing: running sandboxes, optional metadata filter.
async fn list_v1(
    State(s): State<ApiState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<ListedSandbox>>, ApiError> {
    let metadata = match form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .find(|(k, v)| k == "metadata" && !v.is_empty())
    {
        Some((_, v)) => super::list_query::decode_metadata(&v)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => BTreeMap::new(),
    };
    let page = s.sandboxes.list(&SandboxFilter {
        states: sandboxes::states_shown_as("running"),
        metadata,
        order: Order::Desc,
        ..SandboxFilter::default()
    })?;
    Ok(Json(page.rows.iter().map(|r| s.listed(r)).collect()))
}

async fn list_v2(State(s): State<ApiState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let query = ListQuery::parse(q.as_deref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let states = query
        .states
        .iter()
        .flat_map(|st| {
            sandboxes::states_shown_as(match st {
                ListedSandboxState::Running => "running",
                ListedSandboxState::Paused => "paused",
            })
        })
        .collect();
    let page = s.sandboxes.list(&SandboxFilter {
        states,
        metadata: query.metadata,
        template: query.template,
        // The API's bound is inclusive, the store's strict; times are whole ms.
        started_after_ms: query.started_after.map(|t| t.as_millisecond() - 1),
        order: match query.order {
            ListOrder::Asc => Order::Asc,
            ListOrder::Desc => Order::Desc,
        },
        cursor: query.next_token.map(|t| Cursor {
            started_at_ms: t.started_at.as_millisecond(),
            sandbox_id: t.sandbox_id.to_string(),
        }),
        limit: Some(query.limit),
    })?;
    let body: Vec<ListedSandbox> = page.rows.iter().map(|r| s.listed(r)).collect();
    let mut res = Json(body).into_response();
    if let Some(next) = page.next
        && let Ok(id) = lelantos_core::SandboxId::try_from(next.sandbox_id)
    {
        let token = NextToken {
            started_at: ts(next.started_at_ms),
            sandbox_id: id,
        }
        .encode();
        if let Ok(v) = HeaderValue::from_str(&token) {
            res.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(res)
}

async fn get_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SandboxDetail>, ApiError> {
    let row = s.sandboxes.get(&id)?;
    Ok(Json(s.detail(&row)))
}

async fn kill(State(s): State<ApiState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.sandboxes.kill(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_timeout(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: TimeoutRequest = body(&bytes)?;
    s.sandboxes.set_timeout(&id, req.timeout).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn refresh(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: RefreshRequest = body(&bytes)?;
    let duration = req.duration.unwrap_or(s.default_timeout_s);
    if duration > 3600 {
        return Err(ApiError::bad_request(
            "duration must be between 0 and 3600 seconds",
        ));
    }
    s.sandboxes.refresh(&id, duration).await?;
    Ok(StatusCode::NO_CONTENT)
}

impl ApiState {
    async fn connect(&self, id: &str, timeout: Option<u64>) -> Result<Response, ApiError> {
        let done = self
            .sandboxes
            .connect(id, timeout.unwrap_or(self.default_timeout_s))
            .await?;
        let status = if done.resumed {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok((status, Json(self.sandbox(&done.row))).into_response())
    }
}

/// `POST /sandboxes/{id}/connect` and `/v2/...`: v1 always sends
/// `timeout`, v2 only when set. v2's `memory: false` (on_resume="reboot")
/// would need a cold boot from the disk; an in-RAM pause always keeps
/// memory, so both resume the same way.
async fn connect(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: ConnectRequestV2 = body(&bytes)?;
    s.connect(&id, req.timeout).await
}

async fn pause(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<StatusCode, ApiError> {
    let _req: PauseRequest = body(&bytes)?;
    s.sandboxes.pause(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: ResumeRequest = body(&bytes)?;
    let row = s
        .sandboxes
        .resume(&id, req.timeout.unwrap_or(RESUME_DEFAULT_TIMEOUT_S))
        .await?;
    Ok((StatusCode::CREATED, Json(s.sandbox(&row))).into_response())
}

#[derive(Debug, Deserialize)]
struct LogsV1Query {
    start: Option<i64>,
    limit: Option<u32>,
}

fn level_of(e: &EventRow) -> &'static str {
    if e.kind == "failed" { "error" } else { "info" }
}

fn log_entry(e: &EventRow) -> serde_json::Value {
    serde_json::json!({
        "timestamp": ts(e.ts_ms),
        "message": e.message,
        "level": level_of(e),
        "fields": {
            "source": if e.kind == CONSOLE_KIND { "console" } else { "lifecycle" },
            "event": e.kind,
            "lifecycleID": e.lifecycle_id,
        },
    })
}

async fn logs_v1(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q: LogsV1Query = serde_urlencoded_query(q.as_deref())?;
    let events = s
        .sandboxes
        .logs(&id, q.start, Some(q.limit.unwrap_or(1000).min(10_000)))?;
    let logs: Vec<_> = events
        .iter()
        .map(|e| serde_json::json!({ "timestamp": ts(e.ts_ms), "line": e.message }))
        .collect();
    let entries: Vec<_> = events.iter().map(log_entry).collect();
    Ok(Json(
        serde_json::json!({ "logs": logs, "logEntries": entries }),
    ))
}

#[derive(Debug, Deserialize)]
struct LogsV2Query {
    cursor: Option<i64>,
    limit: Option<u32>,
    direction: Option<String>,
    level: Option<String>,
    search: Option<String>,
}

async fn logs_v2(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q: LogsV2Query = serde_urlencoded_query(q.as_deref())?;
    let limit = q.limit.unwrap_or(1000);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let min_level = match q.level.as_deref() {
        None | Some("") => 0,
        Some(l) => log_level::rank(l).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid level '{l}': expected debug, info, warn or error"
            ))
        })?,
    };
    let backward = match q.direction.as_deref() {
        None | Some("" | "forward") => false,
        Some("backward") => true,
        Some(d) => {
            return Err(ApiError::bad_request(format!(
                "invalid direction '{d}': expected forward or backward"
            )));
        }
    };
    let mut events = s.sandboxes.logs(&id, None, None)?;
    events.retain(|e| {
        log_level::rank(level_of(e)).unwrap_or(0) >= min_level
            && q.search
                .as_deref()
                .is_none_or(|needle| e.message.contains(needle))
            && q.cursor
                .is_none_or(|c| if backward { e.ts_ms <= c } else { e.ts_ms >= c })
    });
    if backward {
        events.reverse();
    }
    events.truncate(limit as usize);
    Ok(Json(
        serde_json::json!({ "logs": events.iter().map(log_entry).collect::<Vec<_>>() }),
    ))
}

fn serde_urlencoded_query<T: DeserializeOwned>(q: Option<&str>) -> Result<T, ApiError> {
    let pairs: serde_json::Map<String, serde_json::Value> =
        form_urlencoded::parse(q.unwrap_or("").as_bytes())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| {
                let value = v
                    .parse::<i64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| serde_json::Value::String(v.into_owned()));
                (k.into_owned(), value)
            })
            .collect();
    serde_json::from_value(serde_json::Value::Object(pairs))
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
}

fn metric(sample: &Sample) -> SandboxMetric {
    let m = &sample.metrics;
    SandboxMetric {
        timestamp: ts(sample.ts_ms),
        timestamp_unix: sample.ts_ms / 1000,
        cpu_count: m.cpu_count,
        cpu_used_pct: m.cpu_used_pct,
        mem_used: m.mem_used,
        mem_total: m.mem_total,
        mem_cache: m.mem_cache,
        disk_used: m.disk_used,
        disk_total: m.disk_total,
    }
}

#[derive(Debug, Deserialize)]
struct MetricsQuery {
    start: Option<i64>,
    end: Option<i64>,
}

async fn metrics_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let q: MetricsQuery = serde_urlencoded_query(q.as_deref())?;
    // A paused sandbox has no actor-side sampling but still exists.
    let samples = s.sandboxes.metrics(&id).await?;
    Ok(Json(
        samples
            .iter()
            .filter(|x| {
                let secs = x.ts_ms / 1000;
                q.start.is_none_or(|st| secs >= st) && q.end.is_none_or(|e| secs <= e)
            })
            .map(metric)
            .collect(),
    ))
}

async fn metrics_many(
    State(s): State<ApiState>,
    RawQuery(q): RawQuery,
) -> Result<Json<SandboxesWithMetrics>, ApiError> {
    let ids: Vec<String> = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "sandbox_ids")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|x| x.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|x| !x.is_empty())
        .collect();
    if ids.len() > 100 {
        return Err(ApiError::bad_request("at most 100 sandbox_ids"));
    }
    let mut out = BTreeMap::new();
    for id in ids {
        // Unknown ids are simply absent from the answer.
        if let Ok(samples) = s.sandboxes.metrics(&id).await
            && let Some(last) = samples.last()
        {
            out.insert(id, metric(last));
        }
    }
    Ok(Json(SandboxesWithMetrics { sandboxes: out }))
}

fn template_dto(s: &ApiState, t: &templates::Template) -> Template {
    let at = ts(t.loaded_at_ms);
    Template {
        template_id: t.spec.name.clone(),
        build_id: t.build_id.clone(),
        cpu_count: t.spec.resources.vcpus.map_or(1, lelantos_core::Vcpus::get),
        memory_mb: t
            .spec
            .resources
            .memory_mib
            .map_or(512, lelantos_core::MemoryMib::get),
        disk_size_mb: t.image.disk_size_mb(),
        public: false,
        aliases: t.spec.aliases.clone(),
        names: t.spec.names().map(str::to_owned).collect(),
        created_at: at,
        updated_at: at,
        created_by: None,
        last_spawned_at: None,
        spawn_count: 0,
        build_count: 1,
        envd_version: s.sandboxes.envd_version().to_owned(),
        build_status: TemplateBuildStatus::Ready,
    }
}

async fn list_templates(State(s): State<ApiState>) -> Json<Vec<Template>> {
    Json(
        s.sandboxes
            .catalog()
            .iter()
            .map(|t| template_dto(&s, t))
            .collect(),
    )
}

async fn get_template(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<TemplateWithBuilds>, ApiError> {
    let catalog = s.sandboxes.catalog();
    let t = catalog
        .resolve(&id)
        .ok_or_else(|| ApiError::not_found(format!("template '{id}' not found")))?;
    let dto = template_dto(&s, t);
    Ok(Json(TemplateWithBuilds {
        template_id: dto.template_id,
        public: dto.public,
        aliases: dto.aliases,
        names: dto.names,
        created_at: dto.created_at,
        updated_at: dto.updated_at,
        last_spawned_at: None,
        spawn_count: 0,
        builds: vec![TemplateBuild {
            build_id: dto.build_id,
            status: TemplateBuildStatus::Ready,
            created_at: dto.created_at,
            updated_at: dto.updated_at,
            cpu_count: dto.cpu_count,
            memory_mb: dto.memory_mb,
            finished_at: Some(dto.created_at),
            disk_size_mb: Some(dto.disk_size_mb),
            envd_version: Some(dto.envd_version),
        }],
    }))
}

async fn delete_template(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let catalog = s.sandboxes.catalog();
    let t = catalog
        .resolve(&id)
        .ok_or_else(|| ApiError::not_found(format!("template '{id}' not found")))?;
    // Built through the API: ours to delete (running sandboxes keep going).
    if t.file == std::path::Path::new(crate::api::template_build::API_TEMPLATE_FILE) {
        s.sandboxes.withdraw_template(&t.spec.name);
        return Ok(StatusCode::NO_CONTENT);
    }
    // Definitions are files (the GitOps source of truth); deleting one behind
    // the repository's back would be undone at the next reconcile.
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "template '{}' is defined in {}; remove it there to delete it",
            t.spec.name,
            t.file
                .file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
        ),
    ))
}
