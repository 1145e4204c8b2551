//! Forwarding one request to a sandbox port.
//!
//! Bodies stream both ways frame by frame (Connect server streams must
//! deliver their first envelope at once and may stay open for minutes).
//! Upstream HTTP/1.1 connections are pooled per (sandbox, epoch, port): the
//! pool key is encoded in a synthetic URI authority that only [`Connector`]
//! understands, so a sandbox's new serving period never reuses a connection
//! of the previous one. `Connection: Upgrade` requests become a spliced
//! tunnel once the guest answers 101.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::reset::{ClientConn, InFlight};
use super::route::{self, Target};
use super::{Directory, Upstream};

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// Suffix of the synthetic pool-key host names.
const KEY_DOMAIN: &str = "lelantos.invalid";

/// Why no upstream connection could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The URI did not come from [`pool_uri`].
    #[error("not a pool key: '{0}'")]
    PoolKey(String),
    /// The sandbox stopped serving (or moved to a new epoch) meanwhile.
    #[error("sandbox '{sandbox_id}' is no longer serving epoch {epoch}")]
    Gone {
        /// Sandbox id.
        sandbox_id: String,
        /// The epoch the request was for.
        epoch: u64,
    },
    /// The guest refused or did not answer.
    #[error("dial sandbox '{sandbox_id}' port {port}")]
    Dial {
        /// Sandbox id.
        sandbox_id: String,
        /// Guest port.
        port: u16,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Opens upstream connections for the pool, reading the sandbox, epoch and
/// port from the pool-key URI.
#[derive(Clone)]
pub(crate) struct Connector {
    directory: Arc<dyn Directory>,
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let directory = Arc::clone(&self.directory);
        Box::pin(async move {
            let (sandbox_id, epoch, port) =
                parse_pool_uri(&uri).ok_or_else(|| DialError::PoolKey(uri.to_string()))?;
            let upstream = directory
                .upstream(&sandbox_id)
                .filter(|u| u.epoch == epoch && !u.gone.is_cancelled())
                .ok_or_else(|| DialError::Gone {
                    sandbox_id: sandbox_id.clone(),
                    epoch,
                })?;
            let stream = upstream
                .dialer
                .dial(port)
                .await
                .map_err(|source| DialError::Dial {
                    sandbox_id,
                    port,
                    source,
                })?;
            // Connect envelopes are small and latency-bound.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on an upstream connection");
            }
            Ok(TokioIo::new(stream))
        })
    }
}

