//! The daemon's side of envd: health, `/init` and `/metrics`, plus the
//! process (`Start` over the Connect protocol) and file-upload calls the
//! template builder drives a build VM with, spoken over a connection into
//! the sandbox's network namespace.
//!
//! One request per connection: these calls are rare (create, resume, one
//! metrics sample every few seconds, one build step), so pooling would only
//! add state.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

use crate::proxy::Dialer;
use crate::proxy::route::ENVD_PORT;

/// Why an envd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// No TCP connection to envd.
    #[error("connect to envd: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP to envd: {0}")]
    Http(#[from] hyper::Error),
    /// envd answered with an unexpected status.
    #[error("envd answered {status} to {path}: {body}")]
    Status {
        /// The path asked.
        path: &'static str,
        /// The status.
        status: u16,
        /// The body, for the reason.
        body: String,
    },
    /// envd's answer did not parse.
    #[error("envd answer to {path} did not parse: {source}")]
    Decode {
        /// The path asked.
        path: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// No answer in time.
    #[error("envd did not answer {path} within {0:?}", .timeout)]
    Timeout {
        /// The path asked.
        path: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// Building the request failed (a bug, not input).
    #[error("build request: {0}")]
    Request(#[from] http::Error),
    /// A Connect RPC ended with an error (end-of-stream envelope).
    #[error("envd {path} failed: {code}: {message}")]
    Rpc {
        /// The RPC path.
        path: &'static str,
        /// Connect error code (`invalid_argument`, `unauthenticated`, …).
        code: String,
        /// envd's message.
        message: String,
    },
    /// The Connect stream broke its framing or event order.
    #[error("envd {path} stream: {reason}")]
    Protocol {
        /// The RPC path.
        path: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// What the daemon configures in envd at create and resume.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest<'a> {
    /// Sandbox-wide environment variables.
    pub env_vars: &'a BTreeMap<String, String>,
    /// Token envd requires from clients (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<&'a str>,
    /// The host's clock (RFC 3339): a resumed guest's clock is behind.
    pub timestamp: String,
    /// Default user for requests that name none (the template's `user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_user: Option<&'a str>,
    /// Default working directory (the template's `workdir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<&'a str>,
}

/// One `/metrics` answer (envd's field names).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct EnvdMetrics {
    /// Unix seconds in the guest.
    pub ts: i64,
    /// Online CPUs.
    pub cpu_count: u32,
    /// Busy share of all CPUs, 0–100.
    pub cpu_used_pct: f64,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Used memory, bytes.
    pub mem_used: u64,
    /// Page cache, bytes.
    #[serde(default)]
    pub mem_cache: u64,
    /// Used bytes on `/`.
    pub disk_used: u64,
    /// Size of `/`, bytes.
    pub disk_total: u64,
}

/// A client for one sandbox's envd.
pub struct Envd<'a> {
    dialer: &'a dyn Dialer,
    token: Option<&'a str>,
}

impl<'a> Envd<'a> {
    /// Talks to envd through `dialer`, presenting the sandbox's access
    /// token (if it has one) as the SDK does.
    pub fn new(dialer: &'a dyn Dialer, token: Option<&'a str>) -> Self {
        Self { dialer, token }
    }

    /// Sends one request on a fresh connection; returns the response (body
    /// not yet read) and the connection task, which the caller aborts once
    /// it has read what it wants.
    async fn send(
        &self,
        req: http::request::Builder,
        body: Bytes,
    ) -> Result<(http::Response<Incoming>, tokio::task::JoinHandle<()>), EnvdError> {
        let stream = self
            .dialer
            .dial(ENVD_PORT)
            .await
            .map_err(EnvdError::Connect)?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(async move {
            // The connection ends with the exchange or when aborted; its
            // error, if any, surfaces through the request instead.
            let _ = conn.await;
        });
        let mut req = req.header(http::header::HOST, "envd");
        if let Some(token) = self.token {
            req = req.header("x-access-token", token);
        }
        let res = send.send_request(req.body(Full::new(body))?).await;
        match res {
            Ok(res) => Ok((res, conn)),
            Err(e) => {
                conn.abort();
                Err(e.into())
            }
        }
    }

    /// A JSON (or bodiless) request to `path`, answered in full.
    async fn call(
        &self,
        method: http::Method,
        path: &'static str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), EnvdError> {
        let mut req = http::Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        self.exchange(req, path, Bytes::from(body.unwrap_or_default()), timeout)
            .await
    }

    /// Sends `req` with `body` and reads the whole answer, all within
    /// `timeout`; `path` names the endpoint in errors.
    async fn exchange(
        &self,
        req: http::request::Builder,
        path: &'static str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, Bytes), EnvdError> {
        within(path, timeout, async {
            let (res, conn) = self.send(req, body).await?;
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await;
            conn.abort();
            Ok((status, bytes?.to_bytes()))
        })
        .await
    }

    fn expect(
        path: &'static str,
        want: u16,
        (status, body): (u16, Bytes),
    ) -> Result<Bytes, EnvdError> {
        if status == want {
            Ok(body)
        } else {
            Err(status_error(path, status, &body))
        }
    }

    /// One `GET /health`; Ok when envd answers 204.
    pub async fn health(&self, timeout: Duration) -> Result<(), EnvdError> {
        let answer = self
            .call(http::Method::GET, "/health", None, timeout)
            .await?;
        Self::expect("/health", 204, answer).map(drop)
    }

    /// Polls `/health` until it answers 204 or `within` has passed.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), EnvdError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let attempt = self.health(Duration::from_secs(2)).await;
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                // The guest is still booting: its port is closed or unreachable.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `POST /init`.
    pub async fn init(&self, req: &InitRequest<'_>) -> Result<(), EnvdError> {
        let body = serde_json::to_vec(req).map_err(|source| EnvdError::Decode {
            path: "/init",
            source,
        })?;
        let answer = self
            .call(
                http::Method::POST,
                "/init",
                Some(body),
                Duration::from_secs(10),
            )
            .await?;
        Self::expect("/init", 204, answer).map(drop)
    }

    /// `GET /metrics`.
    pub async fn metrics(&self) -> Result<EnvdMetrics, EnvdError> {
        let answer = self
            .call(http::Method::GET, "/metrics", None, Duration::from_secs(5))
            .await?;
        let body = Self::expect("/metrics", 200, answer)?;
        serde_json::from_slice(&body).map_err(|source| EnvdError::Decode {
            path: "/metrics",
            source,
        })
    }

    /// Opens a `Start` stream for `/bin/sh -c cmd` as `user` (envd's
    /// default user when `None`) in `cwd` with `envs`; `deadline` becomes
    /// `Connect-Timeout-Ms` (envd kills the process when it passes; none ⇒
    /// unbounded).
    async fn start_stream(
        &self,
        process: &ProcessSpec<'_>,
        deadline: Option<Duration>,
    ) -> Result<(Envelopes, tokio::task::JoinHandle<()>), EnvdError> {
        let mut config = serde_json::json!({
            "cmd": "/bin/sh",
            "args": ["-c", process.cmd],
            "envs": process.envs,
        });
        if let Some(cwd) = process.cwd {
            config["cwd"] = serde_json::Value::from(cwd);
        }
        let message = serde_json::json!({ "process": config, "stdin": false }).to_string();
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri(START)
            .header(http::header::CONTENT_TYPE, "application/connect+json")
            .header("connect-protocol-version", "1");
        if let Some(user) = process.user {
            req = req.header(http::header::AUTHORIZATION, basic_auth(user));
        }
        if let Some(d) = deadline {
            req = req.header("connect-timeout-ms", d.as_millis().max(1).to_string());
        }
        let (res, conn) = self.send(req, envelope(0, message.as_bytes())?).await?;
        let status = res.status().as_u16();
        if status != 200 {
            let body = res.into_body().collect().await;
            conn.abort();
            let body = body.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(status_error(START, status, &body));
        }
        Ok((
            Envelopes {
                body: res.into_body(),
                buf: Vec::new(),
            },
            conn,
        ))
    }

    /// Runs `/bin/sh -c cmd` to completion through envd's `Start` RPC and
    /// returns its exit code (-1 when a signal ended it). Output chunks go
    /// to `on_output` as they arrive, with the stream name (`stdout`,
    /// `stderr`). envd kills the process when `timeout` passes.
    pub async fn run(
        &self,
        cmd: &str,
        user: Option<&str>,
        cwd: Option<&str>,
        envs: &BTreeMap<String, String>,
        timeout: Duration,
        on_output: &(dyn Fn(&str, &[u8]) + Send + Sync),
    ) -> Result<i32, EnvdError> {
        let process = ProcessSpec {
            cmd,
            user,
            cwd,
            envs,
        };
        let exchange = async {
            let (mut events, conn) = self.start_stream(&process, Some(timeout)).await?;
            let result = async {
                let mut code = None;
                while let Some((flags, payload)) = events.next().await? {
                    if flags & END_STREAM != 0 {
                        end_of_stream(&payload)?;
                        break;
                    }
                    let event = parse_event(&payload)?;
                    if let Some(data) = event.get("data") {
                        for stream in ["stdout", "stderr", "pty"] {
                            if let Some(text) = data.get(stream).and_then(|v| v.as_str()) {
                                let bytes =
                                    BASE64.decode(text).map_err(|e| EnvdError::Protocol {
                                        path: START,
                                        reason: format!("{stream} is not base64: {e}"),
                                    })?;
                                on_output(stream, &bytes);
                            }
                        }
                    }
                    if let Some(end) = event.get("end") {
                        code = Some(exit_code(end));
                    }
                }
                code.ok_or_else(|| EnvdError::Protocol {
                    path: START,
                    reason: "the stream ended without an end event".to_owned(),
                })
            }
            .await;
            conn.abort();
            result
        };
        // envd enforces the deadline itself; the margin lets its end event
        // (and the reason) arrive before we give up on the connection.
        within(START, timeout + Duration::from_secs(10), exchange).await
    }

    /// Starts `/bin/sh -c cmd` through envd's `Start` RPC without a
    /// deadline and returns its pid once envd reports the start; the stream
    /// is then dropped and envd keeps the process running.
    pub async fn start_background(
        &self,
        cmd: &str,
        user: Option<&str>,
        cwd: Option<&str>,
        envs: &BTreeMap<String, String>,
    ) -> Result<u32, EnvdError> {
        let process = ProcessSpec {
            cmd,
            user,
            cwd,
            envs,
        };
        let exchange = async {
            let (mut events, conn) = self.start_stream(&process, None).await?;
            let first = events.next().await;
            conn.abort();
            match first? {
                Some((flags, payload)) if flags & END_STREAM != 0 => {
                    end_of_stream(&payload)?;
                    Err(EnvdError::Protocol {
                        path: START,
                        reason: "the stream ended before the start event".to_owned(),
                    })
                }
                Some((_, payload)) => parse_event(&payload)?
                    .get("start")
                    .and_then(|s| s.get("pid"))
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| EnvdError::Protocol {
                        path: START,
                        reason: "the first event is not a start event with a pid".to_owned(),
                    }),
                None => Err(EnvdError::Protocol {
                    path: START,
                    reason: "empty stream".to_owned(),
                }),
            }
        };
        within(START, Duration::from_secs(60), exchange).await
    }

    /// Writes `bytes` to `path` in the guest (`POST /files`, one raw
    /// file), owned by `user` (envd's default user when `None`); missing
    /// parent directories are created.
    pub async fn upload(
        &self,
        path: &str,
        user: Option<&str>,
        bytes: Bytes,
    ) -> Result<(), EnvdError> {
        const FILES: &str = "/files";
        // Built in a block: the serializer is not Send and must not live
        // across an await.
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("path", path);
            if let Some(user) = user {
                query.append_pair("username", user);
            }
            query.finish()
        };
        let uri = format!("{FILES}?{query}");
        // Roughly 1 MiB/s at worst through a TCG guest, plus a floor.
        let timeout = Duration::from_secs(60 + (bytes.len() as u64 >> 20));
        let req = http::Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/octet-stream");
        let (status, body) = self.exchange(req, FILES, bytes, timeout).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(status_error(FILES, status, &body))
        }
    }
}

