//! The daemon's side of envd: health, `/init` and `/metrics`, spoken over
//! a connection into the sandbox's network namespace.
//!
//! One request per connection: these calls are rare (create, resume, one
//! metrics sample every few seconds), so pooling would only add state.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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

    async fn call(
        &self,
        method: http::Method,
        path: &'static str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), EnvdError> {
        let exchange = async {
            let stream = self
                .dialer
                .dial(ENVD_PORT)
                .await
                .map_err(EnvdError::Connect)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let conn = tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, "envd");
            if body.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            if let Some(token) = self.token {
                req = req.header("x-access-token", token);
            }
            let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
            let res = send.send_request(req).await?;
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await?.to_bytes();
            conn.abort();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| EnvdError::Timeout { path, timeout })?
    }

    fn expect(
        path: &'static str,
        want: u16,
        (status, body): (u16, Bytes),
    ) -> Result<Bytes, EnvdError> {
        if status == want {
            Ok(body)
        } else {
            Err(EnvdError::Status {
                path,
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            })
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
}
