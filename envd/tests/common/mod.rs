//! Shared helpers for envd's integration tests: an envd served in-process on
//! a real loopback socket, and a minimal Connect-JSON client (unary and
//! server-streaming) built on reqwest, so tests see exactly the bytes an SDK
//! would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed assertion
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use envd::config::EnvdConfig;
use envd::sandbox::Sandbox;
use serde_json::Value;

/// A running envd plus a client for it.
pub struct TestEnvd {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The settings handle (preset tokens, env, default user).
    pub sandbox: Sandbox,
    /// Scratch directory for the test.
    pub dir: tempfile::TempDir,
    /// HTTP client.
    pub http: reqwest::Client,
}

/// Name of the user tests run as: the current user, so no root is needed.
pub fn current_user() -> String {
    let uid = nix::unistd::getuid().as_raw();
    envd::users::Accounts::load()
        .map(|a| a.user_name(uid))
        .unwrap_or_else(|_| "root".into())
}

impl TestEnvd {
    /// Starts envd on an ephemeral port; its default user is the current user.
    pub async fn start() -> Self {
        let config = EnvdConfig::parse_from(["envd", "--default-user", &current_user()]);
        let sandbox = Sandbox::new(&config.default_user);
        let app = envd::server::app_with(Arc::new(config), sandbox.clone(), false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(envd::server::serve(listener, app, std::future::pending()));
        Self {
            base: format!("http://{addr}"),
            sandbox,
            dir: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
        }
    }

    /// Path inside the scratch directory, as a string.
    pub fn path(&self, rel: &str) -> String {
        self.dir.path().join(rel).display().to_string()
    }

    /// Status of `GET /health` (204 while envd serves).
    pub async fn health(&self) -> u16 {
        let res = self
            .http
            .get(format!("{}/health", self.base))
            .send()
            .await
            .unwrap();
        res.status().as_u16()
    }

    /// Unary Connect call with a JSON body. Returns (HTTP status, JSON body).
    pub async fn unary(&self, method: &str, body: Value) -> (u16, Value) {
        self.unary_with(method, body, &[]).await
    }

    /// Unary call with extra headers.
    pub async fn unary_with(
        &self,
        method: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/json")
            .header("connect-protocol-version", "1")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// Opens a server-streaming call; read messages with [`Stream::next`].
    pub async fn stream(&self, method: &str, body: Value, headers: &[(&str, &str)]) -> Stream {
        let mut req = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .body(envelope(0, body.to_string().as_bytes()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "streaming calls answer 200");
        Stream {
            res,
            buf: Vec::new(),
            ended: false,
        }
    }
}

/// Frames `payload` as one Connect envelope.
pub fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flags);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One decoded frame of a Connect stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A message envelope.
    Msg(Value),
    /// The end-of-stream envelope (`{}` or `{"error":…}`).
    End(Value),
}

/// A server stream being read.
pub struct Stream {
    res: reqwest::Response,
    buf: Vec<u8>,
    ended: bool,
}

impl Stream {
    /// Next frame, or None when the body ended. Panics after 30 s.
    pub async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(Duration::from_secs(30), self.next_inner())
            .await
            .expect("stream frame within 30 s")
    }

    async fn next_inner(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    let payload: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    return Some(if flags & 0x02 != 0 {
                        Frame::End(v)
                    } else {
                        Frame::Msg(v)
                    });
                }
            }
            if self.ended {
                return None;
            }
            match self.res.chunk().await.unwrap() {
                Some(c) => self.buf.extend_from_slice(&c),
                None => self.ended = true,
            }
        }
    }

    /// Reads every remaining frame.
    pub async fn collect(mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = self.next().await {
            out.push(f);
        }
        out
    }
}