/// `http://{hex(id)}.e{epoch}.lelantos.invalid:{port}`: the pool key.
fn pool_authority(sandbox_id: &str, epoch: u64, port: u16) -> String {
    let mut host = String::with_capacity(sandbox_id.len() * 2 + 32);
    for b in sandbox_id.bytes() {
        host.push(char::from(HEX[usize::from(b >> 4)]));
        host.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    format!("{host}.e{epoch}.{KEY_DOMAIN}:{port}")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn parse_pool_uri(uri: &Uri) -> Option<(String, u64, u16)> {
    let port = uri.port_u16()?;
    let rest = uri.host()?.strip_suffix(KEY_DOMAIN)?.strip_suffix('.')?;
    let (hex, epoch) = rest.split_once(".e")?;
    let epoch = epoch.parse().ok()?;
    if hex.is_empty() || hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect::<Option<Vec<u8>>>()?;
    Some((String::from_utf8(bytes).ok()?, epoch, port))
}

/// Sends requests to sandboxes over pooled upstream connections.
#[derive(Clone)]
pub(crate) struct Forwarder {
    directory: Arc<dyn Directory>,
    client: Client<Connector, Incoming>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    pub(crate) fn new(directory: Arc<dyn Directory>) -> Self {
        let connector = Connector {
            directory: Arc::clone(&directory),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            // The client's own Host header goes through; never the pool key.
            .set_host(false)
            .build(connector);
        Self { directory, client }
    }

    /// The sandbox lookup the forwarder uses (also for signed URLs).
    pub(crate) fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    /// Forwards `req` to `target`, answering E2B's 502s when the sandbox is
    /// not running or the port is closed.
    pub(crate) async fn forward(
        &self,
        conn: &ClientConn,
        target: Target,
        mut req: Request<Incoming>,
    ) -> Response<Body> {
        let Some(upstream) = self.directory.upstream(&target.sandbox_id) else {
            return not_found(&target.sandbox_id);
        };
        let Some(in_flight) = conn.track(&upstream) else {
            return not_found(&target.sandbox_id);
        };
        let upgrading = wants_upgrade(req.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrading);
        // hyper answered any `Expect: 100-continue` already.
        parts.headers.remove(header::EXPECT);
        let authority = pool_authority(&upstream.sandbox_id, upstream.epoch, target.port);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        parts.uri = match Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                tracing::debug!(error = %e, "unforwardable request target");
                return error_json(StatusCode::BAD_REQUEST, "invalid request target");
            }
        };
        parts.version = Version::HTTP_11;

        let mut resp = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => {
                tracing::debug!(sandbox_id = %target.sandbox_id, port = target.port, error = ?e, "upstream dial failed");
                return port_not_open(&target);
            }
            Err(e) => {
                tracing::debug!(sandbox_id = %target.sandbox_id, port = target.port, error = ?e, "upstream request failed");
                return error_json(StatusCode::BAD_GATEWAY, "upstream request failed");
            }
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return error_json(
                    StatusCode::BAD_GATEWAY,
                    "upstream switched protocols unasked",
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            spawn_tunnel(conn, &upstream, client_upgrade, upstream_upgrade);
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(parts, Body::empty());
        }

        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Response::from_parts(
            parts,
            Body::new(Tracked {
                inner: body,
                _in_flight: in_flight,
            }),
        )
    }
}

/// Splices an upgraded client connection to the upgraded upstream one until
/// either side closes, resetting the client if the sandbox goes away.
fn spawn_tunnel(
    conn: &ClientConn,
    upstream: &Upstream,
    client: hyper::upgrade::OnUpgrade,
    guest: hyper::upgrade::OnUpgrade,
) {
    let socket = conn.socket();
    let gone = upstream.gone.clone();
    let stop = conn.stop().clone();
    let sandbox_id = upstream.sandbox_id.clone();
    conn.tasks().spawn(async move {
        let (client, guest) = match tokio::try_join!(client, guest) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(%sandbox_id, error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut guest = TokioIo::new(guest);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut guest) => {
                if let Err(e) = r {
                    tracing::debug!(%sandbox_id, error = %e, "tunnel ended");
                }
            }
            () = gone.cancelled() => {
                tracing::debug!(%sandbox_id, "sandbox gone; resetting tunnel");
                socket.abort_on_close();
            }
            () = stop.cancelled() => {}
        }
    });
}

/// A response body that keeps its request counted as in flight until it
/// ends or is dropped.
struct Tracked {
    inner: Incoming,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the request asks to switch protocols (WebSocket and the like).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes headers that describe one hop, not the message (RFC 9110 §7.6.1).
/// With `upgrading`, `Connection: upgrade` and `Upgrade` are kept.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrading && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    if upgrading {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// A JSON response with the given status.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// E2B's `{code, message}` error body.
pub(crate) fn error_json(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "code": status.as_u16(), "message": message }),
    )
}

/// E2B's 502 for an unknown, paused or killed sandbox.
pub(crate) fn not_found(sandbox_id: &str) -> Response<Body> {
    json(
        StatusCode::BAD_GATEWAY,
        &route::sandbox_not_found_body(sandbox_id),
    )
}

/// E2B's 502 for a running sandbox whose port does not answer.
fn port_not_open(target: &Target) -> Response<Body> {
    json(
        StatusCode::BAD_GATEWAY,
        &serde_json::json!({
            "sandboxId": target.sandbox_id,
            "message": "The sandbox is running but port is not open",
            "port": target.port,
            "code": 502,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_key_round_trips() {
        let uri: Uri = format!("http://{}/x", pool_authority("isbx-01.A", 7, 49983))
            .parse()
            .unwrap();
        assert_eq!(
            parse_pool_uri(&uri),
            Some(("isbx-01.A".to_owned(), 7, 49983))
        );
        let other: Uri = "http://example.com:80/".parse().unwrap();
        assert_eq!(parse_pool_uri(&other), None);
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:1"));
        assert!(!wants_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host"]);

        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