/// Runs `exchange` with envd against `limit`; `path` names the endpoint.
async fn within<T>(
    path: &'static str,
    limit: Duration,
    exchange: impl Future<Output = Result<T, EnvdError>>,
) -> Result<T, EnvdError> {
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| EnvdError::Timeout {
            path,
            timeout: limit,
        })?
}

/// envd answered `status` to `path`; the start of its body says why.
fn status_error(path: &'static str, status: u16, body: &[u8]) -> EnvdError {
    EnvdError::Status {
        path,
        status,
        body: String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

/// The process RPC path.
const START: &str = "/process.Process/Start";
/// Envelope flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;

/// What to start.
struct ProcessSpec<'a> {
    cmd: &'a str,
    user: Option<&'a str>,
    cwd: Option<&'a str>,
    envs: &'a BTreeMap<String, String>,
}

/// envd picks the process's user from HTTP Basic auth with an empty password.
fn basic_auth(user: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{user}:")))
}

/// One Connect envelope: flags, big-endian length, payload.
fn envelope(flags: u8, payload: &[u8]) -> Result<Bytes, EnvdError> {
    let len = u32::try_from(payload.len()).map_err(|_| EnvdError::Protocol {
        path: START,
        reason: "request message too large".to_owned(),
    })?;
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(Bytes::from(out))
}

/// The `event` of one `StartResponse` message.
fn parse_event(payload: &[u8]) -> Result<serde_json::Value, EnvdError> {
    let mut message: serde_json::Value =
        serde_json::from_slice(payload).map_err(|source| EnvdError::Decode {
            path: START,
            source,
        })?;
    Ok(message
        .get_mut("event")
        .map(serde_json::Value::take)
        .unwrap_or_default())
}

/// `exitCode` of an end event: omitted at 0 (proto3 JSON), a number or,
/// defensively, a string.
fn exit_code(end: &serde_json::Value) -> i32 {
    match end.get("exitCode").or_else(|| end.get("exit_code")) {
        Some(serde_json::Value::Number(n)) => {
            n.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(-1)
        }
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(-1),
        _ => 0,
    }
}

/// Checks the end-of-stream envelope: `{}` is success, `{"error":…}` not.
fn end_of_stream(payload: &[u8]) -> Result<(), EnvdError> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|source| EnvdError::Decode {
            path: START,
            source,
        })?;
    match v.get("error") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(e) => Err(EnvdError::Rpc {
            path: START,
            code: e["code"].as_str().unwrap_or("unknown").to_owned(),
            message: e["message"].as_str().unwrap_or_default().to_owned(),
        }),
    }
}

/// Connect envelopes read off a streaming response body.
struct Envelopes {
    body: Incoming,
    buf: Vec<u8>,
}

impl Envelopes {
    /// The next envelope as (flags, payload), or `None` at the end of the body.
    async fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, EnvdError> {
        loop {
            if let Some(header) = self.buf.get(..5) {
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                let len = usize::try_from(len).map_err(|_| EnvdError::Protocol {
                    path: START,
                    reason: "envelope too large".to_owned(),
                })?;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    let payload = self.buf[5..5 + len].to_vec();
                    self.buf.drain(..5 + len);
                    return Ok(Some((flags, payload)));
                }
            }
            match self.body.frame().await {
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(EnvdError::Protocol {
                        path: START,
                        reason: "the body ended inside an envelope".to_owned(),
                    });
                }
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_exit_codes_and_end_of_stream() {
        let e = envelope(0, b"{}").unwrap();
        assert_eq!(&e[..], b"\x00\x00\x00\x00\x02{}");
        assert_eq!(basic_auth("root"), "Basic cm9vdDo=");
        assert_eq!(exit_code(&serde_json::json!({"exited": true})), 0);
        assert_eq!(exit_code(&serde_json::json!({"exitCode": 3})), 3);
        assert_eq!(exit_code(&serde_json::json!({"exitCode": "-1"})), -1);
        assert!(end_of_stream(b"{}").is_ok());
        let err = end_of_stream(br#"{"error":{"code":"invalid_argument","message":"bad cwd"}}"#)
            .unwrap_err();
        assert!(
            matches!(&err, EnvdError::Rpc { code, message, .. } if code == "invalid_argument" && message == "bad cwd"),
            "{err}"
        );
        let event = parse_event(br#"{"event":{"start":{"pid":7}}}"#).unwrap();
        assert_eq!(event["start"]["pid"], 7);
    }
}
